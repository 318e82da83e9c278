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
    let metrics = client()
        .get(s.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
