//! The dispatcher and the queue's workers in-process, on a fake clock: a stored target is
//! what runs, and delays, backoff and expiry move only when the clock does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmgate::config::Config;
use wasmgate::dispatch::EnqueueOptions;
use wasmgate::invocation::{Invocation, Source, Target};
use wasmgate::queue::{Clock, FakeClock, TaskView};
use wasmgate::{App, Gateway};

const START_MS: i64 = 1_700_000_000_000;

async fn gateway(dir: &std::path::Path, clock: Arc<FakeClock>) -> Arc<Gateway> {
    let text = common::render(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{}"

[[function]]
name = "hello"
wasm = "{{hello}}"
memory_mb = 16

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16

[[trigger]]
name = "jobs"
function = "probe"
async = {{ max_retries = 2, max_event_age_s = 60 }}
"#,
        dir.join("data").display()
    )) + &common::backend_section(dir);
    let config = Config::parse(&text, &dir.join("wasmgate.toml"), &|_| None).unwrap();
    let app = App::build_with_clock(config, clock as Arc<dyn Clock>).unwrap();
    let gateway = Gateway::new(app);
    gateway.supervise();
    if let Some(q) = gateway.app().dispatcher.queue() {
        assert!(
            q.wait_ready(Duration::from_secs(60)).await,
            "the queue never came up"
        );
    }
    gateway
}

fn invocation(function: &str, path: &str, id: &str) -> Invocation<Bytes> {
    Invocation {
        target: Target {
            function: function.into(),
            qualifier: "LATEST".into(),
        },
        trigger: "jobs".into(),
        source: Source::Http {
            peer: "127.0.0.1:9".parse().unwrap(),
            https: false,
        },
        request_id: format!("req-{id}").into(),
        request: http::Request::post(format!("http://localhost{path}"))
            .body(Bytes::new())
            .unwrap(),
        trace: None,
        prebuilt: Default::default(),
    }
}

async fn enqueue(g: &Gateway, function: &str, path: &str, id: &str, delay_ms: i64) {
    let app = g.app();
    let task = app
        .dispatcher
        .enqueue(
            invocation(function, path, id),
            EnqueueOptions {
                task_id: Some(id.into()),
                delay_ms,
                callback_url: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(task, id);
}

async fn view(g: &Gateway, id: &str) -> TaskView {
    g.app()
        .dispatcher
        .queue()
        .unwrap()
        .find(id, None)
        .await
        .unwrap()
}

/// Polls (bounded) until the task satisfies `done`.
async fn wait(g: &Gateway, id: &str, done: impl Fn(&TaskView) -> bool) -> TaskView {
    for _ in 0..1000 {
        let v = view(g, id).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {id} never got there: {:?}", view(g, id).await);
}

/// Proves the workers have looked at the queue since now: a task due now runs to the end.
async fn barrier(g: &Gateway, id: &str) {
    enqueue(g, "probe", "/", id, 0).await;
    wait(g, id, |v| v.state.as_str() == "Succeeded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_the_function_its_stored_target_names() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START_MS);
    let g = gateway(dir.path(), clock.clone()).await;
    // The trigger's own function is probe; this task targets hello.
    enqueue(&g, "hello", "/", "fan_out", 0).await;
    let v = wait(&g, "fan_out", |v| v.state.as_str() == "Succeeded").await;
    assert_eq!(v.function, "hello");
    assert_eq!(v.trigger, "jobs");
    assert_eq!(v.response_preview.as_deref(), Some("hello from wasmgate\n"));
    // A target that names nothing fails with FunctionNotFound, after its retries.
    enqueue(&g, "nope", "/", "missing", 0).await;
    let v = wait(&g, "missing", |v| v.state.as_str() == "Retrying").await;
    assert_eq!(v.response_status, Some(404));
    // ... and ends Failed once they are spent (max_retries = 2), still FunctionNotFound.
    for attempt in 1..=2u32 {
        let v = wait(&g, "missing", |v| {
            v.attempts == attempt && v.state.as_str() == "Retrying"
        })
        .await;
        clock.advance(v.due_ms - clock.now_ms());
        g.app().dispatcher.queue().unwrap().wake();
    }
    let v = wait(&g, "missing", |v| v.state.as_str() == "Failed").await;
    assert_eq!(v.attempts, 3);
    assert_eq!(v.response_status, Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_task_waits_for_the_clock() {
    if common::cluster_backend() {
        // JetStream schedules a delayed task's redelivery on the server's own clock, which a
        // fake clock cannot move; tests/async_invocation.rs covers delays on that backend.
        eprintln!("SQLite only: a fake clock cannot move JetStream's redelivery timer");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START_MS);
    let g = gateway(dir.path(), clock.clone()).await;
    enqueue(&g, "probe", "/counter", "later", 30_000).await;
    barrier(&g, "b1").await;
    let v = view(&g, "later").await;
    assert_eq!(v.state.as_str(), "Enqueued");
    assert_eq!(v.due_ms, START_MS + 30_000);

    clock.advance(29_999);
    g.app().dispatcher.queue().unwrap().wake();
    barrier(&g, "b2").await;
    assert_eq!(view(&g, "later").await.state.as_str(), "Enqueued");

    clock.advance(1);
    g.app().dispatcher.queue().unwrap().wake();
    let v = wait(&g, "later", |v| v.state.as_str() == "Succeeded").await;
    assert_eq!(v.attempts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_back_off_exponentially_on_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START_MS);
    let g = gateway(dir.path(), clock.clone()).await;
    enqueue(&g, "probe", "/status/500", "flaky", 0).await;
    // Attempt n is followed by a wait of 0.5 s * 2^(n-1), +-20%.
    for (attempt, nominal_ms) in [(1u32, 500i64), (2, 1000)] {
        let v = wait(&g, "flaky", |v| {
            v.attempts == attempt && v.state.as_str() == "Retrying"
        })
        .await;
        let wait_ms = v.due_ms - clock.now_ms();
        assert!(
            (nominal_ms * 8 / 10..=nominal_ms * 12 / 10).contains(&wait_ms),
            "attempt {attempt}: next in {wait_ms} ms"
        );
        assert_eq!(v.response_status, Some(500));
        // Nothing runs before the clock gets there.
        barrier(&g, &format!("b{attempt}")).await;
        assert_eq!(view(&g, "flaky").await.attempts, attempt);
        clock.advance(wait_ms);
        g.app().dispatcher.queue().unwrap().wake();
    }
    // max_retries = 2: the third attempt is the last.
    let v = wait(&g, "flaky", |v| v.state.as_str() == "Failed").await;
    assert_eq!(v.attempts, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_older_than_max_event_age_expires() {
    if common::cluster_backend() {
        // The task is delayed past its age on the fake clock; if JetStream delivers it before
        // the clock moves, the worker puts it back for 90 s of the server's own clock, which
        // the fake one cannot shorten. tests/async_invocation.rs expires tasks on this backend
        // with the real clock.
        eprintln!("SQLite only: a fake clock cannot move JetStream's redelivery timer");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START_MS);
    let g = gateway(dir.path(), clock.clone()).await;
    enqueue(&g, "probe", "/counter", "stale", 90_000).await;
    clock.advance(90_000);
    g.app().dispatcher.queue().unwrap().wake();
    let v = wait(&g, "stale", |v| v.state.is_final()).await;
    assert_eq!(v.state.as_str(), "Expired");
    assert_eq!(v.attempts, 0);
    let preview: serde_json::Value =
        serde_json::from_str(v.response_preview.as_deref().unwrap()).unwrap();
    assert_eq!(preview["Code"], "TaskExpired");
}
