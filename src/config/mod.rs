//! Configuration: `wasmgate.toml` parsed ([`raw`]) and validated into typed values.
//!
//! Validation happens once, at load; everything downstream relies on the invariants here
//! (non-zero limits, valid names, resolved secrets, paths relative to the config file).
//! Every error names the file, the key and the value at fault.

pub mod kinds;
pub mod raw;
pub mod reach;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

pub use kinds::{
    BrokerConfig, CorsConfig, CronConfig, Exposed, Kind, NameRoutes, RouteTemplate, TopicMatch,
};
use raw::RawConfig;

/// Creates `path` (and missing parents) readable by this user only (0700): `data_dir`
/// holds queued requests and deployed code.
/// An existing directory that group or others may write is refused: whoever can write there
/// can swap the queue, the registry or a compiled artifact.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = std::fs::metadata(path)?.mode();
    if mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by group or others (mode {:o}); make it private, e.g. chmod 700",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// A configuration that cannot be applied (a reload that is refused). Start-up and `check`
/// report errors through `anyhow` with the file, key and value; this is what the admin API
/// answers 400 with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The seven methods a trigger allows when `methods` is omitted.
pub const ALL_METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// `[cluster]`: the queue on NATS JetStream, shared by every node pointed at it.
    pub cluster: Option<ClusterConfig>,
    /// `[tracing]`: spans exported over OTLP (SPEC section 9); `None`: no tracing at all.
    pub tracing: Option<TracingConfig>,
    pub functions: Vec<FunctionConfig>,
    pub triggers: Vec<TriggerConfig>,
    /// `[[bucket]]`: key-value buckets functions may share (SPEC section 5.1).
    pub buckets: Vec<BucketConfig>,
}

/// `[[bucket]]` (SPEC section 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    pub name: String,
    /// Keys plus values held, in bytes; a write past it fails whole.
    pub max_bytes: u64,
    /// One value, in bytes.
    pub max_value_bytes: u64,
}

/// `[tracing]` (SPEC section 9).
#[derive(Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans go: `{otlp_endpoint}/v1/traces` (OTLP over HTTP, protobuf), or the URL
    /// itself when it already ends in `/v1/traces`.
    pub traces_url: String,
    /// The share of new traces recorded, 0.0 to 1.0, decided on the trace id.
    pub sample_ratio: f64,
    pub service_name: String,
    /// Headers sent with every export (the collector's credentials): never printed.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TracingConfig")
            .field("traces_url", &self.traces_url)
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .field("headers", &names)
            .finish()
    }
}

/// `[cluster]` (SPEC section 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `nats://host:port` or `tls://host:port` (several separated by commas).
    pub nats: String,
    pub credentials: Option<NatsCredentials>,
    /// Trust for `tls://` servers.
    pub tls_ca: Option<PathBuf>,
    /// JetStream replicas of the task stream and the task bucket.
    pub replicas: usize,
    /// How long a task may go without a sign of life from its runner before another node
    /// takes it (runners send one every third of it).
    pub ack_wait_ms: u64,
}

/// How a node proves itself to NATS (`credentials_env`).
#[derive(Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    /// A `.creds` file (JWT and NKey seed).
    File(PathBuf),
    UserPassword(String, String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsCredentials::File(p) => write!(f, "File({})", p.display()),
            NatsCredentials::UserPassword(u, _) => write!(f, "UserPassword({u}, <redacted>)"),
        }
    }
}

/// The durable async queue (`[queue]`).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Concurrent submissions share one transaction and one fsync.
    pub group_commit: bool,
    /// Async executions at once (they also hold node permits).
    pub workers: NonZeroUsize,
    /// Finished tasks are deleted after this long.
    pub retention_s: u64,
    /// Tasks waiting to run at most; over => 503 on submission.
    pub max_tasks: u64,
    /// Bytes the open tasks may hold (bodies and stored requests); over => 503.
    pub max_queue_bytes: u64,
    /// Callback POSTs in flight at once on a node (they never hold an execution slot).
    pub callback_concurrency: NonZeroUsize,
}

/// A trigger's `async` table.
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    pub enabled: bool,
    pub max_retries: u32,
    pub max_event_age_s: u64,
    /// Open tasks this trigger may hold at most (a quota within `[queue] max_tasks`).
    pub max_tasks: Option<u64>,
    /// Bytes this trigger's open tasks may hold at most (default: a quarter of
    /// `[queue] max_queue_bytes`).
    pub max_queue_bytes: Option<u64>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// Lowercase `host` or `host:port` entries an `X-Callback-Url` may name.
    pub callback_hosts: Vec<String>,
    /// Any answer outside 2xx is a failed attempt (event deliveries), not only 5xx.
    pub require_2xx: bool,
}

impl Default for AsyncConfig {
    /// A trigger without an `async` table: no async requests from clients, and the SPEC
    /// defaults for any task that names it.
    fn default() -> Self {
        AsyncConfig {
            enabled: false,
            max_retries: 3,
            max_event_age_s: 86_400,
            max_tasks: None,
            max_queue_bytes: None,
            on_success: None,
            on_failure: None,
            callback_hosts: Vec::new(),
            require_2xx: false,
        }
    }
}

/// `[queue] workers` when the config does not set it (and `max_in_flight` allows it).
const DEFAULT_WORKERS: NonZeroUsize = NonZeroUsize::new(64).expect("non-zero");

/// What `{:?}` shows in place of a secret.
const REDACTED: &str = "<redacted>";

/// The largest `max_value_bytes` a bucket may have (a JetStream message's default limit).
pub const MAX_VALUE_BYTES: u64 = 1 << 20;

#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub internal_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub data_dir: PathBuf,
    /// The key that authenticates compiled artifacts; outside `data_dir` (default
    /// `<data_dir>.key`).
    pub artifact_key_file: PathBuf,
    pub drain_timeout_ms: u64,
    /// After SIGTERM, how long the listeners keep answering (503, `/readyz` 503) before
    /// they close, so a load balancer sees the node leave.
    pub drain_grace_ms: u64,
}

impl std::fmt::Debug for ServerConfig {
    /// Everything but the admin token's value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("internal_listen", &self.internal_listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| REDACTED))
            .field("data_dir", &self.data_dir)
            .field("artifact_key_file", &self.artifact_key_file)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("drain_grace_ms", &self.drain_grace_ms)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Node-wide limits (SPEC section 2, `[limits]`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub max_async_body_bytes: u64,
    pub max_in_flight: NonZeroUsize,
    pub max_connections: NonZeroUsize,
    pub header_read_timeout_ms: NonZeroU64,
    /// Longest pause between two chunks of a request body => 408.
    pub body_read_timeout_ms: NonZeroU64,
    /// Bodies up to this many bytes are read before a function slot is taken.
    pub body_buffer_bytes: usize,
    /// Open connections per listener from one client (IPv4 address or IPv6 /64).
    pub max_connections_per_ip: NonZeroUsize,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout_ms: NonZeroU64,
    /// From a request's head to the last byte of its body => 408.
    pub request_timeout_ms: NonZeroU64,
    /// Longest time a response may wait for the client to take bytes (TCP window, HTTP/2
    /// flow control) before its connection is closed.
    pub send_timeout_ms: NonZeroU64,
    /// Bytes of request bodies one connection's requests may hold read ahead of their
    /// functions, together (HTTP/2 streams share it).
    pub connection_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8192,
            max_uri_bytes: 4096,
            max_body_bytes: 32 * 1024 * 1024,
            max_async_body_bytes: 128 * 1024,
            max_in_flight: NonZeroUsize::new(1024).expect("non-zero"),
            max_connections: NonZeroUsize::new(10_000).expect("non-zero"),
            header_read_timeout_ms: NonZeroU64::new(10_000).expect("non-zero"),
            body_read_timeout_ms: NonZeroU64::new(10_000).expect("non-zero"),
            body_buffer_bytes: 1 << 20,
            max_connections_per_ip: NonZeroUsize::new(256).expect("non-zero"),
            idle_timeout_ms: NonZeroU64::new(60_000).expect("non-zero"),
            request_timeout_ms: NonZeroU64::new(60_000).expect("non-zero"),
            send_timeout_ms: NonZeroU64::new(30_000).expect("non-zero"),
            connection_buffer_bytes: 4 << 20,
        }
    }
}

#[derive(Clone)]
pub struct FunctionConfig {
    /// The function's id: its name in namespace `default`, else `name.namespace`.
    pub name: String,
    pub namespace: String,
    /// Broker topics it receives from triggers without `function` (topic routing).
    pub topics: Vec<String>,
    /// Event types it receives from the event API (`*` at the end matches a suffix).
    pub events: Vec<String>,
    pub wasm: PathBuf,
    pub memory_mb: NonZeroU32,
    pub timeout_ms: NonZeroU64,
    pub max_concurrency: NonZeroUsize,
    pub env: Vec<(String, String)>,
    pub outbound_hosts: Vec<String>,
    /// Buckets the guest may open with wasi:keyvalue (each one a declared `[[bucket]]`).
    pub keyvalue: Vec<String>,
    /// wasi:config/store values: `variables`, then `variables_env` read from the
    /// environment. `secret` marks the second kind: never printed.
    pub variables: Vec<Variable>,
}

/// One wasi:config/store value of a function.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    /// Read from the gateway's environment (`variables_env`): a secret.
    pub secret: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret {
            REDACTED
        } else {
            self.value.as_str()
        };
        write!(f, "{}={value:?}", self.key)
    }
}

impl std::fmt::Debug for FunctionConfig {
    /// Everything but the env values (often API keys): their names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, _)| (k.as_str(), REDACTED))
            .collect();
        f.debug_struct("FunctionConfig")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("topics", &self.topics)
            .field("events", &self.events)
            .field("wasm", &self.wasm)
            .field("memory_mb", &self.memory_mb)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_concurrency", &self.max_concurrency)
            .field("env", &env)
            .field("outbound_hosts", &self.outbound_hosts)
            .field("keyvalue", &self.keyvalue)
            .field("variables", &self.variables)
            .finish()
    }
}

/// Which listener a trigger is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Internal,
    Admin,
}

#[derive(Debug, Clone)]
pub struct TriggerConfig {
    pub name: String,
    pub kind: Kind,
    /// The function it invokes; `None` for routes by name, topic routing and the event API.
    pub function: Option<String>,
    pub qualifier: String,
    /// Route prefix, always starting with `/`, never ending with `/` unless it is `/`
    /// (for routes by name: the literal part of the template before its first variable).
    pub path: String,
    /// Routes by function name (SPEC section 8.4).
    pub routes: Option<NameRoutes>,
    /// Topic routing: only functions in this namespace are reached.
    pub namespace: Option<String>,
    pub topic_match: TopicMatch,
    /// Lowercase host without port.
    pub host: Option<String>,
    pub methods: Vec<http::Method>,
    pub auth: AuthConfig,
    pub disable_internet: bool,
    pub pass_credentials: bool,
    pub rate_limit: Option<RateLimitConfig>,
    pub async_: Option<AsyncConfig>,
    /// Browser cross-origin access (preflights answered by the gateway).
    pub cors: Option<CorsConfig>,
}

impl TriggerConfig {
    /// Every route prefix the trigger is reached on (none for unrouted kinds).
    pub fn prefixes(&self) -> Vec<&str> {
        if !self.kind.is_routed() {
            return Vec::new();
        }
        let mut out = vec![self.path.as_str()];
        if let Some(a) = self.routes.as_ref().and_then(|r| r.async_path.as_ref())
            && a.prefix != self.path
        {
            out.push(a.prefix.as_str());
        }
        out
    }

    /// The function it reaches, for `check` and the route table.
    pub fn function_label(&self) -> String {
        match (&self.function, &self.routes, &self.kind) {
            (Some(f), _, _) => format!("{f}:{}", self.qualifier),
            (None, Some(r), _) => match &r.functions {
                Exposed::All => format!("{{function}}:{} (all)", self.qualifier),
                Exposed::Only(l) => format!("{{function}}:{} ({})", self.qualifier, l.join(",")),
            },
            (None, None, Kind::Event) => "subscribers of the event type".to_string(),
            (None, None, _) => "functions whose topics match".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKey {
    Principal,
    Ip,
    Trigger,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub key: RateLimitKey,
}

/// A trigger's authentication, secrets resolved.
#[derive(Clone)]
pub enum AuthConfig {
    Anonymous,
    Signature {
        keys: Vec<(String, String)>,
        window_s: u64,
    },
    Basic {
        users: Vec<(String, String)>,
    },
    Jwt(Box<JwtConfig>),
    Bearer {
        /// (name, token); disabled tokens are dropped at load.
        tokens: Vec<(String, String)>,
    },
}

impl AuthConfig {
    pub fn scheme(&self) -> &'static str {
        match self {
            AuthConfig::Anonymous => "anonymous",
            AuthConfig::Signature { .. } => "signature",
            AuthConfig::Basic { .. } => "basic",
            AuthConfig::Jwt(_) => "jwt",
            AuthConfig::Bearer { .. } => "bearer",
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    // Secrets never reach a log line, even through `{:?}`: key ids, user and token names
    // and the settings, never a secret, password or token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs.iter().map(|(name, _)| name.clone()).collect()
        };
        match self {
            AuthConfig::Anonymous => f.write_str("anonymous"),
            AuthConfig::Signature { keys, window_s } => f
                .debug_struct("Signature")
                .field("keys", &names(keys))
                .field("window_s", window_s)
                .finish(),
            AuthConfig::Basic { users } => f
                .debug_struct("Basic")
                .field("users", &names(users))
                .finish(),
            AuthConfig::Jwt(jwt) => f.debug_tuple("Jwt").field(jwt).finish(),
            AuthConfig::Bearer { tokens } => f
                .debug_struct("Bearer")
                .field("tokens", &names(tokens))
                .finish(),
        }
    }
}

/// Where a `jwt` trigger's keys come from (SPEC section 4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks_file`: read at start and at every reload.
    File(PathBuf),
    /// `jwks_url`: fetched, cached and refreshed.
    Url(String),
    /// `oidc_issuer`: OpenID Connect discovery, then as `jwks_url`.
    Issuer(String),
}

/// `qualifier_by_claim`: the qualifier a verified claim's value picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifierByClaim {
    pub claim: String,
    pub map: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub source: KeySource,
    /// A PEM file of CAs trusted for the key fetches, beside the Web PKI roots.
    pub jwks_ca: Option<PathBuf>,
    /// A fetched set's life when its answer has no `Cache-Control: max-age`.
    pub jwks_refresh_s: u64,
    /// How long the last good set is used after refreshes fail.
    pub jwks_stale_s: u64,
    pub qualifier_by_claim: Option<QualifierByClaim>,
    /// Empty only for `oidc_issuer`: then the issuer's document says.
    pub algorithms: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway_s: u64,
    pub token_lookup: String,
    pub claim_pass_by: String,
    pub whitelist: Vec<String>,
    pub blacklist: Vec<String>,
    /// How long a verified token is remembered at most (0: verify every request).
    pub cache_ttl_s: u64,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        Self::parse(&text, path, &|k| std::env::var(k).ok())
    }

    /// Parses and validates config text; `env` resolves `*_env` secrets (injected for tests).
    pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            anyhow!(
                "{}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', "\n  ")
            )
        })?;
        validate(raw, path, env).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    pub fn function(&self, name: &str) -> Option<&FunctionConfig> {
        self.functions.iter().find(|f| f.name == name)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr> {
    value
        .parse()
        .map_err(|_| anyhow!("key `{key}`: '{value}' is not an address like 127.0.0.1:8443"))
}

fn non_zero(key: &str, value: u64) -> Result<NonZeroU64> {
    NonZeroU64::new(value).ok_or_else(|| anyhow!("key `{key}`: must be greater than 0"))
}

/// Function and trigger names: `[a-z0-9-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a configured key URL without fetching it (`check` and start-up): `https://`, or
/// `http://` to a loopback address.
pub fn check_key_url(what: &str, url: &str) -> Result<()> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| anyhow!("{what}: '{url}' is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow!("{what}: '{url}' has no host"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => bail!("{what}: '{url}': plain http is allowed only to a loopback address"),
        other => bail!("{what}: '{url}': scheme '{other}' is not https"),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!("{what}: '{url}': credentials in the URL are not allowed");
    }
    Ok(())
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `alg` is a JWT algorithm verified with a public key (what a key set fetched from
/// an issuer can verify: not `none`, not HMAC).
pub fn is_public_key_algorithm(alg: &str) -> bool {
    use jsonwebtoken::Algorithm::*;
    alg.parse::<jsonwebtoken::Algorithm>()
        .is_ok_and(|a| !matches!(a, HS256 | HS384 | HS512))
}

/// A qualifier as a trigger may name one: `LATEST`, a version number or an alias
/// (`[A-Za-z0-9_-]{1,64}`).
pub fn valid_qualifier(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 64
        && q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Resolves a secret given inline or by environment variable name.
fn secret(
    what: &str,
    inline: Option<String>,
    env_name: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    match (inline, env_name) {
        (Some(_), Some(_)) => bail!("{what}: give the secret inline or by `*_env`, not both"),
        (Some(s), None) => Ok(s),
        (None, Some(var)) => {
            env(&var).ok_or_else(|| anyhow!("{what}: environment variable '{var}' is not set"))
        }
        (None, None) => bail!("{what}: a secret is required (inline or `*_env`)"),
    }
}

fn validate(raw: RawConfig, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let rel = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let s = raw.server;
    let admin_token = match (s.admin_token, s.admin_token_env) {
        (None, None) => None,
        (inline, var) => Some(secret("[server] admin_token", inline, var, env)?),
    };
    let server = ServerConfig {
        listen: parse_addr("server.listen", &s.listen)?,
        tls: s.tls.map(|t| TlsConfig {
            cert: rel(&t.cert),
            key: rel(&t.key),
        }),
        internal_listen: s
            .internal_listen
            .as_deref()
            .map(|v| parse_addr("server.internal_listen", v))
            .transpose()?,
        admin_listen: s
            .admin_listen
            .as_deref()
            .map(|v| parse_addr("server.admin_listen", v))
            .transpose()?,
        admin_token,
        data_dir: rel(s.data_dir.as_deref().unwrap_or("data")),
        artifact_key_file: match s.artifact_key_file.as_deref() {
            Some(f) => rel(f),
            None => {
                let mut key = rel(s.data_dir.as_deref().unwrap_or("data"))
                    .as_os_str()
                    .to_owned();
                key.push(".key");
                PathBuf::from(key)
            }
        },
        drain_timeout_ms: s.drain_timeout_ms.unwrap_or(30_000),
        drain_grace_ms: s.drain_grace_ms.unwrap_or(0),
    };

    if let Some(addr) = server.admin_listen
        && !addr.ip().is_loopback()
        && server.admin_token.is_none()
    {
        bail!(
            "key `server.admin_listen`: {addr} is not a loopback address, so `admin_token_env` (or `admin_token`) is required"
        );
    }

    let d = Limits::default();
    let l = raw.limits;
    let limits = Limits {
        max_header_bytes: l.max_header_bytes.unwrap_or(d.max_header_bytes as u64) as usize,
        max_uri_bytes: l.max_uri_bytes.unwrap_or(d.max_uri_bytes as u64) as usize,
        max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_async_body_bytes: l.max_async_body_bytes.unwrap_or(d.max_async_body_bytes),
        max_in_flight: NonZeroUsize::new(
            l.max_in_flight.unwrap_or(d.max_in_flight.get() as u64) as usize
        )
        .ok_or_else(|| anyhow!("key `limits.max_in_flight`: must be greater than 0"))?,
        max_connections: NonZeroUsize::new(
            l.max_connections.unwrap_or(d.max_connections.get() as u64) as usize,
        )
        .ok_or_else(|| anyhow!("key `limits.max_connections`: must be greater than 0"))?,
        header_read_timeout_ms: non_zero(
            "limits.header_read_timeout_ms",
            l.header_read_timeout_ms
                .unwrap_or(d.header_read_timeout_ms.get()),
        )?,
        body_read_timeout_ms: non_zero(
            "limits.body_read_timeout_ms",
            l.body_read_timeout_ms
                .unwrap_or(d.body_read_timeout_ms.get()),
        )?,
        body_buffer_bytes: l.body_buffer_bytes.unwrap_or(d.body_buffer_bytes as u64) as usize,
        max_connections_per_ip: NonZeroUsize::new(
            l.max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip.get() as u64) as usize,
        )
        .ok_or_else(|| anyhow!("key `limits.max_connections_per_ip`: must be greater than 0"))?,
        idle_timeout_ms: non_zero(
            "limits.idle_timeout_ms",
            l.idle_timeout_ms.unwrap_or(d.idle_timeout_ms.get()),
        )?,
        request_timeout_ms: non_zero(
            "limits.request_timeout_ms",
            l.request_timeout_ms.unwrap_or(d.request_timeout_ms.get()),
        )?,
        send_timeout_ms: non_zero(
            "limits.send_timeout_ms",
            l.send_timeout_ms.unwrap_or(d.send_timeout_ms.get()),
        )?,
        connection_buffer_bytes: l
            .connection_buffer_bytes
            .map_or(d.connection_buffer_bytes, |v| {
                usize::try_from(v).unwrap_or(usize::MAX)
            }),
    };
    if (limits.connection_buffer_bytes as u64) <= limits.max_async_body_bytes {
        bail!(
            "key `limits.connection_buffer_bytes`: must be more than `max_async_body_bytes` ({}), or no async request could be read",
            limits.max_async_body_bytes
        );
    }
    if limits.max_header_bytes < 256 {
        bail!("key `limits.max_header_bytes`: must be at least 256");
    }
    if limits.max_uri_bytes < 16 {
        bail!("key `limits.max_uri_bytes`: must be at least 16");
    }
    if limits.max_in_flight.get() > 100_000 {
        bail!("key `limits.max_in_flight`: at most 100000");
    }

    let q = raw.queue;
    let queue = QueueConfig {
        group_commit: q.group_commit.unwrap_or(true),
        // 64 by default: with fewer, a backlog drains at the pace of each freed worker's
        // claim behind the writer's batch (README, "Benchmarks"); never more than the
        // node's execution slots.
        workers: match q.workers {
            Some(n) => NonZeroUsize::new(n as usize)
                .ok_or_else(|| anyhow!("key `queue.workers`: must be greater than 0"))?,
            None => limits.max_in_flight.min(DEFAULT_WORKERS),
        },
        retention_s: q.retention_s.unwrap_or(7 * 86400),
        max_tasks: q.max_tasks.unwrap_or(1_000_000),
        max_queue_bytes: q.max_queue_bytes.unwrap_or(1 << 30),
        callback_concurrency: NonZeroUsize::new(q.callback_concurrency.unwrap_or(64) as usize)
            .ok_or_else(|| anyhow!("key `queue.callback_concurrency`: must be greater than 0"))?,
    };

    let cluster = raw
        .cluster
        .map(|c| -> Result<ClusterConfig> {
            for url in c.nats.split(',') {
                let url = url.trim();
                let scheme = url.split("://").next().unwrap_or_default();
                if !url.contains("://") || !["nats", "tls"].contains(&scheme) {
                    bail!(
                        "key `cluster.nats`: '{url}' is not a server URL like nats://127.0.0.1:4222 or tls://host:4222"
                    );
                }
            }
            let credentials = match c.credentials_env {
                None => None,
                Some(var) => {
                    let v = env(&var).ok_or_else(|| {
                        anyhow!("key `cluster.credentials_env`: environment variable '{var}' is not set")
                    })?;
                    Some(match v.split_once(':') {
                        Some((u, p)) if !Path::new(&v).exists() => {
                            NatsCredentials::UserPassword(u.to_string(), p.to_string())
                        }
                        _ => NatsCredentials::File(rel(&v)),
                    })
                }
            };
            let replicas = c.replicas.unwrap_or(1);
            if !(1..=5).contains(&replicas) {
                bail!("key `cluster.replicas`: {replicas} is outside 1..=5");
            }
            let ack_wait_ms = c.ack_wait_ms.unwrap_or(30_000);
            if ack_wait_ms < 300 {
                bail!("key `cluster.ack_wait_ms`: {ack_wait_ms} is below 300");
            }
            Ok(ClusterConfig {
                nats: c.nats,
                credentials,
                tls_ca: c.tls_ca.as_deref().map(rel),
                replicas: replicas as usize,
                ack_wait_ms,
            })
        })
        .transpose()?;
    let tracing = raw.tracing.map(|t| tracing_config(t, env)).transpose()?;

    let mut buckets: Vec<BucketConfig> = Vec::new();
    for b in raw.buckets {
        let at = format!("bucket '{}'", b.name);
        if !valid_name(&b.name) {
            bail!("[[bucket]] name '{}': must match [a-z0-9-]{{1,64}}", b.name);
        }
        if buckets.iter().any(|o| o.name == b.name) {
            bail!("[[bucket]] name '{}': defined twice", b.name);
        }
        let max_bytes = b.max_bytes.unwrap_or(64 << 20);
        let max_value_bytes = b.max_value_bytes.unwrap_or(1 << 20);
        if max_bytes == 0 {
            bail!("{at}: key `max_bytes`: must be greater than 0");
        }
        if max_value_bytes == 0 || max_value_bytes > MAX_VALUE_BYTES {
            bail!(
                "{at}: key `max_value_bytes`: {max_value_bytes} is outside 1..={MAX_VALUE_BYTES}"
            );
        }
        buckets.push(BucketConfig {
            name: b.name,
            max_bytes,
            max_value_bytes,
        });
    }

    let mut functions: Vec<FunctionConfig> = Vec::new();
    for f in raw.functions {
        let at = format!("function '{}'", f.name);
        if !valid_name(&f.name) {
            bail!(
                "[[function]] name '{}': must match [a-z0-9-]{{1,64}}",
                f.name
            );
        }
        let memory_mb = f.memory_mb.unwrap_or(128);
        if !(1..=4096).contains(&memory_mb) {
            bail!("{at}: key `memory_mb`: {memory_mb} is outside 1..=4096");
        }
        let max_concurrency = f.max_concurrency.unwrap_or(100);
        let namespace = f.namespace.unwrap_or_else(|| "default".to_string());
        if !valid_name(&namespace) {
            bail!("{at}: key `namespace`: '{namespace}' must match [a-z0-9-]{{1,64}}");
        }
        for (key, list) in [("topics", &f.topics), ("events", &f.events)] {
            if let Some(bad) = list.iter().find(|t| t.trim().is_empty()) {
                bail!("{at}: key `{key}`: '{bad}' is empty");
            }
        }
        if let Some(b) = f
            .keyvalue
            .iter()
            .find(|b| !buckets.iter().any(|d| &d.name == *b))
        {
            bail!("{at}: key `keyvalue`: bucket '{b}' is not declared in a [[bucket]] table");
        }
        let mut variables: Vec<Variable> = f
            .variables
            .into_iter()
            .map(|(key, value)| Variable {
                key,
                value,
                secret: false,
            })
            .collect();
        for (key, var) in f.variables_env {
            if variables.iter().any(|v| v.key == key) {
                bail!("{at}: variable '{key}' is in both `variables` and `variables_env`");
            }
            let value = env(&var).ok_or_else(|| {
                anyhow!("{at}: key `variables_env.{key}`: environment variable '{var}' is not set")
            })?;
            variables.push(Variable {
                key,
                value,
                secret: true,
            });
        }
        let id = if namespace == "default" {
            f.name.clone()
        } else {
            format!("{}.{namespace}", f.name)
        };
        if functions.iter().any(|g| g.name == id) {
            bail!(
                "[[function]] name '{}': defined twice in namespace '{namespace}'",
                f.name
            );
        }
        functions.push(FunctionConfig {
            namespace,
            topics: f.topics,
            events: f.events,
            wasm: rel(&f.wasm),
            memory_mb: NonZeroU32::new(memory_mb as u32).expect("checked above"),
            timeout_ms: non_zero(
                &format!("{at}: key `timeout_ms`"),
                f.timeout_ms.unwrap_or(10_000),
            )?,
            max_concurrency: NonZeroUsize::new(max_concurrency as usize)
                .ok_or_else(|| anyhow!("{at}: key `max_concurrency`: must be greater than 0"))?,
            env: f.env.into_iter().collect(),
            outbound_hosts: f
                .outbound_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            keyvalue: f.keyvalue,
            variables,
            name: id,
        });
    }

    let mut triggers: Vec<TriggerConfig> = Vec::new();
    for t in raw.triggers {
        let trigger = validate_trigger(t, &rel, env)?;
        if triggers.iter().any(|o| o.name == trigger.name) {
            bail!("[[trigger]] name '{}': defined twice", trigger.name);
        }
        for prefix in trigger.prefixes() {
            let Some(o) = triggers
                .iter()
                .find(|o| o.host == trigger.host && o.prefixes().contains(&prefix))
            else {
                continue;
            };
            bail!(
                "trigger '{}': path '{}'{} is already routed to trigger '{}'",
                trigger.name,
                prefix,
                trigger
                    .host
                    .as_deref()
                    .map(|h| format!(" on host '{h}'"))
                    .unwrap_or_default(),
                o.name
            );
        }
        triggers.push(trigger);
    }

    Ok(Config {
        path: path.to_path_buf(),
        server,
        limits,
        queue,
        cluster,
        tracing,
        functions,
        triggers,
        buckets,
    })
}

/// `[tracing]`: an `http://` or `https://` endpoint, a ratio within 0..=1, and the
/// collector's headers from `headers_env` (`name=value,name=value`, as
/// `OTEL_EXPORTER_OTLP_HEADERS`) or inline `headers` (tests and demos).
fn tracing_config(
    t: raw::RawTracing,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TracingConfig> {
    let endpoint = t.otlp_endpoint.trim().trim_end_matches('/');
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| anyhow!("key `tracing.otlp_endpoint`: '{endpoint}' is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!(
            "key `tracing.otlp_endpoint`: '{endpoint}' is not an http:// or https:// URL like http://127.0.0.1:4318"
        );
    }
    let traces_url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    };
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        bail!("key `tracing.sample_ratio`: {sample_ratio} is outside 0.0..=1.0");
    }
    let service_name = t.service_name.unwrap_or_else(|| "wasmgate".into());
    if service_name.is_empty() {
        bail!("key `tracing.service_name`: must not be empty");
    }
    let mut headers: Vec<(String, String)> = t.headers.unwrap_or_default().into_iter().collect();
    if let Some(var) = t.headers_env {
        let v = env(&var).ok_or_else(|| {
            anyhow!("key `tracing.headers_env`: environment variable '{var}' is not set")
        })?;
        for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                anyhow!("key `tracing.headers_env`: '{var}' must be name=value pairs separated by commas")
            })?;
            let k = percent_encoding::percent_decode_str(k.trim()).decode_utf8_lossy();
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            headers.push((k.into_owned(), v.into_owned()));
        }
    }
    for (k, v) in &headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            bail!("key `tracing.headers`: '{k}' is not a valid header name and value");
        }
    }
    Ok(TracingConfig {
        traces_url,
        sample_ratio,
        service_name,
        headers,
    })
}

/// A function as triggers and URLs name it: `name` (namespace `default`) or
/// `name.namespace`.
pub fn valid_function_id(id: &str) -> bool {
    match id.split_once('.') {
        None => valid_name(id),
        Some((name, ns)) => valid_name(name) && valid_name(ns),
    }
}

/// The kind of a trigger and the keys that belong to it; keys of another kind are errors.
fn validate_kind(
    t: &raw::RawTrigger,
    kind: &str,
    at: &str,
    rel: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Kind> {
    let routed_keys = [
        ("path", t.path.is_some()),
        ("host", t.host.is_some()),
        ("methods", t.methods.is_some()),
        ("auth", t.auth.is_some()),
        ("disable_internet", t.disable_internet),
        ("pass_credentials", t.pass_credentials),
        ("rate_limit", t.rate_limit.is_some()),
        ("signature", t.signature.is_some()),
        ("basic", t.basic.is_some()),
        ("jwt", t.jwt.is_some()),
        ("bearer", t.bearer.is_some()),
        ("cors", t.cors.is_some()),
        ("async_path", t.async_path.is_some()),
        ("functions", t.functions.is_some()),
    ];
    let cron_keys = [
        ("schedule", t.schedule.is_some()),
        ("timezone", t.timezone.is_some()),
        ("payload", t.payload.is_some()),
        ("catch_up", t.catch_up.is_some()),
    ];
    let broker_keys = [
        ("broker", t.broker.is_some()),
        ("client_id", t.client_id.is_some()),
        ("username", t.username.is_some() || t.username_env.is_some()),
        ("password", t.password.is_some() || t.password_env.is_some()),
        ("ca_file", t.ca_file.is_some()),
        ("qos", t.qos.is_some()),
        ("topics", t.topics.is_some()),
        ("queue_group", t.queue_group.is_some()),
        ("reply_prefix", t.reply_prefix.is_some()),
        ("content_type", t.content_type.is_some()),
    ];
    let topic_keys = [
        ("namespace", t.namespace.is_some()),
        ("topic_match", t.topic_match.is_some()),
    ];
    let refuse = |keys: &[(&str, bool)]| -> Result<()> {
        match keys.iter().find(|(_, present)| *present) {
            Some((key, _)) => bail!("{at}: key `{key}` does not apply to a {kind} trigger"),
            None => Ok(()),
        }
    };
    match kind {
        "http" | "event" => {
            refuse(&cron_keys)?;
            refuse(&broker_keys)?;
            refuse(&topic_keys[1..])?;
            if kind == "event" {
                refuse(&routed_keys[12..])?;
                refuse(&topic_keys)?;
                return Ok(Kind::Event);
            }
            Ok(Kind::Http)
        }
        "cron" => {
            refuse(&routed_keys)?;
            refuse(&broker_keys)?;
            refuse(&topic_keys)?;
            let schedule = t
                .schedule
                .clone()
                .ok_or_else(|| anyhow!("{at}: key `schedule` is required for a cron trigger"))?;
            let cron = kinds::parse_schedule(&schedule)
                .map_err(|e| anyhow!("{at}: key `schedule`: {e}"))?;
            let tz_name = t.timezone.clone().unwrap_or_else(|| "UTC".to_string());
            let timezone: chrono_tz::Tz = tz_name.parse().map_err(|_| {
                anyhow!("{at}: key `timezone`: '{tz_name}' is not an IANA time zone name")
            })?;
            Ok(Kind::Cron(CronConfig {
                schedule,
                cron,
                timezone,
                payload: t.payload.clone(),
                catch_up: t.catch_up.unwrap_or(false),
            }))
        }
        "mqtt" | "nats" => {
            refuse(&routed_keys)?;
            refuse(&cron_keys)?;
            let url = t
                .broker
                .clone()
                .ok_or_else(|| anyhow!("{at}: key `broker` is required for a {kind} trigger"))?;
            let (transport, host, port) = kinds::parse_broker_url(kind, &url)
                .map_err(|e| anyhow!("{at}: key `broker`: {e}"))?;
            let topics = t.topics.clone().unwrap_or_default();
            if topics.is_empty() {
                bail!(
                    "{at}: key `topics`: at least one {} is required",
                    if kind == "mqtt" {
                        "topic filter"
                    } else {
                        "subject"
                    }
                );
            }
            for topic in &topics {
                let checked = if kind == "mqtt" {
                    kinds::check_mqtt_filter(topic)
                } else {
                    kinds::check_nats_subject(topic)
                };
                checked.map_err(|e| anyhow!("{at}: key `topics`: {e}"))?;
            }
            let qos = t.qos.unwrap_or(1);
            if kind == "mqtt" && qos > 1 {
                bail!("{at}: key `qos`: {qos} is not 0 or 1");
            }
            if kind == "nats" && t.qos.is_some() {
                bail!("{at}: key `qos` does not apply to a nats trigger");
            }
            if kind == "nats" && t.client_id.is_some() {
                bail!("{at}: key `client_id` does not apply to a nats trigger");
            }
            if kind == "mqtt" && t.queue_group.is_some() {
                bail!("{at}: key `queue_group` does not apply to a mqtt trigger");
            }
            if kind == "mqtt" && t.reply_prefix.is_some() {
                bail!("{at}: key `reply_prefix` does not apply to a mqtt trigger");
            }
            let reply_prefix = t
                .reply_prefix
                .clone()
                .unwrap_or_else(|| "_INBOX.".to_string());
            kinds::check_reply_prefix(&reply_prefix)
                .map_err(|e| anyhow!("{at}: key `reply_prefix`: {e}"))?;
            let username = match (&t.username, &t.username_env) {
                (None, None) => None,
                (u, v) => Some(secret(
                    &format!("{at}: key `username`"),
                    u.clone(),
                    v.clone(),
                    env,
                )?),
            };
            let password = match (&t.password, &t.password_env) {
                (None, None) => None,
                (p, v) => Some(secret(
                    &format!("{at}: key `password`"),
                    p.clone(),
                    v.clone(),
                    env,
                )?),
            };
            if password.is_some() && username.is_none() {
                bail!("{at}: key `password` needs a `username`");
            }
            let client_id = t
                .client_id
                .clone()
                .unwrap_or_else(|| format!("wasmgate-{}", t.name));
            if client_id.is_empty() || client_id.len() > 128 {
                bail!("{at}: key `client_id`: must be 1 to 128 characters");
            }
            let broker = BrokerConfig {
                url,
                host,
                port,
                transport,
                ca_file: t.ca_file.as_deref().map(rel),
                client_id,
                username,
                password,
                qos,
                topics,
                queue_group: t
                    .queue_group
                    .clone()
                    .unwrap_or_else(|| format!("wasmgate-{}", t.name)),
                reply_prefix,
                content_type: t
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".to_string()),
            };
            if http::HeaderValue::from_str(&broker.content_type).is_err() {
                bail!(
                    "{at}: key `content_type`: '{}' is not a header value",
                    broker.content_type
                );
            }
            Ok(if kind == "mqtt" {
                Kind::Mqtt(broker)
            } else {
                Kind::Nats(broker)
            })
        }
        other => bail!("{at}: key `kind`: '{other}' is not one of http, event, cron, mqtt, nats"),
    }
}

fn validate_trigger(
    t: raw::RawTrigger,
    rel: &dyn Fn(&str) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TriggerConfig> {
    if !valid_name(&t.name) {
        bail!(
            "[[trigger]] name '{}': must match [a-z0-9-]{{1,64}}",
            t.name
        );
    }
    let at = format!("trigger '{}'", t.name);
    let kind_name = t.kind.clone().unwrap_or_else(|| "http".to_string());
    let kind = validate_kind(&t, &kind_name, &at, rel, env)?;
    if let Some(f) = &t.function
        && !valid_function_id(f)
    {
        bail!("{at}: key `function`: '{f}' is not a function name (name or name.namespace)");
    }
    let function = t.function.clone();
    let template = t
        .path
        .as_deref()
        .map(RouteTemplate::parse)
        .transpose()
        .map_err(|e| anyhow!("{at}: key `path`: {e}"))?;
    let routes = match (&kind, template) {
        (Kind::Http, Some(Some(path))) => {
            if function.is_some() {
                bail!(
                    "{at}: key `function`: a path template ('{}') chooses the function by name; remove `function`",
                    path.text
                );
            }
            let async_path = match t.async_path.as_deref() {
                None => None,
                Some(a) => Some(RouteTemplate::parse(a).map_err(|e| anyhow!("{at}: key `async_path`: {e}"))?.ok_or_else(|| {
                    anyhow!("{at}: key `async_path`: '{a}' needs a {{function}} segment like `path`")
                })?),
            };
            let functions = match t.functions.as_deref() {
                None => Exposed::Only(Vec::new()),
                Some(list) if list.iter().any(|f| f == "*") => Exposed::All,
                Some(list) => {
                    if let Some(bad) = list.iter().find(|f| !valid_function_id(f)) {
                        bail!("{at}: key `functions`: '{bad}' is not a function name");
                    }
                    Exposed::Only(list.to_vec())
                }
            };
            Some(NameRoutes {
                path,
                async_path,
                functions,
            })
        }
        (_, Some(Some(_))) => {
            bail!("{at}: key `path`: a template with {{function}} is for http triggers")
        }
        _ => {
            if t.async_path.is_some() {
                bail!(
                    "{at}: key `async_path`: only with a `path` template such as \"/function/{{function}}\""
                );
            }
            if t.functions.is_some() {
                bail!(
                    "{at}: key `functions`: only with a `path` template such as \"/function/{{function}}\""
                );
            }
            None
        }
    };
    match (&kind, &function, &routes) {
        (Kind::Http, None, None) => {
            bail!("{at}: key `function` is required (or a `path` template with {{function}})")
        }
        (Kind::Cron(_), None, _) => bail!("{at}: key `function` is required for a cron trigger"),
        (Kind::Event, Some(_), _) => bail!(
            "{at}: key `function`: an event trigger delivers to the functions whose `events` match; remove `function`"
        ),
        _ => {}
    }
    let topic_match = match t.topic_match.as_deref() {
        None => TopicMatch::Wildcard,
        Some(m) => m
            .parse()
            .map_err(|e| anyhow!("{at}: key `topic_match`: {e}"))?,
    };
    if let Some(ns) = &t.namespace
        && !valid_name(ns)
    {
        bail!("{at}: key `namespace`: '{ns}' must match [a-z0-9-]{{1,64}}");
    }
    let async_ = match t.async_ {
        None => None,
        Some(a) => {
            let check_url = |key: &str, v: &Option<String>| -> Result<()> {
                if let Some(u) = v {
                    let uri: http::Uri = u
                        .parse()
                        .map_err(|_| anyhow!("{at}: key `async.{key}`: '{u}' is not a URL"))?;
                    if !matches!(uri.scheme_str(), Some("http") | Some("https"))
                        || uri.host().is_none()
                    {
                        bail!("{at}: key `async.{key}`: '{u}' must be an http:// or https:// URL");
                    }
                }
                Ok(())
            };
            check_url("on_success", &a.on_success)?;
            check_url("on_failure", &a.on_failure)?;
            let max_event_age_s = a.max_event_age_s.unwrap_or(86400);
            if max_event_age_s == 0 {
                bail!("{at}: key `async.max_event_age_s`: must be greater than 0");
            }
            Some(AsyncConfig {
                enabled: a.enabled.unwrap_or(true),
                max_retries: a.max_retries.unwrap_or(3),
                max_event_age_s,
                max_tasks: a.max_tasks,
                max_queue_bytes: a.max_queue_bytes,
                on_success: a.on_success,
                on_failure: a.on_failure,
                callback_hosts: a
                    .callback_hosts
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                require_2xx: false,
            })
        }
    };

    let path = match t.path {
        _ if !kind.is_routed() => String::new(),
        _ if routes.is_some() => routes
            .as_ref()
            .map(|r| r.path.prefix.clone())
            .unwrap_or_default(),
        None => format!("/{}", t.name),
        Some(p) => {
            if !p.starts_with('/') {
                bail!("{at}: key `path`: '{p}' must start with '/'");
            }
            if p.contains('?') || p.contains('#') {
                bail!("{at}: key `path`: '{p}' must not contain '?' or '#'");
            }
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }
        }
    };
    let host = t.host.map(|h| {
        let h = h.to_ascii_lowercase();
        match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => h,
        }
    });

    let methods = match t.methods {
        None if matches!(kind, Kind::Event) => vec![http::Method::POST],
        None => ALL_METHODS
            .iter()
            .map(|m| http::Method::from_bytes(m.as_bytes()).expect("static method"))
            .collect(),
        Some(list) => {
            if list.is_empty() {
                bail!("{at}: key `methods`: must list at least one method");
            }
            let mut out = Vec::new();
            for m in list {
                let up = m.to_ascii_uppercase();
                if !ALL_METHODS.contains(&up.as_str()) {
                    bail!(
                        "{at}: key `methods`: '{m}' is not one of {}",
                        ALL_METHODS.join(", ")
                    );
                }
                out.push(http::Method::from_bytes(up.as_bytes()).expect("checked"));
            }
            out
        }
    };

    let rate_limit = match t.rate_limit {
        None => None,
        Some(r) => {
            let per_second = NonZeroU32::new(r.per_second).ok_or_else(|| {
                anyhow!("{at}: key `rate_limit.per_second`: must be greater than 0")
            })?;
            let burst = NonZeroU32::new(r.burst.unwrap_or(r.per_second))
                .ok_or_else(|| anyhow!("{at}: key `rate_limit.burst`: must be greater than 0"))?;
            let key = match r.key.as_deref().unwrap_or("principal") {
                "principal" => RateLimitKey::Principal,
                "ip" => RateLimitKey::Ip,
                "trigger" => RateLimitKey::Trigger,
                other => bail!(
                    "{at}: key `rate_limit.key`: '{other}' is not one of principal, ip, trigger"
                ),
            };
            Some(RateLimitConfig {
                per_second,
                burst,
                key,
            })
        }
    };

    let scheme = t.auth.as_deref().unwrap_or("anonymous");
    let tables = [
        ("signature", t.signature.is_some()),
        ("basic", t.basic.is_some()),
        ("jwt", t.jwt.is_some()),
        ("bearer", t.bearer.is_some()),
    ];
    for (name, present) in tables {
        if present && name != scheme {
            bail!("{at}: table `{name}` is given but `auth` is '{scheme}'");
        }
    }
    let auth = match scheme {
        "anonymous" => AuthConfig::Anonymous,
        "signature" => {
            let s = t.signature.ok_or_else(|| {
                anyhow!("{at}: auth 'signature' needs a [trigger.signature] table")
            })?;
            if s.keys.is_empty() {
                bail!("{at}: key `signature.keys`: at least one key is required");
            }
            let mut keys = Vec::new();
            for k in s.keys {
                let what = format!("{at}: signature key '{}'", k.id);
                let sec = secret(&what, k.secret, k.secret_env, env)?;
                keys.push((k.id, sec));
            }
            AuthConfig::Signature {
                keys,
                window_s: s.window_s.unwrap_or(900),
            }
        }
        "basic" => {
            let b = t
                .basic
                .ok_or_else(|| anyhow!("{at}: auth 'basic' needs a [trigger.basic] table"))?;
            if b.users.is_empty() {
                bail!("{at}: key `basic.users`: at least one user is required");
            }
            let mut users = Vec::new();
            for u in b.users {
                if u.username.contains(':') {
                    bail!(
                        "{at}: basic user '{}': a username cannot contain ':'",
                        u.username
                    );
                }
                let what = format!("{at}: basic user '{}'", u.username);
                let pw = secret(&what, u.password, u.password_env, env)?;
                users.push((u.username, pw));
            }
            AuthConfig::Basic { users }
        }
        "jwt" => {
            let j = t
                .jwt
                .ok_or_else(|| anyhow!("{at}: auth 'jwt' needs a [trigger.jwt] table"))?;
            if j.whitelist.is_some() && j.blacklist.is_some() {
                bail!("{at}: keys `jwt.whitelist` and `jwt.blacklist`: give one, not both");
            }
            let source = match (j.jwks_file, j.jwks_url, j.oidc_issuer) {
                (Some(f), None, None) => KeySource::File(rel(&f)),
                (None, Some(u), None) => KeySource::Url(u),
                (None, None, Some(i)) => KeySource::Issuer(i),
                _ => bail!(
                    "{at}: keys `jwt.jwks_file`, `jwt.jwks_url`, `jwt.oidc_issuer`: give exactly one"
                ),
            };
            match &source {
                KeySource::Url(u) => {
                    check_key_url("key `jwt.jwks_url`", u).map_err(|e| anyhow!("{at}: {e}"))?
                }
                KeySource::Issuer(i) => {
                    check_key_url("key `jwt.oidc_issuer`", i).map_err(|e| anyhow!("{at}: {e}"))?;
                    if j.issuer.as_ref().is_some_and(|iss| iss != i) {
                        bail!(
                            "{at}: key `jwt.issuer`: with `oidc_issuer` the issuer is '{i}'; leave `issuer` out or give the same"
                        );
                    }
                }
                KeySource::File(_) => {
                    for (key, set) in [
                        ("jwks_ca", j.jwks_ca.is_some()),
                        ("jwks_refresh_s", j.jwks_refresh_s.is_some()),
                        ("jwks_stale_s", j.jwks_stale_s.is_some()),
                    ] {
                        if set {
                            bail!(
                                "{at}: key `jwt.{key}` applies to `jwks_url` and `oidc_issuer` only"
                            );
                        }
                    }
                }
            }
            let algorithms = j.algorithms.unwrap_or_default();
            if algorithms.is_empty() && !matches!(source, KeySource::Issuer(_)) {
                bail!("{at}: key `jwt.algorithms`: at least one algorithm is required");
            }
            for a in &algorithms {
                if a.eq_ignore_ascii_case("none") {
                    bail!("{at}: key `jwt.algorithms`: 'none' is never accepted");
                }
                if a.parse::<jsonwebtoken::Algorithm>().is_err() {
                    bail!("{at}: key `jwt.algorithms`: '{a}' is not a JWT algorithm");
                }
                // A published key set is public: an HMAC key in it is nobody's secret.
                if !matches!(source, KeySource::File(_)) && !is_public_key_algorithm(a) {
                    bail!(
                        "{at}: key `jwt.algorithms`: '{a}' needs a shared secret, never a key fetched from `jwks_url` or `oidc_issuer`"
                    );
                }
            }
            let refresh = j.jwks_refresh_s.unwrap_or(3600);
            if !(60..=86400).contains(&refresh) {
                bail!("{at}: key `jwt.jwks_refresh_s`: {refresh} is not within 60..=86400");
            }
            let stale = j.jwks_stale_s.unwrap_or(86400);
            if stale < refresh {
                bail!(
                    "{at}: key `jwt.jwks_stale_s`: {stale} is shorter than jwks_refresh_s ({refresh})"
                );
            }
            if let Some(q) = &j.qualifier_by_claim {
                if q.claim.is_empty() {
                    bail!("{at}: key `jwt.qualifier_by_claim.claim` is empty");
                }
                if q.map.is_empty() {
                    bail!("{at}: key `jwt.qualifier_by_claim.map` is empty");
                }
                for (value, qualifier) in &q.map {
                    if !valid_qualifier(qualifier) {
                        bail!(
                            "{at}: key `jwt.qualifier_by_claim.map`: '{value}' maps to '{qualifier}', which is not a version number, LATEST or an alias name"
                        );
                    }
                }
            }
            let issuer = match &source {
                KeySource::Issuer(i) => Some(i.clone()),
                _ => j.issuer,
            };
            AuthConfig::Jwt(Box::new(JwtConfig {
                source,
                jwks_ca: j.jwks_ca.as_deref().map(rel),
                jwks_refresh_s: refresh,
                jwks_stale_s: stale,
                qualifier_by_claim: j.qualifier_by_claim.map(|q| QualifierByClaim {
                    claim: q.claim,
                    map: q.map,
                }),
                algorithms,
                issuer,
                audience: j.audience.unwrap_or_default(),
                leeway_s: j.leeway_s.unwrap_or(60),
                token_lookup: j
                    .token_lookup
                    .unwrap_or_else(|| "header:Authorization:Bearer ".to_string()),
                claim_pass_by: j.claim_pass_by.unwrap_or_default(),
                whitelist: j.whitelist.unwrap_or_default(),
                blacklist: j.blacklist.unwrap_or_default(),
                cache_ttl_s: j.cache_ttl_s.unwrap_or(300),
            }))
        }
        "bearer" => {
            let b = t
                .bearer
                .ok_or_else(|| anyhow!("{at}: auth 'bearer' needs a [trigger.bearer] table"))?;
            let mut tokens = Vec::new();
            for tok in b.tokens {
                let what = format!("{at}: bearer token '{}'", tok.name);
                let value = secret(&what, tok.token, tok.token_env, env)?;
                if !(32..=128).contains(&value.len()) {
                    bail!("{what}: a token must be 32 to 128 characters");
                }
                if tok.enabled.unwrap_or(true) {
                    tokens.push((tok.name, value));
                }
            }
            AuthConfig::Bearer { tokens }
        }
        other => bail!(
            "{at}: key `auth`: '{other}' is not one of anonymous, signature, basic, jwt, bearer"
        ),
    };

    let cors = match &t.cors {
        None => None,
        Some(c) => Some(validate_cors(c, &methods, &at)?),
    };
    let async_ = match async_ {
        // A request on `async_path` is async without the header: the defaults apply.
        None if routes.as_ref().is_some_and(|r| r.async_path.is_some()) => Some(AsyncConfig {
            enabled: true,
            ..AsyncConfig::default()
        }),
        a => a,
    };
    Ok(TriggerConfig {
        name: t.name,
        kind,
        function,
        qualifier: t.qualifier.unwrap_or_else(|| "LATEST".to_string()),
        path,
        routes,
        namespace: t.namespace,
        topic_match,
        host,
        methods,
        auth,
        disable_internet: t.disable_internet,
        pass_credentials: t.pass_credentials,
        rate_limit,
        async_,
        cors,
    })
}

/// A trigger's `cors` table: origins are `scheme://host[:port]`; `*` never with credentials.
fn validate_cors(c: &raw::RawCors, methods: &[http::Method], at: &str) -> Result<CorsConfig> {
    let any_origin = c.allow_origins.iter().any(|o| o == "*");
    if any_origin && c.allow_credentials.unwrap_or(false) {
        bail!("{at}: key `cors.allow_origins`: \"*\" cannot be used with allow_credentials = true");
    }
    let mut origins = Vec::new();
    for o in c.allow_origins.iter().filter(|o| *o != "*") {
        let ok = o.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
        });
        if !ok {
            bail!(
                "{at}: key `cors.allow_origins`: '{o}' is not an origin like https://app.example"
            );
        }
        origins.push(o.to_ascii_lowercase());
    }
    if origins.is_empty() && !any_origin {
        bail!("{at}: key `cors.allow_origins`: at least one origin (or \"*\") is required");
    }
    let allow_methods = match &c.allow_methods {
        None => methods.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let up = m.to_ascii_uppercase();
                if !ALL_METHODS.contains(&up.as_str()) {
                    bail!(
                        "{at}: key `cors.allow_methods`: '{m}' is not one of {}",
                        ALL_METHODS.join(", ")
                    );
                }
                out.push(http::Method::from_bytes(up.as_bytes()).expect("checked"));
            }
            out
        }
    };
    let headers = c.allow_headers.clone().unwrap_or_default();
    for h in headers.iter().chain(c.expose_headers.iter().flatten()) {
        if h != "*" && http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            bail!("{at}: key `cors`: '{h}' is not a header name");
        }
    }
    Ok(CorsConfig {
        allow_origins: origins,
        any_origin,
        allow_methods,
        any_header: headers.iter().any(|h| h == "*"),
        allow_headers: headers
            .iter()
            .filter(|h| *h != "*")
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        expose_headers: c.expose_headers.clone().unwrap_or_default(),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age_s: c.max_age_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(text: &str) -> Result<Config> {
        let env: BTreeMap<&str, &str> = [
            ("SECRET", "s3cret"),
            ("NATS_USER", "gw:pa:ss"),
            ("NATS_FILE", "nats.creds"),
            (
                "OTLP_HEADERS",
                "authorization=Basic%20c2VjcmV0, x-tenant = edge",
            ),
        ]
        .into_iter()
        .collect();
        Config::parse(text, Path::new("dir/w.toml"), &|k| {
            env.get(k).map(|v| v.to_string())
        })
    }

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

    /// A config printed with `{:?}` (in a log line, a panic, a debug dump) shows no secret:
    /// not the admin token, not a function's env values, not a broker's password, not the
    /// credentials of the auth schemes.
    #[test]
    fn debug_output_shows_no_secret() {
        let c = parse(&format!(
            "{BASE}admin_listen = \"127.0.0.1:0\"\nadmin_token = \"admin-token-in-clear-0123456789\"\n\
             [[function]]\nname = \"hello\"\nwasm = \"h.wasm\"\nenv = {{ API_KEY = \"env-value-in-clear\" }}\n\
             [[trigger]]\nname = \"t\"\nfunction = \"hello\"\nauth = \"bearer\"\n\
             bearer = {{ tokens = [ {{ name = \"ci\", token = \"bearer-token-in-clear-0123456789\" }} ] }}\n\
             [[trigger]]\nname = \"m\"\nkind = \"mqtt\"\nfunction = \"hello\"\nbroker = \"mqtt://127.0.0.1:1883\"\n\
             topics = [\"x\"]\nusername = \"u\"\npassword_env = \"SECRET\"\n"
        ))
        .unwrap();
        let printed = format!("{c:?}");
        for secret in [
            "admin-token-in-clear",
            "env-value-in-clear",
            "bearer-token-in-clear",
            "s3cret",
        ] {
            assert!(!printed.contains(secret), "{secret} is printed: {printed}");
        }
        assert!(printed.contains("API_KEY"), "env names stay visible");
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&format!(
            "{BASE}[[function]]\nname = \"hello\"\nwasm = \"h.wasm\"\n[[trigger]]\nname = \"t\"\nfunction = \"hello\"\n"
        ))
        .unwrap();
        let t = &c.triggers[0];
        assert_eq!(t.path, "/t");
        assert_eq!(t.methods.len(), 7);
        assert_eq!(t.qualifier, "LATEST");
        assert_eq!(c.functions[0].wasm, Path::new("dir/h.wasm"));
        assert_eq!(c.functions[0].memory_mb.get(), 128);
        assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(c.server.data_dir, Path::new("dir/data"));
        assert_eq!(c.queue.workers.get(), 64);
        // Never more workers by default than the node has execution slots.
        let small = parse(&format!("{BASE}[limits]\nmax_in_flight = 8\n")).unwrap();
        assert_eq!(small.queue.workers.get(), 8);
        let set = parse(&format!(
            "{BASE}[limits]\nmax_in_flight = 8\n[queue]\nworkers = 20\n"
        ))
        .unwrap();
        assert_eq!(set.queue.workers.get(), 20);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse(&format!("{BASE}bogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("dir/w.toml:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_key_in_trigger_is_rejected() {
        let err = parse(&format!(
            "{BASE}[[trigger]]\nname = \"t\"\nfunction = \"f\"\nmethod = [\"GET\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `method`"), "{err}");
    }

    #[test]
    fn duplicate_routes_are_rejected() {
        let err = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\nfunction = \"f\"\npath = \"/x\"\n[[trigger]]\nname = \"b\"\nfunction = \"f\"\npath = \"/x/\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "dir/w.toml: trigger 'b': path '/x' is already routed to trigger 'a'"
        );
    }

    #[test]
    fn bad_method_is_named() {
        let err = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\nfunction = \"f\"\nmethods = [\"FETCH\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "dir/w.toml: trigger 'a': key `methods`: 'FETCH' is not one of GET, POST, PUT, DELETE, HEAD, PATCH, OPTIONS"
        );
    }

    #[test]
    fn secrets_come_from_env_or_inline() {
        let c = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\nfunction = \"f\"\nauth = \"basic\"\nbasic = {{ users = [{{ username = \"u\", password_env = \"SECRET\" }}, {{ username = \"v\", password = \"p\" }}] }}\n"
        ))
        .unwrap();
        match &c.triggers[0].auth {
            AuthConfig::Basic { users } => {
                assert_eq!(users[0], ("u".to_string(), "s3cret".to_string()));
                assert_eq!(users[1], ("v".to_string(), "p".to_string()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\nfunction = \"f\"\nauth = \"basic\"\nbasic = {{ users = [{{ username = \"u\", password_env = \"NOPE\" }}] }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("basic user 'u': environment variable 'NOPE' is not set"),
            "{err}"
        );
    }

    #[test]
    fn zero_limits_cannot_be_expressed() {
        let err = parse(&format!("{BASE}[limits]\nmax_in_flight = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_in_flight"), "{err}");
    }

    #[test]
    fn host_is_normalised() {
        let c = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\nfunction = \"f\"\nhost = \"API.Example.com:8443\"\n"
        ))
        .unwrap();
        assert_eq!(c.triggers[0].host.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn each_kind_takes_its_own_keys_only() {
        for (body, want) in [
            (
                "kind = \"cron\"\nfunction = \"f\"\n",
                "key `schedule` is required",
            ),
            (
                "kind = \"cron\"\nfunction = \"f\"\nschedule = \"@daily\"\npath = \"/x\"\n",
                "key `path` does not apply to a cron trigger",
            ),
            (
                "kind = \"cron\"\nfunction = \"f\"\nschedule = \"@daily\"\ntimezone = \"Mars/Base\"\n",
                "'Mars/Base' is not an IANA time zone",
            ),
            (
                "kind = \"mqtt\"\ntopics = [\"a\"]\n",
                "key `broker` is required",
            ),
            (
                "kind = \"mqtt\"\nbroker = \"mqtt://h:1\"\ntopics = [\"a/#/b\"]\n",
                "'#' must be the whole last level",
            ),
            (
                "kind = \"mqtt\"\nbroker = \"mqtt://h:1\"\ntopics = [\"a\"]\nqos = 2\n",
                "key `qos`: 2 is not 0 or 1",
            ),
            (
                "kind = \"nats\"\nbroker = \"nats://h:1\"\ntopics = [\"a.>.b\"]\n",
                "'>' must be the whole last token",
            ),
            (
                "kind = \"nats\"\nbroker = \"mqtt://h:1\"\ntopics = [\"a\"]\n",
                "the scheme must be nats",
            ),
            (
                "kind = \"mqtt\"\nbroker = \"mqtt://h:1\"\ntopics = [\"a\"]\nschedule = \"@daily\"\n",
                "key `schedule` does not apply to a mqtt trigger",
            ),
            (
                "kind = \"event\"\nfunction = \"f\"\n",
                "an event trigger delivers to the functions whose `events` match",
            ),
            (
                "kind = \"http\"\nfunction = \"f\"\nschedule = \"@daily\"\n",
                "key `schedule` does not apply to a http trigger",
            ),
            (
                "kind = \"smtp\"\n",
                "'smtp' is not one of http, event, cron, mqtt, nats",
            ),
            (
                "path = \"/f/{function}\"\nfunction = \"f\"\n",
                "chooses the function by name",
            ),
            ("path = \"/f/{fn}\"\n", "a variable must be a whole segment"),
            (
                "function = \"f\"\nasync_path = \"/a/{function}\"\n",
                "only with a `path` template",
            ),
            (
                "function = \"f\"\ncors = { allow_origins = [\"*\"], allow_credentials = true }\n",
                "cannot be used with allow_credentials",
            ),
            (
                "function = \"f\"\ncors = { allow_origins = [\"app.example\"] }\n",
                "'app.example' is not an origin",
            ),
            (
                "kind = \"cron\"\nfunction = \"f\"\nschedule = \"@daily\"\ncors = { allow_origins = [\"*\"] }\n",
                "key `cors` does not apply to a cron trigger",
            ),
        ] {
            let err = parse(&format!("{BASE}[[trigger]]\nname = \"t\"\n{body}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn templates_and_namespaces() {
        let c = parse(&format!(
            "{BASE}[[function]]\nname = \"mailer\"\nwasm = \"m.wasm\"\nnamespace = \"shop\"\nevents = [\"order.*\"]\n[[trigger]]\nname = \"t\"\npath = \"/spaces/{{namespace}}/functions/{{function}}/invoke\"\nasync_path = \"/spaces/{{namespace}}/functions/{{function}}/async-invoke\"\nfunctions = [\"*\"]\n"
        ))
        .unwrap();
        assert_eq!(c.functions[0].name, "mailer.shop");
        let t = &c.triggers[0];
        assert_eq!(t.path, "/spaces");
        assert_eq!(t.prefixes(), ["/spaces"]);
        // async_path without an async table enables async with the defaults.
        assert!(t.async_.as_ref().is_some_and(|a| a.enabled));
        // Two triggers may not share a template prefix.
        let err = parse(&format!(
            "{BASE}[[trigger]]\nname = \"a\"\npath = \"/function/{{function}}\"\nfunctions = [\"*\"]\n[[trigger]]\nname = \"b\"\nfunction = \"f\"\npath = \"/function\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("already routed to trigger 'a'"), "{err}");
    }

    #[test]
    fn buckets_and_variables() {
        let c = parse(&format!(
            "{BASE}[[bucket]]\nname = \"sessions\"\n[[bucket]]\nname = \"small\"\nmax_bytes = 100\nmax_value_bytes = 10\n\
             [[function]]\nname = \"f\"\nwasm = \"f.wasm\"\nkeyvalue = [\"sessions\"]\n\
             variables = {{ api_base = \"https://api.example\" }}\nvariables_env = {{ api_token = \"SECRET\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.buckets[0],
            BucketConfig {
                name: "sessions".into(),
                max_bytes: 64 << 20,
                max_value_bytes: 1 << 20
            }
        );
        assert_eq!(c.buckets[1].max_bytes, 100);
        let f = &c.functions[0];
        assert_eq!(f.keyvalue, vec!["sessions".to_string()]);
        assert_eq!(
            f.variables,
            vec![
                Variable {
                    key: "api_base".into(),
                    value: "https://api.example".into(),
                    secret: false
                },
                Variable {
                    key: "api_token".into(),
                    value: "s3cret".into(),
                    secret: true
                },
            ]
        );
        // The secret is never printed; the plain variable may be.
        let shown = format!("{f:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("api_token") && shown.contains("https://api.example"));

        let err = |extra: &str| format!("{:#}", parse(&format!("{BASE}{extra}")).unwrap_err());
        let e = err("[[function]]\nname = \"f\"\nwasm = \"f.wasm\"\nkeyvalue = [\"nope\"]\n");
        assert!(e.contains("bucket 'nope' is not declared"), "{e}");
        let e = err(
            "[[function]]\nname = \"f\"\nwasm = \"f.wasm\"\nvariables_env = { t = \"UNSET_VAR\" }\n",
        );
        assert!(e.contains("UNSET_VAR"), "{e}");
        let e = err("[[bucket]]\nname = \"b\"\n[[bucket]]\nname = \"b\"\n");
        assert!(e.contains("defined twice"), "{e}");
        let e = err("[[bucket]]\nname = \"b\"\nmax_value_bytes = 2000000\n");
        assert!(e.contains("max_value_bytes"), "{e}");
    }

    #[test]
    fn tracing_table() {
        assert!(parse(BASE).unwrap().tracing.is_none(), "absent: no tracing");
        let c = parse(&format!(
            "{BASE}[tracing]\notlp_endpoint = \"http://collector:4318/\"\n"
        ))
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.service_name, "wasmgate");
        assert!(t.headers.is_empty());
        let c = parse(&format!(
            "{BASE}[tracing]\notlp_endpoint = \"https://otel.example/v1/traces\"\nsample_ratio = 0.25\nservice_name = \"edge\"\nheaders_env = \"OTLP_HEADERS\"\n"
        ))
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.traces_url, "https://otel.example/v1/traces");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.service_name, "edge");
        assert_eq!(
            t.headers,
            vec![
                ("authorization".to_string(), "Basic c2VjcmV0".to_string()),
                ("x-tenant".to_string(), "edge".to_string())
            ]
        );
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("c2VjcmV0") && shown.contains("authorization"),
            "{shown}"
        );
        for (body, want) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "not an http:// or https:// URL",
            ),
            (
                "otlp_endpoint = \"grpc://c:4317\"",
                "not an http:// or https:// URL",
            ),
            (
                "otlp_endpoint = \"http://c\"\nsample_ratio = 1.5",
                "outside 0.0..=1.0",
            ),
            (
                "otlp_endpoint = \"http://c\"\nsample_ratio = -0.1",
                "outside 0.0..=1.0",
            ),
            (
                "otlp_endpoint = \"http://c\"\nheaders_env = \"NOPE\"",
                "'NOPE' is not set",
            ),
            (
                "otlp_endpoint = \"http://c\"\nheaders_env = \"SECRET\"",
                "name=value pairs",
            ),
            (
                "otlp_endpoint = \"http://c\"\nservice_name = \"\"",
                "must not be empty",
            ),
            ("sample_ratio = 0.5", "missing field `otlp_endpoint`"),
            (
                "otlp_endpoint = \"http://c\"\nbogus = 1",
                "unknown field `bogus`",
            ),
        ] {
            let err = parse(&format!("{BASE}[tracing]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn cluster_table() {
        let c = parse(BASE).unwrap();
        assert!(c.cluster.is_none(), "absent: one node on SQLite");
        let c = parse(&format!(
            "{BASE}[cluster]\nnats = \"nats://a:4222, tls://b:4222\"\ncredentials_env = \"NATS_USER\"\ntls_ca = \"ca.pem\"\nreplicas = 3\n"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.replicas, 3);
        assert_eq!(cluster.ack_wait_ms, 30_000);
        assert_eq!(cluster.tls_ca.as_deref(), Some(Path::new("dir/ca.pem")));
        assert_eq!(
            cluster.credentials,
            Some(NatsCredentials::UserPassword("gw".into(), "pa:ss".into()))
        );
        assert!(!format!("{:?}", cluster.credentials).contains("pa:ss"));
        let c = parse(&format!(
            "{BASE}[cluster]\nnats = \"nats://a:4222\"\ncredentials_env = \"NATS_FILE\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.cluster.unwrap().credentials,
            Some(NatsCredentials::File("dir/nats.creds".into()))
        );
        for (body, want) in [
            ("nats = \"127.0.0.1:4222\"", "is not a server URL"),
            ("nats = \"http://a:4222\"", "is not a server URL"),
            ("nats = \"nats://a\"\nreplicas = 0", "outside 1..=5"),
            ("nats = \"nats://a\"\nack_wait_ms = 10", "below 300"),
            (
                "nats = \"nats://a\"\ncredentials_env = \"NOPE\"",
                "'NOPE' is not set",
            ),
            ("nats = \"nats://a\"\nbogus = 1", "unknown field `bogus`"),
        ] {
            let err = parse(&format!("{BASE}[cluster]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}

#[cfg(test)]
mod jwt_source_tests {
    use super::*;

    fn jwt(table: &str) -> Result<Config> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"f\"\nwasm = \"f.wasm\"\n[[trigger]]\nname = \"j\"\nfunction = \"f\"\nauth = \"jwt\"\n[trigger.jwt]\n{table}\n"
        );
        Config::parse(&text, Path::new("t.toml"), &|_| None)
    }

    fn refused(table: &str, needle: &str) {
        let e = format!("{:#}", jwt(table).expect_err(table));
        assert!(e.contains(needle), "{table}: {e}");
    }

    #[test]
    fn keys_come_from_exactly_one_source_under_the_fetch_rules() {
        let AuthConfig::Jwt(j) = &jwt("oidc_issuer = \"https://id.example\"")
            .unwrap()
            .triggers[0]
            .auth
        else {
            panic!("jwt")
        };
        assert_eq!(j.source, KeySource::Issuer("https://id.example".into()));
        assert_eq!(j.issuer.as_deref(), Some("https://id.example"));
        assert!(j.algorithms.is_empty());
        assert_eq!((j.jwks_refresh_s, j.jwks_stale_s), (3600, 86400));
        jwt("jwks_url = \"http://127.0.0.1:9/k\"\nalgorithms = [\"ES256\"]").unwrap();
        refused(
            "jwks_file = \"a.json\"\njwks_url = \"https://x/k\"\nalgorithms = [\"RS256\"]",
            "give exactly one",
        );
        refused("algorithms = [\"RS256\"]", "give exactly one");
        refused(
            "jwks_url = \"http://id.example/k\"\nalgorithms = [\"RS256\"]",
            "only to a loopback",
        );
        refused(
            "jwks_url = \"https://id.example/k\"",
            "at least one algorithm",
        );
        refused(
            "jwks_url = \"https://id.example/k\"\nalgorithms = [\"HS256\"]",
            "shared secret",
        );
        refused(
            "oidc_issuer = \"https://id.example\"\nalgorithms = [\"none\"]",
            "never accepted",
        );
        refused(
            "oidc_issuer = \"https://id.example\"\nissuer = \"https://other\"",
            "leave `issuer` out",
        );
        refused(
            "jwks_file = \"a.json\"\nalgorithms = [\"RS256\"]\njwks_stale_s = 100",
            "applies to `jwks_url` and `oidc_issuer` only",
        );
        refused(
            "oidc_issuer = \"https://id.example\"\njwks_refresh_s = 30",
            "not within 60..=86400",
        );
        refused(
            "oidc_issuer = \"https://id.example\"\njwks_refresh_s = 7200\njwks_stale_s = 3600",
            "shorter than jwks_refresh_s",
        );
        refused(
            "oidc_issuer = \"https://id.example\"\nqualifier_by_claim = { claim = \"plan\", map = { beta = \"a b\" } }",
            "not a version number",
        );
    }
}
