//! Prometheus metrics (`GET /metrics` on the admin listener), in the text exposition format.
//!
//! One process-wide set, like the process itself: requests by trigger, status and
//! authentication outcome; request latency; instantiation time; executions in flight;
//! throttling refusals; async queue depth, attempts and failures; deploys.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub trigger: String,
    pub status: u16,
    /// `none` (no trigger reached), `anonymous`, `ok` or `refused`.
    pub auth: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub trigger: String,
    /// `rate_limit`, `function_concurrency`, `node_in_flight` or `draining`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub function: String,
    /// `succeeded`, `failed` or `capacity`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    pub trigger: String,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    pub bucket: String,
    /// `get`, `set`, `delete`, `exists`, `list_keys`, `increment`, `get_many`, `set_many`,
    /// `delete_many`, and the admin API's `admin_put` and `admin_delete`.
    pub op: &'static str,
    /// `ok`, `quota`, `invalid`, `no_such_store` or `unavailable`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub bucket: String,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<TriggerLabels, Histogram>,
    pub instantiation: Histogram,
    pub in_flight: Gauge,
    pub throttled: Family<ThrottleLabels, Counter>,
    pub queue_depth: Gauge,
    pub async_attempts: Family<AttemptLabels, Counter>,
    pub deploys: Counter,
    pub jwks_fetches: Family<JwksFetchLabels, Counter>,
    pub jwks_keys: Family<TriggerLabels, Gauge>,
    pub jwks_age: Family<TriggerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub trace_spans_exported: Counter,
    pub trace_spans_dropped: Counter,
    pub log_lines_dropped: Counter,
    pub kv_operations: Family<KvLabels, Counter>,
    pub kv_bytes: Family<BucketLabels, Gauge>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<TriggerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let instantiation = Histogram::new(exponential_buckets(0.00002, 2.0, 14));
        let in_flight = Gauge::default();
        let throttled = Family::<ThrottleLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let async_attempts = Family::<AttemptLabels, Counter>::default();
        let deploys = Counter::default();
        let jwks_fetches = Family::<JwksFetchLabels, Counter>::default();
        let jwks_keys = Family::<TriggerLabels, Gauge>::default();
        let jwks_age = Family::<TriggerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let trace_spans_exported = Counter::default();
        let trace_spans_dropped = Counter::default();
        let log_lines_dropped = Counter::default();
        let kv_operations = Family::<KvLabels, Counter>::default();
        let kv_bytes = Family::<BucketLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("wasmgate");
        registry.register(
            "kv_operations",
            "Key-value operations by bucket, operation and outcome",
            kv_operations.clone(),
        );
        registry.register(
            "kv_bytes",
            "Bytes (keys plus values) a key-value bucket holds",
            kv_bytes.clone(),
        );
        registry.register(
            "requests",
            "Requests by trigger, status and authentication outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by trigger",
            duration.clone(),
        );
        registry.register(
            "instantiation_seconds",
            "Time to build a fresh instance from a pre-instantiated component",
            instantiation.clone(),
        );
        registry.register("in_flight", "Executions running now", in_flight.clone());
        registry.register(
            "throttled",
            "Requests refused by rate limits, concurrency caps or draining",
            throttled.clone(),
        );
        registry.register(
            "async_queue_depth",
            "Async tasks not finished yet",
            queue_depth.clone(),
        );
        registry.register(
            "async_attempts",
            "Async attempts by function and outcome",
            async_attempts.clone(),
        );
        registry.register("deploys", "Function versions deployed", deploys.clone());
        registry.register(
            "jwks_fetches",
            "Fetches of a jwt trigger's keys (jwks_url, oidc_issuer) by outcome",
            jwks_fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Keys a jwt trigger holds from its jwks_url or oidc_issuer",
            jwks_keys.clone(),
        );
        registry.register(
            "jwks_age_seconds",
            "Age of the key set a jwt trigger verifies with (jwks_url, oidc_issuer)",
            jwks_age.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            trace_spans_exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector failed or was too slow",
            trace_spans_dropped.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines (access log included) dropped because stderr did not keep up",
            log_lines_dropped.clone(),
        );
        Metrics {
            requests,
            duration,
            instantiation,
            in_flight,
            throttled,
            queue_depth,
            async_attempts,
            deploys,
            jwks_fetches,
            jwks_keys,
            jwks_age,
            trace_spans_exported,
            trace_spans_dropped,
            log_lines_dropped,
            kv_operations,
            kv_bytes,
            registry,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// One trigger's request series, resolved when the trigger is built: a request that ends
/// the usual way (200, authenticated as the trigger authenticates) counts itself without
/// hashing its labels or copying the trigger's name. Any other outcome goes through the
/// families. The handles share the families' series: `/metrics` sees one count.
#[derive(Debug, Clone)]
pub struct TriggerSeries {
    /// `requests{trigger, status="200", auth=ok_auth}`.
    ok: Counter,
    ok_auth: &'static str,
    /// `request_duration_seconds{trigger}`.
    duration: Histogram,
}

impl TriggerSeries {
    /// The series of trigger `name`, whose successful requests are counted with `ok_auth`
    /// (`anonymous` or `ok`).
    pub fn new(name: &str, ok_auth: &'static str) -> TriggerSeries {
        let m = &METRICS;
        TriggerSeries {
            ok: m
                .requests
                .get_or_create(&RequestLabels {
                    trigger: name.to_string(),
                    status: 200,
                    auth: ok_auth,
                })
                .clone(),
            ok_auth,
            duration: m
                .duration
                .get_or_create(&TriggerLabels {
                    trigger: name.to_string(),
                })
                .clone(),
        }
    }

    /// Counts one request of this trigger.
    pub fn record(&self, name: &str, status: u16, auth: &'static str, seconds: f64) {
        if status == 200 && auth == self.ok_auth {
            self.ok.inc();
        } else {
            record_request(name, status, auth);
        }
        self.duration.observe(seconds);
    }
}

/// Counts one request that reached no trigger (its trigger label is empty).
pub fn record_unrouted(status: u16, auth: &'static str, seconds: f64) {
    record_request("", status, auth);
    METRICS
        .duration
        .get_or_create(&TriggerLabels {
            trigger: String::new(),
        })
        .observe(seconds);
}

/// Counts one request through the families (`trigger` empty when none was routed).
fn record_request(trigger: &str, status: u16, auth: &'static str) {
    METRICS
        .requests
        .get_or_create(&RequestLabels {
            trigger: trigger.to_string(),
            status,
            auth,
        })
        .inc();
}
