//! The command line: `check` and start-up errors name the file, key and value at fault.

mod common;

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, common::render(config)).unwrap();
    let out = Command::new(common::bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_prints_the_route_table() {
    let (code, out, err) = check(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n[[trigger]]\nname = \"hi\"\nfunction = \"hello\"\npath = \"/greet\"\nmethods = [\"GET\"]\n[[trigger]]\nname = \"later\"\nfunction = \"nope\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hi"), "{out}");
    assert!(out.contains("/greet"), "{out}");
    assert!(out.contains("hello:LATEST"), "{out}");
    assert!(
        err.contains("warning: trigger 'later': function 'nope'"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors_naming_file_and_key() {
    let (code, _, err) = check("[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n");
    assert_eq!(code, 1);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("unknown field `listen_port`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_wasm_file_is_named() {
    let (code, _, err) = check(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"f\"\nwasm = \"/nonexistent/f.wasm\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("function 'f': cannot read /nonexistent/f.wasm"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("junk.wasm");
    std::fs::write(&wasm, b"not wasm at all").unwrap();
    let (code, _, err) = check(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"junk\"\nwasm = \"{}\"\n",
        wasm.display()
    ));
    assert_eq!(code, 1);
    assert!(err.contains("function 'junk'"), "{err}");
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn conflicting_routes_are_rejected() {
    let (code, _, err) = check(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[trigger]]\nname = \"a\"\nfunction = \"f\"\npath = \"/x\"\n[[trigger]]\nname = \"b\"\nfunction = \"g\"\npath = \"/x\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("trigger 'b': path '/x' is already routed to trigger 'a'"),
        "{err}"
    );
}

#[test]
fn a_bad_certificate_path_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = { cert = \"/nope/cert.pem\", key = \"/nope/key.pem\" }\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nope/cert.pem: cannot read TLS certificate"),
        "{err}"
    );
}

#[test]
fn version_names_wasmtime_and_the_engine_key_that_check_uses() {
    let out = Command::new(common::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("wasmgate {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(lines[1], "wasmtime 48.0.8");
    let key = lines[2]
        .strip_prefix("engine ")
        .and_then(|l| l.split_whitespace().next())
        .expect("engine <key>");
    assert_eq!(key.len(), 16, "{text}");
    let (code, out, err) = check(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("engine {key}")), "{out}");
}
