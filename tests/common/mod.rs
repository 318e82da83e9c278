//! Test harness: builds the guest functions, starts the real `wasmgate` binary on
//! 127.0.0.1:0 with a config written to a temporary directory, and gives HTTP clients for it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

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

/// Replaces `{hello}`, `{echo}`, `{probe}` (wasm paths) and `{certs}` in a config template.
pub fn render(template: &str) -> String {
    template
        .replace("{hello}", &wasm("hello"))
        .replace("{echo}", &wasm("echo"))
        .replace("{probe}", &wasm("probe"))
        .replace("{certs}", &root().join("certs").display().to_string())
}

/// A running `wasmgate serve`.
pub struct TestServer {
    pub child: Child,
    pub public: String,
    pub internal: Option<String>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts the binary with `template` (see [`render`]) and waits until it prints its
    /// public listener.
    pub fn start(template: &str) -> TestServer {
        Self::start_with_env(template, &[])
    }

    pub fn start_with_env(template: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("wasmgate.toml");
        std::fs::write(&config, render(template)).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
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
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut public = None;
        let mut internal = None;
        // Bounded: the server prints its listeners right after compiling, or exits.
        while let Some(Ok(line)) = lines.next() {
            if let Some(url) = line.strip_prefix("public listening on ") {
                public = Some(url.to_string());
            } else if let Some(url) = line.strip_prefix("internal listening on ") {
                internal = Some(url.to_string());
            }
            let wants_internal = render(template).contains("internal_listen");
            if public.is_some() && (!wants_internal || internal.is_some()) {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let Some(public) = public else {
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
            stderr,
            dir,
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.stderr_text();
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("the server panicked:\n{log}");
        }
    }
}

/// An HTTPS client trusting the dev CA (HTTP/2 by ALPN when the server offers it).
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
