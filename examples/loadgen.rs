//! Open-loop load generator for the overload benchmark (`bench/overload.sh`).
//!
//! Sends requests at a fixed rate regardless of how fast they are answered (so an overloaded
//! server sees the load it would see from many independent clients), and reports the share
//! of each status and the latency of admitted requests and of refusals separately.
//!
//!     cargo run --release --example loadgen -- URL RATE_PER_S DURATION_S

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen URL RATE_PER_S DURATION_S");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let rate: f64 = args[2].parse().expect("rate");
    let duration = Duration::from_secs_f64(args[3].parse().expect("duration"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let results: Arc<Mutex<BTreeMap<u16, Vec<f64>>>> = Arc::default();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = start;
    let mut tasks = Vec::new();
    while start.elapsed() < duration {
        next += interval;
        tokio::time::sleep_until(next.into()).await;
        let client = client.clone();
        let url = url.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let status = match client.get(&url).send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let _ = r.bytes().await;
                    s
                }
                Err(_) => 0,
            };
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            results.lock().unwrap().entry(status).or_default().push(ms);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let results = results.lock().unwrap();
    let total: usize = results.values().map(Vec::len).sum();
    println!(
        "sent {total} requests in {:.1} s ({:.0}/s)",
        duration.as_secs_f64(),
        total as f64 / duration.as_secs_f64()
    );
    println!("| status | share | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|");
    for (status, lat) in results.iter() {
        let mut l = lat.clone();
        l.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {} | {:.1}% | {:.2} | {:.2} | {:.2} |",
            if *status == 0 {
                "error".to_string()
            } else {
                status.to_string()
            },
            100.0 * l.len() as f64 / total as f64,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
}
