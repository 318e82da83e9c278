//! NATS triggers (SPEC section 8.2): a queue subscription per subject (wildcards `*` and
//! `>`), in a queue group per trigger, so several nodes share the messages instead of each
//! running every one. Each message becomes POST `/` with the payload as body and the
//! subject in `X-Topic`, one durable task per function it reaches. A message sent as a
//! request (with a reply subject) is answered once its tasks are committed:
//! `{"tasks": [...]}`, or `{"error": ...}` with the public message only. The answer goes
//! out on the gateway's own connection, so only an inbox gets one: a reply subject under
//! the trigger's `reply_prefix` (`_INBOX.`), never a `$` subject (JetStream, KV buckets,
//! object store) or the cluster's `wasmgate.` ones, nor the trigger's own subjects; any
//! other reply subject is logged (cut short) and the message is handled without a reply.
//! Core NATS delivers at most once; the queue takes over from there. Messages are made
//! durable as many at once as a [`super::Window`] holds; core NATS has no flow control, so
//! what arrives meanwhile waits in the client's subscription buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use super::{Phase, States, SubmitError};
use crate::Gateway;
use crate::config::BrokerConfig;
use crate::config::kinds;
use crate::config::kinds::Transport as Tls;
use crate::error::GatewayError;
use crate::invocation::Source;

pub async fn run(
    gateway: Arc<Gateway>,
    trigger: String,
    broker: BrokerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let states = gateway.sources.clone();
    states.set(
        &trigger,
        "nats",
        Phase::Connecting,
        format!("connecting to {}", broker.url),
    );
    let subscribed = Arc::new(AtomicBool::new(false));
    let client = match connect(&broker, &trigger, &states, subscribed.clone()).await {
        Ok(c) => c,
        Err(e) => {
            states.set(&trigger, "nats", Phase::Failed, e);
            let _ = stop.wait_for(|s| *s).await;
            states.remove(&trigger);
            return;
        }
    };
    let mut subscribers = Vec::new();
    for subject in &broker.topics {
        match client
            .queue_subscribe(subject.clone(), broker.queue_group.clone())
            .await
        {
            Ok(s) => subscribers.push(s),
            Err(e) => {
                states.set(
                    &trigger,
                    "nats",
                    Phase::Failed,
                    format!("cannot subscribe to '{subject}': {e}"),
                );
                let _ = stop.wait_for(|s| *s).await;
                states.remove(&trigger);
                return;
            }
        }
    }
    // Running once the server has the subscriptions: from here on every matching message
    // reaches the trigger.
    if client.flush().await.is_ok() {
        subscribed.store(true, Ordering::SeqCst);
        states.set(
            &trigger,
            "nats",
            Phase::Running,
            format!(
                "connected to {}, subscribed to {} in queue group {}",
                broker.url,
                broker.topics.join(" "),
                broker.queue_group
            ),
        );
    }
    let mut messages = futures::stream::select_all(subscribers);
    let mut pending = FuturesUnordered::new();
    let mut window = super::Window::default();
    loop {
        tokio::select! {
            m = messages.next(), if window.open() => match m {
                Some(m) => {
                    let held = m.payload.len() + m.subject.len();
                    window.take(held);
                    let handled = handle(&gateway, &trigger, &broker, &client, m);
                    pending.push(async move {
                        handled.await;
                        held
                    });
                }
                None => break,
            },
            Some(held) = pending.next(), if !pending.is_empty() => window.give_back(held),
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Drain: what was received is made durable before the subscription ends.
    while pending.next().await.is_some() {}
    drop(pending);
    drop(messages);
    let _ = client.drain().await;
    states.remove(&trigger);
}

async fn connect(
    broker: &BrokerConfig,
    trigger: &str,
    states: &States,
    subscribed: Arc<AtomicBool>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("wasmgate {trigger}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| super::backoff(attempt.min(32) as u32));
    if let Some(user) = &broker.username {
        options =
            options.user_and_password(user.clone(), broker.password.clone().unwrap_or_default());
    }
    if broker.transport == Tls::Tls {
        options = options.require_tls(true);
        if let Some(ca) = &broker.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
    }
    let (s, t, url) = (states.clone(), trigger.to_string(), broker.url.clone());
    options = options.event_callback(move |event| {
        let (s, t, url, subscribed) = (s.clone(), t.clone(), url.clone(), subscribed.clone());
        async move {
            match event {
                // A reconnection restores the subscriptions; the first connection is running
                // only once they are made (see `run`).
                async_nats::Event::Connected if subscribed.load(Ordering::SeqCst) => {
                    s.set(&t, "nats", Phase::Running, format!("reconnected to {url}"))
                }
                async_nats::Event::Connected => {}
                async_nats::Event::Disconnected => s.set(
                    &t,
                    "nats",
                    Phase::Connecting,
                    format!("disconnected from {url}; reconnecting"),
                ),
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                    s.set(
                        &t,
                        "nats",
                        Phase::Failed,
                        "the server refused the connection: authorization violation".into(),
                    )
                }
                other => tracing::warn!(trigger = %t, "nats: {other}"),
            }
        }
    });
    let address = format!(
        "{}://{}:{}",
        if broker.transport == Tls::Tls {
            "tls"
        } else {
            "nats"
        },
        if broker.host.contains(':') {
            format!("[{}]", broker.host)
        } else {
            broker.host.clone()
        },
        broker.port
    );
    options
        .connect(address)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", broker.url))
}

async fn handle(
    gateway: &Gateway,
    trigger: &str,
    broker: &BrokerConfig,
    client: &async_nats::Client,
    m: async_nats::Message,
) {
    let subject = m.subject.to_string();
    // Logs show the sender's text cut short, never at length.
    let shown = shorten(&subject);
    let reply_to = match m.reply.as_ref().map(|r| (r, refuse_reply(r, broker))) {
        Some((r, None)) => Some(r.clone()),
        Some((r, Some(why))) => {
            tracing::warn!(
                trigger,
                subject = %shown,
                reply = %shorten(r),
                "reply subject refused ({why}); the message is handled without a reply"
            );
            None
        }
        None => None,
    };
    let source = Source::Nats {
        subject: subject.clone(),
    };
    // W3C trace context in the message's headers, as OpenTelemetry's NATS propagation sets it.
    let trace = m.headers.as_ref().and_then(|h| {
        let tp = h.get("traceparent")?;
        crate::trace::Context::parse(
            tp.as_str().as_bytes(),
            h.get("tracestate").map(|v| v.as_str().as_bytes()),
        )
    });
    let mut attempt = 0u32;
    let reply = loop {
        match super::submit_message(
            gateway,
            trigger,
            &source,
            &subject,
            m.payload.clone(),
            &broker.content_type,
            trace.as_ref(),
        )
        .await
        {
            Ok(ids) => {
                gateway.sources.count(trigger, 1, 0);
                break serde_json::json!({ "tasks": ids });
            }
            Err(SubmitError::NoTarget) => {
                tracing::warn!(trigger, subject = %shown, "a message reached no function; dropped");
                gateway.sources.count(trigger, 0, 1);
                break serde_json::json!({ "error": "no function matches the subject" });
            }
            Err(SubmitError::Failed(e)) => {
                let request_id = crate::invocation::new_request_id();
                tracing::error!(
                    trigger,
                    subject = %shown,
                    request_id = %request_id,
                    "a message could not be enqueued: {e}"
                );
                gateway.sources.count(trigger, 0, 1);
                break error_reply(&e, &request_id);
            }
            Err(SubmitError::Busy(e)) if attempt < 8 => {
                attempt += 1;
                tracing::warn!(trigger, subject = %shown, "queue full or not reachable yet, retrying a message: {e}");
                tokio::time::sleep(super::backoff(attempt).min(Duration::from_secs(5))).await;
            }
            Err(SubmitError::Busy(e)) => {
                let request_id = crate::invocation::new_request_id();
                tracing::error!(
                    trigger,
                    subject = %shown,
                    request_id = %request_id,
                    "queue still full or unreachable; a message is dropped: {e}"
                );
                gateway.sources.count(trigger, 0, 1);
                break error_reply(&e, &request_id);
            }
        }
    };
    if let Some(to) = reply_to {
        let _ = client.publish(to, reply.to_string().into()).await;
    }
}

/// The reply to a message that could not be made durable: the public message only (a
/// host fault says `internal error` and the request id its detail is logged under).
fn error_reply(e: &GatewayError, request_id: &str) -> serde_json::Value {
    serde_json::json!({ "error": e.public_message(request_id) })
}

/// Longest reply subject answered (an inbox is about 30 characters).
const MAX_REPLY: usize = 256;

/// Why a message's reply subject gets no answer, or `None` when it may have one. The reply
/// goes out on the gateway's own connection, with its permissions, so the sender chooses
/// nothing but an inbox: a subject under the trigger's `reply_prefix` (`_INBOX.` unless
/// set), never one the gateway keeps for itself (`$...`: JetStream, the KV buckets, the
/// object store; `wasmgate.`: the task stream), whatever the prefix says, and never one of
/// the trigger's own subjects (a message to itself).
fn refuse_reply(reply: &str, broker: &BrokerConfig) -> Option<&'static str> {
    if kinds::reserved_subject(reply) {
        return Some("one of the gateway's own subjects");
    }
    if !reply.starts_with(broker.reply_prefix.as_str()) {
        return Some("not under reply_prefix");
    }
    if reply.len() > MAX_REPLY {
        return Some("too long");
    }
    if reply.contains(char::is_whitespace)
        || reply
            .split('.')
            .any(|t| t.is_empty() || t.contains('*') || t.contains('>'))
    {
        return Some("not a subject");
    }
    if broker
        .topics
        .iter()
        .any(|t| super::topics::nats_matches(t, reply))
    {
        return Some("a subject of this trigger");
    }
    None
}

/// At most 64 characters of a sender's subject, control characters escaped.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(prefix: &str) -> BrokerConfig {
        BrokerConfig {
            url: "nats://127.0.0.1:4222".into(),
            host: "127.0.0.1".into(),
            port: 4222,
            transport: Tls::Plain,
            ca_file: None,
            client_id: "c".into(),
            username: None,
            password: None,
            qos: 1,
            topics: vec!["orders.>".into()],
            queue_group: "g".into(),
            reply_prefix: prefix.into(),
            content_type: "application/octet-stream".into(),
        }
    }

    #[test]
    fn only_inboxes_under_the_prefix_are_answered() {
        let b = broker("_INBOX.");
        assert_eq!(refuse_reply("_INBOX.abc.def", &b), None);
        for bad in [
            "$KV.wasmgate_tasks.orders.x",
            "$JS.API.STREAM.DELETE.WASMGATE_TASKS",
            "$O.wasmgate_components.x",
            "$SYS.REQ.SERVER.PING",
            "wasmgate.tasks.orders",
            "wasmgate",
            "evil.sink",
            "_INBOXevil",
            "_INBOX.a..b",
            "_INBOX.a b",
            "_INBOX.*",
            "orders.loop",
        ] {
            assert!(refuse_reply(bad, &b).is_some(), "{bad} answered");
        }
        assert!(refuse_reply(&format!("_INBOX.{}", "a".repeat(300)), &b).is_some());
        // An unusual prefix does not open the gateway's own subjects.
        let wide = broker("replies.");
        assert_eq!(refuse_reply("replies.x", &wide), None);
        assert!(refuse_reply("_INBOX.x", &wide).is_some());
    }

    #[test]
    fn an_internal_error_reply_says_only_the_public_message() {
        let e = GatewayError::Internal("disk /var/lib/secret failed: EIO".into());
        let v = error_reply(&e, "rid-1");
        let text = v["error"].as_str().unwrap_or_default();
        assert!(!text.contains("secret"), "{v}");
        assert!(text.contains("rid-1"), "{v}");
        let e = GatewayError::EntityTooLarge("a message of 9 bytes is over".into());
        assert_eq!(
            error_reply(&e, "r")["error"],
            "a message of 9 bytes is over"
        );
    }

    #[test]
    fn long_subjects_are_cut_short_in_logs() {
        let s = shorten(&format!("evil.{}\n", "A".repeat(3000)));
        assert!(s.len() < 80, "{s}");
        assert_eq!(shorten("a\nb"), "a\\nb");
    }
}
