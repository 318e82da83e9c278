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

/// The log lines of a `serve` started with `args` before `serve` and `env`, up to the moment it
/// listens (stderr is a pipe here, not a terminal).
fn startup_log(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(
        &path,
        common::render(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n[[trigger]]\nname = \"hi\"\nfunction = \"hello\"\n",
        ),
    )
    .unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("WASMGATE_LOG_FORMAT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let listening = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("public listening on "));
    // A clean stop, so the log writer flushes what it holds (a kill could cut lines the
    // process had logged before it listened).
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(listening, "serve did not start:\n{err}");
    let lines: Vec<String> = err.lines().map(str::to_string).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configured functions ready")),
        "{err}"
    );
    lines
}

fn all_json(lines: &[String]) -> bool {
    lines
        .iter()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["level"].is_string()))
}

fn none_json(lines: &[String]) -> bool {
    lines
        .iter()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
}

/// Logs are JSON lines when stderr is not a terminal; `--log-format` and `WASMGATE_LOG_FORMAT`
/// choose, and the flag wins over the variable.
#[test]
fn the_log_format_follows_the_flag_then_the_variable_then_the_terminal() {
    let piped = startup_log(&[], &[]);
    assert!(all_json(&piped), "{piped:#?}");
    let flag = startup_log(&["--log-format", "text"], &[]);
    assert!(none_json(&flag), "{flag:#?}");
    let var = startup_log(&[], &[("WASMGATE_LOG_FORMAT", "text")]);
    assert!(none_json(&var), "{var:#?}");
    let both = startup_log(
        &["--log-format", "json"],
        &[("WASMGATE_LOG_FORMAT", "text")],
    );
    assert!(all_json(&both), "{both:#?}");
}

/// `wasmgate jwt --jwks` prints the public half of a private key as the JWKS that verifies
/// its tokens: the same keys as the fixtures' JWKS, made from the fixtures' private keys.
#[test]
fn jwt_jwks_prints_the_public_key_of_each_kind() {
    let fixtures = common::root().join("tests/fixtures");
    let known: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("jwks.json")).unwrap())
            .unwrap();
    let by_kid = |kid: &str| {
        known["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    };
    for (alg, pem, kid, fields) in [
        ("RS256", "jwt-rsa.pem", "rsa-1", &["kty", "n", "e"][..]),
        ("ES256", "jwt-ec.pem", "ec-1", &["kty", "crv", "x", "y"][..]),
        ("EdDSA", "jwt-ed.pem", "ed-1", &["kty", "crv", "x"][..]),
    ] {
        let out = Command::new(common::bin())
            .args(["jwt", "--jwks", "--alg", alg, "--kid", kid, "--key"])
            .arg(fixtures.join(pem))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = &printed["keys"][0];
        let want = by_kid(kid);
        for f in fields {
            assert_eq!(key[*f], want[*f], "{alg} {f}");
        }
        assert_eq!(key["kid"], kid);
        assert_eq!(key["alg"], alg);
        assert!(key.get("d").is_none(), "the private part is never printed");
    }
    // A key of another kind than --alg says is refused, naming it.
    let out = Command::new(common::bin())
        .args(["jwt", "--jwks", "--alg", "ES256", "--key"])
        .arg(fixtures.join("jwt-rsa.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt-rsa.pem"));
}

/// Standard output whose reader has gone (`wasmgate versions f | head -1`): the write end of
/// a pipe whose read end is already closed, so every write fails with EPIPE.
fn closed_stdout() -> std::process::Stdio {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills both descriptors; the read end is closed at once and the write
    // end is owned by the returned `Stdio`.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A reader that goes away early is not an error worth a panic: the commands that print
/// end normally, without a backtrace.
#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ok.toml");
    std::fs::write(
        &config,
        common::render(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{hello}\"\n[[trigger]]\nname = \"hi\"\nfunction = \"hello\"\npath = \"/greet\"\n",
        ),
    )
    .unwrap();
    let runs: [Vec<std::ffi::OsString>; 2] = [
        vec!["--version".into()],
        vec!["check".into(), "--config".into(), config.into_os_string()],
    ];
    for args in runs {
        let out = Command::new(common::bin())
            .args(&args)
            .stdout(closed_stdout())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
