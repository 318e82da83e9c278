//! The event API (SPEC 8.3), routes by function name (8.4) and the client commands (8.5),
//! against the real binary over TLS.

mod common;

use std::time::Duration;

use common::{Receiver, TestServer, client, echoed_header, error_body, tasks};
use serde_json::{Value, json};

fn config(receiver: &Receiver, cb_status_path: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
tls = {{ cert = "{{certs}}/localhost.pem", key = "{{certs}}/localhost-key.pem" }}

[[function]]
name = "mailer"
wasm = "{{echo}}"
events = ["sent-email", "order.*"]

[[function]]
name = "audit"
wasm = "{{echo}}"
events = ["order.*"]

[[function]]
name = "failing"
wasm = "{{probe}}"
events = ["broken"]
env = {{ PROBE_STATUS = "404" }}

[[function]]
name = "trapping"
wasm = "{{probe}}"
events = ["checked"]
env = {{ PROBE_TRAP = "1" }}

[[function]]
name = "checker"
wasm = "{{echo}}"
events = ["checked"]

[[function]]
name = "hello"
wasm = "{{hello}}"

[[function]]
name = "echo"
wasm = "{{echo}}"
namespace = "shop"

[[trigger]]
name = "events"
kind = "event"
path = "/v1/api/shop/eventing/queue"
async = {{ on_success = "{ok}", on_failure = "{fail}", callback_hosts = ["127.0.0.1"], max_retries = 1, max_event_age_s = 600 }}

[[trigger]]
name = "guarded-events"
kind = "event"
path = "/guarded-events"
auth = "bearer"
bearer = {{ tokens = [{{ name = "ci", token = "0123456789abcdef0123456789abcdef" }}] }}
rate_limit = {{ per_second = 1, burst = 2, key = "trigger" }}

[[trigger]]
name = "signed"
path = "/signed"
function = "hello"
auth = "signature"
signature = {{ keys = [{{ id = "AK1", secret = "s3cret" }}] }}

[[trigger]]
name = "openfaas"
path = "/function/{{function}}"
async_path = "/async-function/{{function}}"
functions = ["hello", "echo.shop"]

[[trigger]]
name = "spaces"
path = "/spaces/{{namespace}}/functions/{{function}}/invoke"
async_path = "/spaces/{{namespace}}/functions/{{function}}/async-invoke"
functions = ["*"]
async = {{ on_success = "{ok}", callback_hosts = ["127.0.0.1"] }}
"#,
        ok = receiver.url("/ok"),
        fail = receiver.url(cb_status_path),
    )
}

async fn publish(s: &TestServer, body: Value) -> reqwest::Response {
    client()
        .post(s.url("/v1/api/shop/eventing/queue"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The CloudEvent a subscriber received, from its success callback (the echo function
/// answers with what it saw), and the function's name.
fn delivered(receiver: &Receiver) -> (String, Value, Value) {
    let got = receiver
        .next(Duration::from_secs(30))
        .expect("a delivery callback");
    let echo: Value = serde_json::from_slice(&got.body).expect("echo JSON");
    let ce: Value = serde_json::from_str(echo["body"].as_str().unwrap()).expect("a CloudEvent");
    (
        got.header("x-function-name").unwrap_or("").to_string(),
        echo,
        ce,
    )
}

#[tokio::test]
async fn async_events_reach_every_subscriber_as_cloudevents() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let r = publish(
        &s,
        json!({"type": "order.created", "data": {"order": 7}, "id": "order-7"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "order-7");
    let mut ids: Vec<&str> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["evt-order-7=audit", "evt-order-7=mailer"]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (function, echo, ce) = delivered(&receiver);
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/");
        assert_eq!(
            echoed_header(&echo, "content-type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            echoed_header(&echo, "x-fc-trigger-type").as_deref(),
            Some("event")
        );
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], "order-7");
        assert_eq!(ce["type"], "order.created");
        assert!(ce["source"].as_str().unwrap().starts_with("wasmgate://"));
        chrono::DateTime::parse_from_rfc3339(ce["time"].as_str().unwrap()).expect("RFC 3339");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["data"], json!({"order": 7}));
        seen.push(function);
    }
    seen.sort();
    assert_eq!(seen, ["audit", "mailer"]);
    // The same id again is a conflict, and nothing new is queued.
    let again = publish(&s, json!({"type": "order.created", "id": "order-7"})).await;
    assert_eq!(again.status(), 409);
    assert_eq!(error_body(again).await["Code"], "TaskAlreadyExists");
    assert_eq!(tasks(&s, "events").await.len(), 2);
}

#[tokio::test]
async fn structured_and_binary_cloudevents_are_accepted_as_input() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let r = client()
        .post(s.url("/v1/api/shop/eventing/queue"))
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "type": "sent-email", "id": "ce-1",
                   "source": "/crm", "data": {"to": "a@b"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (function, _, ce) = delivered(&receiver);
    assert_eq!(function, "mailer");
    assert_eq!(
        (&ce["id"], &ce["data"]),
        (&json!("ce-1"), &json!({"to": "a@b"}))
    );
    let r = client()
        .post(s.url("/v1/api/shop/eventing/queue"))
        .header("ce-type", "sent-email")
        .header("ce-id", "ce-2")
        .header("ce-source", "/crm")
        .header("content-type", "application/json")
        .body(r#"{"to":"c@d"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, _, ce) = delivered(&receiver);
    assert_eq!(
        (&ce["id"], &ce["data"]),
        (&json!("ce-2"), &json!({"to": "c@d"}))
    );
}

#[tokio::test]
async fn synchronous_events_answer_with_the_subscribers_responses() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    // One subscriber: its own response.
    let r = publish(
        &s,
        json!({"type": "sent-email", "data": "hi", "isSynchronous": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let ce: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(ce["data"], "hi");
    // Several: one entry each.
    let r = publish(&s, json!({"type": "order.paid", "isSynchronous": true})).await;
    assert_eq!(r.status(), 200);
    let all: Value = r.json().await.unwrap();
    let mut names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["status"], 200);
            e["function"].as_str().unwrap()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["audit", "mailer"]);
    // A subscriber that fails is named, with its status and public message, beside the
    // others' answers.
    let r = publish(&s, json!({"type": "checked", "isSynchronous": true})).await;
    assert_eq!(r.status(), 200);
    let all: Value = r.json().await.unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let failed = all.iter().find(|e| e["function"] == "trapping").unwrap();
    assert_eq!(failed["status"], 502, "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("trap"),
        "{failed}"
    );
    assert!(failed.get("body").is_none(), "{failed}");
    let ok = all.iter().find(|e| e["function"] == "checker").unwrap();
    assert_eq!(ok["status"], 200, "{ok}");
    // Nobody listens.
    let r = publish(&s, json!({"type": "nobody", "isSynchronous": true})).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["Code"], "NoSubscriber");
    // Nothing was queued.
    assert!(tasks(&s, "events").await.is_empty());
}

#[tokio::test]
async fn delayed_events_wait_and_failed_deliveries_are_retried() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let r = publish(
        &s,
        json!({"type": "sent-email", "delay": 30, "id": "later"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let t = &tasks(&s, "events").await[0];
    assert_eq!(t["state"], "Enqueued");
    let wait = t["due_ms"].as_i64().unwrap() - t["created_ms"].as_i64().unwrap();
    assert!(
        (29_000..=31_000).contains(&wait),
        "due {wait} ms after creation"
    );
    // A subscriber answering outside 2xx fails the attempt and is retried (max_retries 1).
    let r = publish(&s, json!({"type": "broken", "data": null, "id": "b-1"})).await;
    assert_eq!(r.status(), 202);
    let failure = receiver
        .next(Duration::from_secs(30))
        .expect("the failure callback");
    assert_eq!(failure.path, "/fail");
    let t: Value = client()
        .get(s.admin_url("/-/tasks/evt-b-1=failing?trigger=events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["state"], "Failed", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
}

#[tokio::test]
async fn every_bad_event_field_is_a_400_that_names_it() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    for (body, field) in [
        (json!({"data": 1}), "type"),
        (json!({"type": 5}), "type"),
        (json!({"type": "x", "delay": -1}), "delay"),
        (json!({"type": "x", "delay": 601}), "delay"),
        // Finding 10 of the abuse review: these overflowed the time arithmetic and panicked.
        (json!({"type": "x", "delay": 1e13}), "delay"),
        (json!({"type": "x", "delay": 1.7e308}), "delay"),
        (
            json!({"type": "x", "timestamp": 8210298412799999_i64, "delay": 1}),
            "timestamp",
        ),
        (json!({"type": "x", "timestamp": "yesterday"}), "timestamp"),
        (
            json!({"type": "x", "isSynchronous": true, "delay": 1}),
            "delay",
        ),
        (json!({"type": "x", "isSynchronous": "no"}), "isSynchronous"),
        (json!({"type": "x", "id": "has space"}), "id"),
    ] {
        let r = publish(&s, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let e = error_body(r).await;
        assert_eq!(e["Code"], "InvalidArgument");
        assert!(
            e["Message"]
                .as_str()
                .unwrap()
                .contains(&format!("field `{field}`")),
            "{body}: {e}"
        );
    }
    let r = client()
        .post(s.url("/v1/api/shop/eventing/queue"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        error_body(r).await["Message"]
            .as_str()
            .unwrap()
            .contains("field `body`")
    );
    // The event API is a POST route like any trigger's: other methods are refused.
    let r = client()
        .get(s.url("/v1/api/shop/eventing/queue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(tasks(&s, "events").await.is_empty());
}

#[tokio::test]
async fn routes_by_function_name_expose_only_listed_functions() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let c = client();
    let r = c.get(s.url("/function/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The rest of the path, at any depth, is the function's.
    let r = c
        .get(s.url("/spaces/shop/functions/echo/invoke/a/b/c?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["path"], "/a/b/c?x=1");
    assert_eq!(
        echoed_header(&echo, "x-fc-function-name").as_deref(),
        Some("echo.shop")
    );
    assert_eq!(
        echoed_header(&echo, "x-fc-original-path").as_deref(),
        Some("/spaces/shop/functions/echo/invoke/a/b/c?x=1")
    );
    let r = c
        .get(s.url("/function/echo.shop/deep/er"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "/deep/er");
    // Not listed by the trigger: hidden, even though it exists.
    let r = c.get(s.url("/function/mailer")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["Code"], "FunctionNotFound");
    // Listed by `*` but not deployed anywhere.
    let r = c
        .get(s.url("/spaces/default/functions/ghost/invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["Code"], "FunctionNotFound");
    // The async path: async without the header, POST only.
    let r = c
        .post(s.url("/spaces/shop/functions/echo/async-invoke/job"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-fc-async-task-id"]
        .to_str()
        .unwrap()
        .to_string();
    let got = receiver.next(Duration::from_secs(30)).expect("callback");
    assert_eq!(got.header("x-fc-async-task-id"), Some(id.as_str()));
    let echo: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        (&echo["path"], &echo["body"]),
        (&json!("/job"), &json!("payload"))
    );
    let r = c
        .get(s.url("/spaces/shop/functions/echo/async-invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.post(s.url("/async-function/hello")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    // A path under the template's prefix that fits neither template.
    let r = c.get(s.url("/spaces/shop/other")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_body(r).await["Code"], "TriggerNotFound");
}

#[tokio::test]
async fn the_event_api_passes_the_same_pipeline_as_any_trigger() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let url = s.url("/guarded-events");
    let event = json!({"type": "sent-email"});
    let r = client().post(&url).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(tasks(&s, "guarded-events").await.is_empty());
    let token = "Bearer 0123456789abcdef0123456789abcdef";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = client()
            .post(&url)
            .header("authorization", token)
            .json(&event)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // The rate limit (burst 2) applies before anything is queued.
    assert_eq!(&statuses[..2], [202, 202]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(tasks(&s, "guarded-events").await.len(), accepted);
    // Limits: an event over max_async_body_bytes is refused.
    let big = json!({"type": "sent-email", "data": "x".repeat(200 * 1024)});
    let r = client()
        .post(s.url("/v1/api/shop/eventing/queue"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_body(r).await["Code"], "EntityTooLarge");
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .output()
        .expect("run wasmgate")
}

#[tokio::test]
async fn invoke_and_event_commands_talk_to_a_running_gateway() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let ca = common::certs().join("ca.pem").display().to_string();
    let out = cli(&[
        "invoke",
        &s.url("/function/echo.shop/x"),
        "-d",
        "body!",
        "-H",
        "X-Custom: 1",
        "--cacert",
        &ca,
    ]);
    assert!(out.status.success(), "{out:?}");
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&echo["method"], &echo["body"]),
        (&json!("POST"), &json!("body!"))
    );
    assert_eq!(echoed_header(&echo, "x-custom").as_deref(), Some("1"));
    // -i shows the status line and headers.
    let out = cli(&["invoke", "-i", &s.url("/function/hello"), "--cacert", &ca]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/") && text.contains(" 200\n"),
        "{text}"
    );
    assert!(text.contains("x-fc-request-id: "), "{text}");
    // Async with a task id.
    let out = cli(&[
        "invoke",
        &s.url("/spaces/shop/functions/echo/invoke"),
        "--async",
        "--task-id",
        "cli_job_1",
        "--cacert",
        &ca,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted: task cli_job_1"));
    // Signed with --sign; unsigned is refused.
    let signed = std::process::Command::new(common::bin())
        .args([
            "invoke",
            &s.url("/signed"),
            "--sign",
            "AK1",
            "--secret-env",
            "AK1_SECRET",
        ])
        .args(["--cacert", &ca])
        .env("AK1_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    let out = cli(&["invoke", &s.url("/signed"), "--cacert", &ca]);
    assert!(!out.status.success());
    // Unsigned: no Authorization and no date, the signature trigger's 400.
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["Code"], "MissingRequiredHeader", "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );
    // A gateway error: non-zero exit, the error body printed.
    let out = cli(&["invoke", &s.url("/function/mailer"), "--cacert", &ca]);
    assert!(!out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["Code"], "FunctionNotFound");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // `event`: async, then sync.
    let url = s.url("/v1/api/shop/eventing/queue");
    let out = cli(&[
        "event",
        &url,
        "sent-email",
        "--data",
        r#"{"to":"x"}"#,
        "--id",
        "cli-1",
        "--cacert",
        &ca,
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"id": "cli-1", "tasks": ["evt-cli-1=mailer"]}));
    let out = cli(&["event", &url, "sent-email", "--sync", "--cacert", &ca]);
    assert!(out.status.success(), "{out:?}");
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["method"], "POST");
    let out = cli(&["event", &url, "nobody", "--sync", "--cacert", &ca]);
    assert!(!out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["Code"], "NoSubscriber");
}

/// An asynchronous event that no function subscribes to is accepted, not refused: 202 with
/// its id and an empty task list (README, event API), and nothing is queued.
#[tokio::test]
async fn an_async_event_nobody_subscribes_to_is_accepted_with_no_tasks() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let r = publish(&s, json!({"type": "nobody.listens", "id": "lonely-1"})).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"id": "lonely-1", "tasks": []}));
    // Without an id the gateway makes one, and still queues nothing.
    let r = publish(&s, json!({"type": "nobody.listens"})).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert_eq!(body["tasks"], json!([]), "{body}");
    assert!(tasks(&s, "events").await.is_empty());
}

/// Finding 12 of the abuse review: a task id is made of the event id and the function's
/// name, and two different pairs must never give the same one. With `-` between them,
/// event `p-a` for function `x` and event `p` for function `a-x` were both `evt-p-a-x`: the
/// second publish found the first's task and one subscriber never got its event.
#[tokio::test]
async fn event_task_ids_never_collide_across_event_ids_and_function_names() {
    let s = TestServer::start(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"

[[function]]
name = "x"
wasm = "{echo}"
events = ["t"]

[[function]]
name = "a-x"
wasm = "{echo}"
events = ["t"]

[[trigger]]
name = "events"
kind = "event"
path = "/events"
async = { max_event_age_s = 3600 }
"#,
    );
    let mut all = Vec::new();
    for id in ["p-a", "p"] {
        // Delayed, so both stay queued while the test reads them back.
        let r = client()
            .post(s.url("/events"))
            .json(&json!({"type": "t", "id": id, "delay": 600}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{id}");
        let body: Value = r.json().await.unwrap();
        let ids = body["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(ids.len(), 2, "{id}: {body}");
        all.extend(
            ids.into_iter()
                .map(|t| t.as_str().unwrap_or("").to_string()),
        );
    }
    all.sort();
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{all:?}");
    let queued: Vec<String> = tasks(&s, "events")
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(queued.len(), 4, "{queued:?}");
}

/// `X-Fc-Event-Id` reaches the subscriber: the published id, or the one the gateway made
/// (as answered in the 202), on an asynchronous delivery, and the published id on a
/// synchronous one.
#[tokio::test]
async fn the_event_id_reaches_the_function_in_x_fc_event_id() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&config(&receiver, "/fail"));
    let r = publish(&s, json!({"type": "sent-email", "id": "hdr-7"})).await;
    assert_eq!(r.status(), 202);
    let (function, echo, ce) = delivered(&receiver);
    assert_eq!(function, "mailer");
    assert_eq!(ce["id"], "hdr-7");
    assert_eq!(
        echoed_header(&echo, "x-fc-event-id").as_deref(),
        Some("hdr-7"),
        "{echo}"
    );
    let r = publish(&s, json!({"type": "sent-email"})).await;
    assert_eq!(r.status(), 202);
    let made: Value = r.json().await.unwrap();
    let made = made["id"].as_str().expect("the event's id").to_string();
    let (_, echo, _) = delivered(&receiver);
    assert_eq!(echoed_header(&echo, "x-fc-event-id"), Some(made), "{echo}");
    let r = publish(
        &s,
        json!({"type": "sent-email", "id": "sync-7", "isSynchronous": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(
        echoed_header(&echo, "x-fc-event-id").as_deref(),
        Some("sync-7"),
        "{echo}"
    );
}

/// A publish the queue stops half-way: `[queue] max_tasks = 2` with one task held running
/// at a gate and one worker (so the first subscriber's task stays queued), an event for two
/// subscribers queues the first subscriber's task and is answered with the queue's 503
/// `ResourceThrottled` (with `Retry-After`); the second subscriber has no task. A retry of
/// the same event id while the queue is still full is the same 503 and does not queue the
/// first task again; once there is room a retry completes the set: 202 naming both tasks,
/// with the first one run once, and a further repeat is 409 (README, event API: "if an
/// earlier publish stopped half-way, the repeat completes the missing tasks and answers
/// 202").
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_the_queue_stops_half_way_is_completed_by_a_retry_without_duplicates() {
    let gate = common::Gate::start();
    let s = TestServer::start(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
tls = { cert = "{certs}/localhost.pem", key = "{certs}/localhost-key.pem" }

[queue]
max_tasks = 2
workers = 1

[[function]]
name = "first"
wasm = "{echo}"
events = ["split"]

[[function]]
name = "second"
wasm = "{echo}"
events = ["split"]

[[function]]
name = "probe"
wasm = "{probe}"
timeout_ms = 60000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "hold"
function = "probe"
async = { max_retries = 0 }

[[trigger]]
name = "events"
kind = "event"
path = "/events"
"#,
    );
    let c = client();
    let send = |body: Value| c.post(s.url("/events")).json(&body).send();
    // The one worker, and one of the two places in the queue, go to a task held at the gate.
    let r = c
        .post(s.url(&format!("/hold/fetch?url={}", gate.url())))
        .header("x-fc-invocation-type", "Async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    gate.wait_arrivals(1);

    let event = json!({"type": "split", "id": "split-1", "data": {"n": 1}});
    let r = send(event.clone()).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
    let e = error_body(r).await;
    assert_eq!(e["Code"], "ResourceThrottled", "{e}");
    // What was queued: the first subscriber's task, and only it.
    let queued = tasks(&s, "events").await;
    let ids: Vec<&str> = queued.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["evt-split-1=first"], "{queued:?}");
    // Queued, not run: the one worker is at the gate. (Its state may read `Running`: a
    // task handed straight to the workers is stored Running before a worker is free.)
    assert_eq!(queued[0]["attempts"], 0, "{queued:?}");
    assert!(queued[0]["finished_ms"].is_null(), "{queued:?}");
    let r = c
        .get(s.admin_url("/-/tasks/evt-split-1=second?trigger=events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A retry while the queue is still full: refused the same way, nothing queued twice.
    let r = send(event.clone()).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_body(r).await["Code"], "ResourceThrottled");
    let queued = tasks(&s, "events").await;
    assert_eq!(queued.len(), 1, "{queued:?}");

    // Room again: the held task ends, the first subscriber's task runs.
    gate.open();
    common::wait_tasks(&s, "hold", "Succeeded", 1).await;
    common::wait_tasks(&s, "events", "Succeeded", 1).await;
    let r = send(event.clone()).await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"id": "split-1", "tasks": ["evt-split-1=first", "evt-split-1=second"]})
    );
    let done = common::wait_tasks(&s, "events", "Succeeded", 2).await;
    assert_eq!(done.len(), 2, "{done:?}");
    for t in &done {
        assert_eq!(t["attempts"], 1, "each subscriber ran once: {t}");
    }
    let mut ids: Vec<&str> = done.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["evt-split-1=first", "evt-split-1=second"]);
    // The set is complete: a repeat is now a conflict.
    let r = send(event).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_body(r).await["Code"], "TaskAlreadyExists");
    assert_eq!(tasks(&s, "events").await.len(), 2);
}
