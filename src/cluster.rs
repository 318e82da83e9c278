//! What the cluster backends share (SPEC section 10): the connection to NATS and the
//! key-value buckets on JetStream. The queue ([`crate::queue::jetstream`]) and the
//! registry ([`crate::registry`]) each hold their own connection.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use async_nats::jetstream;

use crate::config::{ClusterConfig, NatsCredentials};

/// What went wrong with the connection last, cleared when it is up: shown in `/readyz`.
pub type Problem = Arc<Mutex<Option<String>>>;

fn note(problem: &Problem, what: Option<String>) {
    if let Ok(mut p) = problem.lock() {
        *p = what;
    }
}

/// Connects to the cluster's servers (returns at once; the client connects, and
/// reconnects, by itself). Refusals by the server are noted in `problem`.
pub async fn connect(
    config: &ClusterConfig,
    problem: Problem,
) -> anyhow::Result<async_nats::Client> {
    let mut options = match &config.credentials {
        Some(NatsCredentials::File(path)) => {
            async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Some(NatsCredentials::UserPassword(u, p)) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        None => async_nats::ConnectOptions::new(),
    }
    .name("wasmgate")
    .retry_on_initial_connect()
    .max_reconnects(None)
    .reconnect_delay_callback(reconnect_delay)
    .event_callback(move |event| {
        let problem = problem.clone();
        async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("the cluster's NATS connection dropped; reconnecting")
                }
                async_nats::Event::Connected => {
                    note(&problem, None);
                    tracing::info!("connected to the cluster's NATS")
                }
                async_nats::Event::ServerError(e) => {
                    tracing::warn!("the cluster's NATS refused: {e}");
                    note(&problem, Some(format!("the server refused: {e}")));
                }
                // A refused handshake (credentials, TLS) shows as a client error.
                async_nats::Event::ClientError(e) => {
                    tracing::warn!("the cluster's NATS connection failed: {e}");
                    note(&problem, Some(e.to_string()));
                }
                other => tracing::warn!("cluster NATS: {other}"),
            }
        }
    });
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = config
        .nats
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("cluster.nats: {e}"))?;
    Ok(options.connect(addrs).await?)
}

/// Between attempts to reach NATS: 100 ms doubling to 2 s (a node should be back soon
/// after its server is).
pub fn reconnect_delay(attempt: usize) -> Duration {
    Duration::from_millis(100u64 << attempt.min(4)).min(Duration::from_secs(2))
}

/// The key-value bucket `bucket` (one value per key, entries older than `max_age_s`
/// expire), created when missing. Its stream is made here as the KV convention lays it out:
/// the client's own bucket creation first reads account fields servers before 2.10 do not
/// send.
pub async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    max_age_s: u64,
    replicas: usize,
) -> anyhow::Result<jetstream::kv::Store> {
    if js.get_key_value(bucket).await.is_err() {
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(max_age_s),
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
    }
    Ok(js.get_key_value(bucket).await?)
}

/// Waits (at most `max`) until `cell` is set (its setter calls `set.notify_waiters()`);
/// whether it is.
pub async fn wait_set<T>(cell: &OnceLock<T>, set: &Notify, max: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let notified = set.notified();
        if cell.get().is_some() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return cell.get().is_some();
        }
    }
}
