//! wasmgate: an authenticated HTTP-trigger edge proxy that runs functions as WebAssembly
//! components.
//!
//! [`App`] is everything built before a listener opens (config, routes, authenticators,
//! compiled functions); [`App::handle`] runs one request through the pipeline of
//! [`pipeline`]. The [`server`] module only accepts connections and calls it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod router;
pub mod runtime;
pub mod server;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::auth::TriggerAuth;
use crate::config::{Config, Listener, TriggerConfig};
use crate::queue::Queue;
use crate::router::Router;
use crate::runtime::{Function, Runtime};
use crate::throttle::{NodeLimiter, RateLimit};

/// A trigger with everything it needs at request time.
#[derive(Debug)]
pub struct Trigger {
    pub config: TriggerConfig,
    pub auth: TriggerAuth,
    /// `None` when the function or qualifier names nothing deployed (=> 404 FunctionNotFound).
    pub function: Option<Arc<Function>>,
    pub rate_limit: Option<RateLimit>,
}

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Listener,
    pub https: bool,
}

/// The gateway, fully built.
pub struct App {
    pub config: Config,
    pub triggers: Vec<Trigger>,
    pub router: Router<usize>,
    pub runtime: Runtime,
    pub node: NodeLimiter,
    /// The durable async queue, opened when a trigger enables async invocation.
    pub queue: Option<Arc<Queue>>,
    draining: AtomicBool,
    /// Warnings found while building (shown by `check`).
    pub warnings: Vec<String>,
}

impl App {
    /// Builds everything a request needs: compiled functions, routes, authenticators.
    pub fn build(config: Config) -> Result<App> {
        let runtime = Runtime::new(&config)?;
        let mut warnings = Vec::new();
        let mut triggers = Vec::new();
        let mut router = Router::new();
        for (i, t) in config.triggers.iter().enumerate() {
            let auth = TriggerAuth::build(t)
                .with_context(|| format!("{}: trigger '{}'", config.path.display(), t.name))?;
            let function = if t.qualifier == "LATEST" {
                runtime.function(&t.function).cloned()
            } else {
                None
            };
            if function.is_none() {
                warnings.push(format!(
                    "trigger '{}': function '{}' qualifier '{}' is not deployed; requests answer 404 FunctionNotFound until it is",
                    t.name, t.function, t.qualifier
                ));
            }
            router.insert(t.host.as_deref(), &t.path, i);
            triggers.push(Trigger {
                config: t.clone(),
                auth,
                function,
                rate_limit: t.rate_limit.as_ref().map(|r| RateLimit::new(&t.name, r)),
            });
        }
        let wants_queue = config
            .triggers
            .iter()
            .any(|t| t.async_.as_ref().is_some_and(|a| a.enabled));
        let queue = if wants_queue {
            Some(Arc::new(Queue::open(
                &config.server.data_dir,
                &config.queue,
            )?))
        } else {
            None
        };
        Ok(App {
            node: NodeLimiter::new(config.limits.max_in_flight.get()),
            queue,
            config,
            triggers,
            router,
            runtime,
            draining: AtomicBool::new(false),
            warnings,
        })
    }

    /// Starts the async workers (when the queue is open). They stop when the app drains.
    pub fn start_workers(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let queue = self.queue.clone()?;
        Some(tokio::spawn(queue::worker::run(self.clone(), queue)))
    }

    /// From now on new requests are refused with 503 while in-flight ones finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drops rate-limit state for keys whose buckets have refilled (see [`RateLimit::sweep`]).
    pub fn sweep_rate_limits(&self) {
        for t in &self.triggers {
            if let Some(r) = &t.rate_limit {
                r.sweep();
            }
        }
    }

    /// The route table, one line per trigger (for `wasmgate check`).
    pub fn route_table(&self) -> String {
        let mut out = format!(
            "{:<20} {:<20} {:<24} {:<34} {:<10} {}\n",
            "TRIGGER", "HOST", "PATH", "METHODS", "AUTH", "FUNCTION"
        );
        for t in &self.triggers {
            let c = &t.config;
            let methods: Vec<&str> = c.methods.iter().map(|m| m.as_str()).collect();
            out.push_str(&format!(
                "{:<20} {:<20} {:<24} {:<34} {:<10} {}:{}{}\n",
                c.name,
                c.host.as_deref().unwrap_or("*"),
                c.path,
                methods.join(","),
                c.auth.scheme(),
                c.function,
                c.qualifier,
                if c.disable_internet {
                    " (internal only)"
                } else {
                    ""
                }
            ));
        }
        out
    }
}
