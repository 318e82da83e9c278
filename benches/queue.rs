//! The durable queue alone, in-process, on SQLite (`data_dir/tasks.db`, group commit,
//! `synchronous = FULL`): what a task costs between its 202 and its recorded outcome,
//! without HTTP or a guest.
//!
//!     cargo bench --bench queue
//!
//! - `queue/submit/64`: 64 submissions at once, as 64 clients' async requests would make
//!   (each answered once committed): the time per batch, so a task's share is a 64th.
//! - `queue/lifecycle/64`: 64 tasks submitted at once, claimed, and their outcomes recorded
//!   (`Finish`, then one flush): a task's whole life in the queue, per batch of 64.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmgate::config::QueueConfig;
use wasmgate::invocation::{StoredValue, Target, TriggerKind};
use wasmgate::queue::{NewTask, Queue, StoredInvocation, SystemClock, TaskState, Update};

const BATCH: usize = 64;

fn task(id: String, now: i64) -> NewTask {
    NewTask {
        id,
        invocation: StoredInvocation {
            target: Target {
                function: "hello".into(),
                qualifier: "LATEST".into(),
            },
            trigger: "jobs".into(),
            origin: TriggerKind::Http,
            request_id: "bench".into(),
            method: "POST".into(),
            uri: "/jobs".into(),
            headers: vec![(
                "content-type".into(),
                StoredValue::Text("text/plain".into()),
            )],
        },
        body: b"work".to_vec(),
        callback_url: None,
        created_ms: now,
        due_ms: now,
        trigger_quota: None,
        trigger_bytes_quota: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        group_commit: true,
        workers: std::num::NonZeroUsize::new(16).unwrap(),
        retention_s: 7 * 86400,
        max_tasks: u64::MAX,
        max_queue_bytes: u64::MAX,
        callback_concurrency: std::num::NonZeroUsize::new(64).unwrap(),
    };
    let queue = Arc::new(
        Queue::open(dir.path(), &config, None, Arc::new(SystemClock), &|_| {
            "LATEST".into()
        })
        .unwrap(),
    );
    let ids = Arc::new(AtomicU64::new(0));
    let submit_all = |queue: Arc<Queue>, ids: Arc<AtomicU64>| async move {
        let now = queue.now_ms();
        let subs = (0..BATCH).map(|_| {
            let q = queue.clone();
            let id = format!("t{}", ids.fetch_add(1, Ordering::Relaxed));
            tokio::spawn(async move { q.submit(task(id, now)).await })
        });
        for s in futures::future::join_all(subs).await {
            s.unwrap().unwrap();
        }
    };
    c.bench_function("queue/submit/64", |b| {
        b.iter(|| rt.block_on(submit_all(queue.clone(), ids.clone())))
    });
    // Start the lifecycle with nothing left over from the submissions above.
    rt.block_on(async { while !queue.claim(1000).await.is_empty() {} });
    c.bench_function("queue/lifecycle/64", |b| {
        b.iter(|| {
            rt.block_on(async {
                submit_all(queue.clone(), ids.clone()).await;
                let mut claimed = 0;
                while claimed < BATCH {
                    let tasks = queue.claim(BATCH).await;
                    assert!(!tasks.is_empty(), "submitted tasks are due");
                    claimed += tasks.len();
                    let now = queue.now_ms();
                    for t in tasks {
                        queue.record(Update::Finish {
                            key: t.new.key(),
                            state: TaskState::Succeeded,
                            attempts: 1,
                            finished_ms: now,
                            last_error: None,
                            status: Some(200),
                            preview: Some(b"ok".to_vec()),
                            callback: None,
                        });
                    }
                }
                queue.flush().await;
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
