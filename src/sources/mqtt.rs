//! MQTT triggers (SPEC section 8.2): a persistent session (clean session off, the trigger's
//! stable `client_id`) subscribed to the trigger's topic filters. Each message becomes
//! POST `/` with the payload as body and the topic in `X-Topic`, one durable task per
//! function it reaches. With QoS 1 the message is acknowledged to the broker only after
//! its tasks are committed (acknowledgements go out in the order the messages came, as
//! MQTT requires), so a crash between broker and queue loses nothing: the broker sends it
//! again. The connection reconnects with backoff; a broker that refuses the connection
//! (bad credentials, not authorised) marks the trigger failed with the broker's reason.
//!
//! Memory is bounded whatever the broker sends: a packet over `max_async_body_bytes` plus
//! the topic is refused from its header, before its payload is read (the connection is
//! closed, the trigger shows why, and the next connection reads that one message alone to
//! drop it: see [`Oversize`]); messages wait in a queue of
//! [`INTAKE`] between the connection and the worker, and when that is full the connection
//! is not read until the worker takes one, so a flood (QoS 0 has no flow control of its
//! own) waits in the broker and the kernel's socket buffers, not here. The worker makes
//! as many messages durable at once as a [`super::Window`] holds. A QoS 1 message is
//! acknowledged after its commit, so a trigger takes at most that many a commit from the
//! broker (and the broker sends at most its own window unacknowledged: 20 by default on
//! mosquitto, `max_inflight_messages`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, Publish,
    QoS, StateError, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};

use super::{Phase, SubmitError};
use crate::Gateway;
use crate::config::BrokerConfig;
use crate::config::kinds::Transport as Tls;
use crate::invocation::Source;

/// Messages read from the broker and waiting for the worker; beyond this the connection
/// is not read.
const INTAKE: usize = 16;

/// Room in the client's request queue for an acknowledgement of every packet id MQTT has
/// (a broker has at most 65535 unacknowledged QoS 1 messages out), plus the subscriptions:
/// so the worker never waits to acknowledge, and the event loop, which may be waiting for
/// the worker (a full [`INTAKE`]), never waits for the worker's acknowledgements in turn.
/// The queue allocates as it fills, not up front.
const REQUESTS: usize = 65_536 + 64;

/// What a PUBLISH packet may hold besides its payload: the topic (at most 65535 bytes and
/// its length) and the packet id.
const PUBLISH_OVERHEAD: usize = 2 + 65_535 + 2;

/// The largest packet over the limit that is read (on a connection of its own) to be
/// dropped; a larger one is never read, and a broker that keeps sending it again blocks the
/// trigger until it is removed there (the broker's own message size limit prevents that).
const RECOVERY_MAX: usize = 16 << 20;

/// Outgoing packets are subscriptions and acknowledgements.
const MAX_OUTGOING: usize = 256 * 1024;

/// A message on its way from the connection to the worker.
struct Received {
    /// The packet; its payload is already dropped when `over` is set.
    publish: Publish,
    /// The payload's size, when over `max_async_body_bytes`: the message is dropped.
    over: Option<usize>,
}

/// Where the connection stands with a packet over the limit. A persistent session sends an
/// unread message again at every reconnection, so refusing it from its header alone would
/// block the trigger for good: the next connection instead reads packets up to that size,
/// drops the message (acknowledging it with QoS 1, in order) and is closed, and the one
/// after it has the normal limit again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oversize {
    /// Nothing over the limit pending.
    None,
    /// The next connection reads packets up to this size.
    Armed(usize),
    /// This connection reads packets up to this size, until it has dropped one.
    Reading(usize),
    /// Dropped; the connection closes once the acknowledgement of this packet id is out.
    Acking(usize, u16),
}

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
    // A message within max_async_body_bytes always fits; one a little over (a short topic)
    // is read and dropped; a packet over this bound is refused from its header, before its
    // payload is read (see `Oversize` for what follows).
    let max_body =
        usize::try_from(gateway.app().config.limits.max_async_body_bytes).unwrap_or(usize::MAX);
    let max_packet = max_body.saturating_add(PUBLISH_OVERHEAD);
    options.set_max_packet_size(max_packet, MAX_OUTGOING);
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
    let (client, mut eventloop) = AsyncClient::new(options, REQUESTS);
    states.set(
        &trigger,
        "mqtt",
        Phase::Connecting,
        format!("connecting to {}", broker.url),
    );

    // Messages go to a worker that makes them durable and acknowledges them. The channel is
    // small, and when it is full the event loop waits (backpressure: nothing more is read
    // from the broker). That wait cannot deadlock: the worker's acknowledgements travel
    // through the event loop, but they go into a request queue with room for every packet
    // id (REQUESTS), so the worker never waits on the loop.
    let (tx, rx) = mpsc::channel::<Received>(INTAKE);
    let worker = tokio::spawn(deliver(
        gateway.clone(),
        trigger.clone(),
        broker.content_type.clone(),
        max_body,
        client.clone(),
        rx,
        stop.clone(),
    ));
    let mut failures = 0u32;
    let mut session = "new";
    let mut oversize = Oversize::None;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if let Oversize::Armed(n) = oversize {
                    // Options are read when connecting: this connection has the raised
                    // limit, the next one the normal limit.
                    eventloop
                        .mqtt_options
                        .set_max_packet_size(max_packet, MAX_OUTGOING);
                    oversize = Oversize::Reading(n);
                }
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
                if let Oversize::Reading(_) = oversize {
                    // The message over the limit did not come again before the SUBACK (a
                    // resumed session's messages come first): the broker does not hold it.
                    // The connection with the raised limit is closed; the next has the limit.
                    oversize = Oversize::None;
                    eventloop.clean();
                    continue;
                }
                // Connected and subscribed: the next failure starts the backoff afresh. (Not
                // at CONNACK: a resumed session's messages come before the SUBACK, and one
                // that breaks the connection every time must not be fetched twice a second.)
                failures = 0;
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
            Ok(Event::Incoming(Packet::Publish(mut publish))) => {
                // A payload that will be dropped is dropped now.
                let size = publish.payload.len();
                let over = (size > max_body).then_some(size);
                let mut close = false;
                if over.is_some() {
                    publish.payload = Bytes::new();
                    if let Oversize::Reading(n) = oversize {
                        // The message this connection was opened for.
                        if publish.qos == QoS::AtMostOnce {
                            oversize = Oversize::None;
                            close = true;
                        } else {
                            oversize = Oversize::Acking(n, publish.pkid);
                        }
                    }
                }
                // With the worker's queue full, wait here: the broker is not read meanwhile.
                // A message given up when the node stops is not acknowledged (QoS 1: the
                // broker sends it again).
                let queued = tokio::select! {
                    r = tx.send(Received { publish, over }) => r.is_ok(),
                    _ = stop.wait_for(|s| *s) => false,
                };
                if !queued {
                    break;
                }
                if close {
                    // Dropped (QoS 0 has no acknowledgement): reconnect with the limit.
                    eventloop.clean();
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) if matches!(oversize, Oversize::Acking(_, id) if id == pkid) =>
            {
                oversize = Oversize::None;
                // The large message is dropped and acknowledged: reconnect with the limit.
                eventloop.clean();
            }
            Ok(_) => {}
            Err(e) => {
                let over = oversized(&e);
                // The size the next connection reads up to: the packet just refused, or the
                // one a connection ended before dropping (the broker sends it again).
                let read = match (over, oversize) {
                    (Some(n), _) => Some(n).filter(|n| *n <= RECOVERY_MAX),
                    (None, Oversize::Armed(n) | Oversize::Reading(n) | Oversize::Acking(n, _)) => {
                        Some(n)
                    }
                    (None, Oversize::None) => None,
                };
                eventloop
                    .mqtt_options
                    .set_max_packet_size(read.unwrap_or(max_packet), MAX_OUTGOING);
                oversize = read.map_or(Oversize::None, Oversize::Armed);
                let (phase, reason) = describe(&e, max_packet);
                states.set(&trigger, "mqtt", phase, reason);
                failures = failures.saturating_add(1);
                // Refusals are not cured by retrying fast.
                let attempt = if phase == Phase::Failed && over.is_none() {
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

/// Makes messages durable, as many at once as the [`super::Window`] allows, and acknowledges
/// them in order.
async fn deliver(
    gateway: Arc<Gateway>,
    trigger: String,
    content_type: String,
    max_body: usize,
    client: AsyncClient,
    mut rx: mpsc::Receiver<Received>,
    stop: watch::Receiver<bool>,
) {
    let mut pending = FuturesOrdered::new();
    let mut window = super::Window::default();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            r = rx.recv(), if open && window.open() => match r {
                Some(Received { mut publish, over }) => {
                    // The payload is copied out of the connection's read buffer (which it
                    // would otherwise keep alive); what waits for the acknowledgement is
                    // the packet id alone.
                    let payload = Bytes::copy_from_slice(&publish.payload);
                    publish.payload = Bytes::new();
                    let topic = std::mem::take(&mut publish.topic);
                    let held = payload.len() + topic.len();
                    window.take(held);
                    let (g, t, ct, s) = (gateway.clone(), trigger.clone(), content_type.clone(), stop.clone());
                    pending.push_back(async move {
                        let acked = match over {
                            Some(size) => {
                                tracing::warn!(
                                    trigger = %t,
                                    topic = %topic.chars().take(64).collect::<String>(),
                                    "a message of {size} bytes is over max_async_body_bytes ({max_body}); dropped"
                                );
                                g.sources.count(&t, 0, 1);
                                true
                            }
                            None => store(&g, &t, &ct, topic, payload, s).await,
                        };
                        (publish, acked, held)
                    });
                }
                None => open = false,
            },
            Some((p, ack, held)) = pending.next(), if !pending.is_empty() => {
                window.give_back(held);
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
    topic: String,
    payload: Bytes,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let source = Source::Mqtt {
        topic: topic.clone(),
    };
    let mut attempt = 0u32;
    loop {
        match super::submit_message(
            gateway,
            trigger,
            &source,
            &topic,
            payload.clone(),
            content_type,
            // MQTT 3.1.1 has no user properties: a message starts a trace of its own.
            None,
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
                // The queue is full or not reachable yet: hold the message
                // (unacknowledged) and try again.
                tracing::warn!(trigger, topic, "holding a message: {e}");
                attempt = attempt.saturating_add(1);
                if super::pause(&mut stop, super::backoff(attempt)).await {
                    return false;
                }
            }
        }
    }
}

/// Whether the connection broke on a packet over the trigger's limit.
fn oversized(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// A connection error as the trigger's state: refusals are failures with the broker's
/// reason, and so is a packet over the limit; anything else is a connection being retried.
fn describe(e: &ConnectionError, max_packet: usize) -> (Phase, String) {
    if let Some(n) = oversized(e) {
        let next = if n <= RECOVERY_MAX {
            "the next connection reads it alone, drops it and reconnects"
        } else {
            "it is never read: if the broker keeps it for this session, remove it there \
             (a broker message size limit at max_async_body_bytes refuses such messages \
             when they are published)"
        };
        return (
            Phase::Failed,
            format!(
                "the broker sent a packet of {n} bytes, over this trigger's limit of {max_packet} \
                 (limits.max_async_body_bytes and the topic); the connection was closed before \
                 its payload was read; {next}"
            ),
        );
    }
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
