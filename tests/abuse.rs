//! The public door under protocol abuse, against the real binary on real sockets: HTTP/2
//! clients that never take a response, requests cancelled mid-flight, bodies trickled for
//! ever, and authorities the gateway must not hand on. Each wait is bounded well below the
//! default of the key under test, so a build that ignores the key fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestServer;

/// Plain HTTP (HTTP/2 by prior knowledge), with the given `[limits]` lines.
fn config(limits: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
{limits}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "echo"
function = "echo"
async = {{ enabled = true }}

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
timeout_ms = 30000

[[trigger]]
name = "probe"
function = "probe"
"#
    )
}

/// Waits for the server to end an HTTP/2 connection, up to `bound`; true when it did.
async fn closed_within<T>(
    conn: h2::client::Connection<tokio::net::TcpStream, T>,
    bound: Duration,
) -> bool
where
    T: bytes::Buf,
{
    tokio::time::timeout(bound, conn).await.is_ok()
}

async fn h2_connect(
    addr: &str,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<tokio::net::TcpStream, bytes::Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("h2 handshake")
}

fn request(addr: &str, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// Finding 1a: a client that opens no flow-control window can never receive the 404's body.
/// The connection is closed `send_timeout_ms` after the response started to wait, though
/// the idle timeout is far away (before: GOAWAY after the idle timeout, then held for ever).
#[tokio::test(flavor = "multi_thread")]
async fn an_h2_client_with_a_zero_window_is_cut_off_after_the_send_timeout() {
    let s = TestServer::start(&config("send_timeout_ms = 1000\nidle_timeout_ms = 600000"));
    let addr = s.addr();
    let (mut send, conn) = h2_connect(&addr, 0).await;
    let (response, _) = send
        .send_request(request(&addr, "GET", "/nope"), true)
        .unwrap();
    let watcher = tokio::spawn(closed_within(conn, Duration::from_secs(15)));
    // The head is not flow-controlled: the 404 arrives, its body never can.
    let response = tokio::time::timeout(Duration::from_secs(15), response)
        .await
        .expect("the head arrives")
        .expect("a response");
    assert_eq!(response.status(), 404);
    assert!(
        watcher.await.unwrap(),
        "the connection stayed open with a response that cannot be sent (send_timeout_ms = 1000)"
    );
}

/// Finding 1b: a request cancelled with RST_STREAM while its function runs leaves nothing
/// counted as in progress, so the idle timeout still closes the connection (before: the
/// service future was dropped before it decremented the count, which stayed at 1 for ever).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_h2_request_does_not_keep_its_connection_busy() {
    let s = TestServer::start(&config("idle_timeout_ms = 1000"));
    let addr = s.addr();
    let (mut send, conn) = h2_connect(&addr, 65_535).await;
    let watcher = tokio::spawn(closed_within(conn, Duration::from_secs(20)));
    for i in 0..3 {
        let (response, mut body) = send
            .send_request(request(&addr, "GET", "/probe/sleep?ms=3000"), true)
            .unwrap();
        // The function is running; the client gives up on it.
        assert!(
            s.wait_for_count("sleep start 3000 ms", i + 1),
            "{}",
            s.stderr_text()
        );
        body.send_reset(h2::Reason::CANCEL);
        drop(response);
    }
    assert!(
        watcher.await.unwrap(),
        "the connection stayed open after its only requests were cancelled (idle_timeout_ms = 1000)"
    );
}

/// Sends a head announcing `len` bytes, then one byte every `every` until the server
/// answers or `bound` passes; returns the status line's code and what came back.
fn trickle(addr: &str, head: &str, len: usize, every: Duration, bound: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    s.write_all(format!("{head}Content-Length: {len}\r\n\r\n").as_bytes())
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    while started.elapsed() < bound {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if sent < len && s.write_all(b"x").is_ok() {
            sent += 1;
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Finding 2: a body sent one byte at a time, each pause shorter than
/// `body_read_timeout_ms`, is cut off with 408 once `request_timeout_ms` has passed: on the
/// sync path, the async path (whose body collection had no timeout at all) and before
/// authentication. The bound (20 s) sits between the configured 2 s and the default 60 s.
#[test]
fn a_trickled_body_gets_408_after_the_request_timeout() {
    let s = TestServer::start(&config(
        "request_timeout_ms = 2000\nbody_read_timeout_ms = 10000",
    ));
    let addr = s.addr();
    for (what, head) in [
        (
            "sync",
            "POST /echo HTTP/1.1\r\nHost: localhost\r\n".to_string(),
        ),
        (
            "async",
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nX-Fc-Invocation-Type: Async\r\n".to_string(),
        ),
    ] {
        let (code, text) = trickle(
            &addr,
            &head,
            1000,
            Duration::from_millis(300),
            Duration::from_secs(20),
        );
        assert_eq!(code, 408, "{what}: {text}");
        assert!(text.contains("RequestTimeout"), "{what}: {text}");
    }
}

/// Sends `request` as written and returns the status code and the whole answer.
fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Finding 3: an authority that is not `host[:port]` is 400 `InvalidArgument`, never a
/// request whose raw target reaches the function; HTTP/1.1 needs exactly one `Host`; in
/// absolute form the URI's authority is the one the function sees.
#[test]
fn an_invalid_authority_is_refused_and_the_function_sees_only_checked_parts() {
    let s = TestServer::start(&config(""));
    let addr = s.addr();
    for host in ["a b", "%", "a/b", "a@b", "x:99999", "x:1a", "[::1", "a\tb"] {
        let (code, text) = raw(
            &addr,
            &format!("GET /echo/x/../y HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(code, 400, "Host: {host:?}: {text}");
        assert!(text.contains("InvalidArgument"), "Host: {host:?}: {text}");
        assert!(!text.contains("../y"), "the raw target leaked: {text}");
    }
    let (code, text) = raw(&addr, "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 400, "no Host: {text}");
    let (code, text) = raw(
        &addr,
        "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 400, "two Hosts: {text}");
    // A valid one, in upper case with a port: normalised, and the path normalised too.
    let (code, text) = raw(
        &addr,
        "GET /echo/x/../y HTTP/1.1\r\nHost: Example.COM:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"path\":\"/y\""), "{text}");
    assert!(
        text.contains("\"authority\":\"example.com:8080\""),
        "{text}"
    );
    // Absolute form: the URI's authority wins over Host.
    let (code, text) = raw(
        &addr,
        "GET http://Inside.example/echo/z HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"authority\":\"inside.example\""), "{text}");
    assert!(!text.contains("elsewhere"), "{text}");
}

/// Finding 18: a `data_dir` that group or others may write is refused at start, with the
/// reason (before, it was used silently).
#[test]
fn a_data_dir_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = tmp.path().join("wasmgate.toml");
    let text = common::render(&config("")).replace(
        "[limits]",
        &format!("data_dir = {:?}\n\n[limits]", data.display().to_string()),
    );
    std::fs::write(&path, text).unwrap();
    let err = tmp.path().join("stderr");
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // Bounded: a build that accepts the directory serves until killed.
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "served with a world-writable data_dir: {stderr}"
    );
    assert!(stderr.contains("writable by group or others"), "{stderr}");
}

/// A callback host that accepts connections and never answers; counts what it accepted.
struct SilentHost {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentHost {
    fn start() -> SilentHost {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        SilentHost { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

const ADMIN_TOKEN: &str = "abuse-admin-token";

/// Two execution slots, a trigger whose callbacks go to a host that never answers, and one
/// without callbacks.
/// A node with the admin listener and one trigger `t` (echo) taking async requests, no
/// retries, callbacks allowed to `callback_host` only.
fn one_async_trigger(callback_host: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "t"
function = "echo"
async = {{ max_retries = 0, callback_hosts = ["{callback_host}"] }}
"#
    )
}

fn callback_config(silent: &SilentHost, queue: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[queue]
workers = 2
{queue}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "silent"
function = "echo"
async = {{ on_success = "http://{silent}/cb", callback_hosts = ["127.0.0.1"] }}

[[trigger]]
name = "plain"
function = "echo"
async = {{ enabled = true }}
"#,
        silent = silent.addr
    )
}

async fn submit_async(s: &TestServer, path: &str, id: &str) {
    let resp = reqwest::Client::new()
        .post(s.url(path))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{id}");
}

async fn task_state(s: &TestServer, id: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(s.admin_url(&format!("/-/tasks/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls (bounded: `tries` x 50 ms) until `done` holds for the task; the last record seen.
async fn poll_task(
    s: &TestServer,
    id: &str,
    tries: usize,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (bool, serde_json::Value) {
    let mut last = serde_json::Value::Null;
    for _ in 0..tries {
        last = task_state(s, id).await;
        if done(&last) {
            return (true, last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (false, last)
}

/// Finding 4: deliveries to a callback host that never answers do not hold execution slots.
/// Before, each delivery ran inline in the worker through every retry (10 s per attempt), so
/// with both workers delivering, a task of another trigger waited for tens of seconds; the
/// bound here (5 s) is half of one delivery attempt.
#[tokio::test(flavor = "multi_thread")]
async fn callbacks_to_a_silent_host_hold_no_execution_slot() {
    let silent = SilentHost::start();
    let s = TestServer::start(&callback_config(&silent, ""));
    for i in 0..4 {
        submit_async(&s, "/silent", &format!("stuck{i}")).await;
    }
    // Every silent task ran and its delivery is under way.
    for i in 0..4 {
        let (ok, t) = poll_task(&s, &format!("stuck{i}"), 400, |t| t["state"] == "Succeeded").await;
        assert!(ok, "stuck{i}: {t}");
    }
    for _ in 0..400 {
        if silent.accepted() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        silent.accepted() >= 4,
        "deliveries started: {}",
        silent.accepted()
    );
    submit_async(&s, "/plain", "free").await;
    let (ok, t) = poll_task(&s, "free", 100, |t| t["state"] == "Succeeded").await;
    assert!(
        ok,
        "a task waited behind callback deliveries (two workers, four silent callbacks): {t}"
    );
}

/// `callback_concurrency` bounds the POSTs in flight: with 1, the silent host sees one
/// connection while three deliveries wait (each attempt waits 10 s for an answer).
#[tokio::test(flavor = "multi_thread")]
async fn callback_concurrency_bounds_deliveries_in_flight() {
    let silent = SilentHost::start();
    let s = TestServer::start(&callback_config(&silent, "callback_concurrency = 1"));
    for i in 0..3 {
        submit_async(&s, "/silent", &format!("held{i}")).await;
    }
    for i in 0..3 {
        let (ok, t) = poll_task(&s, &format!("held{i}"), 400, |t| t["state"] == "Succeeded").await;
        assert!(ok, "held{i}: {t}");
    }
    // Bounded look, well inside the first attempt's 10 s wait: never more than one.
    for _ in 0..40 {
        assert!(
            silent.accepted() <= 1,
            "{} deliveries at once",
            silent.accepted()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(silent.accepted(), 1);
}

/// Finding 8: one trigger that stores delayed tasks with large bodies fills at most its
/// share (a quarter of `max_queue_bytes` by default, or its `async.max_queue_bytes`); other
/// triggers keep theirs (before: the first trigger took every byte, and every other got 503).
#[tokio::test(flavor = "multi_thread")]
async fn one_trigger_cannot_fill_the_queue_for_the_others() {
    let s = TestServer::start(&queue_config(""));
    let hog = fill_trigger(&s, "/hog").await;
    // A quarter of 400 000 bytes holds four 20 000-byte tasks, not five.
    assert_eq!(hog.0, 4, "{:?}", hog.1);
    let (status, text) = hog.1.expect("the hog was refused");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("'hog'"), "{text}");
    let other = fill_trigger(&s, "/other").await;
    assert!(other.0 >= 1, "another trigger found no room: {:?}", other.1);
    drop(s);
    // A trigger's own quota replaces the share.
    let s = TestServer::start(&queue_config("async = { max_queue_bytes = 200000 }"));
    let big = fill_trigger(&s, "/hog").await;
    assert_eq!(big.0, 9, "async.max_queue_bytes = 200000: {:?}", big.1);
}

fn queue_config(hog_async: &str) -> String {
    let hog_async = if hog_async.is_empty() {
        "async = { enabled = true }"
    } else {
        hog_async
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"

[queue]
max_queue_bytes = 400000

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "hog"
function = "echo"
{hog_async}

[[trigger]]
name = "other"
function = "echo"
async = {{ enabled = true }}
"#
    )
}

/// Submits 20 000-byte tasks delayed by an hour to `path` until one is refused (at most 40):
/// how many were accepted, and the refusal.
async fn fill_trigger(s: &TestServer, path: &str) -> (usize, Option<(u16, String)>) {
    let client = reqwest::Client::new();
    let body = vec![b'x'; 20_000];
    let url = s.url(path);
    {
        {
            let mut accepted = 0;
            let mut last = None;
            for _ in 0..40 {
                let r = client
                    .post(&url)
                    .header("x-fc-invocation-type", "Async")
                    .header("x-fc-async-delay", "3600")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                if r.status() != 202 {
                    last = Some((r.status().as_u16(), r.text().await.unwrap()));
                    break;
                }
                accepted += 1;
            }
            (accepted, last)
        }
    }
}

/// Finding 5: what the queue hands back is checked like client input. Two tasks are
/// altered in the SQLite file while the node is down: one's body grows past every limit, the
/// other's client-supplied callback URL is moved to a host `callback_hosts` does not list.
/// The first is set aside (Failed, named in the log), the second's callback is not delivered
/// (before: the first ran with its 10 MB body, the second's callback reached the other host).
#[tokio::test(flavor = "multi_thread")]
async fn tasks_read_back_from_the_queue_are_checked_like_requests() {
    let (listed, unlisted) = (common::Receiver::start(200), common::Receiver::start(200));
    let dir = tempfile::tempdir().unwrap();
    let cfg = one_async_trigger(&listed.addr);
    let mut s = TestServer::start_in(dir.path(), &cfg, &[]);
    let client = reqwest::Client::new();
    for (id, callback) in [
        ("big", None),
        ("moved", Some(listed.url("/cb"))),
        ("misnamed", None),
    ] {
        let mut req = client
            .post(s.url("/t"))
            .header("x-fc-invocation-type", "Async")
            .header("x-fc-async-task-id", id)
            .header("x-fc-async-delay", "3600")
            .body("small");
        if let Some(url) = callback {
            req = req.header("x-callback-url", url);
        }
        assert_eq!(req.send().await.unwrap().status(), 202, "{id}");
    }
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    {
        let db = rusqlite::Connection::open(dir.path().join("data/tasks.db")).unwrap();
        let n = db
            .execute(
                "UPDATE tasks SET body = zeroblob(10000000), due_ms = 0 WHERE id = 'big'",
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
        let n = db
            .execute(
                "UPDATE tasks SET callback_url = ?1, due_ms = 0 WHERE id = 'moved'",
                [unlisted.url("/stolen")],
            )
            .unwrap();
        assert_eq!(n, 1);
        // A stored header no client could have sent: a name with a space in it.
        let n = db
            .execute(
                "UPDATE tasks SET invocation = json_set(invocation, '$.headers[0][0]', 'bad name'),
                 due_ms = 0 WHERE id = 'misnamed'",
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let s = TestServer::start_in(dir.path(), &cfg, &[]);
    let (ok, t) = poll_task(&s, "big", 400, |t| t["state"] == "Failed").await;
    assert!(ok, "an oversized stored body was run: {t}");
    assert!(
        s.stderr_text()
            .contains("a stored task set aside: its body of 10000000 bytes"),
        "{t}\n{}",
        s.stderr_text()
    );
    let (ok, t) = poll_task(&s, "moved", 400, |t| {
        t["callback_status"]
            .as_str()
            .is_some_and(|c| c != "Pending")
    })
    .await;
    assert!(ok, "{t}");
    assert!(
        t["callback_status"]
            .as_str()
            .unwrap_or("")
            .contains("not delivered"),
        "{t}"
    );
    assert!(
        unlisted.next(Duration::from_millis(200)).is_none(),
        "a callback reached a host callback_hosts does not list"
    );
    assert!(listed.next(Duration::from_millis(10)).is_none());
    let (ok, t) = poll_task(&s, "misnamed", 400, |t| t["state"] == "Failed").await;
    assert!(ok, "a task with an invalid stored header was run: {t}");
    assert!(
        s.stderr_text().contains("stored header 'bad name'"),
        "{}",
        s.stderr_text()
    );
    // The node still serves.
    let r = client.post(s.url("/t")).body("after").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A node of the JetStream server `broker`, with an admin listener and one async trigger.
fn cluster_node(broker: &common::Broker) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"
{cluster}
[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "echo"
function = "echo"
async = {{ enabled = true }}
"#,
        cluster = common::cluster_section(broker)
    )
}

/// Finding 5, the cluster registry: a version record whose size would size a petabyte
/// buffer, and one whose digest is not a digest (it names a file), are set aside with a log
/// line; the node keeps serving (before: the first aborted every node that read it).
#[tokio::test(flavor = "multi_thread")]
async fn bad_registry_records_on_nats_are_set_aside() {
    let broker = common::Broker::jetstream();
    let s = TestServer::start(&cluster_node(&broker));
    let nats = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    // The node made both stores; wait for them (bounded).
    let mut stores = None;
    for _ in 0..200 {
        if let (Ok(kv), Ok(objects)) = (
            js.get_key_value("wasmgate_registry").await,
            js.get_object_store("wasmgate_components").await,
        ) {
            stores = Some((kv, objects));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (kv, objects) = stores.expect("the registry's bucket and object store");
    let sha = "ab".repeat(32);
    objects
        .put(sha.as_str(), &mut &b"\0asm\x0d\0\x01\0"[..])
        .await
        .unwrap();
    kv.put(
        "version.huge.1",
        format!(r#"{{"sha256":"{sha}","size":1125899906842624,"created_ms":0}}"#).into(),
    )
    .await
    .unwrap();
    kv.put(
        "version.escape.1",
        r#"{"sha256":"../../../escape","size":8,"created_ms":0}"#.into(),
    )
    .await
    .unwrap();
    assert!(
        s.wait_for_count("a version record set aside", 2),
        "{}",
        s.stderr_text()
    );
    let resp = reqwest::Client::new()
        .get(s.url("/echo/after"))
        .send()
        .await
        .expect("the node still serves");
    assert_eq!(resp.status(), 200);
}

const SIGNING_SECRET: &str = "abuse-signing-secret";

fn signed_config() -> String {
    r#"
[server]
listen = "127.0.0.1:0"

[limits]
body_buffer_bytes = 65536

[[function]]
name = "probe"
wasm = "{probe}"
memory_mb = 64

[[trigger]]
name = "signed"
function = "probe"
auth = "signature"
signature = { keys = [ { id = "AK1", secret_env = "AK1_SECRET" } ] }
"#
    .to_string()
}

/// The largest `consumed N` the probe logged: how much of the body the function read.
fn consumed(log: &str) -> usize {
    log.split("consumed ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Finding 9: a signed `x-acs-content-sha256` that the body does not match, on a body past
/// `body_buffer_bytes` (so it streams to the function): 403, and the function never gets the
/// end of the body (before: it was handed every byte, and the mismatch was found after).
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_that_misses_its_signed_hash_never_reaches_its_end() {
    let s = TestServer::start_with_env(&signed_config(), &[("AK1_SECRET", SIGNING_SECRET)]);
    let path = "/signed/consume";
    // Sends `body` signed with the hash of `claimed`.
    let send = |claimed: &[u8], body: Vec<u8>| {
        let hash = wasmgate::auth::signature::sha256_hex(claimed);
        let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut h = http::HeaderMap::new();
        h.insert("x-acs-date", date.parse().unwrap());
        h.insert("x-acs-content-sha256", hash.parse().unwrap());
        let names = vec!["x-acs-content-sha256".to_string(), "x-acs-date".to_string()];
        let canonical =
            wasmgate::auth::signature::acs3_canonical_request("POST", path, "", &h, &names, &hash);
        let sig = wasmgate::auth::signature::hmac_hex(
            SIGNING_SECRET.as_bytes(),
            wasmgate::auth::signature::acs3_string_to_sign(&canonical).as_bytes(),
        );
        reqwest::Client::new()
            .post(s.url(path))
            .header("x-acs-date", date)
            .header("x-acs-content-sha256", hash)
            .header(
                "authorization",
                format!(
                    "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=x-acs-content-sha256;x-acs-date,Signature={sig}"
                ),
            )
            .body(body)
            .send()
    };
    // A matching body streams through whole (2 MB: shorter than the forged one below).
    let matching = vec![b'a'; 2_000_000];
    let resp = send(&matching, matching.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), matching.len().to_string());
    let len = 3_000_000;
    let claimed = vec![b'a'; len];
    let mut sent = claimed.clone();
    sent[len - 1] = b'b';
    let resp = send(&claimed, sent).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("SignatureNotMatch"));
    // Bounded: let the log catch up with the function's last lines.
    let _ = s.wait_for_log("consumed 2999");
    let read = consumed(&s.stderr_text());
    assert!(
        read < len,
        "the function read all {read} bytes of a body that did not match its signed hash"
    );
    assert!(
        read > 2_000_000,
        "the forged body was not streamed at all: {read}"
    );
}

/// Finding 9: the FC form signs `Content-MD5`; a body that does not match it is 403 (before:
/// the header was signed but the body never checked against it).
#[tokio::test(flavor = "multi_thread")]
async fn the_fc_form_checks_the_signed_content_md5() {
    use base64::Engine;
    use hmac::Mac;
    let s = TestServer::start_with_env(&signed_config(), &[("AK1_SECRET", SIGNING_SECRET)]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let send = |body: &'static str, md5_of: &'static str| {
        let md5 = b64.encode(<md5::Md5 as md5::Digest>::digest(md5_of.as_bytes()));
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let path = "/signed/consume";
        let to_sign = format!("POST\n{md5}\n\n{date}\n{path}\n");
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
        mac.update(to_sign.as_bytes());
        let sig = b64.encode(mac.finalize().into_bytes());
        reqwest::Client::new()
            .post(s.url(path))
            .header("date", date)
            .header("content-md5", md5)
            .header("authorization", format!("FC AK1:{sig}"))
            .body(body)
            .send()
    };
    let resp = send("the body", "the body").await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = send("another body", "the body").await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("SignatureNotMatch"), "{text}");
    assert!(text.contains("Content-MD5"), "{text}");
}

/// Finding 11: a guest whose `outbound_hosts` lists a loopback name cannot reach the admin
/// listener, nor anything internal through the name; a listed address reaches what it names
/// but never the admin listener (before: `localhost` reached the admin API).
#[tokio::test(flavor = "multi_thread")]
async fn guest_outbound_never_reaches_the_admin_listener_or_the_inside_by_name() {
    let inside = common::Receiver::start(200);
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
outbound_hosts = ["localhost", "127.0.0.1"]

[[trigger]]
name = "probe"
function = "probe"
"#
    ));
    let admin = s.admin_url("/-/tasks");
    let admin_port = admin
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let fetch = |url: String| {
        let target = s.url(&format!("/probe/fetch?url={url}"));
        async move {
            let r = reqwest::get(target).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for url in [
        format!("http://localhost:{admin_port}/-/tasks"),
        format!("http://127.0.0.1:{admin_port}/-/tasks"),
        format!(
            "http://localhost:{}/x",
            inside.addr.split(':').nth(1).unwrap()
        ),
    ] {
        let (status, text) = fetch(url.clone()).await;
        assert_eq!(status, 502, "{url} was reached: {text}");
    }
    assert!(inside.next(Duration::from_millis(100)).is_none());
    // The listed address itself still reaches what it names.
    let (status, text) = fetch(inside.url("/listed")).await;
    assert_eq!((status, text.as_str()), (200, "200"));
    assert_eq!(
        inside.next(Duration::from_secs(10)).unwrap().path,
        "/listed"
    );
}

/// Finding 15: `/readyz` without the admin token names a failing source, and a JWT trigger
/// whose keys cannot be fetched, with their states, not the error text (which names hosts
/// and accounts); with the token, the reasons.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_without_the_token_withholds_error_text() {
    let port = common::free_port();
    // Nothing listens here either: the JWT trigger's key fetches fail with the address.
    let keys_port = common::free_port();
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "sensors"
kind = "mqtt"
function = "echo"
broker = "mqtt://127.0.0.1:{port}"
topics = ["x/#"]

[[trigger]]
name = "api"
function = "echo"
path = "/api"
auth = "jwt"
[trigger.jwt]
jwks_url = "http://127.0.0.1:{keys_port}/jwks"
algorithms = ["RS256"]
"#
    ));
    let client = reqwest::Client::new();
    let ready = |token: bool| {
        let mut req = client.get(s.admin_url("/readyz"));
        if token {
            req = req.bearer_auth(ADMIN_TOKEN);
        }
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // Bounded: until the source has failed to connect at least once and the first key fetch
    // has failed.
    let mut full = serde_json::Value::Null;
    for _ in 0..200 {
        full = ready(true).await;
        let source_failed = full["sources"]["sensors"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty());
        let keys_failed = full["jwt_keys"]["api"]["problem"].is_string();
        if source_failed && keys_failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(full["degraded"].to_string().contains("sensors"), "{full}");
    assert!(full["degraded"].to_string().contains("api"), "{full}");
    let detail = full["sources"]["sensors"]["detail"].as_str().unwrap_or("");
    assert!(!detail.is_empty(), "{full}");
    let problem = full["jwt_keys"]["api"]["problem"].as_str().unwrap_or("");
    assert!(problem.contains(&keys_port.to_string()), "{full}");
    let public = ready(false).await;
    assert!(
        public["degraded"].to_string().contains("sensors"),
        "{public}"
    );
    assert!(public["degraded"].to_string().contains("api"), "{public}");
    assert_eq!(public["sources"]["sensors"]["detail"], "", "{public}");
    assert_eq!(
        public["jwt_keys"]["api"]["problem"], "details with the admin token",
        "{public}"
    );
    assert!(!public.to_string().contains(&port.to_string()), "{public}");
    assert!(
        !public.to_string().contains(&keys_port.to_string()),
        "{public}"
    );
}

/// Finding 2, the bytes one connection holds: HTTP/2 streams share
/// `limits.connection_buffer_bytes` (default 4 MiB) of read-ahead. Thirty-two async uploads
/// of 128 KiB in progress hold it; the next is refused with 503 at once rather than buffered
/// (before: every stream could hold its own buffer, 256 of them per connection); a cancelled
/// upload gives its share back.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_holds_at_most_its_read_ahead_budget() {
    let s = TestServer::start(&config("body_read_timeout_ms = 30000"));
    let addr = s.addr();
    let (send, conn) = h2_connect(&addr, 65_535).await;
    tokio::spawn(conn);
    let upload = |mut send: h2::client::SendRequest<bytes::Bytes>| {
        let addr = addr.clone();
        async move {
            send = send.ready().await.unwrap();
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/echo"))
                .header("x-fc-invocation-type", "Async")
                .header("content-length", "131072")
                .body(())
                .unwrap();
            let (response, mut body) = send.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"x"), false)
                .unwrap();
            (response, body)
        }
    };
    // Thirty-three uploads: whichever the gateway reads last finds the budget taken and is
    // the first (and only) one answered, at once, with 503; the others wait for their bodies.
    let mut responses = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..33 {
        let (response, body) = upload(send.clone()).await;
        responses.push(Box::pin(response));
        bodies.push(body);
    }
    let (over, refused, mut held) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::select_all(responses),
    )
    .await
    .expect("the upload past the budget is answered at once, not buffered");
    assert_eq!(over.unwrap().status(), 503);
    bodies.remove(refused);
    // One gives up: its share comes back, and a new upload is read whole (bounded: the
    // share is given back as the gateway sees the reset).
    drop(held.remove(0));
    bodies.remove(0).send_reset(h2::Reason::CANCEL);
    let mut status = 0;
    for _ in 0..100 {
        let (again, mut body) = upload(send.clone()).await;
        body.send_data(bytes::Bytes::from(vec![b'y'; 131_071]), true)
            .unwrap();
        status = tokio::time::timeout(Duration::from_secs(10), again)
            .await
            .expect("an answer")
            .unwrap()
            .status()
            .as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 202);
    drop((held, bodies));
}

/// Finding 13: with `[cluster]`, the task list reads a bounded page of records and says
/// where the next one starts (before: every record of the bucket was read for each call).
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_task_list_comes_in_pages() {
    let broker = common::Broker::jetstream();
    let s = TestServer::start(&cluster_node(&broker));
    let client = reqwest::Client::new();
    for i in 0..5 {
        // Bounded: the node may still be connecting to NATS (503 meanwhile).
        let mut status = 0;
        for _ in 0..200 {
            status = client
                .post(s.url("/echo"))
                .header("x-fc-invocation-type", "Async")
                .header("x-fc-async-task-id", format!("page{i}"))
                .header("x-fc-async-delay", "3600")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 202, "page{i}");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut url = "/-/tasks?trigger=echo&limit=2".to_string();
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: serde_json::Value = client
            .get(s.admin_url(&url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tasks = page["tasks"].as_array().expect("tasks").clone();
        assert!(tasks.len() <= 2, "{page}");
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => {
                assert!(page.get("next").is_some(), "no next field: {page}");
                break;
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["page0", "page1", "page2", "page3", "page4"]);
}

/// Whether the server's log shows `needle` within `bound` (polled; a bound, not a
/// measurement).
fn logged_within(s: &TestServer, needle: &str, bound: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if s.stderr_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    s.stderr_text().contains(needle)
}

/// `send_timeout_ms` on HTTP/1.1, under TCP flow control: a client asks for an 8 MB response
/// (the echo of an 8 MB body) with a small receive buffer and never reads. The server closes
/// the connection once the response has waited `send_timeout_ms` for room, though the
/// function's timeout and the idle timeout are far away; reading afterwards gives a
/// truncated response and then the end of the stream. The bound (12 s) sits between the
/// configured 1 s and the default 30 s.
#[test]
fn an_http1_client_that_never_reads_is_cut_off_after_the_send_timeout() {
    let s = TestServer::start_with_env(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
send_timeout_ms = 1000
idle_timeout_ms = 600000

[[function]]
name = "echo"
wasm = "{echo}"
memory_mb = 64
timeout_ms = 600000

[[trigger]]
name = "echo"
function = "echo"
"#,
        &[("RUST_LOG", "info,wasmgate::server=debug")],
    );
    const CLOSED: &str = "a response made no progress within send_timeout_ms";
    let len = 8 << 20;
    // A receive buffer of a few KiB: the response fills it, and the server's send buffer,
    // at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = s.addr().parse().unwrap();
    let mut stream = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { socket.connect(addr).await.unwrap().into_std().unwrap() });
    stream.set_nonblocking(false).unwrap();
    stream
        .write_all(
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    stream.write_all(&vec![b'x'; len]).unwrap();
    assert!(
        logged_within(&s, CLOSED, Duration::from_secs(12)),
        "the stalled response's connection was not closed within 12 s (send_timeout_ms = 1000):\n{}",
        s.stderr_text()
    );
    // What the kernel had taken before the close arrives, then the end: never the whole echo.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(
        ended,
        "the connection stayed open after {} bytes",
        got.len()
    );
    assert!(
        got.len() < len && !text.contains("\"counter\":"),
        "the whole response came through ({} bytes)",
        got.len()
    );
    // The echo guest, still writing when its connection went, panics on the closed stream
    // (its `expect`): the guest's stderr, which the harness tells from a server panic.
    assert!(
        logged_within(&s, "StreamError::Closed", Duration::from_secs(5)),
        "{}",
        s.stderr_text()
    );
}

/// `request_timeout_ms` bounds the read of a JWT form before authentication: a trigger that
/// looks for its token in a form field reads the form first, and a form trickled one byte at
/// a time (each pause far shorter than `body_read_timeout_ms`) is cut off with 408
/// `RequestTimeout` for the request timeout. The same form sent whole gets 401 (no token):
/// the wait is the form read's. The bound (20 s) sits between the configured 2 s and the
/// default 60 s.
#[test]
fn a_trickled_jwt_form_gets_408_after_the_request_timeout() {
    let jwks = common::root()
        .join("tests/fixtures/jwks.json")
        .display()
        .to_string();
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[limits]
request_timeout_ms = 2000
body_read_timeout_ms = 10000

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "form"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256"]
token_lookup = "header:Authorization:Bearer ,form:jwt"
"#
    ));
    let addr = s.addr();
    let head = "POST /form HTTP/1.1\r\nHost: localhost\r\n\
                Content-Type: application/x-www-form-urlencoded\r\n";
    let (code, text) = raw(
        &addr,
        &format!("{head}Content-Length: 3\r\nConnection: close\r\n\r\na=b"),
    );
    assert_eq!(code, 401, "a whole form without a token: {text}");
    let (code, text) = trickle(
        &addr,
        head,
        1000,
        Duration::from_millis(300),
        Duration::from_secs(20),
    );
    assert_eq!(code, 408, "{text}");
    assert!(text.contains("RequestTimeout"), "{text}");
    assert!(text.contains("not received within 2000 ms"), "{text}");
}

/// Finding 17: a webhook URL is a secret (its query or userinfo often carries the token), so
/// the log line of a failed delivery names the host and path only. Before, the whole URL
/// was logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_callback_is_logged_without_its_credentials() {
    let hook = common::Receiver::start(500);
    let s = TestServer::start(&one_async_trigger("127.0.0.1"));
    let url = format!(
        "http://hookuser:pw-s3cret@{}/hooks/orders?token=q-s3cret#frag-s3cret",
        hook.addr
    );
    let resp = reqwest::Client::new()
        .post(s.url("/t"))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", "hooked")
        .header("x-callback-url", &url)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = hook
        .next(Duration::from_secs(30))
        .expect("the callback was sent");
    assert_eq!(got.path, "/hooks/orders?token=q-s3cret");
    let (done, t) = poll_task(&s, "hooked", 400, |t| {
        t["callback_status"]
            .as_str()
            .is_some_and(|c| c.starts_with("Failed"))
    })
    .await;
    assert!(done, "{t}");
    // Bounded: the warning is written by the log thread after the record.
    let mut log = String::new();
    for _ in 0..100 {
        log = s.stderr_text();
        if log.contains("callback failed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = log
        .lines()
        .find(|l| l.contains("callback failed"))
        .unwrap_or_else(|| panic!("no failed-callback line in the log:\n{log}"));
    assert!(
        line.contains(&format!("http://{}/hooks/orders?...", hook.addr)),
        "{line}"
    );
    assert!(
        !log.contains("s3cret"),
        "a credential reached the log:\n{log}"
    );
    assert!(!log.contains("hookuser"), "{log}");
}
