//! Test harness: builds the guest functions, starts the real `wasmgate` binary on
//! 127.0.0.1:0 with a config written to a temporary directory, and gives HTTP clients for it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

/// How long a starting server may take to print its listeners (it compiles every function
/// first; a bound against a hung server, not a measurement).
const STARTUP_BOUND: Duration = Duration::from_secs(180);

/// The `wasmgate` binary under test: this build's, or `WASMGATE_BIN` to run the same tests
/// against another build (for instance main's, to see a new test fail there first).
pub fn bin() -> PathBuf {
    std::env::var_os("WASMGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wasmgate")))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `functions/` for wasm32-wasip2 once per test binary; returns the directory of the
/// `.wasm` files.
pub fn functions_dir() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(root().join("functions"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building functions/ failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
        );
    });
    root().join("functions/target/wasm32-wasip2/release")
}

pub fn wasm(name: &str) -> String {
    functions_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// Replaces `{hello}`, `{echo}`, `{probe}`, `{counter}`, `{python-counter}`,
/// `{unknown-import}` (wasm paths) and `{certs}` in a config template.
pub fn render(template: &str) -> String {
    template
        .replace("{hello}", &wasm("hello"))
        .replace("{echo}", &wasm("echo"))
        .replace("{probe}", &wasm("probe"))
        .replace("{counter}", &wasm("counter"))
        .replace("{python-counter}", &wasm("python-counter"))
        .replace("{unknown-import}", &wasm("unknown-import"))
        .replace("{certs}", &root().join("certs").display().to_string())
}

/// A running `wasmgate serve`.
pub struct TestServer {
    pub child: Child,
    pub public: String,
    pub internal: Option<String>,
    pub admin: Option<String>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts the binary with `template` (see [`render`]) and waits until it prints its
    /// public listener.
    pub fn start(template: &str) -> TestServer {
        Self::start_with_env(template, &[])
    }

    pub fn start_with_env(template: &str, env: &[(&str, &str)]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_in(tmp.path(), template, env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts the binary with its config (and so its `data_dir`) in `dir`, which the caller
    /// owns: a second server started in the same directory sees the first one's data.
    pub fn start_in(dir: &Path, template: &str, env: &[(&str, &str)]) -> TestServer {
        let config = dir.join("wasmgate.toml");
        let mut text = render(template);
        if cluster_backend() && !text.contains("[cluster]") {
            text.push_str(&cluster_section(&jetstream_for(dir)));
        }
        std::fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wasmgate");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // The listeners' addresses come on stdout right after compiling. A reader thread
        // hands the lines over so that the wait is bounded: a server that neither prints
        // them nor exits fails the test with its log instead of hanging it.
        let out = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let mut public = None;
        let mut internal = None;
        let mut admin = None;
        let rendered = render(template);
        let wants_internal = rendered.contains("internal_listen");
        let wants_admin = rendered.contains("admin_listen");
        let deadline = std::time::Instant::now() + STARTUP_BOUND;
        while let Ok(line) =
            line_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if let Some(url) = line.strip_prefix("public listening on ") {
                public = Some(url.to_string());
            } else if let Some(url) = line.strip_prefix("internal listening on ") {
                internal = Some(url.to_string());
            } else if let Some(url) = line.strip_prefix("admin listening on ") {
                admin = Some(url.to_string());
            }
            if public.is_some()
                && (!wants_internal || internal.is_some())
                && (!wants_admin || admin.is_some())
            {
                break;
            }
        }
        let started = public.is_some()
            && (!wants_internal || internal.is_some())
            && (!wants_admin || admin.is_some());
        if !started {
            let _ = child.kill();
        }
        let (Some(public), true) = (public, started) else {
            let _ = child.wait();
            panic!(
                "wasmgate did not start:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        };
        TestServer {
            child,
            public,
            internal,
            admin,
            stderr,
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// `template` rendered as this server's config file would be (on the cluster backend,
    /// with the same `[cluster]` section): what a test writes before a reload.
    pub fn config_text(&self, template: &str) -> String {
        let mut text = render(template);
        if cluster_backend() && !text.contains("[cluster]") {
            text.push_str(&cluster_section(&jetstream_for(&self.dir)));
        }
        text
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.public, path)
    }

    pub fn addr(&self) -> String {
        self.public
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the server's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        for _ in 0..200 {
            if self.stderr_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Waits (bounded) until `needle` appears at least `n` times in the server's log.
    pub fn wait_for_count(&self, needle: &str, n: usize) -> bool {
        for _ in 0..400 {
            if self.stderr_text().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Kills the process without any chance to clean up (a crash).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin.as_deref().expect("admin listener"), path)
    }

    /// `GET /metrics` on the admin listener with `token`: the exposition text.
    pub async fn metrics(&self, token: &str) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .expect("the admin API answers")
            .text()
            .await
            .expect("the metrics text")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded by `limit`), returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Whether the server had already exited (crashed) before the test let go of it.
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.stderr_text();
        // A guest's own panic (its stderr, logged under `wasmgate::guest`) is the guest's
        // business, e.g. a probe whose body was cut; a panic of the server is a failure.
        let server_panicked = log
            .lines()
            .filter(|l| !l.contains("wasmgate::guest"))
            .any(|l| l.contains("panicked"));
        if server_panicked && !std::thread::panicking() {
            panic!("the server panicked:\n{log}");
        }
        if std::thread::panicking() {
            // The test failed: what the server said last is the first thing to read.
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "--- the server's log, last {} lines (had exited by itself: {:?}) ---\n{}",
                tail.len(),
                exited,
                tail.join("\n")
            );
        }
    }
}

/// An HTTPS client trusting the dev CA (HTTP/2 by ALPN when the server offers it).
/// Runs `wasmgate ARGS --admin <server's admin URL>` with `token` as the admin token:
/// (exit success, stdout, stderr).
pub fn admin_cli(server: &TestServer, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .args([
            "--admin",
            server.admin.as_deref().expect("an admin listener"),
        ])
        .env("WASMGATE_ADMIN_TOKEN", token)
        .output()
        .expect("run wasmgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn client() -> reqwest::Client {
    let ca = std::fs::read(root().join("certs/ca.pem")).expect("ca.pem");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A client that speaks HTTP/1.1 only.
pub fn client_http1() -> reqwest::Client {
    let ca = std::fs::read(root().join("certs/ca.pem")).expect("ca.pem");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Parses a gateway error body, checking the SPEC shape and that RequestId matches the header.
pub async fn error_body(resp: reqwest::Response) -> serde_json::Value {
    let rid = resp
        .headers()
        .get("x-fc-request-id")
        .expect("x-fc-request-id on every response")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let v: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(v["RequestId"], rid.as_str());
    assert!(v["Code"].is_string() && v["Message"].is_string(), "{v}");
    v
}

pub fn certs() -> PathBuf {
    root().join("certs")
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A request received by [`Receiver`].
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 server on loopback that records every request (a callback receiver).
/// Answers `status` to each.
pub struct Receiver {
    pub addr: String,
    rx: std::sync::mpsc::Receiver<Received>,
    latch: Option<Arc<Latch>>,
}

/// A one-way switch threads wait on: closed until [`Latch::open`], then open for good.
#[derive(Default)]
pub struct Latch {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Latch {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }
}

impl Receiver {
    /// A receiver that answers every request with `status` at once.
    pub fn start(status: u16) -> Receiver {
        Self::spawn(status, None)
    }

    /// A receiver that reports each request as it arrives but answers none (with `status`)
    /// until [`Receiver::open`]: a delivery the test holds in flight for as long as it needs.
    pub fn start_held(status: u16) -> Receiver {
        Self::spawn(status, Some(Arc::new(Latch::default())))
    }

    /// Answers the held requests and every later one.
    pub fn open(&self) {
        if let Some(l) = &self.latch {
            l.open();
        }
    }

    fn spawn(status: u16, latch: Option<Arc<Latch>>) -> Receiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let held = latch.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                let held = held.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let start: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end + 4..].to_vec();
                    while body.len() < len {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let received = Received {
                        method: start.first().unwrap_or(&"").to_string(),
                        path: start.get(1).unwrap_or(&"").to_string(),
                        headers,
                        body,
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    match held {
                        Some(latch) => {
                            let _ = tx.send(received);
                            latch.wait();
                            let _ = stream.write_all(answer.as_bytes());
                        }
                        None => {
                            let _ = stream.write_all(answer.as_bytes());
                            let _ = tx.send(received);
                        }
                    }
                });
            }
        });
        Receiver { addr, rx, latch }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next request, waiting at most `limit` (a bound against a broken server, not a
    /// timing assertion).
    pub fn next(&self, limit: Duration) -> Option<Received> {
        self.rx.recv_timeout(limit).ok()
    }

    /// Everything received before the first request that `is_marker` picks (which is taken
    /// too); panics if no marker comes within `limit`. A negative check ("nothing else was
    /// called back") waits for a marker sent after the event under test instead of a
    /// guessed time.
    pub fn until(&self, limit: Duration, is_marker: impl Fn(&Received) -> bool) -> Vec<Received> {
        let mut before = Vec::new();
        loop {
            let got = self
                .next(limit)
                .unwrap_or_else(|| panic!("the marker never came; before it: {before:?}"));
            if is_marker(&got) {
                return before;
            }
            before.push(got);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.open();
    }
}

/// A loopback HTTP server whose requests wait until the test opens it. A guest that fetches
/// it (the probe's `/fetch?url=`) holds its slot (a concurrency permit, a node permit, a
/// queue worker) exactly until the test is done looking, with no guessed duration.
pub struct Gate {
    addr: String,
    arrived: Arc<(Mutex<usize>, Condvar)>,
    latch: Arc<Latch>,
}

/// How long a test waits for requests to reach a gate (a bound against a broken server).
const GATE_BOUND: Duration = Duration::from_secs(60);

impl Gate {
    pub fn start() -> Gate {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
        let latch = Arc::new(Latch::default());
        let (count, gate) = (arrived.clone(), latch.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let (count, gate) = (count.clone(), gate.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    *count.0.lock().unwrap() += 1;
                    count.1.notify_all();
                    gate.wait();
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nopen",
                    );
                });
            }
        });
        Gate {
            addr,
            arrived,
            latch,
        }
    }

    /// The URL a guest fetches to wait at the gate.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Waits (bounded) until `n` requests in all have reached the gate; panics if they do
    /// not.
    pub fn wait_arrivals(&self, n: usize) {
        let (count, changed) = &*self.arrived;
        let deadline = Instant::now() + GATE_BOUND;
        let mut got = count.lock().unwrap();
        while *got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{} of {n} requests reached the gate", *got);
            got = changed.wait_timeout(got, left).unwrap().0;
        }
    }

    /// How many requests have reached the gate so far.
    pub fn arrivals(&self) -> usize {
        *self.arrived.0.lock().unwrap()
    }

    /// Lets every waiting request, and every later one, through.
    pub fn open(&self) {
        self.latch.open();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A broker (mosquitto or nats-server) started for one test on a free loopback port;
/// killed when dropped. A broker that is not installed fails the test (the brokers come
/// from Debian: `apt-get install mosquitto mosquitto-clients nats-server`; `scripts/install-test-deps.sh`
/// installs them).
pub struct Broker {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    /// mosquitto on a free port; `extra` is appended to its configuration (it may name
    /// files in `dir`, written by `files` first).
    pub fn mosquitto(extra: &str, files: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write broker file");
        }
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(
            &conf,
            // `user root`: started as root, mosquitto would otherwise drop to its own user
            // before it reads the TLS files, and a checkout under a directory only its owner
            // may enter (`mktemp -d`) is closed to that user. Ignored when not root.
            format!("listener {port} 127.0.0.1\npersistence false\nuser root\n{extra}\n"),
        )
        .expect("write mosquitto.conf");
        let (out, err) = broker_log(dir.path());
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)");
        Self::ready(child, port, dir)
    }

    /// nats-server on a free port.
    pub fn nats() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (out, err) = broker_log(dir.path());
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("nats-server is not installed (apt-get install nats-server)");
        Self::ready(child, port, dir)
    }

    /// nats-server with JetStream (file storage in `dir`) on a free port. It dies with the
    /// thread that started it (a test's), whoever holds it.
    pub fn jetstream() -> Broker {
        Self::jetstream_with(&[])
    }

    /// The same with more nats-server arguments (TLS, users).
    pub fn jetstream_with(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Self::jetstream_command(port, dir.path())
            .args(extra)
            .spawn()
            .expect("nats-server is not installed (apt-get install nats-server)");
        Self::ready(child, port, dir)
    }

    fn jetstream_command(port: u16, store: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("nats-server");
        let (out, err) = broker_log(store);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Stops the server (its JetStream store stays in `dir`).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped JetStream server again on the same port and store.
    pub fn restart(&mut self) {
        self.child = Self::jetstream_command(self.port, self.dir.path())
            .spawn()
            .expect("nats-server");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nats-server did not come back on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// What the broker wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the broker accepts connections.
    fn ready(child: Child, port: u16, dir: tempfile::TempDir) -> Broker {
        let broker = Broker { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return broker;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "the broker did not listen on port {port}:\n{}",
            broker.log()
        );
    }

    /// Publishes one MQTT message with mosquitto_pub (QoS 1 unless `qos` says otherwise).
    pub fn publish(&self, topic: &str, payload: &str, qos: u8) {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-q", &qos.to_string(), "-t", topic, "-m", payload])
            .status()
            .expect("mosquitto_pub is not installed (apt-get install mosquitto-clients)");
        assert!(status.success(), "mosquitto_pub failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker's stdout and stderr, appended to `broker.log` in its directory (kept for the
/// failure message rather than thrown away).
fn broker_log(dir: &Path) -> (Stdio, Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("broker log");
    let err = file.try_clone().expect("broker log");
    (Stdio::from(file), Stdio::from(err))
}

/// Whether this run puts the queue and the registry on NATS JetStream:
/// `WASMGATE_TEST_BACKEND=nats` runs the queue and deploy test suites again with every
/// server given a `[cluster]` (one JetStream nats-server per data directory, so a restart
/// finds its tasks and versions).
pub fn cluster_backend() -> bool {
    std::env::var("WASMGATE_TEST_BACKEND").is_ok_and(|v| v == "nats")
}

/// The `[cluster]` table for a node of the JetStream server `broker`; a runner that dies
/// is noticed after two seconds.
/// What a config written in `dir` needs for the backend under test: nothing on SQLite, a
/// `[cluster]` on that directory's own JetStream server otherwise.
pub fn backend_section(dir: &Path) -> String {
    if cluster_backend() {
        cluster_section(&jetstream_for(dir))
    } else {
        String::new()
    }
}

pub fn cluster_section(broker: &Broker) -> String {
    format!(
        "\n[cluster]\nnats = \"nats://127.0.0.1:{}\"\nack_wait_ms = 2000\n",
        broker.port
    )
}

/// The JetStream server of the servers started in `dir` (started on first use; it lives
/// until the test's thread ends).
fn jetstream_for(dir: &Path) -> Arc<Broker> {
    static BROKERS: Mutex<Vec<(PathBuf, Arc<Broker>)>> = Mutex::new(Vec::new());
    let mut brokers = BROKERS.lock().unwrap();
    if let Some((_, b)) = brokers.iter().find(|(d, _)| d == dir) {
        return b.clone();
    }
    let b = Arc::new(Broker::jetstream());
    brokers.push((dir.to_path_buf(), b.clone()));
    b
}

/// Waits (bounded) until the admin API's `/readyz` shows source `trigger` in `state`;
/// returns the source's record.
pub async fn wait_source(server: &TestServer, trigger: &str, state: &str) -> serde_json::Value {
    let http = client();
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        if let Ok(r) = http.get(server.admin_url("/readyz")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            last = v["sources"][trigger].clone();
            if last["state"] == state {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("source '{trigger}' never reached '{state}'; last: {last}");
}

/// The tasks of a trigger, from the admin API.
pub async fn tasks(server: &TestServer, trigger: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = client()
        .get(server.admin_url(&format!("/-/tasks?trigger={trigger}")))
        .send()
        .await
        .expect("admin API")
        .json()
        .await
        .expect("json");
    v["tasks"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until `trigger` has at least `n` tasks in state `state`.
pub async fn wait_tasks(
    server: &TestServer,
    trigger: &str,
    state: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    for _ in 0..600 {
        last = tasks(server, trigger).await;
        if last.iter().filter(|t| t["state"] == state).count() >= n {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("trigger '{trigger}' never had {n} tasks {state}; last: {last:?}");
}

/// What the `echo` function saw, from a finished task's response preview.
pub fn echoed(task: &serde_json::Value) -> serde_json::Value {
    let preview = task["response_preview"]
        .as_str()
        .expect("a response preview");
    serde_json::from_str(preview).unwrap_or_else(|e| panic!("{e}: {preview}"))
}

/// A header from the `echo` function's view of a request.
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str().map(str::to_string))
}
