//! Buckets on one node: `data_dir/keyvalue.db`, its own SQLite file (WAL,
//! `synchronous = FULL`).
//!
//! Writes go to one writer thread that takes every job waiting, applies them in one
//! transaction and commits once (group commit), then answers each: a write is durable when
//! its call returns, and a busy bucket costs one fsync per group, not per write. Being the
//! only writer, the thread keeps each bucket's totals exactly and checks `max_bytes` before
//! anything changes; `increment` is atomic because nothing else writes. Reads use their
//! own connections and, with WAL, never wait for the writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{BucketConfig, KvError, Page, Stats, Write, incremented, over_max_bytes};

/// The most jobs one commit takes.
const MAX_GROUP: usize = 512;
/// The most writes waiting for the writer; past it a write fails at once (unavailable)
/// instead of queueing without bound behind a stalled disk.
const MAX_WAITING: usize = 8192;
/// How long the writer waits for a lock another process holds on the file.
const WRITER_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Read connections kept for reuse.
const MAX_IDLE_READERS: usize = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    id     INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    size   INTEGER NOT NULL,  -- bytes of key plus value
    UNIQUE (bucket, key)
);
CREATE INDEX IF NOT EXISTS kv_bucket_id ON kv (bucket, id);
";

enum Op {
    Write(Vec<Write>),
    Increment(String, u64),
}

struct Job {
    bucket: String,
    max_bytes: u64,
    max_value_bytes: u64,
    stats: Arc<Stats>,
    op: Op,
    reply: tokio::sync::oneshot::Sender<Result<u64, KvError>>,
}

/// The SQLite file: a writer thread and a pool of readers.
pub struct Db {
    path: std::path::PathBuf,
    writer: mpsc::SyncSender<Job>,
    readers: Mutex<Vec<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

impl Db {
    /// Opens (creating) the file and starts its writer.
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Only wasmgate writes this file; if something else holds it (a backup), writes
        // wait for it rather than fail, and guests waiting on them meet their deadline.
        conn.busy_timeout(WRITER_BUSY_WAIT)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot create the tables of {}", path.display()))?;
        let (tx, rx) = mpsc::sync_channel(MAX_WAITING);
        std::thread::Builder::new()
            .name("wasmgate-kv-writer".into())
            .spawn(move || writer(conn, rx))
            .context("cannot start the key-value writer")?;
        Ok(Db {
            path: path.to_path_buf(),
            writer: tx,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a read connection from the pool (opened when none is idle).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, KvError> {
        let idle = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                c.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(unavailable)?;
                c
            }
        };
        let out = f(&conn).map_err(unavailable);
        if let Ok(mut r) = self.readers.lock()
            && r.len() < MAX_IDLE_READERS
        {
            r.push(conn);
        }
        out
    }

    /// Publishes a bucket's committed totals (at start and after a reload).
    pub fn load_stats(&self, bucket: &str, stats: &Stats) -> Result<()> {
        let (keys, bytes) = self
            .read(|c| totals(c, bucket))
            .map_err(|e| anyhow::anyhow!("bucket '{bucket}': {e}"))?;
        stats.publish(bucket, keys, bytes);
        Ok(())
    }

    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?
                .query_row(params![bucket, key], |r| r.get(0))
                .optional()
        })
    }

    pub fn exists(&self, bucket: &str, key: &str) -> Result<bool, KvError> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM kv WHERE bucket = ?1 AND key = ?2")?
                .exists(params![bucket, key])
        })
    }

    /// Off the async threads: a batch reads up to [`super::MAX_BATCH_READ_BYTES`].
    pub async fn get_many(
        self: &Arc<Self>,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let (db, bucket, keys) = (self.clone(), bucket.to_string(), keys.to_vec());
        let read = tokio::task::spawn_blocking(move || {
            db.read(|c| {
                // One snapshot for the whole batch.
                c.execute_batch("BEGIN")?;
                let out = (|| {
                    let mut stmt =
                        c.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?;
                    let mut out = Vec::with_capacity(keys.len());
                    let mut total = 0;
                    for k in &keys {
                        let v: Option<Vec<u8>> = stmt
                            .query_row(params![bucket, k], |r| r.get(0))
                            .optional()?;
                        total += v.as_ref().map_or(0, Vec::len);
                        if total > super::MAX_BATCH_READ_BYTES {
                            return Ok(None);
                        }
                        out.push(v);
                    }
                    Ok(Some(out))
                })();
                c.execute_batch("COMMIT")?;
                out
            })
        })
        .await
        .map_err(unavailable)??;
        read.ok_or_else(super::batch_read_too_large)
    }

    /// Keys in the order they were first written; the cursor is the row id of the last one
    /// returned, so a page is stable under concurrent writes.
    /// Off the async threads: a prefix scans the bucket.
    pub async fn list(
        self: &Arc<Self>,
        bucket: &str,
        prefix: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let after = cursor.unwrap_or(0).min(i64::MAX as u64) as i64;
        let (db, bucket, prefix) = (self.clone(), bucket.to_string(), prefix.to_string());
        let rows: Vec<(i64, String)> = tokio::task::spawn_blocking(move || {
            db.read(|c| {
                c.prepare_cached(
                    "SELECT id, key FROM kv WHERE bucket = ?1 AND id > ?2
                     AND (?3 = '' OR substr(key, 1, length(?3)) = ?3) ORDER BY id LIMIT ?4",
                )?
                .query_map(params![bucket, after, prefix, limit as i64 + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
        })
        .await
        .map_err(unavailable)??;
        let more = rows.len() > limit;
        let keys: Vec<(i64, String)> = rows.into_iter().take(limit).collect();
        Ok(Page {
            cursor: if more {
                keys.last().map(|(id, _)| *id as u64)
            } else {
                None
            },
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        })
    }

    async fn submit(
        &self,
        config: &BucketConfig,
        stats: &Arc<Stats>,
        op: Op,
    ) -> Result<u64, KvError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            bucket: config.name.clone(),
            max_bytes: config.max_bytes,
            max_value_bytes: config.max_value_bytes,
            stats: stats.clone(),
            op,
            reply,
        };
        self.writer.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => unavailable(format!(
                "{MAX_WAITING} writes are waiting for the disk already"
            )),
            mpsc::TrySendError::Disconnected(_) => unavailable("the writer is gone"),
        })?;
        answer
            .await
            .map_err(|_| unavailable("the writer stopped"))?
    }

    pub async fn write(
        &self,
        config: &BucketConfig,
        stats: &Arc<Stats>,
        writes: Vec<Write>,
    ) -> Result<(), KvError> {
        self.submit(config, stats, Op::Write(writes))
            .await
            .map(|_| ())
    }

    pub async fn increment(
        &self,
        config: &BucketConfig,
        stats: &Arc<Stats>,
        key: &str,
        delta: u64,
    ) -> Result<u64, KvError> {
        self.submit(config, stats, Op::Increment(key.to_string(), delta))
            .await
    }
}

/// Keys and bytes of `bucket` as stored.
fn totals(c: &Connection, bucket: &str) -> rusqlite::Result<(u64, u64)> {
    c.prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM kv WHERE bucket = ?1")?
        .query_row(params![bucket], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
}

/// The writer: one transaction and one commit per group of waiting jobs.
fn writer(conn: Connection, rx: mpsc::Receiver<Job>) {
    // Each bucket's committed (keys, bytes), loaded on its first write.
    let mut committed: HashMap<String, (u64, u64)> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut working = committed.clone();
        match commit_group(&conn, &mut working, &jobs) {
            Ok(results) => {
                for job in &jobs {
                    if let Some((keys, bytes)) = working.get(&job.bucket) {
                        job.stats.publish(&job.bucket, *keys, *bytes);
                    }
                }
                committed = working;
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("a key-value commit failed: {e}");
                let _ = conn.execute_batch("ROLLBACK");
                // What is on disk is not known for sure: totals are read again.
                committed.clear();
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(unavailable(format!("commit failed: {e}"))));
                }
            }
        }
    }
}

fn commit_group(
    conn: &Connection,
    working: &mut HashMap<String, (u64, u64)>,
    jobs: &[Job],
) -> rusqlite::Result<Vec<Result<u64, KvError>>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        // A write whose caller is gone (a guest cut off by its deadline while this waited
        // for the disk: it was answered 504, and may be retried) is not applied late.
        if job.reply.is_closed() {
            results.push(Err(unavailable("the caller is gone")));
            continue;
        }
        if !working.contains_key(&job.bucket) {
            working.insert(job.bucket.clone(), totals(conn, &job.bucket)?);
        }
        let total = working.get_mut(&job.bucket).expect("inserted above");
        results.push(apply(conn, job, total)?);
    }
    conn.execute_batch("COMMIT")?;
    Ok(results)
}

fn stored(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<Option<(Vec<u8>, u64)>> {
    conn.prepare_cached("SELECT value, size FROM kv WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![bucket, key], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
        })
        .optional()
}

fn put(conn: &Connection, bucket: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (bucket, key, value, size) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, size = excluded.size",
    )?
    .execute(params![
        bucket,
        key,
        value,
        (key.len() + value.len()) as i64
    ])?;
    Ok(())
}

/// Applies one job inside the group's transaction, or changes nothing when it would pass
/// the bucket's `max_bytes`. `total` is the bucket's (keys, bytes), updated on success.
fn apply(
    conn: &Connection,
    job: &Job,
    total: &mut (u64, u64),
) -> rusqlite::Result<Result<u64, KvError>> {
    let config = BucketConfig {
        name: job.bucket.clone(),
        max_bytes: job.max_bytes,
        max_value_bytes: job.max_value_bytes,
    };
    let (mut keys, mut bytes) = (total.0 as i64, total.1 as i64);
    let grows;
    match &job.op {
        Op::Write(writes) => {
            // Sizes after the batch, key by key (a key written twice counts once).
            let mut after: HashMap<&str, Option<u64>> = HashMap::new();
            let before_bytes = bytes;
            for w in writes {
                let key = w.key();
                let old = match after.get(key) {
                    Some(s) => *s,
                    None => stored(conn, &job.bucket, key)?.map(|(_, s)| s),
                };
                let new = match w {
                    Write::Set(k, v) => Some((k.len() + v.len()) as u64),
                    Write::Delete(_) => None,
                };
                keys += i64::from(new.is_some()) - i64::from(old.is_some());
                bytes += new.unwrap_or(0) as i64 - old.unwrap_or(0) as i64;
                after.insert(key, new);
            }
            grows = bytes > before_bytes;
            if grows && bytes as u64 > job.max_bytes {
                return Ok(Err(over_max_bytes(&config, bytes as u64)));
            }
            for w in writes {
                match w {
                    Write::Set(k, v) => put(conn, &job.bucket, k, v)?,
                    Write::Delete(k) => {
                        conn.prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?
                            .execute(params![job.bucket, k])?;
                    }
                }
            }
            *total = (keys as u64, bytes as u64);
            Ok(Ok(0))
        }
        Op::Increment(key, delta) => {
            let old = stored(conn, &job.bucket, key)?;
            let value = match incremented(old.as_ref().map(|(v, _)| v.as_slice()), *delta) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let text = value.to_string();
            if text.len() as u64 > job.max_value_bytes {
                return Ok(Err(super::value_too_large(&config, key, text.len())));
            }
            let new_size = (key.len() + text.len()) as i64;
            let old_size = old.as_ref().map(|(_, s)| *s as i64).unwrap_or(0);
            keys += i64::from(old.is_none());
            bytes += new_size - old_size;
            if new_size > old_size && bytes as u64 > job.max_bytes {
                return Ok(Err(over_max_bytes(&config, bytes as u64)));
            }
            put(conn, &job.bucket, key, text.as_bytes())?;
            *total = (keys as u64, bytes as u64);
            Ok(Ok(value))
        }
    }
}
