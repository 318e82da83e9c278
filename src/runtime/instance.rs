//! One invocation: a fresh `Store` and instance from the pre-instantiated component, with
//! the function's memory cap, deadline, environment, outbound policy and log capture.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::log::GuestLog;
use super::{Function, RuntimeError};

/// The per-invocation state a guest can reach through WASI.
pub struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    limits: StoreLimits,
    buckets: super::keyvalue::Buckets,
    variables: Arc<wasmtime_wasi_config::WasiConfigVariables>,
}

impl Host {
    /// The wasi:keyvalue view: the function's buckets.
    pub fn keyvalue(&mut self) -> super::keyvalue::KeyValue<'_> {
        super::keyvalue::KeyValue::new(&self.buckets, &mut self.table)
    }

    /// The wasi:config view: the function's variables.
    pub fn config(&mut self) -> wasmtime_wasi_config::WasiConfig<'_> {
        wasmtime_wasi_config::WasiConfig::from(&*self.variables)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Outbound wasi:http: allowed only to the function's `outbound_hosts`; with tracing on,
/// each call is a span, a child of the run span, and carries a `traceparent` naming it
/// unless the guest set one.
struct OutboundPolicy {
    allowed: Arc<[String]>,
    trace: Option<crate::trace::Context>,
}

impl OutboundPolicy {
    fn allows(&self, host: Option<&str>) -> bool {
        match host {
            Some(h) => {
                let h = h.trim_start_matches('[').trim_end_matches(']');
                self.allowed.iter().any(|a| a.eq_ignore_ascii_case(h))
            }
            None => false,
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    /// The default set, checked directly: the trait's default builds an `Arc`'d closure for
    /// every header of every request to ask the same question, and the set is a `const`
    /// (each use builds its nine names and drops them again), so it is read from a static.
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        static FORBIDDEN: [http::HeaderName; 9] = wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS;
        FORBIDDEN.contains(name)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allows(request.uri().host()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let host = request.uri().host().unwrap_or_default().to_string();
        let port = request.uri().port_u16().unwrap_or(
            if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            },
        );
        let mut span = match &self.trace {
            Some(parent) => {
                crate::trace::start("outbound", crate::trace::Kind::Client, Some(parent))
            }
            None => crate::trace::Span::off(),
        };
        if let Some(ctx) = span.context()
            && !request.headers().contains_key(&crate::trace::TRACEPARENT)
        {
            ctx.inject(request.headers_mut());
        }
        if span.is_recording() {
            span.set("http.request.method", request.method().as_str());
            span.set("server.address", host.as_str());
            span.set("server.port", u32::from(port));
        }
        Box::new(async move {
            // Names are resolved and checked here, then again by the connector: a listed
            // name whose DNS moves between the two could still reach the inside, which is
            // why only names the operator lists get this far.
            if let Err(why) = crate::netguard::check_outbound(&host, port).await {
                tracing::warn!(host = %host, port, "outbound request refused: {why}");
                span.set_error(format!("refused: {why}"));
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options)
                .await
                .inspect_err(|e| span.set_error(format!("{e:?}")))?;
            span.set_status(res.status().as_u16());
            drop(span);
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// What an invocation produced.
pub struct Outcome {
    pub response: http::Response<HyperOutgoingBody>,
    pub log: GuestLog,
    /// Resolves when the guest has finished (it may still be streaming its body when the
    /// response arrives).
    pub finished: tokio::sync::oneshot::Receiver<()>,
}

/// The error a store's epoch callback raises when the deadline has passed.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// How a guest task ended when it set no response.
enum GuestEnd {
    Returned,
    Timeout,
    Failed(String),
}

/// Aborts the guest task if the caller goes away before a response (client disconnect).
struct AbortOnDrop(Option<tokio::task::JoinHandle<GuestEnd>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Largest response header section a guest may produce.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8192;

impl Function {
    /// Runs one request in a fresh instance. `permits` are held until the guest is done
    /// (including streaming its body), whatever the outcome. The scheme the guest sees is
    /// the request URI's; where the request came from is none of the runtime's business.
    /// `run_span` is the run's span (tracing on): outbound calls are its children, and it
    /// ends, in error if the guest failed, when the guest is done.
    ///
    /// The instance is set up and its task spawned when this is called; the future returned
    /// only waits for the response head. It holds none of the request: futures are moved
    /// whole on every request (hyper moves the service's future into its slot), so what
    /// each level of the request path keeps across its awaits is paid for by every request.
    pub fn invoke<B, P>(
        &self,
        request: http::Request<B>,
        request_id: Arc<str>,
        permits: P,
        run_span: crate::trace::Span,
    ) -> impl std::future::Future<Output = Result<Outcome, RuntimeError>> + Send + use<B, P>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
        P: Send + 'static,
    {
        // Not an async block: it would keep the `Result` it starts from beside the future it
        // awaits.
        match self.start(request, request_id, permits, run_span) {
            Ok(running) => futures::future::Either::Left(running.response()),
            Err(e) => futures::future::Either::Right(std::future::ready(Err(e))),
        }
    }

    fn start<B, P>(
        &self,
        request: http::Request<B>,
        request_id: Arc<str>,
        permits: P,
        run_span: crate::trace::Span,
    ) -> Result<Running, RuntimeError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
        P: Send + 'static,
    {
        let timeout = std::time::Duration::from_millis(self.config.timeout_ms.get());
        let deadline = Instant::now() + timeout;
        let log = GuestLog::new(request_id, self.name.clone());

        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&self.env)
            .stdout(log.stream("stdout"))
            .stderr(log.stream("stderr"));
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: OutboundPolicy {
                allowed: self.outbound_hosts.clone(),
                trace: run_span.context().cloned(),
            },
            limits: StoreLimitsBuilder::new()
                .memory_size((self.config.memory_mb.get() as usize) << 20)
                .trap_on_grow_failure(true)
                .build(),
            buckets: self.buckets.clone(),
            variables: self.variables.clone(),
        };
        let mut store = Store::new(self.pre.engine(), host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let scheme = if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let internal = |e: wasmtime::Error| RuntimeError::Host(format!("host fault: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, request)
            .map_err(internal)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(internal)?;

        let pre = self.pre.clone();
        let (finished_tx, finished) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _permits = permits;
            let _finished = finished_tx;
            let mut span = run_span;
            // Boxed: instantiation's and the call's futures are large, and the task's
            // future is copied whole into its cell and its stages (spawn, output, taken).
            let run = Box::pin(async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                crate::metrics::METRICS
                    .instantiation
                    .observe(started.elapsed().as_secs_f64());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            });
            let end = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(Ok(())) => GuestEnd::Returned,
                Ok(Err(e)) if e.downcast_ref::<DeadlineExceeded>().is_some() => GuestEnd::Timeout,
                Ok(Err(e)) => GuestEnd::Failed(describe(&e)),
                Err(_) => GuestEnd::Timeout,
            };
            match &end {
                GuestEnd::Returned => {}
                GuestEnd::Timeout => span.set_error("the function's deadline passed"),
                GuestEnd::Failed(msg) => span.set_error(msg.clone()),
            }
            end
        });
        Ok(Running {
            name: self.name.clone(),
            timeout,
            rx,
            task: AbortOnDrop(Some(task)),
            log,
            finished,
        })
    }
}

/// A guest whose task is running: what waiting for its response head needs, and no more.
struct Running {
    name: Arc<str>,
    timeout: std::time::Duration,
    rx: tokio::sync::oneshot::Receiver<
        Result<
            hyper::Response<HyperOutgoingBody>,
            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
        >,
    >,
    task: AbortOnDrop,
    log: GuestLog,
    finished: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    /// The guest's response head. The guest's task is what enforces the deadline (its
    /// timer for a guest waiting on the host, the epoch callback for one computing): a guest
    /// past it is stopped, its store and permits dropped, and the response's sender with
    /// them, so this waits on no timer of its own (one timer a request instead of two).
    async fn response(mut self) -> Result<Outcome, RuntimeError> {
        let (name, timeout, mut task) = (&self.name, self.timeout, self.task);
        let timed_out = || {
            RuntimeError::Timeout(format!(
                "function '{name}' did not finish within {} ms",
                timeout.as_millis()
            ))
        };
        match (&mut self.rx).await {
            Ok(Ok(response)) => {
                // The guest keeps running to stream its body; it is no longer ours to abort.
                task.0.take();
                let header_bytes: usize = response
                    .headers()
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                if header_bytes > MAX_RESPONSE_HEADER_BYTES {
                    return Err(RuntimeError::BadResponse(format!(
                        "function '{name}' answered with {header_bytes} bytes of headers (limit {MAX_RESPONSE_HEADER_BYTES})"
                    )));
                }
                Ok(Outcome {
                    response,
                    log: self.log,
                    finished: self.finished,
                })
            }
            Ok(Err(code)) => Err(RuntimeError::Failed(format!(
                "function '{name}' reported an error: {code:?}"
            ))),
            Err(_) => {
                // The guest dropped its response outparam (or was stopped at its deadline):
                // find out how it ended.
                let handle = task.0.take();
                let end = match handle {
                    Some(h) => h.await,
                    None => Ok(GuestEnd::Returned),
                };
                match end {
                    Ok(GuestEnd::Returned) => Err(RuntimeError::BadResponse(format!(
                        "function '{name}' returned without setting a response"
                    ))),
                    Ok(GuestEnd::Timeout) => Err(timed_out()),
                    Ok(GuestEnd::Failed(msg)) => Err(RuntimeError::Failed(format!(
                        "function '{name}' failed: {msg}"
                    ))),
                    Err(e) => Err(RuntimeError::Host(format!("guest task failed: {e}"))),
                }
            }
        }
    }
}

/// A one-line description of a guest failure: the trap or the root cause, no backtrace.
fn describe(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    let root = e.root_cause().to_string();
    root.lines().next().unwrap_or("unknown failure").to_string()
}
