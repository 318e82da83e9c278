//! Core NATS load for `bench/sources.sh`.
//!
//!   natspub pub nats://127.0.0.1:4222 bench.x 20000   # publish 20000 small messages, flush
//!   natspub sub nats://127.0.0.1:4222 ceiling.x 20000 # count them, print messages/s
//!
//! `pub` publishes as fast as the connection takes them; `sub` prints `ready` once
//! subscribed, then the rate from its first message to its last (the ceiling: the server
//! delivering to a subscriber that keeps up). Core NATS may drop messages: `sub` gives up
//! after 10 s without one and prints how many came; `pub` gives the final flush 30 s.

use std::time::{Duration, Instant};

use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url, subject) = match args.as_slice() {
        [_, mode, url, subject, ..] => (mode.as_str(), url.as_str(), subject.clone()),
        _ => anyhow::bail!("usage: natspub pub|sub URL SUBJECT [MESSAGES]"),
    };
    let messages: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    // Room for every message in the subscriber's buffer: none is dropped for being slow.
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(messages.max(1024) as usize)
        .connect(url)
        .await?;
    match mode {
        "pub" => {
            for i in 0..messages {
                client
                    .publish(subject.clone(), format!("{{\"reading\":{i}}}").into())
                    .await?;
            }
            tokio::time::timeout(Duration::from_secs(30), client.flush()).await??;
        }
        "sub" => {
            let mut sub = client.subscribe(subject).await?;
            client.flush().await?;
            println!("ready");
            let mut first = None;
            let mut seen = 0u64;
            while seen < messages {
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
            println!("{:.0}", seen as f64 / secs.max(1e-9));
            if seen < messages {
                anyhow::bail!("{seen} of {messages} messages came");
            }
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    Ok(())
}
