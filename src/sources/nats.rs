//! NATS triggers (SPEC section 8.2): a queue subscription per subject (wildcards `*` and
//! `>`), in a queue group per trigger, so several nodes share the messages instead of each
//! running every one. Each message becomes POST `/` with the payload as body and the
//! subject in `X-Topic`, one durable task per function it reaches. A message sent as a
//! request (with a reply subject) is answered once its tasks are committed:
//! `{"tasks": [...]}`, or `{"error": ...}`. Core NATS delivers at most once; the queue
//! takes over from there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use super::{Phase, States, SubmitError};
use crate::Gateway;
use crate::config::BrokerConfig;
use crate::config::kinds::Transport as Tls;
use crate::invocation::Source;

/// Messages being made durable at once.
const IN_FLIGHT: usize = 64;

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
    loop {
        tokio::select! {
            m = messages.next(), if pending.len() < IN_FLIGHT => match m {
                Some(m) => pending.push(handle(&gateway, &trigger, &broker.content_type, &client, m)),
                None => break,
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
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
    content_type: &str,
    client: &async_nats::Client,
    m: async_nats::Message,
) {
    let subject = m.subject.to_string();
    let source = Source::Nats {
        subject: subject.clone(),
    };
    let mut attempt = 0u32;
    let reply = loop {
        match super::submit_message(
            gateway,
            trigger,
            &source,
            &subject,
            m.payload.clone(),
            content_type,
        )
        .await
        {
            Ok(ids) => {
                gateway.sources.count(trigger, 1, 0);
                break serde_json::json!({ "tasks": ids });
            }
            Err(SubmitError::NoTarget) => {
                tracing::warn!(trigger, subject, "a message reached no function; dropped");
                gateway.sources.count(trigger, 0, 1);
                break serde_json::json!({ "error": "no function matches the subject" });
            }
            Err(SubmitError::Failed(e)) => {
                tracing::error!(trigger, subject, "a message could not be enqueued: {e}");
                gateway.sources.count(trigger, 0, 1);
                break serde_json::json!({ "error": e.to_string() });
            }
            Err(SubmitError::Busy(e)) if attempt < 8 => {
                attempt += 1;
                tracing::warn!(trigger, subject, "queue full, retrying a message: {e}");
                tokio::time::sleep(super::backoff(attempt).min(Duration::from_secs(5))).await;
            }
            Err(SubmitError::Busy(e)) => {
                tracing::error!(trigger, subject, "queue full; a message is dropped: {e}");
                gateway.sources.count(trigger, 0, 1);
                break serde_json::json!({ "error": e.to_string() });
            }
        }
    };
    if let Some(to) = m.reply {
        let _ = client.publish(to, reply.to_string().into()).await;
    }
}
