//! Functions with state (SPEC section 5.1): wasi:keyvalue buckets and wasi:config
//! variables, exercised by the `counter` guest (functions/counter) on the real binary.
//! Every test runs on SQLite, and again on JetStream when `WASMGATE_TEST_BACKEND=nats`
//! (scripts/test.sh); the three-node tests always run on their own JetStream server.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Broker, TestServer};

const TOKEN: &str = "kv-admin-token";
const SECRET: &str = "s3cr3t-kv-value-9f2c";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "ADMIN_TOKEN"
data_dir = "data"

[[bucket]]
name = "shared"

[[bucket]]
name = "private"

[[bucket]]
name = "small"
max_bytes = 2000
max_value_bytes = 1000

[[function]]
name = "alpha"
wasm = "{counter}"
keyvalue = ["shared", "small"]
timeout_ms = 1000

[[function]]
name = "beta"
wasm = "{counter}"
keyvalue = ["shared", "private"]
variables = { bucket = "shared", api_base = "https://api.example" }
variables_env = { api_token = "KV_TEST_SECRET" }

[[function]]
name = "gamma"
wasm = "{counter}"

[[trigger]]
name = "alpha"
function = "alpha"

[[trigger]]
name = "beta"
function = "beta"

[[trigger]]
name = "gamma"
function = "gamma"
"#;

fn env() -> [(&'static str, &'static str); 2] {
    [("ADMIN_TOKEN", TOKEN), ("KV_TEST_SECRET", SECRET)]
}

fn start() -> TestServer {
    TestServer::start_with_env(CONFIG, &env())
}

/// GET `path` on the public listener: (status, body).
async fn call(s: &TestServer, path: &str) -> (u16, String) {
    let r = reqwest::get(s.url(path)).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(s: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn admin(s: &TestServer, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, s.admin_url(path))
        .bearer_auth(TOKEN)
}

#[tokio::test]
async fn functions_share_the_buckets_they_list_and_cannot_open_others() {
    let s = start();
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=visits").await,
        (200, "1".into())
    );
    // beta lists the same bucket and sees alpha's write.
    assert_eq!(
        call(&s, "/beta?bucket=shared&op=get&key=visits").await,
        (200, "1".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=shared&op=incr&key=visits&delta=5").await,
        (200, "6".into())
    );
    // A bucket it does not list, or one nobody declared: no-such-store.
    assert_eq!(
        call(&s, "/alpha?bucket=private&op=get&key=visits").await,
        (404, "no-such-store".into())
    );
    assert_eq!(
        call(&s, "/gamma?bucket=shared&op=get&key=visits").await,
        (404, "no-such-store".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=nonesuch&op=get&key=visits").await,
        (404, "no-such-store".into())
    );
    // The other operations, through the standard interfaces.
    assert_eq!(
        post(&s, "/beta?bucket=private&op=set&key=k", "v1").await,
        (200, "ok".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=private&op=exists&key=k").await,
        (200, "true".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=private&op=get-many&keys=k,missing").await,
        (200, "k=v1\nmissing\n".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=private&op=delete&key=k").await,
        (200, "ok".into())
    );
    assert_eq!(
        call(&s, "/beta?bucket=private&op=exists&key=k").await,
        (200, "false".into())
    );
    assert_eq!(call(&s, "/beta?bucket=private&op=get&key=k").await.0, 404);
    // A value increment cannot add to is an error, and changes nothing.
    post(&s, "/beta?bucket=private&op=set&key=word", "abc").await;
    let (status, body) = call(&s, "/beta?bucket=private&op=incr&key=word").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("decimal"), "{body}");
    assert_eq!(
        call(&s, "/beta?bucket=private&op=get&key=word").await,
        (200, "abc".into())
    );
}

#[tokio::test]
async fn sixty_four_concurrent_increments_from_two_functions_give_exactly_one_to_sixty_four() {
    let s = start();
    let client = reqwest::Client::new();
    let calls = (0..64).map(|i| {
        let f = if i % 2 == 0 { "alpha" } else { "beta" };
        let req = client.get(s.url(&format!("/{f}?bucket=shared&op=incr&key=race")));
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{body}");
            body.parse::<u64>().unwrap()
        }
    });
    let mut seen: Vec<u64> = futures::future::join_all(calls).await;
    seen.sort_unstable();
    assert_eq!(seen, (1..=64).collect::<Vec<u64>>());
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=get&key=race").await,
        (200, "64".into())
    );
}

#[tokio::test]
async fn a_write_survives_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), CONFIG, &env());
    assert_eq!(
        post(&s, "/beta?bucket=private&op=set&key=durable", "kept").await,
        (200, "ok".into())
    );
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=n&delta=41").await,
        (200, "41".into())
    );
    s.kill9();
    let s = TestServer::start_in(dir.path(), CONFIG, &env());
    assert_eq!(
        call(&s, "/beta?bucket=private&op=get&key=durable").await,
        (200, "kept".into())
    );
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=n").await,
        (200, "42".into())
    );
}

#[tokio::test]
async fn quotas_refuse_whole_writes_and_leave_the_bucket_unchanged() {
    let s = start();
    let v = |n: usize| "x".repeat(n);
    // One value over max_value_bytes (1000).
    let (status, body) = post(&s, "/alpha?bucket=small&op=set&key=big", v(1001)).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
    assert_eq!(call(&s, "/alpha?bucket=small&op=get&key=big").await.0, 404);
    // A batch with one value over it: none of it is written.
    let batch = format!("a={}\nb={}\n", v(10), v(1001));
    let (status, body) = post(&s, "/alpha?bucket=small&op=set-many", batch).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
    assert_eq!(call(&s, "/alpha?bucket=small&op=get&key=a").await.0, 404);
    // Within the limits.
    assert_eq!(
        post(&s, "/alpha?bucket=small&op=set&key=k1", v(800)).await,
        (200, "ok".into())
    );
    // A batch that would take the bucket past max_bytes (2000): none of it is written.
    let batch = format!("k2={}\nk3={}\n", v(800), v(800));
    let (status, body) = post(&s, "/alpha?bucket=small&op=set-many", batch).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
    for k in ["k2", "k3"] {
        assert_eq!(
            call(&s, &format!("/alpha?bucket=small&op=exists&key={k}")).await,
            (200, "false".into()),
            "{k} was written by a refused batch"
        );
    }
    assert_eq!(
        call(&s, "/alpha?bucket=small&op=get&key=k1").await,
        (200, v(800))
    );
    // Freeing space makes room again.
    assert_eq!(
        call(&s, "/alpha?bucket=small&op=delete&key=k1").await,
        (200, "ok".into())
    );
    assert_eq!(
        post(
            &s,
            "/alpha?bucket=small&op=set-many",
            format!("k2={}\n", v(800))
        )
        .await,
        (200, "ok".into())
    );
}

#[tokio::test]
async fn list_keys_pages_over_more_than_a_thousand_keys() {
    let s = start();
    let mut all = BTreeSet::new();
    for part in 0..2 {
        let lines: String = (0..750)
            .map(|i| {
                let k = format!("key-{part}-{i:04}");
                all.insert(k.clone());
                format!("{k}=v\n")
            })
            .collect();
        assert_eq!(
            post(&s, "/beta?bucket=private&op=set-many", lines).await,
            (200, "ok".into())
        );
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "list-keys does not end");
        let path = match &cursor {
            Some(c) => format!("/beta?bucket=private&op=list&cursor={c}"),
            None => "/beta?bucket=private&op=list".to_string(),
        };
        let (status, body) = call(&s, &path).await;
        assert_eq!(status, 200, "{body}");
        let mut lines = body.lines();
        let head = lines.next().unwrap();
        let page: Vec<String> = lines.map(str::to_string).collect();
        assert!(page.len() <= 1000, "a page of {} keys", page.len());
        listed.extend(page);
        match head.strip_prefix("cursor: ").unwrap() {
            "none" => break,
            c => cursor = Some(c.to_string()),
        }
    }
    assert_eq!(pages, 2, "1500 keys are two pages");
    assert_eq!(listed.len(), 1500, "a key listed twice or missed");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
}

#[tokio::test]
async fn variables_and_secrets_reach_the_guest_and_nowhere_else() {
    let s = start();
    assert_eq!(
        call(&s, "/beta?op=config&key=api_base").await,
        (200, "https://api.example".into())
    );
    assert_eq!(
        call(&s, "/beta?op=config&key=api_token").await,
        (200, SECRET.into())
    );
    assert_eq!(call(&s, "/beta?op=config&key=nope").await.0, 404);
    assert_eq!(
        call(&s, "/beta?op=config-all").await,
        (
            200,
            format!("api_base=https://api.example\napi_token={SECRET}\nbucket=shared\n")
        )
    );
    // Another function has its own (none).
    assert_eq!(call(&s, "/alpha?op=config-all").await, (200, String::new()));
    // The `bucket` variable is the counter's default bucket.
    assert_eq!(call(&s, "/beta").await, (200, "hits: 1\n".into()));

    // Nowhere else: the admin API, the metrics, `check`, the log.
    for path in [
        "/-/buckets",
        "/-/functions",
        "/-/sources",
        "/metrics",
        "/readyz",
    ] {
        let text = admin(&s, reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(SECRET), "{path} shows the secret");
    }
    let config = s.dir.join("wasmgate.toml");
    let out = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("KV_TEST_SECRET", SECRET)
        .env("ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(SECRET), "check prints the secret");
    assert!(
        !s.stderr_text().contains(SECRET),
        "the log shows the secret"
    );
    // A missing variable is a configuration error naming it, not an empty secret.
    let out = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("KV_TEST_SECRET")
        .env("ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KV_TEST_SECRET"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_admin_api_and_cli_read_write_and_delete_keys() {
    let s = start();
    let key = "user/42 é"; // a slash, a space and non-ASCII, percent-encoded in the path
    let path = "/-/buckets/shared/keys/user%2F42%20%C3%A9";
    let r = admin(&s, reqwest::Method::PUT, path)
        .body("from-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The guest sees it.
    let (status, body) = call(&s, "/beta?bucket=shared&op=get&key=user%2F42%20%C3%A9").await;
    assert_eq!((status, body.as_str()), (200, "from-admin"));
    // The guest's write, read by the admin API.
    post(&s, "/beta?bucket=shared&op=set&key=g", "from-guest").await;
    let r = admin(&s, reqwest::Method::GET, "/-/buckets/shared/keys/g")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "from-guest");
    let list: serde_json::Value = admin(
        &s,
        reqwest::Method::GET,
        "/-/buckets/shared/keys?prefix=user",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(list["keys"], serde_json::json!([key]));
    assert_eq!(list["cursor"], serde_json::Value::Null);
    let buckets: serde_json::Value = admin(&s, reqwest::Method::GET, "/-/buckets")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shared = buckets["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "shared")
        .unwrap()
        .clone();
    assert_eq!(shared["keys"], 2, "{buckets}");
    assert!(shared["bytes"].as_u64().unwrap() > 0, "{buckets}");
    assert_eq!(shared["max_bytes"], 64 << 20);
    // Refusals: an unknown bucket, a missing key, a value over the quota.
    let r = admin(&s, reqwest::Method::GET, "/-/buckets/nonesuch/keys/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(common::error_body(r).await["Code"], "BucketNotFound");
    let r = admin(&s, reqwest::Method::GET, "/-/buckets/shared/keys/missing")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(common::error_body(r).await["Code"], "KeyNotFound");
    let r = admin(&s, reqwest::Method::PUT, "/-/buckets/small/keys/big")
        .body("x".repeat(1001))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(common::error_body(r).await["Code"], "QuotaExceeded");
    // Without the token, nothing.
    let r = reqwest::get(s.admin_url("/-/buckets/shared/keys/g"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Delete.
    let r = admin(&s, reqwest::Method::DELETE, path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        call(&s, "/beta?bucket=shared&op=exists&key=user%2F42%20%C3%A9").await,
        (200, "false".into())
    );

    // The CLI, on the same routes.
    let cli = |args: &[&str]| common::admin_cli(&s, TOKEN, &[&["kv"], args].concat());

    let (ok, _, err) = cli(&["put", "shared", "cli key", "cli value"]);
    assert!(ok, "{err}");
    assert_eq!(
        call(&s, "/beta?bucket=shared&op=get&key=cli%20key").await,
        (200, "cli value".into())
    );
    let (ok, out, err) = cli(&["get", "shared", "cli key"]);
    assert!(ok, "{err}");
    assert_eq!(out, "cli value");
    let (ok, out, err) = cli(&["list", "shared"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from(["cli key", "g"])
    );
    let (ok, out, err) = cli(&["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("shared") && out.contains("small"), "{out}");
    let (ok, _, err) = cli(&["delete", "shared", "cli key"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["get", "shared", "cli key"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    let metrics = s.metrics(TOKEN).await;
    // Two puts and two deletes went through (the API's, then the CLI's).
    for op in ["admin_put", "admin_delete"] {
        let line =
            format!(r#"wasmgate_kv_operations_total{{bucket="shared",op="{op}",outcome="ok"}} 2"#);
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    assert!(
        metrics.contains(
            r#"wasmgate_kv_operations_total{bucket="small",op="admin_put",outcome="quota"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wasmgate_kv_bytes{bucket="shared"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_component_importing_an_unknown_interface_is_refused_naming_it() {
    // At start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wasmgate.toml");
    std::fs::write(
        &config,
        common::render(
            r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"

[[function]]
name = "odd"
wasm = "{unknown-import}"

[[trigger]]
name = "odd"
function = "odd"
"#,
        ),
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("example:missing/thing"), "{err}");

    // At deploy.
    let s = start();
    let bytes = std::fs::read(common::wasm("unknown-import")).unwrap();
    let r = admin(&s, reqwest::Method::PUT, "/-/functions/odd")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = common::error_body(r).await;
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("example:missing/thing"),
        "{body}"
    );
}

#[tokio::test]
async fn a_guest_waiting_on_a_store_that_does_not_answer_is_cut_off_by_its_deadline() {
    if common::cluster_backend() {
        // The cluster's form of this test stops the broker: see
        // `a_guest_waiting_on_an_unreachable_cluster_store_is_cut_off`.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), CONFIG, &env());
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=held").await,
        (200, "1".into())
    );
    // Another process holds the file's write lock: the writer waits on it.
    let lock = rusqlite::Connection::open(dir.path().join("data/keyvalue.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The writer would wait a minute for the lock; the guest's deadline (1 s) answers
    // long before, while the lock is still held (bounded: a client that waits 20 s).
    let r = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
        .get(s.url("/alpha?bucket=shared&op=incr&key=held"))
        .send()
        .await
        .expect("no answer while the store is held: the guest was not cut off");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 504, "{body}");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // The node is fine afterwards, and the write of the guest that was cut off was not
    // applied late (its client got 504 and may retry it).
    assert_eq!(
        call(&s, "/beta?bucket=shared&op=incr&key=held").await,
        (200, "2".into())
    );
}

/// `[cluster]` config for a node on `broker`, its own data_dir.
fn node_config(broker: &Broker) -> String {
    format!("{CONFIG}{}", common::cluster_section(broker))
}

#[tokio::test]
async fn a_guest_waiting_on_an_unreachable_cluster_store_is_cut_off() {
    let mut broker = Broker::jetstream();
    let s = TestServer::start_with_env(&node_config(&broker), &env());
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=held").await,
        (200, "1".into())
    );
    broker.stop();
    let (status, body) = call(&s, "/alpha?bucket=shared&op=incr&key=held").await;
    assert_eq!(status, 504, "{body}");
}

#[tokio::test]
async fn three_nodes_share_buckets_and_600_concurrent_increments_end_at_600() {
    let broker = Broker::jetstream();
    let config = node_config(&broker);
    let nodes: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start_with_env(&config, &env()))
        .collect();
    // A write on one node is read on the others.
    assert_eq!(
        post(
            &nodes[0],
            "/beta?bucket=shared&op=set&key=seen",
            "everywhere"
        )
        .await,
        (200, "ok".into())
    );
    for n in &nodes[1..] {
        assert_eq!(
            call(n, "/alpha?bucket=shared&op=get&key=seen").await,
            (200, "everywhere".into())
        );
    }
    assert_eq!(
        call(&nodes[1], "/alpha?bucket=shared&op=incr&key=one").await,
        (200, "1".into())
    );
    for n in [&nodes[0], &nodes[2]] {
        assert_eq!(
            call(n, "/beta?bucket=shared&op=get&key=one").await,
            (200, "1".into())
        );
    }

    // 3 x 200 increments of one key, 32 at a time per node.
    let client = reqwest::Client::new();
    let mut all = Vec::new();
    for round in 0..(200 / 25) {
        let calls = nodes.iter().flat_map(|n| {
            (0..25).map(move |i| {
                let f = if (round + i) % 2 == 0 {
                    "alpha"
                } else {
                    "beta"
                };
                n.url(&format!("/{f}?bucket=shared&op=incr&key=contended"))
            })
        });
        let results = futures::future::join_all(calls.map(|url| {
            let client = client.clone();
            async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                assert_eq!(status, 200, "{body}");
                body.parse::<u64>().unwrap()
            }
        }))
        .await;
        all.extend(results);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=600).collect::<Vec<u64>>());
    for n in &nodes {
        assert_eq!(
            call(n, "/alpha?bucket=shared&op=get&key=contended").await,
            (200, "600".into())
        );
    }
}

#[tokio::test]
async fn a_reload_keeps_the_data_and_applies_new_buckets_and_variables() {
    let s = start();
    assert_eq!(
        call(&s, "/alpha?bucket=shared&op=incr&key=kept").await,
        (200, "1".into())
    );
    // Reload: a new bucket for gamma, new variables for beta, a tighter quota on small.
    let changed = CONFIG
        .replace(
            "[[bucket]]\nname = \"private\"",
            "[[bucket]]\nname = \"fresh\"\n\n[[bucket]]\nname = \"private\"",
        )
        .replace(
            "name = \"gamma\"\nwasm = \"{counter}\"",
            "name = \"gamma\"\nwasm = \"{counter}\"\nkeyvalue = [\"fresh\", \"shared\"]",
        )
        .replace(
            "api_base = \"https://api.example\"",
            "api_base = \"https://v2.example\"",
        )
        .replace("max_value_bytes = 1000", "max_value_bytes = 10");
    std::fs::write(s.dir.join("wasmgate.toml"), s.config_text(&changed)).unwrap();
    let r = admin(&s, reqwest::Method::POST, "/-/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        call(&s, "/gamma?bucket=shared&op=incr&key=kept").await,
        (200, "2".into())
    );
    assert_eq!(
        call(&s, "/gamma?bucket=fresh&op=incr&key=n").await,
        (200, "1".into())
    );
    assert_eq!(
        call(&s, "/beta?op=config&key=api_base").await,
        (200, "https://v2.example".into())
    );
    let (status, body) = post(&s, "/alpha?bucket=small&op=set&key=k", "x".repeat(11)).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
}

#[tokio::test]
async fn on_sqlite_quotas_count_keys_plus_values_exactly() {
    if common::cluster_backend() {
        // JetStream counts its own stored bytes (subjects, headers): see the docs.
        return;
    }
    let s = start();
    let v = |n: usize| "x".repeat(n);
    // "k1" + 998 and "k2" + 998: exactly max_bytes (2000).
    for k in ["k1", "k2"] {
        assert_eq!(
            post(&s, &format!("/alpha?bucket=small&op=set&key={k}"), v(998)).await,
            (200, "ok".into())
        );
    }
    // Two more bytes (a key and an empty value) are over.
    let (status, body) = post(&s, "/alpha?bucket=small&op=set&key=k3", "").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota") && body.contains("2002"), "{body}");
    // A write that shrinks the bucket is taken at full, and frees exactly what it frees.
    assert_eq!(
        post(&s, "/alpha?bucket=small&op=set&key=k1", v(997)).await,
        (200, "ok".into())
    );
    assert_eq!(
        post(&s, "/alpha?bucket=small&op=set&key=k", "").await,
        (200, "ok".into())
    );
    let (status, body) = post(&s, "/alpha?bucket=small&op=set&key=j", "").await;
    assert_eq!(status, 500, "{body}");
    // A delete frees its key and value.
    assert_eq!(
        call(&s, "/alpha?bucket=small&op=delete&key=k2").await,
        (200, "ok".into())
    );
    assert_eq!(
        post(&s, "/alpha?bucket=small&op=set&key=k4", v(998)).await,
        (200, "ok".into())
    );
    let buckets: serde_json::Value = admin(&s, reqwest::Method::GET, "/-/buckets")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let small = buckets["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "small")
        .unwrap()
        .clone();
    assert_eq!(
        (small["keys"].as_u64(), small["bytes"].as_u64()),
        (Some(3), Some(2000))
    );
}

#[tokio::test]
async fn a_reload_that_lowers_max_bytes_below_what_a_bucket_holds_loses_nothing() {
    let s = start();
    let v = |n: usize| "x".repeat(n);
    for k in ["k1", "k2"] {
        assert_eq!(
            post(&s, &format!("/alpha?bucket=small&op=set&key={k}"), v(800)).await,
            (200, "ok".into())
        );
    }
    let lowered = CONFIG.replace("max_bytes = 2000", "max_bytes = 1000");
    std::fs::write(s.dir.join("wasmgate.toml"), s.config_text(&lowered)).unwrap();
    let r = admin(&s, reqwest::Method::POST, "/-/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for k in ["k1", "k2"] {
        assert_eq!(
            call(&s, &format!("/alpha?bucket=small&op=get&key={k}")).await,
            (200, v(800)),
            "{k} was lost when max_bytes went below what the bucket holds"
        );
    }
    // Growing is refused; shrinking is not.
    let (status, body) = post(&s, "/alpha?bucket=small&op=set&key=k3", v(100)).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("quota"), "{body}");
    assert_eq!(
        call(&s, "/alpha?bucket=small&op=delete&key=k1").await,
        (200, "ok".into())
    );
    assert_eq!(
        post(&s, "/alpha?bucket=small&op=set&key=k3", v(10)).await,
        (200, "ok".into())
    );
}

#[tokio::test]
async fn get_many_will_not_read_more_than_32_mib_for_a_guest() {
    let s = start();
    assert_eq!(
        post(
            &s,
            "/beta?bucket=private&op=set&key=big",
            vec![7u8; 1 << 20]
        )
        .await,
        (200, "ok".into())
    );
    let keys = ["big"; 40].join(",");
    let (status, body) = call(&s, &format!("/beta?bucket=private&op=get-many&keys={keys}")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("more than"), "{body}");
    // Within the bound it reads.
    let keys = ["big"; 3].join(",");
    let (status, body) = call(&s, &format!("/beta?bucket=private&op=get-many&keys={keys}")).await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(200)]);
}
