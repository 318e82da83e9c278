//! The async workers: claim due tasks, hand each to the [`Executor`] (the dispatcher, which
//! admits and runs it like any invocation), retry failures with exponential backoff, back
//! off on capacity refusals, and deliver callbacks.
//!
//! The workers see the rest of the gateway only through [`Executor`]: they do not know the
//! triggers, the runtime or HTTP status mapping, so every door's tasks run the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{Notify, Semaphore, watch};

use std::net::SocketAddr;

use super::{PendingCallback, Queue, QueueError, Task, TaskState, Update, callback};
use crate::config::AsyncConfig;

/// What the workers need from the rest of the gateway.
pub trait Executor: Send + Sync + 'static {
    /// The async settings of `trigger` as configured now; `None` when it no longer exists.
    fn policy(&self, trigger: &str) -> Option<AsyncConfig>;
    /// Runs one attempt of `task` (resolve its target, admit, invoke) and reads the answer.
    fn attempt(&self, task: &Task) -> BoxFuture<'static, Attempt>;
    /// The task record and callback of a failure the queue itself decided (expiry, a
    /// trigger that is gone).
    fn refused(&self, error: QueueError, request_id: &str) -> Attempt;
}

/// What one attempt produced.
#[derive(Debug)]
pub enum Attempt {
    /// The function answered (any status), with its headers and (bounded) body.
    Answered {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    },
    /// The gateway refused or the guest failed: the status and JSON body a client would
    /// have seen, and whether it was only a capacity refusal (429/503: run it later).
    Refused {
        status: u16,
        capacity: bool,
        error: String,
        body: Bytes,
    },
}

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Delay after a capacity refusal (node or function full).
const CAPACITY_BACKOFF: Duration = Duration::from_millis(200);
/// Largest function response kept for the callback.
pub const MAX_CALLBACK_BODY: usize = 6 * 1024 * 1024;
/// Bytes of the response kept as the task's preview.
const PREVIEW_BYTES: usize = 1024;

/// Exponential backoff with ±20% jitter: 0.5 s, 1 s, 2 s, ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(MAX_BACKOFF);
    let jitter: f64 = rand::random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

/// Claims and runs due tasks until `stop` turns true, then lets running attempts finish.
///
/// `admin` is the admin listener's address, which no callback may reach.
pub async fn run(
    executor: Arc<dyn Executor>,
    queue: Arc<Queue>,
    admin: Option<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let workers = Arc::new(Semaphore::new(queue.config.workers.get()));
    let client = Delivery {
        admin,
        executor: executor.clone(),
        slots: Arc::new(Semaphore::new(queue.config.callback_concurrency.get())),
    };
    for mut cb in queue.pending_callbacks().await {
        let trigger = cb.key.split('/').next().unwrap_or_default();
        cb.max_attempts = executor
            .policy(trigger)
            .map_or(cb.max_attempts, |p| p.max_retries + 1);
        client.spawn(queue.clone(), cb);
    }
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    // Tasks the writer hands over directly (due now, stored Running): no claim needed.
    let mut ready = queue.take_ready();
    // A worker came free (its attempt ended).
    let freed = Arc::new(Notify::new());
    // Whether the store may hold due tasks: at start (recovered ones), when `wake` says new
    // or rescheduled work was stored, when the next due time passes, and after a claim that
    // filled every free worker. A worker coming free claims only then, so a task handed
    // over directly costs the store no claim and no query.
    let mut claim_due = true;
    let mut next_due: Option<i64> = None;
    // Tasks handed over while no worker was free, still waiting for a permit: the offer
    // below leaves room for them first.
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Runs one attempt once it holds a worker permit; a freed worker is announced.
    let start = |task: Task, permit: Permit| {
        let (executor, queue, client) = (executor.clone(), queue.clone(), client.clone());
        let freed = freed.clone();
        tokio::spawn(async move {
            let Ok(permit) = permit.await else { return };
            execute(&*executor, &queue, &client, task).await;
            drop(permit);
            freed.notify_one();
        });
    };
    // A handed-over task takes a free permit here and now, so the offer made right after
    // already counts it; with none free it waits, counted in `waiting` until it has one.
    let start_handed_over = |task: Task| match workers.clone().try_acquire_owned() {
        Ok(permit) => start(task, Box::pin(std::future::ready(Ok(permit)))),
        Err(_) => {
            waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (workers, waiting) = (workers.clone(), waiting.clone());
            start(
                task,
                Box::pin(async move {
                    let permit = workers.acquire_owned().await;
                    waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    permit
                }),
            )
        }
    };
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            queue.prune();
            last_prune = Instant::now();
        }
        let free = workers.available_permits();
        if claim_due && free > 0 {
            let tasks = queue.claim(free).await;
            claim_due = tasks.len() == free;
            for task in tasks {
                // Taken here, so the offer below counts it.
                let Ok(permit) = workers.clone().acquire_owned().await else {
                    return;
                };
                start(task, Box::pin(std::future::ready(Ok(permit))));
            }
            if !claim_due {
                next_due = queue.next_due().await;
            }
        }
        // What is still free may be handed new tasks directly, less what was handed over
        // and still waits for a permit.
        if ready.is_some() {
            let waiting = waiting.load(std::sync::atomic::Ordering::SeqCst);
            queue.offer_workers(workers.available_permits().saturating_sub(waiting));
        }
        // Sleep until the next task is due (at most a second: a clock that moved), new
        // work is stored, a worker frees up, or a task is handed over.
        let wait = match next_due {
            // Every worker busy: only a freed worker (or new work) can change anything.
            _ if workers.available_permits() == 0 => Duration::from_secs(1),
            Some(due) => Duration::from_millis((due - queue.now_ms()).clamp(0, 1000) as u64),
            None => Duration::from_secs(1),
        };
        tokio::select! {
            _ = queue.wake.notified() => claim_due = true,
            _ = freed.notified() => {}
            _ = tokio::time::sleep(wait) => claim_due = true,
            _ = stop.changed() => {}
            Some(task) = async { ready.as_mut()?.recv().await } => start_handed_over(task),
        }
    }
    if let Some(rx) = ready {
        queue.put_ready(rx).await;
    }
    // Let running attempts finish (their permits come back when they do), and their
    // outcomes reach the disk.
    let all = u32::try_from(queue.config.workers.get()).unwrap_or(u32::MAX);
    let _ = workers.acquire_many(all).await;
    queue.flush().await;
}

/// A worker permit, held or still to be waited for.
type Permit = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

/// How callbacks are delivered: off the execution slots, at most `callback_concurrency` POSTs
/// at once (a delivery waiting out its backoff holds none), through [`callback::resolve`],
/// never to the admin listener. A delivery's state is in its task's record, so one cut off by
/// a stop resumes at the next start.
#[derive(Clone)]
struct Delivery {
    admin: Option<SocketAddr>,
    executor: Arc<dyn Executor>,
    slots: Arc<Semaphore>,
}

impl Delivery {
    fn spawn(&self, queue: Arc<Queue>, cb: PendingCallback) {
        let client = self.clone();
        tokio::spawn(async move { deliver(&queue, &client, cb).await });
    }

    /// A client-supplied URL read back from the queue is checked against the trigger's
    /// `callback_hosts` as they are now, like at submission: the record may not be the one
    /// this node wrote, and the list may have shrunk since.
    fn still_allowed(&self, cb: &PendingCallback) -> Result<(), String> {
        if !cb.client_supplied {
            return Ok(());
        }
        let trigger = cb.key.split('/').next().unwrap_or_default();
        let hosts = self
            .executor
            .policy(trigger)
            .map(|p| p.callback_hosts)
            .unwrap_or_default();
        callback::check_client_url(&cb.url, &hosts, self.admin)
    }

    /// A client pinned to the address that was checked (no second DNS lookup).
    async fn client(&self, cb: &PendingCallback) -> Result<reqwest::Client, String> {
        let (target, addr) = callback::resolve(&cb.url, cb.client_supplied, self.admin).await?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the name itself, past the address checked here.
            .no_proxy();
        if target.host.parse::<std::net::IpAddr>().is_err() {
            builder = builder.resolve(&target.host, addr);
        }
        builder.build().map_err(|e| e.to_string())
    }
}

async fn execute(executor: &dyn Executor, queue: &Arc<Queue>, client: &Delivery, task: Task) {
    let key = task.new.key();
    let request_id = task.new.invocation.request_id.clone();
    let Some(policy) = executor.policy(&task.new.invocation.trigger) else {
        let gone = QueueError::TriggerGone(task.new.invocation.trigger.clone());
        let outcome = executor.refused(gone, &request_id);
        finish(queue, client, &task, None, TaskState::Failed, outcome, 0.0).await;
        return;
    };
    let max_age_ms = (policy.max_event_age_s as i64).saturating_mul(1000);
    if queue.now_ms() - task.new.created_ms > max_age_ms {
        let outcome = executor.refused(QueueError::Expired(policy.max_event_age_s), &request_id);
        finish(
            queue,
            client,
            &task,
            Some(&policy),
            TaskState::Expired,
            outcome,
            0.0,
        )
        .await;
        return;
    }

    let started = Instant::now();
    let attempt = executor.attempt(&task).await;
    let duration = started.elapsed().as_secs_f64();
    let (status, capacity, failed) = match &attempt {
        Attempt::Answered { status, .. } => (
            *status,
            *status == 429 || *status == 503,
            answer_failed(*status, Some(&policy)),
        ),
        Attempt::Refused {
            status, capacity, ..
        } => (*status, *capacity, !*capacity),
    };
    let outcome_label = if capacity {
        "capacity"
    } else if failed {
        "failed"
    } else {
        "succeeded"
    };
    crate::metrics::METRICS
        .async_attempts
        .get_or_create(&crate::metrics::AttemptLabels {
            function: task.new.invocation.target.function.clone(),
            outcome: outcome_label,
        })
        .inc();
    if capacity {
        // Capacity refusals do not count as attempts; the age limit bounds them.
        queue
            .update(Update::Reschedule {
                key,
                attempts: task.attempts,
                due_ms: queue.now_ms() + jittered(CAPACITY_BACKOFF).as_millis() as i64,
                last_error: Some(format!("capacity refusal ({status})")),
                status: Some(status),
                now_ms: queue.now_ms(),
            })
            .await;
        queue.wake();
        return;
    }
    let attempts = task.attempts + 1;
    let task = Task { attempts, ..task };
    // Only a failure asks whether a stop landed meanwhile (it decides between a retry and
    // Stopped); a success is recorded as such either way.
    let stopped = failed && queue.stop_requested(&task.new.key()).await;
    if failed && attempts <= policy.max_retries && !stopped {
        let last_error = match &attempt {
            Attempt::Refused { error, .. } => error.clone(),
            Attempt::Answered { status, .. } => format!("the function answered {status}"),
        };
        queue
            .update(Update::Reschedule {
                key,
                attempts,
                due_ms: queue.now_ms() + backoff(attempts).as_millis() as i64,
                last_error: Some(last_error),
                status: Some(status),
                now_ms: queue.now_ms(),
            })
            .await;
        // The store holds work again (due after the backoff).
        queue.wake();
        return;
    }
    let state = if failed && stopped {
        TaskState::Stopped
    } else if failed {
        TaskState::Failed
    } else {
        TaskState::Succeeded
    };
    finish(
        queue,
        client,
        &task,
        Some(&policy),
        state,
        attempt,
        duration,
    )
    .await;
}

/// Whether a function's answer is a failed attempt: a 5xx other than 503 (a capacity
/// refusal), or any answer outside 2xx where the trigger's policy requires one.
fn answer_failed(status: u16, policy: Option<&AsyncConfig>) -> bool {
    let required = policy.is_some_and(|p| p.require_2xx);
    (status >= 500 && status != 503)
        || (required && !(200..300).contains(&status) && status != 429 && status != 503)
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// A finished task's record and callback.
struct Outcome {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    error: Option<String>,
}

/// Records the final state and hands the callback (if any) to delivery.
async fn finish(
    queue: &Arc<Queue>,
    client: &Delivery,
    task: &Task,
    policy: Option<&AsyncConfig>,
    state: TaskState,
    attempt: Attempt,
    duration_s: f64,
) {
    let outcome = match attempt {
        Attempt::Answered {
            status,
            headers,
            body,
        } => Outcome {
            status,
            headers,
            body,
            error: answer_failed(status, policy).then(|| format!("the function answered {status}")),
        },
        Attempt::Refused {
            status,
            error,
            body,
            ..
        } => Outcome {
            status,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body,
            error: Some(error),
        },
    };
    let client_supplied = task.new.callback_url.is_some();
    let target = task.new.callback_url.clone().or_else(|| {
        let a = policy?;
        if state == TaskState::Succeeded {
            a.on_success.clone()
        } else {
            a.on_failure.clone()
        }
    });
    let callback = target.map(|url| {
        let traced = crate::trace::enabled();
        let mut headers: Vec<(String, Vec<u8>)> = outcome
            .headers
            .iter()
            .filter(|(k, _)| {
                let hop = matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "host"
                );
                // With tracing on, the task's own context replaces the function's.
                let trace = traced && matches!(k.as_str(), "traceparent" | "tracestate");
                !hop && !trace
            })
            .cloned()
            .collect();
        let mut add = |k: &str, v: String| headers.push((k.to_string(), v.into_bytes()));
        add("x-function-status", outcome.status.to_string());
        add("x-fc-request-id", task.new.invocation.request_id.clone());
        add("x-fc-async-task-id", task.new.id.clone());
        add(
            "x-function-name",
            task.new.invocation.target.function.clone(),
        );
        add("x-duration-seconds", format!("{duration_s:.3}"));
        add("x-fc-async-task-state", state.as_str().to_string());
        if traced {
            // The callback belongs to the task's trace: it carries the context the task was
            // stored with (stored with the callback too, so a restart keeps it), and
            // `deliver` makes each delivery a span of its own under it.
            for (k, v) in &task.new.invocation.headers {
                if (k == "traceparent" || k == "tracestate")
                    && let crate::invocation::StoredValue::Text(v) = v
                {
                    add(k, v.clone());
                }
            }
        }
        PendingCallback {
            key: task.new.key(),
            task_id: task.new.id.clone(),
            url,
            headers,
            body: outcome.body.to_vec(),
            attempts: 0,
            client_supplied,
            // Delivery follows the trigger's max_retries, like attempts.
            max_attempts: policy.map_or(4, |p| p.max_retries + 1),
        }
    });
    let preview = outcome.body[..outcome.body.len().min(PREVIEW_BYTES)].to_vec();
    let record = Update::Finish {
        key: task.new.key(),
        state,
        attempts: task.attempts,
        finished_ms: queue.now_ms(),
        last_error: outcome.error,
        status: Some(outcome.status),
        preview: Some(preview),
        callback: callback.clone(),
    };
    match callback {
        // A callback leaves only once the outcome it reports is committed.
        Some(cb) => {
            queue.update(record).await;
            client.spawn(queue.clone(), cb);
        }
        // Otherwise the worker moves on while the writer commits (a crash before that
        // commit runs the task again: at least once). Waiting here held a worker for a
        // whole group commit per task.
        None => queue.record(record),
    }
}

/// POSTs a callback, retrying with backoff; records every attempt and the final outcome.
async fn deliver(queue: &Queue, client: &Delivery, cb: PendingCallback) {
    let mut attempts = cb.attempts;
    loop {
        attempts += 1;
        let result = match client.still_allowed(&cb) {
            Err(refused) => Err(format!("not delivered: {refused}")),
            Ok(()) => {
                // Held for the POST only, not the backoff.
                let Ok(_slot) = client.slots.acquire().await else {
                    return;
                };
                let mut span = callback_span(&cb, attempts);
                let result = match client.client(&cb).await {
                    Ok(http) => {
                        let mut req = http.post(&cb.url).body(cb.body.clone());
                        for (k, v) in &cb.headers {
                            if span.context().is_none() || (k != "traceparent" && k != "tracestate")
                            {
                                req = req.header(k.as_str(), v.as_slice());
                            }
                        }
                        if let Some(ctx) = span.context() {
                            let mut h = http::HeaderMap::new();
                            ctx.inject(&mut h);
                            req = req.headers(h);
                        }
                        req.send().await.map_err(|e| e.to_string())
                    }
                    Err(refused) => Err(format!("not delivered: {refused}")),
                };
                match &result {
                    Ok(r) => span.set_status(r.status().as_u16()),
                    Err(e) => span.set_error(e.clone()),
                }
                result
            }
        };
        let (ok, status) = match result {
            Ok(r) if r.status().is_success() => {
                (true, format!("Delivered ({})", r.status().as_u16()))
            }
            Ok(r) => (
                false,
                format!("Failed: the callback answered {}", r.status().as_u16()),
            ),
            Err(e) => (false, format!("Failed: {e}")),
        };
        let done = ok || attempts >= cb.max_attempts.max(1);
        if !ok {
            tracing::warn!(task = %cb.task_id, url = %callback::redacted(&cb.url), attempts, "callback failed: {status}");
        }
        queue
            .update(Update::Callback {
                key: cb.key.clone(),
                status,
                attempts,
                done,
            })
            .await;
        if done {
            return;
        }
        tokio::time::sleep(backoff(attempts)).await;
    }
}

/// A callback delivery's span: a child of the context the callback was stored with (the
/// task's), or off when there is none or tracing is off.
fn callback_span(cb: &PendingCallback, attempt: u32) -> crate::trace::Span {
    let header = |name: &str| {
        cb.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let Some(parent) =
        header("traceparent").and_then(|tp| crate::trace::Context::parse(tp, header("tracestate")))
    else {
        return crate::trace::Span::off();
    };
    let mut span = crate::trace::start("callback", crate::trace::Kind::Client, Some(&parent));
    if span.is_recording() {
        span.set("wasmgate.task_id", &cb.task_id);
        span.set("wasmgate.attempt", attempt);
        // The host only: a webhook URL often carries its credential in the path.
        if let Ok(uri) = cb.url.parse::<http::Uri>() {
            if let Some(host) = uri.host() {
                span.set("server.address", host);
            }
            if let Some(port) = uri.port_u16() {
                span.set("server.port", u32::from(port));
            }
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_with_jitter_and_a_cap() {
        for (attempt, nominal) in [(1u32, 0.5f64), (2, 1.0), (3, 2.0), (4, 4.0)] {
            let d = backoff(attempt).as_secs_f64();
            assert!(
                d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                "{attempt}: {d}"
            );
        }
        assert!(backoff(30).as_secs_f64() <= 360.0);
        assert!(backoff(30).as_secs_f64() >= 240.0);
    }
}
