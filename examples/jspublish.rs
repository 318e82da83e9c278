//! The ceiling for the cluster queue: how many acknowledged publishes per second one
//! JetStream server takes, with `CONCURRENCY` publishes in flight (as many as the load
//! generator has clients), on a work-queue stream with file storage like the task stream.
//!
//!   cargo run --release --example jspublish -- nats://127.0.0.1:4222 5 64 600
//!   (server, seconds, publishes in flight, payload bytes)

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::stream::{FuturesUnordered, StreamExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("nats://127.0.0.1:4222", String::as_str);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let size: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(600);
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("JSPUBLISH").await;
    js.create_stream(jetstream::stream::Config {
        name: "JSPUBLISH".into(),
        subjects: vec!["jspublish.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let publish = |js: jetstream::Context, payload: bytes::Bytes| async move {
        js.publish("jspublish.task", payload).await?.await?;
        anyhow::Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut acked, mut failed) = (0u64, 0u64);
    for _ in 0..concurrency {
        in_flight.push(publish(js.clone(), payload.clone()));
    }
    while let Some(r) = in_flight.next().await {
        match r {
            Ok(()) => acked += 1,
            Err(_) => failed += 1,
        }
        if Instant::now() < deadline {
            in_flight.push(publish(js.clone(), payload.clone()));
        }
    }
    let rate = acked as f64 / started.elapsed().as_secs_f64();
    println!(
        "{rate:.0} acked publishes/s ({acked} acked, {failed} failed, {concurrency} in flight, {size} B)"
    );
    let _ = js.delete_stream("JSPUBLISH").await;
    Ok(())
}
