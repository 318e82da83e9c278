//! The task queue on NATS JetStream (`[cluster]`, SPEC section 10): several nodes share one
//! queue, with no consensus of their own.
//!
//! - A task is a message on the `WASMGATE_TASKS` stream (work-queue retention, file storage):
//!   the stored invocation as one line of JSON, a newline, then the body. A 202 is sent only
//!   after JetStream acknowledged the publish.
//! - Its record (what the task API shows) is a value in the `wasmgate_tasks` key-value
//!   bucket under its store key `trigger/id`. The record is created first with KV *create*,
//!   so an id is unique per trigger across the cluster (not only within a dedup window), and
//!   a cron tick, whose id is its time, is enqueued once however many nodes tick.
//! - All nodes pull from one durable consumer: a message goes to one node at a time. The
//!   runner acknowledges it when the outcome is recorded, sends an in-progress ack every
//!   third of `ack_wait_ms` while it runs (so it never runs on two nodes at once while its
//!   runner lives), and NAKs it with a delay to retry later or to wait for its due time.
//!   A node that dies leaves its messages unacknowledged: after `ack_wait_ms` another node
//!   takes them (at least once), and the attempt that died counts in the record.
//! - The runner also writes its node id and a lease (`ack_wait_ms` ahead, renewed with every
//!   in-progress ack) into the record. JetStream alone is not trusted to deliver a message
//!   to one node at a time: nats-server 2.9 (Debian's) was seen handing a message that was
//!   still pending to a second pull request. A node never runs a task it already holds, and
//!   a task whose record names another node with a live lease waits for that lease instead
//!   of running beside it.
//! - A callback is delivered before the message is acknowledged, so a node that dies while
//!   delivering leaves the task to run again elsewhere (at least once, callback included).
//!
//! Tasks reach the workers through the same hand-over as the SQLite store's due tasks: the
//! workers say how many they can take, and this module pulls no more than that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv, message::Acker};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::store::Handoff;
use super::{Clock, NewTask, QueueError, Task, TaskState, TaskView, Update, task_key};
use crate::config::{ClusterConfig, QueueConfig};
use crate::invocation::StoredInvocation;

const STREAM: &str = "WASMGATE_TASKS";
const SUBJECT_PREFIX: &str = "wasmgate.tasks";
const CONSUMER: &str = "wasmgate-workers";
const BUCKET: &str = "wasmgate_tasks";
/// Records one task-list call reads at most.
const MAX_LIST_READS: usize = 5000;

/// The task queue of a cluster node.
pub struct Cluster {
    conn: OnceLock<Conn>,
    clock: Arc<dyn Clock>,
    /// Messages this node holds (running or waiting for a worker), by store key.
    inflight: Mutex<HashMap<String, InFlight>>,
    /// This process's name in the records it runs (new at every start).
    node: Arc<str>,
    ack_wait: Duration,
    /// Messages in the stream and their bytes, refreshed every second.
    depth: AtomicU64,
    bytes: AtomicU64,
    /// Records sent without waiting ([`Cluster::record`]) not yet written.
    unwritten: AtomicUsize,
    written: Notify,
    /// Told when the connection is set up.
    ready: Notify,
    /// Task ids claimed for submissions that then failed, still to be freed.
    unfreed: Mutex<Vec<(String, u64)>>,
    /// What went wrong last (set up, or the server's refusal), until it is up.
    problem: crate::cluster::Problem,
}

struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    consumer: PullConsumer,
}

/// A message a worker holds: acknowledged when its outcome is recorded; an in-progress ack
/// keeps it from being redelivered meanwhile.
struct InFlight {
    acker: Arc<Acker>,
    heartbeat: tokio::task::AbortHandle,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The task as published (the body follows the JSON line).
#[derive(Serialize, Deserialize)]
struct Wire {
    id: String,
    invocation: StoredInvocation,
    callback_url: Option<String>,
    created_ms: i64,
    due_ms: i64,
}

/// The task's record in the bucket.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    view: TaskView,
    #[serde(default)]
    stop_requested: bool,
    /// The node running it (while Running) and until when it promised to be alive (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_ms: Option<i64>,
}

impl Record {
    /// The other node still running this task, if its lease is live at `now`.
    fn held_elsewhere(&self, node: &str, now: i64) -> Option<i64> {
        match (&self.runner, self.lease_ms) {
            (Some(r), Some(lease)) if self.view.state == TaskState::Running && r != node => {
                (lease > now).then_some(lease)
            }
            _ => None,
        }
    }
}

fn storage(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("NATS JetStream: {e}"))
}

impl Cluster {
    /// Connects in the background (retrying until NATS answers) and starts pulling tasks
    /// for the workers. Until connected, submissions get 503.
    pub fn start(
        config: &ClusterConfig,
        queue: &QueueConfig,
        clock: Arc<dyn Clock>,
        handoff: Handoff,
        offered: Arc<Notify>,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            conn: OnceLock::new(),
            clock,
            inflight: Mutex::new(HashMap::new()),
            node: format!("{:016x}", rand::random::<u64>()).into(),
            ack_wait: Duration::from_millis(config.ack_wait_ms),
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            unwritten: AtomicUsize::new(0),
            written: Notify::new(),
            ready: Notify::new(),
            problem: Arc::new(Mutex::new(None)),
            unfreed: Mutex::new(Vec::new()),
        });
        let (c, config, queue) = (cluster.clone(), config.clone(), queue.clone());
        tokio::spawn(async move {
            let mut attempt = 0u32;
            let conn = loop {
                match setup(&config, &queue, c.problem.clone()).await {
                    Ok(conn) => break conn,
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(attempt, "the task queue on NATS is not ready: {e:#}");
                        if let Ok(mut p) = c.problem.lock()
                            && p.is_none()
                        {
                            *p = Some(format!("{e:#}"));
                        }
                        tokio::time::sleep(crate::cluster::reconnect_delay(attempt as usize)).await;
                    }
                }
            };
            tracing::info!(servers = %config.nats, "task queue on NATS JetStream ready");
            if let Ok(mut p) = c.problem.lock() {
                *p = None;
            }
            let _ = c.conn.set(conn);
            c.ready.notify_waiters();
            tokio::spawn(c.clone().watch_depth());
            c.pump(handoff, offered).await;
        });
        cluster
    }

    /// The connection, when it is up; otherwise why not (503).
    fn conn(&self) -> Result<&Conn, QueueError> {
        let why = || self.problem.lock().ok().and_then(|p| p.clone());
        match self.conn.get() {
            Some(c) if c.client.connection_state() == async_nats::connection::State::Connected => {
                Ok(c)
            }
            Some(_) => Err(QueueError::Unavailable(match why() {
                Some(why) => format!("the cluster's NATS server is unreachable: {why}"),
                None => "the cluster's NATS server is unreachable".into(),
            })),
            None => Err(QueueError::Unavailable(match why() {
                Some(why) => format!("the cluster's task queue is not set up: {why}"),
                None => "the cluster's NATS server has not been reached yet".into(),
            })),
        }
    }

    /// Waits (at most `max`) until the stream, consumer and bucket are set up.
    pub async fn wait_ready(&self, max: Duration) -> bool {
        crate::cluster::wait_set(&self.conn, &self.ready, max).await
    }

    /// What is degraded, if anything (for `/readyz`).
    pub fn degraded(&self) -> Option<String> {
        self.conn().err().map(|e| e.to_string())
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Creates the record (409 if the id is taken), then publishes the task; answers once
    /// JetStream acknowledged it.
    pub async fn submit(&self, task: NewTask) -> Result<(), QueueError> {
        let conn = self.conn()?;
        let key = task.key();
        let record = Record {
            view: TaskView {
                id: task.id.clone(),
                request_id: task.invocation.request_id.clone(),
                trigger: task.invocation.trigger.clone(),
                function: task.invocation.target.function.clone(),
                state: TaskState::Enqueued,
                attempts: 0,
                created_ms: task.created_ms,
                due_ms: task.due_ms,
                started_ms: None,
                finished_ms: None,
                last_error: None,
                response_status: None,
                response_preview: None,
                callback_url: task.callback_url.clone(),
                callback_status: None,
                callback_attempts: 0,
            },
            stop_requested: false,
            runner: None,
            lease_ms: None,
        };
        let value = serde_json::to_vec(&record).map_err(storage)?;
        let revision = match conn.kv.create(&key, value.into()).await {
            Ok(r) => r,
            // The client's create reads the key back when its write is not acknowledged in
            // time (a server restarting): a record with this request's id is our own.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.read(&key).await {
                    Ok(Some((r, revision))) if r.view.request_id == record.view.request_id => {
                        revision
                    }
                    _ => return Err(QueueError::Exists(task.id)),
                }
            }
            // NATS did not answer (or went away): nothing was stored, so 503.
            Err(e) => {
                return Err(QueueError::Unavailable(format!(
                    "the task could not be stored in NATS JetStream: {e}"
                )));
            }
        };
        // One line of JSON (serde_json writes no raw newline), then the body.
        let subject = format!("{SUBJECT_PREFIX}.{}", task.invocation.trigger);
        let body = task.body;
        let wire = serde_json::to_string(&Wire {
            id: task.id,
            invocation: task.invocation,
            callback_url: task.callback_url,
            created_ms: task.created_ms,
            due_ms: task.due_ms,
        })
        .map_err(storage)?;
        let mut payload = Vec::with_capacity(wire.len() + 1 + body.len());
        payload.extend_from_slice(wire.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(&body);
        let published = async {
            conn.js
                .publish(subject, payload.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match published {
            Ok(_) => Ok(()),
            Err(e) => {
                // Not stored, so not promised: the id is freed again, now or, while NATS
                // is away, once it is back (so a client's retry is not a 409).
                if conn
                    .kv
                    .purge_expect_revision(&key, Some(revision))
                    .await
                    .is_err()
                    && let Ok(mut unfreed) = self.unfreed.lock()
                {
                    unfreed.push((key, revision));
                }
                if e.contains("maximum messages") || e.contains("maximum bytes") {
                    Err(QueueError::Full(format!(
                        "the cluster's task stream is full ({e})"
                    )))
                } else {
                    Err(QueueError::Unavailable(format!(
                        "the task could not be stored in NATS JetStream: {e}"
                    )))
                }
            }
        }
    }

    async fn read(&self, key: &str) -> Result<Option<(Record, u64)>, QueueError> {
        let conn = self.conn()?;
        let entry = conn.kv.entry(key).await.map_err(storage)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&entry.value).map_err(storage)?;
        Ok(Some((record, entry.revision)))
    }

    /// Changes a record with `change` (retrying on a concurrent write), returning it.
    async fn modify(
        &self,
        key: &str,
        change: impl Fn(&mut Record),
    ) -> Result<Option<Record>, QueueError> {
        let conn = self.conn()?;
        for _ in 0..16 {
            let Some((mut record, revision)) = self.read(key).await? else {
                return Ok(None);
            };
            change(&mut record);
            let value = serde_json::to_vec(&record).map_err(storage)?;
            match conn.kv.update(key, value.into(), revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(storage(e)),
            }
        }
        Err(storage("the task record changed too often to update"))
    }

    /// Records an attempt's outcome and acknowledges (or NAKs with a delay) its message.
    pub async fn update(&self, u: Update) {
        let key = match &u {
            Update::Finish { key, .. }
            | Update::Reschedule { key, .. }
            | Update::Callback { key, .. } => key.clone(),
        };
        if let Err(e) = self.apply(u).await {
            tracing::error!("recording a task update in NATS failed: {e}");
            // Let go of the message: its heartbeat stops, and JetStream hands it out again
            // (its record still says Running, so that attempt counts), instead of this
            // node holding a task it will never finish.
            self.settle(&key, AckKind::Nak(None)).await;
        }
    }

    async fn apply(&self, u: Update) -> Result<(), QueueError> {
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
                let pending = callback.is_some();
                self.modify(&key, |r| {
                    let v = &mut r.view;
                    v.state = state;
                    v.attempts = attempts;
                    v.finished_ms = Some(finished_ms);
                    v.last_error.clone_from(&last_error);
                    v.response_status = status;
                    v.response_preview = preview
                        .as_ref()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    if pending {
                        v.callback_status = Some("Pending".into());
                    }
                })
                .await?;
                // With a callback the message stays held until it is delivered.
                if !pending {
                    self.settle(&key, AckKind::Ack).await;
                }
            }
            Update::Reschedule {
                key,
                attempts,
                due_ms,
                last_error,
                status,
                now_ms,
            } => {
                let record = self
                    .modify(&key, |r| {
                        let v = &mut r.view;
                        v.attempts = attempts;
                        v.last_error.clone_from(&last_error);
                        v.response_status = status;
                        if r.stop_requested {
                            v.state = TaskState::Stopped;
                            v.finished_ms = Some(now_ms);
                        } else {
                            v.state = TaskState::Retrying;
                            v.due_ms = due_ms;
                        }
                    })
                    .await?;
                let stopped = record.is_some_and(|r| r.view.state == TaskState::Stopped);
                let kind = if stopped {
                    AckKind::Ack
                } else {
                    AckKind::Nak(Some(delay(due_ms - now_ms)))
                };
                self.settle(&key, kind).await;
            }
            Update::Callback {
                key,
                status,
                attempts,
                done,
            } => {
                self.modify(&key, |r| {
                    r.view.callback_status = Some(if done {
                        status.clone()
                    } else {
                        "Pending".into()
                    });
                    r.view.callback_attempts = attempts;
                })
                .await?;
                if done {
                    self.settle(&key, AckKind::Ack).await;
                }
            }
        }
        Ok(())
    }

    /// Acknowledges or NAKs the message of `key` and lets go of it.
    async fn settle(&self, key: &str, kind: AckKind) {
        let held = self.inflight.lock().ok().and_then(|mut m| m.remove(key));
        if let Some(held) = held {
            // An ack that does not arrive leaves the message to be redelivered after
            // ack_wait: at least once.
            let r = match kind {
                AckKind::Ack => held.acker.double_ack().await,
                other => held.acker.ack_with(other).await,
            };
            if let Err(e) = r {
                tracing::warn!(task = key, "acknowledging a task message failed: {e}");
            }
        }
    }

    /// Records without waiting; [`Cluster::flush`] waits for every such record.
    pub fn record(self: &Arc<Self>, u: Update) {
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        let c = self.clone();
        tokio::spawn(async move {
            c.update(u).await;
            if c.unwritten.fetch_sub(1, Ordering::AcqRel) == 1 {
                c.written.notify_waiters();
            }
        });
    }

    pub async fn flush(&self) {
        loop {
            let written = self.written.notified();
            if self.unwritten.load(Ordering::Acquire) == 0 {
                return;
            }
            written.await;
        }
    }

    pub async fn get(&self, key: &str) -> Option<TaskView> {
        self.read(key).await.ok().flatten().map(|(r, _)| r.view)
    }

    /// The keys of every record, or of `trigger`'s, sorted, each once: the subjects the
    /// bucket's stream holds, read in one request (paged by the server) rather than through a
    /// consumer. A consumer's listing ends only when it has caught up with the stream, which a
    /// bucket written to all the time (cron ticks, a loaded queue) can put off for as long as
    /// the writes go on; the subject list is a snapshot and always ends. A key deleted since it
    /// was written is still a subject (its delete marker): readers skip what `get` misses.
    ///
    /// A page that fails fails the whole listing (a partial one would make a task that
    /// exists look absent), and the listing stops there: the client's page stream must not
    /// be polled again after an error.
    async fn keys(&self, trigger: Option<&str>) -> Result<Vec<String>, QueueError> {
        let conn = self.conn()?;
        let prefix = conn.kv.prefix.as_str();
        let mut subjects = conn
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(storage)?;
        let mut keys = Vec::new();
        while let Some(page) = subjects.next().await {
            let (subject, _) = page.map_err(storage)?;
            if let Some(key) = subject.strip_prefix(prefix).filter(|k| {
                trigger.is_none_or(|t| k.strip_prefix(t).is_some_and(|rest| rest.starts_with('/')))
            }) {
                keys.push(key.to_string());
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    pub async fn find(&self, id: &str, trigger: Option<&str>) -> Result<Vec<TaskView>, QueueError> {
        let keys: Vec<String> = match trigger {
            Some(t) => vec![task_key(t, id)],
            None => self
                .keys(None)
                .await?
                .into_iter()
                .filter(|k| k.rsplit('/').next() == Some(id))
                .collect(),
        };
        let mut found = Vec::new();
        for k in keys {
            if let Some(v) = self.get(&k).await {
                found.push(v);
            }
        }
        Ok(found)
    }

    /// One page of tasks in key order (`trigger/id`) after the key `after`, newest first
    /// within the page: at most `limit` matches and at most [`MAX_LIST_READS`] records read
    /// (the bucket has no index, so a filter that matches little would otherwise read every
    /// record), and the key to continue after when there is more.
    pub async fn list(
        &self,
        trigger: Option<&str>,
        function: Option<&str>,
        state: Option<TaskState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<TaskView>, Option<String>), QueueError> {
        let keys = self.keys(trigger).await?;
        let start = after.map_or(0, |a| keys.partition_point(|k| k.as_str() <= a));
        let mut page = Vec::new();
        let mut next = None;
        for (read, k) in keys[start..].iter().enumerate() {
            if page.len() >= limit.max(1) || read >= MAX_LIST_READS {
                next = read.checked_sub(1).map(|i| keys[start + i].clone());
                break;
            }
            if let Some(v) = self.get(k).await
                && function.is_none_or(|f| v.function == f)
                && state.is_none_or(|s| v.state == s)
            {
                page.push(v);
            }
        }
        page.sort_by_key(|v| std::cmp::Reverse(v.created_ms));
        Ok((page, next))
    }

    /// A waiting task is Stopped now (its message is dropped when delivered); a running
    /// one is not retried.
    pub async fn stop(&self, key: &str, now_ms: i64) -> Result<TaskView, QueueError> {
        let record = self
            .modify(key, |r| {
                if r.view.state.is_final() {
                    return;
                }
                r.stop_requested = true;
                if r.view.state != TaskState::Running {
                    r.view.state = TaskState::Stopped;
                    r.view.finished_ms = Some(now_ms);
                }
            })
            .await?;
        record
            .map(|r| r.view)
            .ok_or_else(|| QueueError::NotFound(key.to_string()))
    }

    pub async fn stop_requested(&self, key: &str) -> bool {
        matches!(self.read(key).await, Ok(Some((r, _))) if r.stop_requested)
    }

    /// Hands tasks back at a clean stop: the next node (or start) takes them at once.
    pub async fn release(&self, tasks: Vec<Task>) {
        for t in tasks {
            let key = t.new.key();
            let attempts = t.attempts;
            let _ = self
                .modify(&key, |r| {
                    // Only a task this node still runs: one whose lease another node took
                    // over is that node's now.
                    if r.view.state == TaskState::Running
                        && r.runner.as_deref().is_none_or(|n| n == &*self.node)
                    {
                        r.view.state = TaskState::Enqueued;
                        r.view.attempts = attempts;
                        r.runner = None;
                        r.lease_ms = None;
                    }
                })
                .await;
            self.settle(&key, AckKind::Nak(None)).await;
        }
    }

    /// Pulls as many tasks as the workers can take, for as long as the node runs.
    async fn pump(self: Arc<Self>, handoff: Handoff, offered: Arc<Notify>) {
        let Some(conn) = self.conn.get() else { return };
        loop {
            let wanted = handoff.budget.load(Ordering::Acquire);
            if wanted == 0 {
                tokio::select! {
                    _ = offered.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let batch = conn
                .consumer
                .fetch()
                .max_messages(wanted.min(256) as usize)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!("pulling tasks from NATS failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                match message {
                    Ok(m) => {
                        handoff.take();
                        self.accept(m, &handoff).await;
                    }
                    Err(e) => {
                        tracing::debug!("pulling tasks from NATS failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Takes one delivered message: drops it when its record says it is done, waits for
    /// its due time, or marks it Running and hands it to the workers.
    async fn accept(self: &Arc<Self>, message: jetstream::Message, handoff: &Handoff) {
        let (message, acker) = message.split();
        let acker = Arc::new(acker);
        let Some((wire, body)) = parse(&message.payload) else {
            tracing::error!(subject = %message.subject, "a task message that is not a task; dropped");
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        };
        let key = task_key(&wire.invocation.trigger, &wire.id);
        // A second delivery of a message this node holds: its runner is alive (here), so
        // the attempt goes on and the copy only says so.
        if self.inflight.lock().is_ok_and(|m| m.contains_key(&key)) {
            tracing::debug!(task = %key, "a task this node is running was delivered again; not run twice");
            let _ = acker.ack_with(AckKind::Progress).await;
            return;
        }
        let record = match self.read(&key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task = %key, "reading a task record failed: {e}");
                let _ = acker
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        let Some((record, revision)) =
            record.filter(|(r, _)| r.view.request_id == wire.invocation.request_id)
        else {
            tracing::warn!(task = %key, "a task message without its record (pruned or replaced); dropped");
            let _ = acker.ack().await;
            return;
        };
        let view = &record.view;
        // A callback still pending means the node that ran it died before delivering it.
        let callback_pending = view.callback_status.as_deref() == Some("Pending");
        if view.state.is_final() && !callback_pending {
            let _ = acker.double_ack().await;
            return;
        }
        let now = self.clock.now_ms();
        // Another node runs it and is alive: wait for its outcome or its lease to run out
        // (at most `ack_wait`: a lease further ahead is another clock's error, not a
        // promise). Checked before a pending stop, which is the runner's to record.
        if let Some(lease) = record.held_elsewhere(&self.node, now) {
            tracing::debug!(task = %key, "a task another node is running was delivered here; it waits");
            let wait = delay(lease - now).clamp(Duration::from_millis(200), self.ack_wait);
            let _ = acker.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
        if record.stop_requested && !view.state.is_final() {
            let stopped = self
                .modify(&key, |r| {
                    r.view.state = TaskState::Stopped;
                    r.view.finished_ms = Some(now);
                })
                .await;
            if stopped.is_ok() {
                let _ = acker.double_ack().await;
            }
            return;
        }
        if view.due_ms > now {
            let _ = acker
                .ack_with(AckKind::Nak(Some(delay(view.due_ms - now))))
                .await;
            return;
        }
        // A record left Running means its runner died mid-attempt: that attempt counts.
        let attempts = view.attempts + u32::from(view.state == TaskState::Running);
        let mut running = record;
        running.view.state = TaskState::Running;
        running.view.attempts = attempts;
        running.view.started_ms = Some(now);
        running.runner = Some(self.node.to_string());
        running.lease_ms = Some(now + self.lease_ms());
        let marked = match (self.conn(), serde_json::to_vec(&running)) {
            (Ok(conn), Ok(value)) => conn
                .kv
                .update(&key, value.into(), revision)
                .await
                .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        if let Err(e) = marked {
            tracing::debug!(task = %key, "marking a task Running failed ({e}); it comes again");
            let _ = acker
                .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                .await;
            return;
        }
        let heartbeat = {
            let (acker, every) = (acker.clone(), self.ack_wait / 3);
            let (this, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = acker.ack_with(AckKind::Progress).await {
                        tracing::debug!("in-progress ack failed: {e}");
                    }
                    // Bounded, so a slow NATS never delays the next in-progress ack.
                    let _ = tokio::time::timeout(every, this.renew(&key)).await;
                }
            })
            .abort_handle()
        };
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(key.clone(), InFlight { acker, heartbeat });
        }
        let task = Task {
            new: NewTask {
                id: wire.id,
                invocation: wire.invocation,
                body: body.to_vec(),
                callback_url: wire.callback_url,
                created_ms: wire.created_ms,
                due_ms: wire.due_ms,
                trigger_quota: None,
                trigger_bytes_quota: None,
            },
            attempts,
        };
        if handoff.tx.send(task).is_err() {
            self.settle(&key, AckKind::Nak(None)).await;
        }
    }

    /// How long a runner's claim on a task lasts without renewal: the time JetStream waits
    /// before redelivering a message its holder stopped acknowledging.
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.ack_wait.as_millis()).unwrap_or(i64::MAX)
    }

    /// Extends this node's lease on `key` while it still runs it.
    async fn renew(&self, key: &str) {
        let until = self.clock.now_ms().saturating_add(self.lease_ms());
        let node = &*self.node;
        let renewed = self
            .modify(key, |r| {
                if r.view.state == TaskState::Running && r.runner.as_deref() == Some(node) {
                    r.lease_ms = Some(until);
                }
            })
            .await;
        if let Err(e) = renewed {
            tracing::debug!(task = %key, "renewing a task lease failed: {e}");
        }
    }

    /// Keeps the stream's message count and bytes for `/readyz` and the metrics, and frees
    /// the ids of failed submissions once NATS answers again.
    async fn watch_depth(self: Arc<Self>) {
        let Some(conn) = self.conn.get() else { return };
        loop {
            let unfreed = self
                .unfreed
                .lock()
                .map(|mut u| std::mem::take(&mut *u))
                .unwrap_or_default();
            for (key, revision) in unfreed {
                // Only the record this node made: a newer one is someone's task.
                match conn.kv.purge_expect_revision(&key, Some(revision)).await {
                    Ok(()) => {
                        tracing::info!(task = %key, "freed the id of a submission that failed")
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(_) => {
                        if let Ok(mut u) = self.unfreed.lock() {
                            u.push((key, revision));
                        }
                    }
                }
            }
            if let Ok(stream) = conn.js.get_stream_no_info(STREAM).await
                && let Ok(info) = stream.get_info().await
            {
                self.depth.store(info.state.messages, Ordering::Relaxed);
                self.bytes.store(info.state.bytes, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A NAK delay: at least a millisecond (no delay means at once).
fn delay(ms: i64) -> Duration {
    Duration::from_millis(ms.max(1) as u64)
}

fn parse(payload: &[u8]) -> Option<(Wire, &[u8])> {
    let at = payload.iter().position(|b| *b == b'\n')?;
    let wire = serde_json::from_slice(&payload[..at]).ok()?;
    Some((wire, &payload[at + 1..]))
}

/// Connects and makes sure the stream, its consumer and the bucket exist.
async fn setup(
    config: &ClusterConfig,
    queue: &QueueConfig,
    problem: crate::cluster::Problem,
) -> anyhow::Result<Conn> {
    use anyhow::Context as _;
    let client = crate::cluster::connect(config, problem).await?;
    let js = jetstream::new(client.clone());
    let stream_config = jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        max_messages: i64::try_from(queue.max_tasks).unwrap_or(i64::MAX),
        max_bytes: i64::try_from(queue.max_queue_bytes).unwrap_or(i64::MAX),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let stream = match js.get_stream(STREAM).await {
        Ok(s) => s,
        Err(_) => js
            .get_or_create_stream(stream_config)
            .await
            .context("creating the task stream")?,
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(config.ack_wait_ms),
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .context("creating the task consumer")?;
    let kv = crate::cluster::key_value(&js, BUCKET, queue.retention_s, config.replicas)
        .await
        .context("opening the task bucket")?;
    Ok(Conn {
        client,
        js,
        kv,
        consumer,
    })
}
