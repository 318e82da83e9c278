//! Event sources against real brokers (mosquitto and nats-server from Debian, started here
//! on free loopback ports) and the real binary: cron ticks, MQTT messages (topics, topic
//! routing, persistent sessions, refused credentials), NATS subjects.

mod common;

use std::time::Duration;

use common::{Broker, Receiver, TestServer, echoed_header, tasks, wait_source, wait_tasks};

/// The echo function's view of a request, from a success callback.
fn callback_echo(receiver: &Receiver) -> serde_json::Value {
    let got = receiver
        .next(Duration::from_secs(30))
        .expect("a callback from the function");
    serde_json::from_slice(&got.body).expect("the echo function's JSON")
}

const SERVER: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "data"
"#;

#[tokio::test]
async fn cron_fires_every_tick_once_with_its_id_and_time() {
    let receiver = Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "tick"
kind = "cron"
function = "echo"
schedule = "* * * * * *"
payload = '{{"job":"report"}}'
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}
"#,
        cb = receiver.url("/done")
    ));
    // Count deliveries per tick: the first three ticks, then three more ticks' worth of
    // callbacks, which would show a tick run (and called back) twice.
    let mut delivered: std::collections::HashMap<String, usize> = Default::default();
    let mut firsts = Vec::new();
    for n in 0..6 {
        let cb = receiver
            .next(Duration::from_secs(30))
            .expect("a callback per tick");
        let id = cb
            .header("x-fc-async-task-id")
            .unwrap_or_default()
            .to_string();
        if n < 3 && !delivered.contains_key(&id) {
            firsts.push(id.clone());
        }
        *delivered.entry(id).or_default() += 1;
    }
    for id in &firsts {
        assert_eq!(
            delivered[id], 1,
            "tick {id} delivered {} times",
            delivered[id]
        );
    }
    let done = wait_tasks(&s, "tick", "Succeeded", 3).await;
    for t in done.iter().filter(|t| t["state"] == "Succeeded") {
        let id = t["id"].as_str().unwrap();
        let secs: i64 = id
            .strip_prefix("cron-tick-")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("id {id} is cron-<trigger>-<unix seconds>"));
        assert_eq!(t["attempts"], 1, "each tick runs once: {t}");
        let echo = common::echoed(t);
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["body"], r#"{"job":"report"}"#);
        assert_eq!(
            echoed_header(&echo, "x-fc-trigger-type").as_deref(),
            Some("cron")
        );
        let scheduled = echoed_header(&echo, "x-fc-scheduled-time").expect("scheduled time");
        let at = chrono::DateTime::parse_from_rfc3339(&scheduled).expect("RFC 3339");
        assert_eq!(at.timestamp(), secs, "the id names the scheduled second");
    }
}

#[test]
fn cron_expressions_are_checked_and_bad_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |schedule: &str| {
        let config = dir.path().join("w.toml");
        std::fs::write(
            &config,
            common::render(&format!(
                r#"[server]
listen = "127.0.0.1:0"
[[function]]
name = "echo"
wasm = "{{echo}}"
[[trigger]]
name = "c"
kind = "cron"
function = "echo"
schedule = "{schedule}"
timezone = "Europe/Paris"
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
        "*/10 * * * *",
        "*/5 * * * * *",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ] {
        let out = run(ok);
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(ok));
    }
    for bad in ["61 * * * *", "* * *", "@fortnightly"] {
        let out = run(bad);
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("'{bad}'")) && err.contains("trigger 'c'"),
            "{bad}: {err}"
        );
    }
}

fn mqtt_config(broker: &Broker, receiver: &Receiver, trigger: &str) -> String {
    format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "sensors"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
client_id = "wasmgate-test-sensors"
qos = 1
topics = ["sensors/+/temperature"]
content_type = "application/json"
{trigger}
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}
"#,
        port = broker.port,
        cb = receiver.url("/done"),
    )
}

#[tokio::test]
async fn an_mqtt_message_reaches_the_function_with_its_topic_and_payload() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let receiver = Receiver::start(200);
    let s = TestServer::start(&mqtt_config(&broker, &receiver, r#"function = "echo""#));
    wait_source(&s, "sensors", "running").await;
    // A topic outside the filters first: the broker never hands it over.
    broker.publish("sensors/kitchen/humidity", "{\"h\":40}", 1);
    broker.publish("sensors/kitchen/temperature", "{\"t\":21.5}", 1);
    let echo = callback_echo(&receiver);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/");
    assert_eq!(echo["body"], "{\"t\":21.5}");
    assert_eq!(
        echoed_header(&echo, "x-topic").as_deref(),
        Some("sensors/kitchen/temperature")
    );
    assert_eq!(
        echoed_header(&echo, "x-fc-trigger-type").as_deref(),
        Some("mqtt")
    );
    assert_eq!(
        echoed_header(&echo, "content-type").as_deref(),
        Some("application/json")
    );
    let all = tasks(&s, "sensors").await;
    assert_eq!(
        all.len(),
        1,
        "only the matching topic became a task: {all:?}"
    );
    // Nothing else is called back before a marker published after both.
    broker.publish("sensors/hall/temperature", "{\"marker\":1}", 1);
    let before = receiver.until(Duration::from_secs(60), |r| {
        String::from_utf8_lossy(&r.body).contains("marker")
    });
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn one_message_invokes_every_function_whose_topics_match() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let s = TestServer::start(&format!(
        r##"{SERVER}
[[function]]
name = "alerts-all"
wasm = "{{echo}}"
topics = ["alerts/#"]

[[function]]
name = "alerts-fire"
wasm = "{{echo}}"
topics = ["alerts/fire/+"]

[[function]]
name = "alerts-other-ns"
wasm = "{{echo}}"
namespace = "ops"
topics = ["alerts/#"]

[[function]]
name = "payments"
wasm = "{{echo}}"
topics = ["payments"]

[[trigger]]
name = "bus"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
topics = ["#"]
namespace = "default"
"##,
        port = broker.port
    ));
    wait_source(&s, "bus", "running").await;
    broker.publish("alerts/fire/kitchen", "smoke", 1);
    let done = wait_tasks(&s, "bus", "Succeeded", 2).await;
    let mut functions: Vec<&str> = done
        .iter()
        .map(|t| t["function"].as_str().unwrap())
        .collect();
    functions.sort();
    assert_eq!(functions, ["alerts-all", "alerts-fire"], "{done:?}");
    // A topic nothing subscribes to reaches no function (and is counted as dropped).
    broker.publish("weather", "sun", 1);
    broker.publish("payments", "1 EUR", 1);
    let done = wait_tasks(&s, "bus", "Succeeded", 3).await;
    assert_eq!(done.len(), 3, "{done:?}");
    let state = wait_source(&s, "bus", "running").await;
    assert_eq!(state["dropped"], 1, "{state}");
}

#[tokio::test]
async fn qos1_messages_sent_while_the_gateway_is_down_arrive_after_it_starts() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let receiver = Receiver::start(200);
    let dir = tempfile::tempdir().unwrap();
    let config = mqtt_config(&broker, &receiver, r#"function = "echo""#);
    let mut s = TestServer::start_in(dir.path(), &config, &[]);
    wait_source(&s, "sensors", "running").await;
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    broker.publish("sensors/cellar/temperature", "12", 1);
    broker.publish("sensors/attic/temperature", "30", 1);
    let s = TestServer::start_in(dir.path(), &config, &[]);
    let mut bodies: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let got = receiver
                .next(Duration::from_secs(30))
                .unwrap_or_else(|| panic!("a callback from the function:\n{}", s.stderr_text()));
            serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["body"].clone()
        })
        .collect();
    bodies.sort_by_key(|b| b.to_string());
    assert_eq!(bodies, ["12", "30"]);
    let state = wait_source(&s, "sensors", "running").await;
    assert!(
        state["detail"].as_str().unwrap().contains("resumed"),
        "{state}"
    );
}

#[tokio::test]
async fn a_broker_that_refuses_the_credentials_is_a_failed_trigger_not_a_crash() {
    let passwords = dir_passwords();
    let broker = Broker::mosquitto(
        "allow_anonymous false\npassword_file {dir}/passwd",
        &[("passwd", &passwords)],
    );
    let s = TestServer::start_with_env(
        &format!(
            r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "hello"
path = "/hello"
function = "echo"

[[trigger]]
name = "locked"
kind = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
username = "edge"
password_env = "MQTT_PASSWORD"
topics = ["x/#"]
function = "echo"
"#,
            port = broker.port
        ),
        &[("MQTT_PASSWORD", "wrong")],
    );
    let state = wait_source(&s, "locked", "failed").await;
    let detail = state["detail"].as_str().unwrap();
    assert!(
        detail.contains("refused")
            && (detail.contains("not authorized") || detail.contains("password")),
        "{detail}"
    );
    // The node keeps serving, and says which part is degraded.
    let r = common::client().get(s.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = reqwest::get(s.admin_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["degraded"], serde_json::json!(["locked"]));
    let sources: serde_json::Value = reqwest::get(s.admin_url("/-/sources"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sources["sources"]["locked"]["state"], "failed");
    assert!(s.wait_for_log("refused the connection"));
}

/// A mosquitto password file for user `edge` (password `right`), made with
/// mosquitto_passwd.
fn dir_passwords() -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args(["edge", "right"])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(status.success());
    std::fs::read_to_string(file).unwrap()
}

#[tokio::test]
async fn nats_subjects_with_wildcards_reach_the_function() {
    let broker = Broker::nats();
    let receiver = Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "orders"
kind = "nats"
broker = "nats://127.0.0.1:{port}"
topics = ["orders.*.created", "audit.>"]
function = "echo"
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}
"#,
        port = broker.port,
        cb = receiver.url("/done"),
    ));
    wait_source(&s, "orders", "running").await;
    let nats = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .expect("connect to nats-server");
    // A request is answered once the tasks are committed.
    let reply = nats
        .request("orders.eu.created", "o-1".into())
        .await
        .expect("the gateway answers a request");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 1, "{reply}");
    let echo = callback_echo(&receiver);
    assert_eq!(echo["body"], "o-1");
    assert_eq!(
        echoed_header(&echo, "x-topic").as_deref(),
        Some("orders.eu.created")
    );
    assert_eq!(
        echoed_header(&echo, "x-fc-trigger-type").as_deref(),
        Some("nats")
    );
    // `*` is one token: no subscriber, so no responder.
    let miss = nats.request("orders.eu.west.created", "o-2".into()).await;
    assert!(
        miss.is_err(),
        "a subject outside the wildcards was answered"
    );
    nats.request("audit.a.b.c", "deep".into())
        .await
        .expect("`>` matches the rest");
    assert_eq!(callback_echo(&receiver)["body"], "deep");
    assert_eq!(tasks(&s, "orders").await.len(), 2);
}

#[tokio::test]
async fn nats_queue_groups_share_messages_between_nodes() {
    let broker = Broker::nats();
    let config = format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "jobs"
kind = "nats"
broker = "nats://127.0.0.1:{port}"
topics = ["jobs"]
function = "echo"
"#,
        port = broker.port
    );
    let a = TestServer::start(&config);
    let b = TestServer::start(&config);
    wait_source(&a, "jobs", "running").await;
    wait_source(&b, "jobs", "running").await;
    let nats = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    for i in 0..20 {
        nats.request("jobs", format!("{i}").into()).await.unwrap();
    }
    let (na, nb) = (tasks(&a, "jobs").await.len(), tasks(&b, "jobs").await.len());
    assert_eq!(
        na + nb,
        20,
        "each message runs on one node only ({na} + {nb})"
    );
}

#[tokio::test]
async fn mqtts_verifies_the_broker_with_the_ca_file() {
    let certs = common::certs();
    let broker = Broker::mosquitto(
        &format!(
            "allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}",
            ca = certs.join("ca.pem").display(),
            cert = certs.join("localhost.pem").display(),
            key = certs.join("localhost-key.pem").display(),
        ),
        &[],
    );
    let receiver = Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "secure"
kind = "mqtt"
broker = "mqtts://localhost:{port}"
ca_file = "{{certs}}/ca.pem"
topics = ["s/#"]
function = "echo"
async = {{ on_success = "{cb}", callback_hosts = ["127.0.0.1"] }}

[[trigger]]
name = "untrusted"
kind = "mqtt"
broker = "mqtts://localhost:{port}"
ca_file = "{{certs}}/localhost.pem"
topics = ["s/#"]
function = "echo"
"#,
        port = broker.port,
        cb = receiver.url("/done"),
    ));
    wait_source(&s, "secure", "running").await;
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(certs.join("ca.pem"))
        .args(["-q", "1", "-t", "s/1", "-m", "over tls"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(callback_echo(&receiver)["body"], "over tls");
    // A broker whose certificate the trigger does not trust is a failed source.
    let state = wait_source(&s, "untrusted", "failed").await;
    assert!(state["detail"].as_str().unwrap().contains("TLS"), "{state}");
}

#[tokio::test]
async fn a_reload_starts_changed_sources_and_stops_removed_ones() {
    let broker = Broker::mosquitto("allow_anonymous true", &[]);
    let receiver = Receiver::start(200);
    let with = mqtt_config(&broker, &receiver, r#"function = "echo""#);
    let s = TestServer::start(&with);
    wait_source(&s, "sensors", "running").await;
    // Remove the trigger: its source stops and leaves /readyz.
    let without = with[..with.find("[[trigger]]").unwrap()].to_string();
    std::fs::write(s.dir.join("wasmgate.toml"), s.config_text(&without)).unwrap();
    let r = common::client()
        .post(s.admin_url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut gone = false;
    for _ in 0..400 {
        let ready: serde_json::Value = reqwest::get(s.admin_url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["sources"].get("sensors").is_none()
            && !ready["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "source:sensors")
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the removed trigger's source still runs");
    broker.publish("sensors/x/temperature", "after", 1);
    // Put it back: it starts again and resumes its session, with the message kept for it.
    std::fs::write(s.dir.join("wasmgate.toml"), s.config_text(&with)).unwrap();
    let r = common::client()
        .post(s.admin_url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_source(&s, "sensors", "running").await;
    assert_eq!(callback_echo(&receiver)["body"], "after");
}

#[tokio::test]
async fn a_burst_of_qos1_messages_is_all_committed() {
    // Every message held by the broker must come through, however fast they arrive: the
    // source's event loop may never wait on the worker whose acknowledgements it carries.
    let broker = Broker::mosquitto("allow_anonymous true\nmax_queued_messages 0", &[]);
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
    assert_eq!(delivered, N, "messages were stuck in the broker");
}

/// `catch_up = true`: the last tick that fell while the node was down runs once when it
/// starts, under that tick's id (`cron-<trigger>-<unix seconds>`) and with its
/// `X-Fc-Scheduled-Time`, if it is no older than the trigger's `max_event_age_s`. Without
/// `catch_up` (or with the tick older than `max_event_age_s`) the missed tick is skipped,
/// and a restart never runs a caught-up tick again. The schedule is yearly: its last tick
/// (1 January, 00:00 UTC) is in the past whenever the test runs and the next one is not
/// due during it, so which tick was missed is known. The catch-up is made before the
/// source reports `running`, so `running` is the marker after which a skipped tick would
/// already be in the task list.
#[tokio::test]
async fn cron_catch_up_runs_the_tick_missed_while_down_once_and_only_when_asked() {
    use chrono::{Datelike, TimeZone};
    let dir = tempfile::tempdir().unwrap();
    let config = |catch_up: bool, max_age: u64| {
        format!(
            r#"{SERVER}
[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "yearly"
kind = "cron"
function = "echo"
schedule = "@yearly"
catch_up = {catch_up}
async = {{ max_event_age_s = {max_age} }}
"#
        )
    };
    // 400 days: the last yearly tick is always younger than that.
    const OLD_ENOUGH: u64 = 400 * 86_400;
    let now = chrono::Utc::now();
    let missed = chrono::Utc
        .with_ymd_and_hms(now.year(), 1, 1, 0, 0, 0)
        .unwrap();
    let id = format!("cron-yearly-{}", missed.timestamp());

    // The node comes up after the tick without catch_up: the tick is skipped.
    {
        let s = TestServer::start_in(dir.path(), &config(false, OLD_ENOUGH), &[]);
        wait_source(&s, "yearly", "running").await;
        let all = tasks(&s, "yearly").await;
        assert!(
            all.is_empty(),
            "a missed tick ran without catch_up: {all:?}"
        );
    }
    // catch_up, but the tick is older than max_event_age_s (one day): skipped too.
    {
        let s = TestServer::start_in(dir.path(), &config(true, 86_400), &[]);
        wait_source(&s, "yearly", "running").await;
        let all = tasks(&s, "yearly").await;
        assert!(
            all.is_empty(),
            "a tick older than max_event_age_s was caught up: {all:?}"
        );
    }
    // catch_up with the tick within max_event_age_s: it runs, as that tick.
    {
        let s = TestServer::start_in(dir.path(), &config(true, OLD_ENOUGH), &[]);
        let done = wait_tasks(&s, "yearly", "Succeeded", 1).await;
        assert_eq!(done.len(), 1, "{done:?}");
        let t = &done[0];
        assert_eq!(t["id"], id.as_str(), "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        let echo = common::echoed(t);
        assert_eq!(
            echoed_header(&echo, "x-fc-trigger-type").as_deref(),
            Some("cron")
        );
        assert_eq!(
            echoed_header(&echo, "x-fc-scheduled-time"),
            Some(missed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "{echo}"
        );
        // The caught-up tick counts among the source's deliveries.
        let state = wait_source(&s, "yearly", "running").await;
        assert_eq!(state["delivered"], 1, "{state}");
    }
    // Down and up again: the tick was run already, so catching up adds nothing.
    {
        let s = TestServer::start_in(dir.path(), &config(true, OLD_ENOUGH), &[]);
        wait_source(&s, "yearly", "running").await;
        let all = tasks(&s, "yearly").await;
        assert_eq!(all.len(), 1, "the caught-up tick ran again: {all:?}");
        assert_eq!(all[0]["id"], id.as_str());
        assert_eq!(all[0]["attempts"], 1, "{}", all[0]);
    }
}
