//! The dispatcher: the one place an [`Invocation`] is resolved, admitted and run, or made
//! durable.
//!
//! Every door calls it: the HTTP pipeline ([`Dispatcher::run`] for sync requests,
//! [`Dispatcher::enqueue`] for async ones), the queue's workers ([`Dispatcher::attempt`]
//! through [`crate::queue::worker::Executor`]) and the event sources. Nothing else resolves
//! a function or takes a permit.
//!
//! A dispatcher belongs to one configuration generation (its compiled functions, deployed
//! registry and trigger policies) but shares the long-lived parts with every generation:
//! the node's and functions' [`Limits`] (resized by a reload, never duplicated) and the
//! durable [`Queue`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::config::{AsyncConfig, Config};
use crate::error::GatewayError;
use crate::invocation::{Invocation, StoredInvocation, Target};
use crate::queue::worker::{Attempt, MAX_CALLBACK_BODY};
use crate::queue::{NewTask, Queue, Task};
use crate::registry::Registry;
use crate::runtime::{Function, Outcome, Runtime};
use crate::throttle::Limits;

/// How an invocation is made durable.
#[derive(Debug, Default, Clone)]
pub struct EnqueueOptions {
    /// The task id; the request id when `None`.
    pub task_id: Option<String>,
    /// Delay before the first attempt.
    pub delay_ms: i64,
    /// Where the result is POSTed (already checked against the trigger's policy).
    pub callback_url: Option<String>,
}

/// Resolves, admits and runs invocations for one configuration generation.
pub struct Dispatcher {
    runtime: Runtime,
    registry: Option<Registry>,
    limits: Arc<Limits>,
    queue: Option<Arc<Queue>>,
    /// Each trigger's async settings (the defaults where it has no `async` table).
    policies: HashMap<String, AsyncConfig>,
    /// What a task read back from the queue is bounded by.
    read_back: crate::config::Limits,
    /// The largest body a submission can store: `max_async_body_bytes` with room for an
    /// event's envelope, or a cron trigger's payload.
    max_stored_body: u64,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("queue", &self.queue)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        runtime: Runtime,
        registry: Option<Registry>,
        limits: Arc<Limits>,
        queue: Option<Arc<Queue>>,
    ) -> Dispatcher {
        let policies = config
            .triggers
            .iter()
            .map(|t| {
                let mut policy = t.async_.clone().unwrap_or_default();
                // An event delivery succeeds only with a 2xx answer (SPEC section 8.3).
                policy.require_2xx = matches!(t.kind, crate::config::Kind::Event);
                (t.name.clone(), policy)
            })
            .collect();
        Dispatcher {
            runtime,
            registry,
            limits,
            queue,
            policies,
            read_back: config.limits.clone(),
            max_stored_body: config
                .triggers
                .iter()
                .filter_map(|t| match &t.kind {
                    crate::config::Kind::Cron(c) => c.payload.as_ref().map(|p| p.len() as u64),
                    _ => None,
                })
                .fold(config.limits.max_async_body_bytes + 64 * 1024, u64::max),
        }
    }

    /// The function a target names right now: the config's own file for `LATEST` when the
    /// config has the function, else the deployed version its qualifier names.
    pub fn resolve(&self, target: &Target) -> Result<Arc<Function>, GatewayError> {
        if target.qualifier == "LATEST"
            && let Some(f) = self.runtime.function(&target.function)
        {
            return Ok(f.clone());
        }
        self.registry
            .as_ref()
            .and_then(|r| r.resolve(&target.function, &target.qualifier))
            .ok_or_else(|| {
                GatewayError::FunctionNotFound(format!(
                    "function '{}' qualifier '{}' is not deployed",
                    target.function, target.qualifier
                ))
            })
    }

    /// Runs an invocation now: resolve its target (404), admit it against the function's
    /// and the node's capacity (429/503, before any instance exists), set the headers the
    /// function sees, and run it in a fresh instance. All of that but waiting for the
    /// response is done when this is called; the future holds no part of the request (see
    /// [`crate::runtime::Function::invoke`]).
    pub fn run<B>(
        &self,
        inv: Invocation<B>,
    ) -> impl std::future::Future<Output = Result<Outcome, GatewayError>> + Send + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        use futures::TryFutureExt;
        // Not an async block: it would keep the `Result` it starts from beside the future it
        // awaits.
        match self.start(inv) {
            Ok(running) => futures::future::Either::Left(running.err_into()),
            Err(e) => futures::future::Either::Right(std::future::ready(Err(e))),
        }
    }

    fn start<B>(
        &self,
        mut inv: Invocation<B>,
    ) -> Result<
        impl std::future::Future<Output = Result<Outcome, crate::runtime::RuntimeError>> + Send + use<B>,
        GatewayError,
    >
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        use crate::trace::{self, Kind};
        let parent = inv.trace.take();
        let mut admit = trace::child("admit", Kind::Internal, parent.as_ref());
        let admitted = self.resolve(&inv.target).and_then(|function| {
            let admission = self
                .limits
                .admit(&function.name, function.config.max_concurrency.get())?;
            Ok((function, admission))
        });
        let (function, admission) = admitted.inspect_err(|e| admit.set_error(e.to_string()))?;
        drop(admit);
        inv.stamp();
        let mut run = trace::start("run", Kind::Internal, parent.as_ref());
        if let Some(ctx) = run.context() {
            // The function continues the trace from its run span.
            ctx.inject(inv.request.headers_mut());
        }
        if run.is_recording() {
            run.set("wasmgate.request_id", &inv.request_id);
            run.set("wasmgate.trigger", &inv.trigger);
            run.set("wasmgate.function", &inv.target.function);
            run.set("wasmgate.qualifier", &inv.target.qualifier);
        }
        // The runtime parents outbound calls on the run span and ends it when the guest is done.
        Ok(function.invoke(inv.request, inv.request_id, admission, run))
    }

    /// Makes an invocation durable (committed before this returns) and gives its task id.
    /// 409 for a reused id, 503 when the queue is full.
    pub async fn enqueue(
        &self,
        mut inv: Invocation<Bytes>,
        options: EnqueueOptions,
    ) -> Result<String, GatewayError> {
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| GatewayError::Internal("the async queue is not running".into()))?;
        inv.stamp();
        let id = options
            .task_id
            .unwrap_or_else(|| inv.request_id.to_string());
        // The task carries its trace in its stored `traceparent`, naming this span: its
        // attempts and callbacks are children of it, on whichever node and after restarts.
        let mut span =
            crate::trace::start("enqueue", crate::trace::Kind::Producer, inv.trace.as_ref());
        if let Some(ctx) = span.context() {
            ctx.inject(inv.request.headers_mut());
        }
        if let Some(link) = inv.request.extensions().get::<crate::trace::Link>() {
            span.link(&link.0);
        }
        if span.is_recording() {
            span.set("wasmgate.task_id", &id);
            span.set("wasmgate.request_id", &inv.request_id);
            span.set("wasmgate.trigger", &inv.trigger);
            span.set("wasmgate.function", &inv.target.function);
            span.set("wasmgate.qualifier", &inv.target.qualifier);
        }
        let invocation = StoredInvocation::from_invocation(&inv);
        let inv_trigger = inv.trigger.clone();
        let now = queue.now_ms();
        queue
            .submit(NewTask {
                id: id.clone(),
                invocation,
                body: inv.request.into_body().to_vec(),
                callback_url: options.callback_url,
                created_ms: now,
                due_ms: now + options.delay_ms.max(0),
                trigger_quota: self.policies.get(&*inv_trigger).and_then(|p| p.max_tasks),
                trigger_bytes_quota: self
                    .policies
                    .get(&*inv_trigger)
                    .and_then(|p| p.max_queue_bytes),
            })
            .await
            .inspect_err(|e| span.set_error(e.to_string()))?;
        Ok(id)
    }

    /// One attempt of a queued task: its stored target, admitted and run like any
    /// invocation, the response read (bounded) for the record and the callback.
    pub async fn attempt(&self, task: &Task) -> Attempt {
        let stored = &task.new.invocation;
        if let Err(why) = self.check_stored(task) {
            tracing::error!(task = %task.new.key(), "a stored task set aside: {why}");
            return refused(
                GatewayError::Internal(format!("the stored task is not valid: {why}")),
                &stored.request_id,
            );
        }
        let mut inv = match stored.to_invocation(
            Bytes::from(task.new.body.clone()),
            &task.new.id,
            task.attempts + 1,
        ) {
            Ok(inv) => inv,
            Err(e) => return refused(GatewayError::Internal(e), &stored.request_id),
        };
        // An attempt is a child of the span that enqueued the task (its stored traceparent).
        let mut span = crate::trace::start(
            "attempt",
            crate::trace::Kind::Consumer,
            crate::trace::Context::from_headers(inv.request.headers()).as_ref(),
        );
        inv.trace = span.context().cloned();
        if span.is_recording() {
            span.set("wasmgate.task_id", &task.new.id);
            span.set("wasmgate.attempt", task.attempts + 1);
            span.set("wasmgate.request_id", &stored.request_id);
            span.set("wasmgate.trigger", &stored.trigger);
            span.set("wasmgate.function", &stored.target.function);
            span.set("wasmgate.qualifier", &stored.target.qualifier);
        }
        let outcome = match self.run(inv).await {
            Ok(o) => o,
            Err(e) => {
                span.set_status(e.status().as_u16());
                span.set_error(e.to_string());
                return refused(e, &stored.request_id);
            }
        };
        span.set_status(outcome.response.status().as_u16());
        let (parts, body) = outcome.response.into_parts();
        match Limited::new(body, MAX_CALLBACK_BODY).collect().await {
            Ok(b) => Attempt::Answered {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body: b.to_bytes(),
            },
            Err(e) => refused(
                crate::runtime::RuntimeError::BadResponse(format!(
                    "reading the function's response failed: {e}"
                ))
                .into(),
                &stored.request_id,
            ),
        }
    }

    /// A task read back from the queue (a SQLite file, a NATS stream: either may hold what
    /// this node never wrote) is bounded like a request before anything is built from it:
    /// its body, its target URI and its headers within the limits a submission had to meet.
    fn check_stored(&self, task: &Task) -> Result<(), String> {
        let l = &self.read_back;
        let stored = &task.new.invocation;
        let body_limit = self.max_stored_body;
        if task.new.body.len() as u64 > body_limit {
            return Err(format!(
                "its body of {} bytes is over {body_limit}",
                task.new.body.len()
            ));
        }
        // The URI carries the checked authority besides the client's target.
        if stored.uri.len() > l.max_uri_bytes + 1024 {
            return Err(format!("its URI of {} bytes is too long", stored.uri.len()));
        }
        // The gateway adds its own headers to what the client sent, hence the room.
        let header_limit = l.max_header_bytes.saturating_mul(2) + 16 * 1024;
        let header_bytes: usize = stored.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > header_limit || stored.headers.len() > 1024 {
            return Err(format!(
                "its headers ({header_bytes} bytes) are over {header_limit}"
            ));
        }
        Ok(())
    }

    /// A trigger's async settings; `None` when the trigger does not exist.
    pub fn policy(&self, trigger: &str) -> Option<AsyncConfig> {
        self.policies.get(trigger).cloned()
    }

    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    pub fn queue(&self) -> Option<&Arc<Queue>> {
        self.queue.as_ref()
    }

    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

/// A refused or failed attempt as the task record and callback carry it: the status and
/// JSON body a client would have seen.
pub fn refused(e: GatewayError, request_id: &str) -> Attempt {
    if e.status() == http::StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(request_id, "internal error in an async task: {e}");
    }
    Attempt::Refused {
        status: e.status().as_u16(),
        capacity: e.is_capacity(),
        error: e.public_message(request_id),
        body: Bytes::from(e.body(request_id)),
    }
}
