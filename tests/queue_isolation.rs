//! The async queue across trust boundaries: one trigger's callers cannot claim, probe or
//! shadow another trigger's task ids, callbacks cannot be aimed at the admin API or at
//! ports the list does not name, and what a finished task keeps is only what it must.

mod common;

use std::time::Duration;

use common::{Receiver, TestServer};

const TOKEN: &str = "isolation-admin-token";

fn config(receiver: &Receiver) -> String {
    let port = receiver
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "shop"
function = "echo"
async = {{ max_retries = 0, callback_hosts = ["127.0.0.1"] }}

[[trigger]]
name = "public"
function = "echo"
async = {{ max_retries = 0, callback_hosts = ["127.0.0.1:{port}"] }}
"#
    )
}

async fn submit(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(s.url(path))
        .header("x-fc-invocation-type", "Async")
        .body("payload");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn admin_get(s: &TestServer, path: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(s.admin_url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn task_ids_are_scoped_per_trigger() {
    let r = Receiver::start(200);
    let s = TestServer::start(&config(&r));
    let id = [("x-fc-async-task-id", "order_1001")];
    assert_eq!(submit(&s, "/public", &id).await.0, 202);
    // The real client of the other trigger is not told its id is taken.
    assert_eq!(submit(&s, "/shop", &id).await.0, 202);
    // On its own trigger the id is still unique.
    assert_eq!(submit(&s, "/shop", &id).await.0, 409);

    let (status, body) = admin_get(&s, "/-/tasks/order_1001").await;
    assert_eq!(status, 409, "{body}");
    let msg = body["Message"].as_str().unwrap();
    assert!(msg.contains("public") && msg.contains("shop"), "{msg}");
    let (status, body) = admin_get(&s, "/-/tasks/order_1001?trigger=shop").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["trigger"], "shop");
    let (status, body) = admin_get(&s, "/-/tasks?trigger=public").await;
    assert_eq!(status, 200);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1, "{body}");

    // Ids the gateway makes itself cannot be claimed by clients.
    for reserved in ["cron-shop-1700000000", "evt-1"] {
        let (status, body) = submit(&s, "/shop", &[("x-fc-async-task-id", reserved)]).await;
        assert_eq!(status, 400, "{reserved}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_never_reach_the_admin_listener_or_unlisted_ports() {
    let r = Receiver::start(200);
    let s = TestServer::start(&config(&r));
    let admin = s.admin_url("/-/reload");
    // "127.0.0.1" (any port) is listed for shop, yet the admin listener is never a target.
    let (status, body) = submit(&s, "/shop", &[("x-callback-url", admin.as_str())]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    let localhost_admin = admin.replace("127.0.0.1", "localhost");
    let (status, _) = submit(&s, "/shop", &[("x-callback-url", localhost_admin.as_str())]).await;
    assert_eq!(status, 400);

    // "127.0.0.1:PORT" allows that port only.
    let elsewhere = "http://127.0.0.1:1/hook";
    let (status, _) = submit(&s, "/public", &[("x-callback-url", elsewhere)]).await;
    assert_eq!(status, 400);
    let hook = r.url("/hook");
    let (status, _) = submit(
        &s,
        "/public",
        &[
            ("x-callback-url", hook.as_str()),
            ("x-fc-async-task-id", "hooked"),
        ],
    )
    .await;
    assert_eq!(status, 202);
    let cb = r
        .next(Duration::from_secs(30))
        .expect("the listed port is called back");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("hooked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_task_keeps_no_request_behind() {
    let r = Receiver::start(200);
    let s = TestServer::start(&config(&r));
    let (status, _) = submit(
        &s,
        "/shop",
        &[
            ("x-fc-async-task-id", "private"),
            ("x-secret-note", "kept until done"),
        ],
    )
    .await;
    assert_eq!(status, 202);
    let mut t = serde_json::Value::Null;
    for _ in 0..600 {
        t = admin_get(&s, "/-/tasks/private?trigger=shop").await.1;
        if t["state"] == "Succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t["state"], "Succeeded", "{t}");
    // The finished record, on either backend, keeps neither the headers nor the body (the
    // echo function's own answer, which repeats them, is the one place they may appear).
    let mut record = t.clone();
    record["response_preview"].take();
    assert!(!record.to_string().contains("kept until done"), "{record}");
    assert!(!record.to_string().contains("payload"), "{record}");
    if common::cluster_backend() {
        // On JetStream the request is the task's message, deleted once acknowledged: the
        // stream empties (the node reads its size every second).
        let mut depth = serde_json::Value::Null;
        for _ in 0..100 {
            depth = admin_get(&s, "/readyz").await.1["queue_depth"].clone();
            if depth == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(depth, 0, "the finished task's message is still stored");
        return;
    }
    // The database file holds neither the body nor the headers any more.
    let db = s.dir.join("data/tasks.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (state, invocation, body): (String, String, Vec<u8>) = conn
        .query_row(
            "SELECT state, invocation, body FROM tasks WHERE id = 'private'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(state, "Succeeded");
    assert!(!invocation.contains("kept until done"), "{invocation}");
    assert!(body.is_empty());
}
