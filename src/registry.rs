//! Deployed functions (SPEC section 9): immutable numbered versions and aliases, stored in
//! `data_dir` and surviving restarts without recompiling.
//!
//! A deployed component is stored content-addressed (`functions/<sha256>.wasm`) with its
//! compiled form (`functions/<sha256>-<engine>.cwasm`, keyed by the engine's compatibility
//! hash); versions and aliases live in `registry.db`. Resolution happens per request, so a
//! deploy or an alias move takes effect for new requests at once, while in-flight requests
//! keep the `Arc<Function>` they started with.
//!
//! A compiled artifact is native code that wasmtime loads without re-checking it, so it is
//! only loaded when it is authentically this node's: owned by this user, not writable by
//! others, and carrying an HMAC-SHA256 (`.cwasm.mac`) under a key kept outside `data_dir`
//! (`artifact_key_file`, by default `<data_dir>.key`, created 0600). The bytes checked are
//! the bytes loaded. Anything else is recompiled from the stored component, whose name is
//! its own SHA-256; a version that cannot be recompiled either is logged and not served,
//! and the node starts anyway.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, FunctionConfig};
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
    dir: PathBuf,
    /// Authenticates compiled artifacts; `None` (read-only, no key yet): none are loaded.
    mac_key: Option<Vec<u8>>,
    /// False for `wasmgate check`: nothing is created, cached or migrated.
    writable: bool,
    engine_key: String,
    db: Mutex<Connection>,
    state: RwLock<State>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish()
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
    pub fn open(data_dir: &Path, config: &Config, runtime: &Runtime) -> Result<Registry> {
        let dir = data_dir.join("functions");
        crate::config::create_private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let key = artifact_key(&config.server.artifact_key_file, true)?;
        let path = data_dir.join("registry.db");
        let db = Connection::open(&path)
            .with_context(|| format!("{}: cannot open the registry", path.display()))?;
        Self::with_db(dir, db, key, true, config, runtime)
    }

    /// Opens an existing registry without writing anything (for `wasmgate check`, which may
    /// run beside a live node): `None` when there is none.
    pub fn open_read_only(
        data_dir: &Path,
        config: &Config,
        runtime: &Runtime,
    ) -> Result<Option<Registry>> {
        let path = data_dir.join("registry.db");
        if !path.exists() {
            return Ok(None);
        }
        let db = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("{}: cannot open the registry", path.display()))?;
        let key = artifact_key(&config.server.artifact_key_file, false)?;
        Self::with_db(data_dir.join("functions"), db, key, false, config, runtime).map(Some)
    }

    fn with_db(
        dir: PathBuf,
        db: Connection,
        mac_key: Option<Vec<u8>>,
        writable: bool,
        config: &Config,
        runtime: &Runtime,
    ) -> Result<Registry> {
        if writable {
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
        }
        let registry = Registry {
            dir,
            mac_key,
            writable,
            engine_key: crate::runtime::engine::engine_key(runtime.engine()),
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
        self.dir.join(format!("{sha}.wasm"))
    }

    fn cwasm_path(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `sha`: from the cache when possible, else compiled from the
    /// stored `.wasm` (and cached). Returns whether it came from the cache.
    fn component(
        &self,
        runtime: &Runtime,
        sha: &str,
    ) -> Result<(wasmtime::component::Component, bool)> {
        let cwasm = self.cwasm_path(sha);
        if cwasm.exists() {
            match self.load_verified(runtime.engine(), &cwasm) {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    "{}: compiled artifact not used ({e:#}); recompiling",
                    cwasm.display()
                ),
            }
        }
        let wasm = self.wasm_path(sha);
        let bytes =
            std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        if hex::encode(Sha256::digest(&bytes)) != sha {
            anyhow::bail!("{}: the stored component is corrupt", wasm.display());
        }
        let component = runtime.compile_component(&bytes)?;
        self.write_cache(&component, sha);
        Ok((component, false))
    }

    fn mac_path(cwasm: &Path) -> PathBuf {
        let mut p = cwasm.as_os_str().to_owned();
        p.push(".mac");
        PathBuf::from(p)
    }

    /// Loads a compiled artifact only if it is authentically this node's (see the module
    /// documentation); the bytes verified are the bytes deserialized.
    fn load_verified(
        &self,
        engine: &wasmtime::Engine,
        cwasm: &Path,
    ) -> Result<wasmtime::component::Component> {
        use std::os::unix::fs::MetadataExt;
        let key = self
            .mac_key
            .as_ref()
            .ok_or_else(|| anyhow!("no artifact key to check it with"))?;
        let meta = std::fs::symlink_metadata(cwasm)?;
        if !meta.is_file() {
            anyhow::bail!("not a regular file");
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            anyhow::bail!("not owned by this user");
        }
        if meta.mode() & 0o022 != 0 {
            anyhow::bail!("writable by others");
        }
        let bytes = std::fs::read(cwasm)?;
        let mac = std::fs::read_to_string(Self::mac_path(cwasm)).unwrap_or_default();
        let expected = hex::decode(mac.trim()).unwrap_or_default();
        let mut m =
            <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key).map_err(|e| anyhow!("{e}"))?;
        hmac::Mac::update(&mut m, &bytes);
        hmac::Mac::verify_slice(m, &expected).map_err(|_| anyhow!("fails its integrity check"))?;
        load_precompiled(engine, &bytes)
    }

    fn write_cache(&self, component: &wasmtime::component::Component, sha: &str) {
        if !self.writable {
            return;
        }
        let Some(key) = &self.mac_key else { return };
        match component.serialize() {
            Ok(bytes) => {
                let cwasm = self.cwasm_path(sha);
                let mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(key).map(|mut m| {
                    hmac::Mac::update(&mut m, &bytes);
                    hex::encode(hmac::Mac::finalize(m).into_bytes())
                });
                let written = write_atomic(&cwasm, &bytes).and_then(|()| match mac {
                    Ok(mac) => write_atomic(&Self::mac_path(&cwasm), mac.as_bytes()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                });
                if let Err(e) = written {
                    tracing::warn!("cannot cache the compiled component {sha}: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialize the compiled component {sha}: {e}"),
        }
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
        let sha = hex::encode(Sha256::digest(bytes));
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
        self.write_cache(&component, &sha);
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

/// Writes a file so that it is either absent or whole, and durable: a temporary name unique
/// to this write, fsync, rename, fsync of the directory (so the rename survives a crash).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let unique: u64 = rand::random();
    let tmp = path.with_extension(format!("tmp-{}-{unique:016x}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The key that authenticates compiled artifacts: read from `path`, or (when `create`)
/// made at first start, 32 random bytes as hex, mode 0600. `None` when it does not exist
/// and may not be created (`check`).
fn artifact_key(path: &Path, create: bool) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .map(Some)
            .map_err(|_| anyhow!("{}: not a hex artifact key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("{}: cannot create the artifact key", path.display()))?;
            file.write_all(hex::encode(key).as_bytes())?;
            file.sync_all()?;
            Ok(Some(key.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(
            "{}: cannot read the artifact key: {e}",
            path.display()
        )),
    }
}

/// Loads a compiled component written by [`Registry::write_cache`].
#[allow(unsafe_code)]
fn load_precompiled(
    engine: &wasmtime::Engine,
    bytes: &[u8],
) -> Result<wasmtime::component::Component> {
    // SAFETY: `deserialize` trusts its input to be wasmtime's own output. These bytes were
    // just verified against an HMAC-SHA256 that only `write_cache` produces (from
    // `Component::serialize`, under a key kept outside `data_dir`), read from a file owned
    // by this user and not writable by others; wasmtime also checks the header against
    // this engine's configuration and refuses a mismatch.
    unsafe { wasmtime::component::Component::deserialize(engine, bytes) }
        .map_err(|e| anyhow!("{e}"))
}
