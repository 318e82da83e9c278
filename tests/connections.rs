//! Connections under abuse: idle sockets (plain, TLS, an HTTP/2 preface and nothing more)
//! are closed after one deadline and never starve the admin listener or real clients, and
//! one client address holds at most `max_connections_per_ip` of a listener.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{TestServer, certs};

fn config(per_ip: usize, first_request_ms: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls = {{ cert = "{{certs}}/localhost.pem", key = "{{certs}}/localhost-key.pem" }}
admin_listen = "127.0.0.1:0"

[limits]
header_read_timeout_ms = {first_request_ms}
idle_timeout_ms = {first_request_ms}
max_connections = 1000
max_connections_per_ip = {per_ip}

[[function]]
name = "hello"
wasm = "{{hello}}"
memory_mb = 16

[[trigger]]
name = "hello"
function = "hello"
"#
    )
}

fn tls_connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs().join("ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Whether the server closes the connection within `limit` (a bound, not a measurement).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_never_starve_anyone() {
    let s = TestServer::start(&config(5000, 1500));
    let addr = s.addr();
    // 200 connections that complete TLS and say nothing...
    let connector = tls_connector(b"http/1.1");
    let mut tls = Vec::new();
    for _ in 0..200 {
        let stream = connect_from("127.0.0.4", &addr).await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tls.push(
            connector
                .connect(name, stream)
                .await
                .expect("a TLS handshake on a listener with free slots"),
        );
    }
    assert_eq!(tls.len(), 200);
    // ...an HTTP/2 connection that sends its preface and then idles...
    let stream = connect_from("127.0.0.3", &addr).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut h2 = tls_connector(b"h2").connect(name, stream).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // ...and 2,000 TCP connections that never start TLS, more than the listener's 1,000
    // slots. (The idle ones come from other addresses than the real client: one address
    // past its share of a full listener is refused, see below.)
    let mut tcp = Vec::new();
    let connects: Vec<_> = (0..2000)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), connect_from("127.0.0.2", &addr))
                    .await
                    .ok()
            })
        })
        .collect();
    for c in connects {
        tcp.extend(c.await.unwrap());
    }
    // The listener's slots and its backlog take them all.
    assert_eq!(tcp.len(), 2000, "TCP connects that failed");

    // The admin listener has its own slots: it answers at once.
    let health = common::client()
        .get(s.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Real clients are served (once the deadline has cleared the idle ones).
    let client = common::client();
    let mut served = false;
    for _ in 0..40 {
        if let Ok(r) = client.get(s.url("/hello")).send().await
            && r.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "a normal request was never answered");
    // Every idle connection is closed by the server, after the configured 1.5 s (a
    // connection still in the backlog gets its 1.5 s once accepted): the bound of 9 s sits
    // below the default (10 s), so a server that ignored the keys fails, with room for a
    // loaded machine (6 s was once missed with builds running beside the suite).
    const CUT: Duration = Duration::from_secs(9);
    for s in tls.iter_mut() {
        assert!(
            closed_within(s, CUT).await,
            "an idle TLS connection stayed open"
        );
    }
    assert!(
        closed_within(&mut h2, CUT).await,
        "an HTTP/2 preface-only connection stayed open"
    );
    for s in tcp.iter_mut().take(50) {
        assert!(
            closed_within(s, CUT).await,
            "an idle TCP connection stayed open"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_its_share_of_a_listener() {
    let s = TestServer::start(&config(5, 30_000));
    let addr = s.addr();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The sixth from the same address is closed at once, while the five stay open.
    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut sixth, Duration::from_secs(10)).await);
    for h in held.iter_mut() {
        assert!(
            !closed_within(h, Duration::from_millis(200)).await,
            "one of the five was closed"
        );
    }
    // Other listeners keep their own count.
    assert_eq!(
        common::client()
            .get(s.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Once they go, the address may connect again.
    drop(held);
    let client = common::client_http1();
    let mut ok = false;
    for _ in 0..40 {
        if let Ok(r) = client.get(s.url("/hello")).send().await {
            ok = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
}

/// Opens a TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Past half the pool, an address may hold only its share of what is left: two addresses
/// at `max_connections_per_ip` (16 + 16 > 20) no longer hold every slot, and a third gets in
/// (before: the two held all 20 and the third was never accepted).
#[tokio::test(flavor = "multi_thread")]
async fn a_few_addresses_at_their_cap_leave_room_for_others() {
    let s = TestServer::start(
        &config(16, 60_000)
            .replace("max_connections = 1000", "max_connections = 20")
            .replace("tls = ", "# tls = "),
    );
    let addr = s.addr();
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..16 {
            held.push(connect_from(from, &addr).await);
        }
    }
    // The gateway accepts in order from its backlog, one at a time: the next connection is
    // taken only after these are all accepted or closed.
    let mut other = connect_from("127.0.0.4", &addr).await;
    other
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), other.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && text.starts_with("HTTP/1.1 200"),
        "a third address was not served: {text:?}"
    );
}

/// Plain HTTP (HTTP/2 by prior knowledge) with the `hello` function and the given
/// `[limits]` lines.
fn plain_config(limits: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
{limits}

[[function]]
name = "hello"
wasm = "{{hello}}"
memory_mb = 16

[[trigger]]
name = "hello"
function = "hello"
"#
    )
}

/// Reads one whole HTTP/1.1 response (by `Content-Length`, or to the last chunk) within
/// `limit`; returns it as text.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let body = &got[end + 4..];
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let done = match length {
                    Some(n) => body.len() >= n,
                    None => body.ends_with(b"0\r\n\r\n"),
                };
                if done {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "no whole response within {limit:?}: {text:?}");
    text
}

const KEEP_ALIVE_GET: &[u8] = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// `idle_timeout_ms` closes an HTTP/1.1 keep-alive connection once its last request has
/// finished: the connection serves two requests in turn, then, idle, is closed cleanly (EOF,
/// nothing more sent). `header_read_timeout_ms` is far away (10 minutes), so it is the idle
/// timeout that closes it; the bound (20 s) sits between the configured 1 s and the
/// default 60 s.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = TestServer::start(&plain_config(
        "idle_timeout_ms = 1000\nheader_read_timeout_ms = 600000",
    ));
    let mut conn = TcpStream::connect(s.addr()).await.unwrap();
    for i in 0..2 {
        conn.write_all(KEEP_ALIVE_GET).await.unwrap();
        let answer = read_response(&mut conn, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        assert!(
            answer.contains("hello from wasmgate"),
            "request {i}: {answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "request {i}: the server did not keep the connection: {answer}"
        );
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(_))),
        "the idle keep-alive connection was not closed within 20 s (idle_timeout_ms = 1000): {end:?}"
    );
    assert!(
        rest.is_empty(),
        "bytes after the last response: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// The frames seen: each frame's type, and for a GOAWAY its error code.
type Frames = Arc<std::sync::Mutex<Vec<(u8, Option<u32>)>>>;

/// An HTTP/2 connection's frames as the client receives them.
struct FrameScan<S> {
    inner: S,
    pending: Vec<u8>,
    frames: Frames,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FrameScan<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        let this = &mut *self;
        this.pending.extend_from_slice(&fresh);
        while this.pending.len() >= 9 {
            let len =
                u32::from_be_bytes([0, this.pending[0], this.pending[1], this.pending[2]]) as usize;
            if this.pending.len() < 9 + len {
                break;
            }
            let kind = this.pending[3];
            let code = (kind == 0x7 && len >= 8).then(|| {
                u32::from_be_bytes([
                    this.pending[13],
                    this.pending[14],
                    this.pending[15],
                    this.pending[16],
                ])
            });
            this.frames.lock().unwrap().push((kind, code));
            this.pending.drain(..9 + len);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FrameScan<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `idle_timeout_ms` on HTTP/2: after a completed request, the idle connection is ended
/// gracefully: the server sends GOAWAY with NO_ERROR and closes, and the client's connection
/// ends without error. The client keeps its request handle (an h2 client with none left
/// closes by itself); the bound (20 s) sits between the configured 1 s and the default 60 s.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_h2_connection_gets_goaway_after_the_idle_timeout() {
    let s = TestServer::start(&plain_config(
        "idle_timeout_ms = 1000\nheader_read_timeout_ms = 600000",
    ));
    let addr = s.addr();
    let frames = Frames::default();
    let io = FrameScan {
        inner: TcpStream::connect(&addr).await.unwrap(),
        pending: Vec::new(),
        frames: frames.clone(),
    };
    let (mut send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    let ended = tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(format!("http://{addr}/hello"))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert_eq!(text, b"hello from wasmgate\n");
    let end = tokio::time::timeout(Duration::from_secs(20), ended).await;
    let seen = frames.lock().unwrap().clone();
    assert!(
        matches!(end, Ok(Ok(Ok(())))),
        "the idle h2 connection did not end cleanly within 20 s (idle_timeout_ms = 1000): {end:?}; frames {seen:?}"
    );
    assert!(
        seen.contains(&(0x7, Some(0))),
        "no GOAWAY with NO_ERROR before the close: {seen:?}"
    );
    drop(send);
}

/// `max_connections` caps the connections a listener holds: with 4 held (each from its own
/// address, having been served, with `max_connections_per_ip` far above), a fifth connects
/// (the kernel's backlog takes it) but is neither accepted nor closed: its request gets no
/// answer while the held ones are served again. Once one held connection is dropped, the
/// fifth is accepted and served. A build that ignored the key (default 10 000) answers
/// the fifth at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_at_max_connections_serves_the_next_only_when_one_goes() {
    let s = TestServer::start(&plain_config(
        "max_connections = 4\nmax_connections_per_ip = 1000\n\
         idle_timeout_ms = 600000\nheader_read_timeout_ms = 600000",
    ));
    let addr = s.addr();
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let mut c = connect_from(from, &addr).await;
        c.write_all(KEEP_ALIVE_GET).await.unwrap();
        let answer = read_response(&mut c, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{from}: {answer}");
        held.push(c);
    }
    let mut fifth = connect_from("127.0.0.6", &addr).await;
    fifth.write_all(KEEP_ALIVE_GET).await.unwrap();
    // The server goes on serving the connections it holds (so it has had every chance to
    // take the fifth)...
    for c in held.iter_mut() {
        c.write_all(KEEP_ALIVE_GET).await.unwrap();
        let answer = read_response(c, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // ...while the fifth waits: no answer, and not closed either.
    let mut buf = [0u8; 1024];
    let waited = tokio::time::timeout(Duration::from_secs(1), fifth.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "the fifth connection was answered or closed past max_connections = 4: {:?}",
        waited.map(|r| r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
    );
    // One held connection goes: the fifth takes its slot and is served.
    drop(held.remove(0));
    let answer = read_response(&mut fifth, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from wasmgate"), "{answer}");
}

/// A returning TLS client resumes its session (no certificate signature, no key exchange of
/// the server's) however many clients came in between: the server hands out tickets it can
/// read back instead of keeping each client's session in a bounded cache (rustls's default
/// keeps 256 sessions, two per client, so the 129th client evicted the first).
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_session_resumes_after_hundreds_of_other_clients() {
    let s = TestServer::start(&config(5000, 10_000));
    let addr = s.addr();
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // A request and its answer on a new connection: the session tickets come after the
    // handshake, and are read with the answer.
    async fn get(
        connector: &tokio_rustls::TlsConnector,
        addr: &str,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::HandshakeKind> {
        let bound = Duration::from_secs(20);
        let stream = tokio::time::timeout(bound, TcpStream::connect(addr))
            .await
            .expect("connected within 20 s")
            .unwrap();
        let mut tls = tokio::time::timeout(bound, connector.connect(name, stream))
            .await
            .expect("a TLS handshake within 20 s")
            .unwrap();
        tls.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut tls, bound).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("hello from wasmgate"), "{answer}");
        tls.get_ref().1.handshake_kind()
    }
    let addr = addr.as_str();
    let resumed = |c: tokio_rustls::TlsConnector| async move {
        get(&c, addr, name()).await == Some(rustls::HandshakeKind::Resumed)
    };
    let returning = tls_connector(b"http/1.1");
    assert!(!resumed(returning.clone()).await, "a first connection");
    assert!(
        resumed(returning.clone()).await,
        "a client's second connection right after its first"
    );
    // 300 other clients, each with a session cache of its own.
    for _ in 0..300 {
        assert!(!resumed(tls_connector(b"http/1.1")).await, "a new client");
    }
    assert!(
        resumed(returning).await,
        "the first client, after 300 others"
    );
}
