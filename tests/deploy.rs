//! Deploying functions through the admin API: versions, aliases (with canaries), no failed
//! requests while an alias moves, refusal of invalid uploads, and restarts that keep
//! everything without recompiling.

mod common;

use common::TestServer;

const TOKEN: &str = "deploy-admin-token";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "ADMIN_TOKEN"
data_dir = "data"

[[trigger]]
name = "live"
function = "greet"
qualifier = "live"

[[trigger]]
name = "v1"
function = "greet"
qualifier = "1"

[[trigger]]
name = "latest"
function = "greet"
"#;

fn start_in(dir: &std::path::Path) -> TestServer {
    TestServer::start_in(dir, CONFIG, &[("ADMIN_TOKEN", TOKEN)])
}

fn cli(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    common::admin_cli(s, TOKEN, args)
}

async fn body(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn set_alias(s: &TestServer, json: &str) -> u16 {
    reqwest::Client::new()
        .put(s.admin_url("/-/functions/greet/aliases/live"))
        .bearer_auth(TOKEN)
        .body(json.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_alias_canary_rollback_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start_in(dir.path());
    let (status, _) = body(s.url("/live")).await;
    assert_eq!(status, 404, "nothing deployed yet");

    let (ok, out, err) = cli(
        &s,
        &["deploy", "greet", &common::wasm("hello"), "--alias", "live"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("greet version 1"), "{out}");
    assert_eq!(
        body(s.url("/live")).await,
        (200, "hello from wasmgate\n".into())
    );

    let (ok, out, err) = cli(&s, &["deploy", "greet", &common::wasm("echo")]);
    assert!(ok, "{err}");
    assert!(out.contains("greet version 2"), "{out}");
    // LATEST is the highest version; a number pins one; the alias has not moved.
    let (status, latest) = body(s.url("/latest/x")).await;
    assert_eq!(status, 200);
    assert!(latest.contains("\"path\":\"/x\""), "{latest}");
    assert_eq!(body(s.url("/v1")).await.1, "hello from wasmgate\n");
    assert_eq!(body(s.url("/live")).await.1, "hello from wasmgate\n");

    // Move the alias while a client loop runs: every request succeeds, each on version 1
    // until the move and on version 2 from some point on, never back.
    let url = s.url("/live");
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let client_loop = tokio::spawn({
        let moved = moved.clone();
        async move {
            let c = reqwest::Client::new();
            let mut started = Some(started_tx);
            let mut seen = Vec::new();
            let mut after_move = 0;
            for _ in 0..20_000 {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200, "after {seen:?}");
                let version = if r.text().await.unwrap().starts_with("hello") {
                    1
                } else {
                    2
                };
                seen.push(version);
                // 20 answers observed before the move is made.
                if seen.len() == 20
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
                // Counted from the first answer of version 2 after the move: a request
                // sent before the move may still be answered by version 1 after it.
                if moved.load(std::sync::atomic::Ordering::SeqCst)
                    && (after_move > 0 || version == 2)
                {
                    after_move += 1;
                    if after_move >= 20 {
                        break;
                    }
                }
            }
            seen
        }
    });
    started_rx.await.expect("the client loop runs");
    assert_eq!(set_alias(&s, r#"{"version": 2}"#).await, 200);
    moved.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = client_loop.await.unwrap();
    assert!(
        seen[..20].iter().all(|v| *v == 1),
        "before the move: {seen:?}"
    );
    let first_v2 = seen
        .iter()
        .position(|v| *v == 2)
        .expect("the alias move never took effect");
    assert!(
        seen[first_v2..].iter().all(|v| *v == 2),
        "back to version 1: {seen:?}"
    );
    assert!(seen.ends_with(&[2; 20]), "after the move: {seen:?}");
    assert!(body(s.url("/live")).await.1.starts_with('{'));

    // Canary: half the traffic to version 1.
    assert_eq!(
        set_alias(
            &s,
            r#"{"version": 2, "additional": {"version": 1, "weight": 0.5}}"#
        )
        .await,
        200
    );
    let mut hello = 0;
    for _ in 0..60 {
        if body(s.url("/live")).await.1.starts_with("hello") {
            hello += 1;
        }
    }
    assert!(hello > 0 && hello < 60, "canary split {hello}/60");
    // Bad aliases are refused.
    assert_eq!(set_alias(&s, r#"{"version": 9}"#).await, 400);
    assert_eq!(
        set_alias(
            &s,
            r#"{"version": 2, "additional": {"version": 1, "weight": 1.5}}"#
        )
        .await,
        400
    );

    // Roll back.
    assert_eq!(set_alias(&s, r#"{"version": 1}"#).await, 200);
    assert_eq!(body(s.url("/live")).await.1, "hello from wasmgate\n");

    let (ok, out, _) = cli(&s, &["versions", "greet"]);
    assert!(ok);
    assert!(out.contains("alias live -> version 1"), "{out}");

    // Restart: versions and aliases are kept, and nothing is recompiled.
    s.kill9();
    let s = start_in(dir.path());
    assert!(
        s.wait_for_log("loaded 2 deployed versions (2 from the compiled cache)"),
        "{}",
        s.stderr_text()
    );
    assert_eq!(body(s.url("/live")).await.1, "hello from wasmgate\n");
    assert!(body(s.url("/latest")).await.1.starts_with('{'));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_uploads_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path());
    let c = reqwest::Client::new();
    let put = |bytes: Vec<u8>| {
        c.put(s.admin_url("/-/functions/greet"))
            .bearer_auth(TOKEN)
            .body(bytes)
            .send()
    };
    let resp = put(std::fs::read(common::wasm("hello")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["size"],
        std::fs::metadata(common::wasm("hello")).unwrap().len()
    );

    for junk in [
        b"not wasm".to_vec(),
        b"\0asm\x01\0\0\0".to_vec(),
        Vec::new(),
    ] {
        let resp = put(junk).await.unwrap();
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["Code"], "InvalidArgument");
    }
    // No token, wrong token.
    let resp = c
        .put(s.admin_url("/-/functions/greet"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(s.admin_url("/-/functions/greet"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let v: serde_json::Value = c
        .get(s.admin_url("/-/functions/greet"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(body(s.url("/latest")).await.0, 200);
}

/// `GET /-/functions` lists every deployed function once, by name, with its version count,
/// latest version and aliases; it needs the admin token.
#[tokio::test(flavor = "multi_thread")]
async fn the_function_list_shows_each_deployed_function_with_versions_and_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_in(dir.path());
    let c = reqwest::Client::new();
    let list = || async {
        let resp = c
            .get(s.admin_url("/-/functions"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<serde_json::Value>().await.unwrap()
    };
    assert_eq!(list().await, serde_json::json!({ "functions": [] }));
    for (name, wasm) in [("greet", "hello"), ("greet", "echo"), ("alpha", "echo")] {
        let (ok, _, err) = cli(&s, &["deploy", name, &common::wasm(wasm)]);
        assert!(ok, "{err}");
    }
    assert_eq!(set_alias(&s, r#"{"version": 1}"#).await, 200);
    let v = list().await;
    assert_eq!(
        v,
        serde_json::json!({ "functions": [
            { "name": "alpha", "versions": 1, "latest": 1, "aliases": {} },
            { "name": "greet", "versions": 2, "latest": 2,
              "aliases": v["functions"][1]["aliases"].clone() },
        ]}),
        "{v}"
    );
    assert_eq!(v["functions"][1]["aliases"]["live"]["version"], 1, "{v}");
    let resp = c.get(s.admin_url("/-/functions")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}
