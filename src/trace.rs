//! Tracing with OpenTelemetry (SPEC section 9): W3C trace context, spans, and a bounded
//! exporter of OTLP over HTTP (protobuf).
//!
//! Every door and stage reaches the one tracer of the process through [`start`]; with no
//! `[tracing]` table there is none, [`start`] gives a span that is off (no ids, nothing
//! recorded) and the callers leave `traceparent` alone. A span that is not sampled still has
//! ids, so the context propagates; only a sampled one is recorded, and it is encoded when it
//! is dropped, on the thread that ends it, into that thread's spool. The exporter runs off
//! the request path: every 200 ms (sooner when a spool holds a batch) it takes what every
//! spool holds and sends it as one request, one export in flight. Memory is bounded per
//! thread ([`SPOOL_BYTES`]; a span past it is dropped and counted); a slow or absent
//! collector costs dropped spans, never a request's time.
//!
//! The protobuf is written by hand ([`otlp`]: the few OTLP messages a span export needs,
//! with the field numbers of `opentelemetry/proto/trace/v1/trace.proto`); the tests decode it
//! with the `opentelemetry-proto` crate's own types. With `prost` structs in between (a copy
//! of every id, name and attribute first), encoding cost a tenth of a core at 70,000 spans a
//! second on this machine kind.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::config::TracingConfig;

/// The most encoded span bytes one thread holds for the exporter; a span past that is
/// dropped and counted.
pub const SPOOL_BYTES: usize = 1 << 20;
/// A thread's spool wakes the exporter when it grows past this.
const BATCH_BYTES: usize = 128 << 10;
/// How often the exporter collects the spools; it is woken sooner only when one holds a
/// batch. A span never wakes it by itself: a wake-up per span (another thread's task to
/// poll, a timer to arm) cost more than the span.
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
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        crate::text::hex_into(&mut out[3..35], &self.trace_id);
        crate::text::hex_into(&mut out[36..52], &self.span_id);
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

    /// The trace id in lowercase hex, without an allocation.
    pub fn trace_id_hex(&self) -> TraceIdHex {
        let mut out = [0u8; 32];
        crate::text::hex_into(&mut out, &self.trace_id);
        TraceIdHex(out)
    }
}

/// A trace id in lowercase hex (the access log's `trace_id`). Word-aligned, so the UTF-8
/// check of [`TraceIdHex::as_str`] takes its two-words-at-a-time path (byte by byte
/// otherwise: a few times the cost of writing it).
#[repr(align(8))]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
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

/// An attribute's value. Encoded the moment it is set (see [`Recording`]), so borrowed: a
/// name the request holds anyway is never copied to become an attribute.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Value<'a> {
        Value::Str(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Value<'a> {
        Value::Str(s)
    }
}

impl<'a> From<&'a Arc<str>> for Value<'a> {
    fn from(s: &'a Arc<str>) -> Value<'a> {
        Value::Str(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u16> for Value<'_> {
    fn from(v: u16) -> Self {
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
    /// The attributes, already encoded as the span's `attributes` (field 9) entries: an
    /// attribute is written once, when it is set, instead of kept as a value to be copied,
    /// counted and written again when the span ends.
    attributes: Vec<u8>,
    /// `Some(message)`: the span ended in error.
    error: Option<String>,
    links: Vec<Context>,
}

impl Recording {
    fn attribute(&mut self, key: &str, value: Value<'_>) {
        if self.attributes.capacity() == 0 {
            // Room for what any span here sets, in one allocation.
            self.attributes.reserve(512);
        }
        otlp::attribute(&mut self.attributes, key, &value);
    }
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
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(r) = &mut self.rec {
            r.attribute(key, value.into());
        }
    }

    /// Like [`Span::set`], for values that cost something to build.
    pub fn set_with<S: AsRef<str>>(&mut self, key: &'static str, value: impl FnOnce() -> S) {
        if let Some(r) = &mut self.rec {
            r.attribute(key, Value::Str(value().as_ref()));
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
            r.attribute("http.response.status_code", Value::Int(status.into()));
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
            with_tracer(|t| t.submit(&ctx, &rec));
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

thread_local! {
    /// This thread's id generator (wyrand), seeded from the OS's generator on first use.
    static IDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// 64 random bits for span and trace ids. Ids must be unpredictable enough not to collide
/// (W3C trace context: random), not secret: a per-thread wyrand seeded from the OS costs a
/// multiply where `rand::random` cost a ChaCha block now and then and a thread-local
/// handle every time (three ids a request).
fn random_u64() -> u64 {
    IDS.try_with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = rand::random::<u64>() | 1;
        }
        s = s.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s).wrapping_mul(u128::from(s ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) ^ t) as u64
    })
    .unwrap_or_else(|_| rand::random())
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = random_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&random_span_id());
    id
}

/// The process's tracer: the sampling rule and the exporter's queue.
pub struct Tracer {
    config: TracingConfig,
    /// Traces whose id's low 63 bits fall below this are sampled (OpenTelemetry's
    /// `TraceIdRatioBased`): every node decides the same for the same trace.
    bound: u64,
    /// The exporter's signals.
    signals: Arc<Signals>,
}

/// What wakes an exporter besides its clock.
#[derive(Default)]
struct Signals {
    /// A spool holds a batch.
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
        let trace_id = parent.map_or_else(random_trace_id, |p| p.trace_id);
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default()) >> 1;
        let sampled = parent.is_none_or(|p| p.sampled) && low < self.bound;
        let ctx = Context {
            trace_id,
            span_id: random_span_id(),
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

    /// Hands the span to the exporter: encoded here, into this thread's spool.
    fn submit(&self, ctx: &Context, rec: &Recording) {
        let m = &crate::metrics::METRICS;
        // `try_with`: a span dropped while its thread is being torn down is let go.
        let batch_waiting = SPOOL.try_with(|spool| {
            let mut spool = spool.0.lock().ok()?;
            if spool.bytes.len() >= SPOOL_BYTES {
                m.trace_spans_dropped.inc();
                return None;
            }
            let before = spool.bytes.len();
            if spool.bytes.capacity() - before < 1024 {
                spool.bytes.reserve(16 * 1024);
            }
            otlp::frame(&mut spool.bytes, ctx, rec);
            spool.spans += 1;
            Some(before < BATCH_BYTES && spool.bytes.len() >= BATCH_BYTES)
        });
        if batch_waiting == Ok(Some(true)) {
            self.signals.full.notify_one();
        }
    }
}

/// Where one thread's finished spans wait for the exporter, encoded and framed as
/// `ScopeSpans.spans` holds them. Each thread writes only its own (its lock is uncontended
/// but for the exporter's collection every 200 ms); a shared queue cost a handful of atomic
/// operations per span on lines both cores write, and as much again to take each span out.
struct Spool(std::sync::Mutex<Spooled>);

#[derive(Default)]
struct Spooled {
    bytes: bytes::BytesMut,
    spans: u64,
}

/// Every thread's spool, for the exporter; a spool leaves when its thread is gone and it is
/// empty.
static SPOOLS: std::sync::Mutex<Vec<Arc<Spool>>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static SPOOL: Arc<Spool> = {
        let spool = Arc::new(Spool(std::sync::Mutex::new(Spooled::default())));
        if let Ok(mut all) = SPOOLS.lock() {
            all.push(spool.clone());
        }
        spool
    };
}

/// Takes what every spool holds: the chunks of framed spans and how many spans they are.
fn collect_spools() -> (Vec<bytes::Bytes>, u64) {
    let mut chunks = Vec::new();
    let mut spans = 0;
    if let Ok(mut all) = SPOOLS.lock() {
        all.retain(|spool| {
            let Ok(mut s) = spool.0.lock() else {
                return false;
            };
            if s.spans > 0 {
                chunks.push(s.bytes.split().freeze());
                spans += std::mem::take(&mut s.spans);
            }
            // Only the list holds it: its thread has exited.
            Arc::strong_count(spool) > 1
        });
    }
    (chunks, spans)
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

/// Starts a span whose context nobody is handed (authentication, admission): recorded
/// under a sampled parent, and off otherwise, since an unsampled one would only cost its ids.
pub fn child(name: &'static str, kind: Kind, parent: Option<&Context>) -> Span {
    if parent.is_some_and(|p| p.sampled) {
        start(name, kind, parent)
    } else {
        Span::off()
    }
}

/// A context a request's first span links to (in request extensions): the request that
/// posted an event whose own trace the event's deliveries continue.
#[derive(Clone, Debug)]
pub struct Link(pub Context);

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
        let signals = match previous.as_ref().filter(|t| same_exporter(t, c)) {
            Some(t) => t.signals.clone(),
            None => match Exporter::new(c) {
                Ok(exporter) => {
                    let signals = Arc::new(Signals::default());
                    let task = tokio::spawn(exporter.run(signals.clone()));
                    if let Ok(mut e) = EXPORTERS.lock() {
                        e.retain(|t| !t.is_finished());
                        e.push(task);
                    }
                    signals
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
    preamble: otlp::Preamble,
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
            preamble: otlp::Preamble::new(&c.service_name),
        })
    }

    async fn run(self, signals: Arc<Signals>) {
        let mut warned: Option<tokio::time::Instant> = None;
        let mut stopping = false;
        loop {
            if !stopping {
                tokio::select! {
                    _ = tokio::time::sleep(BATCH_DELAY) => {}
                    _ = signals.full.notified() => {}
                    _ = signals.stop.notified() => stopping = true,
                }
            }
            let (chunks, n) = collect_spools();
            if n == 0 {
                if stopping {
                    return;
                }
                continue;
            }
            let body = ExportBody::new(
                otlp::head(&self.preamble, chunks.iter().map(bytes::Bytes::len).sum()),
                chunks,
            );
            let result = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(reqwest::Body::wrap(body))
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
            if stopping {
                return;
            }
        }
    }
}

/// An export request's body: its head and the spools' chunks, sent as they are (its exact
/// length is known, so it goes with a `content-length`).
struct ExportBody {
    parts: std::collections::VecDeque<bytes::Bytes>,
    left: u64,
}

impl ExportBody {
    fn new(head: bytes::Bytes, chunks: Vec<bytes::Bytes>) -> ExportBody {
        let mut parts = std::collections::VecDeque::with_capacity(chunks.len() + 1);
        parts.push_back(head);
        parts.extend(chunks);
        let left = parts.iter().map(|p| p.len() as u64).sum();
        ExportBody { parts, left }
    }
}

impl http_body::Body for ExportBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.parts.pop_front();
        if let Some(part) = &next {
            self.left -= part.len() as u64;
        }
        std::task::Poll::Ready(next.map(|part| Ok(http_body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// OTLP's protobuf, written by hand: one `ExportTraceServiceRequest` with one resource and
/// one scope (`opentelemetry/proto/{collector/trace,trace,common,resource}/v1`).
///
/// Each message is written by one function generic over a [`Sink`]: run over a [`Count`]
/// it gives the message's length, run over a [`Write`] it fills bytes reserved to that
/// exact length. So every length is known before its message, nothing is moved afterwards,
/// and the writes are plain stores into a slice.
mod otlp {
    use bytes::{Bytes, BytesMut};

    use super::{Context, Recording, Value};

    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LEN: u8 = 2;
    const FIXED32: u8 = 5;

    pub trait Sink {
        fn byte(&mut self, b: u8);
        fn slice(&mut self, s: &[u8]);

        #[inline(always)]
        fn varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.byte((v as u8) | 0x80);
                v >>= 7;
            }
            self.byte(v as u8);
        }

        #[inline(always)]
        fn key(&mut self, field: u8, wire: u8) {
            self.varint(u64::from(field) << 3 | u64::from(wire));
        }

        #[inline(always)]
        fn bytes(&mut self, field: u8, b: &[u8]) {
            self.key(field, LEN);
            self.varint(b.len() as u64);
            self.slice(b);
        }

        #[inline(always)]
        fn fixed64(&mut self, field: u8, v: u64) {
            self.key(field, FIXED64);
            self.slice(&v.to_le_bytes());
        }

        #[inline(always)]
        fn fixed32(&mut self, field: u8, v: u32) {
            self.key(field, FIXED32);
            self.slice(&v.to_le_bytes());
        }
    }

    /// Counts the bytes a message takes.
    struct Count(usize);

    impl Sink for Count {
        #[inline(always)]
        fn byte(&mut self, _: u8) {
            self.0 += 1;
        }
        #[inline(always)]
        fn slice(&mut self, s: &[u8]) {
            self.0 += s.len();
        }
        #[inline(always)]
        fn varint(&mut self, v: u64) {
            self.0 += varint_len(v);
        }
        #[inline(always)]
        fn key(&mut self, field: u8, _: u8) {
            self.0 += if field < 16 { 1 } else { 2 };
        }
    }

    /// Writes into bytes reserved for exactly what is written.
    struct Write<'a> {
        out: &'a mut [u8],
        at: usize,
    }

    impl Sink for Write<'_> {
        #[inline(always)]
        fn byte(&mut self, b: u8) {
            self.out[self.at] = b;
            self.at += 1;
        }
        #[inline(always)]
        fn slice(&mut self, s: &[u8]) {
            self.out[self.at..self.at + s.len()].copy_from_slice(s);
            self.at += s.len();
        }
    }

    /// How many bytes `write` writes.
    fn len_of(write: impl FnOnce(&mut Count)) -> usize {
        let mut count = Count(0);
        write(&mut count);
        count.0
    }

    /// A length-delimited field's key and length.
    fn head_of<S: Sink>(sink: &mut S, field: u8, len: usize) {
        sink.key(field, LEN);
        sink.varint(len as u64);
    }

    /// How many bytes `v` takes as a varint.
    fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// How many bytes a length-delimited field (number below 16) of `n` bytes takes.
    fn len_field(n: usize) -> usize {
        1 + varint_len(n as u64) + n
    }

    /// The lengths of `KeyValue { key = 1; AnyValue value = 2 }` and of its
    /// `AnyValue { string_value = 1; int_value = 3 }`: arithmetic, not a pass over it.
    fn attribute_lens(k: &str, v: &Value<'_>) -> (usize, usize) {
        let any = match v {
            Value::Str(s) => len_field(s.len()),
            Value::Int(i) => 1 + varint_len(*i as u64),
        };
        (len_field(k.len()) + len_field(any), any)
    }

    /// One attribute as a `Span.attributes` entry (field 9), or `Resource.attributes` (1).
    fn attribute_in<S: Sink>(sink: &mut S, field: u8, k: &str, v: &Value<'_>) {
        let (kv, any) = attribute_lens(k, v);
        head_of(sink, field, kv);
        sink.bytes(1, k.as_bytes());
        head_of(sink, 2, any);
        match v {
            Value::Str(s) => sink.bytes(1, s.as_bytes()),
            Value::Int(i) => {
                sink.key(3, VARINT);
                sink.varint(*i as u64);
            }
        }
    }

    /// One attribute as a `Span.attributes` entry (field 9), appended to `out`.
    pub fn attribute(out: &mut Vec<u8>, k: &str, v: &Value<'_>) {
        let (kv, any) = attribute_lens(k, v);
        match v {
            // Every length fits in one byte (the usual case): four pieces, no varint loops.
            Value::Str(s) if kv < 0x80 => {
                out.reserve(2 + kv);
                out.extend_from_slice(&[9 << 3 | LEN, kv as u8, 1 << 3 | LEN, k.len() as u8]);
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(&[2 << 3 | LEN, any as u8, 1 << 3 | LEN, s.len() as u8]);
                out.extend_from_slice(s.as_bytes());
            }
            _ => {
                out.reserve(len_field(kv));
                attribute_in(out, 9, k, v);
            }
        }
    }

    /// A span's or link's `flags`: the W3C trace flags (sampled) in the low byte, then
    /// OTLP's "whether the parent (or linked span) is remote is known" (0x100) and "it is
    /// remote" (0x200).
    fn flags(sampled: bool, remote: bool) -> u32 {
        let remote = if remote { 0x200 } else { 0 };
        0x100 | remote | u32::from(sampled)
    }

    /// `Link { trace_id = 1; span_id = 2; trace_state = 3; flags = 6 }`
    fn link<S: Sink>(sink: &mut S, l: &Context) {
        sink.bytes(1, &l.trace_id);
        sink.bytes(2, &l.span_id);
        if let Some(state) = &l.state {
            sink.bytes(3, state.as_bytes());
        }
        sink.fixed32(6, flags(l.sampled, l.remote));
    }

    /// `Status { message = 2; code = 3 }` (2: error)
    fn error<S: Sink>(sink: &mut S, message: &str) {
        sink.bytes(2, message.as_bytes());
        sink.key(3, VARINT);
        sink.varint(2);
    }

    fn span<S: Sink>(sink: &mut S, ctx: &Context, r: &Recording) {
        sink.bytes(1, &ctx.trace_id);
        sink.bytes(2, &ctx.span_id);
        if let Some(state) = &ctx.state {
            sink.bytes(3, state.as_bytes());
        }
        if let Some(parent) = &r.parent {
            sink.bytes(4, parent);
        }
        sink.bytes(5, r.name.as_bytes());
        sink.key(6, VARINT);
        sink.varint(r.kind as u64);
        sink.fixed64(7, r.start_ns);
        sink.fixed64(8, r.end_ns.max(r.start_ns));
        sink.slice(&r.attributes);
        for l in &r.links {
            head_of(sink, 13, len_of(|c| link(c, l)));
            link(sink, l);
        }
        if let Some(message) = &r.error {
            head_of(sink, 15, len_of(|c| error(c, message)));
            error(sink, message);
        }
        sink.fixed32(16, flags(ctx.sampled, r.parent_remote));
    }

    /// Appends `len` bytes to `buf` and has `write` fill them.
    fn append(buf: &mut BytesMut, len: usize, write: impl FnOnce(&mut Write<'_>)) {
        let start = buf.len();
        buf.resize(start + len, 0);
        let mut sink = Write {
            out: &mut buf[start..],
            at: 0,
        };
        write(&mut sink);
        debug_assert_eq!(sink.at, len);
    }

    /// Appends one span as `ScopeSpans.spans` (field 2) holds it: its key, length and
    /// message.
    pub fn frame(buf: &mut BytesMut, ctx: &Context, r: &Recording) {
        let len = len_of(|c| span(c, ctx, r));
        let framed = len_of(|c| head_of(c, 2, len)) + len;
        append(buf, framed, |sink| {
            head_of(sink, 2, len);
            span(sink, ctx, r);
        });
    }

    /// What every export request of one exporter starts its `ResourceSpans` with: the
    /// `Resource` (field 1) and, inside `ScopeSpans`, the `InstrumentationScope` (field 1).
    pub struct Preamble {
        resource: Bytes,
        scope: Bytes,
    }

    impl Preamble {
        pub fn new(service_name: &str) -> Preamble {
            let version = env!("CARGO_PKG_VERSION");
            // Resource { repeated KeyValue attributes = 1 }
            let attributes = [
                ("service.name", Value::Str(service_name)),
                ("service.version", Value::Str(version)),
                ("telemetry.sdk.name", Value::Str("wasmgate")),
            ];
            let len = attributes
                .iter()
                .map(|(k, v)| len_of(|c| attribute_in(c, 1, k, v)))
                .sum();
            let mut resource = Vec::new();
            head_of(&mut resource, 1, len);
            for (k, v) in &attributes {
                attribute_in(&mut resource, 1, k, v);
            }
            // InstrumentationScope { name = 1; version = 2 }
            let scope_of = |sink: &mut dyn FnMut(u8, &[u8])| {
                sink(1, b"wasmgate");
                sink(2, version.as_bytes());
            };
            let mut len = 0;
            scope_of(&mut |f, b| len += len_of(|c| c.bytes(f, b)));
            let mut scope = Vec::new();
            head_of(&mut scope, 1, len);
            scope_of(&mut |f, b| scope.bytes(f, b));
            Preamble {
                resource: resource.into(),
                scope: scope.into(),
            }
        }
    }

    /// Writes what it is given at the end (a span's attributes as they are set; preambles
    /// and heads, built rarely).
    impl Sink for Vec<u8> {
        #[inline(always)]
        fn byte(&mut self, b: u8) {
            self.push(b);
        }
        #[inline(always)]
        fn slice(&mut self, s: &[u8]) {
            self.extend_from_slice(s);
        }
    }

    /// The head of one export request holding `spans` bytes of framed spans (from
    /// [`frame`]): the spans follow it as they are, uncopied.
    pub fn head(preamble: &Preamble, spans: usize) -> Bytes {
        // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }
        // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }
        let scope_spans = preamble.scope.len() + spans;
        let resource_spans =
            preamble.resource.len() + len_of(|c| head_of(c, 2, scope_spans)) + scope_spans;
        let mut out = Vec::with_capacity(32 + preamble.resource.len() + preamble.scope.len());
        head_of(&mut out, 1, resource_spans);
        out.slice(&preamble.resource);
        head_of(&mut out, 2, scope_spans);
        out.slice(&preamble.scope);
        out.into()
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
        // A 300-byte value takes a two-byte length; the third span's 20,000-byte one makes
        // that span's own length three bytes long.
        let long = |i: u8| "x".repeat(if i == 3 { 20_000 } else { 300 });
        let spans = (1..=3u8).map(|i| {
            let mut rec = Box::new(Recording {
                parent: (i > 1).then_some([i - 1; 8]),
                parent_remote: i == 2,
                name: "run",
                kind: Kind::Client,
                start_ns: 1_000 + u64::from(i),
                end_ns: 2_000,
                attributes: Vec::new(),
                error: (i == 2).then(|| "HTTP 503".to_string()),
                links: vec![ctx(9, false)],
            });
            rec.attribute("wasmgate.trigger", Value::from(&Arc::<str>::from("t")));
            rec.attribute("long", Value::Str(&long(i)));
            rec.attribute("http.response.status_code", Value::Int(503));
            rec.attribute("negative", Value::Int(-5));
            (ctx(i, true), rec)
        });
        // Framed one at a time and in a run of two: the export takes either.
        let mut run = bytes::BytesMut::new();
        let mut framed = Vec::new();
        for (i, (ctx, rec)) in spans.enumerate() {
            otlp::frame(&mut run, &ctx, &rec);
            if i != 1 {
                framed.push(run.split().freeze());
            }
        }
        let mut body = otlp::head(
            &otlp::Preamble::new("edge-1"),
            framed.iter().map(bytes::Bytes::len).sum(),
        )
        .to_vec();
        for f in &framed {
            body.extend_from_slice(f);
        }
        let bytes = bytes::Bytes::from(body);
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
                    ("long", Some(Any::StringValue(long(n)))),
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
