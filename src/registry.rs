//! Deployed functions (SPEC section 9): immutable numbered versions and aliases, stored in
//! `data_dir` and surviving restarts without recompiling.
//!
//! A deployed component is stored content-addressed (`functions/<sha256>.wasm`) with its
//! compiled form (`functions/<sha256>-<engine>.cwasm`, keyed by the engine's compatibility
//! hash); versions and aliases live in `registry.db`. Resolution happens per request, so a
//! deploy or an alias move takes effect for new requests at once, while in-flight requests
//! keep the `Arc<Function>` they started with.
//!
//! Compiled forms are kept by [`Artifacts`] (authenticated, see there). A version whose
//! artifact is missing or not authentic is recompiled from the stored component, whose name
//! is its own SHA-256; a version that cannot be recompiled either is logged and not served,
//! and the node starts anyway.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::config::{Config, FunctionConfig};
use crate::runtime::artifacts::{Artifacts, sha256_hex, write_atomic};
use crate::runtime::{Function, Runtime};

/// Why a deploy or an alias change was refused. `crate::error` maps these.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The upload or alias is invalid => 400; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// No such function => 404 `FunctionNotFound`.
    #[error("{0}")]
    NotFound(String),
    /// Disk or database failure: logged, never shown to a client.
    #[error("{0}")]
    Storage(String),
}

/// Largest component accepted by a deploy.
pub const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    pub created: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Additional {
    pub version: u32,
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alias {
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional: Option<Additional>,
}

#[derive(Default)]
struct State {
    functions: HashMap<String, BTreeMap<u32, (VersionInfo, Arc<Function>)>>,
    aliases: HashMap<String, BTreeMap<String, Alias>>,
}

pub struct Registry {
    /// Stored components and their compiled forms (`data_dir/functions`).
    artifacts: Arc<Artifacts>,
    db: Mutex<Connection>,
    state: RwLock<State>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.artifacts.dir())
            .finish()
    }
}

/// The settings a deployed version runs with: the config's `[[function]]` of that name if
/// there is one, else the defaults.
pub fn function_config(config: &Config, name: &str, wasm: &Path) -> FunctionConfig {
    config
        .function(name)
        .cloned()
        .unwrap_or_else(|| FunctionConfig {
            name: name.to_string(),
            namespace: "default".to_string(),
            topics: Vec::new(),
            events: Vec::new(),
            wasm: wasm.to_path_buf(),
            memory_mb: NonZeroU32::new(128).expect("non-zero"),
            timeout_ms: NonZeroU64::new(10_000).expect("non-zero"),
            max_concurrency: NonZeroUsize::new(100).expect("non-zero"),
            env: Vec::new(),
            outbound_hosts: Vec::new(),
        })
}

fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 64
        && a != "LATEST"
        && !a.bytes().all(|b| b.is_ascii_digit())
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl Registry {
    /// Opens `data_dir/registry.db` and loads every deployed version, from the compiled cache
    /// when it is there (no recompile), else compiling and caching it.
    pub fn open(
        data_dir: &Path,
        config: &Config,
        runtime: &Runtime,
        artifacts: Arc<Artifacts>,
    ) -> Result<Registry> {
        let path = data_dir.join("registry.db");
        let db = Connection::open(&path)
            .with_context(|| format!("{}: cannot open the registry", path.display()))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS versions (
                name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
                size INTEGER NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (name, version));
             CREATE TABLE IF NOT EXISTS aliases (
                name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
                additional_version INTEGER, weight REAL, PRIMARY KEY (name, alias));",
        )?;
        Self::with_db(db, artifacts, config, runtime)
    }

    /// Opens an existing registry without writing anything (for `wasmgate check`, which may
    /// run beside a live node; `artifacts` is then read-only too): `None` when there is none.
    pub fn open_read_only(
        data_dir: &Path,
        config: &Config,
        runtime: &Runtime,
        artifacts: Arc<Artifacts>,
    ) -> Result<Option<Registry>> {
        let path = data_dir.join("registry.db");
        if !path.exists() {
            return Ok(None);
        }
        let db = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("{}: cannot open the registry", path.display()))?;
        Self::with_db(db, artifacts, config, runtime).map(Some)
    }

    fn with_db(
        db: Connection,
        artifacts: Arc<Artifacts>,
        config: &Config,
        runtime: &Runtime,
    ) -> Result<Registry> {
        let registry = Registry {
            artifacts,
            db: Mutex::new(db),
            state: RwLock::new(State::default()),
        };
        registry.load(config, runtime)?;
        Ok(registry)
    }

    fn load(&self, config: &Config, runtime: &Runtime) -> Result<()> {
        let rows: Vec<(String, u32, String, i64, i64)> = {
            let db = self
                .db
                .lock()
                .map_err(|_| anyhow!("registry lock poisoned"))?;
            let mut stmt = db.prepare(
                "SELECT name, version, sha256, size, created_ms FROM versions ORDER BY name, version",
            )?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut cached = 0;
        let mut state = State::default();
        for (name, version, sha, size, created) in rows {
            // One damaged version is logged and not served; it never stops the node.
            let loaded = self
                .component(runtime, &sha)
                .and_then(|(component, from_cache)| {
                    let fc = function_config(config, &name, &self.wasm_path(&sha));
                    let f = runtime.prepare(&fc, Some(version), &component)?;
                    Ok((f, from_cache))
                });
            let (f, from_cache) = match loaded {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(
                        "deployed function '{name}' version {version} is broken and is not served: {e:#}"
                    );
                    continue;
                }
            };
            cached += usize::from(from_cache);
            let info = VersionInfo {
                version,
                sha256: sha,
                size: size as u64,
                created: rfc3339(created),
            };
            state
                .functions
                .entry(name)
                .or_default()
                .insert(version, (info, Arc::new(f)));
        }
        let db = self
            .db
            .lock()
            .map_err(|_| anyhow!("registry lock poisoned"))?;
        let mut stmt =
            db.prepare("SELECT name, alias, version, additional_version, weight FROM aliases")?;
        let aliases: Vec<(String, String, Alias)> = stmt
            .query_map([], |r| {
                let additional = match (r.get::<_, Option<u32>>(3)?, r.get::<_, Option<f64>>(4)?) {
                    (Some(version), Some(weight)) => Some(Additional { version, weight }),
                    _ => None,
                };
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    Alias {
                        version: r.get(2)?,
                        additional,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (name, alias, a) in aliases {
            state.aliases.entry(name).or_default().insert(alias, a);
        }
        let total: usize = state.functions.values().map(BTreeMap::len).sum();
        if total > 0 {
            tracing::info!("loaded {total} deployed versions ({cached} from the compiled cache)");
        }
        *self
            .state
            .write()
            .map_err(|_| anyhow!("registry lock poisoned"))? = state;
        Ok(())
    }

    fn wasm_path(&self, sha: &str) -> PathBuf {
        self.artifacts.dir().join(format!("{sha}.wasm"))
    }

    /// The compiled component for `sha`: from the cache when possible, else compiled from the
    /// stored `.wasm` (and cached). Returns whether it came from the cache.
    fn component(
        &self,
        runtime: &Runtime,
        sha: &str,
    ) -> Result<(wasmtime::component::Component, bool)> {
        self.artifacts.compiled(runtime.engine(), sha, || {
            let wasm = self.wasm_path(sha);
            let bytes =
                std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
            if sha256_hex(&bytes) != sha {
                anyhow::bail!("{}: the stored component is corrupt", wasm.display());
            }
            Ok(bytes)
        })
    }

    /// Validates, compiles and stores a new immutable version of `name`.
    pub fn deploy(
        &self,
        config: &Config,
        runtime: &Runtime,
        name: &str,
        bytes: &[u8],
    ) -> Result<VersionInfo, RegistryError> {
        let invalid = RegistryError::Invalid;
        if !crate::config::valid_name(name) {
            return Err(invalid(format!(
                "function name '{name}' must match [a-z0-9-]{{1,64}}"
            )));
        }
        let sha = sha256_hex(bytes);
        let component = runtime
            .compile_component(bytes)
            .map_err(|e| invalid(format!("{e}")))?;
        let fc = function_config(config, name, &self.wasm_path(&sha));
        // Validate it links and exports the handler before anything is stored.
        runtime
            .prepare(&fc, None, &component)
            .map_err(|e| invalid(format!("{e}")))?;
        let internal = RegistryError::Storage;
        write_atomic(&self.wasm_path(&sha), bytes)
            .map_err(|e| internal(format!("cannot store the component: {e}")))?;
        self.artifacts.store(runtime.engine(), &component, &sha);
        let now = chrono::Utc::now().timestamp_millis();
        let version = {
            let db = self
                .db
                .lock()
                .map_err(|_| internal("registry lock poisoned".into()))?;
            let tx = db
                .unchecked_transaction()
                .map_err(|e| internal(e.to_string()))?;
            let last: Option<u32> = tx
                .query_row(
                    "SELECT MAX(version) FROM versions WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .map_err(|e| internal(e.to_string()))?;
            let version = last.unwrap_or(0) + 1;
            tx.execute(
                "INSERT INTO versions (name, version, sha256, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, version, sha, bytes.len() as i64, now],
            )
            .map_err(|e| internal(e.to_string()))?;
            tx.commit().map_err(|e| internal(e.to_string()))?;
            version
        };
        let f = runtime
            .prepare(&fc, Some(version), &component)
            .map_err(|e| invalid(format!("{e}")))?;
        let info = VersionInfo {
            version,
            sha256: sha,
            size: bytes.len() as u64,
            created: rfc3339(now),
        };
        if let Ok(mut state) = self.state.write() {
            state
                .functions
                .entry(name.to_string())
                .or_default()
                .insert(version, (info.clone(), Arc::new(f)));
        }
        crate::metrics::METRICS.deploys.inc();
        tracing::info!(function = name, version, "deployed");
        Ok(info)
    }

    /// Points `alias` at a version (optionally splitting traffic with a second one).
    pub fn set_alias(&self, name: &str, alias: &str, a: Alias) -> Result<Alias, RegistryError> {
        let invalid = RegistryError::Invalid;
        if !valid_alias(alias) {
            return Err(invalid(format!(
                "alias '{alias}' must match [A-Za-z0-9_-]{{1,64}}, not be a number and not be LATEST"
            )));
        }
        {
            let state = self
                .state
                .read()
                .map_err(|_| RegistryError::Storage("registry lock poisoned".into()))?;
            let versions = state.functions.get(name).ok_or_else(|| {
                RegistryError::NotFound(format!("function '{name}' has no deployed versions"))
            })?;
            for v in std::iter::once(a.version).chain(a.additional.as_ref().map(|x| x.version)) {
                if !versions.contains_key(&v) {
                    return Err(invalid(format!("function '{name}' has no version {v}")));
                }
            }
            if let Some(x) = &a.additional
                && !(x.weight > 0.0 && x.weight < 1.0)
            {
                return Err(invalid("additional.weight must be between 0 and 1".into()));
            }
        }
        let db = self
            .db
            .lock()
            .map_err(|_| RegistryError::Storage("registry lock poisoned".into()))?;
        db.execute(
            "INSERT INTO aliases (name, alias, version, additional_version, weight) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name, alias) DO UPDATE SET version = ?3, additional_version = ?4, weight = ?5",
            params![
                name,
                alias,
                a.version,
                a.additional.as_ref().map(|x| x.version),
                a.additional.as_ref().map(|x| x.weight)
            ],
        )
        .map_err(|e| RegistryError::Storage(e.to_string()))?;
        drop(db);
        if let Ok(mut state) = self.state.write() {
            state
                .aliases
                .entry(name.to_string())
                .or_default()
                .insert(alias.to_string(), a.clone());
        }
        Ok(a)
    }

    /// The function a qualifier names now: `LATEST` (highest version), a number, or an alias.
    pub fn resolve(&self, name: &str, qualifier: &str) -> Option<Arc<Function>> {
        let state = self.state.read().ok()?;
        let versions = state.functions.get(name)?;
        let version = if qualifier == "LATEST" {
            *versions.keys().next_back()?
        } else if let Ok(n) = qualifier.parse::<u32>() {
            n
        } else {
            let a = state.aliases.get(name)?.get(qualifier)?;
            match &a.additional {
                Some(x) if rand::random::<f64>() < x.weight => x.version,
                _ => a.version,
            }
        };
        versions.get(&version).map(|(_, f)| f.clone())
    }

    /// `{"name", "versions": [...], "aliases": {...}}` for one function.
    pub fn describe(&self, name: &str) -> Option<serde_json::Value> {
        let state = self.state.read().ok()?;
        let versions = state.functions.get(name)?;
        let list: Vec<&VersionInfo> = versions.values().map(|(i, _)| i).collect();
        let aliases = state.aliases.get(name).cloned().unwrap_or_default();
        Some(serde_json::json!({ "name": name, "versions": list, "aliases": aliases }))
    }

    /// Every deployed function with its latest version.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let mut names: Vec<&String> = state.functions.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let versions = &state.functions[n];
                serde_json::json!({
                    "name": n,
                    "versions": versions.len(),
                    "latest": versions.keys().next_back(),
                    "aliases": state.aliases.get(n).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }
}
