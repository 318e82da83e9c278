//! The normal client of the protocol-abuse benchmark (`bench/abuse.sh` with `CLIENT=rust`),
//! compiled: the same measurement as `bench/abuse/abuse.py client` without a Python
//! interpreter's own scheduling delays in the latencies it reports.
//!
//! CONCURRENCY workers, each with one HTTP/1.1 keep-alive connection from SOURCE, send GET
//! PATH at RATE requests a second in all (each worker on its own schedule, open loop: a late
//! answer does not delay the next send beyond catching up), for DURATION seconds. A request
//! that fails or takes more than 5 s is not a success. Prints one JSON object, as the Python
//! client does: requests, success_pct, p50_ms, p99_ms, max_ms, other_statuses, errors.
//!
//!     cargo run --release --example abuse_client -- PORT SOURCE PATH CONCURRENCY RATE DURATION

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    ok: Vec<f64>,
    other: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, source, path, concurrency, rate, duration] = &args[..] else {
        eprintln!("usage: abuse_client PORT SOURCE PATH CONCURRENCY RATE DURATION_S");
        std::process::exit(2);
    };
    let url = format!("http://127.0.0.1:{port}{path}");
    let source: std::net::IpAddr = source.parse().expect("source address");
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let rate: f64 = rate.parse().expect("rate");
    let duration = Duration::from_secs_f64(duration.parse().expect("duration"));
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let stop_at = Instant::now() + duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let client = reqwest::Client::builder()
            .local_address(source)
            .http1_only()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let (url, tally) = (url.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            // Spread the workers' schedules over one interval.
            let mut next = Instant::now() + interval.mul_f64(i as f64 / concurrency as f64);
            loop {
                let now = Instant::now();
                if now >= stop_at {
                    break;
                }
                if next > now {
                    tokio::time::sleep(next - now).await;
                }
                next = (next + interval).max(Instant::now().checked_sub(interval).unwrap_or(next));
                let t0 = Instant::now();
                let result = async {
                    let r = client.get(&url).send().await?;
                    let status = r.status().as_u16();
                    r.bytes().await?;
                    Ok::<u16, reqwest::Error>(status)
                }
                .await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let mut t = tally.lock().expect("tally");
                match result {
                    Ok(s) if (200..300).contains(&s) => t.ok.push(ms),
                    Ok(s) => *t.other.entry(s).or_default() += 1,
                    Err(e) => {
                        let name = if e.is_timeout() {
                            "timeout"
                        } else if e.is_connect() {
                            "connect"
                        } else {
                            "request"
                        };
                        *t.errors.entry(name.to_string()).or_default() += 1;
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut t = tally.lock().expect("tally");
    t.ok.sort_by(f64::total_cmp);
    let total = t.ok.len() as u64 + t.other.values().sum::<u64>() + t.errors.values().sum::<u64>();
    let out = serde_json::json!({
        "requests": total,
        "success_pct": if total > 0 { (10000.0 * t.ok.len() as f64 / total as f64).round() / 100.0 } else { 0.0 },
        "p50_ms": percentile(&t.ok, 0.5),
        "p99_ms": percentile(&t.ok, 0.99),
        "max_ms": t.ok.last(),
        "other_statuses": t.other,
        "errors": t.errors,
    });
    println!("{out}");
}
