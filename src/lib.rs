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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

impl Gateway {
    /// Starts the async workers (when the queue is open). They follow reloads and stop when
    /// the gateway drains.
    pub fn start_workers(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let queue = self.app().queue.clone()?;
        Some(tokio::spawn(queue::worker::run(self.clone(), queue)))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
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

/// The running gateway: the current [`App`] generation, swapped whole by a config reload.
///
/// Each request takes the generation current when it arrives and keeps it to the end, so a
/// reload never changes a request mid-flight; the old generation goes away with its last
/// request. Listener addresses and TLS are fixed at start; everything else (functions,
/// triggers, authentication, limits) comes from the reloaded file.
pub struct Gateway {
    current: RwLock<Arc<App>>,
    reloading: Mutex<()>,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(app: App) -> Arc<Gateway> {
        Arc::new(Gateway {
            current: RwLock::new(Arc::new(app)),
            reloading: Mutex::new(()),
            draining: AtomicBool::new(false),
        })
    }

    /// The current generation.
    pub fn app(&self) -> Arc<App> {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the config file and swaps in a new generation. A bad config is reported and
    /// the running generation stays.
    pub fn reload(&self) -> Result<()> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .map_err(|_| anyhow::anyhow!("reload lock poisoned"))?;
        let old = self.app();
        let config = Config::load(&old.config.path)?;
        let new = App::build_with(config, Some(&old))?;
        if self.draining.load(Ordering::SeqCst) {
            new.start_draining();
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        match self.current.write() {
            Ok(mut cur) => *cur = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        tracing::info!("configuration reloaded from {}", old.config.path.display());
        Ok(())
    }

    /// New requests get 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.app().start_draining();
    }
}

impl App {
    /// Builds everything a request needs: compiled functions, routes, authenticators.
    pub fn build(config: Config) -> Result<App> {
        Self::build_with(config, None)
    }

    /// Builds a generation; a reload passes the previous one so that the async queue (one
    /// writer per database) is shared rather than opened twice.
    pub fn build_with(config: Config, previous: Option<&App>) -> Result<App> {
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
        let reusable = previous
            .filter(|p| p.config.server.data_dir == config.server.data_dir)
            .and_then(|p| p.queue.clone());
        let queue = match reusable {
            Some(q) => Some(q),
            None if wants_queue => Some(Arc::new(Queue::open(
                &config.server.data_dir,
                &config.queue,
            )?)),
            None => None,
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
