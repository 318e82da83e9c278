//! The README's quick start against the example config (`wasmgate.toml`, on free ports in a
//! temporary directory): a clean start logs no warning, and every line works twice in a row.

mod common;

use std::time::Duration;

use common::{TestServer, client};

/// The example config with free ports and absolute paths.
fn example() -> String {
    let root = common::root();
    std::fs::read_to_string(root.join("wasmgate.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace("\"functions/", &format!("\"{}/functions/", root.display()))
        .replace("\"certs/", &format!("\"{}/certs/", root.display()))
}

fn wasmgate(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "wasmgate {args:?}: {out:?}");
    out
}

#[tokio::test]
async fn the_quick_start_works_twice_and_starts_without_warnings() {
    common::functions_dir();
    let s = TestServer::start(&example());
    // Start-up warnings are logged before the listeners open; the cron source's first state
    // line comes after, so once it is in, every start-up line is.
    assert!(s.wait_for_log("\"trigger\":\"heartbeat\""));
    let log = s.stderr_text();
    assert!(
        !log.contains("\"level\":\"WARN\""),
        "a clean start of the example warns:\n{log}"
    );
    let c = client();
    let ca = common::certs().join("ca.pem").display().to_string();
    let admin = s.admin.clone().unwrap();
    for run in 1..=2 {
        let get = |path: &str| c.get(s.url(path)).send();
        assert_eq!(get("/hello").await.unwrap().status(), 200);
        assert_eq!(get("/echo/a/b?x=1").await.unwrap().status(), 200);
        assert_eq!(get("/probe/loop").await.unwrap().status(), 504);
        assert_eq!(get("/internal/echo").await.unwrap().status(), 403);
        let internal = format!("{}/internal/echo", s.internal.as_deref().unwrap());
        assert_eq!(c.get(internal).send().await.unwrap().status(), 200);
        let job = format!("job_{run}_{}", std::process::id());
        let r = c
            .post(s.url("/jobs"))
            .header("X-Fc-Invocation-Type", "Async")
            .header("X-Fc-Async-Task-Id", &job)
            .body("work")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "run {run}");
        let mut state = String::new();
        for _ in 0..400 {
            let t: serde_json::Value = c
                .get(s.admin_url(&format!("/-/tasks/{job}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            state = t["state"].as_str().unwrap_or("").to_string();
            if state == "Succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(state, "Succeeded");
        let before = get("/greeter").await.unwrap().status();
        assert_eq!(before, if run == 1 { 404 } else { 200 }, "run {run}");
        let hello = common::wasm("hello");
        let out = wasmgate(&[
            "deploy", "greeter", &hello, "--alias", "live", "--admin", &admin, "--cacert", &ca,
        ]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("greeter version {run}")),
            "{out:?}"
        );
        assert_eq!(get("/greeter").await.unwrap().status(), 200);
        wasmgate(&["versions", "greeter", "--admin", &admin, "--cacert", &ca]);
        wasmgate(&[
            "event",
            &s.url("/events"),
            "order.created",
            "--data",
            r#"{"order":7}"#,
            "--cacert",
            &ca,
        ]);
        assert_eq!(get("/function/echo/x").await.unwrap().status(), 200);
        // The two counters share a bucket: each increment is seen by the other.
        let hits = |t: String| {
            t.rsplit(": ")
                .next()
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let rust = hits(get("/counter").await.unwrap().text().await.unwrap());
        let python = hits(get("/python-counter").await.unwrap().text().await.unwrap());
        assert_eq!(python, rust + 1, "run {run}");
        wasmgate(&[
            "kv", "get", "counters", "hits", "--admin", &admin, "--cacert", &ca,
        ]);
        let key = common::root().join("tests/fixtures/jwt-rsa.pem");
        let out = wasmgate(&[
            "jwt",
            "--key",
            key.to_str().unwrap(),
            "--kid",
            "rsa-1",
            "--sub",
            "alice",
            "--iss",
            "https://issuer.example",
            "--aud",
            "wasmgate",
        ]);
        let token = String::from_utf8(out.stdout).unwrap();
        let r = c
            .get(s.url("/jwt/hello"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
