//! Throttling end to end: rate limits, function concurrency and node in-flight limits refuse
//! fast with the right code and `Retry-After`, admitted requests complete, and permits come
//! back on every path.

mod common;

use std::time::Duration;

use common::{TestServer, client, error_body};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
tls = { cert = "{certs}/localhost.pem", key = "{certs}/localhost-key.pem" }

[limits]
max_in_flight = 4

[[function]]
name = "hello"
wasm = "{hello}"
memory_mb = 16

[[function]]
name = "narrow"
wasm = "{probe}"
memory_mb = 16
max_concurrency = 2
timeout_ms = 60000
outbound_hosts = ["127.0.0.1"]

[[function]]
name = "wide"
wasm = "{probe}"
memory_mb = 16
max_concurrency = 10
timeout_ms = 60000
outbound_hosts = ["127.0.0.1"]

[[function]]
name = "failing"
wasm = "{probe}"
memory_mb = 16
max_concurrency = 2
timeout_ms = 300

[[trigger]]
name = "hello"
function = "hello"

[[trigger]]
name = "limited"
function = "hello"
rate_limit = { per_second = 1, burst = 3, key = "ip" }

[[trigger]]
name = "narrow"
function = "narrow"

[[trigger]]
name = "wide"
function = "wide"

[[trigger]]
name = "failing"
function = "failing"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_admits_the_burst_then_429_with_retry_after() {
    let s = TestServer::start(CONFIG);
    let c = client();
    for i in 0..3 {
        let resp = c.get(s.url("/limited")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    let resp = c.get(s.url("/limited")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(error_body(resp).await["Code"], "ResourceExhausted");
    // Other triggers are not affected.
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn function_and_node_limits_refuse_fast_while_admitted_requests_complete() {
    let s = TestServer::start(CONFIG);
    let c = client();
    // Every held request fetches the gate, which answers only once the checks are done.
    let gate = common::Gate::start();
    let hold = |function: &str| {
        let c = c.clone();
        let url = s.url(&format!("/{function}/fetch?url={}", gate.url()));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    // Fill `narrow` to its max_concurrency of 2.
    let a = hold("narrow");
    let b = hold("narrow");
    gate.wait_arrivals(2);
    let resp = c.get(s.url("/narrow/counter")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_body(resp).await["Code"], "ResourceExhausted");
    // The node (4 in flight) still has room for other functions.
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);

    // Fill the node: two more held requests on another function.
    let d = hold("wide");
    let e = hold("wide");
    gate.wait_arrivals(4);
    let resp = c.get(s.url("/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_body(resp).await["Code"], "ResourceThrottled");
    assert_eq!(gate.arrivals(), 4, "a refused request reached a function");

    // Every admitted request completes normally once the gate opens.
    gate.open();
    for h in [a, b, d, e] {
        let resp = h.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "200");
    }
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn permits_come_back_after_traps_timeouts_and_disconnects() {
    let s = TestServer::start(CONFIG);
    let c = client();
    // Failing requests, two at a time (the function's max_concurrency).
    // Each failure has its one documented answer (docs/http-api.md): a trap and running out
    // of the memory cap are the guest failing, 502; a loop and a sleep past timeout_ms, 504.
    for (path, status, code) in [
        ("/failing/trap", 502, "FunctionError"),
        ("/failing/loop", 504, "FunctionTimeout"),
        ("/failing/alloc", 502, "FunctionError"),
        ("/failing/sleep?ms=5000", 504, "FunctionTimeout"),
    ] {
        for _ in 0..3 {
            let (x, y) = tokio::join!(c.get(s.url(path)).send(), c.get(s.url(path)).send());
            for r in [x.unwrap(), y.unwrap()] {
                assert_eq!(r.status(), status, "{path}");
                assert_eq!(error_body(r).await["Code"], code, "{path}");
            }
        }
    }
    // Then as many good ones, two at a time: every one must be admitted.
    for _ in 0..12 {
        let (x, y) = tokio::join!(
            c.get(s.url("/failing/counter")).send(),
            c.get(s.url("/failing/counter")).send()
        );
        assert_eq!(x.unwrap().status(), 200);
        assert_eq!(y.unwrap().status(), 200);
    }

    // Clients that give up: the guests are stopped and their permits returned, long before
    // the guests' own deadline of 60 s.
    let impatient = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(common::certs().join("ca.pem")).unwrap())
                .unwrap(),
        )
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (x, y) = tokio::join!(
        impatient.get(s.url("/narrow/sleep?ms=50000")).send(),
        impatient.get(s.url("/narrow/sleep?ms=50000")).send()
    );
    assert!(x.is_err() && y.is_err());
    let mut admitted = false;
    for _ in 0..100 {
        if c.get(s.url("/narrow/counter"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admitted,
        "permits were not returned after client disconnects"
    );
}
