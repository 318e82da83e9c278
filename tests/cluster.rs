//! Several nodes on one NATS JetStream server (SPEC section 10): three real `wasmgate`
//! processes and one real nats-server (JetStream on, free loopback ports). Tasks submitted
//! to every node all run, one node killed with -9 mid-load loses none, a cron tick runs once
//! in the cluster, NATS stopped and restarted under load loses no 202, and a deploy or an
//! alias move on one node is served by the others.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Broker, Receiver, TestServer};

const TOKEN: &str = "cluster-admin-token";
const WAIT: Duration = Duration::from_secs(60);

fn node(broker: &Broker, receiver: &Receiver, extra: &str) -> TestServer {
    TestServer::start(&config(receiver, &common::cluster_section(broker), extra))
}

/// A node's config: async trigger `work` (probe, calls back to `receiver`), sync trigger
/// `sync` (echo), `greet` on alias `live` of a deployed function, then `extra` and the
/// `[cluster]` table.
fn config(receiver: &Receiver, cluster: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
data_dir = "data"

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "work"
function = "probe"
async = {{ max_retries = 2, on_success = "{ok}", on_failure = "{ok}" }}

[[trigger]]
name = "sync"
function = "echo"

[[trigger]]
name = "greet"
function = "greet"
qualifier = "live"
{extra}
{cluster}"#,
        ok = receiver.url("/done"),
    )
}

async fn submit(s: &TestServer, path: &str, id: &str) -> u16 {
    match common::client()
        .post(s.url(path))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", id)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn admin(s: &TestServer, path: &str) -> serde_json::Value {
    let r = common::client()
        .get(s.admin_url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin API answers");
    r.json().await.unwrap_or_default()
}

/// Callbacks by task id until every id in `ids` has called back (bounded).
fn collect(receiver: &Receiver, ids: &HashSet<String>) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    while !ids.iter().all(|id| seen.contains_key(id)) {
        let Some(cb) = receiver.next(WAIT) else {
            let missing: Vec<_> = ids.iter().filter(|i| !seen.contains_key(*i)).collect();
            panic!("no callback for {} tasks: {missing:?}", missing.len());
        };
        let id = cb.header("x-fc-async-task-id").unwrap_or_default();
        *seen.entry(id.to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_the_queue_and_a_node_killed_mid_load_loses_no_task() {
    let broker = Broker::jetstream();
    let done = Receiver::start(200);
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&broker, &done, "")).collect();
    let mut accepted = HashSet::new();
    for i in 0..60 {
        let id = format!("t{i}");
        let n = &nodes[i % 3];
        assert_eq!(submit(n, "/work/sleep?ms=400", &id).await, 202, "{id}");
        accepted.insert(id);
    }
    // Node 1 dies with tasks in hand.
    let mut nodes = nodes;
    assert!(
        nodes[1].wait_for_log("sleep start"),
        "{}",
        nodes[1].stderr_text()
    );
    nodes[1].kill9();
    let seen = collect(&done, &accepted);
    assert_eq!(seen.len(), accepted.len());
    // The task API answers from any node, for tasks submitted anywhere; the attempts that
    // died with node 1 count.
    let mut rerun = 0;
    for id in &accepted {
        let mut t = serde_json::Value::Null;
        for _ in 0..100 {
            t = admin(&nodes[2], &format!("/-/tasks/{id}?trigger=work")).await;
            if t["state"] == "Succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(t["state"], "Succeeded", "{t}");
        let attempts = t["attempts"].as_u64().unwrap_or(0);
        assert!((1..=2).contains(&attempts), "{t}");
        // A task run once called back once; one whose first attempt died with node 1 may
        // have called back from that attempt too (at least once), never more often than
        // it ran.
        let callbacks = seen.get(id).copied().unwrap_or(0) as u64;
        assert!(
            (1..=attempts).contains(&callbacks),
            "{id}: {callbacks} callbacks, {t}"
        );
        if attempts == 2 {
            rerun += 1;
        }
    }
    assert!(
        rerun >= 1,
        "the tasks node 1 was running show a second attempt"
    );
    let list = admin(&nodes[0], "/-/tasks?trigger=work&limit=1000").await;
    let listed = list["tasks"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, accepted.len(), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_tick_runs_once_in_a_cluster_of_three() {
    let broker = Broker::jetstream();
    let done = Receiver::start(200);
    let cron = format!(
        r#"
[[trigger]]
name = "tick"
kind = "cron"
function = "echo"
schedule = "* * * * * *"
async = {{ on_success = "{}" }}"#,
        done.url("/tick")
    );
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&broker, &done, &cron)).collect();
    let mut ticks: HashMap<String, usize> = HashMap::new();
    while ticks.len() < 4 {
        let cb = done.next(WAIT).expect("cron ticks call back");
        let id = cb.header("x-fc-async-task-id").unwrap_or_default();
        *ticks.entry(id.to_string()).or_default() += 1;
    }
    // Later callbacks (four more ticks' worth) would show any duplicate of those ticks.
    for _ in 0..4 {
        let cb = done.next(WAIT).expect("cron ticks call back");
        let id = cb.header("x-fc-async-task-id").unwrap_or_default();
        if let Some(n) = ticks.get_mut(id) {
            *n += 1;
        }
    }
    for (id, n) in &ticks {
        assert_eq!(*n, 1, "tick {id} ran {n} times");
        let t = admin(&nodes[1], &format!("/-/tasks/{id}?trigger=tick")).await;
        assert_eq!(t["attempts"], 1, "{t}");
    }
    // Each tick was enqueued by exactly one node: the others found it there.
    let logs: Vec<String> = nodes.iter().map(|n| n.stderr_text()).collect();
    for id in ticks.keys() {
        let enqueued = logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains("cron tick enqueued") && l.contains(id.as_str()))
            .count();
        assert_eq!(enqueued, 1, "tick {id} enqueued {enqueued} times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_stopped_and_restarted_under_load_loses_no_202() {
    let mut broker = Broker::jetstream();
    let done = Receiver::start(200);
    let s = node(&broker, &done, "");
    // Eight clients submit without pause for the whole test; every 202 is remembered.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (url, stop) = (s.url("/work/sleep?ms=1"), stop.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            let http = common::client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("c{c}_{i}");
                i += 1;
                let status = http
                    .post(&url)
                    .header("x-fc-invocation-type", "Async")
                    .header("x-fc-async-task-id", &id)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                match status {
                    Ok(202) => {
                        accepted.lock().unwrap().insert(id);
                    }
                    Ok(503) => {
                        refused.lock().unwrap().push(id);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("{id}: {other:?}"),
                }
            }
        }));
    }
    let accepted_now = || accepted.lock().unwrap().len();
    let grows = async |from: usize| {
        for _ in 0..400 {
            if accepted_now() > from + 20 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    };
    assert!(grows(0).await, "tasks are accepted");
    broker.stop();
    // While NATS is away: async requests are refused (never a 202 that was not stored),
    // sync ones are served, and /readyz names the queue. A submission in flight when NATS
    // went away can wait out the JetStream request timeout (10 s) before its 503, and its
    // client sends nothing new meanwhile: the bound is well past that.
    for _ in 0..1200 {
        if refused.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        refused.lock().unwrap().len() >= 3,
        "async requests get 503 while NATS is down"
    );
    let sync = common::client()
        .get(s.url("/sync"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(sync, 200);
    let ready = admin(&s, "/readyz").await;
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "queue")),
        "{ready}"
    );
    broker.restart();
    // Back by itself: submissions are accepted again.
    assert!(
        grows(accepted_now()).await,
        "the node reconnects and takes tasks again"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    // A refused id is free again: the client's retry is accepted, not a 409.
    let retried: Vec<String> = refused.lock().unwrap().iter().take(5).cloned().collect();
    for id in &retried {
        let mut status = 0;
        for _ in 0..200 {
            status = submit(&s, "/work/sleep?ms=1", id).await;
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(status, 202, "{id} retried after a 503");
        accepted.lock().unwrap().insert(id.clone());
    }
    let accepted = accepted.lock().unwrap().clone();
    collect(&done, &accepted);
    let ready = admin(&s, "/readyz").await;
    assert_eq!(ready["degraded"], serde_json::json!([]), "{ready}");
}

async fn put(s: &TestServer, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = common::client()
        .put(s.admin_url(path))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .expect("admin API answers");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

/// Polls (bounded) `url` until its body satisfies `want`; the last body.
async fn served(url: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        if let Ok(r) = common::client().get(url).send().await {
            last = (r.status().as_u16(), r.text().await.unwrap_or_default());
            if want(last.0, &last.1) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_and_an_alias_move_on_one_node_are_served_by_the_others() {
    let broker = Broker::jetstream();
    let done = Receiver::start(200);
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&broker, &done, "")).collect();
    let (a, c) = (&nodes[0], &nodes[2]);
    let hello = std::fs::read(common::wasm("hello")).unwrap();
    let echo = std::fs::read(common::wasm("echo")).unwrap();
    assert_eq!(put(a, "/-/functions/greet", hello).await.0, 200);
    // Node B deploys the second version at about the same time: numbers never collide.
    let (status, v2) = put(&nodes[1], "/-/functions/greet", echo).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], 2, "{v2}");
    let (status, _) = put(
        a,
        "/-/functions/greet/aliases/live",
        br#"{"version": 1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = served(&c.url("/greet"), |s, b| s == 200 && b.starts_with("hello")).await;
    assert_eq!((status, body.as_str()), (200, "hello from wasmgate\n"));
    // The alias moves on node C itself once it knows version 2; node A follows.
    let mut moved = 0;
    for _ in 0..200 {
        moved = put(
            c,
            "/-/functions/greet/aliases/live",
            br#"{"version": 2}"#.to_vec(),
        )
        .await
        .0;
        if moved == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(moved, 200);
    let (status, body) = served(&a.url("/greet"), |s, b| s == 200 && b.starts_with('{')).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with('{'),
        "node A serves version 2 (echo): {body}"
    );
    // A reload builds a new registry generation; the deployed versions stay served meanwhile.
    let reloaded = common::client()
        .post(a.admin_url("/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(reloaded, 200);
    let after = common::client().get(a.url("/greet")).send().await.unwrap();
    assert_eq!(after.status(), 200, "served right after a reload");
    let listed = admin(&nodes[1], "/-/functions/greet").await;
    assert_eq!(
        listed["versions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert!(
        c.wait_for_log("a version deployed in the cluster is served here"),
        "{}",
        c.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_reaches_nats_over_tls_with_credentials_and_names_a_refusal() {
    let certs = common::root().join("certs");
    let cert = certs.join("localhost.pem").display().to_string();
    let key = certs.join("localhost-key.pem").display().to_string();
    let broker = Broker::jetstream_with(&[
        "--tls",
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "--user",
        "gw",
        "--pass",
        "s3cret",
    ]);
    let done = Receiver::start(200);
    let config = config(
        &done,
        &format!(
            "\n[cluster]\nnats = \"tls://localhost:{}\"\ntls_ca = \"{{certs}}/ca.pem\"\ncredentials_env = \"NATS_CREDS\"\n",
            broker.port
        ),
        "",
    );
    let s = TestServer::start_with_env(&config, &[("NATS_CREDS", "gw:s3cret")]);
    assert_eq!(submit(&s, "/work/sleep?ms=1", "over-tls").await, 202);
    let cb = done.next(WAIT).expect("the task runs");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("over-tls"));
    // A wrong password: the node serves, refuses async requests, and says why.
    let bad = TestServer::start_with_env(&config, &[("NATS_CREDS", "gw:wrong")]);
    assert_eq!(submit(&bad, "/work/sleep?ms=1", "refused").await, 503);
    let ready = admin(&bad, "/readyz").await;
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "queue")),
        "{ready}"
    );
    let problem = ready["queue"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("uthorization"), "{ready}");
}

/// A NATS JWT: `claims` (with `nats`) about `subject`, signed by `issuer` (ed25519 nkey).
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = serde_json::json!({
        "jti": format!("{name}{subject}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64(&signature))
}

/// A `.creds` file's text: a user's JWT issued by `account` and the user's seed.
fn user_creds(account: &nkeys::KeyPair, name: &str) -> String {
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        name,
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("seed")
    )
}

/// Waits (bounded) until `/readyz` shows the queue degraded with a problem; the last answer.
async fn queue_problem(s: &TestServer) -> serde_json::Value {
    let mut ready = serde_json::Value::Null;
    for _ in 0..200 {
        ready = admin(s, "/readyz").await;
        if ready["queue"]["problem"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "queue")),
        "{ready}"
    );
    ready
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_authenticates_to_nats_with_a_creds_file() {
    use nkeys::KeyPair;
    // An operator-mode (decentralized JWT) server: the operator signs a system account and
    // an account with JetStream; the account signs the node's user.
    let operator = KeyPair::new_operator();
    let (system, account) = (KeyPair::new_account(), KeyPair::new_account());
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "operator",
        serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "gateways",
        serde_json::json!({"type": "account", "version": 2, "limits": {
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        }}),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let conf = file(
        "operator.conf",
        &format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
            sys = system.public_key(),
            acc = account.public_key(),
        ),
    );
    let good = file("gw.creds", &user_creds(&account, "gw"));
    // A user signed by an account key the server was never told about.
    let stranger = file("stranger.creds", &user_creds(&KeyPair::new_account(), "gw"));
    let malformed = file("malformed.creds", "not a creds file\n");
    // -js -sd (the harness's) turn JetStream on; the file adds the trust chain.
    let broker = Broker::jetstream_with(&["-c", &conf]);
    let done = Receiver::start(200);
    let config = config(
        &done,
        &format!(
            "\n[cluster]\nnats = \"nats://127.0.0.1:{}\"\ncredentials_env = \"NATS_CREDS\"\n",
            broker.port
        ),
        "",
    );
    let s = TestServer::start_with_env(&config, &[("NATS_CREDS", &good)]);
    assert_eq!(
        submit(&s, "/work/sleep?ms=1", "by-creds").await,
        202,
        "{}\n{}",
        s.stderr_text(),
        broker.log()
    );
    let cb = done.next(WAIT).expect("the task runs");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("by-creds"));
    // Two nodes that cannot use their creds (each waits for NATS a while before it
    // announces itself; started side by side).
    let (bad, unreadable) = std::thread::scope(|t| {
        let bad = t.spawn(|| TestServer::start_with_env(&config, &[("NATS_CREDS", &stranger)]));
        let unreadable = TestServer::start_with_env(&config, &[("NATS_CREDS", &malformed)]);
        (bad.join().expect("the node starts"), unreadable)
    });
    // An unknown user: the node serves, refuses async requests, and names the refusal.
    assert_eq!(submit(&bad, "/work/sleep?ms=1", "refused").await, 503);
    let ready = queue_problem(&bad).await;
    let problem = ready["queue"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("authorization violation"), "{ready}");
    assert!(
        broker.log().contains("authentication error"),
        "{}",
        broker.log()
    );
    // A file that is not a creds file: the node still starts (the queue connects in the
    // background), refuses async requests, and names the file and what is wrong with it.
    assert_eq!(
        submit(&unreadable, "/work/sleep?ms=1", "garbled").await,
        503
    );
    let ready = queue_problem(&unreadable).await;
    let problem = ready["queue"]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains(&malformed) && problem.contains("cannot parse user JWT"),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_longer_than_ack_wait_runs_on_one_node_only() {
    // ack_wait is 2 s here; the task runs 5 s, kept by in-progress acks.
    let broker = Broker::jetstream();
    let done = Receiver::start(200);
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&broker, &done, "")).collect();
    assert_eq!(submit(&nodes[0], "/work/sleep?ms=5000", "long").await, 202);
    let cb = done.next(WAIT).expect("the long task calls back");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("long"));
    let t = admin(&nodes[1], "/-/tasks/long?trigger=work").await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    assert_eq!(t["attempts"], 1, "{t}");
    let started: usize = nodes
        .iter()
        .map(|n| n.stderr_text().matches("sleep start 5000 ms").count())
        .sum();
    assert_eq!(started, 1, "one node ran it");
    assert!(
        done.next(Duration::from_secs(3)).is_none(),
        "no second run calls back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_nats_is_down_at_start_serves_and_takes_tasks_once_it_is_up() {
    let mut broker = Broker::jetstream();
    broker.stop();
    let done = Receiver::start(200);
    let s = node(&broker, &done, "");
    // Sync requests are served without the cluster.
    let r = common::client()
        .post(s.url("/sync"))
        .body("up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A submission is refused as a capacity problem, with a time to come back.
    let r = common::client()
        .post(s.url("/work/status/200"))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", "early")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(common::error_body(r).await["Code"], "ResourceThrottled");
    let ready = admin(&s, "/readyz").await;
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "queue")),
        "{ready}"
    );
    // NATS comes up: the node reaches it by itself and takes tasks (the refused id too).
    broker.restart();
    let mut status = 0;
    for _ in 0..600 {
        status = submit(&s, "/work/status/200", "early").await;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 202, "{}", s.stderr_text());
    let cb = done.next(WAIT).expect("the task runs");
    assert_eq!(cb.header("x-fc-async-task-id"), Some("early"));
    let ready = admin(&s, "/readyz").await;
    assert!(
        !ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == "queue")),
        "{ready}"
    );
}
