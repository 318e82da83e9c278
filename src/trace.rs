//! Tracing with OpenTelemetry (SPEC section 9): W3C trace context, spans, and a bounded
//! exporter of OTLP over HTTP (protobuf).
//!
//! Every door and stage reaches the one tracer of the process through [`start`]; with no
//! `[tracing]` table there is none, [`start`] gives a span that is off (no ids, nothing
//! recorded) and the callers leave `traceparent` alone. A span that is not sampled still has
//! ids, so the context propagates; only a sampled one is recorded, and it is handed to the
//! exporter when it is dropped. The exporter runs off the request path: a bounded queue
//! (a full one drops the span and counts it), batches of up to [`MAX_BATCH`] spans, one
//! export in flight; a slow or absent collector costs dropped spans, never a request's time.
//!
//! The protobuf messages are declared here with `prost` (the few OTLP messages a span
//! needs, with the field numbers of `opentelemetry/proto/trace/v1/trace.proto`); the tests
//! decode what is sent with the `opentelemetry-proto` crate's own types.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::config::TracingConfig;

/// The most spans waiting for the exporter; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// The most spans in one export.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// One export's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// A span's place in a trace, as W3C trace context carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// `tracestate`, passed on as received.
    pub state: Option<Arc<str>>,
}

impl Context {
    /// A `traceparent` value (version 00, or a later version read as 00 allows), with its
    /// `tracestate`; `None` when malformed.
    pub fn parse(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<Context> {
        let s = std::str::from_utf8(traceparent).ok()?.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let lower_hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = tracestate
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 512)
            .map(Arc::from);
        Some(Context {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }

    /// The context a request's or message's headers carry, if any.
    pub fn from_headers(headers: &HeaderMap) -> Option<Context> {
        let tp = headers.get(&TRACEPARENT)?;
        Context::parse(
            tp.as_bytes(),
            headers.get(&TRACESTATE).map(HeaderValue::as_bytes),
        )
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Sets `traceparent` (and `tracestate`, or removes a stale one) to name this span.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        match self
            .state
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            Some(v) => {
                headers.insert(TRACESTATE.clone(), v);
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// OTLP span kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute's value.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Str(s.clone())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(v.into())
    }
}

/// A sampled span's data, handed to the exporter when the span ends.
struct Recording {
    tracer: Arc<Tracer>,
    parent: Option<[u8; 8]>,
    name: &'static str,
    kind: Kind,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span ended in error.
    error: Option<String>,
    links: Vec<Context>,
}

/// A span: off (no tracer), not sampled (ids only, so the context propagates), or
/// recording. Ends when dropped.
pub struct Span {
    ctx: Option<Context>,
    rec: Option<Box<Recording>>,
}

impl Span {
    /// A span of nothing: tracing is off.
    pub fn off() -> Span {
        Span {
            ctx: None,
            rec: None,
        }
    }

    /// Its context; `None` when tracing is off.
    pub fn context(&self) -> Option<&Context> {
        self.ctx.as_ref()
    }

    pub fn is_recording(&self) -> bool {
        self.rec.is_some()
    }

    /// Sets an attribute (kept only when the span is recorded).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(r) = &mut self.rec {
            r.attributes.push((key, value.into()));
        }
    }

    /// Like [`Span::set`], for values that cost something to build.
    pub fn set_with<V: Into<Value>>(&mut self, key: &'static str, value: impl FnOnce() -> V) {
        if let Some(r) = &mut self.rec {
            r.attributes.push((key, value().into()));
        }
    }

    /// Marks the span as failed.
    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some(r) = &mut self.rec {
            r.error = Some(message.into());
        }
    }

    /// `http.response.status_code`; a server span with a 5xx, or a client span with a 4xx
    /// or 5xx, is in error (OpenTelemetry's HTTP conventions).
    pub fn set_status(&mut self, status: u16) {
        if let Some(r) = &mut self.rec {
            r.attributes
                .push(("http.response.status_code", Value::Int(status.into())));
            let failed = status >= 500 || (r.kind == Kind::Client && status >= 400);
            if failed && r.error.is_none() {
                r.error = Some(format!("HTTP {status}"));
            }
        }
    }

    /// A link to a span of another trace.
    pub fn link(&mut self, to: &Context) {
        if let Some(r) = &mut self.rec {
            r.links.push(to.clone());
        }
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let (Some(mut rec), Some(ctx)) = (self.rec.take(), self.ctx.take()) {
            rec.end_ns = now_ns();
            let tracer = rec.tracer.clone();
            tracer.submit(ctx, rec);
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

/// The process's tracer: the sampling rule and the exporter's queue.
pub struct Tracer {
    config: TracingConfig,
    /// Traces whose id's low 63 bits fall below this are sampled (OpenTelemetry's
    /// `TraceIdRatioBased`): every node decides the same for the same trace.
    bound: u64,
    queue: tokio::sync::mpsc::Sender<(Context, Box<Recording>)>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("config", &self.config)
            .finish()
    }
}

impl Tracer {
    /// Starts a span, a child of `parent` (in its trace) or the root of a new trace. It is
    /// sampled when the parent is (a client's "not sampled" is kept) and its trace id falls
    /// within `sample_ratio`.
    pub fn start(
        self: &Arc<Self>,
        name: &'static str,
        kind: Kind,
        parent: Option<&Context>,
    ) -> Span {
        let trace_id = parent.map_or_else(random_id::<16>, |p| p.trace_id);
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default()) >> 1;
        let sampled = parent.is_none_or(|p| p.sampled) && low < self.bound;
        let ctx = Context {
            trace_id,
            span_id: random_id::<8>(),
            sampled,
            state: parent.and_then(|p| p.state.clone()),
        };
        let rec = sampled.then(|| {
            Box::new(Recording {
                tracer: self.clone(),
                parent: parent.map(|p| p.span_id),
                name,
                kind,
                start_ns: now_ns(),
                end_ns: 0,
                attributes: Vec::with_capacity(6),
                error: None,
                links: Vec::new(),
            })
        });
        Span {
            ctx: Some(ctx),
            rec,
        }
    }

    fn submit(&self, ctx: Context, rec: Box<Recording>) {
        if self.queue.try_send((ctx, rec)).is_err() {
            crate::metrics::METRICS.trace_spans_dropped.inc();
        }
    }
}

/// A context a request's first span links to (in request extensions): the request that
/// posted an event whose own trace the event's deliveries continue.
#[derive(Clone, Debug)]
pub struct Link(pub Context);

/// A span handed along with a request in its extensions (they must be `Clone`): the run
/// span, which the runtime takes out and ends when the guest is done.
#[derive(Clone)]
pub struct Handoff(Arc<std::sync::Mutex<Option<Span>>>);

impl Handoff {
    pub fn new(span: Span) -> Handoff {
        Handoff(Arc::new(std::sync::Mutex::new(Some(span))))
    }

    pub fn take(&self) -> Option<Span> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

static CURRENT: RwLock<Option<Arc<Tracer>>> = RwLock::new(None);

/// The tracer, if `[tracing]` is configured.
pub fn tracer() -> Option<Arc<Tracer>> {
    CURRENT.read().ok().and_then(|t| t.clone())
}

/// Starts a span with the process's tracer; a span that is off when there is none.
pub fn start(name: &'static str, kind: Kind, parent: Option<&Context>) -> Span {
    match tracer() {
        Some(t) => t.start(name, kind, parent),
        None => Span::off(),
    }
}

/// Installs the tracer `config` describes (none when `None`), keeping the running one when
/// the configuration is unchanged. Must run inside a tokio runtime (the exporter is a task).
pub fn install(config: Option<&TracingConfig>) {
    let Ok(mut current) = CURRENT.write() else {
        return;
    };
    if current.as_ref().map(|t| &t.config) == config {
        return;
    }
    // Only the sampling changed: the running exporter (and its queue, in order) goes on.
    let same_exporter = |t: &Tracer, c: &TracingConfig| {
        t.config.traces_url == c.traces_url
            && t.config.headers == c.headers
            && t.config.service_name == c.service_name
    };
    *current = config.and_then(|c| {
        let queue = match current.as_ref().filter(|t| same_exporter(t, c)) {
            Some(t) => t.queue.clone(),
            None => match Exporter::new(c) {
                Ok(exporter) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
                    let task = tokio::spawn(exporter.run(rx));
                    if let Ok(mut e) = EXPORTERS.lock() {
                        e.retain(|t| !t.is_finished());
                        e.push(task);
                    }
                    tx
                }
                Err(e) => {
                    tracing::error!("tracing is off: the OTLP exporter could not be built: {e}");
                    return None;
                }
            },
        };
        let bound = if c.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (c.sample_ratio * (1u64 << 63) as f64) as u64
        };
        Some(Arc::new(Tracer {
            config: c.clone(),
            bound,
            queue,
        }))
    });
}

static EXPORTERS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// At shutdown: takes the tracer down and waits, at most `within`, for the exporters to send
/// what is queued (each ends once the last span holding its tracer is gone).
pub async fn shutdown(within: Duration) {
    if let Ok(mut current) = CURRENT.write() {
        *current = None;
    }
    let tasks: Vec<_> = EXPORTERS
        .lock()
        .map(|mut e| e.drain(..).collect())
        .unwrap_or_default();
    let _ = tokio::time::timeout(within, futures::future::join_all(tasks)).await;
}

/// Sends batches of spans to the collector.
struct Exporter {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    resource: otlp::Resource,
}

impl Exporter {
    fn new(c: &TracingConfig) -> anyhow::Result<Exporter> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let mut headers = HeaderMap::new();
        for (k, v) in &c.headers {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(Exporter {
            client,
            url: c.traces_url.clone(),
            headers,
            resource: otlp::Resource {
                attributes: vec![
                    otlp::kv("service.name", Value::Str(c.service_name.clone())),
                    otlp::kv("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
                    otlp::kv("telemetry.sdk.name", Value::from("wasmgate")),
                ],
            },
        })
    }

    async fn run(self, mut rx: tokio::sync::mpsc::Receiver<(Context, Box<Recording>)>) {
        let mut warned: Option<tokio::time::Instant> = None;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let body = self.encode(batch.drain(..));
            let result = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            let m = &crate::metrics::METRICS;
            match result {
                Ok(_) => {
                    m.trace_spans_exported.inc_by(n);
                }
                Err(e) => {
                    m.trace_spans_dropped.inc_by(n);
                    // One warning a minute at most: a collector that is down is not news
                    // with every batch.
                    if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60)) {
                        warned = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            url = %self.url,
                            "exporting {n} spans failed (dropped; counted in wasmgate_trace_spans_dropped_total): {e}"
                        );
                    }
                }
            }
        }
    }

    fn encode(&self, spans: impl Iterator<Item = (Context, Box<Recording>)>) -> Vec<u8> {
        use prost::Message;
        let spans = spans.map(|(ctx, r)| otlp::span(&ctx, *r)).collect();
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "wasmgate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                }],
            }],
        };
        request.encode_to_vec()
    }
}

/// The OTLP messages a span export needs (`opentelemetry/proto/collector/trace/v1` and
/// `trace/v1`, `common/v1`, `resource/v1`), with their field numbers.
mod otlp {
    use super::{Context, Recording, Value};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, repeated, tag = "13")]
        pub links: Vec<Link>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Link {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(fixed32, tag = "6")]
        pub flags: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Any", tags = "1, 3")]
        pub value: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Any {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(int64, tag = "3")]
        IntValue(i64),
    }

    pub fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(match value {
                    Value::Str(s) => Any::StringValue(s),
                    Value::Int(i) => Any::IntValue(i),
                }),
            }),
        }
    }

    /// W3C trace flags in the span's `flags` field: sampled, plus "the flags are known".
    fn flags(sampled: bool) -> u32 {
        0x100 | u32::from(sampled)
    }

    pub fn span(ctx: &Context, r: Recording) -> Span {
        Span {
            trace_id: ctx.trace_id.to_vec(),
            span_id: ctx.span_id.to_vec(),
            trace_state: ctx.state.as_deref().unwrap_or_default().to_string(),
            parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: r.name.to_string(),
            kind: r.kind as i32,
            start_time_unix_nano: r.start_ns,
            end_time_unix_nano: r.end_ns.max(r.start_ns),
            attributes: r.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            links: r
                .links
                .iter()
                .map(|l| Link {
                    trace_id: l.trace_id.to_vec(),
                    span_id: l.span_id.to_vec(),
                    trace_state: l.state.as_deref().unwrap_or_default().to_string(),
                    flags: flags(l.sampled),
                })
                .collect(),
            status: r.error.map(|message| Status { message, code: 2 }),
            flags: flags(ctx.sampled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_and_written_per_w3c() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Context::parse(tp, Some(b"congo=t61rcWkgMzE")).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent().as_bytes(), tp);
        assert_eq!(c.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let c = Context::parse(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            None,
        )
        .unwrap();
        assert!(!c.sampled);
        // A later version may carry more fields; 00 may not.
        assert!(
            Context::parse(
                b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                None
            )
            .is_some()
        );
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                Context::parse(bad, None).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
