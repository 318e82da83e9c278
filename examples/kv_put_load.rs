//! The ceiling for cluster buckets: how many KV puts per second one JetStream server takes,
//! with `IN_FLIGHT` puts outstanding, on a bucket made the way src/kv/jetstream.rs makes one
//! (file storage, one value per key, direct gets) and with the same key encoding (base64url).
//! Keys cycle over `KEYS` names (`k0` .. `k999` by default), each value is `x`, as the counter
//! guest's `op=get-set` writes. Prints one line:
//! `<puts/s> puts/s p99 <ms> ms (<n> acked, <n> failed, <n> in flight, <n> keys)`.
//!
//!   cargo run --release --example kv_put_load -- nats://127.0.0.1:4222 6 64 1000
//!   (server, seconds, puts in flight, keys)
//!
//! The bucket (`KV_kv_put_load`) is created empty and deleted at the end.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

const BUCKET: &str = "kv_put_load";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("nats://127.0.0.1:4222", String::as_str);
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let in_flight_max: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let key_count: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);

    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let stream_name = format!("KV_{BUCKET}");
    let _ = js.delete_stream(&stream_name).await;
    // As Remote::store in src/kv/jetstream.rs (default limits of a [[bucket]]).
    js.create_or_update_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_bytes: 64 << 20,
        max_message_size: (1 << 20) + 4096,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    let store = js.get_key_value(BUCKET).await?;

    let keys: Vec<String> = (0..key_count)
        .map(|i| URL_SAFE_NO_PAD.encode(format!("k{i}")))
        .collect();
    let value = Bytes::from_static(b"x");
    let put = |store: kv::Store, key: String, value: Bytes| async move {
        let started = Instant::now();
        store.put(key, value).await?;
        anyhow::Ok(started.elapsed())
    };

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut next = 0usize;
    let mut in_flight = FuturesUnordered::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failed = 0u64;
    for _ in 0..in_flight_max {
        in_flight.push(put(
            store.clone(),
            keys[next % key_count].clone(),
            value.clone(),
        ));
        next += 1;
    }
    while let Some(r) = in_flight.next().await {
        match r {
            Ok(took) => latencies.push(took),
            Err(_) => failed += 1,
        }
        if Instant::now() < deadline {
            in_flight.push(put(
                store.clone(),
                keys[next % key_count].clone(),
                value.clone(),
            ));
            next += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let acked = latencies.len();
    println!(
        "{:.0} puts/s p99 {p99:.2} ms ({acked} acked, {failed} failed, {in_flight_max} in flight, {key_count} keys)",
        acked as f64 / elapsed
    );
    let _ = js.delete_stream(&stream_name).await;
    Ok(())
}
