//! The reference cannot drift from the code: every key the config parser
//! accepts (the serde structs of `src/config/raw.rs`) is listed in `docs/configuration.md`,
//! and every key listed there is one the parser accepts; every default it gives as a literal
//! is the parsed default; every status/Code pair of `docs/http-api.md` is the error mapping's.
//! And the docs stand alone: no link in the README or `docs/` leads outside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// struct name -> [(key, child struct)] from the serde structs' source.
fn structs(source: &str) -> BTreeMap<String, Vec<(String, Option<String>)>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut rename: Option<String> = None;
    for line in source.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            out.insert(name.clone(), Vec::new());
            current = Some(name);
            continue;
        }
        if t == "}" {
            current = None;
            continue;
        }
        if t.starts_with("#[serde(") {
            if let Some(i) = t.find("rename = \"") {
                let r = &t[i + 10..];
                rename = Some(r[..r.find('"').unwrap()].to_string());
            }
            continue;
        }
        let (Some(s), Some(field)) = (&current, t.strip_prefix("pub ")) else {
            continue;
        };
        let (name, ty) = field.split_once(':').unwrap();
        let key = rename.take().unwrap_or_else(|| name.trim().to_string());
        let child = ty
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .find(|w| w.starts_with("Raw"))
            .map(str::to_string);
        out.get_mut(s).unwrap().push((key, child));
    }
    out
}

fn keys_of(
    all: &BTreeMap<String, Vec<(String, Option<String>)>>,
    name: &str,
    prefix: &str,
    out: &mut BTreeSet<String>,
) {
    for (key, child) in &all[name] {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match child {
            Some(c) => {
                // A top-level section is a table, not a key of its own.
                if !prefix.is_empty() {
                    out.insert(path.clone());
                }
                keys_of(all, c, &path, out);
            }
            None => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let source = std::fs::read_to_string(root().join("src/config/raw.rs")).unwrap();
    let all = structs(&source);
    let mut code = BTreeSet::new();
    keys_of(&all, "RawConfig", "", &mut code);
    assert!(code.contains("server.listen") && code.contains("trigger.jwt.jwks_file"));

    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(k, _)| k.to_string())
        .collect();
    let missing: Vec<&String> = code.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "keys in src/config/raw.rs but not in docs/configuration.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys in docs/configuration.md that the config parser does not accept: {unknown:?}"
    );
}

#[test]
fn the_docs_link_nothing_outside_the_repository() {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let dir = f.parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let path = target.split('#').next().unwrap();
            if path.is_empty() {
                continue;
            }
            let resolved = dir.join(path);
            assert!(
                resolved.exists(),
                "{}: link to '{target}' leads to nothing in the repository",
                f.display()
            );
            let canonical = resolved.canonicalize().unwrap();
            assert!(
                canonical.starts_with(root().canonicalize().unwrap()),
                "{}: link to '{target}' leaves the repository",
                f.display()
            );
        }
        for outside in ["../shared", "shared/SPEC", "PERF.md"] {
            assert!(
                !text.contains(outside),
                "{}: mentions '{outside}', which a clone does not have",
                f.display()
            );
        }
    }
}

/// Every status/Code pair of the table in docs/http-api.md is one the error mapping
/// produces, and every pair it produces is in the table.
#[test]
fn the_documented_status_codes_are_the_mapping() {
    use wasmgate::error::GatewayError;
    let kinds = GatewayError::every_kind();
    let mut covered: BTreeSet<usize> = kinds.iter().map(GatewayError::kind_index).collect();
    let missing: Vec<usize> = (0..GatewayError::KINDS)
        .filter(|i| !covered.remove(i))
        .collect();
    assert!(
        missing.is_empty(),
        "GatewayError::every_kind has no sample of kinds {missing:?}"
    );
    let code: BTreeSet<(u16, String)> = kinds
        .iter()
        .map(|e| (e.status().as_u16(), e.code().to_string()))
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/http-api.md")).unwrap();
    let mut documented = BTreeSet::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, status, codes, ..] = cells.as_slice() else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        for c in codes.split('/') {
            documented.insert((status, c.trim().to_string()));
        }
    }
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "answers src/error.rs gives that docs/http-api.md does not list: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "status/Code pairs in docs/http-api.md that src/error.rs never gives: {unknown:?}"
    );
}

/// The parsed config's `Debug` form as `section.key` -> every value seen there (list
/// elements and enum payloads are transparent: `functions: [FunctionConfig { memory_mb: 128`
/// gives `function.memory_mb`).
fn debug_values(debug: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // What each open bracket pushed (a field name, or nothing).
    let mut stack: Vec<Option<String>> = Vec::new();
    let name_of = |field: &str| match field {
        "functions" => "function".to_string(),
        "triggers" => "trigger".to_string(),
        "buckets" => "bucket".to_string(),
        "async_" => "async".to_string(),
        // A trigger's kind holds the kind's own keys, documented as `trigger.<key>`.
        "kind" => String::new(),
        f => f.to_string(),
    };
    for line in debug.lines() {
        let t = line.trim().trim_end_matches(',');
        if matches!(t, "}" | ")" | "]") {
            stack.pop();
            continue;
        }
        let (field, value) = match t.split_once(": ") {
            Some((f, v)) if f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                (Some(name_of(f)), v)
            }
            _ => (None, t),
        };
        if value.ends_with('{') || value.ends_with('(') || value.ends_with('[') {
            // A trigger's auth holds the scheme's own table (`trigger.signature.*`).
            let pushed = match field.as_deref() {
                Some("auth") => Some(value.trim_end_matches([' ', '{', '(']).to_lowercase()),
                Some("") => None,
                _ => field,
            };
            stack.push(pushed);
            continue;
        }
        let field = match (t.split_once(": "), field) {
            (Some(("kind", _)), Some(_)) => Some("kind".to_string()),
            (_, f) => f,
        };
        if let Some(f) = field.filter(|f| !f.is_empty()) {
            let mut path: Vec<&str> = stack.iter().flatten().map(String::as_str).collect();
            path.push(&f);
            out.entry(path.join("."))
                .or_default()
                .push(value.to_string());
        }
    }
    out
}

/// Every default docs/configuration.md gives as a literal (`` `16` ``, `` `true` ``,
/// `` `LATEST` ``) is the value the parser fills in when the key is left out.
#[test]
fn every_documented_default_is_the_parsed_default() {
    let dir = tempfile::tempdir().unwrap();
    // Every section and kind once, with only the keys that have no default.
    let text = r#"
[server]
listen = "127.0.0.1:0"
[cluster]
nats = "nats://127.0.0.1:4222"
[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
[[bucket]]
name = "b"
[[function]]
name = "hello"
wasm = "hello.wasm"
[[trigger]]
name = "h"
function = "hello"
async = {}
rate_limit = { per_second = 5 }
cors = { allow_origins = ["https://a.example"] }
[[trigger]]
name = "s"
function = "hello"
auth = "signature"
signature = { keys = [{ id = "AK1", secret = "s3cret" }] }
[[trigger]]
name = "j"
function = "hello"
auth = "jwt"
jwt = { jwks_file = "JWKS", algorithms = ["RS256"] }
[[trigger]]
name = "b"
function = "hello"
auth = "bearer"
bearer = { tokens = [{ name = "ci", token = "0123456789abcdef0123456789abcdef" }] }
[[trigger]]
name = "c"
kind = "cron"
function = "hello"
schedule = "0 * * * * *"
[[trigger]]
name = "m"
kind = "mqtt"
function = "hello"
broker = "mqtt://127.0.0.1:1883"
topics = ["a/b"]
[[trigger]]
name = "n"
kind = "nats"
function = "hello"
broker = "nats://127.0.0.1:4222"
topics = ["a.b"]
"#
    .replace(
        "JWKS",
        &root().join("certs/jwks.json").display().to_string(),
    );
    let config = wasmgate::config::Config::parse(&text, &dir.path().join("w.toml"), &|_| None)
        .expect("the minimal config parses");
    let parsed = debug_values(&format!("{config:#?}"));
    let names = ["h", "s", "j", "b", "c", "m", "n"];
    // How the parsed form spells a documented literal, where it differs.
    let spelled = |key: &str, doc: &str| -> Vec<String> {
        let mut forms = vec![doc.to_string(), format!("{doc:?}")];
        match (key, doc) {
            ("trigger.topic_match", "mqtt") => forms.push("Wildcard".into()),
            ("trigger.qos", "1") => forms.push("AtLeastOnce".into()),
            ("function.env" | "function.variables", "{}") => forms.push("[]".into()),
            // The parsed form lists the header names only (their values are secrets).
            ("tracing.headers", "{}") => forms.push("[]".into()),
            // "the same as per_second" (5 in the config above).
            ("trigger.rate_limit.burst", "per_second") => forms.push("5".into()),
            _ => {}
        }
        if doc.contains("<name>") {
            for n in names {
                forms.push(format!("{:?}", doc.replace("<name>", n)));
            }
        }
        forms
    };
    // Documented literals that the parsed config holds in another form, and why.
    let elsewhere: BTreeMap<&str, &str> = [
        (
            "server.data_dir",
            "resolved against the config file's directory",
        ),
        ("server.artifact_key_file", "derived from data_dir"),
        (
            "trigger.bearer.tokens.enabled",
            "disabled tokens are dropped at load",
        ),
        (
            "function.variables_env",
            "merged into function.variables, each marked secret",
        ),
        (
            "trigger.functions",
            "part of the trigger's routes, which only a template has",
        ),
    ]
    .into_iter()
    .collect();
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, key, default, ..] = cells.as_slice() else {
            continue;
        };
        let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            continue;
        };
        // A literal default is the cell's first word in backticks.
        let Some(literal) = default
            .strip_prefix('`')
            .and_then(|d| d.split_once('`'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        if elsewhere.contains_key(key) {
            continue;
        }
        let Some(values) = parsed.get(key) else {
            wrong.push(format!(
                "{key}: documented default `{literal}`, no such parsed value"
            ));
            continue;
        };
        let forms = spelled(key, literal);
        if !values
            .iter()
            .any(|v| forms.iter().any(|f| f.eq_ignore_ascii_case(v)))
        {
            wrong.push(format!("{key}: documented `{literal}`, parsed {values:?}"));
        }
        checked += 1;
    }
    assert!(
        wrong.is_empty(),
        "defaults that drifted:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked >= 40,
        "only {checked} documented defaults were checked"
    );
}
