//! An invocation: one request for one function, and where it came from.
//!
//! Every door builds one: the HTTP pipeline for a client request, the queue's workers for a
//! stored task, and (with the event sources) cron ticks, broker messages and the event API.
//! The [`crate::dispatch::Dispatcher`] resolves its [`Target`], admits it and hands the
//! request to the runtime, which never learns the [`Source`]. [`Invocation::stamp`] is the
//! one place the `X-Fc-*` headers a function sees are set.
//!
//! [`StoredInvocation`] is the durable form the queue keeps: the request as the function
//! will see it, its target and the kind of door it came through, as JSON (header values
//! that are not UTF-8 are kept as base64, so nothing is lost).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// A request id: a UUIDv7 (RFC 9562) as a string: 48 bits of Unix milliseconds, then 74
/// random bits, unique across nodes and restarts. Time-ordered on purpose: a task's id is its
/// request id unless the client names one, and ids that grow keep the task store's indexes
/// appending to their last page instead of touching a random page per task.
pub fn new_request_id() -> Arc<str> {
    request_id_at(std::time::SystemTime::now())
}

/// A request id for a request that arrived at `now` (a caller that read the clock already).
pub fn request_id_at(now: std::time::SystemTime) -> Arc<str> {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format_uuid(v7(ms, rand::random()))
}

/// The UUIDv7 bits of `ms` (the low 48 bits) with `random` filling the rest.
fn v7(ms: u64, random: u128) -> u128 {
    let time = u128::from(ms & 0xffff_ffff_ffff) << 80;
    let rand_a = (random >> 64) & 0xfff; // 12 bits
    let rand_b = random & 0x3fff_ffff_ffff_ffff; // 62 bits
    time | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
}

fn format_uuid(v: u128) -> Arc<str> {
    /// Word-aligned, so the UTF-8 check takes its two-words-at-a-time path.
    #[repr(align(8))]
    struct Text([u8; 36]);
    let mut out = Text(*b"00000000-0000-0000-0000-000000000000");
    let bytes = v.to_be_bytes();
    // Groups of 4, 2, 2, 2 and 6 bytes in hex, each after its dash.
    for (from, to, at) in [(0, 4, 0), (4, 6, 9), (6, 8, 14), (8, 10, 19), (10, 16, 24)] {
        crate::text::hex_into(&mut out.0[at..at + 2 * (to - from)], &bytes[from..to]);
    }
    // Only ASCII hex digits and dashes were written.
    std::str::from_utf8(&out.0).unwrap_or_default().into()
}

/// Which function, and which of its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub function: String,
    /// `LATEST`, a version number or an alias (SPEC section 9).
    pub qualifier: String,
}

/// The kind of trigger an invocation came through (`X-Fc-Trigger-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Http,
    Cron,
    Mqtt,
    Nats,
    Event,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Http => "http",
            TriggerKind::Cron => "cron",
            TriggerKind::Mqtt => "mqtt",
            TriggerKind::Nats => "nats",
            TriggerKind::Event => "event",
        }
    }
}

/// Where an invocation came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A client request on a listener.
    Http { peer: SocketAddr, https: bool },
    /// A cron tick due at `scheduled`.
    Cron {
        scheduled: chrono::DateTime<chrono::Utc>,
    },
    /// An MQTT message on `topic`.
    Mqtt { topic: String },
    /// A NATS message on `subject`.
    Nats { subject: String },
    /// An event published to the event API.
    Event { event_id: String },
    /// A durable task run by a queue worker; `origin` is the door that enqueued it.
    Queue {
        task_id: String,
        attempt: u32,
        origin: TriggerKind,
    },
}

impl Source {
    /// The kind of trigger this invocation belongs to.
    pub fn kind(&self) -> TriggerKind {
        match self {
            Source::Http { .. } => TriggerKind::Http,
            Source::Cron { .. } => TriggerKind::Cron,
            Source::Mqtt { .. } => TriggerKind::Mqtt,
            Source::Nats { .. } => TriggerKind::Nats,
            Source::Event { .. } => TriggerKind::Event,
            Source::Queue { origin, .. } => *origin,
        }
    }
}

/// One request for one function.
#[derive(Debug)]
pub struct Invocation<B> {
    pub target: Target,
    /// The trigger's name.
    pub trigger: Arc<str>,
    pub source: Source,
    pub request_id: Arc<str>,
    /// The request as the function will see it (path already relative to the trigger).
    pub request: http::Request<B>,
    /// The span this invocation continues (tracing on): the client request's, a message's,
    /// an async attempt's. Its first span of its own is a child of it.
    pub trace: Option<crate::trace::Context>,
    /// Header values built before [`Invocation::stamp`] (the HTTP door's).
    pub prebuilt: Prebuilt,
}

/// Header values built ahead of [`Invocation::stamp`]: once per trigger (its name, function
/// and qualifier), per connection (the client's address) or per request (its id, shared with
/// the response's header). Cloning one is a reference count; building one checks and copies
/// its text. `stamp` uses a trigger's or a request's value only when its bytes are the text
/// it stands for (a qualifier a claim chose, a target the router picked), so a stale or
/// missing one costs a build, never a wrong header.
#[derive(Debug, Clone, Default)]
pub struct Prebuilt {
    pub trigger: Option<Arc<TriggerValues>>,
    pub request_id: Option<HeaderValue>,
    /// `X-Forwarded-For` for a [`Source::Http`] invocation: its peer's address, from the
    /// same [`crate::ConnInfo`] as the source.
    pub forwarded_for: Option<HeaderValue>,
}

/// A trigger's name and target as header values.
#[derive(Debug, Default)]
pub struct TriggerValues {
    name: Option<HeaderValue>,
    function: Option<HeaderValue>,
    qualifier: Option<HeaderValue>,
}

impl TriggerValues {
    pub fn new(name: &str, target: Option<&Target>) -> TriggerValues {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        TriggerValues {
            name: value(name),
            function: target.and_then(|t| value(&t.function)),
            qualifier: target.and_then(|t| value(&t.qualifier)),
        }
    }
}

impl<B> Invocation<B> {
    /// The same invocation with its body converted.
    pub fn map_body<C>(self, f: impl FnOnce(B) -> C) -> Invocation<C> {
        Invocation {
            target: self.target,
            trigger: self.trigger,
            source: self.source,
            request_id: self.request_id,
            request: self.request.map(f),
            trace: self.trace,
            prebuilt: self.prebuilt,
        }
    }

    /// Sets the headers every function receives (SPEC sections 3 and 8): `X-Fc-Request-Id`,
    /// `X-Fc-Function-Name`, `X-Fc-Trigger-Name`, `X-Fc-Trigger-Type`, `X-Fc-Qualifier`; for
    /// a client request `X-Forwarded-For` and `X-Forwarded-Proto`; for a cron tick
    /// `X-Fc-Scheduled-Time`; for a broker message `X-Topic`; for an event
    /// `X-Fc-Event-Id`; for a queued task `X-Fc-Async-Task-Id`. Values the gateway sets replace whatever was there.
    pub fn stamp(&mut self) {
        let pre = &self.prebuilt;
        let values = pre.trigger.as_deref();
        let headers = self.request.headers_mut();
        headers.reserve(GATEWAY_HEADERS);
        set(
            headers,
            &names::REQUEST_ID,
            pre.request_id.as_ref(),
            &self.request_id,
        );
        set(
            headers,
            &names::FUNCTION_NAME,
            values.and_then(|v| v.function.as_ref()),
            &self.target.function,
        );
        set(
            headers,
            &names::TRIGGER_NAME,
            values.and_then(|v| v.name.as_ref()),
            &self.trigger,
        );
        headers.insert(
            names::TRIGGER_TYPE.clone(),
            HeaderValue::from_static(self.source.kind().as_str()),
        );
        set(
            headers,
            &names::QUALIFIER,
            values.and_then(|v| v.qualifier.as_ref()),
            &self.target.qualifier,
        );
        match &self.source {
            Source::Http { peer, https } => {
                let forwarded = match &pre.forwarded_for {
                    Some(v) => Some(v.clone()),
                    None => {
                        let mut ip = String::with_capacity(15);
                        crate::text::push_ip(&mut ip, peer.ip());
                        HeaderValue::from_str(&ip).ok()
                    }
                };
                if let Some(v) = forwarded {
                    headers.insert(names::FORWARDED_FOR.clone(), v);
                }
                headers.insert(
                    names::FORWARDED_PROTO.clone(),
                    HeaderValue::from_static(if *https { "https" } else { "http" }),
                );
            }
            Source::Cron { scheduled } => set(
                headers,
                &names::SCHEDULED_TIME,
                None,
                &scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            Source::Mqtt { topic } => set(headers, &names::TOPIC, None, topic),
            Source::Nats { subject } => set(headers, &names::TOPIC, None, subject),
            Source::Event { event_id } => set(headers, &names::EVENT_ID, None, event_id),
            Source::Queue { task_id, .. } => set(headers, &names::ASYNC_TASK_ID, None, task_id),
        }
    }
}

/// How many headers [`Invocation::stamp`] may add: the gateway's eight, and `traceparent`
/// and `tracestate` (tracing on).
pub const GATEWAY_HEADERS: usize = 10;

/// The names [`Invocation::stamp`] sets, parsed once.
pub(crate) mod names {
    use http::HeaderName;
    pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-fc-request-id");
    pub static FUNCTION_NAME: HeaderName = HeaderName::from_static("x-fc-function-name");
    pub static TRIGGER_NAME: HeaderName = HeaderName::from_static("x-fc-trigger-name");
    pub static TRIGGER_TYPE: HeaderName = HeaderName::from_static("x-fc-trigger-type");
    pub static QUALIFIER: HeaderName = HeaderName::from_static("x-fc-qualifier");
    pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub static SCHEDULED_TIME: HeaderName = HeaderName::from_static("x-fc-scheduled-time");
    pub static TOPIC: HeaderName = HeaderName::from_static("x-topic");
    pub static EVENT_ID: HeaderName = HeaderName::from_static("x-fc-event-id");
    pub static ASYNC_TASK_ID: HeaderName = HeaderName::from_static("x-fc-async-task-id");
}

/// Sets `name` to `value`: `prebuilt` when it holds exactly that text, else built from it.
fn set(headers: &mut HeaderMap, name: &HeaderName, prebuilt: Option<&HeaderValue>, value: &str) {
    let v = match prebuilt {
        Some(v) if v.as_bytes() == value.as_bytes() => v.clone(),
        _ => match HeaderValue::from_str(value) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    headers.insert(name.clone(), v);
}

/// A header value as stored: text when it is UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredValue {
    Text(String),
    Binary { b64: String },
}

impl StoredValue {
    /// Its stored size in bytes.
    pub fn len(&self) -> usize {
        match self {
            StoredValue::Text(s) => s.len(),
            StoredValue::Binary { b64 } => b64.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The durable form of an invocation (its body is stored beside it, as bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInvocation {
    pub target: Target,
    pub trigger: String,
    pub origin: TriggerKind,
    pub request_id: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, StoredValue)>,
}

impl StoredInvocation {
    /// The stored form of `inv` (its body is the caller's to store).
    pub fn from_invocation<B>(inv: &Invocation<B>) -> StoredInvocation {
        StoredInvocation {
            target: inv.target.clone(),
            trigger: inv.trigger.to_string(),
            origin: inv.source.kind(),
            request_id: inv.request_id.to_string(),
            method: inv.request.method().to_string(),
            uri: inv.request.uri().to_string(),
            headers: inv
                .request
                .headers()
                .iter()
                .map(|(k, v)| {
                    let value = match v.to_str() {
                        Ok(s) => StoredValue::Text(s.to_string()),
                        Err(_) => StoredValue::Binary {
                            b64: B64.encode(v.as_bytes()),
                        },
                    };
                    (k.as_str().to_string(), value)
                })
                .collect(),
        }
    }

    /// Rebuilds the invocation for one attempt of task `task_id`.
    pub fn to_invocation(
        &self,
        body: Bytes,
        task_id: &str,
        attempt: u32,
    ) -> Result<Invocation<http_body_util::Full<Bytes>>, String> {
        let mut builder = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.uri.as_str());
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("stored header '{k}': {e}"))?;
            let value = match v {
                StoredValue::Text(s) => HeaderValue::from_str(s),
                StoredValue::Binary { b64 } => {
                    let bytes = B64
                        .decode(b64)
                        .map_err(|e| format!("stored header '{k}': {e}"))?;
                    HeaderValue::from_bytes(&bytes)
                }
            }
            .map_err(|e| format!("stored header '{k}': {e}"))?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(http_body_util::Full::new(body))
            .map_err(|e| format!("the stored request is invalid: {e}"))?;
        Ok(Invocation {
            target: self.target.clone(),
            trigger: self.trigger.as_str().into(),
            source: Source::Queue {
                task_id: task_id.to_string(),
                attempt,
                origin: self.origin,
            },
            request_id: self.request_id.as_str().into(),
            request,
            trace: None,
            prebuilt: Prebuilt::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation() -> Invocation<()> {
        let request = http::Request::builder()
            .method("POST")
            .uri("https://example.com/a/b?x=1")
            .header("x-fc-trigger-type", "forged")
            .header("x-bin", HeaderValue::from_bytes(&[0xff, b'a']).unwrap())
            .body(())
            .unwrap();
        Invocation {
            target: Target {
                function: "echo".into(),
                qualifier: "LATEST".into(),
            },
            trigger: "t".into(),
            source: Source::Http {
                peer: "10.1.2.3:5555".parse().unwrap(),
                https: true,
            },
            request_id: "rid".into(),
            request,
            trace: None,
            prebuilt: Prebuilt::default(),
        }
    }

    #[test]
    fn stamp_sets_the_gateway_headers_from_the_source() {
        let mut inv = invocation();
        inv.stamp();
        let h = inv.request.headers();
        assert_eq!(h["x-fc-trigger-type"], "http");
        assert_eq!(h["x-fc-function-name"], "echo");
        assert_eq!(h["x-fc-trigger-name"], "t");
        assert_eq!(h["x-fc-qualifier"], "LATEST");
        assert_eq!(h["x-fc-request-id"], "rid");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn stamp_uses_a_prebuilt_value_only_for_the_text_it_stands_for() {
        // The trigger's values name another function and qualifier than the invocation's
        // (a route by name, a qualifier chosen by a claim): those are built from the target.
        let stale = Target {
            function: "other".into(),
            qualifier: "prod".into(),
        };
        let mut inv = invocation();
        inv.prebuilt = Prebuilt {
            trigger: Some(Arc::new(TriggerValues::new("t", Some(&stale)))),
            request_id: Some(HeaderValue::from_static("another-id")),
            forwarded_for: Some(HeaderValue::from_static("10.1.2.3")),
        };
        inv.stamp();
        let h = inv.request.headers();
        assert_eq!(h["x-fc-function-name"], "echo");
        assert_eq!(h["x-fc-qualifier"], "LATEST");
        assert_eq!(h["x-fc-request-id"], "rid");
        assert_eq!(h["x-fc-trigger-name"], "t");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        // Matching values are the prebuilt ones (the same bytes, shared).
        let mut inv = invocation();
        let values = TriggerValues::new("t", Some(&inv.target));
        let function = values.function.clone().unwrap();
        inv.prebuilt.trigger = Some(Arc::new(values));
        inv.stamp();
        let h = inv.request.headers();
        assert_eq!(h["x-fc-function-name"], function);
        assert_eq!(
            h["x-fc-function-name"].as_bytes().as_ptr(),
            function.as_bytes().as_ptr()
        );
        assert_eq!(h["x-fc-qualifier"], "LATEST");
    }

    #[test]
    fn the_stored_form_round_trips_every_byte() {
        let mut inv = invocation();
        inv.stamp();
        let stored = StoredInvocation::from_invocation(&inv);
        let json = serde_json::to_string(&stored).unwrap();
        let back: StoredInvocation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored);
        let mut again = back
            .to_invocation(Bytes::from_static(b"body"), "task-1", 2)
            .unwrap();
        assert_eq!(again.request.headers()["x-bin"].as_bytes(), &[0xff, b'a']);
        assert_eq!(again.request.uri(), "https://example.com/a/b?x=1");
        assert_eq!(again.request.method(), "POST");
        again.stamp();
        // A queued task keeps the kind of door it came through.
        assert_eq!(again.request.headers()["x-fc-trigger-type"], "http");
        assert_eq!(again.request.headers()["x-fc-async-task-id"], "task-1");
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v7_and_grow_with_time() {
        let id = format_uuid(v7(0x0190_1234_5678, u128::MAX));
        assert_eq!(&*id, "01901234-5678-7fff-bfff-ffffffffffff");
        let id = format_uuid(v7(0x0190_1234_5678, 0));
        assert_eq!(&*id, "01901234-5678-7000-8000-000000000000");
        // A later millisecond sorts after, whatever the random bits.
        let (a, b) = (format_uuid(v7(1_000, u128::MAX)), format_uuid(v7(1_001, 0)));
        assert!(a < b, "{a} < {b}");
        let fresh = new_request_id();
        assert_eq!(fresh.as_bytes()[14], b'7', "{fresh}");
    }
}
