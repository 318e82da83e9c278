//! Keys of a `jwt` trigger fetched from a URL (`jwks_url`) or found through OpenID Connect
//! discovery (`oidc_issuer`), SPEC section 4.4.
//!
//! The set is fetched off the request path by a refresher task (at start, then when its
//! `Cache-Control: max-age` runs out, kept within [60 s, 24 h]), and once at once when a
//! token names a `kid` the set does not have, at most once every 30 s per trigger. Fetches are
//! single-flight: requests that need a refresh at the same time share one. A failed refresh
//! keeps the last good set until it is `jwks_stale_s` old; with no set the trigger answers
//! 503 and the refresher retries with backoff (1 s doubling to 60 s).
//!
//! The fetch rules: HTTPS (plain HTTP only to a loopback address), 5 s, 1 MiB, no redirects,
//! no proxy, the Web PKI roots plus `jwks_ca`. The configured URL is the operator's own (it
//! may be an inside address, never one of the gateway's private listeners); a `jwks_uri`
//! found by discovery on another host than the issuer's must resolve to public addresses.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use super::jwt::KeySet;
use crate::config::{JwtConfig, KeySource};

/// A fetched set's life is its `max-age`, kept within these bounds.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// An unknown `kid` refreshes the set at most this often per trigger.
pub const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(30);
/// One fetch (discovery document or key set) takes at most this long ...
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// ... and reads at most this many bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Retries after a failed fetch: 1 s doubling to 60 s.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The life of a fetched set: its `Cache-Control: max-age` (or `default` without one),
/// within [`MIN_MAX_AGE`, `MAX_MAX_AGE`]. `no-cache`/`no-store` count as the minimum.
pub fn max_age(cache_control: Option<&str>, default: Duration) -> Duration {
    let mut age = default;
    if let Some(cc) = cache_control {
        for directive in cc.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                age = Duration::ZERO;
                break;
            }
            if let Some(v) = lower.strip_prefix("max-age=")
                && let Ok(s) = v.trim_matches('"').parse::<u64>()
            {
                age = Duration::from_secs(s);
            }
        }
    }
    age.clamp(MIN_MAX_AGE, MAX_MAX_AGE)
}

/// Between failed fetches: 1 s doubling to 60 s.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(BACKOFF_MAX)
}

/// The cache policy's state, with time passed in (so it can be tested with a fake clock).
#[derive(Default)]
pub struct CacheState {
    set: Option<Arc<KeySet>>,
    /// When the set held was fetched, and until when it is fresh.
    fetched: Option<Instant>,
    fresh_until: Option<Instant>,
    /// The last refresh an unknown `kid` caused.
    last_forced: Option<Instant>,
    /// Failed fetches in a row, and what the last one said.
    failures: u32,
    problem: Option<String>,
    /// Bumped at every fetch that ends (success or failure): single-flight waiters compare it.
    round: u64,
    /// When the refresher fetches next (none: at once).
    next: Option<Instant>,
}

impl CacheState {
    /// The set to verify with at `now`: none before the first fetch, and none once the last
    /// good set is older than `stale`.
    pub fn current(&mut self, now: Instant, stale: Duration) -> Option<Arc<KeySet>> {
        if let Some(fetched) = self.fetched
            && now.saturating_duration_since(fetched) > stale
            && self.set.is_some()
        {
            self.set = None;
            self.fresh_until = None;
            // Without a set, the refresher waits no longer than its backoff.
            let soon = now + backoff(self.failures.max(1));
            self.next = Some(self.next.map_or(soon, |n| n.min(soon)));
        }
        self.set.clone()
    }

    /// Whether an unknown `kid` may refresh the set now (and, if so, that it does: the next
    /// one waits [`UNKNOWN_KID_EVERY`]).
    pub fn may_force(&mut self, now: Instant) -> bool {
        match self.last_forced {
            Some(last) if now.saturating_duration_since(last) < UNKNOWN_KID_EVERY => false,
            _ => {
                self.last_forced = Some(now);
                true
            }
        }
    }

    /// Records a good fetch of `set`, fresh for `life`; the next fetch is due when it stops
    /// being fresh, and never later than half way to `stale` (so a failed refresh still has
    /// the other half to be retried in before the set is dropped).
    pub fn fetched(&mut self, now: Instant, set: Arc<KeySet>, life: Duration, stale: Duration) {
        let life = life.min(stale / 2).max(Duration::from_secs(1));
        self.set = Some(set);
        self.fetched = Some(now);
        self.fresh_until = Some(now + life);
        self.failures = 0;
        self.problem = None;
        self.round += 1;
        self.next = Some(now + life);
    }

    /// Records a failed fetch; the last good set is kept, and the next try waits the backoff.
    pub fn failed(&mut self, now: Instant, problem: String) {
        self.failures = self.failures.saturating_add(1);
        self.problem = Some(problem);
        self.round += 1;
        self.next = Some(now + backoff(self.failures));
    }

    /// Whether the refresher fetches at `now`: at first, when the set stops being fresh,
    /// and after a failure once its backoff has passed.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// How long the refresher may sleep from `now` (at most `cap`).
    pub fn until_due(&self, now: Instant, cap: Duration) -> Duration {
        self.next
            .map_or(Duration::ZERO, |next| next.saturating_duration_since(now))
            .min(cap)
    }
}

/// What `/readyz` and the metrics show of a trigger's keys.
#[derive(Debug, Clone)]
pub struct KeysStatus {
    pub trigger: String,
    /// Whether the trigger has a set to verify with.
    pub ready: bool,
    pub keys: usize,
    pub age_s: Option<f64>,
    pub problem: Option<String>,
}

/// Where the set comes from.
#[derive(Debug, Clone)]
enum Origin {
    Url(String),
    Issuer(String),
}

/// What discovery found: where the keys are, and which algorithms the issuer signs with.
struct Discovered {
    jwks_uri: String,
    algorithms: Vec<String>,
}

/// The remote key set of one trigger.
pub struct RemoteKeys {
    trigger: String,
    origin: Origin,
    config: JwtConfig,
    roots: Option<Vec<reqwest::Certificate>>,
    default_life: Duration,
    stale: Duration,
    state: Mutex<CacheState>,
    /// Held by the one fetch in flight.
    flight: tokio::sync::Mutex<()>,
    /// Whether the refresher runs (once, whichever generation started it).
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("trigger", &self.trigger)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Every remote key set alive (a reload's old ones go when their triggers do), for the
/// metrics and `/readyz`.
static LIVE: Mutex<Vec<Weak<RemoteKeys>>> = Mutex::new(Vec::new());

/// Sets the key gauges of every trigger whose keys are fetched (before `/metrics` is
/// encoded). A trigger of an older generation still alive shows under the same name; the
/// newest registered is written last.
pub fn update_gauges() {
    let live: Vec<Arc<RemoteKeys>> = {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    let m = &crate::metrics::METRICS;
    m.jwks_keys.clear();
    m.jwks_age.clear();
    for k in live {
        let s = k.status();
        let labels = crate::metrics::TriggerLabels { trigger: s.trigger };
        m.jwks_keys.get_or_create(&labels).set(s.keys as i64);
        m.jwks_age
            .get_or_create(&labels)
            .set(s.age_s.unwrap_or(0.0));
    }
}

impl RemoteKeys {
    /// The remote keys of trigger `trigger`, or `None` for a `jwks_file`. Fetches nothing.
    pub fn new(trigger: &str, config: &JwtConfig) -> Result<Option<Arc<RemoteKeys>>> {
        let origin = match &config.source {
            KeySource::File(_) => return Ok(None),
            KeySource::Url(u) => {
                crate::config::check_key_url("key `jwt.jwks_url`", u)?;
                Origin::Url(u.clone())
            }
            KeySource::Issuer(i) => {
                crate::config::check_key_url("key `jwt.oidc_issuer`", i)?;
                Origin::Issuer(i.clone())
            }
        };
        let roots = match &config.jwks_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow!("key `jwt.jwks_ca`: {}: {e}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| anyhow!("key `jwt.jwks_ca`: {}: {e}", path.display()))?;
                if certs.is_empty() {
                    bail!("key `jwt.jwks_ca`: {}: no certificate", path.display());
                }
                Some(certs)
            }
            None => None,
        };
        let keys = Arc::new(RemoteKeys {
            trigger: trigger.to_string(),
            origin,
            config: config.clone(),
            roots,
            default_life: Duration::from_secs(config.jwks_refresh_s),
            stale: Duration::from_secs(config.jwks_stale_s),
            state: Mutex::new(CacheState::default()),
            flight: tokio::sync::Mutex::new(()),
            started: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Some(keys))
    }

    /// Registers the set for `/readyz` and the metrics, and starts its refresher (the first
    /// fetch at once). The refresher ends when the set is dropped (a reload replaced it).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(self));
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                let Some(keys) = weak.upgrade() else { return };
                if keys.lock().due(Instant::now()) {
                    keys.refresh().await;
                }
                // Wake at least every 30 s to notice a reload dropped the set.
                let wait = keys
                    .lock()
                    .until_due(Instant::now(), Duration::from_secs(30));
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Whether `other` fetches from the same place and parses under the same rules (a
    /// reload's new generation then keeps using it, refresher and all).
    pub fn same_source(&self, other: &RemoteKeys) -> bool {
        format!("{:?}", other.origin) == format!("{:?}", self.origin)
            && other.config.algorithms == self.config.algorithms
            && other.config.issuer == self.config.issuer
            && other.config.audience == self.config.audience
            && other.config.leeway_s == self.config.leeway_s
            && other.config.jwks_ca == self.config.jwks_ca
            && other.config.jwks_refresh_s == self.config.jwks_refresh_s
            && other.config.jwks_stale_s == self.config.jwks_stale_s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The set to verify with now (none before the first fetch or once it is stale).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.lock().current(Instant::now(), self.stale)
    }

    /// The set after a token named a `kid` (`None`: no `kid`) the set does not have. A fetch
    /// in flight is waited for first (it may bring the key); if the key is still missing,
    /// the set is fetched again at once, unless the last such fetch is under 30 s old.
    pub async fn after_unknown_kid(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        if self.flight.try_lock().is_err() {
            drop(self.flight.lock().await);
            let set = self.current();
            if set.as_ref().is_some_and(|s| s.has(kid)) {
                return set;
            }
        }
        let force = self.lock().may_force(Instant::now());
        if force {
            self.refresh().await;
        }
        self.current()
    }

    /// Fetches the set once; concurrent callers share the fetch in flight.
    pub async fn refresh(&self) {
        let round = self.lock().round;
        let _flight = self.flight.lock().await;
        if self.lock().round != round {
            // Another caller's fetch ended while this one waited: that is this one's too.
            return;
        }
        match self.fetch().await {
            Ok((set, life)) => {
                self.count("ok");
                let had = self.lock().set.as_ref().map(|s| s.kids());
                let kids = set.kids();
                if had.as_ref() != Some(&kids) {
                    tracing::info!(
                        trigger = %self.trigger,
                        "JWT keys from {}: {} key(s) {kids:?}",
                        self.describe(),
                        set.len()
                    );
                }
                self.lock()
                    .fetched(Instant::now(), Arc::new(set), life, self.stale);
            }
            Err(e) => {
                self.count("failed");
                let message = format!("{e:#}");
                let kept = self.lock().set.is_some();
                tracing::warn!(
                    trigger = %self.trigger,
                    "JWT keys from {} could not be fetched ({}): {message}",
                    self.describe(),
                    if kept { "the last good set is kept" } else { "the trigger answers 503 until they are" }
                );
                self.lock().failed(Instant::now(), message);
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        crate::metrics::METRICS
            .jwks_fetches
            .get_or_create(&crate::metrics::JwksFetchLabels {
                trigger: self.trigger.clone(),
                outcome,
            })
            .inc();
    }

    fn describe(&self) -> String {
        match &self.origin {
            Origin::Url(u) => u.clone(),
            Origin::Issuer(i) => format!("issuer {i}"),
        }
    }

    pub fn status(&self) -> KeysStatus {
        let now = Instant::now();
        let mut state = self.lock();
        let set = state.current(now, self.stale);
        KeysStatus {
            trigger: self.trigger.clone(),
            ready: set.is_some(),
            keys: set.as_ref().map_or(0, |s| s.len()),
            age_s: state
                .fetched
                .filter(|_| set.is_some())
                .map(|f| now.saturating_duration_since(f).as_secs_f64()),
            problem: state.problem.clone(),
        }
    }

    /// One fetch: discovery first for an issuer, then the key set.
    async fn fetch(&self) -> Result<(KeySet, Duration)> {
        let (url, listed, algorithms, issuer) = match &self.origin {
            Origin::Url(u) => (
                u.clone(),
                true,
                self.config.algorithms.clone(),
                self.config.issuer.clone(),
            ),
            Origin::Issuer(i) => {
                let d = self.discover(i).await?;
                let listed = same_origin(i, &d.jwks_uri);
                let algorithms = if self.config.algorithms.is_empty() {
                    d.algorithms
                } else {
                    self.config.algorithms.clone()
                };
                (d.jwks_uri, listed, algorithms, Some(i.clone()))
            }
        };
        let (body, cache_control) = self.get(&url, listed).await?;
        let text = std::str::from_utf8(&body).map_err(|_| anyhow!("{url}: not UTF-8"))?;
        let set = KeySet::parse(
            text,
            &url,
            &algorithms,
            issuer.as_deref(),
            &self.config,
            true,
        )?;
        Ok((set, max_age(cache_control.as_deref(), self.default_life)))
    }

    async fn discover(&self, issuer: &str) -> Result<Discovered> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url, true).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| anyhow!("{url}: not JSON: {e}"))?;
        let found = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
        if found != issuer {
            bail!("{url}: the document's issuer '{found}' is not the configured '{issuer}'");
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{url}: no jwks_uri"))?
            .to_string();
        crate::config::check_key_url(&format!("{url}: jwks_uri"), &jwks_uri)?;
        let algorithms = doc
            .get("id_token_signing_alg_values_supported")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .filter(|a| crate::config::is_public_key_algorithm(a))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| vec!["RS256".to_string()]);
        Ok(Discovered {
            jwks_uri,
            algorithms,
        })
    }

    /// GETs `url` under the fetch rules, the name's lookup included in [`FETCH_TIMEOUT`]; the
    /// body and its `Cache-Control`.
    async fn get(&self, url: &str, listed: bool) -> Result<(Vec<u8>, Option<String>)> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get_unbounded(url, listed))
            .await
            .map_err(|_| anyhow!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
    }

    async fn get_unbounded(&self, url: &str, listed: bool) -> Result<(Vec<u8>, Option<String>)> {
        let parsed = reqwest::Url::parse(url).map_err(|e| anyhow!("{url}: {e}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("{url}: no host"))?
            .to_string();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| anyhow!("{url}: no port"))?;
        let addr = pick_address(&host, port, listed).await?;
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("wasmgate/", env!("CARGO_PKG_VERSION")));
        if host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            builder = builder.resolve(&host, addr);
        }
        for cert in self.roots.iter().flatten() {
            builder = builder.add_root_certificate(cert.clone());
        }
        let client = builder.build().map_err(|e| anyhow!("{url}: {e}"))?;
        let mut resp = client
            .get(parsed)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| anyhow!("{url}: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_redirection() {
            bail!("{url}: answered {status}; redirects are not followed");
        }
        if status != reqwest::StatusCode::OK {
            bail!("{url}: answered {status}");
        }
        let cache_control = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow!("{url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                bail!("{url}: the document is over {MAX_DOCUMENT_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether `other` is on the same scheme, host and port as `base`.
fn same_origin(base: &str, other: &str) -> bool {
    match (reqwest::Url::parse(base), reqwest::Url::parse(other)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// The address to connect to for `host:port`: never a private listener of the gateway; a
/// name not listed by the operator only to public addresses.
async fn pick_address(host: &str, port: u16, listed: bool) -> Result<std::net::SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<std::net::SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| anyhow!("cannot resolve '{host}': {e}"))?
            .collect(),
    };
    let mut refused = None;
    for addr in candidates {
        if crate::netguard::is_private_listener(addr) {
            refused = Some(format!("{addr} is a private listener of the gateway"));
        } else if !listed && crate::netguard::is_internal(addr.ip()) {
            refused = Some(format!(
                "'{host}' resolves to the internal address {}, and the configured issuer is on another host",
                addr.ip()
            ));
        } else {
            return Ok(addr);
        }
    }
    Err(anyhow!(
        "{}",
        refused.unwrap_or_else(|| format!("'{host}' has no address"))
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn max_age_is_kept_within_its_bounds() {
        let d = Duration::from_secs(3600);
        assert_eq!(max_age(None, d), d);
        assert_eq!(
            max_age(Some("public, max-age=600"), d),
            Duration::from_secs(600)
        );
        assert_eq!(max_age(Some("max-age=5"), d), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=999999"), d), MAX_MAX_AGE);
        assert_eq!(max_age(Some("no-store"), d), MIN_MAX_AGE);
        assert_eq!(max_age(Some("max-age=nonsense"), d), d);
        assert_eq!(max_age(None, Duration::from_secs(1)), MIN_MAX_AGE);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let got: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    fn set() -> Arc<KeySet> {
        Arc::new(KeySet::empty_for_tests())
    }

    #[test]
    fn an_unknown_kid_refreshes_at_most_once_per_30_seconds() {
        let mut s = CacheState::default();
        let t0 = Instant::now();
        assert!(s.may_force(t0));
        assert!(!s.may_force(t0 + Duration::from_secs(1)));
        assert!(!s.may_force(t0 + Duration::from_secs(29)));
        assert!(s.may_force(t0 + Duration::from_secs(30)));
        assert!(!s.may_force(t0 + Duration::from_secs(45)));
    }

    #[test]
    fn a_failed_refresh_keeps_the_set_until_it_is_stale() {
        let mut s = CacheState::default();
        let t0 = Instant::now();
        let stale = Duration::from_secs(86400);
        assert!(s.current(t0, stale).is_none());
        assert!(s.due(t0));
        s.fetched(t0, set(), Duration::from_secs(600), stale);
        assert!(!s.due(t0 + Duration::from_secs(599)));
        assert!(s.due(t0 + Duration::from_secs(600)));
        let t = t0 + Duration::from_secs(700);
        s.failed(t, "down".into());
        assert!(s.current(t, stale).is_some());
        assert_eq!(s.until_due(t, Duration::MAX), Duration::from_secs(1));
        s.failed(t, "down".into());
        assert_eq!(s.until_due(t, Duration::MAX), Duration::from_secs(2));
        assert_eq!(
            s.until_due(t, Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
        assert!(s.current(t0 + stale, stale).is_some());
        assert!(
            s.current(t0 + stale + Duration::from_secs(1), stale)
                .is_none()
        );
        // A good fetch brings it back and clears the backoff.
        let t1 = t0 + stale + Duration::from_secs(2);
        s.fetched(t1, set(), Duration::from_secs(60), stale);
        assert!(s.current(t1, stale).is_some());
        assert_eq!(s.until_due(t1, Duration::MAX), Duration::from_secs(60));
        assert_eq!(s.problem, None);
    }

    #[test]
    fn the_next_fetch_comes_before_the_set_is_stale() {
        let mut s = CacheState::default();
        let t0 = Instant::now();
        let stale = Duration::from_secs(3600);
        // A day's max-age with an hour's stale limit: refreshed at half an hour.
        s.fetched(t0, set(), MAX_MAX_AGE, stale);
        assert!(!s.due(t0 + Duration::from_secs(1799)));
        assert!(s.due(t0 + Duration::from_secs(1800)));
        // Every refresh failing: dropped at the limit, and then due within the backoff.
        let t = t0 + Duration::from_secs(1800);
        s.failed(t, "down".into());
        s.failed(t, "down".into());
        let late = t0 + stale + Duration::from_secs(1);
        assert!(s.current(late, stale).is_none());
        assert!(s.until_due(late, Duration::MAX) <= Duration::from_secs(4));
    }

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        for ok in [
            "https://issuer.example",
            "https://issuer.example/realms/x/protocol/openid-connect/certs",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            crate::config::check_key_url("k", ok).unwrap();
        }
        for bad in [
            "http://issuer.example/jwks",
            "http://10.0.0.1/jwks",
            "ftp://issuer.example/jwks",
            "https://user:pw@issuer.example/jwks",
            "not a url",
        ] {
            assert!(crate::config::check_key_url("k", bad).is_err(), "{bad}");
        }
    }

    /// A loopback server that answers every request with `body` after `delay`, counting them.
    fn counting_server(body: &'static str, delay: Duration) -> (String, Arc<AtomicU64>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        (url, count)
    }

    const JWKS: &str = include_str!("../../tests/fixtures/jwks.json");

    fn remote(url: &str) -> Arc<RemoteKeys> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[trigger]]\nname = \"j\"\nfunction = \"f\"\nauth = \"jwt\"\n[trigger.jwt]\njwks_url = \"{url}\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n[[function]]\nname = \"f\"\nwasm = \"f.wasm\"\n"
        );
        let config =
            crate::config::Config::parse(&text, std::path::Path::new("t.toml"), &|_| None).unwrap();
        let crate::config::AuthConfig::Jwt(j) = &config.triggers[0].auth else {
            panic!("a jwt trigger");
        };
        RemoteKeys::new("j", j).unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_refreshes_share_one_fetch() {
        let (url, count) = counting_server(JWKS, Duration::from_millis(300));
        let keys = remote(&url);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let k = keys.clone();
                tokio::spawn(async move { k.refresh().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let set = keys.current().expect("a set");
        assert!(set.len() >= 3, "{}", set.len());
        assert_eq!(keys.status().problem, None);
        // Forced by an unknown kid: once, then not again within 30 s.
        keys.after_unknown_kid(Some("new")).await;
        keys.after_unknown_kid(Some("new")).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_document_keeps_the_last_good_set() {
        let (url, _) = counting_server(JWKS, Duration::ZERO);
        let keys = remote(&url);
        keys.refresh().await;
        assert!(keys.current().is_some());
        let (bad, _) = counting_server("{\"keys\": 7}", Duration::ZERO);
        let broken = remote(&bad);
        broken.refresh().await;
        assert!(broken.current().is_none());
        assert!(broken.status().problem.is_some());
    }
}
