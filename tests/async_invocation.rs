//! Async invocation end to end: a real SQLite file, a real callback receiver on loopback,
//! and crashes (kill -9) with restarts on the same data directory.

mod common;

use std::time::Duration;

use common::{Receiver, TestServer, error_body};

const ADMIN_TOKEN: &str = "admin-test-token";
const WAIT: Duration = Duration::from_secs(60);

fn config(ok: &Receiver, fail: &Receiver) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "echo"
function = "echo"
[trigger.async]
on_success = "{ok}"
on_failure = "{fail}"
callback_hosts = ["127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
async = {{ max_retries = 2, on_success = "{ok}", on_failure = "{fail}" }}

[[trigger]]
name = "sync-only"
function = "echo"
"#,
        ok = ok.url("/ok"),
        fail = fail.url("/fail"),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Submits a marker task on `path` (whose success callback goes to `receiver`) and asserts
/// that nothing reached `receiver` before the marker's callback: the negative check of a
/// test, ordered by an event that comes after it rather than by a guessed wait.
async fn nothing_before_marker(s: &TestServer, receiver: &Receiver, path: &str, marker: &str) {
    let resp = submit(s, path, &[("x-fc-async-task-id", marker)], "").await;
    assert_eq!(resp.status(), 202);
    let before = receiver.until(WAIT, |r| r.header("x-fc-async-task-id") == Some(marker));
    let ids: Vec<_> = before
        .iter()
        .map(|r| r.header("x-fc-async-task-id"))
        .collect();
    assert!(before.is_empty(), "called back before the marker: {ids:?}");
}

async fn submit(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut req = client()
        .post(s.url(path))
        .header("x-fc-invocation-type", "Async")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn task(s: &TestServer, id: &str) -> serde_json::Value {
    let resp = client()
        .get(s.admin_url(&format!("/-/tasks/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "task {id}");
    resp.json().await.unwrap()
}

/// Polls (bounded) until the task's state satisfies `done`.
async fn wait_task(
    s: &TestServer,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..600 {
        let t = task(s, id).await;
        if done(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "task {id} never reached the expected state: {}",
        task(s, id).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_then_called_back_with_the_right_headers() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&config(&ok, &fail));
    let resp = submit(&s, "/echo/a?x=1", &[("x-custom", "kept")], "hello async").await;
    assert_eq!(resp.status(), 202);
    let rid = resp.headers()["x-fc-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let id = resp.headers()["x-fc-async-task-id"]
        .to_str()
        .unwrap()
        .to_string();

    let cb = ok.next(WAIT).expect("callback");
    assert_eq!(cb.method, "POST");
    assert_eq!(cb.path, "/ok");
    assert_eq!(cb.header("x-function-status"), Some("200"));
    assert_eq!(cb.header("x-fc-request-id"), Some(rid.as_str()));
    assert_eq!(cb.header("x-fc-async-task-id"), Some(id.as_str()));
    assert_eq!(cb.header("x-function-name"), Some("echo"));
    assert!(
        cb.header("x-duration-seconds")
            .unwrap()
            .parse::<f64>()
            .is_ok()
    );
    assert_eq!(cb.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&cb.body).unwrap();
    assert_eq!(v["body"], "hello async");
    assert_eq!(v["path"], "/a?x=1");
    let headers = v["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h[0] == "x-custom" && h[1] == "kept"));

    let t = wait_task(&s, &id, |t| {
        t["callback_status"]
            .as_str()
            .is_some_and(|c| c.starts_with("Delivered"))
    })
    .await;
    assert_eq!(t["state"], "Succeeded");
    assert_eq!(t["attempts"], 1);
    assert_eq!(t["response_status"], 200);

    // The task API is on the admin listener only, behind the token.
    let resp = client()
        .get(s.admin_url(&format!("/-/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client()
        .get(s.url(&format!("/-/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .get(s.admin_url("/-/tasks?function=echo&state=Succeeded"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = resp.json().await.unwrap();
    assert!(
        list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str())
    );
    assert_eq!(
        client()
            .get(s.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(s.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn submissions_are_validated_before_anything_is_queued() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&config(&ok, &fail));

    let resp = submit(&s, "/echo", &[("x-fc-async-task-id", "job_1")], "").await;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-fc-async-task-id"], "job_1");
    let resp = submit(&s, "/echo", &[("x-fc-async-task-id", "job_1")], "").await;
    assert_eq!(resp.status(), 409);
    assert_eq!(error_body(resp).await["Code"], "TaskAlreadyExists");

    for bad in ["1job", "job.1", &"x".repeat(129)] {
        let resp = submit(&s, "/echo", &[("x-fc-async-task-id", bad)], "").await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(error_body(resp).await["Code"], "InvalidArgument");
    }
    for bad in ["-1", "3601", "soon"] {
        let resp = submit(&s, "/echo", &[("x-fc-async-delay", bad)], "").await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
    // An X-Callback-Url outside callback_hosts is refused and nothing is queued.
    let resp = submit(
        &s,
        "/echo",
        &[
            ("x-callback-url", "http://169.254.169.254/latest"),
            ("x-fc-async-task-id", "ssrf"),
        ],
        "",
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");
    let resp = client()
        .get(s.admin_url("/-/tasks/ssrf"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // No async table => 400; unknown route => 404, never 202.
    let resp = submit(&s, "/sync-only", &[], "").await;
    assert_eq!(resp.status(), 400);
    let resp = submit(&s, "/nowhere", &[], "").await;
    assert_eq!(resp.status(), 404);
    // The async body limit (128 KiB by default).
    let resp = submit(&s, "/echo", &[], &"x".repeat(200 * 1024)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "EntityTooLarge");

    // An allowed X-Callback-Url receives the callback instead of on_success.
    let other = Receiver::start(200);
    let url = other.url("/mine");
    let resp = submit(&s, "/echo", &[("x-callback-url", url.as_str())], "to mine").await;
    assert_eq!(resp.status(), 202);
    let cb = other.next(WAIT).expect("callback to X-Callback-Url");
    assert_eq!(cb.path, "/mine");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_then_reported_to_on_failure() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&config(&ok, &fail));
    let resp = submit(
        &s,
        "/probe/status/500",
        &[("x-fc-async-task-id", "doomed")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202);
    let cb = fail.next(WAIT).expect("on_failure callback");
    assert_eq!(cb.header("x-function-status"), Some("500"));
    assert_eq!(cb.header("x-fc-async-task-id"), Some("doomed"));
    let t = wait_task(&s, "doomed", |t| t["state"] == "Failed").await;
    // max_retries = 2: three attempts in all.
    assert_eq!(t["attempts"], 3);

    // A trap is a failed attempt too.
    let resp = submit(&s, "/probe/trap", &[("x-fc-async-task-id", "trapper")], "").await;
    assert_eq!(resp.status(), 202);
    let cb = fail.next(WAIT).expect("on_failure callback");
    assert_eq!(cb.header("x-function-status"), Some("502"));
    let t = wait_task(&s, "trapper", |t| t["state"] == "Failed").await;
    assert_eq!(t["attempts"], 3);
    // No attempt of either ever succeeded.
    nothing_before_marker(&s, &ok, "/probe", "marker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delays_are_honoured_and_stopped_tasks_never_run() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    // One worker, held at the gate by a first task: nothing else can start until the test
    // opens it, however slowly the stop below is sent.
    let s = TestServer::start(&format!("{}\n[queue]\nworkers = 1\n", config(&ok, &fail)));
    let gate = common::Gate::start();
    let path = format!("/probe/fetch?url={}", gate.url());
    let resp = submit(&s, &path, &[("x-fc-async-task-id", "holder")], "").await;
    assert_eq!(resp.status(), 202);
    gate.wait_arrivals(1);
    for id in ["stopme", "later"] {
        let resp = submit(
            &s,
            "/echo",
            &[("x-fc-async-task-id", id), ("x-fc-async-delay", "1")],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    let t = task(&s, "stopme").await;
    assert_eq!(t["state"], "Enqueued");
    let resp = client()
        .post(s.admin_url("/-/tasks/stopme/stop"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gate.open();
    // The holder, then the other task, due at the same time, run: so the stopped one would
    // have too.
    let cb = ok.next(WAIT).expect("callback of the holder");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("holder"));
    let cb = ok.next(WAIT).expect("callback of the delayed task");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("later"));
    let later = wait_task(&s, "later", |t| t["state"] == "Succeeded").await;
    let waited = later["started_ms"].as_i64().unwrap() - later["created_ms"].as_i64().unwrap();
    assert!(waited >= 1000, "ran {waited} ms after submission");
    let t = task(&s, "stopme").await;
    assert_eq!(t["state"], "Stopped");
    assert_eq!(t["attempts"], 0);
    // The stopped task never runs, now or later.
    nothing_before_marker(&s, &ok, "/echo", "marker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_task_survives_kill_9() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&ok, &fail);
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("durable_{i}");
        let resp = submit(
            &s,
            "/echo",
            &[("x-fc-async-task-id", &id), ("x-fc-async-delay", "1")],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
        ids.push(id);
    }
    s.kill9();
    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < ids.len() {
        let cb = ok
            .next(WAIT)
            .expect("every accepted task runs after the restart");
        seen.insert(cb.header("x-fc-async-task-id").unwrap().to_string());
    }
    for id in &ids {
        assert!(seen.contains(id), "{id}");
    }
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_running_during_a_crash_runs_again() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&ok, &fail);
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    let resp = submit(
        &s,
        "/probe/sleep?ms=3000",
        &[("x-fc-async-task-id", "inflight")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202);
    assert!(s.wait_for_log("sleep start 3000 ms"), "{}", s.stderr_text());
    s.kill9();
    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    // Nothing was called back for the killed attempt: the first callback is the rerun's.
    let cb = ok.next(WAIT).expect("the interrupted task runs again");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("inflight"));
    assert_eq!(cb.body, b"slept");
    let t = wait_task(&s, "inflight", |t| t["state"] == "Succeeded").await;
    // On JetStream the record knows the attempt was started on the node that died, and
    // counts it; the SQLite store cannot tell it from a task handed over but not started.
    let attempts = if common::cluster_backend() { 2 } else { 1 };
    assert_eq!(t["attempts"], attempts);
    // And only once.
    nothing_before_marker(&s, &ok, "/probe", "marker").await;
}

fn small_config(ok: &Receiver, fail: &Receiver) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[queue]
max_tasks = 3

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "short"
function = "echo"
async = {{ max_event_age_s = 1, on_success = "{ok}", on_failure = "{fail}" }}
"#,
        ok = ok.url("/ok"),
        fail = fail.url("/fail"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_past_their_age_expire_and_the_backlog_is_bounded() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&small_config(&ok, &fail));
    // Due two seconds after submission, but allowed to live one: it expires unrun.
    let resp = submit(
        &s,
        "/short",
        &[("x-fc-async-task-id", "old"), ("x-fc-async-delay", "2")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202);
    for id in ["b", "c"] {
        let resp = submit(
            &s,
            "/short",
            &[("x-fc-async-task-id", id), ("x-fc-async-delay", "3600")],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    // max_tasks = 3 unfinished tasks: the next submission is refused, not queued.
    let resp = submit(&s, "/short", &[("x-fc-async-task-id", "d")], "").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_body(resp).await["Code"], "ResourceThrottled");

    let cb = fail
        .next(WAIT)
        .expect("on_failure callback of the expired task");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("old"));
    assert_eq!(cb.header("x-fc-async-task-state"), Some("Expired"));
    let t = wait_task(&s, "old", |t| t["state"] == "Expired").await;
    assert_eq!(t["attempts"], 0);
    // With one task finished there is room again: on SQLite for one more task, and
    // stopping a queued task makes room too. (On JetStream a stopped task's message keeps
    // its room in the stream until it would have been due: docs/configuration.md.) The
    // marker takes the last room on either backend; the expired task never ran (no success
    // callback came before the marker's).
    if !common::cluster_backend() {
        let resp = submit(
            &s,
            "/short",
            &[("x-fc-async-task-id", "e"), ("x-fc-async-delay", "3600")],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
        let resp = client()
            .post(s.admin_url("/-/tasks/b/stop"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    nothing_before_marker(&s, &ok, "/short", "marker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_callback_is_retried_after_a_restart() {
    // The receiver holds the first delivery unanswered (the node is killed while it is in
    // flight), then refuses every callback, so delivery stays pending and is retried.
    let (ok, fail) = (Receiver::start_held(500), Receiver::start(500));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&ok, &fail);
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    let resp = submit(&s, "/echo", &[("x-fc-async-task-id", "cb")], "").await;
    assert_eq!(resp.status(), 202);
    let first = ok.next(WAIT).expect("first delivery attempt");
    assert_eq!(first.header("x-fc-async-task-id"), Some("cb"));
    // Crash with the delivery in flight, then restart.
    s.kill9();
    ok.open();
    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    let again = ok
        .next(WAIT)
        .expect("delivery is retried after the restart");
    assert_eq!(again.header("x-fc-async-task-id"), Some("cb"));
    assert_eq!(again.body, first.body);
    let t = wait_task(&s, "cb", |t| {
        t["callback_attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(t["state"], "Succeeded");
}

/// Outcomes are recorded without holding a worker for the commit; a clean stop still
/// commits every one of them, so after a restart nothing that finished runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_records_every_finished_task_so_none_runs_twice() {
    let hits = Receiver::start(200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "hits"
function = "probe"
async = {{ max_retries = 0 }}
"#
    );
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    const N: usize = 30;
    for i in 0..N {
        let path = format!("/hits/fetch?url={}", hits.url(&format!("/hit/{i}")));
        let id = format!("once_{i}");
        let resp = submit(&s, &path, &[("x-fc-async-task-id", &id)], "").await;
        assert_eq!(resp.status(), 202);
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let hit = hits.next(WAIT).expect("every task runs");
        assert!(seen.insert(hit.path.clone()), "ran twice: {}", hit.path);
    }
    s.signal("TERM");
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr_text());

    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    for i in 0..N {
        let t = wait_task(&s, &format!("once_{i}"), |t| t["state"] == "Succeeded").await;
        assert_eq!(t["attempts"], 1, "{t}");
    }
    let metrics = s.metrics(ADMIN_TOKEN).await;
    assert!(
        !metrics.contains("wasmgate_async_attempts_total{"),
        "a task ran again after the restart:\n{metrics}"
    );
    // A marker task fetched after the restart is the first hit: none of the 30 ran again.
    let marker = format!("/hits/fetch?url={}", hits.url("/hit/marker"));
    let resp = submit(&s, &marker, &[("x-fc-async-task-id", "marker")], "").await;
    assert_eq!(resp.status(), 202);
    let again = hits.until(WAIT, |r| r.path == "/hit/marker");
    let paths: Vec<_> = again.iter().map(|r| r.path.as_str()).collect();
    assert!(again.is_empty(), "ran again after the restart: {paths:?}");
}

/// A task's record as the admin API answers it: its status and body (404 once it is gone).
async fn task_status(s: &TestServer, id: &str) -> u16 {
    client()
        .get(s.admin_url(&format!("/-/tasks/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The `wasmgate_async_attempts_total` counter of `function` and `outcome` (0 while absent).
async fn attempts_metric(s: &TestServer, function: &str, outcome: &str) -> u64 {
    let text = s.metrics(ADMIN_TOKEN).await;
    let labels = [
        format!("function=\"{function}\""),
        format!("outcome=\"{outcome}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("wasmgate_async_attempts_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls (bounded) until the counter of `function` and `outcome` reaches `n`.
async fn wait_attempts_metric(s: &TestServer, function: &str, outcome: &str, n: u64) {
    for _ in 0..600 {
        if attempts_metric(s, function, outcome).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{function} never had {n} '{outcome}' attempts (has {})",
        attempts_metric(s, function, outcome).await
    );
}

/// Submits `body` on `path` as task `id` and returns the status of the answer (and, for a
/// refusal, checks the documented shape: `Retry-After` and Code `ResourceThrottled`).
async fn submit_sized(s: &TestServer, path: &str, id: &str, body: &str) -> u16 {
    let resp = submit(s, path, &[("x-fc-async-task-id", id)], body).await;
    let status = resp.status().as_u16();
    if status == 503 {
        assert!(resp.headers().contains_key("retry-after"), "{id}");
        assert_eq!(error_body(resp).await["Code"], "ResourceThrottled", "{id}");
    }
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_refusals_are_retried_without_counting_as_attempts() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
max_concurrency = 1
outbound_hosts = ["127.0.0.1"]

[[function]]
name = "refuser"
wasm = "{{probe}}"
memory_mb = 16

[[trigger]]
name = "held"
function = "probe"

[[trigger]]
name = "waits"
function = "probe"
async = {{ max_retries = 0, on_success = "{ok}", on_failure = "{fail}" }}

[[trigger]]
name = "refusing"
function = "refuser"
async = {{ max_retries = 0, max_event_age_s = 2, on_success = "{ok}", on_failure = "{fail}" }}
"#,
        ok = ok.url("/ok"),
        fail = fail.url("/fail"),
    ));

    // The function's only slot is held by a sync request waiting at the gate: every attempt
    // of the task below is refused by the gateway itself (429, the function is full).
    let gate = common::Gate::start();
    let held = tokio::spawn(
        client()
            .get(s.url(&format!("/held/fetch?url={}", gate.url())))
            .send(),
    );
    gate.wait_arrivals(1);
    let resp = submit(
        &s,
        "/waits/status/200",
        &[("x-fc-async-task-id", "patient")],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202);
    // With max_retries = 0 a counted attempt would end the task at the first refusal; three
    // refusals later it is still waiting, with no attempt counted.
    wait_attempts_metric(&s, "probe", "capacity", 3).await;
    let t = task(&s, "patient").await;
    assert_eq!(t["attempts"], 0, "{t}");
    assert!(
        ["Enqueued", "Retrying", "Running"].contains(&t["state"].as_str().unwrap()),
        "{t}"
    );
    assert_eq!(attempts_metric(&s, "probe", "failed").await, 0);
    // Room again: the task runs and succeeds on its first counted attempt.
    gate.open();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let cb = ok.next(WAIT).expect("success callback of the waiting task");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("patient"));
    assert_eq!(cb.header("x-function-status"), Some("200"));
    let t = wait_task(&s, "patient", |t| t["state"] == "Succeeded").await;
    assert_eq!(t["attempts"], 1, "{t}");

    // A function answering 503 or 429 is a capacity refusal too: retried (more often than
    // max_retries allows attempts) until max_event_age_s, never Failed, and then Expired
    // with no attempt counted.
    for (id, path) in [
        ("answers_503", "/refusing/status/503"),
        ("answers_429", "/refusing/status/429"),
    ] {
        let resp = submit(&s, path, &[("x-fc-async-task-id", id)], "").await;
        assert_eq!(resp.status(), 202);
    }
    let mut expired = Vec::new();
    for _ in 0..2 {
        let cb = fail
            .next(WAIT)
            .expect("failure callback of an expired task");
        assert_eq!(cb.header("x-fc-async-task-state"), Some("Expired"));
        expired.push(cb.header("x-fc-async-task-id").unwrap().to_string());
    }
    expired.sort();
    assert_eq!(expired, ["answers_429", "answers_503"]);
    for id in ["answers_503", "answers_429"] {
        let t = wait_task(&s, id, |t| t["state"] == "Expired").await;
        assert_eq!(t["attempts"], 0, "{t}");
    }
    assert!(attempts_metric(&s, "refuser", "capacity").await >= 4);
    assert_eq!(attempts_metric(&s, "refuser", "failed").await, 0);
    // Neither refused task was ever reported a success.
    nothing_before_marker(&s, &ok, "/waits/status/200", "marker").await;
}

/// Waits (bounded by `limit`) until the server's log contains `needle`.
fn wait_for_log_within(s: &TestServer, needle: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if s.stderr_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_tasks_are_pruned_after_retention_s() {
    // On JetStream `retention_s` is the age of every task record in the bucket
    // (docs/configuration.md), so it must outlast the task's wait and run there with room to
    // spare; SQLite prunes finished tasks only.
    let retention_s = if common::cluster_backend() { 10 } else { 1 };
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[queue]
retention_s = {retention_s}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "kept"
function = "echo"
async = {{}}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    if !common::cluster_backend() {
        // Unfinished, and older than retention_s by the time the finished one is pruned.
        let resp = submit(
            &s,
            "/kept",
            &[
                ("x-fc-async-task-id", "waiting"),
                ("x-fc-async-delay", "3600"),
            ],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    let resp = submit(&s, "/kept", &[("x-fc-async-task-id", "done")], "").await;
    assert_eq!(resp.status(), 202);
    let t = wait_task(&s, "done", |t| t["state"] == "Succeeded").await;
    assert!(t["finished_ms"].is_i64(), "{t}");

    if common::cluster_backend() {
        // The bucket drops the record by itself once it is retention_s old.
        for _ in 0..1200 {
            if task_status(&s, "done").await == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the finished task was never pruned: {}",
            task(&s, "done").await
        );
    }
    // SQLite prunes at start and then periodically: once the record is older than
    // retention_s, a restart prunes it.
    let due_ms = t["finished_ms"].as_i64().unwrap() + retention_s * 1000;
    for _ in 0..400 {
        if chrono::Utc::now().timestamp_millis() > due_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    s.signal("TERM");
    assert_eq!(s.wait_exit(WAIT), Some(0), "{}", s.stderr_text());
    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    assert!(
        wait_for_log_within(&s, "pruned 1 finished tasks", WAIT),
        "{}",
        s.stderr_text()
    );
    assert_eq!(task_status(&s, "done").await, 404);
    // The unfinished task is kept, however old.
    assert_eq!(task(&s, "waiting").await["state"], "Enqueued");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_quotas_refuse_past_their_bound_until_tasks_finish() {
    // A trigger's async.max_tasks and async.max_queue_bytes are not enforced on the cluster
    // backend: JetStream has no per-trigger count to check at the moment of a publish
    // (docs/configuration.md).
    if common::cluster_backend() {
        return;
    }
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
outbound_hosts = ["127.0.0.1"]

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "capped"
function = "probe"
async = {{ max_tasks = 2, max_retries = 0 }}

[[trigger]]
name = "sized"
function = "probe"
async = {{ max_queue_bytes = 10000, max_retries = 0 }}

[[trigger]]
name = "free"
function = "echo"
async = {{}}
"#
    ));

    // max_tasks = 2: two tasks held running at the gate are open, so a third is refused
    // while another trigger's submissions are still taken.
    let gate = common::Gate::start();
    let held = format!("/capped/fetch?url={}", gate.url());
    for id in ["c1", "c2"] {
        assert_eq!(submit_sized(&s, &held, id, "").await, 202, "{id}");
    }
    gate.wait_arrivals(2);
    assert_eq!(submit_sized(&s, "/capped/status/200", "c3", "").await, 503);
    assert_eq!(submit_sized(&s, "/free", "f1", "").await, 202);
    assert_eq!(
        task_status(&s, "c3").await,
        404,
        "a refused task is not queued"
    );
    // Once they finish there is room again.
    gate.open();
    for id in ["c1", "c2"] {
        wait_task(&s, id, |t| t["state"] == "Succeeded").await;
    }
    assert_eq!(submit_sized(&s, "/capped/status/200", "c3", "").await, 202);
    wait_task(&s, "c3", |t| t["state"] == "Succeeded").await;

    // max_queue_bytes = 10000: a running task of 6000 bytes leaves no room for another of
    // that size, but does for a small one (the bound is on bytes, not on a count).
    let big = "b".repeat(6000);
    let gate = common::Gate::start();
    let held = format!("/sized/fetch?url={}", gate.url());
    assert_eq!(submit_sized(&s, &held, "s1", &big).await, 202);
    gate.wait_arrivals(1);
    assert_eq!(submit_sized(&s, "/sized/status/200", "s2", &big).await, 503);
    assert_eq!(
        task_status(&s, "s2").await,
        404,
        "a refused task is not queued"
    );
    assert_eq!(
        submit_sized(&s, "/sized/status/200", "s3", "small").await,
        202
    );
    wait_task(&s, "s3", |t| t["state"] == "Succeeded").await;
    assert_eq!(submit_sized(&s, "/free", "f2", &big).await, 202);
    gate.open();
    wait_task(&s, "s1", |t| t["state"] == "Succeeded").await;
    assert_eq!(submit_sized(&s, "/sized/status/200", "s2", &big).await, 202);
    wait_task(&s, "s2", |t| t["state"] == "Succeeded").await;
}

/// A loopback server whose requests wait until [`Dropper::release`], then have their
/// connection closed unanswered: a guest fetching it (the probe's `/fetch?url=`) is held
/// running exactly as long as the test needs, and its attempt then fails (502).
struct Dropper {
    addr: String,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    arrivals: std::sync::mpsc::Receiver<()>,
    release: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Dropper {
    fn start() -> Dropper {
        use std::io::Read;
        use std::sync::{Arc, Condvar, Mutex, atomic::AtomicUsize, atomic::Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let arrived = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, arrivals) = std::sync::mpsc::channel();
        let (count, open) = (arrived.clone(), release.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let (count, open, tx) = (count.clone(), open.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(());
                    let (lock, changed) = &*open;
                    let mut released = lock.lock().unwrap();
                    while !*released {
                        released = changed.wait(released).unwrap();
                    }
                    drop(released);
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Dropper {
            addr,
            arrived,
            arrivals,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Waits (bounded) for the next request to arrive.
    fn wait_arrival(&self) {
        self.arrivals
            .recv_timeout(WAIT)
            .expect("a request reached the server");
    }

    fn arrivals(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every waiting connection, and every later one at once.
    fn release(&self) {
        *self.release.0.lock().unwrap() = true;
        self.release.1.notify_all();
    }
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.release();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_that_is_stopped_is_not_retried() {
    let (ok, fail) = (Receiver::start(200), Receiver::start(200));
    let s = TestServer::start(&config(&ok, &fail));
    let dropper = Dropper::start();
    // probe: max_retries = 2, so without the stop this failing attempt would run twice more.
    let path = format!("/probe/fetch?url={}", dropper.url());
    let resp = submit(&s, &path, &[("x-fc-async-task-id", "running")], "").await;
    assert_eq!(resp.status(), 202);
    dropper.wait_arrival();
    assert_eq!(task(&s, "running").await["state"], "Running");
    let resp = client()
        .post(s.admin_url("/-/tasks/running/stop"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The attempt in progress finishes (it fails), and nothing more is tried.
    dropper.release();
    let t = wait_task(&s, "running", |t| {
        t["state"] != "Running" && t["state"] != "Enqueued"
    })
    .await;
    assert_eq!(t["state"], "Stopped", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    assert!(t["finished_ms"].is_i64(), "{t}");
    // No success was reported, and the attempt did not run again.
    nothing_before_marker(&s, &ok, "/probe/status/200", "marker").await;
    assert_eq!(dropper.arrivals(), 1);
}

/// What [`TlsReceiver`] saw on one connection.
#[derive(Debug)]
enum TlsSeen {
    /// The handshake did not complete (why, as the receiver's TLS stack says).
    Refused(String),
    /// A request came through: its path.
    Request(String),
}

/// An HTTPS callback receiver on loopback with the development certificate (`localhost`,
/// signed by the dev CA in `certs/`), answering 200 to every request it gets.
struct TlsReceiver {
    port: u16,
    rx: std::sync::mpsc::Receiver<TlsSeen>,
}

impl TlsReceiver {
    fn start() -> TlsReceiver {
        use std::io::{Read, Write};
        let cert_pem = std::fs::read(common::certs().join("localhost.pem")).unwrap();
        let key_pem = std::fs::read(common::certs().join("localhost-key.pem")).unwrap();
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .unwrap()
            .expect("a private key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = std::sync::Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut sock in listener.incoming().flatten() {
                let (config, tx) = (config.clone(), tx.clone());
                std::thread::spawn(move || {
                    let mut conn = rustls::ServerConnection::new(config).unwrap();
                    while conn.is_handshaking() {
                        if let Err(e) = conn.complete_io(&mut sock) {
                            let _ = tx.send(TlsSeen::Refused(e.to_string()));
                            return;
                        }
                    }
                    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let len: usize = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = buf.len() - head_end - 4;
                    while body < len {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body += n,
                        }
                    }
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    let _ = tls.flush();
                    let _ = tx.send(TlsSeen::Request(path));
                });
            }
        });
        TlsReceiver { port, rx }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// What the next connection came to, waiting at most [`WAIT`] (a bound, not a timing).
    fn next(&self) -> TlsSeen {
        self.rx
            .recv_timeout(WAIT)
            .expect("a connection reached the TLS receiver")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_callbacks_are_verified_against_the_web_pki_roots() {
    let receiver = TlsReceiver::start();
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "secure"
function = "echo"
async = {{ max_retries = 1, on_success = "{url}" }}
"#,
        url = receiver.url("/ok"),
    ));
    let resp = submit(&s, "/secure", &[("x-fc-async-task-id", "tls")], "").await;
    assert_eq!(resp.status(), 202);
    // The receiver's certificate is signed by the dev CA, which is not among the Web PKI
    // roots: each delivery attempt (max_retries + 1 = 2) is a TLS handshake the gateway
    // refuses, and no request is ever sent over it.
    for _ in 0..2 {
        match receiver.next() {
            TlsSeen::Refused(why) => assert!(why.contains("UnknownCA"), "{why}"),
            TlsSeen::Request(path) => panic!("delivered to {path} past an untrusted certificate"),
        }
    }
    let t = wait_task(&s, "tls", |t| {
        t["callback_status"]
            .as_str()
            .is_some_and(|c| c.starts_with("Failed"))
    })
    .await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    assert_eq!(t["callback_attempts"], 2, "{t}");
    // The receiver itself serves a client that trusts the dev CA: what failed was the
    // gateway's verification, not the receiver.
    let resp = common::client()
        .post(receiver.url("/trusted"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    match receiver.next() {
        TlsSeen::Request(path) => assert_eq!(path, "/trusted"),
        other => panic!("the trusted client was refused: {other:?}"),
    }
}

/// A plain HTTP callback receiver that answers every request with the redirect status its
/// path starts with (`/307/...`) and `Location: <to>`; records what it got.
struct Redirector {
    addr: String,
    rx: std::sync::mpsc::Receiver<common::Received>,
}

impl Redirector {
    fn start(to: &str) -> Redirector {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let to = to.to_string();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let (tx, to) = (tx.clone(), to.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let start: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end + 4..].to_vec();
                    while body.len() < len {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = start.get(1).unwrap_or(&"").to_string();
                    let code = path.split('/').nth(1).unwrap_or("302").to_string();
                    let answer = format!(
                        "HTTP/1.1 {code} Moved\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes());
                    let _ = tx.send(common::Received {
                        method: start.first().unwrap_or(&"").to_string(),
                        path,
                        headers,
                        body,
                    });
                });
            }
        });
        Redirector { addr, rx }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn next(&self) -> common::Received {
        self.rx
            .recv_timeout(WAIT)
            .expect("a delivery reached the redirecting receiver")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_redirects_are_not_followed() {
    let target = Receiver::start(200);
    let redirector = Redirector::start(&target.url("/followed"));
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "hooked"
function = "echo"
async = {{ max_retries = 1, callback_hosts = ["127.0.0.1"] }}
"#
    ));
    const CODES: [u16; 5] = [301, 302, 303, 307, 308];
    for code in CODES {
        let id = format!("moved_{code}");
        let url = redirector.url(&format!("/{code}/cb"));
        let resp = submit(
            &s,
            "/hooked",
            &[("x-fc-async-task-id", &id), ("x-callback-url", &url)],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
    }
    // A redirect is an undelivered callback: each is tried max_retries + 1 = 2 times, at
    // the URL given, and recorded as failed with the status the receiver answered.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..2 * CODES.len() {
        let got = redirector.next();
        assert_eq!(got.method, "POST");
        let id = got.header("x-fc-async-task-id").unwrap().to_string();
        assert_eq!(got.path, format!("/{}/cb", &id["moved_".len()..]));
        *seen.entry(id).or_default() += 1;
    }
    for code in CODES {
        let id = format!("moved_{code}");
        assert_eq!(seen.get(&id), Some(&2), "{seen:?}");
        let t = wait_task(&s, &id, |t| {
            t["callback_status"]
                .as_str()
                .is_some_and(|c| c.starts_with("Failed"))
        })
        .await;
        assert_eq!(
            t["callback_status"],
            format!("Failed: the callback answered {code}"),
            "{t}"
        );
        assert_eq!(t["callback_attempts"], 2, "{t}");
        assert_eq!(t["state"], "Succeeded", "{t}");
    }
    // Every delivery is over; the redirect target received none of them before a marker's
    // callback sent to it directly.
    let marker = target.url("/marker");
    let resp = submit(
        &s,
        "/hooked",
        &[
            ("x-fc-async-task-id", "marker"),
            ("x-callback-url", &marker),
        ],
        "",
    )
    .await;
    assert_eq!(resp.status(), 202);
    let before = target.until(WAIT, |r| r.header("x-fc-async-task-id") == Some("marker"));
    let paths: Vec<_> = before.iter().map(|r| r.path.as_str()).collect();
    assert!(before.is_empty(), "a redirect was followed: {paths:?}");
}

/// Callbacks never go through a proxy named by the environment (a proxy resolves names
/// itself, past the callback address rules): with `HTTP_PROXY` and `http_proxy` pointing at
/// a receiver of their own, the callback still reaches its URL directly.
#[tokio::test(flavor = "multi_thread")]
async fn callbacks_ignore_proxies_from_the_environment() {
    let (ok, fail, proxy) = (
        Receiver::start(200),
        Receiver::start(200),
        Receiver::start(200),
    );
    let proxy_url = proxy.url("");
    let s = TestServer::start_with_env(
        &config(&ok, &fail),
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("ALL_PROXY", &proxy_url),
            ("NO_PROXY", ""),
        ],
    );
    let resp = submit(&s, "/echo", &[("x-fc-async-task-id", "direct")], "x").await;
    assert_eq!(resp.status(), 202);
    let cb = ok.next(WAIT).expect("the callback reaches its URL");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("direct"));
    // Delivered directly: the proxy saw nothing of it.
    assert!(
        proxy.next(Duration::ZERO).is_none(),
        "a callback went through the proxy"
    );
}

/// A task submitted while every worker is busy waits as Enqueued: it is not handed to a
/// worker (and recorded Running, its start time set) before one is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_waits_enqueued_while_every_worker_is_busy() {
    // SQLite's hand-over only: on JetStream a node pulls what its free workers can take, and
    // a record's state there is the message's (not yet covered: see the issue's note).
    if common::cluster_backend() {
        return;
    }
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[queue]
workers = 1

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
async = {{ max_retries = 0 }}
"#
    ));
    for round in 0..3 {
        let gate = common::Gate::start();
        let held = format!("held-{round}");
        let path = format!("/probe/fetch?url={}", gate.url());
        let resp = submit(&s, &path, &[("x-fc-async-task-id", &held)], "").await;
        assert_eq!(resp.status(), 202);
        gate.wait_arrivals(1);
        let waiting = format!("waiting-{round}");
        let resp = submit(
            &s,
            "/probe/status/200",
            &[("x-fc-async-task-id", &waiting)],
            "",
        )
        .await;
        assert_eq!(resp.status(), 202);
        let t = task(&s, &waiting).await;
        assert_eq!(t["state"], "Enqueued", "the only worker is busy: {t}");
        assert!(t["started_ms"].is_null(), "{t}");
        gate.open();
        wait_task(&s, &held, |t| t["state"] == "Succeeded").await;
        wait_task(&s, &waiting, |t| t["state"] == "Succeeded").await;
    }
}
