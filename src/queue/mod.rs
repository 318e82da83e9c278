//! Durable async invocation (SPEC section 7): the task store ([`store`], SQLite in
//! `data_dir`), the workers that run due tasks with retries ([`worker`]), and callbacks.
//!
//! A 202 is a promise: the task is committed to disk before the answer, and runs at least
//! once across crashes and restarts (a task left `Running` by a crash runs again).
//!
//! The queue stores [`StoredInvocation`]s and knows nothing of the doors that enqueue them
//! or of how they run: the workers hand each due task to an [`worker::Executor`] (the
//! dispatcher). Time comes from a [`Clock`], so delays, backoff and expiry can be tested
//! without waiting.

pub mod callback;
pub mod jetstream;
pub mod store;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use anyhow::Result;
use tokio::sync::{Notify, oneshot};

use crate::config::{ClusterConfig, QueueConfig};
pub use crate::invocation::StoredInvocation;
use store::{Cmd, InsertError, StopError};
pub use store::{NewTask, PendingCallback, Task, TaskState, TaskView, Update, task_key};

/// Where the queue and its workers read the time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct FakeClock(std::sync::atomic::AtomicI64);

impl FakeClock {
    pub fn new(start_ms: i64) -> Arc<FakeClock> {
        Arc::new(FakeClock(std::sync::atomic::AtomicI64::new(start_ms)))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why the queue refused or failed. `crate::error` maps these to status and Code.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The task id is taken => 409 `TaskAlreadyExists`.
    #[error("task '{0}' already exists")]
    Exists(String),
    /// `max_tasks`, `max_queue_bytes` or the trigger's `async.max_tasks` => 503.
    #[error("{0}")]
    Full(String),
    /// No such task => 404 `TaskNotFound`.
    #[error("task '{0}' does not exist")]
    NotFound(String),
    /// The task outlived its trigger's `max_event_age_s`.
    #[error("the task is older than max_event_age_s ({0} s)")]
    Expired(u64),
    /// The trigger that enqueued the task is no longer configured.
    #[error("trigger '{0}' no longer exists")]
    TriggerGone(String),
    /// The id names tasks of several triggers => 409 naming them (`?trigger=` selects).
    #[error("task '{id}' exists on several triggers ({}); name one with ?trigger=", triggers.join(", "))]
    Ambiguous { id: String, triggers: Vec<String> },
    /// The database failed: logged, never shown to a client.
    #[error("the task store failed: {0}")]
    Storage(String),
    /// The cluster's task store cannot be reached now => 503: nothing was stored.
    #[error("{0}")]
    Unavailable(String),
}

/// The handle to the task store, shared by the pipeline, the workers and the admin API:
/// one interface over two backends, SQLite on this node ([`store`]) or NATS JetStream
/// shared by a cluster ([`jetstream`]).
pub struct Queue {
    backend: Backend,
    clock: Arc<dyn Clock>,
    /// Wakes the dispatcher when new work arrives.
    pub(crate) wake: Arc<Notify>,
    /// How many tasks the workers can take now, handed straight to them (due tasks from
    /// the SQLite writer; messages pulled from JetStream).
    handoff_budget: Arc<AtomicU64>,
    /// Tells the JetStream backend the workers can take more.
    offered: Arc<Notify>,
    /// Where those tasks arrive; taken by the running workers, put back when they stop.
    ready: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Task>>>,
    pub config: QueueConfig,
}

enum Backend {
    Local {
        tx: mpsc::Sender<Cmd>,
        /// Open tasks and their bytes, kept by the writer thread.
        book: Arc<store::Book>,
    },
    Cluster(Arc<jetstream::Cluster>),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("open", &self.depth())
            .finish()
    }
}

fn unavailable() -> QueueError {
    QueueError::Storage("the task store is not running".into())
}

impl Queue {
    /// Opens `data_dir/tasks.db` and starts the writer thread. `qualifier_of` gives the
    /// qualifier of a trigger, for tasks stored before invocations carried their target.
    ///
    /// With `cluster`, the tasks live in NATS JetStream instead (connected in the
    /// background; until then submissions get 503).
    pub fn open(
        data_dir: &Path,
        config: &QueueConfig,
        cluster: Option<&ClusterConfig>,
        clock: Arc<dyn Clock>,
        qualifier_of: &dyn Fn(&str) -> String,
    ) -> Result<Queue> {
        let handoff_budget = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = tokio::sync::mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let offered = Arc::new(Notify::new());
        let handoff = store::Handoff {
            budget: handoff_budget.clone(),
            tx: ready_tx,
            wake: wake.clone(),
        };
        let backend = match cluster {
            Some(_) if tokio::runtime::Handle::try_current().is_err() => {
                anyhow::bail!("the cluster queue is opened from the async runtime")
            }
            Some(c) => Backend::Cluster(jetstream::Cluster::start(
                c,
                config,
                clock.clone(),
                handoff,
                offered.clone(),
            )),
            None => {
                let (conn, book) =
                    store::open(&data_dir.join("tasks.db"), clock.now_ms(), qualifier_of)?;
                let book = Arc::new(book);
                let (tx, rx) = mpsc::channel();
                let group_commit = config.group_commit;
                let bounds = store::Bounds {
                    max_tasks: config.max_tasks,
                    max_bytes: config.max_queue_bytes,
                };
                let writer_book = book.clone();
                std::thread::Builder::new()
                    .name("wasmgate-queue".into())
                    .spawn(move || {
                        store::run(conn, rx, group_commit, writer_book, bounds, handoff)
                    })?;
                Backend::Local { tx, book }
            }
        };
        Ok(Queue {
            backend,
            clock,
            wake,
            handoff_budget,
            offered,
            ready: std::sync::Mutex::new(Some(ready)),
            config: config.clone(),
        })
    }

    /// Sends a command to the SQLite writer and waits for its answer (`None` on the
    /// cluster backend, or when the writer is gone).
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let Backend::Local { tx, .. } = &self.backend else {
            return None;
        };
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply)).ok()?;
        rx.await.ok()
    }

    /// What is degraded, if anything: the cluster's NATS connection.
    pub fn degraded(&self) -> Option<String> {
        match &self.backend {
            Backend::Local { .. } => None,
            Backend::Cluster(c) => c.degraded(),
        }
    }

    /// Waits (at most `max`) until the queue can take tasks; whether it can.
    pub async fn wait_ready(&self, max: std::time::Duration) -> bool {
        match &self.backend {
            Backend::Local { .. } => true,
            Backend::Cluster(c) => c.wait_ready(max).await,
        }
    }

    /// Which backend holds the tasks: `sqlite` or `nats`.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Local { .. } => "sqlite",
            Backend::Cluster(_) => "nats",
        }
    }

    /// Milliseconds since the epoch, by the queue's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Wakes the workers (new work, a worker free, the clock moved).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Lets the writer hand up to `n` tasks due now straight to the workers.
    pub(crate) fn offer_workers(&self, n: usize) {
        self.handoff_budget.store(n as u64, Ordering::Release);
        if n > 0 {
            self.offered.notify_one();
        }
    }

    /// The tasks handed to the workers; `None` while another worker loop holds them.
    pub(crate) fn take_ready(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Task>> {
        self.ready.lock().ok()?.take()
    }

    /// Gives the hand-over back when the workers stop. In SQLite what is in it runs when
    /// they start again, or after a restart (it is stored Running); a cluster node hands
    /// it back to JetStream at once, for another node to take.
    pub(crate) async fn put_ready(&self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Task>) {
        self.offer_workers(0);
        if let Backend::Cluster(c) = &self.backend {
            let mut waiting = Vec::new();
            while let Ok(t) = rx.try_recv() {
                waiting.push(t);
            }
            c.release(waiting).await;
        }
        if let Ok(mut r) = self.ready.lock() {
            *r = Some(rx);
        }
    }

    /// Unfinished tasks (in a cluster: messages in the stream, read every second).
    pub fn depth(&self) -> u64 {
        match &self.backend {
            Backend::Local { book, .. } => book.open.load(Ordering::Relaxed),
            Backend::Cluster(c) => c.depth(),
        }
    }

    /// Bytes the unfinished tasks hold (bodies and stored invocations).
    pub fn bytes(&self) -> u64 {
        match &self.backend {
            Backend::Local { book, .. } => book.bytes.load(Ordering::Relaxed),
            Backend::Cluster(c) => c.bytes(),
        }
    }

    /// Makes a task durable. 409 for a reused id; 503 when the queue (`max_tasks`,
    /// `max_queue_bytes`) or the trigger's quota is full.
    pub async fn submit(&self, task: NewTask) -> Result<(), QueueError> {
        if let Backend::Cluster(c) = &self.backend {
            return c.submit(task).await;
        }
        let id = task.id.clone();
        let invocation = serde_json::to_string(&task.invocation);
        match self.call(|r| Cmd::Insert(task, invocation, r)).await {
            // The writer has woken the workers, or handed them the task.
            Some(Ok(())) => Ok(()),
            Some(Err(InsertError::Exists)) => Err(QueueError::Exists(id)),
            Some(Err(InsertError::Full(why))) => Err(QueueError::Full(why)),
            Some(Err(InsertError::Storage(e))) => {
                Err(QueueError::Storage(format!("cannot store the task: {e}")))
            }
            None => Err(unavailable()),
        }
    }

    /// Marks up to `limit` due tasks `Running` and returns them (a cluster node's tasks
    /// all come through the hand-over instead).
    pub async fn claim(&self, limit: usize) -> Vec<Task> {
        self.call(|reply| Cmd::Claim {
            now_ms: self.now_ms(),
            limit,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    /// Records an attempt's outcome (waits for the commit).
    pub async fn update(&self, u: Update) {
        match &self.backend {
            Backend::Local { .. } => {
                self.call(|r| Cmd::Update(u, Some(r))).await;
            }
            Backend::Cluster(c) => c.update(u).await,
        }
    }

    /// Records an attempt's outcome without waiting for the commit ([`Queue::flush`] waits
    /// for everything sent before it).
    pub fn record(&self, u: Update) {
        match &self.backend {
            Backend::Local { tx, .. } => {
                let _ = tx.send(Cmd::Update(u, None));
            }
            Backend::Cluster(c) => c.record(u),
        }
    }

    /// Returns once everything sent before is committed.
    pub async fn flush(&self) {
        match &self.backend {
            Backend::Local { .. } => {
                self.call(Cmd::Flush).await;
            }
            Backend::Cluster(c) => c.flush().await,
        }
    }

    /// The task with store key `key` ([`task_key`]).
    pub async fn get(&self, key: &str) -> Option<TaskView> {
        match &self.backend {
            Backend::Local { .. } => self.call(|r| Cmd::Get(key.to_string(), r)).await.flatten(),
            Backend::Cluster(c) => c.get(key).await,
        }
    }

    /// Finds task `id`: on `trigger` when given, else on whichever trigger has it. Ids are
    /// per trigger, so without a trigger an id two triggers use is ambiguous (409).
    pub async fn find(&self, id: &str, trigger: Option<&str>) -> Result<TaskView, QueueError> {
        let mut found = match &self.backend {
            Backend::Local { .. } => self
                .call(|reply| Cmd::Find {
                    id: id.to_string(),
                    trigger: trigger.map(str::to_string),
                    reply,
                })
                .await
                .unwrap_or_default(),
            Backend::Cluster(c) => c.find(id, trigger).await?,
        };
        match found.len() {
            0 => Err(QueueError::NotFound(id.to_string())),
            1 => Ok(found.remove(0)),
            _ => Err(QueueError::Ambiguous {
                id: id.to_string(),
                triggers: found.into_iter().map(|t| t.trigger).collect(),
            }),
        }
    }

    /// Tasks matching the filters, at most `limit`, and where the next page starts (`after`)
    /// when the backend pages: the cluster's bucket has no index, so one call reads at most
    /// a bounded number of records, in key order; SQLite answers newest first in one page.
    pub async fn list(
        &self,
        trigger: Option<String>,
        function: Option<String>,
        state: Option<TaskState>,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<TaskView>, Option<String>), QueueError> {
        if let Backend::Cluster(c) = &self.backend {
            return c
                .list(
                    trigger.as_deref(),
                    function.as_deref(),
                    state,
                    limit,
                    after.as_deref(),
                )
                .await;
        }
        let tasks = self
            .call(|reply| Cmd::List {
                trigger,
                function,
                state,
                limit,
                reply,
            })
            .await
            .unwrap_or_default();
        Ok((tasks, None))
    }

    /// Stops the task with store key `key`: a waiting task never runs; a running one is
    /// not retried.
    pub async fn stop(&self, key: &str) -> Result<TaskView, QueueError> {
        if let Backend::Cluster(c) = &self.backend {
            return c.stop(key, self.now_ms()).await;
        }
        match self
            .call(|r| Cmd::Stop(key.to_string(), self.now_ms(), r))
            .await
        {
            Some(Ok(v)) => Ok(v),
            Some(Err(StopError::NotFound)) => Err(QueueError::NotFound(key.to_string())),
            Some(Err(StopError::Storage(e))) => Err(QueueError::Storage(e)),
            None => Err(unavailable()),
        }
    }

    pub async fn stop_requested(&self, key: &str) -> bool {
        if let Backend::Cluster(c) = &self.backend {
            return c.stop_requested(key).await;
        }
        self.call(|r| Cmd::StopRequested(key.to_string(), r))
            .await
            .unwrap_or(false)
    }

    pub async fn next_due(&self) -> Option<i64> {
        self.call(Cmd::NextDue).await.flatten()
    }

    pub async fn pending_callbacks(&self) -> Vec<PendingCallback> {
        self.call(Cmd::PendingCallbacks).await.unwrap_or_default()
    }

    /// Deletes tasks finished longer than `retention_s` ago (a cluster's bucket does so by
    /// itself: its records expire after `retention_s`).
    pub fn prune(&self) {
        let before_ms = self.now_ms() - (self.config.retention_s as i64).saturating_mul(1000);
        if let Backend::Local { tx, .. } = &self.backend {
            let _ = tx.send(Cmd::Prune { before_ms });
        }
    }
}

/// Prefixes of the task ids the gateway makes itself (cron ticks, events); clients may
/// not use them.
pub const RESERVED_PREFIXES: [&str; 2] = ["cron-", "evt-"];

/// Whether `id` starts with a prefix only the gateway may use.
pub fn reserved_task_id(id: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| id.starts_with(p))
}

/// Whether `id` is a valid client task id: `[A-Za-z_][A-Za-z0-9_-]{0,127}`.
pub fn valid_task_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        assert!(valid_task_id("a"));
        assert!(valid_task_id("_x-1_Y"));
        assert!(valid_task_id(&format!("a{}", "b".repeat(127))));
        assert!(!valid_task_id(&format!("a{}", "b".repeat(128))));
        assert!(!valid_task_id(""));
        assert!(!valid_task_id("1abc"));
        assert!(!valid_task_id("-abc"));
        assert!(!valid_task_id("a b"));
        assert!(!valid_task_id("a.b"));
    }
}
