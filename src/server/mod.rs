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
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
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
        listeners.push(Bound { listener, role });
    }
    // The sweeper, the reloader (its SIGHUP handler is installed here, before anyone is
    // told where to connect) and the queue's workers.
    gateway.supervise();
    for line in announce {
        println!("{line}");
    }
    let _ = std::io::stdout().flush();

    let builder = Arc::new(http_builder(&app));
    let max_connections = app.config.limits.max_connections.get();
    let connections = Arc::new(Semaphore::new(app.config.limits.max_connections.get()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    for b in listeners {
        accept_tasks.push(tokio::spawn(accept_loop(
            gateway.clone(),
            b,
            tls.clone(),
            builder.clone(),
            connections.clone(),
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
    match tokio::time::timeout(drain, connections.acquire_many(all)).await {
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

async fn accept_loop(
    gateway: Arc<Gateway>,
    bound: Bound,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake_timeout =
        Duration::from_millis(gateway.app().config.limits.header_read_timeout_ms.get());
    loop {
        // Wait for a connection slot before accepting: over the limit, clients queue in the
        // kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = bound.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            listener: bound.role,
            https: tls.is_some(),
        };
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let gateway = gateway.clone();
            async move {
                Ok::<_, Infallible>(match conn.listener {
                    Listener::Admin => crate::admin::handle(&gateway, req).await,
                    _ => gateway.app().handle(req, &conn).await,
                })
            }
        });
        let tls = tls.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve(&builder, TokioIo::new(stream), service, stop, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve(&builder, TokioIo::new(s), service, stop, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection; when the stop signal comes, finishes in-flight requests, then closes.
async fn serve<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<crate::body::ResponseBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = if *stop.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        conn.await
    } else {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        log_conn_error(peer, &*e);
    }
}

fn log_conn_error(peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    tracing::debug!(%peer, "connection ended: {e}");
}
