//! wasmgate: an authenticated HTTP-trigger edge proxy that runs functions as WebAssembly
//! components.
//!
//! [`App`] is everything built before a listener opens (config, routes, authenticators,
//! compiled functions); [`App::handle`] runs one request through the pipeline of
//! [`pipeline`]. The [`server`] module only accepts connections and calls it.

// One audited exception: loading wasmtime's own compiled artifacts (registry.rs).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod registry;
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
use crate::registry::Registry;
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
    /// Deployed versions and aliases, opened with the admin listener (or when present).
    pub registry: Option<Registry>,
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
        let registry = if config.server.admin_listen.is_some()
            || config.server.data_dir.join("registry.db").exists()
        {
            Some(Registry::open(&config.server.data_dir, &config, &runtime)?)
        } else {
            None
        };
        for t in &triggers {
            let deployed = registry
                .as_ref()
                .and_then(|r| r.resolve(&t.config.function, &t.config.qualifier))
                .is_some();
            if t.function.is_none() && !deployed {
                warnings.push(format!(
                    "trigger '{}': function '{}' qualifier '{}' is not deployed; requests answer 404 FunctionNotFound until it is",
                    t.config.name, t.config.function, t.config.qualifier
                ));
            }
        }
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
            registry,
            config,
            triggers,
            router,
            runtime,
            draining: AtomicBool::new(false),
            warnings,
        })
    }

    /// The function a trigger runs right now: the config's file for `LATEST` when the config
    /// has the function, else the deployed version its qualifier names.
    pub fn resolve(&self, trigger: &Trigger) -> Result<Arc<Function>, error::GatewayError> {
        if let Some(f) = &trigger.function {
            return Ok(f.clone());
        }
        self.registry
            .as_ref()
            .and_then(|r| r.resolve(&trigger.config.function, &trigger.config.qualifier))
            .ok_or_else(|| {
                error::GatewayError::FunctionNotFound(format!(
                    "function '{}' qualifier '{}' is not deployed",
                    trigger.config.function, trigger.config.qualifier
                ))
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
