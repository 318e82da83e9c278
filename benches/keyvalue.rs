//! The key-value store alone, in-process, on SQLite (`data_dir/keyvalue.db`, WAL,
//! `synchronous = FULL`): what one bucket operation costs without HTTP or a guest.
//!
//!     cargo bench --bench keyvalue
//!
//! - `kv/get`: a point read of one of 1000 keys (a reader connection from the pool).
//! - `kv/set/1`: one write, waited for (the writer thread, one commit and fsync each).
//! - `kv/set/32`: 32 writes at once, as 32 guests would (one group commit for all): the time
//!   per batch of 32, so per write is a 32nd of it.
//! - `kv/increment/32`: 32 increments of one key at once.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmgate::config::BucketConfig;
use wasmgate::kv::{Bucket, Stores, Write};

fn bucket(rt: &tokio::runtime::Runtime) -> (Arc<Bucket>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = BucketConfig {
        name: "bench".into(),
        max_bytes: 1 << 30,
        max_value_bytes: 1 << 20,
    };
    let stores = Stores::open(dir.path(), &[config], None, None).unwrap();
    let b = stores.bucket("bench").unwrap().clone();
    rt.block_on(async {
        let writes = (0..1000)
            .map(|i| Write::Set(format!("k{i}"), b"0".to_vec()))
            .collect();
        b.write("set_many", writes).await.unwrap();
    });
    (b, dir)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (b, _dir) = bucket(&rt);
    let mut i = 0u64;
    c.bench_function("kv/get", |bench| {
        bench.iter(|| {
            i += 1;
            rt.block_on(b.get(&format!("k{}", i % 1000))).unwrap()
        })
    });
    c.bench_function("kv/set/1", |bench| {
        bench.iter(|| {
            i += 1;
            rt.block_on(b.write(
                "set",
                vec![Write::Set(
                    format!("k{}", i % 1000),
                    i.to_string().into_bytes(),
                )],
            ))
            .unwrap()
        })
    });
    c.bench_function("kv/set/32", |bench| {
        bench.iter(|| {
            i += 1;
            let n = i;
            let b = b.clone();
            rt.block_on(async move {
                let writes = (0..32).map(|j| {
                    let b = b.clone();
                    tokio::spawn(async move {
                        b.write(
                            "set",
                            vec![Write::Set(format!("k{j}"), n.to_string().into_bytes())],
                        )
                        .await
                    })
                });
                for w in futures::future::join_all(writes).await {
                    w.unwrap().unwrap();
                }
            })
        })
    });
    c.bench_function("kv/increment/32", |bench| {
        bench.iter(|| {
            let b = b.clone();
            rt.block_on(async move {
                let incs = (0..32).map(|_| {
                    let b = b.clone();
                    tokio::spawn(async move { b.increment("counter", 1).await })
                });
                for r in futures::future::join_all(incs).await {
                    r.unwrap().unwrap();
                }
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
