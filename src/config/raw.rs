//! The configuration file exactly as written: serde structs that reject unknown keys.
//! Nothing here is trusted; [`super::validate`] turns it into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub queue: RawQueue,
    pub cluster: Option<RawCluster>,
    pub tracing: Option<RawTracing>,
    #[serde(default, rename = "function")]
    pub functions: Vec<RawFunction>,
    #[serde(default, rename = "trigger")]
    pub triggers: Vec<RawTrigger>,
    #[serde(default, rename = "bucket")]
    pub buckets: Vec<RawBucket>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    pub name: String,
    pub max_bytes: Option<u64>,
    pub max_value_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub tls: Option<RawTls>,
    pub internal_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub admin_token_env: Option<String>,
    pub data_dir: Option<String>,
    pub artifact_key_file: Option<String>,
    /// How long a graceful drain may take before remaining connections are cut.
    pub drain_timeout_ms: Option<u64>,
    pub drain_grace_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<u64>,
    pub max_uri_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_async_body_bytes: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub max_connections: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub body_buffer_bytes: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub send_timeout_ms: Option<u64>,
    pub connection_buffer_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub name: String,
    pub wasm: String,
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_concurrency: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    pub namespace: Option<String>,
    /// Broker topics this function receives from triggers without `function`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Event types this function receives from the event API.
    #[serde(default)]
    pub events: Vec<String>,
    /// Buckets the function may open with wasi:keyvalue.
    #[serde(default)]
    pub keyvalue: Vec<String>,
    /// wasi:config/store values.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// wasi:config/store values read from the gateway's environment (secrets).
    #[serde(default)]
    pub variables_env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub name: String,
    pub kind: Option<String>,
    pub function: Option<String>,
    pub qualifier: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub auth: Option<String>,
    #[serde(default)]
    pub disable_internet: bool,
    #[serde(default)]
    pub pass_credentials: bool,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(rename = "async")]
    pub async_: Option<RawAsync>,
    pub signature: Option<RawSignature>,
    pub basic: Option<RawBasic>,
    pub jwt: Option<RawJwt>,
    pub bearer: Option<RawBearer>,
    pub cors: Option<RawCors>,
    // Routes by function name (kind = "http").
    pub async_path: Option<String>,
    pub functions: Option<Vec<String>>,
    // Topic routing (mqtt, nats) and templates.
    pub namespace: Option<String>,
    pub topic_match: Option<String>,
    // kind = "cron".
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub payload: Option<String>,
    pub catch_up: Option<bool>,
    // kind = "mqtt" | "nats".
    pub broker: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub username_env: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<String>,
    pub qos: Option<u8>,
    pub topics: Option<Vec<String>>,
    pub queue_group: Option<String>,
    pub reply_prefix: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: u32,
    pub burst: Option<u32>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    pub keys: Vec<RawSignatureKey>,
    pub window_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignatureKey {
    pub id: String,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    pub users: Vec<RawBasicUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicUser {
    pub username: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub oidc_issuer: Option<String>,
    pub jwks_ca: Option<String>,
    pub jwks_refresh_s: Option<u64>,
    pub jwks_stale_s: Option<u64>,
    pub qualifier_by_claim: Option<RawQualifierByClaim>,
    pub algorithms: Option<Vec<String>>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    pub leeway_s: Option<u64>,
    pub token_lookup: Option<String>,
    pub claim_pass_by: Option<String>,
    pub whitelist: Option<Vec<String>>,
    pub blacklist: Option<Vec<String>>,
    pub cache_ttl_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQualifierByClaim {
    pub claim: String,
    pub map: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBearer {
    pub tokens: Vec<RawBearerToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBearerToken {
    pub name: String,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub group_commit: Option<bool>,
    pub workers: Option<u32>,
    pub retention_s: Option<u64>,
    pub max_tasks: Option<u64>,
    pub max_queue_bytes: Option<u64>,
    pub callback_concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub nats: String,
    pub credentials_env: Option<String>,
    pub tls_ca: Option<String>,
    pub replicas: Option<u32>,
    pub ack_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: String,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub headers_env: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAsync {
    pub enabled: Option<bool>,
    pub max_retries: Option<u32>,
    pub max_event_age_s: Option<u64>,
    pub max_tasks: Option<u64>,
    pub max_queue_bytes: Option<u64>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub callback_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age_s: Option<u64>,
}
