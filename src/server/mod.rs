//! Listeners: accept loop, TLS, HTTP/1.1 and HTTP/2 on the same port, graceful drain.
//!
//! Everything a request needs is built before [`run`] binds (see [`crate::App::build`]).
//! Each bound listener is announced on stdout (`public listening on https://127.0.0.1:8443`)
//! so that port 0 works for tests and scripts.

pub mod tls;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Listener;
use crate::{App, ConnInfo, Gateway};

/// One bound listener.
struct Bound {
    listener: TcpListener,
    role: Listener,
}

/// Binds every listener, serves until `shutdown` resolves, then drains: new requests get
/// 503, idle connections close, in-flight requests finish (up to `drain_timeout_ms`).
pub async fn run(gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let app = gateway.app();
    let server = &app.config.server;
    let tls = match &server.tls {
        Some(t) => Some(TlsAcceptor::from(tls::server_config(t)?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let mut bound = vec![(server.listen, Listener::Public)];
    if let Some(addr) = server.internal_listen {
        bound.push((addr, Listener::Internal));
    }
    if let Some(addr) = server.admin_listen {
        bound.push((addr, Listener::Admin));
    }
    let mut listeners = Vec::new();
    let mut announce = Vec::new();
    for (addr, role) in bound {
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let name = match role {
            Listener::Public => "public",
            Listener::Internal => "internal",
            Listener::Admin => "admin",
        };
        announce.push(format!("{name} listening on {scheme}://{local}"));
        if role == Listener::Admin {
            app.set_admin_addr(local);
        }
        if role != Listener::Public {
            crate::netguard::note_private_listener(local);
        }
        listeners.push(Bound { listener, role });
    }
    // The sweeper, the reloader (its SIGHUP handler is installed here, before anyone is
    // told where to connect) and the queue's workers.
    gateway.supervise();
    // A cluster node announces itself once its queue is on NATS, when NATS answers soon;
    // otherwise it serves anyway (async requests get 503 until it does).
    let patience = std::time::Duration::from_secs(10);
    if let Some(q) = app.dispatcher.queue()
        && !q.wait_ready(patience).await
    {
        tracing::warn!(
            "the cluster's NATS is not reachable yet; serving, with async requests answered 503 until it is"
        );
    }
    if let Some(r) = app.dispatcher.registry()
        && !r.wait_ready(patience).await
    {
        tracing::warn!(
            "the cluster's registry is not reachable yet; serving the configured functions, deployed ones once it is"
        );
    }
    // A standard output nobody reads (closed) does not stop the node.
    {
        let mut stdout = std::io::stdout().lock();
        for line in announce {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }

    let detect = http_builder(&app);
    let builders = Arc::new(Builders {
        http1: detect.clone().http1_only(),
        http2: detect.clone().http2_only(),
        detect,
    });
    let limits = &app.config.limits;
    let max_connections = limits.max_connections.get();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    let mut pools = Vec::new();
    for b in listeners {
        let state = Arc::new(ListenerState {
            gateway: gateway.clone(),
            role: b.role,
            tls: tls.clone(),
            builders: builders.clone(),
            connections: Arc::new(Semaphore::new(max_connections)),
            per_ip: Default::default(),
            max_per_ip: limits.max_connections_per_ip.get(),
            max_connections,
            first_request: Duration::from_millis(limits.header_read_timeout_ms.get()),
            idle: Duration::from_millis(limits.idle_timeout_ms.get()),
            send: Duration::from_millis(limits.send_timeout_ms.get()),
            drain: Duration::from_millis(app.config.server.drain_timeout_ms),
        });
        pools.push(state.connections.clone());
        accept_tasks.push(tokio::spawn(accept_loop(
            state,
            b.listener,
            stop_rx.clone(),
        )));
    }

    shutdown.await;
    // From now on /readyz says 503 and new requests get 503 (with `Connection: close`), while
    // the listeners keep answering for `drain_grace_ms`, so a load balancer sees the node
    // leave instead of finding its port closed; then they close and in-flight work ends.
    gateway.start_draining();
    let grace = app.config.server.drain_grace_ms;
    tracing::info!("shutting down: answering 503 for {grace} ms, then draining in-flight requests");
    tokio::time::sleep(Duration::from_millis(grace)).await;
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // Workers stop claiming tasks and let running attempts finish; anything not finished
    // stays in the database and runs after a restart.
    gateway
        .supervisor
        .shutdown(Duration::from_millis(app.config.server.drain_timeout_ms))
        .await;
    // Every connection holds a slot; when all slots are back, every connection has ended.
    let drain = Duration::from_millis(app.config.server.drain_timeout_ms);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let everything = futures::future::join_all(pools.iter().map(|p| p.acquire_many(all)));
    match tokio::time::timeout(drain, everything).await {
        Ok(_) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain timeout passed; closing remaining connections"),
    }
    Ok(())
}

fn http_builder(app: &App) -> auto::Builder<TokioExecutor> {
    let limits = &app.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours so that oversized requests reach the pipeline and
    // get the JSON 400 of SPEC section 3 rather than a bare 431.
    let header_room = (limits.max_header_bytes + limits.max_uri_bytes) * 2 + 16 * 1024;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.get()))
        .max_headers((limits.max_header_bytes / 4).clamp(100, 4096))
        .max_buf_size(header_room.max(64 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_room).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// What every connection of one listener shares.
struct ListenerState {
    gateway: Arc<Gateway>,
    role: Listener,
    tls: Option<TlsAcceptor>,
    builders: Arc<Builders>,
    /// This listener's own connection slots: one listener's clients never take another's.
    connections: Arc<Semaphore>,
    /// Open connections per client (IPv4 address or IPv6 /64).
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max_per_ip: usize,
    /// The size of `connections`.
    max_connections: usize,
    /// TLS, protocol detection and the first request's head must all arrive within this.
    first_request: Duration,
    /// A connection with no request in progress for this long is closed.
    idle: Duration,
    /// A response waiting this long for the client to take bytes closes its connection; also
    /// the deadline of an idle connection's graceful close.
    send: Duration,
    /// The deadline of a connection's graceful close when the node stops.
    drain: Duration,
}

/// One connection's place in its client's count, given back when the connection ends.
struct PerIpSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    key: String,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl ListenerState {
    /// What one address may hold now: `max_connections_per_ip` while the listener is less
    /// than half full; past that, its share of what is left (`max_connections_per_ip` x
    /// free / half the pool, at least 1). A few dozen addresses at the cap would otherwise
    /// hold every slot (40 x 256 > 10 000) and nobody else would get in; this way they level
    /// off with about a third of the pool still free for addresses that hold few.
    fn per_ip_cap(&self) -> usize {
        let max = self.max_connections.max(1);
        let free = self.connections.available_permits().min(max);
        let used = max - free;
        if used * 2 < max {
            self.max_per_ip
        } else {
            (self.max_per_ip.saturating_mul(free).saturating_mul(2) / max).clamp(1, self.max_per_ip)
        }
    }

    fn take_ip_slot(&self, peer: SocketAddr) -> Option<PerIpSlot> {
        let key = crate::throttle::client_key(peer.ip());
        let cap = self.per_ip_cap();
        let mut m = self.per_ip.lock().ok()?;
        let n = m.entry(key.clone()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            map: self.per_ip.clone(),
            key,
        })
    }
}

/// The HTTP builders: plain connections detect HTTP/2 prior knowledge; TLS connections use
/// exactly what ALPN agreed.
struct Builders {
    detect: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

/// Whether a connection is busy, for the idle and send timeouts.
struct Activity {
    /// Requests in progress: from the head's arrival to the end of the response body. Only
    /// [`InProgress`] changes it, so a request whose future or body is dropped (an HTTP/2
    /// RST_STREAM, a reset connection) is never counted for ever.
    active: AtomicUsize,
    /// Requests seen so far.
    seen: AtomicUsize,
    /// When the last request ended (ms since the connection started).
    last_ms: AtomicU64,
    /// Per request in progress: since when (ms since the connection started) its response
    /// has been waiting for the client to take bytes, [`FREE`] or [`NOT_WAITING`]. Slot 0,
    /// the only one an HTTP/1.1 connection uses (its requests come one at a time), is an
    /// atomic of its own; the others (concurrent HTTP/2 streams) are in `more`.
    first: AtomicU64,
    more: std::sync::Mutex<Vec<u64>>,
}

const FREE: u64 = u64::MAX;
const NOT_WAITING: u64 = u64::MAX - 1;

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            first: AtomicU64::new(FREE),
            more: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Activity {
    /// A slot for a new request in progress, marked not waiting.
    fn claim(&self) -> usize {
        if self
            .first
            .compare_exchange(FREE, NOT_WAITING, SeqCst, SeqCst)
            .is_ok()
        {
            return 0;
        }
        match self.more.lock() {
            Ok(mut w) => match w.iter().position(|v| *v == FREE) {
                Some(i) => {
                    w[i] = NOT_WAITING;
                    i + 1
                }
                None => {
                    w.push(NOT_WAITING);
                    w.len()
                }
            },
            Err(_) => usize::MAX,
        }
    }

    fn set_waiting(&self, slot: usize, value: u64) {
        if slot == 0 {
            self.first.store(value, SeqCst);
        } else if let Ok(mut w) = self.more.lock()
            && let Some(v) = w.get_mut(slot - 1)
        {
            *v = value;
        }
    }

    /// Since when the longest-waiting response has waited for the client, if one does.
    fn oldest_waiting(&self) -> Option<u64> {
        let first = Some(self.first.load(SeqCst)).filter(|v| *v < NOT_WAITING);
        let more = self
            .more
            .lock()
            .ok()
            .and_then(|w| w.iter().copied().filter(|v| *v < NOT_WAITING).min());
        first.into_iter().chain(more).min()
    }
}

/// One request in progress on a connection, from its head to the end (or drop) of its
/// response body: a drop guard, so a cancelled request is never counted as in progress.
struct InProgress {
    activity: Arc<Activity>,
    started: tokio::time::Instant,
    slot: usize,
    /// This response is counted as waiting for the client.
    waiting: bool,
}

impl InProgress {
    fn begin(activity: Arc<Activity>, started: tokio::time::Instant) -> InProgress {
        activity.active.fetch_add(1, SeqCst);
        activity.seen.fetch_add(1, SeqCst);
        let slot = activity.claim();
        InProgress {
            activity,
            started,
            slot,
            waiting: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn wait_for_client(&mut self, yes: bool) {
        if self.waiting != yes {
            self.waiting = yes;
            let value = if yes { self.now_ms() } else { NOT_WAITING };
            self.activity.set_waiting(self.slot, value);
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let a = &self.activity;
        a.set_waiting(self.slot, FREE);
        a.last_ms.store(self.now_ms(), SeqCst);
        a.active.fetch_sub(1, SeqCst);
    }
}

/// A response body that keeps its request counted as in progress until it ends, and records
/// when it waits for the client: from the moment it has bytes ready (its head, then each
/// frame) until the connection asks for more. HTTP/1.1 and HTTP/2 alike only poll a body when
/// the client has room (TCP window, flow-control window), so a body not polled while it has
/// data to give is a client that takes no bytes.
pub struct Watched {
    inner: crate::body::ResponseBody,
    guard: InProgress,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = <crate::body::ResponseBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        this.guard.wait_for_client(false);
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        // Bytes handed on: until the next poll (or, after the last frame, until the connection
        // drops the body) they wait for room. HTTP/2 polls a frame before it has the window to
        // send it, so even the last frame waits on the client.
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            this.guard.wait_for_client(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Connections the kernel completes and holds for a listener while every slot is taken
/// (`max_connections`): the accept loop takes one only when a slot frees, so past the slots
/// clients wait here, costing no memory of ours. `std`'s default of 128 is soon full under
/// a burst or a flood; a client whose handshake the kernel cannot queue has its SYN dropped
/// and waits out a retransmission (1 s, then 2, 4, ...) before its turn. nginx uses 511;
/// the kernel caps this at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    state: Arc<ListenerState>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait for a connection slot before accepting: over the limit, clients queue in the
        // kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            p = state.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(ip_slot) = state.take_ip_slot(peer) else {
            tracing::debug!(%peer, "refused: max_connections_per_ip reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            connection(state, stream, peer, stop).await;
        });
    }
}

/// One connection: TLS (within the first-request deadline), then HTTP/1.1 or HTTP/2.
async fn connection(
    state: Arc<ListenerState>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    let deadline = started + state.first_request;
    // The connection's requests share its read-ahead budget.
    let conn = ConnInfo::new(peer, state.role, state.tls.is_some()).with_read_budget(
        crate::body::ReadBudget::new(state.gateway.app().config.limits.connection_buffer_bytes),
    );
    let activity = Arc::new(Activity::default());
    let service = {
        let (gateway, activity) = (state.gateway.clone(), activity.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (gateway, activity, conn) = (gateway.clone(), activity.clone(), conn.clone());
            async move {
                let mut guard = InProgress::begin(activity, started);
                let response = match conn.listener {
                    // Boxed: the admin's future is larger than a request's, and hyper moves
                    // this one into its slot for every request.
                    Listener::Admin => Box::pin(crate::admin::handle(&gateway, req)).await,
                    _ => gateway.app().handle(req, &conn).await,
                };
                // From here the head waits for the client to take it.
                guard.wait_for_client(true);
                Ok::<_, Infallible>(response.map(|inner| Watched { inner, guard }))
            }
        })
    };
    let watch = Watch {
        activity,
        started,
        deadline,
        idle: state.idle,
        send: state.send,
        drain: state.drain,
    };
    match &state.tls {
        None => {
            serve(
                &state.builders.detect,
                TokioIo::new(stream),
                service,
                stop,
                peer,
                watch,
            )
            .await
        }
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                let builder = if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    &state.builders.http2
                } else {
                    &state.builders.http1
                };
                serve(builder, TokioIo::new(s), service, stop, peer, watch).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// The deadlines of one connection.
struct Watch {
    activity: Arc<Activity>,
    started: tokio::time::Instant,
    /// The first request's head must have arrived by then.
    deadline: tokio::time::Instant,
    idle: Duration,
    send: Duration,
    drain: Duration,
}

/// Why a connection is ended by its watch.
#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    /// No first request by the deadline: closed at once.
    FirstMissed,
    /// No request in progress for `idle`: closed gracefully (HTTP/2: GOAWAY).
    Idle,
    /// A response waited `send` for the client to take bytes: closed at once.
    Stalled,
}

impl Watch {
    /// Resolves when the connection should go.
    async fn expired(&self) -> Expiry {
        let a = &self.activity;
        // Checks at least this often while requests are in progress, so a response that
        // starts to wait is noticed within half a send timeout of its deadline.
        let step = (self.send / 2).max(Duration::from_millis(50));
        loop {
            let now = tokio::time::Instant::now();
            if a.seen.load(SeqCst) == 0 {
                if now >= self.deadline {
                    return Expiry::FirstMissed;
                }
                tokio::time::sleep_until(self.deadline.min(now + Duration::from_millis(250))).await;
                continue;
            }
            let mut next = now + step;
            if let Some(since) = a.oldest_waiting() {
                let due = self.started + Duration::from_millis(since) + self.send;
                if now >= due {
                    return Expiry::Stalled;
                }
                next = next.min(due);
            }
            if a.active.load(SeqCst) == 0 {
                let due = self.started + Duration::from_millis(a.last_ms.load(SeqCst)) + self.idle;
                if now >= due {
                    return Expiry::Idle;
                }
                next = next.min(due);
            }
            tokio::time::sleep_until(next.max(now + Duration::from_millis(10))).await;
        }
    }
}

/// Serves one connection; when the stop signal comes, finishes in-flight requests (within
/// `drain_timeout_ms`), then closes. A connection that sends no request by its deadline is
/// dropped; one that stays idle is shut down gracefully (HTTP/2: GOAWAY), within the send
/// timeout; one whose client stops taking a response's bytes for the send timeout is
/// dropped. Every graceful close has a deadline: a client that never reads cannot hold it.
async fn serve<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    watch: Watch,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<Watched>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let (result, deadline) = if *stop.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        (None, watch.drain)
    } else {
        tokio::select! {
            r = conn.as_mut() => (Some(r), Duration::ZERO),
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                (None, watch.drain)
            }
            why = watch.expired() => match why {
                Expiry::FirstMissed => {
                    tracing::debug!(%peer, "no request within the deadline; closed");
                    return;
                }
                Expiry::Stalled => {
                    tracing::debug!(%peer, "a response made no progress within send_timeout_ms; closed");
                    return;
                }
                Expiry::Idle => {
                    conn.as_mut().graceful_shutdown();
                    (None, watch.send)
                }
            }
        }
    };
    let result = match result {
        Some(r) => r,
        None => match tokio::time::timeout(deadline, conn.as_mut()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(%peer, "graceful close passed its deadline; closed");
                return;
            }
        },
    };
    if let Err(e) = result {
        log_conn_error(peer, &*e);
    }
}

fn log_conn_error(peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    tracing::debug!(%peer, "connection ended: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_response_is_found_in_any_slot_and_slots_are_reused() {
        let a = Activity::default();
        assert_eq!(
            a.oldest_waiting(),
            None,
            "nothing waits on a new connection"
        );
        let slots = [a.claim(), a.claim(), a.claim()];
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(a.oldest_waiting(), None, "claimed slots are not waiting");
        a.set_waiting(1, 700);
        a.set_waiting(2, 500);
        assert_eq!(a.oldest_waiting(), Some(500));
        a.set_waiting(0, 300);
        assert_eq!(a.oldest_waiting(), Some(300), "the first slot counts too");
        a.set_waiting(0, NOT_WAITING);
        assert_eq!(a.oldest_waiting(), Some(500));
        a.set_waiting(0, FREE);
        a.set_waiting(2, FREE);
        assert_eq!(a.oldest_waiting(), Some(700));
        assert_eq!(a.claim(), 0, "the first slot is taken again once free");
        assert_eq!(a.claim(), 2, "a freed slot among the others is taken again");
        assert_eq!(a.claim(), 3);
        assert_eq!(a.oldest_waiting(), Some(700));
    }
}
