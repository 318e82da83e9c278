//! Key-value buckets for functions (SPEC section 5.1): what `wasi:keyvalue` and the admin
//! API read and write.
//!
//! A [`Bucket`] is a declared `[[bucket]]` with its limits, on one of two backends: SQLite
//! in `data_dir` ([`sqlite`]: one writer thread that group-commits, readers that never wait
//! for it) or, with `[cluster]`, a JetStream KV bucket per declared bucket ([`jetstream`]),
//! so every node sees every write. Both check keys and value sizes the same way before a
//! write reaches them ([`check_writes`]); each enforces `max_bytes` where the data is.
//!
//! The runtime only asks for a bucket by name; nothing here knows about functions, requests
//! or doors.

pub mod jetstream;
pub mod sqlite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;

use crate::config::{BucketConfig, ClusterConfig};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The most keys one `list-keys` page holds.
pub const PAGE_KEYS: usize = 1000;
/// The most entries one batch call may name.
pub const MAX_BATCH: usize = 1000;
/// The most bytes one `get-many` may read (values can be large and keys repeat).
pub const MAX_BATCH_READ_BYTES: usize = 32 << 20;

/// Why a bucket operation failed. `wasi:keyvalue` sees every one but `NoSuchStore` as
/// `error::other(message)`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("no such bucket")]
    NoSuchStore,
    /// The write would pass `max_bytes` or `max_value_bytes`; nothing was changed.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// A bad key, a value `increment` cannot add to, an overflow.
    #[error("{0}")]
    Invalid(String),
    /// The backend could not do it (disk, NATS): nothing is promised about the write.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl KvError {
    /// The metrics label of an outcome.
    fn label(&self) -> &'static str {
        match self {
            KvError::NoSuchStore => "no_such_store",
            KvError::Quota(_) => "quota",
            KvError::Invalid(_) => "invalid",
            KvError::Unavailable(_) => "unavailable",
        }
    }
}

/// One change of a write. A call's writes are applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(String, Vec<u8>),
    Delete(String),
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Set(k, _) | Write::Delete(k) => k,
        }
    }
}

/// A page of keys and the cursor of the next one (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub keys: Vec<String>,
    pub cursor: Option<u64>,
}

/// Keys and bytes (keys plus values) a bucket holds, as last committed.
#[derive(Debug, Default)]
pub struct Stats {
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl Stats {
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn publish(&self, bucket: &str, keys: u64, bytes: u64) {
        self.keys.store(keys, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        crate::metrics::METRICS
            .kv_bytes
            .get_or_create(&crate::metrics::BucketLabels {
                bucket: bucket.to_string(),
            })
            .set(bytes as i64);
    }
}

/// A key is 1 to 512 bytes of UTF-8 (a Rust `str` already is UTF-8).
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes (this one is {})",
            key.len()
        )));
    }
    Ok(())
}

/// What every backend checks before a write: keys, value sizes, batch size.
pub fn check_writes(config: &BucketConfig, writes: &[Write]) -> Result<(), KvError> {
    if writes.len() > MAX_BATCH {
        return Err(KvError::Invalid(format!(
            "a batch names at most {MAX_BATCH} keys ({} given)",
            writes.len()
        )));
    }
    for w in writes {
        check_key(w.key())?;
        if let Write::Set(key, value) = w
            && value.len() as u64 > config.max_value_bytes
        {
            return Err(value_too_large(config, key, value.len()));
        }
    }
    Ok(())
}

/// The quota error of a value over `max_value_bytes`.
fn value_too_large(config: &BucketConfig, key: &str, len: usize) -> KvError {
    KvError::Quota(format!(
        "the value of '{key}' is {len} bytes, over bucket '{}''s max_value_bytes ({})",
        config.name, config.max_value_bytes
    ))
}

/// The error of a `get-many` that would read more than [`MAX_BATCH_READ_BYTES`].
fn batch_read_too_large() -> KvError {
    KvError::Invalid(format!(
        "get-many would read more than {MAX_BATCH_READ_BYTES} bytes: ask for fewer keys"
    ))
}

/// The quota error of a write that would take a bucket to `total` bytes.
fn over_max_bytes(config: &BucketConfig, total: u64) -> KvError {
    KvError::Quota(format!(
        "bucket '{}' would hold {total} bytes, over its max_bytes ({})",
        config.name, config.max_bytes
    ))
}

/// The value `increment` leaves: the stored decimal number plus `delta` (a missing key
/// counts as 0), as wasmtime's own keyvalue host stores counters.
fn incremented(old: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let current = match old {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                KvError::Invalid("the value is not a decimal number to increment".into())
            })?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::Invalid("incrementing overflows a u64".into()))
}

/// Where a bucket's data is.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::Db>),
    Cluster(Arc<jetstream::Remote>),
    /// `wasmgate check`: nothing is opened.
    Closed,
}

/// A declared bucket on its backend.
pub struct Bucket {
    pub config: BucketConfig,
    backend: Backend,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("config", &self.config)
            .finish()
    }
}

/// Counts one operation on `bucket` by outcome.
fn count<T>(bucket: &str, op: &'static str, result: &Result<T, KvError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    crate::metrics::METRICS
        .kv_operations
        .get_or_create(&crate::metrics::KvLabels {
            bucket: bucket.to_string(),
            op,
            outcome,
        })
        .inc();
}

fn closed() -> KvError {
    KvError::Unavailable("buckets are not opened by `check`".into())
}

impl Bucket {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let r = match check_key(key) {
            Err(e) => Err(e),
            Ok(()) => match &self.backend {
                Backend::Sqlite(db) => db.get(self.name(), key),
                Backend::Cluster(r) => r.get(self.name(), key).await,
                Backend::Closed => Err(closed()),
            },
        };
        count(self.name(), "get", &r);
        r
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        let r = match check_key(key) {
            Err(e) => Err(e),
            Ok(()) => match &self.backend {
                Backend::Sqlite(db) => db.exists(self.name(), key),
                Backend::Cluster(r) => r.get(self.name(), key).await.map(|v| v.is_some()),
                Backend::Closed => Err(closed()),
            },
        };
        count(self.name(), "exists", &r);
        r
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let r = async {
            if keys.len() > MAX_BATCH {
                return Err(KvError::Invalid(format!(
                    "a batch names at most {MAX_BATCH} keys ({} given)",
                    keys.len()
                )));
            }
            for k in keys {
                check_key(k)?;
            }
            match &self.backend {
                Backend::Sqlite(db) => db.get_many(self.name(), keys).await,
                Backend::Cluster(r) => {
                    let mut out = Vec::with_capacity(keys.len());
                    let mut read = 0;
                    for k in keys {
                        let v = r.get(self.name(), k).await?;
                        read += v.as_ref().map_or(0, Vec::len);
                        if read > MAX_BATCH_READ_BYTES {
                            return Err(batch_read_too_large());
                        }
                        out.push(v);
                    }
                    Ok(out)
                }
                Backend::Closed => Err(closed()),
            }
        }
        .await;
        count(self.name(), "get_many", &r);
        r
    }

    /// One page of keys starting with `prefix`, at most `limit` (capped at [`PAGE_KEYS`]),
    /// after `cursor` (the previous page's).
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let limit = limit.clamp(1, PAGE_KEYS);
        let r = match &self.backend {
            Backend::Sqlite(db) => db.list(self.name(), prefix, cursor, limit).await,
            Backend::Cluster(r) => r.list(self.name(), prefix, cursor, limit).await,
            Backend::Closed => Err(closed()),
        };
        count(self.name(), "list_keys", &r);
        r
    }

    /// Applies `writes` whole, durably, or changes nothing. `op` names the call for the
    /// metrics (`set`, `delete`, `set_many`, `delete_many`, `admin_put`...).
    pub async fn write(&self, op: &'static str, writes: Vec<Write>) -> Result<(), KvError> {
        let r = match check_writes(&self.config, &writes) {
            Err(e) => Err(e),
            Ok(()) if writes.is_empty() => Ok(()),
            Ok(()) => match &self.backend {
                Backend::Sqlite(db) => db.write(&self.config, &self.stats, writes).await,
                Backend::Cluster(r) => r.write(&self.config, writes).await,
                Backend::Closed => Err(closed()),
            },
        };
        count(self.name(), op, &r);
        r
    }

    /// Adds `delta` to the decimal number at `key` (0 when missing) atomically, durably;
    /// the new value.
    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        let r = match check_key(key) {
            Err(e) => Err(e),
            Ok(()) => match &self.backend {
                Backend::Sqlite(db) => db.increment(&self.config, &self.stats, key, delta).await,
                Backend::Cluster(r) => r.increment(&self.config, key, delta).await,
                Backend::Closed => Err(closed()),
            },
        };
        count(self.name(), "increment", &r);
        r
    }

    /// Refreshes [`Bucket::stats`] where the backend does not keep them as it writes (a
    /// cluster bucket: other nodes write too).
    pub async fn refresh_stats(&self) {
        if let Backend::Cluster(r) = &self.backend
            && let Ok((keys, bytes)) = r.stats(self.name()).await
        {
            self.stats.publish(self.name(), keys, bytes);
        }
    }
}

/// Every declared bucket of a generation, on one backend shared across reloads.
pub struct Stores {
    backend: Backend,
    buckets: HashMap<String, Arc<Bucket>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.buckets.keys()).finish()
    }
}

impl Stores {
    /// Opens the backend (SQLite `data_dir/keyvalue.db`, or the cluster's JetStream when
    /// `cluster` is set) unless `previous` has it open already, and every declared bucket
    /// on it. With no bucket declared nothing is opened.
    pub fn open(
        data_dir: &Path,
        buckets: &[BucketConfig],
        cluster: Option<&ClusterConfig>,
        previous: Option<&Stores>,
    ) -> Result<Stores> {
        let backend = match previous.map(|p| p.backend.clone()) {
            Some(b) if !matches!(b, Backend::Closed) => b,
            _ if buckets.is_empty() => Backend::Closed,
            _ => match cluster {
                Some(c) => Backend::Cluster(jetstream::Remote::start(c)?),
                None => Backend::Sqlite(Arc::new(sqlite::Db::open(&data_dir.join("keyvalue.db"))?)),
            },
        };
        let mut map = HashMap::new();
        for b in buckets {
            let stats = previous
                .and_then(|p| p.buckets.get(&b.name))
                .map(|o| o.stats.clone())
                .unwrap_or_default();
            match &backend {
                Backend::Sqlite(db) => db.load_stats(&b.name, &stats)?,
                Backend::Cluster(r) => r.declare(b),
                Backend::Closed => {}
            }
            map.insert(
                b.name.clone(),
                Arc::new(Bucket {
                    config: b.clone(),
                    backend: backend.clone(),
                    stats,
                }),
            );
        }
        Ok(Stores {
            backend,
            buckets: map,
        })
    }

    /// The declared buckets with nothing opened (`wasmgate check`).
    pub fn closed(buckets: &[BucketConfig]) -> Stores {
        Stores {
            backend: Backend::Closed,
            buckets: buckets
                .iter()
                .map(|b| {
                    (
                        b.name.clone(),
                        Arc::new(Bucket {
                            config: b.clone(),
                            backend: Backend::Closed,
                            stats: Arc::default(),
                        }),
                    )
                })
                .collect(),
        }
    }

    pub fn bucket(&self, name: &str) -> Option<&Arc<Bucket>> {
        self.buckets.get(name)
    }

    /// Refreshes every bucket's [`Bucket::stats`] that the backend does not keep as it
    /// writes, all at once and for at most two seconds (an unreachable cluster keeps the
    /// last figures).
    pub async fn refresh_stats(&self) {
        let all = futures::future::join_all(self.buckets.values().map(|b| b.refresh_stats()));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), all).await;
    }

    /// The declared buckets, by name.
    pub fn buckets(&self) -> Vec<&Arc<Bucket>> {
        let mut v: Vec<_> = self.buckets.values().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_bytes: u64, max_value_bytes: u64) -> BucketConfig {
        BucketConfig {
            name: "b".into(),
            max_bytes,
            max_value_bytes,
        }
    }

    #[test]
    fn keys_are_one_to_512_bytes() {
        assert!(check_key("").is_err());
        assert!(check_key("k").is_ok());
        assert!(check_key(&"é".repeat(256)).is_ok());
        assert!(check_key(&"é".repeat(257)).is_err());
    }

    #[test]
    fn a_batch_with_one_value_too_large_is_refused_whole() {
        let writes = vec![
            Write::Set("a".into(), vec![0; 10]),
            Write::Set("b".into(), vec![0; 11]),
        ];
        let e = check_writes(&cfg(1000, 10), &writes).unwrap_err();
        assert!(matches!(e, KvError::Quota(m) if m.contains("'b'")));
        assert!(check_writes(&cfg(1000, 11), &writes).is_ok());
    }

    #[test]
    fn increment_reads_decimal_and_refuses_the_rest() {
        assert_eq!(incremented(None, 5), Ok(5));
        assert_eq!(incremented(Some(b"41"), 1), Ok(42));
        assert!(incremented(Some(b"x"), 1).is_err());
        assert!(incremented(Some(u64::MAX.to_string().as_bytes()), 1).is_err());
    }
}
