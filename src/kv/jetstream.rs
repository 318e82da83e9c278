//! Buckets on the cluster (SPEC sections 5.1 and 10): a JetStream KV bucket
//! `wasmgate_kv_<name>` per declared bucket, so every node reads every node's writes.
//!
//! - Keys are stored base64url-encoded (a wasi:keyvalue key is any UTF-8; a NATS subject
//!   token is not), so a key and its subject map one to one.
//! - `max_bytes` is the stream's own limit with `discard = new`: JetStream refuses a put
//!   that would pass it and stores nothing. It counts what the stream stores (each entry's
//!   subject, value and a few dozen bytes of headers), so a cluster bucket holds somewhat
//!   less than the same bucket on SQLite.
//!   A reload that lowers `max_bytes` below what the bucket holds sets the stream's limit
//!   to what it holds instead (JetStream would otherwise delete the oldest keys to fit):
//!   nothing is lost, the bucket cannot grow, and the lower limit is applied at a later
//!   reload or start once the bucket holds less.
//! - A delete purges the key's subject: no delete marker is left to take room.
//! - `increment` is a compare-and-set on the key's revision, retried when another writer
//!   got there first; one node's increments of a key are serialised so retries happen only
//!   between nodes.
//! - A batch is checked whole (sizes, keys) before anything is written; if a put fails half
//!   way, the keys already written are set back to what they were, each only if nobody wrote
//!   it since (revision-checked), else the call fails as partly applied. JetStream (2.9) has
//!   no multi-subject transaction, so a node that dies in the middle of a batch can leave
//!   part of it.
//! - Durability is JetStream's: a put is acknowledged once stored by the stream's replicas,
//!   and a server syncs its files to disk on its own schedule (`sync_interval`, 2 minutes by
//!   default); run three replicas, or `sync_interval: always`, for writes that survive power
//!   loss.
//! - `list-keys` reads every key and sorts them; the cursor is a position in that order, so
//!   keys added or deleted between two pages can shift a page by as many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use super::{BucketConfig, KvError, Page, Write, incremented};
use crate::config::ClusterConfig;

/// How long an operation waits for the first connection before it fails.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Compare-and-set attempts of one `increment` before it gives up.
const MAX_CAS_ATTEMPTS: usize = 10_000;
/// Locks that serialise one node's increments, by a hash of bucket and key.
const INCREMENT_STRIPES: usize = 64;

/// The stream name of a bucket's KV.
pub fn kv_name(bucket: &str) -> String {
    format!("wasmgate_kv_{bucket}")
}

fn encode(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

fn decode(key: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(key).ok()?).ok()
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

/// A put's error: JetStream's refusal at `max_bytes` is the quota, anything else the store.
fn put_error(config: &BucketConfig, e: impl std::fmt::Display) -> KvError {
    let text = e.to_string();
    if text.contains("maximum bytes") {
        KvError::Quota(format!(
            "bucket '{}' is at its max_bytes ({})",
            config.name, config.max_bytes
        ))
    } else {
        unavailable(text)
    }
}

/// The cluster's JetStream and the KV of every declared bucket, opened on first use.
pub struct Remote {
    js: OnceLock<jetstream::Context>,
    ready: Notify,
    replicas: usize,
    declared: Mutex<HashMap<String, BucketConfig>>,
    opened: Mutex<HashMap<String, kv::Store>>,
    /// This node's increments, one at a time per key (striped).
    increments: Vec<tokio::sync::Mutex<()>>,
}

impl Remote {
    /// Starts connecting in the background (needs the async runtime).
    pub fn start(cluster: &ClusterConfig) -> Result<Arc<Remote>> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("cluster buckets need the async runtime"))?;
        let remote = Arc::new(Remote {
            js: OnceLock::new(),
            ready: Notify::new(),
            replicas: cluster.replicas,
            declared: Mutex::default(),
            opened: Mutex::default(),
            increments: (0..INCREMENT_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        });
        let weak = Arc::downgrade(&remote);
        let cluster = cluster.clone();
        handle.spawn(async move {
            let client = match crate::cluster::connect(&cluster, Default::default()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("key-value buckets: cannot connect to the cluster: {e:#}");
                    return;
                }
            };
            if let Some(r) = weak.upgrade() {
                let _ = r.js.set(jetstream::new(client));
                r.ready.notify_waiters();
            }
        });
        Ok(remote)
    }

    /// Records a bucket's limits (a reload may change them: applied at its next opening).
    pub fn declare(&self, config: &BucketConfig) {
        if let Ok(mut d) = self.declared.lock() {
            let changed = d.get(&config.name) != Some(config);
            d.insert(config.name.clone(), config.clone());
            if changed && let Ok(mut o) = self.opened.lock() {
                o.remove(&config.name);
            }
        }
    }

    async fn context(&self) -> Result<&jetstream::Context, KvError> {
        if !crate::cluster::wait_set(&self.js, &self.ready, CONNECT_WAIT).await {
            return Err(unavailable("the cluster's NATS is not reachable"));
        }
        self.js
            .get()
            .ok_or_else(|| unavailable("the cluster's NATS is not reachable"))
    }

    /// The bucket's KV, its stream created (or its `max_bytes` updated) on first use.
    async fn store(&self, bucket: &str) -> Result<kv::Store, KvError> {
        if let Some(s) = self.opened.lock().ok().and_then(|o| o.get(bucket).cloned()) {
            return Ok(s);
        }
        let config = self
            .declared
            .lock()
            .ok()
            .and_then(|d| d.get(bucket).cloned())
            .ok_or(KvError::NoSuchStore)?;
        let js = self.context().await?;
        let name = kv_name(bucket);
        let mut max_bytes = config.max_bytes.min(i64::MAX as u64) as i64;
        // Lowering the limit under what the stream holds would make JetStream delete the
        // oldest keys: keep it at what is held, so only growth is refused.
        if let Ok(mut existing) = js.get_stream(format!("KV_{name}")).await
            && let Ok(info) = existing.info().await
            && info.state.bytes as i64 > max_bytes
        {
            tracing::warn!(
                bucket,
                held = info.state.bytes,
                max_bytes,
                "the bucket holds more than its max_bytes: its limit stays at what it holds until deletes make room"
            );
            max_bytes = info.state.bytes as i64;
        }
        let stream = jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_bytes,
            max_message_size: (config.max_value_bytes + 4096).min(i32::MAX as u64) as i32,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        js.create_or_update_stream(stream)
            .await
            .map_err(|e| unavailable(format!("bucket '{bucket}': {e}")))?;
        let store = js
            .get_key_value(&name)
            .await
            .map_err(|e| unavailable(format!("bucket '{bucket}': {e}")))?;
        if let Ok(mut o) = self.opened.lock() {
            o.insert(bucket.to_string(), store.clone());
        }
        Ok(store)
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let store = self.store(bucket).await?;
        store
            .get(encode(key))
            .await
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(unavailable)
    }

    /// Keys sorted; the cursor is the position after the page (opaque to callers).
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let store = self.store(bucket).await?;
        let mut stream = store.keys().await.map_err(unavailable)?;
        let mut keys = Vec::new();
        while let Some(k) = stream.next().await {
            let k = k.map_err(unavailable)?;
            if let Some(k) = decode(&k)
                && k.starts_with(prefix)
            {
                keys.push(k);
            }
        }
        keys.sort();
        let from = (cursor.unwrap_or(0) as usize).min(keys.len());
        let to = (from + limit).min(keys.len());
        Ok(Page {
            cursor: (to < keys.len()).then_some(to as u64),
            keys: keys.drain(from..to).collect(),
        })
    }

    /// A value as stored and its revision (`None`: no such key).
    async fn entry(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, KvError> {
        Ok(store
            .entry(key.to_string())
            .await
            .map_err(unavailable)?
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    /// Removes a key and its history, leaving no delete marker behind.
    async fn purge(store: &kv::Store, key: &str) -> Result<(), KvError> {
        store
            .stream
            .purge()
            .filter(format!("{}{key}", store.prefix))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    pub async fn write(&self, config: &BucketConfig, writes: Vec<Write>) -> Result<(), KvError> {
        let store = self.store(&config.name).await?;
        // What each key held, to set it back if a later put is refused.
        let mut before: Vec<(String, Option<Bytes>)> = Vec::new();
        if writes.len() > 1 {
            for w in &writes {
                let k = encode(w.key());
                let old = Self::entry(&store, &k).await?.map(|(v, _)| v);
                before.push((k, old));
            }
        }
        // The revision each write left (a purge leaves none).
        let mut written: Vec<Option<u64>> = Vec::with_capacity(writes.len());
        for w in &writes {
            let done = match w {
                Write::Set(k, v) => store
                    .put(encode(k), Bytes::copy_from_slice(v))
                    .await
                    .map(Some)
                    .map_err(|e| put_error(config, e)),
                Write::Delete(k) => Self::purge(&store, &encode(k)).await.map(|_| None),
            };
            match done {
                Ok(rev) => written.push(rev),
                Err(e) => {
                    return match undo(&store, &before, &written).await {
                        Ok(()) => Err(e),
                        Err(u) => {
                            tracing::error!(bucket = %config.name, "a failed batch could not be set back whole: {u}");
                            Err(unavailable(format!(
                                "the batch failed ({e}) and was partly applied: {u}"
                            )))
                        }
                    };
                }
            }
        }
        Ok(())
    }

    pub async fn increment(
        &self,
        config: &BucketConfig,
        key: &str,
        delta: u64,
    ) -> Result<u64, KvError> {
        let store = self.store(&config.name).await?;
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&config.name, key).hash(&mut h);
            h.finish() as usize % INCREMENT_STRIPES
        };
        let _one_at_a_time = self.increments[stripe].lock().await;
        let k = encode(key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let entry = store.entry(k.clone()).await.map_err(unavailable)?;
            let (old, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (Some(&e.value[..]), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let value = incremented(old, delta)?;
            let text = Bytes::from(value.to_string());
            if text.len() as u64 > config.max_value_bytes {
                return Err(super::value_too_large(config, key, text.len()));
            }
            let written = match revision {
                Some(r) => match store.update(&k, text, r).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(put_error(config, e)),
                },
                None => match store.create(&k, text).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(put_error(config, e)),
                },
            };
            if written {
                return Ok(value);
            }
        }
        Err(unavailable(format!(
            "'{key}' changed under {MAX_CAS_ATTEMPTS} attempts to increment it"
        )))
    }

    /// Keys and bytes as the stream counts them.
    pub async fn stats(&self, bucket: &str) -> Result<(u64, u64), KvError> {
        let js = self.context().await?;
        let mut stream = js
            .get_stream(format!("KV_{}", kv_name(bucket)))
            .await
            .map_err(unavailable)?;
        let info = stream.info().await.map_err(unavailable)?;
        Ok((info.state.messages, info.state.bytes))
    }
}

/// Sets back the keys a failed batch wrote, newest first, each only if it still holds what
/// the batch wrote.
async fn undo(
    store: &kv::Store,
    before: &[(String, Option<Bytes>)],
    written: &[Option<u64>],
) -> Result<(), String> {
    let mut failed = Vec::new();
    for ((k, old), rev) in before.iter().zip(written).rev() {
        let undone = match (old, rev) {
            (Some(v), Some(rev)) => store
                .update(k, v.clone(), *rev)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (None, Some(rev)) => store
                .delete_expect_revision(k, Some(*rev))
                .await
                .map_err(|e| e.to_string()),
            // A purge cannot be checked against a revision: the value goes back only if the
            // key is still absent.
            (Some(v), None) => store
                .create(k, v.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (None, None) => Ok(()),
        };
        if let Err(e) = undone {
            failed.push(format!("{}: {e}", decode(k).unwrap_or_default()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_round_trip_through_subject_tokens() {
        for k in ["a", "a.b", "x y/z", "ключ", "*>", "..."] {
            let e = super::encode(k);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(super::decode(&e).as_deref(), Some(k));
        }
    }
}
