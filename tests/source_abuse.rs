//! The broker doors under abuse, against the real binary and real brokers (nats-server and
//! mosquitto from Debian): NATS reply subjects that name the gateway's own streams and
//! buckets, MQTT packets over the configured limit, and a QoS 0 flood at a queue that
//! cannot take it. Memory is read from `/proc/<pid>/status` (peak RSS, reset through
//! `/proc/<pid>/clear_refs` first); every wait is a bounded loop.

mod common;

use std::time::Duration;

use common::{Broker, Gate, Receiver, TestServer, echoed_header, tasks, wait_source, wait_tasks};
use futures::StreamExt;

const SERVER: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
"#;

/// What the server logs when it refuses a reply subject.
const REFUSED_REPLY: &str = "reply subject refused";

/// Everything that reaches the spy's subscriptions within `bound` (a bound against a
/// broken build, not a timing assertion).
async fn seen(subs: &mut [async_nats::Subscriber], bound: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    for s in subs.iter_mut() {
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, s.next()).await {
            let subject: String = m.subject.chars().take(80).collect();
            out.push(format!(
                "{subject} <- {}",
                String::from_utf8_lossy(&m.payload)
            ));
        }
    }
    out
}

fn nats_config(port: u16, extra: &str) -> String {
    format!(
        r#"{SERVER}
[[function]]
name = "hello"
wasm = "{{hello}}"

[[trigger]]
name = "orders"
kind = "nats"
broker = "nats://127.0.0.1:{port}"
topics = ["orders.>"]
function = "hello"
{extra}
"#
    )
}

#[tokio::test]
async fn nats_replies_go_only_to_inbox_subjects_never_into_the_gateways_own() {
    let broker = Broker::nats();
    let s = TestServer::start(&nats_config(broker.port, ""));
    wait_source(&s, "orders", "running").await;
    let watch = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    let mut subs = Vec::new();
    for subject in [
        "$KV.>",
        "$JS.>",
        "$O.>",
        "wasmgate.>",
        "evil.>",
        "orders.loop",
    ] {
        subs.push(watch.subscribe(subject).await.unwrap());
    }
    watch.flush().await.unwrap();

    let long = format!("evil.{}", "A".repeat(3000));
    let forged = [
        "$KV.wasmgate_tasks.orders.forged",
        "$KV.wasmgate_registry.hello",
        "$JS.API.STREAM.DELETE.WASMGATE_TASKS",
        "$O.wasmgate_components.x",
        "wasmgate.tasks.orders",
        "evil.sink",
        // The trigger's own subject: a reply there would be a message to itself.
        "orders.loop",
        long.as_str(),
    ];
    let sender = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    for reply in forged {
        sender
            .publish_with_reply("orders.new", reply.to_string(), "o".into())
            .await
            .unwrap();
    }
    sender.flush().await.unwrap();
    // An ordinary request (an `_INBOX.` reply subject) is still answered.
    let answer = sender
        .request("orders.ok", "ok".into())
        .await
        .expect("a request with an inbox is answered");
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(
        answer["tasks"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );

    let logged = s.wait_for_count(REFUSED_REPLY, forged.len());
    let leaked = seen(&mut subs, Duration::from_millis(500)).await;
    assert!(
        leaked.is_empty(),
        "the gateway published replies into forged subjects: {leaked:?}"
    );
    assert!(logged, "refusals not logged:\n{}", s.stderr_text());
    // The messages themselves were handled as usual: one task each.
    let all = tasks(&s, "orders").await;
    assert_eq!(all.len(), forged.len() + 1, "{all:?}");
    // The attacker's text is not echoed at length.
    let log = s.stderr_text();
    assert!(!log.contains(&"A".repeat(100)), "long subject echoed");
}

#[tokio::test]
async fn a_nats_reply_prefix_can_be_configured_and_other_inboxes_are_refused() {
    let broker = Broker::nats();
    let s = TestServer::start(&nats_config(broker.port, r#"reply_prefix = "replies.""#));
    wait_source(&s, "orders", "running").await;
    let watch = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    let mut subs = vec![watch.subscribe("_INBOX.>").await.unwrap()];
    watch.flush().await.unwrap();
    let custom = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("replies")
        .connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    let answer = custom
        .request("orders.custom", "x".into())
        .await
        .expect("a reply under reply_prefix is sent");
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(
        answer["tasks"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    // The default inbox prefix is not the configured one: refused.
    custom
        .publish_with_reply("orders.default", "_INBOX.abc.def".to_string(), "y".into())
        .await
        .unwrap();
    custom.flush().await.unwrap();
    assert!(
        s.wait_for_log(REFUSED_REPLY),
        "no refusal:\n{}",
        s.stderr_text()
    );
    let leaked = seen(&mut subs, Duration::from_millis(300)).await;
    assert!(leaked.is_empty(), "{leaked:?}");
    assert_eq!(tasks(&s, "orders").await.len(), 2);
}

#[test]
fn reply_prefix_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let run = |kind: &str, line: &str| {
        let config = dir.path().join("w.toml");
        std::fs::write(
            &config,
            common::render(&format!(
                r#"[server]
listen = "127.0.0.1:0"
[[function]]
name = "hello"
wasm = "{{hello}}"
[[trigger]]
name = "t"
kind = "{kind}"
broker = "{kind}://127.0.0.1:1"
topics = ["a"]
function = "hello"
{line}
"#
            )),
        )
        .unwrap();
        std::process::Command::new(common::bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    for ok in [
        r#"reply_prefix = "replies.""#,
        r#"reply_prefix = "_INBOX.edge.""#,
    ] {
        let out = run("nats", ok);
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (bad, why) in [
        (r#"reply_prefix = "$JS.""#, "`$`"),
        (r#"reply_prefix = "$KV.wasmgate_tasks.""#, "`$`"),
        (r#"reply_prefix = "wasmgate.""#, "wasmgate."),
        (r#"reply_prefix = "_INBOX""#, "end with `.`"),
        (r#"reply_prefix = "a.*.""#, "wildcard"),
        (r#"reply_prefix = "a b.""#, "space"),
        (r#"reply_prefix = """#, "end with `.`"),
    ] {
        let out = run("nats", bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            err.contains("reply_prefix") && err.contains(why),
            "{bad}: {err}"
        );
    }
    let out = run("mqtt", r#"reply_prefix = "replies.""#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`reply_prefix` does not apply to a mqtt trigger"),
        "{err}"
    );
}

/// Resets the peak RSS of `pid` to its current RSS; gives the current RSS in KiB.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs (Linux 4.0+)");
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Peak RSS of `pid` in KiB since the last [`reset_peak`].
fn peak(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Publishes `n` messages of `size` bytes at `qos` (0 or 1) to `topic` with an MQTT client
/// of the test's own, and returns once all are written to the broker.
async fn mqtt_publish(port: u16, topic: &str, n: usize, size: usize, qos: u8) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let id = format!("pub-{}-{}", std::process::id(), rand_suffix());
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_max_packet_size(size + 4096, size + 4096);
    let (client, mut events) = AsyncClient::new(options, 16);
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    // The connection runs beside the publishing; it reports each broker acknowledgement.
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let connection = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acks.send(());
                }
                Ok(_) => {}
                Err(e) => panic!("the test's MQTT publisher failed: {e}"),
            }
        }
    });
    for _ in 0..n {
        client
            .publish_bytes(topic, qos, false, payload.clone())
            .await
            .expect("publish");
    }
    if qos == QoS::AtLeastOnce {
        for _ in 0..n {
            acked.recv().await.expect("a broker acknowledgement");
        }
    }
    client.disconnect().await.expect("disconnect");
    connection.await.expect("the publisher's connection");
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// Waits (bounded) until trigger `name` has at least `n` tasks; gives the count.
async fn wait_task_count(s: &TestServer, name: &str, n: usize) -> usize {
    let mut got = 0;
    for _ in 0..400 {
        got = tasks(s, name).await.len();
        if got >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    got
}

#[tokio::test]
async fn an_mqtt_packet_over_the_limit_is_refused_from_its_header_and_jams_nothing() {
    // The limit is max_async_body_bytes and the topic (64 KiB + 64 KiB here): a 12 MiB
    // packet, under the 16 MiB that used to be the floor of the client's limit, is refused
    // from its header. A persistent session sends it again at the next connection; that
    // one connection reads it to drop it (and acknowledge it, with QoS 1), so neither QoS
    // level is blocked behind it, and later messages go through.
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[limits]
max_async_body_bytes = 65536

[[function]]
name = "hello"
wasm = "{{hello}}"

[[trigger]]
name = "hello"
path = "/hello"
function = "hello"

[[trigger]]
name = "big0"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
qos = 0
topics = ["big0/#"]
function = "hello"

[[trigger]]
name = "big1"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
qos = 1
topics = ["big1/#"]
function = "hello"
"#,
        port = broker.port
    ));
    wait_source(&s, "big0", "running").await;
    wait_source(&s, "big1", "running").await;
    mqtt_publish(broker.port, "big0/x", 1, 12 << 20, 0).await;
    mqtt_publish(broker.port, "big1/x", 1, 12 << 20, 1).await;
    assert!(
        s.wait_for_count("over this trigger's limit", 2),
        "no refusal from the header:\n{}",
        s.stderr_text()
    );
    // The QoS 1 one comes again at the next connection and is dropped once read, not
    // enqueued. The QoS 0 one was delivered at most once, to the connection that was closed
    // on its header: a broker may or may not send it again.
    let mut dropped = false;
    for _ in 0..400 {
        dropped = s.stderr_text().lines().any(|l| {
            l.contains("bytes is over max_async_body_bytes (65536); dropped")
                && l.contains("big1/x")
        });
        if dropped {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dropped,
        "the oversized QoS 1 message was not dropped:\n{}",
        s.stderr_text()
    );
    for (trigger, qos) in [("big0", 0), ("big1", 1)] {
        // Not blocked: later small messages arrive (QoS 0 ones only while connected, so
        // each try waits for the trigger to be running and publishes again).
        let mut got = 0;
        for _ in 0..10 {
            wait_source(&s, trigger, "running").await;
            mqtt_publish(broker.port, &format!("{trigger}/x"), 1, 16, qos).await;
            got = wait_task_count(&s, trigger, 1).await;
            if got > 0 {
                break;
            }
        }
        assert!(got > 0, "{trigger}: blocked behind the large message");
        let state = wait_source(&s, trigger, "running").await;
        // Counted as dropped once read and dropped: the QoS 1 message, which comes again.
        if qos == 1 {
            assert!(state["dropped"].as_u64() >= Some(1), "{state}");
        }
    }
    // Dropped for good: no refusal comes back while more messages flow.
    let refusals = s.stderr_text().matches("over this trigger's limit").count();
    mqtt_publish(broker.port, "big1/x", 1, 16, 1).await;
    assert!(wait_task_count(&s, "big1", 2).await >= 2);
    wait_source(&s, "big1", "running").await;
    assert_eq!(
        s.stderr_text().matches("over this trigger's limit").count(),
        refusals,
        "the broker keeps sending the large message"
    );
    let r = common::client().get(s.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_qos0_flood_at_a_full_queue_holds_bounded_memory() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[queue]
max_tasks = 2

[[function]]
name = "probe"
wasm = "{{probe}}"
env = {{ PROBE_STATUS = "500" }}

[[trigger]]
name = "probe"
path = "/probe"
function = "probe"

[[trigger]]
name = "flood"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
qos = 0
topics = ["flood/#"]
function = "probe"
async = {{ max_retries = 10 }}
"#,
        port = broker.port
    ));
    wait_source(&s, "flood", "running").await;
    // Warm up: the function runs once, so its instance is part of the baseline.
    let r = common::client().get(s.url("/probe")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let base = reset_peak(s.pid());
    // 300 MB of messages at a queue that holds two tasks, which keep failing.
    const LIMIT_KIB: u64 = 64 * 1024;
    mqtt_publish(broker.port, "flood/x", 3000, 100 * 1024, 0).await;
    let mut grown = 0;
    for _ in 0..200 {
        grown = peak(s.pid()).saturating_sub(base);
        if grown >= LIMIT_KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("flood: peak RSS grew by {grown} KiB");
    assert!(
        grown < LIMIT_KIB,
        "the MQTT intake buffered the flood: peak RSS grew by {grown} KiB"
    );
    assert!(
        s.wait_for_log("holding a message: "),
        "the flood never met the full queue:\n{}",
        s.stderr_text()
    );
    // The node is still up and serving.
    let r = common::client().get(s.url("/probe")).send().await.unwrap();
    assert_eq!(r.status(), 500);
}

#[tokio::test]
async fn a_qos1_burst_with_an_unlimited_broker_window_is_all_committed() {
    // The broker sends every message without waiting for acknowledgements: the bounded
    // intake must still never wait on a worker whose acknowledgements wait for it.
    let broker = Broker::mosquitto(
        "allow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0",
        &[],
    );
    let s = TestServer::start(&format!(
        r#"{SERVER}
[[function]]
name = "hello"
wasm = "{{hello}}"

[[trigger]]
name = "burst"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
topics = ["burst/#"]
function = "hello"
"#,
        port = broker.port
    ));
    wait_source(&s, "burst", "running").await;
    const N: usize = 3000;
    let lines: String = (0..N).map(|i| format!("{i}\n")).collect();
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "burst/x", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut delivered = 0;
    for _ in 0..2400 {
        let state = wait_source(&s, "burst", "running").await;
        delivered = state["delivered"].as_u64().unwrap() as usize;
        if delivered == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(delivered, N, "messages were stuck between broker and queue");
}

/// A NATS message over `max_async_body_bytes` is dropped: the requester is told why, the
/// drop is logged and counted in `/readyz`, and nothing is queued; the next message within
/// the limit is delivered as usual (the NATS side of
/// `an_mqtt_packet_over_the_limit_is_refused_from_its_header_and_jams_nothing`). The large
/// one is 100 KiB: the queue itself would store it (a task may carry the limit plus 64 KiB
/// of envelope), so only the door's own check keeps it out.
#[tokio::test]
async fn a_nats_message_over_the_limit_is_dropped_and_counted_and_the_next_is_delivered() {
    let broker = Broker::nats();
    let s = TestServer::start(&format!(
        r#"{SERVER}
[limits]
max_async_body_bytes = 65536

[[function]]
name = "hello"
wasm = "{{hello}}"

[[trigger]]
name = "big"
kind = "nats"
broker = "nats://127.0.0.1:{port}"
topics = ["big.>"]
function = "hello"
"#,
        port = broker.port
    ));
    wait_source(&s, "big", "running").await;
    let nats = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    let reply = nats
        .request("big.x", vec![b'x'; 100 * 1024].into())
        .await
        .expect("the oversized message is answered");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({
            "error": "a message of 102400 bytes on 'big.x' is over max_async_body_bytes (65536)"
        })
    );
    // Counted (before the reply went out) and logged; no task.
    let state = wait_source(&s, "big", "running").await;
    assert_eq!(
        (state["delivered"].as_u64(), state["dropped"].as_u64()),
        (Some(0), Some(1)),
        "{state}"
    );
    assert!(
        s.wait_for_log("a message could not be enqueued: a message of 102400 bytes"),
        "the drop was not logged:\n{}",
        s.stderr_text()
    );
    assert!(tasks(&s, "big").await.is_empty());
    // The next message within the limit goes through.
    let reply = nats
        .request("big.y", "small".into())
        .await
        .expect("the small message is answered");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    let id = reply["tasks"][0].as_str().expect("a task id").to_string();
    let done = wait_tasks(&s, "big", "Succeeded", 1).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["id"], id.as_str());
    let state = wait_source(&s, "big", "running").await;
    assert_eq!(
        (state["delivered"].as_u64(), state["dropped"].as_u64()),
        (Some(1), Some(1)),
        "{state}"
    );
}

/// Waits (bounded, 60 s: a bound against a broken build) until the server has logged
/// `needle`.
async fn wait_log(s: &TestServer, needle: &str) {
    for _ in 0..2400 {
        if s.stderr_text().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never logged '{needle}':\n{}", s.stderr_text());
}

/// With the queue full (`[queue] max_tasks = 1`, the one place taken by a task held
/// running at a gate), a QoS 1 MQTT message and a NATS message are not dropped: each is
/// held ("holding a message", "retrying a message") with nothing queued, and becomes a
/// task once the gate opens and there is room again; the NATS requester gets the task id
/// once it is committed, and neither source counts a drop.
#[tokio::test(flavor = "multi_thread")]
async fn broker_messages_meeting_a_full_queue_are_held_until_there_is_room() {
    let mosquitto = Broker::mosquitto("allow_anonymous true", &[]);
    let nats_server = Broker::nats();
    let gate = Gate::start();
    let receiver = Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[queue]
max_tasks = 1

[[function]]
name = "echo"
wasm = "{{echo}}"

[[function]]
name = "probe"
wasm = "{{probe}}"
timeout_ms = 60000
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "hold"
function = "probe"
async = {{ max_retries = 0 }}

[[trigger]]
name = "m"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{mqtt}"
qos = 1
topics = ["m/#"]
function = "echo"
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}

[[trigger]]
name = "n"
kind = "nats"
broker = "nats://127.0.0.1:{nats}"
topics = ["n.>"]
function = "echo"
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}
"#,
        mqtt = mosquitto.port,
        nats = nats_server.port,
        cb = receiver.url("/done"),
    ));
    wait_source(&s, "m", "running").await;
    wait_source(&s, "n", "running").await;
    let r = reqwest::Client::new()
        .post(s.url(&format!("/hold/fetch?url={}", gate.url())))
        .header("x-fc-invocation-type", "Async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    gate.wait_arrivals(1);

    mosquitto.publish("m/x", "from-mqtt", 1);
    let nats = async_nats::connect(format!("127.0.0.1:{}", nats_server.port))
        .await
        .unwrap();
    let mut replies = nats.subscribe("_INBOX.held.1").await.unwrap();
    nats.publish_with_reply("n.x", "_INBOX.held.1", "from-nats".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    wait_log(&s, "holding a message: ").await;
    wait_log(&s, "retrying a message").await;
    // Held: not queued, and not dropped.
    for trigger in ["m", "n"] {
        assert!(tasks(&s, trigger).await.is_empty(), "{trigger}");
        let state = wait_source(&s, trigger, "running").await;
        assert_eq!(state["dropped"].as_u64(), Some(0), "{trigger}: {state}");
    }

    gate.open();
    let reply = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .expect("the NATS message is answered once it is a task")
        .expect("a reply");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    let nats_task = reply["tasks"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no task in {reply}"))
        .to_string();
    // Each ran once, with its own payload.
    let mut bodies = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let got = receiver
            .next(Duration::from_secs(60))
            .expect("a callback from the function");
        let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        let trigger = echoed_header(&echo, "x-fc-trigger-name").unwrap_or_default();
        bodies.insert(trigger, echo["body"].clone());
    }
    assert_eq!(
        bodies,
        [
            ("m".to_string(), serde_json::json!("from-mqtt")),
            ("n".to_string(), serde_json::json!("from-nats")),
        ]
        .into_iter()
        .collect()
    );
    let done = wait_tasks(&s, "n", "Succeeded", 1).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["id"], nats_task.as_str());
    let done = wait_tasks(&s, "m", "Succeeded", 1).await;
    assert_eq!(done.len(), 1, "{done:?}");
    for trigger in ["m", "n"] {
        let state = wait_source(&s, trigger, "running").await;
        assert_eq!(
            (state["delivered"].as_u64(), state["dropped"].as_u64()),
            (Some(1), Some(0)),
            "{trigger}: {state}"
        );
    }
}

/// An MQTT trigger at QoS 0: a message's payload is the function's body and its topic is
/// in `X-Topic` (with the trigger's type and name, and the default content type).
#[tokio::test]
async fn an_mqtt_qos0_message_reaches_the_function_with_its_topic_and_payload() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let receiver = Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "q0"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
qos = 0
topics = ["q0/+/reading"]
function = "echo"
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}
"#,
        port = broker.port,
        cb = receiver.url("/done"),
    ));
    // QoS 0 messages reach only a subscribed session: wait until the broker confirmed it.
    wait_source(&s, "q0", "running").await;
    broker.publish("q0/hall/reading", "{\"lux\":300}", 0);
    let got = receiver
        .next(Duration::from_secs(30))
        .expect("a callback from the function");
    let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/");
    assert_eq!(echo["body"], "{\"lux\":300}");
    assert_eq!(
        echoed_header(&echo, "x-topic").as_deref(),
        Some("q0/hall/reading")
    );
    assert_eq!(
        echoed_header(&echo, "x-fc-trigger-type").as_deref(),
        Some("mqtt")
    );
    assert_eq!(
        echoed_header(&echo, "x-fc-trigger-name").as_deref(),
        Some("q0")
    );
    assert_eq!(
        echoed_header(&echo, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(tasks(&s, "q0").await.len(), 1);
}
