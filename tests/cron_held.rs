mod common;

use std::time::Duration;

use common::{Gate, TestServer};

/// A tick that comes while the queue is full is held and retried, not lost: it is enqueued
/// (under its own tick id) as soon as room comes back, before the next tick is due.
#[tokio::test(flavor = "multi_thread")]
async fn a_cron_tick_that_finds_the_queue_full_is_held_until_there_is_room() {
    let gate = Gate::start();
    let s = TestServer::start(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"

[queue]
max_tasks = 1

[[function]]
name = "echo"
wasm = "{echo}"

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
name = "tick"
kind = "cron"
function = "echo"
schedule = "*/20 * * * * *"
"#,
    );
    let c = reqwest::Client::new();
    // The one slot goes to a task held at the gate (a tick that got there first is waited out).
    let fetch = format!("/hold/fetch?url={}", gate.url());
    let mut submitted = false;
    for _ in 0..400 {
        let resp = c
            .post(s.url(&fetch))
            .header("x-fc-invocation-type", "Async")
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            submitted = true;
            break;
        }
        assert_eq!(resp.status(), 503, "{}", resp.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(submitted, "the queue never had room for the held task");
    gate.wait_arrivals(1);
    // The next tick is at most 20 s away; the bound is three of them.
    let mut held = false;
    for _ in 0..1200 {
        if s.stderr_text().contains("held, retrying") {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "no tick was held:\n{}", s.stderr_text());
    let log = s.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("held, retrying"))
        .unwrap_or_default();
    let at = line
        .split("cron tick of ")
        .nth(1)
        .and_then(|r| r.split(" held").next())
        .unwrap_or_else(|| panic!("no tick time in {line}"));
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
    let id = format!("cron-tick-{}", at.timestamp());
    assert!(
        !log.contains("dropped"),
        "the tick was dropped while held:\n{log}"
    );
    gate.open();
    let done = common::wait_tasks(&s, "tick", "Succeeded", 1).await;
    assert!(
        done.iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "Succeeded"),
        "the held tick {id} never ran: {done:?}\n{}",
        s.stderr_text()
    );
    let task = done.iter().find(|t| t["id"] == id.as_str()).unwrap();
    let scheduled = common::echoed_header(&common::echoed(task), "x-fc-scheduled-time")
        .expect("a scheduled time");
    let scheduled = chrono::DateTime::parse_from_rfc3339(&scheduled).unwrap();
    assert_eq!(scheduled, at, "the tick is on its scheduled second");
    assert_eq!(scheduled.timestamp_subsec_nanos(), 0, "{scheduled}");
}
