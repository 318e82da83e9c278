//! wasmgate: an authenticated HTTP-trigger edge proxy that runs functions as WebAssembly
//! components.
//!
//! [`App`] is everything built before a listener opens (config, routes, authenticators,
//! compiled functions); [`App::handle`] runs one request through the pipeline of
//! [`pipeline`]. The [`server`] module only accepts connections and calls it.

// Two audited exceptions: loading wasmtime's own compiled artifacts (runtime/artifacts.rs)
// and the global allocator (alloc.rs).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod auth;
pub mod body;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod dispatch;
pub mod error;
pub mod invocation;
pub mod kv;
pub mod log_writer;
pub mod metrics;
pub mod netguard;
pub mod pipeline;
pub mod queue;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod source_state;
pub mod sources;
pub mod supervisor;
pub mod text;
pub mod throttle;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;

use crate::auth::TriggerAuth;
use crate::config::{Config, ConfigError, Listener, TriggerConfig};
use crate::dispatch::Dispatcher;
use crate::invocation::Target;
use crate::queue::worker::{Attempt, Executor};
use crate::queue::{Clock, Queue, QueueError, SystemClock, Task};
use crate::registry::Registry;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::runtime::artifacts::Artifacts;
use crate::supervisor::Supervisor;
use crate::throttle::{Limits, RateLimit};

/// A trigger with everything it needs at request time.
#[derive(Debug)]
pub struct Trigger {
    pub config: TriggerConfig,
    /// `config.name`, shared by every invocation it makes.
    pub name: Arc<str>,
    pub auth: TriggerAuth,
    /// The function and qualifier its invocations target (`None` when the function is
    /// chosen per request or message: routes by name, topic routing, the event API).
    pub target: Option<Target>,
    pub rate_limit: Option<RateLimit>,
    /// Its request series, resolved once.
    pub series: crate::metrics::TriggerSeries,
    /// The gateway header values its invocations carry, built once.
    pub values: Arc<crate::invocation::TriggerValues>,
}

/// Where a request came in.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Listener,
    pub https: bool,
    /// The peer's IP address as text, formatted once a connection: `X-Forwarded-For`, the
    /// anonymous principal's id and the access line's peer are made from it.
    pub peer_ip: http::HeaderValue,
    /// The connection's read-ahead budget (`limits.connection_buffer_bytes`), shared by its
    /// requests; `None` where no server made one (the library used in-process).
    pub read_budget: Option<crate::body::ReadBudget>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, listener: Listener, https: bool) -> ConnInfo {
        let mut ip = String::with_capacity(39);
        crate::text::push_ip(&mut ip, peer.ip());
        ConnInfo {
            peer,
            listener,
            https,
            // An address is digits, dots, colons and hex: always a valid header value.
            peer_ip: http::HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            read_budget: None,
        }
    }

    /// The same connection, its requests sharing `budget` for read-ahead.
    pub fn with_read_budget(self, budget: crate::body::ReadBudget) -> ConnInfo {
        ConnInfo {
            read_budget: Some(budget),
            ..self
        }
    }

    /// [`ConnInfo::peer_ip`] as text.
    pub fn peer_ip(&self) -> &str {
        self.peer_ip.to_str().unwrap_or_default()
    }
}

/// How a generation is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Serving: the queue and registry are opened (created, migrated, recovered).
    Serve,
    /// `wasmgate check`: nothing in `data_dir` is created or written.
    Check,
}

/// The gateway, fully built: one configuration generation.
pub struct App {
    pub config: Config,
    pub triggers: Vec<Trigger>,
    pub router: Router<usize>,
    /// Resolves, admits and runs invocations (shares limits and queue across generations).
    pub dispatcher: Dispatcher,
    draining: AtomicBool,
    /// The admin listener's bound address (known once bound; shared by every generation).
    admin_bound: Arc<std::sync::OnceLock<SocketAddr>>,
    /// Warnings found while building (shown by `check`, logged at start).
    pub warnings: Vec<String>,
    /// Triggers whose function is not deployed yet: expected on a fresh node (the admin API
    /// brings it), so `serve` logs them as information and `check` as warnings.
    pub pending: Vec<String>,
}

/// A service a door attaches to the gateway, called with every new generation.
pub type Reconcile = fn(&Arc<Gateway>);

/// The running gateway: the current [`App`] generation, swapped whole by a config reload,
/// and the [`Supervisor`] of its background services.
///
/// Each request takes the generation current when it arrives and keeps it to the end, so a
/// reload never changes a request mid-flight; the old generation goes away with its last
/// request. Listener addresses, TLS and `data_dir` are fixed at start: a reload that changes
/// them is refused whole. Everything else (functions, triggers, authentication, limits)
/// comes from the reloaded file.
pub struct Gateway {
    current: RwLock<Arc<App>>,
    reloading: Mutex<()>,
    draining: AtomicBool,
    pub supervisor: Supervisor,
    /// The state of each event source (connecting, running, failed and why).
    pub sources: source_state::States,
    /// Services the doors attach (the event sources), reconciled with every generation.
    attached: Mutex<Vec<Reconcile>>,
}

impl Gateway {
    pub fn new(app: App) -> Arc<Gateway> {
        Arc::new(Gateway {
            current: RwLock::new(Arc::new(app)),
            reloading: Mutex::new(()),
            draining: AtomicBool::new(false),
            supervisor: Supervisor::new(),
            sources: source_state::States::default(),
            attached: Mutex::new(Vec::new()),
        })
    }

    /// Adds a service the doors provide (the event sources' `supervise`): called at every
    /// [`Gateway::supervise`], so it starts with the node and follows each reload. The
    /// core knows it only as this function.
    pub fn attach(&self, reconcile: Reconcile) {
        match self.attached.lock() {
            Ok(mut a) => a.push(reconcile),
            Err(p) => p.into_inner().push(reconcile),
        }
    }

    /// The current generation.
    pub fn app(&self) -> Arc<App> {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Starts (or, after a reload, reconciles) the background services the current
    /// generation needs: the rate-limit sweeper, the SIGHUP reloader, and the queue's
    /// workers whenever a queue is open.
    pub fn supervise(self: &Arc<Self>) {
        let app = self.app();
        let g = self.clone();
        self.supervisor
            .ensure("rate-limit-sweeper", 0, move |stop| {
                sweep_rate_limits(g, stop)
            });
        let g = self.clone();
        self.supervisor
            .ensure("reloader", 0, move |stop| reload_on_sighup(g, stop));
        match app.dispatcher.queue() {
            Some(q) => {
                let (g, q) = (self.clone(), q.clone());
                let key = Arc::as_ptr(&q) as usize as u64;
                let admin = app.admin_addr();
                self.supervisor.ensure("queue-workers", key, move |stop| {
                    queue::worker::run(g as Arc<dyn Executor>, q, admin, stop)
                });
            }
            None => self.supervisor.stop("queue-workers"),
        }
        let attached = match self.attached.lock() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for reconcile in attached {
            reconcile(self);
        }
    }

    /// Re-reads the config file and swaps in a new generation, then reconciles the
    /// background services. A bad config, or one that changes what is fixed at start, is
    /// refused with the reason and the running generation stays.
    pub fn reload(self: &Arc<Self>) -> Result<(), ConfigError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .map_err(|_| ConfigError("reload lock poisoned".into()))?;
        let old = self.app();
        let config = Config::load(&old.config.path).map_err(|e| ConfigError(format!("{e:#}")))?;
        fixed_at_start(&old.config, &config)?;
        let new = App::build_with(config, Some(&old), Mode::Serve, Arc::new(SystemClock))
            .map_err(|e| ConfigError(format!("{e:#}")))?;
        if self.draining.load(Ordering::SeqCst) {
            new.start_draining();
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        for p in &new.pending {
            tracing::info!("{p}");
        }
        new.apply_limits();
        match self.current.write() {
            Ok(mut cur) => *cur = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        if !self.is_draining() {
            self.supervise();
        }
        tracing::info!("configuration reloaded from {}", old.config.path.display());
        Ok(())
    }

    /// New requests get 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.app().start_draining();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The queue's workers run each task on the generation current when its attempt starts.
impl Executor for Gateway {
    fn policy(&self, trigger: &str) -> Option<config::AsyncConfig> {
        self.app().dispatcher.policy(trigger)
    }

    fn attempt(&self, task: &Task) -> BoxFuture<'static, Attempt> {
        let app = self.app();
        let task = task.clone();
        Box::pin(async move { app.dispatcher.attempt(&task).await })
    }

    fn refused(&self, error: QueueError, request_id: &str) -> Attempt {
        dispatch::refused(error.into(), request_id)
    }
}

/// What a reload may not change: listeners and TLS are bound at start, and `data_dir` holds
/// the queue and registry that in-flight work uses.
fn fixed_at_start(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let (o, n) = (&old.server, &new.server);
    let changed = |key: &str, a: String, b: String| -> Result<(), ConfigError> {
        if a == b {
            Ok(())
        } else {
            Err(ConfigError(format!(
                "{}: key `server.{key}` changed from {a} to {b}; it is fixed while the node runs, so nothing was reloaded (restart to apply it)",
                new.path.display()
            )))
        }
    };
    changed("listen", o.listen.to_string(), n.listen.to_string())?;
    changed(
        "internal_listen",
        format!("{:?}", o.internal_listen),
        format!("{:?}", n.internal_listen),
    )?;
    changed(
        "admin_listen",
        format!("{:?}", o.admin_listen),
        format!("{:?}", n.admin_listen),
    )?;
    changed(
        "tls",
        format!("{:?}", o.tls.as_ref().map(|t| (&t.cert, &t.key))),
        format!("{:?}", n.tls.as_ref().map(|t| (&t.cert, &t.key))),
    )?;
    changed(
        "data_dir",
        o.data_dir.display().to_string(),
        n.data_dir.display().to_string(),
    )?;
    changed(
        "artifact_key_file",
        o.artifact_key_file.display().to_string(),
        n.artifact_key_file.display().to_string(),
    )?;
    if old.cluster != new.cluster {
        return Err(ConfigError(format!(
            "{}: table `[cluster]` changed; it is fixed while the node runs, so nothing was reloaded (restart to apply it)",
            new.path.display()
        )));
    }
    Ok(())
}

/// Rate-limit state is swept while serving so that many distinct keys cannot grow it
/// without bound.
async fn sweep_rate_limits(gateway: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.app().sweep_rate_limits(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// SIGHUP re-reads the config; a bad config is logged and the running one stays. The
/// handler is installed when this is called (not when the task first runs), so a SIGHUP
/// right after start-up never takes the default action (terminate).
fn reload_on_sighup(
    gateway: Arc<Gateway>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    reload_loop(gateway, hup, stop)
}

async fn reload_loop(
    gateway: Arc<Gateway>,
    hup: std::io::Result<tokio::signal::unix::Signal>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /-/reload");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let g = gateway.clone();
        match tokio::task::spawn_blocking(move || g.reload()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("reload failed, the running configuration stays: {e}"),
            Err(e) => tracing::error!("reload failed: {e}"),
        }
    }
}

impl App {
    /// Builds everything a request needs: compiled functions, routes, authenticators, and
    /// (when configured) the durable queue and the registry of deployed versions.
    pub fn build(config: Config) -> Result<App> {
        Self::build_with_clock(config, Arc::new(SystemClock))
    }

    /// [`App::build`] with the clock the queue and its workers read (tests move a fake one).
    pub fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<App> {
        let app = Self::build_with(config, None, Mode::Serve, clock)?;
        app.apply_limits();
        Ok(app)
    }

    /// Validates and compiles like [`App::build`] but writes nothing: the queue is not
    /// opened, and deployed versions are read (if any) without creating, migrating or
    /// caching anything, so `check` is safe beside a running node.
    pub fn check(config: Config) -> Result<App> {
        Self::build_with(config, None, Mode::Check, Arc::new(SystemClock))
    }

    /// Builds a generation; a reload passes the previous one, whose queue and limits are
    /// shared rather than opened or created twice.
    fn build_with(
        config: Config,
        previous: Option<&App>,
        mode: Mode,
        clock: Arc<dyn Clock>,
    ) -> Result<App> {
        let mut warnings = Vec::new();
        let data_dir = &config.server.data_dir;
        let wants_registry = match mode {
            Mode::Serve => {
                config.server.admin_listen.is_some() || data_dir.join("registry.db").exists()
            }
            Mode::Check => data_dir.join("registry.db").exists(),
        };
        // The compiled cache serves the config's functions and deployed versions alike;
        // `check` reads it without creating or writing anything.
        let artifacts = match Artifacts::open(
            data_dir.join("functions"),
            &config.server.artifact_key_file,
            mode == Mode::Serve,
        ) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) if wants_registry && mode == Mode::Serve => return Err(e),
            Err(e) => {
                warnings.push(format!(
                    "the compiled cache cannot be used, functions are compiled at every start: {e:#}"
                ));
                None
            }
        };
        // Like the queue, the buckets' backend is opened once and kept across reloads.
        let stores = match mode {
            Mode::Serve => kv::Stores::open(
                data_dir,
                &config.buckets,
                config.cluster.as_ref(),
                previous.map(|p| &**p.dispatcher.runtime().stores()),
            )
            .context("key-value buckets")?,
            Mode::Check => kv::Stores::closed(&config.buckets),
        };
        let runtime = Runtime::new(&config, artifacts.as_deref(), Arc::new(stores))?;
        let mut triggers = Vec::new();
        let mut router = Router::new();
        for (i, t) in config.triggers.iter().enumerate() {
            let mut auth = TriggerAuth::build(t)
                .with_context(|| format!("{}: trigger '{}'", config.path.display(), t.name))?;
            // A reload keeps the keys the previous generation fetched for the same source
            // (the trigger does not wait for a first fetch again, and one refresher runs).
            if let Some(old) =
                previous.and_then(|p| p.triggers.iter().find(|o| o.config.name == t.name))
            {
                auth.adopt(&old.auth);
            }
            for prefix in t.prefixes() {
                router.insert(t.host.as_deref(), prefix, i);
            }
            let target = t.function.as_ref().map(|f| Target {
                function: f.clone(),
                qualifier: t.qualifier.clone(),
            });
            let ok_auth = if auth.is_anonymous() {
                "anonymous"
            } else {
                "ok"
            };
            triggers.push(Trigger {
                name: t.name.as_str().into(),
                config: t.clone(),
                auth,
                values: Arc::new(crate::invocation::TriggerValues::new(
                    &t.name,
                    target.as_ref(),
                )),
                target,
                rate_limit: t.rate_limit.as_ref().map(|r| RateLimit::new(&t.name, r)),
                series: crate::metrics::TriggerSeries::new(&t.name, ok_auth),
            });
        }
        let registry = match (mode, artifacts) {
            (Mode::Serve, Some(a)) if wants_registry => {
                let previous = previous.and_then(|p| p.dispatcher.registry());
                Some(Registry::open(data_dir, &config, &runtime, a, previous)?)
            }
            (Mode::Check, Some(a)) if wants_registry => {
                Registry::open_read_only(data_dir, &config, &runtime, a).unwrap_or_else(|e| {
                    warnings.push(format!("deployed versions could not be read: {e:#}"));
                    None
                })
            }
            _ => None,
        };
        // Every source but a sync HTTP request goes through the queue.
        let wants_queue = config.triggers.iter().any(|t| {
            !matches!(t.kind, config::Kind::Http) || t.async_.as_ref().is_some_and(|a| a.enabled)
        });
        // Once open, the queue stays open across reloads: its tasks were promised a run.
        let queue = match previous.and_then(|p| p.dispatcher.queue().cloned()) {
            Some(q) => Some(q),
            None if wants_queue && mode == Mode::Serve => {
                let qualifiers: std::collections::HashMap<String, String> = config
                    .triggers
                    .iter()
                    .map(|t| (t.name.clone(), t.qualifier.clone()))
                    .collect();
                Some(Arc::new(Queue::open(
                    data_dir,
                    &config.queue,
                    config.cluster.as_ref(),
                    clock,
                    &|t| {
                        qualifiers
                            .get(t)
                            .cloned()
                            .unwrap_or_else(|| "LATEST".into())
                    },
                )?))
            }
            None => None,
        };
        let limits = match previous {
            Some(p) => p.dispatcher.limits().clone(),
            None => Limits::new(config.limits.max_in_flight.get()),
        };
        let dispatcher = Dispatcher::new(&config, runtime, registry, limits, queue);
        let mut pending = Vec::new();
        for t in &triggers {
            if let Some(target) = &t.target
                && dispatcher.resolve(target).is_err()
            {
                pending.push(format!(
                    "trigger '{}': function '{}' qualifier '{}' is not deployed; requests answer 404 FunctionNotFound until it is",
                    t.config.name, target.function, target.qualifier
                ));
            }
        }
        warnings.extend(config::reach::reach_warnings(&config));
        // Built whole: what keeps itself up to date starts now (a `jwks_url` /
        // `oidc_issuer` trigger's key fetches; kept ones already run). `check` fetches nothing.
        if mode == Mode::Serve {
            for t in &triggers {
                t.auth.start();
            }
            crate::trace::install(config.tracing.as_ref());
        }
        Ok(App {
            dispatcher,
            config,
            triggers,
            router,
            draining: AtomicBool::new(false),
            admin_bound: previous.map(|p| p.admin_bound.clone()).unwrap_or_default(),
            warnings,
            pending,
        })
    }

    /// Sizes the shared node and function limits to this generation's configuration.
    fn apply_limits(&self) {
        let functions: Vec<(String, usize)> = self
            .config
            .functions
            .iter()
            .map(|f| (f.name.clone(), f.max_concurrency.get()))
            .collect();
        self.dispatcher
            .limits()
            .resize(self.config.limits.max_in_flight.get(), &functions);
    }

    /// Records where the admin listener is bound (its configured port may be 0).
    pub fn set_admin_addr(&self, addr: SocketAddr) {
        let _ = self.admin_bound.set(addr);
    }

    /// The admin listener's address: as bound, else as configured. No callback may reach it.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_bound
            .get()
            .copied()
            .or(self.config.server.admin_listen)
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
        for t in self.triggers.iter().filter(|t| t.config.kind.is_routed()) {
            let c = &t.config;
            let methods: Vec<&str> = c.methods.iter().map(|m| m.as_str()).collect();
            let path = match &c.routes {
                Some(r) => match &r.async_path {
                    Some(a) => format!("{} (async {})", r.path.text, a.text),
                    None => r.path.text.clone(),
                },
                None => c.path.clone(),
            };
            out.push_str(&format!(
                "{:<20} {:<20} {:<24} {:<34} {:<10} {}{}{}\n",
                c.name,
                c.host.as_deref().unwrap_or("*"),
                path,
                methods.join(","),
                c.auth.scheme(),
                c.function_label(),
                if matches!(c.kind, config::Kind::Event) {
                    " (event API)"
                } else {
                    ""
                },
                if c.disable_internet {
                    " (internal only)"
                } else {
                    ""
                }
            ));
        }
        out.push_str(&config::reach::source_table(&self.config));
        out
    }
}
