//! Deployed functions (SPEC section 9): immutable numbered versions and aliases, stored in
//! `data_dir` and surviving restarts without recompiling.
//!
//! A deployed component is stored content-addressed (`functions/<sha256>.wasm`) with its
//! compiled form (`functions/<sha256>-<engine>.cwasm`, keyed by the engine's compatibility
//! hash); versions and aliases live in `registry.db`. Resolution happens per request, so a
//! deploy or an alias move takes effect for new requests at once, while in-flight requests
//! keep the `Arc<Function>` they started with.
//!
//! With `[cluster]` (SPEC section 10) the versions and aliases live in the JetStream
//! key-value bucket `wasmgate_registry` and the components in the object store
//! `wasmgate_components`, so every node serves the same set: each node watches the bucket,
//! fetches a new version's component once (checked against its SHA-256) and compiles it
//! into its own cache. Version numbers are claimed with KV *create*, so two nodes deploying
//! at once get different numbers.
//!
//! Compiled forms are kept by [`Artifacts`] (authenticated, see there). A version whose
//! artifact is missing or not authentic is recompiled from the stored component, whose name
//! is its own SHA-256; a version that cannot be recompiled either is logged and not served,
//! and the node starts anyway.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream;
use futures::StreamExt;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::config::{ClusterConfig, Config, FunctionConfig};
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Additional {
    pub version: u32,
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

impl State {
    fn has(&self, name: &str, version: u32) -> bool {
        self.functions
            .get(name)
            .is_some_and(|v| v.contains_key(&version))
    }
}

pub struct Registry {
    /// Stored components and their compiled forms (`data_dir/functions`).
    artifacts: Arc<Artifacts>,
    store: Store,
    state: Arc<RwLock<State>>,
}

/// Where versions and aliases are kept.
enum Store {
    /// `data_dir/registry.db`.
    Local(Mutex<Connection>),
    /// The cluster's buckets; the watcher applies every change to the state.
    Cluster {
        remote: Arc<OnceLock<Remote>>,
        ready: Arc<Notify>,
        watcher: tokio::task::AbortHandle,
    },
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Store::Cluster { watcher, .. } = &self.store {
            watcher.abort();
        }
    }
}

/// The cluster's registry buckets.
struct Remote {
    kv: jetstream::kv::Store,
    objects: jetstream::object_store::ObjectStore,
}

const REGISTRY_BUCKET: &str = "wasmgate_registry";
const COMPONENT_BUCKET: &str = "wasmgate_components";

/// A version as kept in the cluster's bucket.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    sha256: String,
    size: u64,
    created_ms: i64,
}

impl StoredVersion {
    /// A record read back from the bucket is checked like a deploy before anything uses
    /// it: the digest names a file, and the size sizes a buffer.
    fn check(&self) -> Result<(), String> {
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err("its sha256 is not 64 lowercase hex digits".into());
        }
        if self.size == 0 || self.size > MAX_COMPONENT_BYTES as u64 {
            return Err(format!(
                "its size {} is outside 1..={MAX_COMPONENT_BYTES}",
                self.size
            ));
        }
        Ok(())
    }
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
            keyvalue: Vec::new(),
            variables: Vec::new(),
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
    ///
    /// With `[cluster]` the versions come from the cluster's bucket instead; `previous` (the
    /// registry of the generation being replaced by a reload) serves until they are loaded.
    pub fn open(
        data_dir: &Path,
        config: &Config,
        runtime: &Runtime,
        artifacts: Arc<Artifacts>,
        previous: Option<&Registry>,
    ) -> Result<Registry> {
        if let Some(cluster) = &config.cluster {
            return Self::open_cluster(cluster, config, runtime, artifacts, previous);
        }
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
            store: Store::Local(Mutex::new(db)),
            state: Arc::new(RwLock::new(State::default())),
        };
        registry.load(config, runtime)?;
        Ok(registry)
    }

    /// The cluster's registry: connects and follows the bucket in the background (until
    /// then nothing deployed is served; [`Registry::wait_ready`] waits for the first load).
    fn open_cluster(
        cluster: &ClusterConfig,
        config: &Config,
        runtime: &Runtime,
        artifacts: Arc<Artifacts>,
        previous: Option<&Registry>,
    ) -> Result<Registry> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow!("the cluster registry needs the async runtime"))?;
        let seed = previous
            .and_then(|p| p.state.read().ok())
            .map(|s| State {
                functions: s.functions.clone(),
                aliases: s.aliases.clone(),
            })
            .unwrap_or_default();
        let state = Arc::new(RwLock::new(seed));
        let remote = Arc::new(OnceLock::new());
        let ready = Arc::new(Notify::new());
        let follower = Follower {
            state: state.clone(),
            artifacts: artifacts.clone(),
            runtime: runtime.for_deploys(),
            config: config.clone(),
        };
        let watcher = handle
            .spawn(follow(
                cluster.clone(),
                follower,
                remote.clone(),
                ready.clone(),
            ))
            .abort_handle();
        Ok(Registry {
            artifacts,
            store: Store::Cluster {
                remote,
                ready,
                watcher,
            },
            state,
        })
    }

    /// Waits (at most `max`) until the cluster's versions are loaded; whether they are.
    pub async fn wait_ready(&self, max: std::time::Duration) -> bool {
        let Store::Cluster { remote, ready, .. } = &self.store else {
            return true;
        };
        crate::cluster::wait_set(remote, ready, max).await
    }

    fn db(&self) -> Result<std::sync::MutexGuard<'_, Connection>, RegistryError> {
        match &self.store {
            Store::Local(db) => db
                .lock()
                .map_err(|_| RegistryError::Storage("registry lock poisoned".into())),
            Store::Cluster { .. } => Err(RegistryError::Storage(
                "the registry is on the cluster".into(),
            )),
        }
    }

    fn load(&self, config: &Config, runtime: &Runtime) -> Result<()> {
        let rows: Vec<(String, u32, String, i64, i64)> = {
            let db = self.db()?;
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
            let record = StoredVersion {
                sha256: sha,
                size: u64::try_from(size).unwrap_or(0),
                created_ms: created,
            };
            if let Err(why) = record.check().and_then(|()| {
                if crate::config::valid_name(&name) {
                    Ok(())
                } else {
                    Err("its function name is not valid".into())
                }
            }) {
                tracing::error!(function = %name.escape_debug(), version, "a version record set aside: {why}");
                continue;
            }
            let sha = record.sha256;
            let loaded = prepare_version(&self.artifacts, runtime, config, &name, version, &sha);
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
        let db = self.db()?;
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
        wasm_path(&self.artifacts, sha)
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
        let version = match &self.store {
            Store::Local(_) => {
                let db = self.db()?;
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
            }
            Store::Cluster { remote, .. } => {
                let remote = remote.get().ok_or_else(|| {
                    internal("the cluster's registry is not reachable yet".into())
                })?;
                let last = self
                    .state
                    .read()
                    .ok()
                    .and_then(|s| s.functions.get(name)?.keys().next_back().copied());
                let stored = StoredVersion {
                    sha256: sha.clone(),
                    size: bytes.len() as u64,
                    created_ms: now,
                };
                on_runtime(remote.publish(name, last.unwrap_or(0) + 1, &stored, bytes))?
            }
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
        match &self.store {
            Store::Local(_) => {
                self.db()?
                    .execute(
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
            }
            Store::Cluster { remote, .. } => {
                let remote = remote.get().ok_or_else(|| {
                    RegistryError::Storage("the cluster's registry is not reachable yet".into())
                })?;
                let value =
                    serde_json::to_vec(&a).map_err(|e| RegistryError::Storage(e.to_string()))?;
                on_runtime(async {
                    remote
                        .kv
                        .put(alias_key(name, alias), value.into())
                        .await
                        .map_err(|e| RegistryError::Storage(format!("NATS: {e}")))
                })?;
            }
        }
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

fn wasm_path(artifacts: &Artifacts, sha: &str) -> PathBuf {
    artifacts.dir().join(format!("{sha}.wasm"))
}

/// A stored version made ready to serve: its component from the compiled cache when
/// possible, else compiled from the stored `.wasm` (and cached). Says whether it came from
/// the cache.
fn prepare_version(
    artifacts: &Artifacts,
    runtime: &Runtime,
    config: &Config,
    name: &str,
    version: u32,
    sha: &str,
) -> Result<(Function, bool)> {
    let wasm = wasm_path(artifacts, sha);
    let (component, from_cache) = artifacts.compiled(runtime.engine(), sha, || {
        let bytes =
            std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        if sha256_hex(&bytes) != sha {
            anyhow::bail!("{}: the stored component is corrupt", wasm.display());
        }
        Ok(bytes)
    })?;
    let fc = function_config(config, name, &wasm);
    let f = runtime.prepare(&fc, Some(version), &component)?;
    Ok((f, from_cache))
}

/// Runs `f` to completion from a blocking section of a runtime thread (the admin API calls
/// deploys inside `block_in_place`).
fn on_runtime<T>(
    f: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| RegistryError::Storage("no async runtime".into()))?;
    tokio::task::block_in_place(|| handle.block_on(f))
}

fn version_key(name: &str, version: u32) -> String {
    format!("version.{name}.{version}")
}

fn alias_key(name: &str, alias: &str) -> String {
    format!("alias.{name}.{alias}")
}

impl Remote {
    /// Uploads the component (once per content) and claims the first free version number
    /// from `first` on.
    async fn publish(
        &self,
        name: &str,
        first: u32,
        stored: &StoredVersion,
        bytes: &[u8],
    ) -> Result<u32, RegistryError> {
        let storage = |e: String| RegistryError::Storage(format!("NATS: {e}"));
        if self.objects.info(&stored.sha256).await.is_err() {
            let mut reader = bytes;
            self.objects
                .put(stored.sha256.as_str(), &mut reader)
                .await
                .map_err(|e| storage(e.to_string()))?;
        }
        let value: bytes::Bytes = serde_json::to_vec(stored)
            .map_err(|e| storage(e.to_string()))?
            .into();
        for version in first..first.saturating_add(1000) {
            match self
                .kv
                .create(version_key(name, version), value.clone())
                .await
            {
                Ok(_) => return Ok(version),
                Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(storage(e.to_string())),
            }
        }
        Err(storage(format!("no free version number for '{name}'")))
    }
}

/// What the watcher needs to serve what other nodes deploy.
struct Follower {
    state: Arc<RwLock<State>>,
    artifacts: Arc<Artifacts>,
    runtime: Runtime,
    config: Config,
}

/// Connects, then applies every version and alias in the bucket, then every change, for as
/// long as the registry lives.
async fn follow(
    cluster: ClusterConfig,
    follower: Follower,
    remote_slot: Arc<OnceLock<Remote>>,
    ready: Arc<Notify>,
) {
    let follower = Arc::new(follower);
    let mut attempt = 0usize;
    let remote = loop {
        match connect_remote(&cluster).await {
            Ok(r) => break r,
            Err(e) => {
                attempt += 1;
                tracing::warn!(attempt, "the registry on NATS is not ready: {e:#}");
                tokio::time::sleep(crate::cluster::reconnect_delay(attempt)).await;
            }
        }
    };
    // Everything there is now, then what changes (the watch replays the current values,
    // which are applied once).
    // Loaded beside what is served (a previous generation's versions, after a reload), then
    // swapped in whole, so this config's settings apply to every version.
    let (mut loaded, mut cached) = (0usize, 0usize);
    let fresh = Arc::new(RwLock::new(State::default()));
    if let Ok(mut keys) = remote.kv.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(value)) = remote.kv.get(&key).await
                && let Some(from_cache) = apply(&follower, &fresh, &remote, &key, &value).await
            {
                loaded += 1;
                cached += usize::from(from_cache);
            }
        }
    }
    if let (Ok(mut served), Ok(mut fresh)) = (follower.state.write(), fresh.write()) {
        *served = std::mem::take(&mut *fresh);
    }
    if loaded > 0 {
        tracing::info!("loaded {loaded} deployed versions ({cached} from the compiled cache)");
    }
    let _ = remote_slot.set(remote);
    ready.notify_waiters();
    let Some(remote) = remote_slot.get() else {
        return;
    };
    loop {
        let mut watch = match remote.kv.watch_all().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("watching the registry bucket failed: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) if e.operation == jetstream::kv::Operation::Put => {
                    if apply(&follower, &follower.state, remote, &e.key, &e.value)
                        .await
                        .is_some()
                    {
                        tracing::info!(key = %e.key, "a version deployed in the cluster is served here");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("watching the registry bucket failed: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn connect_remote(cluster: &ClusterConfig) -> Result<Remote> {
    let client = crate::cluster::connect(cluster, Default::default()).await?;
    let js = jetstream::new(client);
    let kv = crate::cluster::key_value(&js, REGISTRY_BUCKET, 0, cluster.replicas)
        .await
        .context("opening the registry bucket")?;
    let objects = match js.get_object_store(COMPONENT_BUCKET).await {
        Ok(o) => o,
        Err(_) => match js
            .create_object_store(jetstream::object_store::Config {
                bucket: COMPONENT_BUCKET.into(),
                storage: jetstream::stream::StorageType::File,
                num_replicas: cluster.replicas,
                ..Default::default()
            })
            .await
        {
            Ok(o) => o,
            // Another node made it meanwhile.
            Err(_) => js
                .get_object_store(COMPONENT_BUCKET)
                .await
                .context("opening the component store")?,
        },
    };
    Ok(Remote { kv, objects })
}

/// Applies one entry of the bucket; when it added a version, whether that came from the
/// compiled cache.
async fn apply(
    follower: &Arc<Follower>,
    state: &Arc<RwLock<State>>,
    remote: &Remote,
    key: &str,
    value: &[u8],
) -> Option<bool> {
    let mut parts = key.splitn(3, '.');
    let (Some(kind), Some(name), Some(last)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    match kind {
        "alias" => {
            if let Ok(a) = serde_json::from_slice::<Alias>(value)
                && let Ok(mut state) = state.write()
            {
                state
                    .aliases
                    .entry(name.to_string())
                    .or_default()
                    .insert(last.to_string(), a);
            }
            None
        }
        "version" => {
            let version = last.parse::<u32>().ok()?;
            if state.read().is_ok_and(|s| s.has(name, version)) {
                return None;
            }
            let Ok(stored) = serde_json::from_slice::<StoredVersion>(value) else {
                tracing::error!(function = name, version, "an unreadable version record");
                return None;
            };
            if !crate::config::valid_name(name) {
                tracing::error!(
                    key,
                    "a version record with an invalid function name; set aside"
                );
                return None;
            }
            if let Err(why) = stored.check() {
                tracing::error!(
                    function = name,
                    version,
                    "a version record set aside: {why}"
                );
                return None;
            }
            match install(follower, state, remote, name, version, stored).await {
                Ok(from_cache) => Some(from_cache),
                Err(e) => {
                    tracing::error!(
                        "deployed function '{name}' version {version} is broken and is not served: {e:#}"
                    );
                    None
                }
            }
        }
        _ => None,
    }
}

/// Fetches a version's component when this node has not got it (checked against its
/// SHA-256), compiles it into the local cache and serves it.
async fn install(
    follower: &Arc<Follower>,
    state: &Arc<RwLock<State>>,
    remote: &Remote,
    name: &str,
    version: u32,
    stored: StoredVersion,
) -> Result<bool> {
    let wasm = wasm_path(&follower.artifacts, &stored.sha256);
    if !wasm.exists() {
        let mut object = remote
            .objects
            .get(&stored.sha256)
            .await
            .with_context(|| format!("fetching component {}", stored.sha256))?;
        // The size was checked against the deploy limit; the object is read no further.
        let mut bytes = Vec::with_capacity(stored.size as usize);
        (&mut object)
            .take(stored.size + 1)
            .read_to_end(&mut bytes)
            .await?;
        if bytes.len() as u64 != stored.size || sha256_hex(&bytes) != stored.sha256 {
            anyhow::bail!("component {} arrived corrupt", stored.sha256);
        }
        write_atomic(&wasm, &bytes)?;
    }
    let (f, state) = (follower.clone(), state.clone());
    let name = name.to_string();
    tokio::task::spawn_blocking(move || -> Result<bool> {
        let (function, from_cache) = prepare_version(
            &f.artifacts,
            &f.runtime,
            &f.config,
            &name,
            version,
            &stored.sha256,
        )?;
        let info = VersionInfo {
            version,
            sha256: stored.sha256,
            size: stored.size,
            created: rfc3339(stored.created_ms),
        };
        if let Ok(mut state) = state.write() {
            state
                .functions
                .entry(name.clone())
                .or_default()
                .insert(version, (info, Arc::new(function)));
        }
        Ok(from_cache)
    })
    .await?
}
