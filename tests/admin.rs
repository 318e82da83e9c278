//! The admin listener: token guard, probes, metrics.

mod common;

use common::TestServer;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "admin-secret-token"

[limits]
max_in_flight = 8

[[function]]
name = "hello"
wasm = "{hello}"
memory_mb = 16

[[trigger]]
name = "hello"
function = "hello"
methods = ["GET"]
"#;

/// The value of one sample line `name{labels} value` in Prometheus text.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_traffic_and_the_token_is_required() {
    let s = TestServer::start(CONFIG);
    let c = reqwest::Client::new();
    for _ in 0..5 {
        assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(c.post(s.url("/hello")).send().await.unwrap().status(), 403);
    }
    assert_eq!(c.get(s.url("/nowhere")).send().await.unwrap().status(), 404);

    let resp = c.get(s.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(s.admin_url("/metrics"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let text = s.metrics("admin-secret-token").await;
    let ok = sample(
        &text,
        "wasmgate_requests_total",
        &["trigger=\"hello\"", "status=\"200\"", "auth=\"anonymous\""],
    );
    assert_eq!(ok, Some(5.0), "{text}");
    let denied = sample(
        &text,
        "wasmgate_requests_total",
        &["trigger=\"hello\"", "status=\"403\""],
    );
    assert_eq!(denied, Some(2.0), "{text}");
    let unrouted = sample(
        &text,
        "wasmgate_requests_total",
        &["status=\"404\"", "auth=\"none\""],
    );
    assert_eq!(unrouted, Some(1.0), "{text}");
    let inst = sample(&text, "wasmgate_instantiation_seconds_count", &[]);
    assert_eq!(inst, Some(5.0), "{text}");
    assert!(
        text.contains("wasmgate_request_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wasmgate_in_flight", &[]),
        Some(0.0),
        "{text}"
    );

    // Probes need no token; nothing admin exists on the public listener.
    assert_eq!(
        c.get(s.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(s.admin_url("/readyz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(c.get(s.url("/metrics")).send().await.unwrap().status(), 404);
}

#[test]
fn a_public_admin_address_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:9090\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_token_env"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_a_good_config_and_keeps_serving_on_a_bad_one() {
    let s = TestServer::start(CONFIG);
    let c = reqwest::Client::new();
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 404);
    let path = s.dir.join("wasmgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();

    // A broken config (SIGHUP): reported, and the running one stays.
    std::fs::write(&path, format!("{original}\nbogus_key = 1\n")).unwrap();
    s.signal("HUP");
    assert!(s.wait_for_log("reload failed"), "{}", s.stderr_text());
    assert!(s.wait_for_log("bogus_key"));
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);
    // The same through the admin API: 400 with the reason.
    let resp = c
        .post(s.admin_url("/-/reload"))
        .bearer_auth("admin-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["Message"].as_str().unwrap().contains("bogus_key"), "{v}");

    // A good config with a new trigger takes effect.
    std::fs::write(
        &path,
        format!("{original}\n[[trigger]]\nname = \"greet\"\nfunction = \"hello\"\n"),
    )
    .unwrap();
    let resp = c
        .post(s.admin_url("/-/reload"))
        .bearer_auth("admin-secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/hello")).send().await.unwrap().status(), 200);

    // And by SIGHUP: the trigger goes away again.
    std::fs::write(&path, &original).unwrap();
    s.signal("HUP");
    assert!(
        s.wait_for_count("configuration reloaded", 2),
        "{}",
        s.stderr_text()
    );
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 404);
}
