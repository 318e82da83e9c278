//! The public door under protocol abuse, against the real binary on real sockets: HTTP/2
//! clients that never take a response, requests cancelled mid-flight, bodies trickled for
//! ever, and authorities the gateway must not hand on. Each wait is bounded well below the
//! default of the key under test, so a build that ignores the key fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestServer;

/// Plain HTTP (HTTP/2 by prior knowledge), with the given `[limits]` lines.
fn config(limits: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
{limits}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "echo"
function = "echo"
async = {{ enabled = true }}

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 30000

[[trigger]]
name = "probe"
function = "probe"
"#
    )
}

/// Waits for the server to end an HTTP/2 connection, up to `bound`; true when it did.
async fn closed_within<T>(
    conn: h2::client::Connection<tokio::net::TcpStream, T>,
    bound: Duration,
) -> bool
where
    T: bytes::Buf,
{
    tokio::time::timeout(bound, conn).await.is_ok()
}

async fn h2_connect(
    addr: &str,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("h2 handshake")
}

fn request(addr: &str, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// Finding 1a: a client that opens no flow-control window can never receive the 404's body.
/// The connection is closed `send_timeout_ms` after the response started to wait, though
/// the idle timeout is far away (before: GOAWAY after the idle timeout, then held for ever).
#[tokio::test(flavor = "multi_thread")]
async fn an_h2_client_with_a_zero_window_is_cut_off_after_the_send_timeout() {
    let s = TestServer::start(&config("send_timeout_ms = 1000\nidle_timeout_ms = 600000"));
    let addr = s.addr();
    let (mut send, conn) = h2_connect(&addr, 0).await;
    let (response, _) = send
        .send_request(request(&addr, "GET", "/nope"), true)
        .unwrap();
    let watcher = tokio::spawn(closed_within(conn, Duration::from_secs(15)));
    // The head is not flow-controlled: the 404 arrives, its body never can.
    let response = tokio::time::timeout(Duration::from_secs(15), response)
        .await
        .expect("the head arrives")
        .expect("a response");
    assert_eq!(response.status(), 404);
    assert!(
        watcher.await.unwrap(),
        "the connection stayed open with a response that cannot be sent (send_timeout_ms = 1000)"
    );
}

/// Finding 1b: a request cancelled with RST_STREAM while its function runs leaves nothing
/// counted as in progress, so the idle timeout still closes the connection (before: the
/// service future was dropped before it decremented the count, which stayed at 1 for ever).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_h2_request_does_not_keep_its_connection_busy() {
    let s = TestServer::start(&config("idle_timeout_ms = 1000"));
    let addr = s.addr();
    let (mut send, conn) = h2_connect(&addr, 65_535).await;
    let watcher = tokio::spawn(closed_within(conn, Duration::from_secs(20)));
    for _ in 0..3 {
        let (response, mut body) = send
            .send_request(request(&addr, "GET", "/probe/sleep?ms=3000"), true)
            .unwrap();
        // The function is running; the client gives up on it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        body.send_reset(h2::Reason::CANCEL);
        drop(response);
    }
    assert!(
        watcher.await.unwrap(),
        "the connection stayed open after its only requests were cancelled (idle_timeout_ms = 1000)"
    );
}

/// Sends a head announcing `len` bytes, then one byte every `every` until the server
/// answers or `bound` passes; returns the status line's code and what came back.
fn trickle(addr: &str, head: &str, len: usize, every: Duration, bound: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    s.write_all(format!("{head}Content-Length: {len}\r\n\r\n").as_bytes())
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    while started.elapsed() < bound {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if sent < len && s.write_all(b"x").is_ok() {
            sent += 1;
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Finding 2: a body sent one byte at a time, each pause shorter than
/// `body_read_timeout_ms`, is cut off with 408 once `request_timeout_ms` has passed: on the
/// sync path, the async path (whose body collection had no timeout at all) and before
/// authentication. The bound (20 s) sits between the configured 2 s and the default 60 s.
#[test]
fn a_trickled_body_gets_408_after_the_request_timeout() {
    let s = TestServer::start(&config(
        "request_timeout_ms = 2000\nbody_read_timeout_ms = 10000",
    ));
    let addr = s.addr();
    for (what, head) in [
        (
            "sync",
            "POST /echo HTTP/1.1\r\nHost: localhost\r\n".to_string(),
        ),
        (
            "async",
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nX-Fc-Invocation-Type: Async\r\n".to_string(),
        ),
    ] {
        let (code, text) = trickle(
            &addr,
            &head,
            1000,
            Duration::from_millis(300),
            Duration::from_secs(20),
        );
        assert_eq!(code, 408, "{what}: {text}");
        assert!(text.contains("RequestTimeout"), "{what}: {text}");
    }
}

/// Sends `request` as written and returns the status code and the whole answer.
fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Finding 3: an authority that is not `host[:port]` is 400 `InvalidArgument`, never a
/// request whose raw target reaches the function; HTTP/1.1 needs exactly one `Host`; in
/// absolute form the URI's authority is the one the function sees.
#[test]
fn an_invalid_authority_is_refused_and_the_function_sees_only_checked_parts() {
    let s = TestServer::start(&config(""));
    let addr = s.addr();
    for host in ["a b", "%", "a/b", "a@b", "x:99999", "x:1a", "[::1", "a\tb"] {
        let (code, text) = raw(
            &addr,
            &format!("GET /echo/x/../y HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(code, 400, "Host: {host:?}: {text}");
        assert!(text.contains("InvalidArgument"), "Host: {host:?}: {text}");
        assert!(!text.contains("../y"), "the raw target leaked: {text}");
    }
    let (code, text) = raw(&addr, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 400, "no Host: {text}");
    let (code, text) = raw(
        &addr,
        "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 400, "two Hosts: {text}");
    // A valid one, in upper case with a port: normalised, and the path normalised too.
    let (code, text) = raw(
        &addr,
        "GET /echo/x/../y HTTP/1.1\r\nHost: Example.COM:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"path\":\"/y\""), "{text}");
    assert!(
        text.contains("\"authority\":\"example.com:8080\""),
        "{text}"
    );
    // Absolute form: the URI's authority wins over Host.
    let (code, text) = raw(
        &addr,
        "GET http://Inside.example/echo/z HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"authority\":\"inside.example\""), "{text}");
    assert!(!text.contains("elsewhere"), "{text}");
}

/// Finding 18: a `data_dir` that group or others may write is refused at start, with the
/// reason (before, it was used silently).
#[test]
fn a_data_dir_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = tmp.path().join("wasmgate.toml");
    let text = common::render(&config("")).replace(
        "[limits]",
        &format!("data_dir = {:?}\n\n[limits]", data.display().to_string()),
    );
    std::fs::write(&path, text).unwrap();
    let err = tmp.path().join("stderr");
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // Bounded: a build that accepts the directory serves until killed.
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "served with a world-writable data_dir: {stderr}"
    );
    assert!(stderr.contains("writable by group or others"), "{stderr}");
}
