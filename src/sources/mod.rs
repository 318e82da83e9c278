//! The event doors of SPEC section 8: cron ticks, MQTT and NATS messages, and the event
//! API. Each turns its input into an [`Invocation`] with its own [`Source`] and hands it to
//! the [`crate::dispatch::Dispatcher`], like the HTTP pipeline does; none of them reaches
//! the runtime or the queue directly, and neither of those learns where an invocation came
//! from.
//!
//! Cron, MQTT and NATS triggers each run as a supervised service ([`supervise`]) keyed by
//! what their connection or schedule depends on: a reload that changes it restarts the
//! service, one that removes the trigger stops it, and shutdown drains them all. Their
//! state (connecting, running, failed and the broker's reason) is kept in [`States`], shown
//! by `/readyz` and `GET /-/sources` on the admin listener.

pub mod cron;
pub mod event;
pub mod mqtt;
pub mod nats;
pub mod topics;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request};

use crate::Gateway;
use crate::config::{Config, Kind, TriggerConfig};
use crate::dispatch::EnqueueOptions;
use crate::error::GatewayError;
use crate::invocation::{Invocation, Source, Target};
pub use crate::source_state::{Phase, State, States};

/// Messages a broker trigger (MQTT, NATS) makes durable at once, at most.
const IN_FLIGHT: usize = 512;

/// Bytes (payloads and topics) held by a trigger's messages in flight, at most (one message
/// is always taken, whatever its size): 64 messages at the default `max_async_body_bytes`.
const IN_FLIGHT_BYTES: usize = 8 << 20;

/// The messages a broker trigger is making durable: how many, and the bytes of their
/// payloads and topics. A message waits for its commit, so the window over the commit time
/// bounds a trigger's rate, and it bounds the memory the messages hold.
#[derive(Debug, Default)]
struct Window {
    messages: usize,
    bytes: usize,
}

impl Window {
    /// Whether another message may be taken (an empty window takes one of any size).
    fn open(&self) -> bool {
        self.messages < IN_FLIGHT && self.bytes < IN_FLIGHT_BYTES
    }

    fn take(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    fn give_back(&mut self, bytes: usize) {
        self.messages -= 1;
        self.bytes -= bytes;
    }
}

/// The supervisor's name for a trigger's source.
fn service_name(trigger: &str) -> String {
    format!("source:{trigger}")
}

/// Starts a service for every cron, MQTT and NATS trigger of the current generation,
/// restarts those whose schedule or connection changed, and stops those a reload removed.
pub fn supervise(gateway: &Arc<Gateway>) {
    let app = gateway.app();
    let mut keep = Vec::new();
    for t in &app.config.triggers {
        let name = service_name(&t.name);
        let trigger = t.name.clone();
        match &t.kind {
            Kind::Cron(c) => {
                let key = cron::fingerprint(c);
                let (g, c) = (gateway.clone(), c.clone());
                gateway.supervisor.ensure(name.clone(), key, move |stop| {
                    cron::run(g, trigger, c, stop)
                });
            }
            Kind::Mqtt(b) => {
                let (g, b) = (gateway.clone(), b.clone());
                gateway
                    .supervisor
                    .ensure(name.clone(), b.fingerprint(), move |stop| {
                        mqtt::run(g, trigger, b, stop)
                    });
            }
            Kind::Nats(b) => {
                let (g, b) = (gateway.clone(), b.clone());
                gateway
                    .supervisor
                    .ensure(name.clone(), b.fingerprint(), move |stop| {
                        nats::run(g, trigger, b, stop)
                    });
            }
            Kind::Http | Kind::Event => continue,
        }
        keep.push(name);
    }
    gateway.supervisor.retain("source:", &keep);
    let configured: Vec<&str> = app
        .config
        .triggers
        .iter()
        .filter(|t| !t.kind.is_routed())
        .map(|t| t.name.as_str())
        .collect();
    for name in gateway.sources.snapshot().keys() {
        if !configured.contains(&name.as_str()) {
            gateway.sources.remove(name);
        }
    }
}

/// The functions a broker message on `topic` reaches: the trigger's own, or every function
/// whose `topics` match (topic routing, SPEC section 8.2).
pub fn targets(config: &Config, trigger: &TriggerConfig, topic: &str) -> Vec<Target> {
    if let Some(f) = &trigger.function {
        return vec![Target {
            function: f.clone(),
            qualifier: trigger.qualifier.clone(),
        }];
    }
    let nats = matches!(trigger.kind, Kind::Nats(_));
    config
        .functions
        .iter()
        .filter(|f| {
            trigger
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == f.namespace)
        })
        .filter(|f| {
            f.topics
                .iter()
                .any(|pattern| topics::matches(trigger.topic_match, nats, pattern, topic))
        })
        .map(|f| Target {
            function: f.name.clone(),
            qualifier: trigger.qualifier.clone(),
        })
        .collect()
}

/// Why a message could not be made durable.
#[derive(Debug)]
pub enum SubmitError {
    /// No function matches its topic: nothing to do.
    NoTarget,
    /// The queue is full or stopping: try again later (the message is not acknowledged).
    Busy(GatewayError),
    /// Anything else: logged, and the message is dropped.
    Failed(GatewayError),
}

/// A broker message as the doors hand it over: one task per function it reaches, committed
/// before this returns, each in the message's trace when it carries one (`trace`), else in
/// a new one. Gives the task ids.
pub async fn submit_message(
    gateway: &Gateway,
    trigger_name: &str,
    source: &Source,
    topic: &str,
    payload: Bytes,
    content_type: &str,
    trace: Option<&crate::trace::Context>,
) -> Result<Vec<String>, SubmitError> {
    let app = gateway.app();
    let trigger = app
        .config
        .triggers
        .iter()
        .find(|t| t.name == trigger_name)
        .ok_or_else(|| {
            SubmitError::Failed(GatewayError::Internal(format!(
                "trigger '{trigger_name}' is gone"
            )))
        })?;
    let targets = targets(&app.config, trigger, topic);
    if targets.is_empty() {
        return Err(SubmitError::NoTarget);
    }
    if payload.len() as u64 > app.config.limits.max_async_body_bytes {
        return Err(SubmitError::Failed(GatewayError::EntityTooLarge(format!(
            "a message of {} bytes on '{topic}' is over max_async_body_bytes ({})",
            payload.len(),
            app.config.limits.max_async_body_bytes
        ))));
    }
    let mut ids = Vec::with_capacity(targets.len());
    for target in targets {
        let request_id = crate::invocation::new_request_id();
        let request = post_root(payload.clone(), content_type).map_err(SubmitError::Failed)?;
        let inv = Invocation {
            target,
            trigger: trigger_name.into(),
            source: source.clone(),
            request_id,
            request,
            // A message that carries a trace context (NATS headers) continues it.
            trace: trace.cloned(),
            prebuilt: Default::default(),
        };
        match app.dispatcher.enqueue(inv, EnqueueOptions::default()).await {
            Ok(id) => ids.push(id),
            Err(e) if e.is_capacity() => return Err(SubmitError::Busy(e)),
            Err(e) => return Err(SubmitError::Failed(e)),
        }
    }
    Ok(ids)
}

/// The request every non-HTTP source hands a function: POST `/` (on `localhost`, as a
/// wasi:http request needs an authority) with `body` and its `Content-Type`.
pub(crate) fn post_root(body: Bytes, content_type: &str) -> Result<Request<Bytes>, GatewayError> {
    let mut request = Request::post("http://localhost/")
        .body(body)
        .map_err(|e| GatewayError::Internal(format!("building a request: {e}")))?;
    let value = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    request
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, value);
    Ok(request)
}

/// Waits `delay` unless the stop signal comes first; `true` when told to stop.
pub(crate) async fn pause(
    stop: &mut tokio::sync::watch::Receiver<bool>,
    delay: std::time::Duration,
) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Reconnect backoff: doubling from 250 ms to 30 s, with jitter.
pub(crate) fn backoff(attempt: u32) -> std::time::Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(7)).min(30_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    std::time::Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small messages fill the window up to its count, large ones up to its bytes, and one
    /// message is always taken, however large.
    #[test]
    fn the_window_bounds_messages_and_bytes_in_flight() {
        let mut w = Window::default();
        for _ in 0..IN_FLIGHT {
            assert!(w.open());
            w.take(20);
        }
        assert!(!w.open(), "{w:?}");
        w.give_back(20);
        assert!(w.open());

        let mut w = Window::default();
        let large = 128 * 1024;
        let mut taken = 0;
        while w.open() {
            w.take(large);
            taken += 1;
        }
        assert_eq!(taken, IN_FLIGHT_BYTES / large);
        w.give_back(large);
        assert!(w.open());

        let mut w = Window::default();
        assert!(w.open());
        w.take(IN_FLIGHT_BYTES * 4);
        assert!(!w.open());
        w.give_back(IN_FLIGHT_BYTES * 4);
        assert!(w.open());
    }
}
