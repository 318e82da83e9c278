//! The configuration reference cannot drift from the code: every key the config parser
//! accepts (the serde structs of `src/config/raw.rs`) is listed in `docs/configuration.md`,
//! and every key listed there is one the parser accepts. And the docs stand alone: no link in
//! the README or `docs/` leads outside the repository.

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
