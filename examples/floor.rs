//! The bare engine, for benchmarks: hyper HTTP/1 and wasmtime, a fresh instance per request
//! from the pooling allocator, and nothing else (no routing, limits, logging, deadlines or
//! TLS). `bench/load.sh` runs it beside wasmgate so that `wasmgate / floor` in one run says
//! what the gateway's own work costs. It is the team's reference host, built here as an
//! example of this crate so that it shares the gateway's wasmtime build.
//!
//!     cargo build --release --example floor
//!     KEEP_MEM=16777216 KEEP_TABLE=1048576 NOCOW=1 PAGEMAP=1 \
//!       target/release/examples/floor COMPONENT.wasm 127.0.0.1:18094
//!
//! Knobs (environment): POOLING=0 turns the pooling allocator off; POOL instance slots
//! (1000); KEEP_MEM / KEEP_TABLE bytes kept resident per slot (0); NOCOW=1 turns
//! copy-on-write memory images off; PAGEMAP=1 resets dirty pages with `PAGEMAP_SCAN`;
//! EPOCH=1 compiles the guest with epoch interruption, as the gateway does for its
//! deadlines (the deadline itself never comes: only the checks' cost is added); GWENGINE=1
//! uses the gateway's own engine (`runtime::engine::build_engine` for a one-function config:
//! its pool sizes, reservations, epochs), to tell the engine's settings from the rest;
//! STATIC=1 answers without any guest (what hyper alone costs).

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use wasmtime::Result;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct Host {
    ctx: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, wasm, addr] = &args[..] else {
        return Err(wasmtime::format_err!("usage: floor COMPONENT.wasm ADDR"));
    };
    let mut cfg = Config::new();
    let mut pool = PoolingAllocationConfig::default();
    let slots = env("POOL", 1000) as u32;
    pool.total_component_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memory_size(64 << 20)
        .linear_memory_keep_resident(env("KEEP_MEM", 0))
        .table_keep_resident(env("KEEP_TABLE", 0));
    if env("PAGEMAP", 0) == 1 {
        pool.pagemap_scan(Enabled::Yes);
    }
    if env("POOLING", 1) == 1 {
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    if env("NOCOW", 0) == 1 {
        cfg.memory_init_cow(false);
    }
    let epoch = env("EPOCH", 0) == 1;
    cfg.epoch_interruption(epoch);
    let engine = if env("GWENGINE", 0) == 1 {
        let config = wasmgate::config::Config::parse(
            &format!("[server]\nlisten = \"127.0.0.1:0\"\n[[function]]\nname = \"hello\"\nwasm = \"{wasm}\"\n"),
            std::path::Path::new("wasmgate.toml"),
            &|_| None,
        )
        .map_err(|e| wasmtime::format_err!("{e}"))?;
        wasmgate::runtime::engine::build_engine(&config)
            .map_err(|e| wasmtime::format_err!("{e}"))?
    } else {
        Engine::new(&cfg)?
    };
    let epoch = epoch || env("GWENGINE", 0) == 1;
    let static_answer = env("STATIC", 0) == 1;
    let component = Component::from_file(&engine, wasm)?;
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = Arc::new(ProxyPre::new(linker.instantiate_pre(&component)?)?);
    let engine = Arc::new(engine);
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (pre, engine) = (pre.clone(), engine.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (pre, engine) = (pre.clone(), engine.clone());
                async move {
                    if static_answer {
                        return Ok::<_, wasmtime::Error>(hyper::Response::new(
                            wasmgate::body::full(bytes::Bytes::from_static(
                                b"hello from wasmgate\n",
                            )),
                        ));
                    }
                    let mut store = Store::new(
                        &engine,
                        Host {
                            ctx: WasiCtx::builder().build(),
                            http: WasiHttpCtx::new(),
                            table: ResourceTable::new(),
                        },
                    );
                    if epoch {
                        store.set_epoch_deadline(u64::MAX / 2);
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let req = store
                        .data_mut()
                        .http()
                        .new_incoming_request(Scheme::Http, req)?;
                    let out = store.data_mut().http().new_response_outparam(tx)?;
                    let proxy = pre.instantiate_async(&mut store).await?;
                    let task = tokio::spawn(async move {
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, req, out)
                            .await
                    });
                    match rx.await {
                        Ok(Ok(resp)) => Ok::<_, wasmtime::Error>(resp),
                        _ => {
                            let _ = task.await;
                            Err(wasmtime::format_err!("guest failed"))
                        }
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
