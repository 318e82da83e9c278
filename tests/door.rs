//! The door under abuse, against the real binary on real sockets: refused bodies still get
//! their answer, path tricks do not get around path rules, slow senders never hold a
//! function's slots.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{TestServer, certs, root};

/// `slow`: the body limits of the slow-sender tests (keys the previous main did not know).
fn config(tls: bool, slow: bool) -> String {
    let slow = if slow {
        "body_read_timeout_ms = 1500\nmax_connections_per_ip = 1000"
    } else {
        ""
    };
    let jwks = root()
        .join("tests/fixtures/jwks.json")
        .display()
        .to_string();
    let tls = if tls {
        "tls = { cert = \"{certs}/localhost.pem\", key = \"{certs}/localhost-key.pem\" }"
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{tls}

[limits]
max_body_bytes = 1024
{slow}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16
max_concurrency = 100

[[trigger]]
name = "t"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256"]
blacklist = ["/admin/*"]

[[trigger]]
name = "admin"
function = "echo"

[[trigger]]
name = "signed"
function = "echo"
auth = "signature"
signature = {{ keys = [ {{ id = "AK1", secret = "door-secret" }} ] }}
"#
    )
}

/// Sends `request` as written (no client-side path clean-up) and returns the status code.
fn raw(addr: &str, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get(addr: &str, path: &str) -> u16 {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn path_tricks_do_not_get_around_path_rules() {
    let s = TestServer::start(&config(false, false));
    let addr = s.addr();
    // The blacklisted path needs a token however it is spelled.
    for path in [
        "/t/admin/x",
        "/t/%61dmin/x",
        "/t//admin/x",
        "/t/./admin/x",
        "/t/x/../admin/x",
        "/t/%2e/admin/x",
    ] {
        assert_eq!(get(&addr, path), 401, "{path}");
    }
    assert_eq!(get(&addr, "/t/public"), 200);
    // An encoded separator, or climbing out of the trigger, is refused.
    assert_eq!(get(&addr, "/t/admin%2Fx"), 400);
    assert_eq!(get(&addr, "/t/admin%5cx"), 400);
    assert_eq!(get(&addr, "/t/../admin/x"), 400);
    assert_eq!(get(&addr, "/../t"), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_sees_the_normalised_path() {
    let s = TestServer::start(&config(false, false));
    let mut stream = TcpStream::connect(s.addr()).unwrap();
    stream
        .write_all(
            b"GET /admin//a/./b/../c%7e HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    assert!(body.contains("\"path\":\"/a/c~\""), "{out}");
    assert!(
        body.contains("/admin//a/./b/../c%7e"),
        "original path kept: {out}"
    );
}

#[test]
fn an_over_limit_body_gets_its_400_over_tls_with_curl() {
    let s = TestServer::start(&config(true, false));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 8 << 20]).unwrap();
    for extra in [
        &["--http1.1"][..],
        &["--http1.1", "-H", "Expect:"][..],
        &["--http2"][..],
        &["--http2", "-H", "Expect: 100-continue"][..],
    ] {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(certs().join("ca.pem"))
            .args(["-o", "-", "-w", "\n%{http_code}", "--data-binary"])
            .arg(format!("@{}", big.display()))
            .args(extra)
            .arg(s.url("/admin"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.ends_with("\n400") && stdout.contains("EntityTooLarge"),
            "curl {extra:?}: {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_limit_body_gets_its_400_over_tls_with_reqwest() {
    let s = TestServer::start(&config(true, false));
    for client in [common::client_http1(), common::client()] {
        let resp = client
            .post(s.url("/admin"))
            .body(vec![b'x'; 8 << 20])
            .send()
            .await
            .expect("the refusal is read, not a reset");
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["Code"], "EntityTooLarge");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_senders_never_hold_a_functions_slots() {
    let s = TestServer::start(&config(false, true));
    let addr = s.addr();
    // 200 clients that promise 100 bytes and send one byte every 300 ms, against a function
    // that runs 100 at once. Each says when it has connected and sent its first byte; after
    // ten slow bytes it sends the rest and must get its answer: the server held it throughout.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let mut slow = Vec::new();
    for i in 0..200 {
        let (addr, started) = (addr.clone(), started_tx.clone());
        slow.push(std::thread::spawn(move || -> Result<String, String> {
            let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"POST /admin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
                .map_err(|e| format!("head: {e}"))?;
            for n in 0..10 {
                s.write_all(b"x").map_err(|e| format!("byte {n}: {e}"))?;
                if n == 0 {
                    let _ = started.send(i);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            s.write_all(&[b'y'; 90]).map_err(|e| format!("rest: {e}"))?;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the answer head and the 100-byte echo (Connection stays open).
            while !String::from_utf8_lossy(&out).contains(&"y".repeat(90)) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(format!("answer: {e}")),
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }));
    }
    drop(started_tx);
    // Every slow sender is connected and sending before the normal requests start.
    let started = (0..200).filter(|_| started_rx.recv().is_ok()).count();
    assert_eq!(started, 200, "slow senders that never started");
    // 100 concurrent normal requests are all served.
    let c = reqwest::Client::new();
    let normal: Vec<_> = (0..100)
        .map(|i| {
            let (c, url) = (c.clone(), s.url("/admin"));
            tokio::spawn(async move {
                c.post(&url)
                    .body(format!("n{i}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for n in normal {
        statuses.push(n.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for t in slow {
        let answer = t.join().unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

#[test]
fn a_body_that_stalls_gets_408() {
    let s = TestServer::start(&config(false, true));
    let mut stream = TcpStream::connect(s.addr()).unwrap();
    stream
        .write_all(b"POST /admin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    // body_read_timeout_ms is 1500: say nothing more. The bound of 6 s sits below the
    // default (10 s), so a server that ignored the key fails here.
    stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("RequestTimeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_keeps_answering_503_for_the_grace_period_then_exits_zero() {
    let cfg = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_grace_ms = 8000

[[function]]
name = "probe"
wasm = "{probe}"
memory_mb = 16
"#;
    let mut s = TestServer::start(&format!(
        "{cfg}\n[[trigger]]\nname = \"probe\"\nfunction = \"probe\"\n"
    ));
    let c = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let (c, url) = (c.clone(), s.url("/probe/sleep?ms=1500"));
        async move { c.get(url).send().await.unwrap() }
    });
    assert!(s.wait_for_log("sleep start 1500 ms"), "{}", s.stderr_text());
    s.signal("TERM");
    // Bounded wait until the node says it is draining.
    let mut ready = 0;
    for _ in 0..200 {
        ready = c
            .get(s.admin_url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "/readyz while draining");
    // A new connection is still answered, with 503 and Connection: close.
    let fresh = reqwest::Client::new()
        .get(s.url("/probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 503);
    assert_eq!(fresh.headers()["connection"], "close");
    let v: serde_json::Value = fresh.json().await.unwrap();
    assert_eq!(v["Code"], "ResourceThrottled");
    // The request in flight finishes whole.
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slept");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(TcpStream::connect(s.addr()).is_err());
}

#[test]
fn a_bad_signature_is_refused_before_its_body_is_read() {
    let s = TestServer::start(&config(false, false));
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let hash = "0".repeat(64);
    let mut stream = TcpStream::connect(s.addr()).unwrap();
    // The body is announced but only its first bytes are sent: the answer must not wait.
    let head = format!(
        "POST /signed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\
         x-acs-date: {date}\r\nx-acs-content-sha256: {hash}\r\n\
         Authorization: ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=x-acs-content-sha256;x-acs-date,Signature={}\r\n\r\n\
         only-a-little",
        "ab".repeat(32)
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 403"),
        "answered before the body: {text:?}"
    );
    assert!(text.contains("SignatureNotMatch"), "{text}");
}

/// `drain_timeout_ms` bounds how long SIGTERM waits for requests in flight: a request held
/// at a gate that never opens is cut when the (short) drain timeout passes, the process
/// exits 0, and the client holding the request gets no 200. The exit bound (15 s) sits
/// between the configured 1.5 s and the default 30 s, and the function's own timeout is far
/// past both, so a build that ignored the key (or waited for the request) fails.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cuts_requests_in_flight_after_the_drain_timeout_and_exits_zero() {
    let gate = common::Gate::start();
    let mut s = TestServer::start(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout_ms = 1500

[[function]]
name = "probe"
wasm = "{probe}"
memory_mb = 16
timeout_ms = 600000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
"#,
    );
    let in_flight = tokio::spawn({
        let url = s.url(&format!("/probe/fetch?url={}", gate.url()));
        async move { reqwest::Client::new().get(url).send().await }
    });
    // The request is inside the function, waiting at the gate (which stays shut).
    gate.wait_arrivals(1);
    s.signal("TERM");
    let code = s.wait_exit(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "the node did not exit 0 within 15 s of SIGTERM (drain_timeout_ms = 1500):\n{}",
        s.stderr_text()
    );
    // Cut by the drain timeout: the node's own deadline, or each connection's (both are
    // drain_timeout_ms; whichever fires first logs its line).
    let log = s.stderr_text();
    assert!(
        log.contains("drain timeout passed") || log.contains("drained; exiting"),
        "the exit was not the drain's:\n{log}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the client learns its connection is gone")
        .unwrap();
    match answer {
        Err(_) => {}
        Ok(r) => assert_ne!(r.status(), 200, "the held request was answered 200"),
    }
    assert_eq!(gate.arrivals(), 1);
}
