//! The async workers: claim due tasks, run them through the same runtime, limits and permits
//! as sync requests, retry failures with exponential backoff, back off on capacity refusals,
//! and deliver callbacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Semaphore;

use super::{PendingCallback, Queue, Task, TaskState, Update, now_ms};
use crate::error::GatewayError;
use crate::runtime::Invocation;
use crate::{App, Gateway, Trigger};

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Delay after a capacity refusal (node or function full).
const CAPACITY_BACKOFF: Duration = Duration::from_millis(200);
/// Largest function response kept for the callback.
pub const MAX_CALLBACK_BODY: usize = 6 * 1024 * 1024;
/// Bytes of the response kept as the task's preview.
const PREVIEW_BYTES: usize = 1024;
/// Callback delivery attempts.
const CALLBACK_ATTEMPTS: u32 = 5;

/// Exponential backoff with ±20% jitter: 0.5 s, 1 s, 2 s, ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(MAX_BACKOFF);
    let jitter: f64 = rand::random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

/// Runs the dispatcher until the app drains; finishes in-flight attempts before returning.
pub async fn run(gateway: Arc<Gateway>, queue: Arc<Queue>) {
    let workers = Arc::new(Semaphore::new(queue.config.workers.get()));
    let client = callback_client();
    for cb in queue.pending_callbacks().await {
        tokio::spawn(deliver(queue.clone(), client.clone(), cb));
    }
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        if gateway.is_draining() {
            break;
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            queue.prune();
            last_prune = Instant::now();
        }
        let free = workers.available_permits();
        if free > 0 {
            for task in queue.claim(free).await {
                let Ok(permit) = workers.clone().acquire_owned().await else {
                    return;
                };
                // Each attempt runs on the generation current when it starts.
                let (app, queue, client) = (gateway.app(), queue.clone(), client.clone());
                tokio::spawn(async move {
                    execute(&app, &queue, &client, task).await;
                    drop(permit);
                    // A worker is free: let the dispatcher claim the next due task now.
                    queue.wake.notify_one();
                });
            }
        }
        // Sleep until the next task is due, new work arrives, or a worker frees up (each
        // of which notifies `wake`).
        let wait = if workers.available_permits() == 0 {
            Duration::from_secs(1)
        } else {
            match queue.next_due().await {
                Some(due) => Duration::from_millis((due - now_ms()).clamp(0, 1000) as u64),
                None => Duration::from_secs(1),
            }
        };
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Let running attempts finish (their permits come back when they do).
    let all = u32::try_from(queue.config.workers.get()).unwrap_or(u32::MAX);
    let _ = workers.acquire_many(all).await;
}

fn callback_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// What one attempt produced.
enum Attempt {
    /// The function answered (any status), with its headers and (bounded) body.
    Answered {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    },
    /// The gateway refused or the guest failed.
    Refused(GatewayError),
}

async fn execute(app: &App, queue: &Queue, client: &reqwest::Client, task: Task) {
    let id = task.new.id.clone();
    let Some(trigger) = app
        .triggers
        .iter()
        .find(|t| t.config.name == task.new.trigger)
    else {
        finish(
            queue,
            client,
            &task,
            None,
            TaskState::Failed,
            failure(GatewayError::TriggerNotFound(format!(
                "trigger '{}' no longer exists",
                task.new.trigger
            ))),
            0.0,
        )
        .await;
        return;
    };
    let max_age_ms = trigger.config.async_.as_ref().map_or(86_400_000, |a| {
        (a.max_event_age_s as i64).saturating_mul(1000)
    });
    let max_retries = trigger.config.async_.as_ref().map_or(3, |a| a.max_retries);
    if now_ms() - task.new.created_ms > max_age_ms {
        let e = GatewayError::FunctionTimeout(format!(
            "the task is older than max_event_age_s ({} s)",
            max_age_ms / 1000
        ));
        finish(
            queue,
            client,
            &task,
            Some(trigger),
            TaskState::Expired,
            failure(e),
            0.0,
        )
        .await;
        return;
    }

    let started = Instant::now();
    let attempt = run_once(app, trigger, &task).await;
    let duration = started.elapsed().as_secs_f64();
    let (status, capacity, failed) = match &attempt {
        Attempt::Answered { status, .. } => (
            *status,
            *status == 429 || *status == 503,
            *status >= 500 && *status != 503,
        ),
        Attempt::Refused(e) => {
            let capacity = matches!(
                e,
                GatewayError::ResourceExhausted { .. } | GatewayError::ResourceThrottled { .. }
            );
            (e.status().as_u16(), capacity, !capacity)
        }
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
            function: task.new.function.clone(),
            outcome: outcome_label,
        })
        .inc();
    if capacity {
        // Capacity refusals do not count as attempts; the age limit bounds them.
        queue
            .update(Update::Reschedule {
                id,
                attempts: task.attempts,
                due_ms: now_ms() + jittered(CAPACITY_BACKOFF).as_millis() as i64,
                last_error: Some(format!("capacity refusal ({status})")),
                status: Some(status),
            })
            .await;
        queue.wake.notify_one();
        return;
    }
    let attempts = task.attempts + 1;
    let task = Task { attempts, ..task };
    let stopped = queue.stop_requested(&task.new.id).await;
    if failed && attempts <= max_retries && !stopped {
        let last_error = match &attempt {
            Attempt::Refused(e) => e.to_string(),
            Attempt::Answered { status, .. } => format!("the function answered {status}"),
        };
        queue
            .update(Update::Reschedule {
                id,
                attempts,
                due_ms: now_ms() + backoff(attempts).as_millis() as i64,
                last_error: Some(last_error),
                status: Some(status),
            })
            .await;
        return;
    }
    let state = if failed && stopped {
        TaskState::Stopped
    } else if failed {
        TaskState::Failed
    } else {
        TaskState::Succeeded
    };
    let outcome = match attempt {
        Attempt::Answered {
            status,
            headers,
            body,
        } => Outcome {
            status,
            headers,
            body,
            error: failed.then(|| format!("the function answered {status}")),
        },
        Attempt::Refused(e) => failure(e),
    };
    finish(
        queue,
        client,
        &task,
        Some(trigger),
        state,
        outcome,
        duration,
    )
    .await;
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// Runs the task's request once through the runtime, with the node's and the function's
/// permits like any request.
async fn run_once(app: &App, trigger: &Trigger, task: &Task) -> Attempt {
    let function = match app.resolve(trigger) {
        Ok(f) => f,
        Err(e) => return Attempt::Refused(e),
    };
    let admission = match app.node.admit(&function) {
        Ok(a) => a,
        Err(e) => return Attempt::Refused(e),
    };
    let mut builder = http::Request::builder()
        .method(task.new.method.as_str())
        .uri(task.new.path.as_str());
    for (k, v) in &task.new.headers {
        builder = builder.header(k.as_str(), v.as_slice());
    }
    let request = match builder.body(Full::new(Bytes::from(task.new.body.clone()))) {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Refused(GatewayError::Internal(format!(
                "the stored request is invalid: {e}"
            )));
        }
    };
    let invocation = Invocation {
        request,
        request_id: task.new.request_id.as_str().into(),
        https: task.new.path.starts_with("https:"),
    };
    match function.invoke(invocation, admission).await {
        Err(e) => Attempt::Refused(e),
        Ok(outcome) => {
            let (parts, body) = outcome.response.into_parts();
            let body = match Limited::new(body, MAX_CALLBACK_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Attempt::Refused(GatewayError::BadResponse(format!(
                        "reading the function's response failed: {e}"
                    )));
                }
            };
            Attempt::Answered {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body,
            }
        }
    }
}

struct Outcome {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
    error: Option<String>,
}

fn failure(e: GatewayError) -> Outcome {
    Outcome {
        status: e.status().as_u16(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from(e.body("")),
        error: Some(e.to_string()),
    }
}

/// Records the final state and hands the callback (if any) to delivery.
async fn finish(
    queue: &Queue,
    client: &reqwest::Client,
    task: &Task,
    trigger: Option<&Trigger>,
    state: TaskState,
    outcome: Outcome,
    duration_s: f64,
) {
    let target = task.new.callback_url.clone().or_else(|| {
        let a = trigger?.config.async_.as_ref()?;
        if state == TaskState::Succeeded {
            a.on_success.clone()
        } else {
            a.on_failure.clone()
        }
    });
    let callback = target.map(|url| {
        let mut headers: Vec<(String, Vec<u8>)> = outcome
            .headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "host"
                )
            })
            .cloned()
            .collect();
        let mut add = |k: &str, v: String| headers.push((k.to_string(), v.into_bytes()));
        add("x-function-status", outcome.status.to_string());
        add("x-fc-request-id", task.new.request_id.clone());
        add("x-fc-async-task-id", task.new.id.clone());
        add("x-function-name", task.new.function.clone());
        add("x-duration-seconds", format!("{duration_s:.3}"));
        add("x-fc-async-task-state", state.as_str().to_string());
        PendingCallback {
            task_id: task.new.id.clone(),
            url,
            headers,
            body: outcome.body.to_vec(),
            attempts: 0,
        }
    });
    let preview = outcome.body[..outcome.body.len().min(PREVIEW_BYTES)].to_vec();
    queue
        .update(Update::Finish {
            id: task.new.id.clone(),
            state,
            attempts: task.attempts,
            finished_ms: now_ms(),
            last_error: outcome.error,
            status: Some(outcome.status),
            preview: Some(preview),
            callback: callback.clone(),
        })
        .await;
    if let Some(cb) = callback {
        deliver_with(queue, client, cb).await;
    }
}

async fn deliver(queue: Arc<Queue>, client: reqwest::Client, cb: PendingCallback) {
    deliver_with(&queue, &client, cb).await;
}

/// POSTs a callback, retrying with backoff; records every attempt and the final outcome.
async fn deliver_with(queue: &Queue, client: &reqwest::Client, cb: PendingCallback) {
    let mut attempts = cb.attempts;
    loop {
        attempts += 1;
        let mut req = client.post(&cb.url).body(cb.body.clone());
        for (k, v) in &cb.headers {
            req = req.header(k.as_str(), v.as_slice());
        }
        let result = req.send().await;
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
        let done = ok || attempts >= CALLBACK_ATTEMPTS;
        if !ok {
            tracing::warn!(task = %cb.task_id, url = %cb.url, attempts, "callback failed: {status}");
        }
        queue
            .update(Update::Callback {
                id: cb.task_id.clone(),
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
