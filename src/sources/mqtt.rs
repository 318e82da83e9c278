//! MQTT triggers (SPEC section 8.2): a persistent session (clean session off, the trigger's
//! stable `client_id`) subscribed to the trigger's topic filters. Each message becomes
//! POST `/` with the payload as body and the topic in `X-Topic`, one durable task per
//! function it reaches. With QoS 1 the message is acknowledged to the broker only after
//! its tasks are committed (acknowledgements go out in the order the messages came, as
//! MQTT requires), so a crash between broker and queue loses nothing: the broker sends it
//! again. The connection reconnects with backoff; a broker that refuses the connection
//! (bad credentials, not authorised) marks the trigger failed with the broker's reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

use super::{Phase, SubmitError};
use crate::Gateway;
use crate::config::BrokerConfig;
use crate::config::kinds::Transport as Tls;
use crate::invocation::Source;

/// Messages being made durable at once (their acknowledgements wait in order).
const IN_FLIGHT: usize = 64;

pub async fn run(
    gateway: Arc<Gateway>,
    trigger: String,
    broker: BrokerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let states = gateway.sources.clone();
    let mut options = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30));
    // Messages over max_async_body_bytes are read, refused by the queue, logged and
    // acknowledged (dropped); only packets over this bound break the connection.
    let max_body = gateway.app().config.limits.max_async_body_bytes as usize;
    options.set_max_packet_size((max_body + 64 * 1024).max(16 << 20), 256 * 1024);
    if let Some(user) = &broker.username {
        options.set_credentials(user, broker.password.clone().unwrap_or_default());
    }
    if broker.transport == Tls::Tls {
        match tls_config(&broker) {
            Ok(c) => {
                options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                    Arc::new(c),
                )));
            }
            Err(e) => {
                states.set(&trigger, "mqtt", Phase::Failed, e);
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
        }
    }
    let qos = if broker.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    states.set(
        &trigger,
        "mqtt",
        Phase::Connecting,
        format!("connecting to {}", broker.url),
    );

    // Messages go to a worker that makes them durable and acknowledges them. The event loop
    // must never wait on the worker: the worker's acknowledgements travel through the event
    // loop, so a loop blocked on a full channel while acknowledgements wait for the loop
    // would deadlock. The channel is therefore unbounded; what bounds it is the broker, which
    // sends no more than its in-flight window of unacknowledged QoS 1 messages.
    let (tx, rx) = mpsc::unbounded_channel::<Publish>();
    let worker = tokio::spawn(deliver(
        gateway.clone(),
        trigger.clone(),
        broker.content_type.clone(),
        client.clone(),
        rx,
        stop.clone(),
    ));
    let mut failures = 0u32;
    let mut session = "new";
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                for topic in &broker.topics {
                    if let Err(e) = client.try_subscribe(topic, qos) {
                        tracing::warn!(trigger, topic, "cannot subscribe: {e}");
                    }
                }
                session = if ack.session_present {
                    "resumed"
                } else {
                    "new"
                };
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    states.set(
                        &trigger,
                        "mqtt",
                        Phase::Failed,
                        format!(
                            "the broker refused a subscription to {}",
                            broker.topics.join(" ")
                        ),
                    );
                } else {
                    // Running once the broker has confirmed the subscriptions: from here on
                    // every matching message reaches the trigger.
                    states.set(
                        &trigger,
                        "mqtt",
                        Phase::Running,
                        format!(
                            "connected to {} as '{}' ({session} session), subscribed to {}",
                            broker.url,
                            broker.client_id,
                            broker.topics.join(" ")
                        ),
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let (phase, reason) = describe(&e);
                states.set(&trigger, "mqtt", phase, reason);
                failures = failures.saturating_add(1);
                // Refusals are not cured by retrying fast.
                let attempt = if phase == Phase::Failed {
                    failures + 4
                } else {
                    failures
                };
                if super::pause(&mut stop, super::backoff(attempt)).await {
                    break;
                }
            }
        }
    }
    // Drain: what was received is made durable and acknowledged before the session ends.
    drop(tx);
    let _ = worker.await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(e) = eventloop.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    states.remove(&trigger);
}

/// Makes messages durable, up to [`IN_FLIGHT`] at once, and acknowledges them in order.
async fn deliver(
    gateway: Arc<Gateway>,
    trigger: String,
    content_type: String,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    stop: watch::Receiver<bool>,
) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            p = rx.recv(), if open && pending.len() < IN_FLIGHT => match p {
                Some(p) => {
                    let (g, t, ct, s) = (gateway.clone(), trigger.clone(), content_type.clone(), stop.clone());
                    pending.push_back(async move {
                        let acked = store(&g, &t, &ct, &p, s).await;
                        (p, acked)
                    });
                }
                None => open = false,
            },
            Some((p, ack)) = pending.next(), if !pending.is_empty() => {
                if ack && p.qos != QoS::AtMostOnce
                    && let Err(e) = client.ack(&p).await
                {
                    tracing::warn!(trigger, "cannot acknowledge a message: {e}");
                }
            }
        }
    }
}

/// One message made durable; `false` when it must not be acknowledged (the node is
/// stopping with the queue full: the broker sends it again).
async fn store(
    gateway: &Gateway,
    trigger: &str,
    content_type: &str,
    p: &Publish,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let topic = p.topic.clone();
    let source = Source::Mqtt {
        topic: topic.clone(),
    };
    let payload = Bytes::copy_from_slice(&p.payload);
    let mut attempt = 0u32;
    loop {
        match super::submit_message(
            gateway,
            trigger,
            &source,
            &topic,
            payload.clone(),
            content_type,
        )
        .await
        {
            Ok(ids) => {
                tracing::debug!(trigger, topic, tasks = ids.len(), "message enqueued");
                gateway.sources.count(trigger, 1, 0);
                return true;
            }
            Err(SubmitError::NoTarget) => {
                tracing::warn!(trigger, topic, "a message reached no function; dropped");
                gateway.sources.count(trigger, 0, 1);
                return true;
            }
            Err(SubmitError::Failed(e)) => {
                tracing::error!(
                    trigger,
                    topic,
                    "a message could not be enqueued; dropped: {e}"
                );
                gateway.sources.count(trigger, 0, 1);
                return true;
            }
            Err(SubmitError::Busy(e)) => {
                // The queue is full: hold the message (unacknowledged) and try again.
                tracing::warn!(trigger, topic, "queue full, holding a message: {e}");
                attempt = attempt.saturating_add(1);
                if super::pause(&mut stop, super::backoff(attempt)).await {
                    return false;
                }
            }
        }
    }
}

/// A connection error as the trigger's state: refusals are failures with the broker's
/// reason; anything else is a connection being retried.
fn describe(e: &ConnectionError) -> (Phase, String) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "protocol version refused",
                ConnectReturnCode::Success => "refused",
            };
            (
                Phase::Failed,
                format!("the broker refused the connection: {why}"),
            )
        }
        ConnectionError::Tls(e) => (Phase::Failed, format!("TLS: {e}")),
        other => (Phase::Connecting, format!("reconnecting: {other}")),
    }
}

/// Rustls client settings: the `ca_file` when given, else the public web roots.
fn tls_config(broker: &BrokerConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &broker.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
