//! Tracing with OpenTelemetry (SPEC section 9): W3C trace context, spans, and a bounded
//! exporter of OTLP over HTTP (protobuf).
//!
//! Every door and stage reaches the one tracer of the process through [`start`]; with no
//! `[tracing]` table there is none, [`start`] gives a span that is off (no ids, nothing
//! recorded) and the callers leave `traceparent` alone. A span that is not sampled still has
//! ids, so the context propagates; only a sampled one is recorded, and it is handed to the
//! exporter, encoded, when it is dropped. The exporter runs off the request path: a bounded
//! queue (a full one drops the span and counts it), batches of up to [`MAX_BATCH`] spans,
//! one export in flight; a slow or absent collector costs dropped spans, never a request's
//! time.
//!
//! The protobuf is written by hand ([`otlp`]: the few OTLP messages a span export needs,
//! with the field numbers of `opentelemetry/proto/trace/v1/trace.proto`): each span on the
//! thread that ends it, into that thread's buffer, and the exporter frames the slices into
//! one request; the tests decode it with the `opentelemetry-proto` crate's own types. With
//! `prost` structs in between (a copy of every id, name and attribute first), encoding cost
//! a tenth of a core at 70,000 spans a second on this machine kind.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::config::TracingConfig;

/// The most spans waiting for the exporter; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// The most spans in one export.
pub const MAX_BATCH: usize = 512;
/// How often the exporter looks at its queue; it is woken sooner only when a whole batch
/// is waiting. A span never wakes it by itself: a wake-up per span (another thread's task
/// to poll, a timer to arm) cost more than the span.
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
    /// Read from a carrier (a request's or message's headers, a stored task), not made by
    /// this process just now: a span continuing it has a remote parent.
    pub remote: bool,
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
            remote: true,
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

    /// The `traceparent` value, written into a fixed buffer.
    fn traceparent_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 15)];
        }
        for (i, b) in self.span_id.iter().enumerate() {
            out[36 + 2 * i] = HEX[usize::from(b >> 4)];
            out[37 + 2 * i] = HEX[usize::from(b & 15)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// Sets `traceparent` (and `tracestate`, or removes a stale one) to name this span.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_bytes(&self.traceparent_bytes()) {
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
        String::from_utf8_lossy(&self.traceparent_bytes()[3..35]).into_owned()
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
    /// A string the request holds anyway (its id, its trigger's name): no copy.
    Shared(Arc<str>),
    Static(&'static str),
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

impl From<&Arc<str>> for Value {
    fn from(s: &Arc<str>) -> Value {
        Value::Shared(s.clone())
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
pub struct Recording {
    parent: Option<[u8; 8]>,
    /// The parent came from another process (or a stored task).
    parent_remote: bool,
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
            // To the tracer of now: a span that outlives a reload goes to the new exporter
            // (or nowhere when tracing was turned off).
            with_tracer(|t| t.submit(ctx, rec));
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
    queue: tokio::sync::mpsc::Sender<bytes::Bytes>,
    /// The exporter's signals.
    signals: Arc<Signals>,
}

/// What wakes an exporter besides its clock.
#[derive(Default)]
struct Signals {
    /// A whole batch is waiting.
    full: tokio::sync::Notify,
    /// Send what is queued and stop.
    stop: tokio::sync::Notify,
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
    pub fn start(&self, name: &'static str, kind: Kind, parent: Option<&Context>) -> Span {
        let trace_id = parent.map_or_else(random_id::<16>, |p| p.trace_id);
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default()) >> 1;
        let sampled = parent.is_none_or(|p| p.sampled) && low < self.bound;
        let ctx = Context {
            trace_id,
            span_id: random_id::<8>(),
            sampled,
            state: parent.and_then(|p| p.state.clone()),
            remote: false,
        };
        let rec = sampled.then(|| {
            Box::new(Recording {
                parent: parent.map(|p| p.span_id),
                parent_remote: parent.is_some_and(|p| p.remote),
                name,
                kind,
                start_ns: now_ns(),
                end_ns: 0,
                attributes: Vec::new(),
                error: None,
                links: Vec::new(),
            })
        });
        Span {
            ctx: Some(ctx),
            rec,
        }
    }

    /// Queues the span, encoded here: the span and its attributes are freed on the thread
    /// that made them, and what crosses to the exporter is one slice of a thread's buffer
    /// (freeing a span's pieces on the exporter's thread contended for glibc's arenas).
    fn submit(&self, ctx: Context, rec: Box<Recording>) {
        let encoded = otlp::framed_span(&ctx, &rec);
        drop(rec);
        if self.queue.try_send(encoded).is_err() {
            crate::metrics::METRICS.trace_spans_dropped.inc();
        } else if self.queue.capacity() + MAX_BATCH <= QUEUE_CAPACITY {
            self.signals.full.notify_one();
        }
    }
}

static CURRENT: RwLock<Option<Arc<Tracer>>> = RwLock::new(None);

/// Whether a tracer is installed: the hot path's check when tracing is off costs one load.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Bumped whenever [`CURRENT`] changes. Each thread keeps its own reference to the tracer
/// and refreshes it when this moves: every span start and end needs the tracer, and a
/// shared lock or a shared `Arc` count there bounced one cache line between the cores at
/// every span (measured: 12% of the throughput, with 1% of the traces sampled).
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LOCAL: RefCell<(u64, Option<Arc<Tracer>>)> = const { RefCell::new((u64::MAX, None)) };
}

/// Runs `f` with the process's tracer, if there is one.
fn with_tracer<R>(f: impl FnOnce(&Tracer) -> R) -> Option<R> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    let generation = GENERATION.load(Ordering::Acquire);
    LOCAL.with(|local| {
        let mut local = local.try_borrow_mut().ok()?;
        if local.0 != generation {
            *local = (generation, CURRENT.read().ok().and_then(|t| t.clone()));
        }
        local.1.as_deref().map(f)
    })
}

/// Whether tracing is on (a `[tracing]` table is in force).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Starts a span with the process's tracer; a span that is off when there is none.
pub fn start(name: &'static str, kind: Kind, parent: Option<&Context>) -> Span {
    with_tracer(|t| t.start(name, kind, parent)).unwrap_or_else(Span::off)
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
    let previous = current.take();
    *current = config.and_then(|c| {
        let (queue, signals) = match previous.as_ref().filter(|t| same_exporter(t, c)) {
            Some(t) => (t.queue.clone(), t.signals.clone()),
            None => match Exporter::new(c) {
                Ok(exporter) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
                    let signals = Arc::new(Signals::default());
                    let task = tokio::spawn(exporter.run(rx, signals.clone()));
                    if let Ok(mut e) = EXPORTERS.lock() {
                        e.retain(|t| !t.is_finished());
                        e.push(task);
                    }
                    (tx, signals)
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
            signals,
        }))
    });
    // An exporter no tracer uses any more sends what it holds and stops.
    if let Some(old) = previous
        && current
            .as_ref()
            .is_none_or(|t| !Arc::ptr_eq(&t.signals, &old.signals))
    {
        old.signals.stop.notify_one();
    }
    GENERATION.fetch_add(1, Ordering::AcqRel);
    ENABLED.store(current.is_some(), Ordering::Release);
}

static EXPORTERS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// At shutdown: takes the tracer down and waits, at most `within`, for the exporters to send
/// what is queued.
pub async fn shutdown(within: Duration) {
    if let Ok(mut current) = CURRENT.write() {
        if let Some(t) = current.take() {
            t.signals.stop.notify_one();
        }
        GENERATION.fetch_add(1, Ordering::AcqRel);
        ENABLED.store(false, Ordering::Release);
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
    service_name: String,
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
            service_name: c.service_name.clone(),
        })
    }

    async fn run(self, mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>, signals: Arc<Signals>) {
        let mut warned: Option<tokio::time::Instant> = None;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut buffer = bytes::BytesMut::new();
        let mut stopping = false;
        let mut closed = false;
        // A whole batch went out (or the exporter is stopping): look again at once.
        let mut more = false;
        loop {
            if !more && !stopping && !closed {
                tokio::select! {
                    _ = tokio::time::sleep(BATCH_DELAY) => {}
                    _ = signals.full.notified() => {}
                    _ = signals.stop.notified() => stopping = true,
                }
            }
            // What is queued now, a batch at a time.
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                if stopping || closed {
                    return;
                }
                more = false;
                continue;
            }
            more = batch.len() == MAX_BATCH || stopping || closed;
            let n = batch.len() as u64;
            let body = otlp::encode(&mut buffer, &self.service_name, batch.drain(..));
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
}

/// OTLP's protobuf, written by hand: one `ExportTraceServiceRequest` with one resource and
/// one scope (`opentelemetry/proto/{collector/trace,trace,common,resource}/v1`).
mod otlp {
    use bytes::{Bytes, BytesMut};

    use super::{Context, Recording, Value};

    const VARINT: u32 = 0;
    const FIXED64: u32 = 1;
    const LEN: u32 = 2;
    const FIXED32: u32 = 5;

    fn varint(buf: &mut BytesMut, mut v: u64) {
        while v >= 0x80 {
            buf.extend_from_slice(&[(v as u8) | 0x80]);
            v >>= 7;
        }
        buf.extend_from_slice(&[v as u8]);
    }

    fn key(buf: &mut BytesMut, field: u32, wire: u32) {
        varint(buf, u64::from((field << 3) | wire));
    }

    fn bytes(buf: &mut BytesMut, field: u32, b: &[u8]) {
        key(buf, field, LEN);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }

    fn fixed64(buf: &mut BytesMut, field: u32, v: u64) {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    fn fixed32(buf: &mut BytesMut, field: u32, v: u32) {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A nested message: room for the longest length varint is kept in front while `f`
    /// writes it, then the length goes there and the unused room is closed up.
    fn nested(buf: &mut BytesMut, field: u32, f: impl FnOnce(&mut BytesMut)) {
        key(buf, field, LEN);
        let at = buf.len();
        buf.extend_from_slice(&[0; 5]);
        f(buf);
        let len = buf.len() - at - 5;
        let mut prefix = [0u8; 5];
        let mut n = 0;
        let mut v = len as u64;
        loop {
            if v < 0x80 {
                prefix[n] = v as u8;
                n += 1;
                break;
            }
            prefix[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        buf[at..at + n].copy_from_slice(&prefix[..n]);
        buf.copy_within(at + 5.., at + n);
        buf.truncate(buf.len() - (5 - n));
    }

    /// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1; int_value = 3 }`.
    fn attribute(buf: &mut BytesMut, field: u32, k: &str, v: &Value) {
        nested(buf, field, |buf| {
            bytes(buf, 1, k.as_bytes());
            nested(buf, 2, |buf| match v {
                Value::Str(s) => bytes(buf, 1, s.as_bytes()),
                Value::Shared(s) => bytes(buf, 1, s.as_bytes()),
                Value::Static(s) => bytes(buf, 1, s.as_bytes()),
                Value::Int(i) => {
                    key(buf, 3, VARINT);
                    varint(buf, *i as u64);
                }
            });
        });
    }

    /// A span's or link's `flags`: the W3C trace flags (sampled) in the low byte, then
    /// OTLP's "whether the parent (or linked span) is remote is known" (0x100) and "it is
    /// remote" (0x200).
    fn flags(sampled: bool, remote: bool) -> u32 {
        let remote = if remote { 0x200 } else { 0 };
        0x100 | remote | u32::from(sampled)
    }

    fn span(buf: &mut BytesMut, ctx: &Context, r: &Recording) {
        bytes(buf, 1, &ctx.trace_id);
        bytes(buf, 2, &ctx.span_id);
        if let Some(state) = &ctx.state {
            bytes(buf, 3, state.as_bytes());
        }
        if let Some(parent) = &r.parent {
            bytes(buf, 4, parent);
        }
        bytes(buf, 5, r.name.as_bytes());
        key(buf, 6, VARINT);
        varint(buf, r.kind as u64);
        fixed64(buf, 7, r.start_ns);
        fixed64(buf, 8, r.end_ns.max(r.start_ns));
        for (k, v) in &r.attributes {
            attribute(buf, 9, k, v);
        }
        for l in &r.links {
            // Link { trace_id = 1; span_id = 2; trace_state = 3; flags = 6 }
            nested(buf, 13, |buf| {
                bytes(buf, 1, &l.trace_id);
                bytes(buf, 2, &l.span_id);
                if let Some(state) = &l.state {
                    bytes(buf, 3, state.as_bytes());
                }
                fixed32(buf, 6, flags(l.sampled, l.remote));
            });
        }
        if let Some(message) = &r.error {
            // Status { message = 2; code = 3 } (2: error)
            nested(buf, 15, |buf| {
                bytes(buf, 2, message.as_bytes());
                key(buf, 3, VARINT);
                varint(buf, 2);
            });
        }
        fixed32(buf, 16, flags(ctx.sampled, r.parent_remote));
    }

    thread_local! {
        /// Where this thread encodes its spans; each span is a slice of it, and the memory
        /// goes back when the exporter has sent the last slice of a block.
        static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }

    /// One span as `ScopeSpans.spans` (field 2) holds it: its key, length and message.
    pub fn framed_span(ctx: &Context, r: &Recording) -> Bytes {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.capacity() < 1024 {
                    buf.reserve(16 * 1024);
                }
                nested(&mut buf, 2, |buf| span(buf, ctx, r));
                buf.split().freeze()
            }
            Err(_) => {
                let mut buf = BytesMut::with_capacity(512);
                nested(&mut buf, 2, |buf| span(buf, ctx, r));
                buf.freeze()
            }
        })
    }

    /// One export request holding `spans` (each from [`framed_span`]).
    /// `buf` is reused from one export to the next: its memory comes back once the previous
    /// request's body is gone (freeing a large buffer each time made glibc consolidate its
    /// heap at every batch).
    pub fn encode(
        buf: &mut BytesMut,
        service_name: &str,
        spans: impl Iterator<Item = Bytes>,
    ) -> Bytes {
        buf.clear();
        buf.reserve(64 * 1024);
        let version = env!("CARGO_PKG_VERSION");
        // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }
        nested(buf, 1, |buf| {
            // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }
            // Resource { repeated KeyValue attributes = 1 }
            nested(buf, 1, |buf| {
                attribute(buf, 1, "service.name", &Value::Str(service_name.into()));
                attribute(buf, 1, "service.version", &Value::Str(version.into()));
                attribute(buf, 1, "telemetry.sdk.name", &Value::Str("wasmgate".into()));
            });
            // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }
            nested(buf, 2, |buf| {
                nested(buf, 1, |buf| {
                    bytes(buf, 1, b"wasmgate");
                    bytes(buf, 2, version.as_bytes());
                });
                for framed in spans {
                    buf.extend_from_slice(&framed);
                }
            });
        });
        buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`otlp::encode`] writes decodes, with the `opentelemetry-proto` types, to the
    /// spans it was given: every field, nested lengths of one byte and of several.
    #[test]
    fn the_hand_written_protobuf_decodes_as_otlp() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        use prost::Message;
        let ctx = |span: u8, sampled| Context {
            trace_id: [7; 16],
            span_id: [span; 8],
            sampled,
            state: Some("vendor=1".into()),
            remote: false,
        };
        let long = "x".repeat(300);
        let spans = (1..=3u8).map(|i| {
            let rec = Box::new(Recording {
                parent: (i > 1).then_some([i - 1; 8]),
                parent_remote: i == 2,
                name: "run",
                kind: Kind::Client,
                start_ns: 1_000 + u64::from(i),
                end_ns: 2_000,
                attributes: vec![
                    ("wasmgate.trigger", Value::Shared("t".into())),
                    ("long", Value::Str(long.clone())),
                    ("http.response.status_code", Value::Int(503)),
                    ("negative", Value::Int(-5)),
                ],
                error: (i == 2).then(|| "HTTP 503".to_string()),
                links: vec![ctx(9, false)],
            });
            (ctx(i, true), rec)
        });
        let mut buf = bytes::BytesMut::new();
        let bytes = otlp::encode(
            &mut buf,
            "edge-1",
            spans.map(|(ctx, rec)| otlp::framed_span(&ctx, &rec)),
        );
        let req = ExportTraceServiceRequest::decode(bytes).unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        assert_eq!(
            service.value.as_ref().unwrap().value,
            Some(Any::StringValue("edge-1".into()))
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "wasmgate");
        assert_eq!(ss.spans.len(), 3);
        for (i, s) in ss.spans.iter().enumerate() {
            let n = i as u8 + 1;
            assert_eq!(s.trace_id, vec![7; 16]);
            assert_eq!(s.span_id, vec![n; 8]);
            assert_eq!(s.trace_state, "vendor=1");
            let parent: Vec<u8> = if n > 1 { vec![n - 1; 8] } else { Vec::new() };
            assert_eq!(s.parent_span_id, parent);
            assert_eq!(s.name, "run");
            assert_eq!(s.kind, 3);
            assert_eq!(s.start_time_unix_nano, 1_000 + u64::from(n));
            assert_eq!(s.end_time_unix_nano, 2_000);
            assert_eq!(s.flags, if n == 2 { 0x301 } else { 0x101 });
            let values: Vec<_> = s
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone()))
                .collect();
            assert_eq!(
                values,
                vec![
                    ("wasmgate.trigger", Some(Any::StringValue("t".into()))),
                    ("long", Some(Any::StringValue(long.clone()))),
                    ("http.response.status_code", Some(Any::IntValue(503))),
                    ("negative", Some(Any::IntValue(-5))),
                ]
            );
            assert_eq!(s.links.len(), 1);
            assert_eq!(s.links[0].span_id, vec![9; 8]);
            assert_eq!(s.links[0].flags, 0x100);
            match &s.status {
                Some(st) => {
                    assert_eq!(n, 2);
                    assert_eq!((st.code, st.message.as_str()), (2, "HTTP 503"));
                }
                None => assert_ne!(n, 2),
            }
        }
    }

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
