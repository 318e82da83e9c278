//! The gateway end to end: the real binary on 127.0.0.1:0, real TLS, real guests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestServer, client, client_http1, error_body};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
tls = { cert = "{certs}/localhost.pem", key = "{certs}/localhost-key.pem" }
internal_listen = "127.0.0.1:0"

[limits]
max_in_flight = 32
max_header_bytes = 2048
max_uri_bytes = 512
max_body_bytes = 1024

[[function]]
name = "hello"
wasm = "{hello}"
memory_mb = 16
env = { GREETING = "hi from the test" }

[[function]]
name = "echo"
wasm = "{echo}"
memory_mb = 16
env = { FOO = "bar" }

[[function]]
name = "probe"
wasm = "{probe}"
memory_mb = 16
timeout_ms = 1000

[[trigger]]
name = "hello"
function = "hello"
methods = ["GET", "POST"]

[[trigger]]
name = "echo"
function = "echo"

[[trigger]]
name = "echo-deep"
function = "hello"
path = "/echo/deep"

[[trigger]]
name = "echo-api"
function = "hello"
path = "/echo"
host = "api.example.com"

[[trigger]]
name = "internal"
function = "echo"
disable_internet = true

[[trigger]]
name = "probe"
function = "probe"

[[trigger]]
name = "missing"
function = "not-deployed"
"#;

/// Plain HTTP, one anonymous trigger on the hello function.
const HELLO_ONLY: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n[[trigger]]\nname = \"hello\"\nfunction = \"hello\"\n";

fn echo_json(v: &serde_json::Value, header: &str) -> Option<String> {
    v["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == header)
        .map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_strip_the_prefix_and_set_gateway_headers() {
    let s = TestServer::start(CONFIG);
    let c = client();
    let resp = c
        .get(s.url("/echo/a/b?x=1&y=2"))
        .header("x-fc-function-name", "spoofed")
        .header("x-fc-secret", "dropped")
        .header("x-fc-trace-id", "kept")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-fc-request-id"));
    let rid = resp.headers()["x-fc-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["path"], "/a/b?x=1&y=2");
    assert_eq!(
        echo_json(&v, "x-fc-original-path").unwrap(),
        "/echo/a/b?x=1&y=2"
    );
    assert_eq!(echo_json(&v, "x-fc-function-name").unwrap(), "echo");
    assert_eq!(echo_json(&v, "x-fc-trigger-name").unwrap(), "echo");
    assert_eq!(echo_json(&v, "x-fc-qualifier").unwrap(), "LATEST");
    assert_eq!(echo_json(&v, "x-fc-request-id").unwrap(), rid);
    assert_eq!(echo_json(&v, "x-fc-trace-id").unwrap(), "kept");
    assert_eq!(echo_json(&v, "x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(echo_json(&v, "x-forwarded-proto").unwrap(), "https");
    assert!(echo_json(&v, "x-fc-secret").is_none());
    assert_eq!(v["env"]["FOO"], "bar");

    // The prefix alone is "/", and a query survives.
    let v: serde_json::Value = c
        .get(s.url("/echo?q=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/?q=1");
    let v: serde_json::Value = c
        .get(s.url("/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/");

    // Longest prefix wins; a prefix matches only at a '/' boundary.
    let body = c
        .get(s.url("/echo/deep/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hi from the test\n");
    let resp = c.get(s.url("/echoes")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_body(resp).await["Code"], "TriggerNotFound");

    // A host match beats no host (HTTP/1.1 Host header, port ignored).
    let c1 = client_http1();
    let body = c1
        .get(s.url("/echo/x"))
        .header("host", "API.example.com:9999")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hi from the test\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_json_with_the_right_codes() {
    let s = TestServer::start(CONFIG);
    let c = client();

    let resp = c.get(s.url("/nothing-here")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_body(resp).await["Code"], "TriggerNotFound");

    let resp = c.put(s.url("/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v = error_body(resp).await;
    assert_eq!(v["Code"], "AccessDenied");
    assert_eq!(
        v["Message"],
        "method 'PUT' is not allowed by trigger 'hello'"
    );

    let resp = c.get(s.url("/missing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_body(resp).await["Code"], "FunctionNotFound");

    let resp = c
        .get(s.url("/hello"))
        .header("x-fc-invocation-type", "sometimes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");

    // No async table on this trigger: an async request is refused, never 202.
    let resp = c
        .post(s.url("/hello"))
        .header("x-fc-invocation-type", "ASYNC")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");

    // Request ids are unique.
    let a = c.get(s.url("/hello")).send().await.unwrap();
    let b = c.get(s.url("/hello")).send().await.unwrap();
    assert_ne!(
        a.headers()["x-fc-request-id"],
        b.headers()["x-fc-request-id"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_over_tls_and_http1() {
    let s = TestServer::start(CONFIG);
    let resp = client().get(s.url("/hello")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "hi from the test\n");
    let resp = client_http1().get(s.url("/hello")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_when_tls_is_omitted() {
    let s = TestServer::start(HELLO_ONLY);
    assert!(s.public.starts_with("http://"), "{}", s.public);
    let resp = reqwest::get(s.url("/hello")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello from wasmgate\n");
    // HTTP/2 with prior knowledge on the same plain port.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(s.url("/hello")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn internet_disabled_triggers_are_served_on_the_internal_listener_only() {
    let s = TestServer::start(CONFIG);
    let c = client();
    let resp = c.get(s.url("/internal")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v = error_body(resp).await;
    assert_eq!(
        v["Message"],
        "access denied due to function internet URL is disable"
    );
    let internal = s.internal.clone().expect("internal listener");
    let resp = c.get(format!("{internal}/internal")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_limits_answer_400_with_the_right_code() {
    let s = TestServer::start(CONFIG);
    let c = client_http1();

    let resp = c
        .get(s.url("/hello"))
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");

    let resp = c
        .get(s.url(&format!("/hello?{}", "q".repeat(600))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");

    let resp = c
        .post(s.url("/echo"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "EntityTooLarge");

    // At the limit is fine.
    let resp = c
        .post(s.url("/echo"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["body_len"], 1024);

    // A chunked body with no length is counted as it streams.
    let resp = c
        .post(s.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 512])),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "EntityTooLarge");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_fresh_instance() {
    let s = TestServer::start(CONFIG);
    let c = client();
    for _ in 0..10 {
        let body = c
            .get(s.url("/probe/counter"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "1");
    }
}

/// Isolation is not traded for speed: under concurrent load (more requests in flight than
/// the machine has cores, on keep-alive connections, within `max_in_flight`), every request still sees a fresh
/// instance whose counter starts at zero.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_fresh_instance_under_load() {
    let s = TestServer::start(CONFIG);
    let c = client();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (c, url) = (c.clone(), s.url("/probe/counter"));
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                for _ in 0..40 {
                    let resp = c.get(&url).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    bodies.push(resp.text().await.unwrap());
                }
                bodies
            })
        })
        .collect();
    let mut seen = 0;
    for w in workers {
        for body in w.await.unwrap() {
            assert_eq!(body, "1", "an instance served more than one request");
            seen += 1;
        }
    }
    assert_eq!(seen, 16 * 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_guest_times_out_while_others_are_served() {
    let s = TestServer::start(CONFIG);
    let c = client();
    // As many loops as this machine has cores (the runtime's worker threads), so a loop
    // that held its thread would stall everything else.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loops: Vec<_> = (0..cores)
        .map(|_| {
            let c = c.clone();
            let url = s.url("/probe/loop");
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        })
        .collect();
    for _ in 0..20 {
        let resp = c.get(s.url("/hello")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    for l in loops {
        let resp = l.await.unwrap();
        assert_eq!(resp.status(), 504);
        let v = error_body(resp).await;
        assert_eq!(v["Code"], "FunctionTimeout");
    }
    // A sleeping guest past its deadline is a 504 too.
    let resp = c.get(s.url("/probe/sleep?ms=5000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    // And permits came back: the node still serves.
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_bad_responses_and_memory_are_502() {
    let s = TestServer::start(CONFIG);
    let c = client();
    for (path, code, needle) in [
        ("/probe/trap", "FunctionError", "unreachable"),
        ("/probe/alloc", "FunctionError", "memory"),
        (
            "/probe/no-response",
            "BadResponse",
            "without setting a response",
        ),
        (
            "/probe/big-headers?n=9000",
            "BadResponse",
            "bytes of headers",
        ),
    ] {
        let resp = c.get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{path}");
        let v = error_body(resp).await;
        assert_eq!(v["Code"], code, "{path}");
        assert!(
            v["Message"].as_str().unwrap().contains(needle),
            "{path}: {v}"
        );
    }
    // Headers just under the limit pass.
    let resp = c
        .get(s.url("/probe/big-headers?n=7000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // After all that the node is healthy and instances are still fresh.
    let body = c
        .get(s.url("/probe/counter"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_is_logged_with_the_request_id() {
    let s = TestServer::start(CONFIG);
    let resp = client().get(s.url("/probe/log?n=3")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-fc-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(s.wait_for_log("probe stderr line 2"), "{}", s.stderr_text());
    let log = s.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("probe stdout line 1"))
        .expect("guest line");
    assert!(line.contains(&rid), "{line}");
}

/// A one-shot HTTP server on loopback answering 204 to anything.
fn tiny_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_denied_unless_the_host_is_listed() {
    let upstream = tiny_upstream();
    let s = TestServer::start(
        r#"
[server]
listen = "127.0.0.1:0"
[[function]]
name = "closed"
wasm = "{probe}"
[[function]]
name = "open"
wasm = "{probe}"
outbound_hosts = ["127.0.0.1"]
[[trigger]]
name = "closed"
function = "closed"
[[trigger]]
name = "open"
function = "open"
"#,
    );
    let resp = reqwest::get(s.url(&format!("/closed/fetch?url=http://{upstream}/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let resp = reqwest::get(s.url(&format!("/open/fetch?url=http://{upstream}/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "204");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off() {
    let s = TestServer::start(
        "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nheader_read_timeout_ms = 300\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n[[trigger]]\nname = \"hello\"\nfunction = \"hello\"\n",
    );
    let mut stream = TcpStream::connect(s.addr()).unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Never finish the headers. The server must close the connection after the configured
    // 300 ms: the bound of 5 s sits below the default (10 s), so a server that ignored the
    // key would fail here.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let r = stream.read_to_end(&mut buf);
    assert!(r.is_ok(), "server did not close the connection: {r:?}");
    // Other clients are unaffected.
    assert_eq!(reqwest::get(s.url("/hello")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400_and_the_server_lives() {
    let s = TestServer::start(HELLO_ONLY);
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(s.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(raw).unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "{raw:?}: {text}");
    }
    assert_eq!(reqwest::get(s.url("/hello")).await.unwrap().status(), 200);
}

/// The signal handlers are in place before the listeners are announced: a SIGTERM sent the
/// moment they are is a clean stop (exit 0), never the default action (killed by the signal).
#[test]
fn a_sigterm_right_after_the_listeners_are_announced_is_a_clean_stop() {
    for _ in 0..20 {
        let mut s = TestServer::start(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
        );
        // SAFETY: kill(2) with a pid this test owns.
        unsafe {
            libc::kill(s.pid() as i32, libc::SIGTERM);
        }
        assert_eq!(
            s.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            s.stderr_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut s = TestServer::start(CONFIG);
    let c = client();
    let url = s.url("/probe/sleep?ms=800");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    });
    // Wait (bounded) until the request is running inside the guest.
    assert!(s.wait_for_log("sleep start 800 ms"), "{}", s.stderr_text());
    s.signal("TERM");
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slept");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    // The listener is closed.
    assert!(TcpStream::connect(s.addr()).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn log_tail_returns_the_last_4k_of_guest_output() {
    use base64::Engine as _;
    let s = TestServer::start(CONFIG);
    let c = client();
    let resp = c
        .get(s.url("/probe/log?n=500"))
        .header("x-fc-log-type", "Tail")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tail = resp.headers()["x-fc-log-result"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.text().await.unwrap(), "logged");
    let tail = base64::engine::general_purpose::STANDARD
        .decode(tail)
        .unwrap();
    assert_eq!(tail.len(), 4096);
    let text = String::from_utf8(tail).unwrap();
    assert!(text.ends_with("probe stderr line 499\n"), "{text}");
    // Without the header there is no tail.
    let resp = c.get(s.url("/probe/log?n=1")).send().await.unwrap();
    assert!(!resp.headers().contains_key("x-fc-log-result"));
}
