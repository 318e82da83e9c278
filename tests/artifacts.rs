//! Deployed code on disk: `data_dir` is private, a compiled artifact is only loaded when it
//! is authentically this node's, and one damaged version never stops the node from starting.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::TestServer;

const TOKEN: &str = "artifact-admin-token";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "artifact-admin-token"
data_dir = "data"

[[trigger]]
name = "greet"
function = "greet"

[[trigger]]
name = "other"
function = "other"
"#;

async fn deploy(s: &TestServer, name: &str, wasm: &str) -> String {
    let bytes = std::fs::read(common::wasm(wasm)).unwrap();
    let v: serde_json::Value = reqwest::Client::new()
        .put(s.admin_url(&format!("/-/functions/{name}")))
        .bearer_auth(TOKEN)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

fn artifact(dir: &Path, sha: &str, ext: &str) -> PathBuf {
    std::fs::read_dir(dir.join("data/functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(sha) && n.ends_with(ext)
        })
        .unwrap_or_else(|| panic!("no {ext} for {sha}"))
}

async fn get(s: &TestServer, path: &str) -> (u16, String) {
    let r = reqwest::get(s.url(path)).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_compiled_artifact_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), CONFIG, &[]);
    let hello = deploy(&s, "greet", "hello").await;
    let echo = deploy(&s, "other", "echo").await;
    assert_eq!(get(&s, "/greet").await.1, "hello from wasmgate\n");
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr_text()
    );

    let mode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data_dir mode {mode:o}");

    // Someone with write access to data_dir puts another (genuine) compiled component under
    // greet's name: its native code must not run as greet.
    let (a, b) = (
        artifact(dir.path(), &hello, ".cwasm"),
        artifact(dir.path(), &echo, ".cwasm"),
    );
    std::fs::copy(&b, &a).unwrap();
    let s = TestServer::start_in(dir.path(), CONFIG, &[]);
    let (status, body) = get(&s, "/greet").await;
    assert_eq!((status, body.as_str()), (200, "hello from wasmgate\n"));
    assert!(s.wait_for_log("recompiling"), "{}", s.stderr_text());
}

/// The MAC of a compiled artifact is bound to the component it was compiled from: another
/// version's artifact copied in with its own genuine MAC (a renamed pair) is not trusted.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_artifact_with_its_own_mac_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), CONFIG, &[]);
    let hello = deploy(&s, "greet", "hello").await;
    let echo = deploy(&s, "other", "echo").await;
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr_text()
    );
    for ext in [".cwasm", ".cwasm.mac"] {
        let (a, b) = (
            artifact(dir.path(), &hello, ext),
            artifact(dir.path(), &echo, ext),
        );
        assert!(b.exists(), "{}", b.display());
        std::fs::copy(&b, &a).unwrap();
    }
    let s = TestServer::start_in(dir.path(), CONFIG, &[]);
    let (status, body) = get(&s, "/greet").await;
    assert_eq!((status, body.as_str()), (200, "hello from wasmgate\n"));
    assert!(s.wait_for_log("recompiling"), "{}", s.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_writable_by_others_are_recompiled_and_a_broken_version_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), CONFIG, &[]);
    let hello = deploy(&s, "greet", "hello").await;
    let echo = deploy(&s, "other", "echo").await;
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr_text()
    );

    let cwasm = artifact(dir.path(), &hello, ".cwasm");
    std::fs::set_permissions(&cwasm, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The other version loses both its compiled form and its component.
    std::fs::remove_file(artifact(dir.path(), &echo, ".cwasm")).unwrap();
    std::fs::write(artifact(dir.path(), &echo, ".wasm"), b"not a component").unwrap();

    let s = TestServer::start_in(dir.path(), CONFIG, &[]);
    assert_eq!(
        get(&s, "/greet").await,
        (200, "hello from wasmgate\n".into())
    );
    let log = s.stderr_text();
    assert!(log.contains("writable by others"), "{log}");
    assert!(log.contains("'other' version 1"), "{log}");
    assert_eq!(get(&s, "/other").await.0, 404);
}

const CONFIG_FUNCTIONS: &str = r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"

[[function]]
name = "greet"
wasm = "{hello}"

[[function]]
name = "other"
wasm = "{echo}"

[[trigger]]
name = "greet"
function = "greet"

[[trigger]]
name = "other"
function = "other"
"#;

fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("data/functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn config_functions_start_from_the_compiled_cache_and_a_swapped_artifact_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_in(dir.path(), CONFIG_FUNCTIONS, &[]);
    assert!(
        s.wait_for_log("2 configured functions ready (0 from the compiled cache)"),
        "{}",
        s.stderr_text()
    );
    assert_eq!(get(&s, "/greet").await.1, "hello from wasmgate\n");
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr_text()
    );
    let cached = cwasm_files(dir.path());
    assert_eq!(cached.len(), 2, "{cached:?}");

    // Unchanged files: nothing is compiled.
    let mut s = TestServer::start_in(dir.path(), CONFIG_FUNCTIONS, &[]);
    assert!(
        s.wait_for_log("2 configured functions ready (2 from the compiled cache)"),
        "{}",
        s.stderr_text()
    );
    assert_eq!(get(&s, "/greet").await.1, "hello from wasmgate\n");
    let (status, _) = get(&s, "/other").await;
    assert_eq!(status, 200);
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr_text()
    );

    // One artifact replaced by the other's (genuine, authenticated, but not this code):
    // greet is compiled again from its .wasm and still answers as itself.
    let hello = artifact(dir.path(), &sha256_of(&common::wasm("hello")), ".cwasm");
    let echo = artifact(dir.path(), &sha256_of(&common::wasm("echo")), ".cwasm");
    std::fs::copy(&echo, &hello).unwrap();
    let s = TestServer::start_in(dir.path(), CONFIG_FUNCTIONS, &[]);
    assert!(
        s.wait_for_log("2 configured functions ready (1 from the compiled cache)"),
        "{}",
        s.stderr_text()
    );
    assert!(s.wait_for_log("recompiling"), "{}", s.stderr_text());
    assert_eq!(
        get(&s, "/greet").await,
        (200, "hello from wasmgate\n".into())
    );
}

fn sha256_of(path: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The artifact key made at first start is private to the node's user (0600), 32 random bytes
/// as hex, kept beside `data_dir` and not inside it; the compiled artifacts are 0600 too.
#[tokio::test(flavor = "multi_thread")]
async fn the_artifact_key_and_artifacts_are_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), CONFIG, &[]);
    deploy(&s, "greet", "hello").await;
    let key = dir.path().join("data.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{key:?} has mode {mode:o}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64, "{text}");
    assert!(hex_digits(text.trim()), "{text}");
    let cached = cwasm_files(dir.path());
    assert!(!cached.is_empty());
    for f in cached {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f:?} has mode {mode:o}");
    }
}

fn hex_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}
