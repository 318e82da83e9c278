//! The durable task store: one SQLite file in `data_dir` (WAL, `synchronous = FULL`), owned
//! by one writer thread.
//!
//! Every mutation is a command on a channel. The thread takes the first command, then every
//! command already waiting (up to [`MAX_BATCH`]), runs them all in one transaction and commits
//! once: concurrent submissions share one fsync (group commit), and a 202 is only sent after
//! the commit that made its task durable. Claims are the one answer sent before the commit
//! (see `Cmd::Claim` in `apply`): running a task needs no durable mark.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::invocation::{StoredInvocation, StoredValue, Target, TriggerKind};

/// Commands handled in one transaction at most.
pub const MAX_BATCH: usize = 512;

/// Task states (SPEC section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Enqueued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Expired,
    Stopped,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Enqueued => "Enqueued",
            TaskState::Running => "Running",
            TaskState::Retrying => "Retrying",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Expired => "Expired",
            TaskState::Stopped => "Stopped",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "Enqueued" => TaskState::Enqueued,
            "Running" => TaskState::Running,
            "Retrying" => TaskState::Retrying,
            "Succeeded" => TaskState::Succeeded,
            "Failed" => TaskState::Failed,
            "Expired" => TaskState::Expired,
            "Stopped" => TaskState::Stopped,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Expired | TaskState::Stopped
        )
    }
}

/// A task as submitted: the invocation (the request as the function will see it, and its
/// target), its body, and when it is due.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub invocation: StoredInvocation,
    pub body: Vec<u8>,
    pub callback_url: Option<String>,
    pub created_ms: i64,
    pub due_ms: i64,
    /// Open tasks its trigger may have at most (`async.max_tasks`), if bounded.
    pub trigger_quota: Option<u64>,
    /// Bytes its trigger's open tasks may hold at most (`async.max_queue_bytes`); when not
    /// set, a fair share: a quarter of `[queue] max_queue_bytes`.
    pub trigger_bytes_quota: Option<u64>,
}

impl NewTask {
    /// The task's key in the store: ids are scoped per trigger (SPEC section 7).
    pub fn key(&self) -> String {
        task_key(&self.invocation.trigger, &self.id)
    }
}

/// The store's key for task `id` of `trigger` (trigger names never contain '/').
pub fn task_key(trigger: &str, id: &str) -> String {
    format!("{trigger}/{id}")
}

/// A task claimed for execution.
#[derive(Debug, Clone)]
pub struct Task {
    pub new: NewTask,
    pub attempts: u32,
}

/// A task as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub request_id: String,
    pub trigger: String,
    pub function: String,
    pub state: TaskState,
    pub attempts: u32,
    pub created_ms: i64,
    pub due_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub last_error: Option<String>,
    pub response_status: Option<u16>,
    pub response_preview: Option<String>,
    pub callback_url: Option<String>,
    pub callback_status: Option<String>,
    pub callback_attempts: u32,
}

/// A callback waiting to be delivered (kept until it is, so a restart retries it).
#[derive(Debug, Clone)]
pub struct PendingCallback {
    /// The task's store key ([`task_key`]).
    pub key: String,
    pub task_id: String,
    pub url: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub attempts: u32,
    /// The client named this URL (`X-Callback-Url`): host names may not reach the inside.
    pub client_supplied: bool,
    /// Delivery attempts in all (the trigger's `max_retries` + 1).
    pub max_attempts: u32,
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone)]
pub enum Update {
    /// The task is done. A callback, if any, is stored for delivery.
    Finish {
        key: String,
        state: TaskState,
        attempts: u32,
        finished_ms: i64,
        last_error: Option<String>,
        status: Option<u16>,
        preview: Option<Vec<u8>>,
        callback: Option<PendingCallback>,
    },
    /// Run it again later.
    Reschedule {
        key: String,
        attempts: u32,
        due_ms: i64,
        last_error: Option<String>,
        status: Option<u16>,
        /// When it is recorded (the finish time if a stop landed meanwhile).
        now_ms: i64,
    },
    /// A callback delivery attempt: `delivered` or not, with a status line.
    Callback {
        key: String,
        status: String,
        attempts: u32,
        done: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    Exists,
    /// A bound on open tasks or their bytes (the message says which).
    Full(String),
    Storage(String),
}

/// What the queue holds open (not final), kept by the writer thread as it commits and read
/// by anyone: the bounds of `[queue] max_tasks`, `max_queue_bytes` and `async.max_tasks`
/// are checked against it exactly, in the writer's order.
#[derive(Debug, Default)]
pub struct Book {
    pub open: AtomicU64,
    pub bytes: AtomicU64,
    /// Per trigger: open tasks and their bytes.
    per_trigger: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl Book {
    fn add(&self, trigger: &str, size: u64) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        if let Ok(mut m) = self.per_trigger.lock() {
            let e = m.entry(trigger.to_string()).or_default();
            e.0 += 1;
            e.1 += size;
        }
    }

    fn remove(&self, trigger: &str, size: u64) {
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(size))
            });
        if let Ok(mut m) = self.per_trigger.lock()
            && let Some((n, bytes)) = m.get_mut(trigger)
        {
            *n = n.saturating_sub(1);
            *bytes = bytes.saturating_sub(size);
        }
    }

    /// Open tasks of `trigger`.
    pub fn of_trigger(&self, trigger: &str) -> u64 {
        self.trigger_totals(trigger).0
    }

    /// Open tasks of `trigger` and the bytes they hold.
    fn trigger_totals(&self, trigger: &str) -> (u64, u64) {
        self.per_trigger
            .lock()
            .ok()
            .and_then(|m| m.get(trigger).copied())
            .unwrap_or((0, 0))
    }
}

/// The bounds an insert is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_tasks: u64,
    pub max_bytes: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StopError {
    NotFound,
    Storage(String),
}

pub enum Cmd {
    /// A task and its invocation as stored (serialized by the caller, off the writer).
    Insert(
        NewTask,
        serde_json::Result<String>,
        oneshot::Sender<Result<(), InsertError>>,
    ),
    Claim {
        now_ms: i64,
        limit: usize,
        reply: oneshot::Sender<Vec<Task>>,
    },
    Update(Update, Option<oneshot::Sender<()>>),
    Get(String, oneshot::Sender<Option<TaskView>>),
    /// Every task with this id, on `trigger` only when given.
    Find {
        id: String,
        trigger: Option<String>,
        reply: oneshot::Sender<Vec<TaskView>>,
    },
    List {
        trigger: Option<String>,
        function: Option<String>,
        state: Option<TaskState>,
        limit: usize,
        reply: oneshot::Sender<Vec<TaskView>>,
    },
    Stop(String, i64, oneshot::Sender<Result<TaskView, StopError>>),
    NextDue(oneshot::Sender<Option<i64>>),
    /// Answered after the commit of its batch (so after every command sent before it).
    Flush(oneshot::Sender<()>),
    StopRequested(String, oneshot::Sender<bool>),
    PendingCallbacks(oneshot::Sender<Vec<PendingCallback>>),
    Prune {
        before_ms: i64,
    },
}

/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    request_id TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    invocation TEXT NOT NULL,
    body BLOB NOT NULL,
    callback_url TEXT,
    created_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    response_status INTEGER,
    response_preview BLOB,
    callback_target TEXT,
    callback_headers BLOB,
    callback_body BLOB,
    callback_status TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks(state, due_ms);
-- An index on (function, state) served no query (the task list filters with `?1 IS NULL
-- OR function = ?1`, which no index serves) and cost every insert and state change a write.
DROP INDEX IF EXISTS tasks_function;
CREATE INDEX IF NOT EXISTS tasks_id ON tasks(id);";

/// Opens (creating if needed) the database, migrates an older schema, and recovers tasks a
/// crash left `Running`. Returns the connection and the number of unfinished tasks.
///
/// `qualifier_of` names the qualifier a schema-0 task's trigger runs (those rows stored no
/// target of their own).
pub fn open(
    path: &Path,
    now_ms: i64,
    qualifier_of: &dyn Fn(&str) -> String,
) -> Result<(Connection, Book)> {
    if let Some(dir) = path.parent() {
        crate::config::create_private_dir(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("{}: cannot open the task database", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Pages the writer touches stay in memory (the default 2 MB made it re-read index pages
    // from the OS under load); the memory is only used as the queue fills. The WAL is folded
    // back every 8 MB instead of 4 MB: fewer checkpoints, each copying a page once however
    // often it changed (measured: 202/s at 64 clients +25-50%, p99 within 10 ms of before).
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.pragma_update(None, "wal_autocheckpoint", 2048)?;
    migrate(&mut conn, qualifier_of)
        .with_context(|| format!("{}: cannot migrate", path.display()))?;
    conn.execute_batch(CREATE)
        .with_context(|| format!("{}: cannot create the task table", path.display()))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    // A task that was Running when the process died runs again (at least once).
    conn.execute(
        "UPDATE tasks SET state = 'Retrying', due_ms = ?1 WHERE state = 'Running'",
        params![now_ms],
    )?;
    let book = Book::default();
    {
        let mut stmt = conn.prepare(
            "SELECT trigger_name, size FROM tasks WHERE state IN ('Enqueued', 'Retrying', 'Running')",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let trigger: String = r.get(0)?;
            let size: i64 = r.get(1)?;
            book.add(&trigger, size.max(0) as u64);
        }
    }
    Ok((conn, book))
}

/// Moves a schema-0 table (method, path and a header blob per task) to the stored
/// invocation form, in one transaction, keeping every task.
fn migrate(conn: &mut Connection, qualifier_of: &dyn Fn(&str) -> String) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let legacy: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'method'")?
        .exists([])?;
    if version >= SCHEMA_VERSION || !legacy {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch("ALTER TABLE tasks RENAME TO tasks_v0; DROP INDEX IF EXISTS tasks_due; DROP INDEX IF EXISTS tasks_function;")?;
    tx.execute_batch(CREATE)?;
    let rows: Vec<(String, String, String, String, String, Vec<u8>)> = {
        let mut stmt = tx.prepare(
            "SELECT id, request_id, trigger_name, function, method || ' ' || path, headers FROM tasks_v0",
        )?;
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    for (id, request_id, trigger, function, line, headers) in rows {
        let (method, uri) = line.split_once(' ').unwrap_or(("POST", "/"));
        let headers = decode_headers(&headers)
            .into_iter()
            .map(|(k, v)| {
                let value = match String::from_utf8(v) {
                    Ok(s) => StoredValue::Text(s),
                    Err(e) => {
                        use base64::Engine as _;
                        StoredValue::Binary {
                            b64: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                        }
                    }
                };
                (k, value)
            })
            .collect();
        let qualifier = qualifier_of(&trigger);
        let stored = StoredInvocation {
            target: Target {
                function,
                qualifier,
            },
            trigger,
            origin: TriggerKind::Http,
            request_id,
            method: method.to_string(),
            uri: uri.to_string(),
            headers,
        };
        tx.execute(
            "UPDATE tasks_v0 SET headers = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(&stored)?.into_bytes()],
        )?;
    }
    tx.execute_batch(
        "INSERT INTO tasks (key, id, size, request_id, trigger_name, function, state, invocation, body,
            callback_url, created_ms, due_ms, started_ms, finished_ms, attempts, stop_requested,
            last_error, response_status, response_preview, callback_target, callback_headers,
            callback_body, callback_status, callback_attempts)
         SELECT trigger_name || '/' || id, id, length(body) + length(headers), request_id, trigger_name, function, state, CAST(headers AS TEXT), body,
            callback_url, created_ms, due_ms, started_ms, finished_ms, attempts, stop_requested,
            last_error, response_status, response_preview, callback_target, callback_headers,
            callback_body, callback_status, callback_attempts FROM tasks_v0;
         DROP TABLE tasks_v0;",
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    tracing::info!("task database migrated to schema {SCHEMA_VERSION}");
    Ok(())
}

/// Encodes headers as a compact binary blob (names and values as bytes, nothing lost).
pub fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

pub fn decode_headers(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let v = b.get(4..4 + len)?.to_vec();
        *b = &b[4 + len..];
        Some(v)
    };
    while !b.is_empty() {
        let (Some(k), Some(v)) = (take(&mut b), take(&mut b)) else {
            break;
        };
        out.push((String::from_utf8_lossy(&k).into_owned(), v));
    }
    out
}

const VIEW_COLUMNS: &str = "id, request_id, trigger_name, function, state, attempts, created_ms, due_ms, started_ms, finished_ms, last_error, response_status, response_preview, callback_url, callback_status, callback_attempts";

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskView> {
    let state: String = r.get(4)?;
    let preview: Option<Vec<u8>> = r.get(12)?;
    Ok(TaskView {
        id: r.get(0)?,
        request_id: r.get(1)?,
        trigger: r.get(2)?,
        function: r.get(3)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
        attempts: r.get(5)?,
        created_ms: r.get(6)?,
        due_ms: r.get(7)?,
        started_ms: r.get(8)?,
        finished_ms: r.get(9)?,
        last_error: r.get(10)?,
        response_status: r.get(11)?,
        response_preview: preview.map(|p| String::from_utf8_lossy(&p).into_owned()),
        callback_url: r.get(13)?,
        callback_status: r.get(14)?,
        callback_attempts: r.get(15)?,
    })
}

/// Runs `sql` through the connection's statement cache: the writer runs the same few
/// statements thousands of times a second, and parsing them was a seventh of its time.
fn exec(tx: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(p)
}

/// [`Connection::query_row`] through the statement cache.
fn query_row<T>(
    tx: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.prepare_cached(sql)?.query_row(p, f)
}

fn get_view(tx: &Connection, id: &str) -> rusqlite::Result<Option<TaskView>> {
    query_row(
        tx,
        &format!("SELECT {VIEW_COLUMNS} FROM tasks WHERE key = ?1"),
        params![id],
        view,
    )
    .optional()
}

/// A reply to send once the batch's transaction has committed.
type Deferred = Box<dyn FnOnce(bool) + Send>;

/// The writer thread: runs until every sender is gone.
pub fn run(
    conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    group_commit: bool,
    book: Arc<Book>,
    bounds: Bounds,
    handoff: Handoff,
) {
    let batch_limit = if group_commit { MAX_BATCH } else { 1 };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < batch_limit {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut deferred: Vec<Deferred> = Vec::with_capacity(batch.len());
        let mut state = Batch::default();
        // BEGIN and COMMIT go through the statement cache like everything else.
        let committed = match exec(&conn, "BEGIN", []) {
            Ok(_) => {
                for cmd in batch {
                    if let Some(d) = apply(&conn, cmd, &book, bounds, Some(&handoff), &mut state) {
                        deferred.push(d);
                    }
                }
                match exec(&conn, "COMMIT", []) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!("task database commit failed: {e}");
                        // Nothing of the batch stays (an error may have ended it already).
                        let _ = exec(&conn, "ROLLBACK", []);
                        remark_claimed(&conn, &state.claimed);
                        false
                    }
                }
            }
            Err(e) => {
                tracing::error!("task database transaction failed: {e}");
                for cmd in batch {
                    fail(cmd);
                }
                false
            }
        };
        for d in deferred {
            d(committed);
        }
    }
}

/// What one batch (one transaction) has done so far, for the claims answered inside it.
#[derive(Default)]
pub struct Batch {
    /// Tasks inserted in this batch: not claimable until their commit, since their
    /// submitters hear of it only then (a claim skips them; the post-commit wake claims them).
    inserted: std::collections::HashSet<String>,
    /// Tasks claimed in this batch and already handed to the workers, with their start time:
    /// marked Running again if the batch does not commit, so no later claim takes them while
    /// they run.
    claimed: Vec<(String, i64)>,
}

/// The way from the writer straight to the workers for tasks due now (see `Cmd::Insert`).
#[derive(Clone)]
pub struct Handoff {
    /// Tasks the workers will take now; set by the workers, spent by the writer.
    pub budget: Arc<AtomicU64>,
    pub tx: tokio::sync::mpsc::UnboundedSender<Task>,
    /// Tells the workers the store holds new work (a task that was not handed over).
    pub wake: Arc<tokio::sync::Notify>,
}

impl Handoff {
    /// Spends one unit of the budget, if there is one.
    pub(crate) fn take(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
            .is_ok()
    }

    fn give_back(&self) {
        self.budget.fetch_add(1, Ordering::AcqRel);
    }

    /// Hands a committed Running task over. With no workers left to take it (shutting
    /// down) it stays Running in the store and runs after the next start.
    fn hand(&self, task: Task) {
        if self.tx.send(task).is_err() {
            tracing::debug!("no worker took a task handed over; it runs after a restart");
        }
    }
}

/// Sends `v` once the batch it was read in is committed.
fn after_commit<T: Send + 'static>(reply: oneshot::Sender<T>, v: T) -> Option<Deferred> {
    Some(Box::new(move |_| {
        let _ = reply.send(v);
    }))
}

/// Answers a command that could not run at all.
fn fail(cmd: Cmd) {
    match cmd {
        Cmd::Insert(_, _, r) => {
            let _ = r.send(Err(InsertError::Storage(
                "the task database is unavailable".into(),
            )));
        }
        Cmd::Stop(_, _, r) => {
            let _ = r.send(Err(StopError::Storage(
                "the task database is unavailable".into(),
            )));
        }
        _ => {}
    }
}

/// Takes a task out of the open book if the row `key` is still open (before the statement
/// that makes it final).
fn close(tx: &Connection, key: &str, book: &Book) -> rusqlite::Result<()> {
    let row: Option<(String, i64)> = query_row(
        tx,
        "SELECT trigger_name, size FROM tasks WHERE key = ?1
             AND state IN ('Enqueued', 'Retrying', 'Running')",
        params![key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    if let Some((trigger, size)) = row {
        book.remove(&trigger, size.max(0) as u64);
    }
    Ok(())
}

/// Why `t` may not be added, if a bound says so.
fn over_bounds(t: &NewTask, size: u64, book: &Book, bounds: Bounds) -> Option<String> {
    if book.open.load(Ordering::Relaxed) >= bounds.max_tasks {
        return Some(format!(
            "the async queue holds its maximum of {} open tasks",
            bounds.max_tasks
        ));
    }
    if book.bytes.load(Ordering::Relaxed) + size > bounds.max_bytes {
        return Some(format!(
            "the async queue holds its maximum of {} bytes (max_queue_bytes)",
            bounds.max_bytes
        ));
    }
    let (open, bytes) = book.trigger_totals(&t.invocation.trigger);
    if let Some(quota) = t.trigger_quota
        && open >= quota
    {
        return Some(format!(
            "trigger '{}' holds its maximum of {quota} open tasks",
            t.invocation.trigger
        ));
    }
    // One trigger (delays x fan-out x large bodies) cannot take every other trigger's room.
    let byte_quota = t.trigger_bytes_quota.unwrap_or(bounds.max_bytes / 4);
    if bytes.saturating_add(size) > byte_quota {
        return Some(format!(
            "trigger '{}' holds its maximum of {byte_quota} bytes (async.max_queue_bytes)",
            t.invocation.trigger
        ));
    }
    None
}

/// Marks the tasks a failed batch had claimed (and the workers run) Running again, in a
/// transaction of their own, so that no later claim hands them out while they run. If this
/// fails too, the disk is failing: they may run again after their attempt ends.
fn remark_claimed(conn: &Connection, claimed: &[(String, i64)]) {
    if claimed.is_empty() {
        return;
    }
    let remarked = (|| -> rusqlite::Result<()> {
        exec(conn, "BEGIN", [])?;
        for (key, started_ms) in claimed {
            exec(
                conn,
                "UPDATE tasks SET state = 'Running', started_ms = ?2
                 WHERE key = ?1 AND state IN ('Enqueued', 'Retrying')",
                params![key, started_ms],
            )?;
        }
        exec(conn, "COMMIT", []).map(|_| ())
    })();
    if let Err(e) = remarked {
        let _ = exec(conn, "ROLLBACK", []);
        tracing::error!(
            "marking {} claimed tasks Running again failed: {e}",
            claimed.len()
        );
    }
}

fn apply(
    tx: &Connection,
    cmd: Cmd,
    book: &Book,
    bounds: Bounds,
    handoff: Option<&Handoff>,
    batch: &mut Batch,
) -> Option<Deferred> {
    match cmd {
        Cmd::Insert(t, invocation, reply) => {
            let size = t.body.len() as u64 + invocation.as_ref().map_or(0, |i| i.len() as u64);
            if let Some(why) = over_bounds(&t, size, book, bounds) {
                let _ = reply.send(Err(InsertError::Full(why)));
                return None;
            }
            // A task due now goes straight to a free worker when one has asked for work: it
            // is stored Running (a crash before it finishes runs it again, as for any Running
            // task) and handed over after the commit, with no claim to find it again.
            let direct = t.due_ms <= t.created_ms && handoff.is_some_and(Handoff::take);
            let (state, started_ms) = if direct {
                ("Running", Some(t.created_ms))
            } else {
                ("Enqueued", None)
            };
            let key = t.key();
            let r = match invocation {
                Ok(invocation) => exec(tx,
                    "INSERT INTO tasks (key, id, request_id, trigger_name, function, state, invocation, body, callback_url, created_ms, due_ms, size, started_ms)
                     VALUES (?10, ?1, ?2, ?3, ?4, ?12, ?5, ?6, ?7, ?8, ?9, ?11, ?13)",
                    params![
                        t.id,
                        t.invocation.request_id,
                        t.invocation.trigger,
                        t.invocation.target.function,
                        invocation,
                        t.body,
                        t.callback_url,
                        t.created_ms,
                        t.due_ms,
                        &key,
                        size as i64,
                        state,
                        started_ms
                    ],
                ),
                Err(e) => Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
            };
            let result = match r {
                Ok(_) => {
                    book.add(&t.invocation.trigger, size);
                    batch.inserted.insert(key);
                    Ok(())
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(InsertError::Exists)
                }
                Err(e) => Err(InsertError::Storage(e.to_string())),
            };
            let link = handoff.cloned();
            Some(Box::new(move |committed| {
                let result = match (result, committed) {
                    (Ok(()), false) => Err(InsertError::Storage(
                        "the task could not be committed".into(),
                    )),
                    (r, _) => r,
                };
                if let Some(h) = link {
                    match (direct, result.is_ok()) {
                        (true, true) => h.hand(Task {
                            new: t,
                            attempts: 0,
                        }),
                        (true, false) => h.give_back(),
                        (false, true) => h.wake.notify_one(),
                        (false, false) => {}
                    }
                }
                let _ = reply.send(result);
            }))
        }
        Cmd::Claim {
            now_ms,
            limit,
            reply,
        } => {
            let tasks = claim(tx, now_ms, limit, book, &batch.inserted).unwrap_or_else(|e| {
                tracing::error!("claiming tasks failed: {e}");
                Vec::new()
            });
            // Answered now, before the commit: a claim need not be durable to be run. Every
            // task it hands out was committed Enqueued or Retrying by an earlier batch (the
            // ones inserted in this batch are skipped), so a crash before this commit leaves
            // them claimable on disk, and they run again after the restart, as Running ones
            // would. A commit that fails marks them Running again at once (see `run`).
            // Waiting for the disk here would keep every freed worker idle for a commit.
            batch
                .claimed
                .extend(tasks.iter().map(|t| (t.new.key(), now_ms)));
            let _ = reply.send(tasks);
            None
        }
        Cmd::Update(u, reply) => {
            if let Err(e) = update(tx, &u, book) {
                tracing::error!("recording a task update failed: {e}");
            }
            reply.map(|r| -> Deferred {
                Box::new(move |_| {
                    let _ = r.send(());
                })
            })
        }
        // What the admin API reads is answered after the commit: inside the batch it could
        // see an outcome that is not durable yet (and would be gone after a crash).
        Cmd::Find { id, trigger, reply } => {
            after_commit(reply, find(tx, &id, trigger.as_deref()).unwrap_or_default())
        }
        Cmd::Get(id, reply) => after_commit(reply, get_view(tx, &id).ok().flatten()),
        Cmd::List {
            trigger,
            function,
            state,
            limit,
            reply,
        } => {
            let v =
                list(tx, trigger.as_deref(), function.as_deref(), state, limit).unwrap_or_default();
            after_commit(reply, v)
        }
        Cmd::Stop(id, now_ms, reply) => {
            let r = stop(tx, &id, now_ms, book);
            Some(Box::new(move |_| {
                let _ = reply.send(r);
            }))
        }
        Cmd::Flush(reply) => Some(Box::new(move |_| {
            let _ = reply.send(());
        })),
        Cmd::NextDue(reply) => {
            let v: Option<i64> = query_row(
                tx,
                "SELECT MIN(due_ms) FROM tasks WHERE state IN ('Enqueued', 'Retrying')",
                [],
                |r| r.get(0),
            )
            .unwrap_or(None);
            let _ = reply.send(v);
            None
        }
        Cmd::StopRequested(id, reply) => {
            let v: bool = query_row(
                tx,
                "SELECT stop_requested FROM tasks WHERE key = ?1",
                params![id],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v != 0)
            .unwrap_or(false);
            let _ = reply.send(v);
            None
        }
        Cmd::PendingCallbacks(reply) => {
            let v = pending_callbacks(tx).unwrap_or_default();
            let _ = reply.send(v);
            None
        }
        Cmd::Prune { before_ms } => {
            match exec(tx,
                "DELETE FROM tasks WHERE state IN ('Succeeded', 'Failed', 'Expired', 'Stopped')
                 AND finished_ms < ?1 AND (callback_status IS NULL OR callback_status != 'Pending')",
                params![before_ms],
            ) {
                Ok(n) if n > 0 => tracing::info!("pruned {n} finished tasks"),
                Ok(_) => {}
                Err(e) => tracing::error!("pruning tasks failed: {e}"),
            }
            None
        }
    }
}

/// Up to `limit` due tasks, marked Running; none of `skip` (inserted in the open batch).
fn claim(
    tx: &Connection,
    now_ms: i64,
    limit: usize,
    book: &Book,
    skip: &std::collections::HashSet<String>,
) -> rusqlite::Result<Vec<Task>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, invocation, body, callback_url, created_ms, due_ms, attempts, key
         FROM tasks WHERE state IN ('Enqueued', 'Retrying') AND due_ms <= ?1 ORDER BY due_ms LIMIT ?2",
    )?;
    /// A claimable row; its invocation is parsed below, so one bad row cannot fail a claim.
    struct Row {
        id: String,
        invocation: String,
        body: Vec<u8>,
        callback_url: Option<String>,
        created_ms: i64,
        due_ms: i64,
        attempts: u32,
        key: String,
    }
    let rows: Vec<Row> = stmt
        .query_map(params![now_ms, (limit + skip.len()) as i64], |r| {
            let key: String = r.get(7)?;
            if skip.contains(&key) {
                return Ok(None);
            }
            Ok(Some(Row {
                id: r.get(0)?,
                invocation: r.get(1)?,
                body: r.get(2)?,
                callback_url: r.get(3)?,
                created_ms: r.get(4)?,
                due_ms: r.get(5)?,
                attempts: r.get(6)?,
                key,
            }))
        })?
        .filter_map(|r| r.transpose())
        .take(limit)
        .collect::<rusqlite::Result<_>>()?;
    let mut tasks = Vec::with_capacity(rows.len());
    for Row {
        id,
        invocation,
        body,
        callback_url,
        created_ms,
        due_ms,
        attempts,
        key,
    } in rows
    {
        match serde_json::from_str::<StoredInvocation>(&invocation) {
            Ok(invocation) => {
                exec(
                    tx,
                    "UPDATE tasks SET state = 'Running', started_ms = ?2 WHERE key = ?1",
                    params![key, now_ms],
                )?;
                tasks.push(Task {
                    new: NewTask {
                        id,
                        invocation,
                        body,
                        callback_url,
                        created_ms,
                        due_ms,
                        trigger_quota: None,
                        trigger_bytes_quota: None,
                    },
                    attempts,
                });
            }
            Err(e) => {
                // Never claimable again: record why instead of failing every claim.
                tracing::error!(task = %id, "stored invocation is unreadable: {e}");
                close(tx, &key, book)?;
                exec(
                    tx,
                    "UPDATE tasks SET state = 'Failed', finished_ms = ?2, last_error = ?3 WHERE key = ?1",
                    params![
                        key,
                        now_ms,
                        format!("the stored invocation is unreadable: {e}")
                    ],
                )?;
            }
        }
    }
    Ok(tasks)
}

fn update(tx: &Connection, u: &Update, book: &Book) -> rusqlite::Result<()> {
    match u {
        Update::Finish {
            key,
            state,
            attempts,
            finished_ms,
            last_error,
            status,
            preview,
            callback,
        } => {
            close(tx, key, book)?;
            let (target, headers, body, cb_status) = match callback {
                Some(c) => (
                    Some(c.url.clone()),
                    Some(encode_headers(&c.headers)),
                    Some(c.body.clone()),
                    Some("Pending"),
                ),
                None => (None, None, None, None),
            };
            exec(
                tx,
                "UPDATE tasks SET state = ?2, attempts = ?3, finished_ms = ?4, last_error = ?5,
                 response_status = ?6, response_preview = ?7, callback_target = ?8,
                 callback_headers = ?9, callback_body = ?10, callback_status = ?11,
                 body = X'', invocation = '{}' WHERE key = ?1",
                params![
                    key,
                    state.as_str(),
                    attempts,
                    finished_ms,
                    last_error,
                    status,
                    preview,
                    target,
                    headers,
                    body,
                    cb_status
                ],
            )?;
        }
        Update::Reschedule {
            key,
            attempts,
            due_ms,
            last_error,
            status,
            now_ms,
        } => {
            // A stop that landed while this attempt ran ends the task here, as a finish
            // would: final, timestamped, out of the open book, its request cleared.
            let stopped: bool = query_row(
                tx,
                "SELECT stop_requested FROM tasks WHERE key = ?1",
                params![key],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0);
            if stopped {
                close(tx, key, book)?;
                exec(
                    tx,
                    "UPDATE tasks SET state = 'Stopped', attempts = ?2, finished_ms = ?3,
                     last_error = ?4, response_status = ?5, body = X'', invocation = '{}'
                     WHERE key = ?1",
                    params![key, attempts, now_ms, last_error, status],
                )?;
            } else {
                exec(
                    tx,
                    "UPDATE tasks SET state = 'Retrying', attempts = ?2, due_ms = ?3,
                     last_error = ?4, response_status = ?5 WHERE key = ?1",
                    params![key, attempts, due_ms, last_error, status],
                )?;
            }
        }
        Update::Callback {
            key,
            status,
            attempts,
            done,
        } => {
            if *done {
                exec(
                    tx,
                    "UPDATE tasks SET callback_status = ?2, callback_attempts = ?3,
                     callback_headers = NULL, callback_body = NULL WHERE key = ?1",
                    params![key, status, attempts],
                )?;
            } else {
                exec(
                    tx,
                    "UPDATE tasks SET callback_attempts = ?2 WHERE key = ?1",
                    params![key, attempts],
                )?;
            }
        }
    }
    Ok(())
}

fn list(
    tx: &Connection,
    trigger: Option<&str>,
    function: Option<&str>,
    state: Option<TaskState>,
    limit: usize,
) -> rusqlite::Result<Vec<TaskView>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM tasks WHERE (?1 IS NULL OR function = ?1)
         AND (?2 IS NULL OR state = ?2) AND (?4 IS NULL OR trigger_name = ?4)
         ORDER BY created_ms DESC LIMIT ?3"
    ))?;
    stmt.query_map(
        params![
            function,
            state.map(TaskState::as_str),
            limit as i64,
            trigger
        ],
        view,
    )?
    .collect()
}

fn find(tx: &Connection, id: &str, trigger: Option<&str>) -> rusqlite::Result<Vec<TaskView>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM tasks WHERE id = ?1 AND (?2 IS NULL OR trigger_name = ?2)
         ORDER BY trigger_name"
    ))?;
    stmt.query_map(params![id, trigger], view)?.collect()
}

fn stop(tx: &Connection, id: &str, now_ms: i64, book: &Book) -> Result<TaskView, StopError> {
    let storage = |e: rusqlite::Error| StopError::Storage(e.to_string());
    let waiting = query_row(
        tx,
        "SELECT 1 FROM tasks WHERE key = ?1 AND state IN ('Enqueued', 'Retrying')",
        params![id],
        |_| Ok(()),
    )
    .optional()
    .map_err(storage)?
    .is_some();
    if waiting {
        close(tx, id, book).map_err(storage)?;
    }
    let n = exec(
        tx,
        "UPDATE tasks SET state = 'Stopped', stop_requested = 1, finished_ms = ?2,
             last_error = 'stopped', body = X'', invocation = '{}'
             WHERE key = ?1 AND state IN ('Enqueued', 'Retrying')",
        params![id, now_ms],
    )
    .map_err(storage)?;
    if n == 0 {
        // Running: the attempt in progress finishes, nothing more is retried.
        exec(
            tx,
            "UPDATE tasks SET stop_requested = 1 WHERE key = ?1 AND state = 'Running'",
            params![id],
        )
        .map_err(storage)?;
    }
    get_view(tx, id)
        .map_err(storage)?
        .ok_or(StopError::NotFound)
}

fn pending_callbacks(tx: &Connection) -> rusqlite::Result<Vec<PendingCallback>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, callback_target, callback_headers, callback_body, callback_attempts, key,
         callback_url IS NOT NULL AND callback_url = callback_target
         FROM tasks WHERE callback_status = 'Pending' AND callback_target IS NOT NULL",
    )?;
    stmt.query_map([], |r| {
        let headers: Option<Vec<u8>> = r.get(2)?;
        Ok(PendingCallback {
            task_id: r.get(0)?,
            key: r.get(5)?,
            client_supplied: r.get(6)?,
            max_attempts: 4,
            url: r.get(1)?,
            headers: decode_headers(&headers.unwrap_or_default()),
            body: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
            attempts: r.get(4)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_any_bytes() {
        let h = vec![
            ("x-a".to_string(), b"1".to_vec()),
            ("x-bin".to_string(), vec![0xff, 0x00, b'z']),
            ("empty".to_string(), vec![]),
        ];
        assert_eq!(decode_headers(&encode_headers(&h)), h);
        // Truncated input never panics.
        let enc = encode_headers(&h);
        for cut in 0..enc.len() {
            let _ = decode_headers(&enc[..cut]);
        }
    }

    #[test]
    fn a_schema_0_database_is_migrated_keeping_every_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY, request_id TEXT NOT NULL,
                 trigger_name TEXT NOT NULL, function TEXT NOT NULL, state TEXT NOT NULL,
                 method TEXT NOT NULL, path TEXT NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL,
                 callback_url TEXT, created_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL,
                 started_ms INTEGER, finished_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
                 stop_requested INTEGER NOT NULL DEFAULT 0, last_error TEXT, response_status INTEGER,
                 response_preview BLOB, callback_target TEXT, callback_headers BLOB,
                 callback_body BLOB, callback_status TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0);",
            )
            .unwrap();
            let headers = encode_headers(&[
                ("x-a".to_string(), b"1".to_vec()),
                ("x-bin".to_string(), vec![0xff]),
            ]);
            conn.execute(
                "INSERT INTO tasks (id, request_id, trigger_name, function, state, method, path, headers, body, created_ms, due_ms, attempts)
                 VALUES ('job_1', 'r1', 'jobs', 'echo', 'Retrying', 'PUT', 'https://h/a?b=1', ?1, X'6869', 5, 6, 2)",
                params![headers],
            )
            .unwrap();
        }
        let (conn, book) = open(&path, 100, &|t| format!("{t}-alias")).unwrap();
        assert_eq!(book.open.load(Ordering::Relaxed), 1);
        let tasks = claim(&conn, 100, 10, &book, &Default::default()).unwrap();
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert_eq!(t.attempts, 2);
        assert_eq!(t.new.body, b"hi");
        let inv = &t.new.invocation;
        assert_eq!(inv.method, "PUT");
        assert_eq!(inv.uri, "https://h/a?b=1");
        assert_eq!(inv.trigger, "jobs");
        assert_eq!(inv.target.function, "echo");
        assert_eq!(inv.target.qualifier, "jobs-alias");
        let rebuilt = inv.to_invocation(bytes::Bytes::new(), "job_1", 3).unwrap();
        assert_eq!(rebuilt.request.headers()["x-a"], "1");
        assert_eq!(rebuilt.request.headers()["x-bin"].as_bytes(), &[0xff]);
        // Opening again is a no-op.
        drop(conn);
        let (_, book) = super::open(&path, 100, &|_| unreachable!()).unwrap();
        assert_eq!(book.open.load(Ordering::Relaxed), 1);
    }

    fn new_task(trigger: &str, id: &str, body: usize, quota: Option<u64>) -> NewTask {
        NewTask {
            id: id.into(),
            invocation: StoredInvocation {
                target: Target {
                    function: "f".into(),
                    qualifier: "LATEST".into(),
                },
                trigger: trigger.into(),
                origin: TriggerKind::Http,
                request_id: "r".into(),
                method: "POST".into(),
                uri: "/".into(),
                headers: Vec::new(),
            },
            body: vec![b'x'; body],
            callback_url: None,
            created_ms: 0,
            due_ms: 0,
            trigger_quota: quota,
            // As big as the node's bound: the fair share has its own test.
            trigger_bytes_quota: Some(u64::MAX),
        }
    }

    #[test]
    fn one_trigger_holds_at_most_its_share_of_the_queue_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, book) = open(&dir.path().join("t.db"), 0, &|_| "LATEST".into()).unwrap();
        let bounds = Bounds {
            max_tasks: 100,
            max_bytes: 10_000,
        };
        let shared = |trigger: &str, id: &str| NewTask {
            trigger_bytes_quota: None,
            ..new_task(trigger, id, 1000, None)
        };
        // Two tasks fit in a quarter (2500 bytes, stored size a little over the body).
        insert(&conn, shared("a", "1"), &book, bounds).unwrap();
        insert(&conn, shared("a", "2"), &book, bounds).unwrap();
        let over = insert(&conn, shared("a", "3"), &book, bounds);
        assert!(
            matches!(over, Err(InsertError::Full(ref m)) if m.contains("'a'") && m.contains("2500")),
            "{over:?}"
        );
        // Another trigger still has room.
        insert(&conn, shared("b", "1"), &book, bounds).unwrap();
        // A trigger with its own quota uses it.
        let own = |id: &str| NewTask {
            trigger_bytes_quota: Some(5000),
            ..new_task("c", id, 1000, None)
        };
        for id in ["1", "2", "3", "4"] {
            insert(&conn, own(id), &book, bounds).unwrap();
        }
        assert!(insert(&conn, own("5"), &book, bounds).is_err());
    }

    fn insert(tx: &Connection, t: NewTask, book: &Book, bounds: Bounds) -> Result<(), InsertError> {
        let (reply, mut rx) = oneshot::channel();
        let invocation = serde_json::to_string(&t.invocation);
        if let Some(d) = apply(
            tx,
            Cmd::Insert(t, invocation, reply),
            book,
            bounds,
            None,
            &mut Batch::default(),
        ) {
            d(true);
        }
        rx.try_recv().unwrap()
    }

    #[test]
    fn open_tasks_their_bytes_and_trigger_quotas_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, book) = open(&dir.path().join("t.db"), 0, &|_| "LATEST".into()).unwrap();
        let bounds = Bounds {
            max_tasks: 10,
            max_bytes: 10_000,
        };
        insert(&conn, new_task("a", "1", 4000, None), &book, bounds).unwrap();
        insert(&conn, new_task("a", "2", 4000, None), &book, bounds).unwrap();
        let full = insert(&conn, new_task("b", "3", 4000, None), &book, bounds);
        assert!(
            matches!(full, Err(InsertError::Full(ref m)) if m.contains("max_queue_bytes")),
            "{full:?}"
        );
        insert(&conn, new_task("b", "3", 10, Some(1)), &book, bounds).unwrap();
        let quota = insert(&conn, new_task("b", "4", 10, Some(1)), &book, bounds);
        assert!(
            matches!(quota, Err(InsertError::Full(ref m)) if m.contains("'b'")),
            "{quota:?}"
        );
        assert_eq!(book.open.load(Ordering::Relaxed), 3);
        // A finished task gives its room back.
        update(
            &conn,
            &Update::Finish {
                key: task_key("a", "1"),
                state: TaskState::Succeeded,
                attempts: 1,
                finished_ms: 1,
                last_error: None,
                status: Some(200),
                preview: None,
                callback: None,
            },
            &book,
        )
        .unwrap();
        assert_eq!(book.open.load(Ordering::Relaxed), 2);
        insert(&conn, new_task("c", "5", 4000, None), &book, bounds).unwrap();
    }

    /// A claim is answered before its batch commits, so it must not hand out a task whose
    /// own insert is in that batch (its submitter has no 202 yet; a failed commit would
    /// leave a task running that was never stored). The task is claimable once committed.
    #[test]
    fn a_claim_skips_tasks_inserted_in_its_own_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, book) = open(&dir.path().join("t.db"), 0, &|_| "LATEST".into()).unwrap();
        let bounds = Bounds {
            max_tasks: 10,
            max_bytes: 1 << 20,
        };
        insert(&conn, new_task("a", "old", 10, None), &book, bounds).unwrap();
        let mut batch = Batch::default();
        let (reply, _rx) = oneshot::channel();
        let t = new_task("a", "new", 10, None);
        let invocation = serde_json::to_string(&t.invocation);
        let _ = apply(
            &conn,
            Cmd::Insert(t, invocation, reply),
            &book,
            bounds,
            None,
            &mut batch,
        );
        let claimed = claim(&conn, 0, 10, &book, &batch.inserted).unwrap();
        let ids: Vec<_> = claimed.iter().map(|t| t.new.id.as_str()).collect();
        assert_eq!(ids, ["old"]);
        // The next batch may take it.
        let claimed = claim(&conn, 0, 10, &book, &Default::default()).unwrap();
        let ids: Vec<_> = claimed.iter().map(|t| t.new.id.as_str()).collect();
        assert_eq!(ids, ["new"]);
    }

    #[test]
    fn a_stop_during_a_reschedule_finishes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, book) = open(&dir.path().join("t.db"), 0, &|_| "LATEST".into()).unwrap();
        let bounds = Bounds {
            max_tasks: 10,
            max_bytes: 1 << 20,
        };
        insert(&conn, new_task("a", "1", 10, None), &book, bounds).unwrap();
        assert_eq!(
            claim(&conn, 0, 10, &book, &Default::default())
                .unwrap()
                .len(),
            1
        );
        // The stop lands while the attempt runs; then the attempt asks for a retry.
        let v = stop(&conn, &task_key("a", "1"), 5, &book).unwrap();
        assert_eq!(v.state, TaskState::Running);
        update(
            &conn,
            &Update::Reschedule {
                key: task_key("a", "1"),
                attempts: 1,
                due_ms: 500,
                last_error: Some("failed".into()),
                status: Some(500),
                now_ms: 7,
            },
            &book,
        )
        .unwrap();
        let v = get_view(&conn, &task_key("a", "1")).unwrap().unwrap();
        assert_eq!(v.state, TaskState::Stopped);
        assert_eq!(v.finished_ms, Some(7));
        assert_eq!(book.open.load(Ordering::Relaxed), 0);
        // Final: never claimed again, and prunable.
        assert!(
            claim(&conn, 1000, 10, &book, &Default::default())
                .unwrap()
                .is_empty()
        );
    }
}
