//! The queue's two promises under random crashes, as a property: whatever the interleaving of
//! submissions, kill -9 and restarts on one data directory, every task answered 202 runs to
//! success, and no task ever runs twice at the same time. Runs on both backends (SQLite here,
//! JetStream with `WASMGATE_TEST_BACKEND=nats`).
//!
//! Each task is the probe's `/fetch` of a [`Recorder`] URL naming the task: the recorder holds
//! the request for a moment and counts, per task, the attempts inside it at once. A node killed
//! mid-attempt cannot run it any more, so after every kill the recorder is drained (every
//! connection the dead node opened is read to its end) before the next node starts.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const ADMIN_TOKEN: &str = "admin-test-token";
/// A bound against a broken node, not a timing assertion.
const BOUND: Duration = Duration::from_secs(90);

#[derive(Default)]
struct State {
    /// Connections accepted and not yet finished.
    open: usize,
    /// Attempts of each task inside the recorder right now.
    active: HashMap<String, usize>,
    /// Attempts of each task answered to the end.
    finished: HashMap<String, usize>,
    /// Every task seen running twice at once.
    overlaps: Vec<String>,
}

/// A loopback HTTP server for `GET /hold/<task>/<ms>`: counts the attempt in, waits `ms`,
/// answers 200, counts it out.
struct Recorder {
    addr: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Counted at accept, in accept order, so a drain that sees its own sentinel
                // accepted also sees every connection queued before it.
                shared.0.lock().unwrap().open += 1;
                let shared = shared.clone();
                std::thread::spawn(move || {
                    serve(stream, &shared);
                    let mut s = shared.0.lock().unwrap();
                    s.open -= 1;
                    shared.1.notify_all();
                });
            }
        });
        Recorder { addr, state }
    }

    fn url(&self, task: &str, hold_ms: u64) -> String {
        format!("http://{}/hold/{task}/{hold_ms}", self.addr)
    }

    /// Waits (bounded) until every connection accepted so far, and every one queued before
    /// this call, has been read to its end: after a kill, nothing of the dead node is left
    /// inside.
    fn drain(&self) {
        let mut sentinel = std::net::TcpStream::connect(&self.addr).unwrap();
        sentinel.set_read_timeout(Some(BOUND)).unwrap();
        sentinel
            .write_all(b"GET /sync HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = sentinel.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 200"), "recorder sync");
        let (lock, changed) = &*self.state;
        let deadline = Instant::now() + BOUND;
        let mut s = lock.lock().unwrap();
        while s.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{} connections never finished", s.open);
            s = changed.wait_timeout(s, left).unwrap().0;
        }
    }

    fn overlaps(&self) -> Vec<String> {
        self.state.0.lock().unwrap().overlaps.clone()
    }

    fn finished(&self, task: &str) -> usize {
        let s = self.state.0.lock().unwrap();
        s.finished.get(task).copied().unwrap_or(0)
    }
}

fn serve(mut stream: std::net::TcpStream, state: &(Mutex<State>, Condvar)) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split(' ').nth(1).unwrap_or("").to_string();
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    let Some(rest) = path.strip_prefix("/hold/") else {
        let _ = stream.write_all(answer);
        return;
    };
    let (task, ms) = rest.split_once('/').unwrap_or((rest, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    {
        let mut s = state.0.lock().unwrap();
        let n = s.active.entry(task.to_string()).or_default();
        *n += 1;
        if *n > 1 {
            s.overlaps.push(task.to_string());
        }
    }
    std::thread::sleep(Duration::from_millis(ms));
    let written = stream.write_all(answer).is_ok();
    let mut s = state.0.lock().unwrap();
    if let Some(n) = s.active.get_mut(task) {
        *n -= 1;
    }
    if written {
        *s.finished.entry(task.to_string()).or_default() += 1;
    }
}

fn config() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[queue]
workers = 4

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
async = {{ max_retries = 20 }}
"#
    )
}

/// One task to submit: its delay (s) and how long its attempt stays in the recorder.
#[derive(Debug, Clone)]
struct Submission {
    delay_s: u8,
    hold_ms: u64,
}

/// A node's life: the submissions sent to it by four clients at once, and when (after the
/// first is sent) it is killed.
#[derive(Debug, Clone)]
struct Life {
    submissions: Vec<Submission>,
    kill_after_ms: u64,
}

fn life() -> impl Strategy<Value = Life> {
    (
        prop::collection::vec(
            // Some attempts outlast the cluster's `ack_wait_ms` (2 s in the tests): a task
            // must stay with its runner for as long as it runs.
            (0u8..=1, prop_oneof![4 => 5u64..120, 1 => 2100u64..2600])
                .prop_map(|(delay_s, hold_ms)| Submission { delay_s, hold_ms }),
            4..24,
        ),
        0u64..600,
    )
        .prop_map(|(submissions, kill_after_ms)| Life {
            submissions,
            kill_after_ms,
        })
}

/// Runs `lives` on one data directory, then one last node until every 202 has succeeded.
fn check(case: usize, lives: &[Life], recorder: &Recorder) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        // Every wait on the node is bounded.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut accepted: Vec<String> = Vec::new();
        for (n, life) in lives.iter().enumerate() {
            let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
            wait_ready(&client, &s).await;
            let results = Arc::new(Mutex::new(Vec::new()));
            let work: Vec<(String, String, u8)> = life
                .submissions
                .iter()
                .enumerate()
                .map(|(i, sub)| {
                    let id = format!("c{case}_l{n}_s{i}");
                    let target = recorder.url(&id, sub.hold_ms);
                    (
                        id,
                        s.url(&format!("/probe/fetch?url={target}")),
                        sub.delay_s,
                    )
                })
                .collect();
            let mut clients = Vec::new();
            for lane in 0..4 {
                let mine: Vec<_> = work.iter().skip(lane).step_by(4).cloned().collect();
                let (client, results) = (client.clone(), results.clone());
                clients.push(tokio::spawn(async move {
                    for (id, url, delay) in mine {
                        let sent = client
                            .post(url)
                            .header("x-fc-invocation-type", "Async")
                            .header("x-fc-async-task-id", &id)
                            .header("x-fc-async-delay", delay.to_string())
                            .send()
                            .await;
                        let Ok(resp) = sent else { break };
                        results.lock().unwrap().push((id, resp.status().as_u16()));
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(life.kill_after_ms)).await;
            s.kill9();
            for c in clients {
                c.await.unwrap();
            }
            recorder.drain();
            for (id, status) in results.lock().unwrap().iter() {
                // Well under every bound, a ready node commits and says 202.
                prop_assert_eq!(*status, 202, "{} answered {}", id, status);
                accepted.push(id.clone());
            }
        }
        let s = TestServer::start_in(dir.path(), &cfg, &[]);
        for id in &accepted {
            let state = wait_succeeded(&client, &s, id).await;
            prop_assert_eq!(state.as_str(), "Succeeded", "task {} was 202'd", id);
        }
        drop(s);
        recorder.drain();
        for id in &accepted {
            prop_assert!(
                recorder.finished(id) >= 1,
                "{id} never reached the recorder"
            );
        }
        let overlaps = recorder.overlaps();
        prop_assert!(overlaps.is_empty(), "ran twice at once: {overlaps:?}");
        Ok(())
    })
}

/// Waits (bounded) until `/readyz` names nothing degraded: on a cluster node, until its queue
/// is connected (before that, submissions are refused with 503, which promises nothing).
async fn wait_ready(client: &reqwest::Client, s: &TestServer) {
    let deadline = Instant::now() + BOUND;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok(resp) = client
            .get(s.admin_url("/readyz"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            && let Ok(v) = resp.json::<serde_json::Value>().await
        {
            if v["degraded"] == serde_json::json!([]) {
                return;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node never became ready: {last}");
}

/// The task's state once it is final (or the last seen, once the bound is out).
async fn wait_succeeded(client: &reqwest::Client, s: &TestServer, id: &str) -> String {
    let deadline = Instant::now() + BOUND;
    let mut last = String::new();
    while Instant::now() < deadline {
        let resp = client
            .get(s.admin_url(&format!("/-/tasks/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let t: serde_json::Value = resp.json().await.unwrap();
            last = t["state"].as_str().unwrap_or_default().to_string();
            if matches!(
                last.as_str(),
                "Succeeded" | "Failed" | "Stopped" | "Expired"
            ) {
                return last;
            }
        } else {
            last = format!("HTTP {}", resp.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[test]
fn accepted_tasks_survive_random_crashes_and_never_run_twice_at_once() {
    let recorder = Recorder::start();
    let mut runner = TestRunner::new(Config {
        cases: 3,
        // Every case starts real processes: a failure is reported as found, not shrunk.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let strategy = prop::collection::vec(life(), 2..=3);
    let result = runner.run(&strategy, |lives| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        check(n, &lives, &recorder)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
