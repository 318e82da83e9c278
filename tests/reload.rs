//! Reloads and `check` against a running node: background work follows the configuration,
//! limits are not duplicated by a reload, what is fixed at start stays fixed, and `check`
//! never touches a live `data_dir`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Receiver, TestServer};

const TOKEN: &str = "reload-test-token";

async fn reload(s: &TestServer) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(s.admin_url("/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn task(s: &TestServer, id: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .get(s.admin_url(&format!("/-/tasks/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        return serde_json::Value::Null;
    }
    resp.json().await.unwrap()
}

/// Polls (bounded) until the task satisfies `done`.
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
    panic!("task {id} never got there: {}", task(s, id).await);
}

async fn submit(s: &TestServer, path: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .post(s.url(path))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", id)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn base(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
data_dir = "data"

[limits]
max_in_flight = 2

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 20000
max_concurrency = 10
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_turns_async_on_runs_the_next_task() {
    let s = TestServer::start(&base(""));
    assert_eq!(submit(&s, "/probe", "before").await, 400);
    let path = s.dir.join("wasmgate.toml");
    std::fs::write(&path, s.config_text(&base("async = { max_retries = 0 }"))).unwrap();
    assert_eq!(reload(&s).await.0, 200);
    // On the cluster backend the newly opened queue connects in the background: 503 with
    // Retry-After until it has (bounded).
    let mut status = 0;
    for _ in 0..400 {
        status = submit(&s, "/probe/counter", "after_reload").await;
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 202);
    let t = wait_task(&s, "after_reload", |t| t["state"] == "Succeeded").await;
    assert_eq!(t["attempts"], 1);
    assert_eq!(t["response_preview"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_holds_across_a_reload() {
    let s = TestServer::start(&base(""));
    let c = reqwest::Client::new();
    // Two requests that hold their node permits at the gate until the test opens it.
    let gate = common::Gate::start();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (
                c.clone(),
                s.url(&format!("/probe/fetch?url={}", gate.url())),
            );
            tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    gate.wait_arrivals(2);
    assert_eq!(reload(&s).await.0, 200);
    // max_in_flight + 1 concurrent requests across the reload: exactly one is refused.
    let third = c.get(s.url("/probe")).send().await.unwrap();
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(c.get(s.url("/probe")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_moves_data_dir_or_a_listener_is_refused_whole() {
    let s = TestServer::start(&base(""));
    let c = reqwest::Client::new();
    let path = s.dir.join("wasmgate.toml");
    let greet = "\n[[trigger]]\nname = \"greet\"\nfunction = \"probe\"\n";
    let moved = s
        .config_text(&base(""))
        .replace("data_dir = \"data\"", "data_dir = \"elsewhere\"");
    std::fs::write(&path, format!("{moved}{greet}")).unwrap();
    let (status, body) = reload(&s).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["Message"].as_str().unwrap_or_default();
    assert!(msg.contains("data_dir"), "{msg}");
    // Nothing of that file was applied.
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 404);
    assert!(!s.dir.join("elsewhere").exists());

    let relisten = s.config_text(&base("")).replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:1\"",
        1,
    );
    std::fs::write(&path, format!("{relisten}{greet}")).unwrap();
    let (status, body) = reload(&s).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("server.listen"),
        "{body}"
    );
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 404);

    // The same file without the change applies.
    std::fs::write(&path, format!("{}{greet}", s.config_text(&base("")))).unwrap();
    assert_eq!(reload(&s).await.0, 200);
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 200);
}

fn check(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_beside_a_running_node_leaves_its_running_task_alone() {
    let ok = Receiver::start(200);
    let cfg = base(&format!(
        "async = {{ max_retries = 0, on_success = \"{}\" }}",
        ok.url("/ok")
    ));
    let s = TestServer::start(&cfg);
    assert_eq!(submit(&s, "/probe/sleep?ms=4000", "long").await, 202);
    assert!(s.wait_for_log("sleep start 4000 ms"), "{}", s.stderr_text());
    wait_task(&s, "long", |t| t["state"] == "Running").await;

    let (code, stderr) = check(&s.dir.join("wasmgate.toml"));
    assert_eq!(code, 0, "{stderr}");
    let t = task(&s, "long").await;
    assert_eq!(t["state"], "Running", "check changed a live task: {t}");

    let done = wait_task(&s, "long", |t| t["state"] == "Succeeded").await;
    assert_eq!(done["attempts"], 1);
    // Had check put the task back in the queue, a second run would have started within the
    // workers' one-second poll, long before the first one's four seconds were up.
    assert_eq!(
        s.stderr_text().matches("sleep start 4000 ms").count(),
        1,
        "{}",
        s.stderr_text()
    );
    assert!(ok.next(Duration::from_secs(30)).is_some());
}

#[test]
fn check_creates_nothing_in_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmgate.toml");
    std::fs::write(
        &config,
        common::render(&base("async = { max_retries = 0 }")),
    )
    .unwrap();
    let (code, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "check created {}",
        dir.path().join("data").display()
    );
}

/// Every key the docs mark fixed (the TLS files, the internal and admin listeners, the
/// artifact key and `[cluster]`) refuses a reload whole, naming itself, and leaves the running
/// generation serving; the same file without the change then applies.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_a_fixed_key_is_refused_whole_naming_it() {
    let s = TestServer::start(&base(""));
    let c = reqwest::Client::new();
    let path = s.dir.join("wasmgate.toml");
    let greet = "\n[[trigger]]\nname = \"greet\"\nfunction = \"probe\"\n";
    let server_line = "data_dir = \"data\"";
    let certs = common::certs();
    let tls = format!(
        "{server_line}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        common::path_str(&certs.join("localhost.pem")),
        common::path_str(&certs.join("localhost-key.pem"))
    );
    let key_file = common::path_str(&s.dir.join("other.key"));
    let cluster_change = if common::cluster_backend() {
        // The node runs on JetStream: dropping `[cluster]` is the change.
        let text = s.config_text(&base(""));
        let at = text
            .find("[cluster]")
            .expect("the cluster backend writes [cluster]");
        (text[..at].to_string(), "[cluster]")
    } else {
        let text = format!(
            "{}\n[cluster]\nnats = \"nats://127.0.0.1:1\"\n",
            s.config_text(&base(""))
        );
        (text, "[cluster]")
    };
    let changes: Vec<(String, &str)> = vec![
        (
            s.config_text(&base("")).replacen(server_line, &tls, 1),
            "server.tls",
        ),
        (
            s.config_text(&base("")).replacen(
                server_line,
                &format!("{server_line}\ninternal_listen = \"127.0.0.1:0\""),
                1,
            ),
            "server.internal_listen",
        ),
        (
            s.config_text(&base("")).replacen(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"127.0.0.1:1\"",
                1,
            ),
            "server.admin_listen",
        ),
        (
            s.config_text(&base("")).replacen(
                server_line,
                &format!("{server_line}\nartifact_key_file = \"{key_file}\""),
                1,
            ),
            "server.artifact_key_file",
        ),
        cluster_change,
    ];
    for (text, key) in changes {
        std::fs::write(&path, format!("{text}{greet}")).unwrap();
        let (status, body) = reload(&s).await;
        assert_eq!(status, 400, "changing {key}: {body}");
        let msg = body["Message"].as_str().unwrap_or_default();
        assert!(msg.contains(key), "changing {key}: {msg}");
        assert!(
            msg.contains("nothing was reloaded"),
            "changing {key}: {msg}"
        );
        assert_eq!(
            c.get(s.url("/greet")).send().await.unwrap().status(),
            404,
            "changing {key} applied the rest of the file"
        );
        // The running node still serves on its listeners as before.
        assert_eq!(c.get(s.url("/probe")).send().await.unwrap().status(), 200);
    }
    assert!(!s.dir.join("other.key").exists());
    std::fs::write(&path, format!("{}{greet}", s.config_text(&base("")))).unwrap();
    assert_eq!(reload(&s).await.0, 200);
    assert_eq!(c.get(s.url("/greet")).send().await.unwrap().status(), 200);
}
