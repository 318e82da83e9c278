//! The gateway's own cost per request: everything but the guest.
//!
//!     bash scripts/build-functions.sh && cargo bench --bench request
//!
//! One in-process request (no sockets) for the hello component, measured three ways on the
//! same engine, with the same JSON access log the server writes (to a sink):
//!
//! - `request/engine`: what the bare engine host does: a store, `instantiate`,
//!   `call_handle`, the body read. Nothing of the gateway.
//! - `request/runtime`: `Function::invoke` (the runtime's store with limits, deadline,
//!   environment, log capture and outbound policy), the body read.
//! - `request/gateway/{anonymous,acs3,jwt}`: `App::handle`, the whole pipeline (limits,
//!   routing, authentication, throttle, header shaping, admission, metrics, access log) and
//!   the runtime, the body read. The JWT is verified once and then served from the cache.
//!
//! The gateway's own cost is `gateway - engine`; the runtime's share is `runtime - engine`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use wasmgate::config::{Config, Listener};
use wasmgate::invocation::Target;
use wasmgate::{App, ConnInfo};
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

const SECRET: &str = "bench-signature-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn hello_wasm() -> PathBuf {
    let p = root().join("functions/target/wasm32-wasip2/release/hello.wasm");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-functions.sh first",
        p.display()
    );
    p
}

/// The app, and the temporary data directory it caches compiled functions in.
fn app() -> (App, tempfile::TempDir) {
    app_with("")
}

/// The app with `extra` (a `[tracing]` table) in its config.
fn app_with(extra: &str) -> (App, tempfile::TempDir) {
    let fixtures = root().join("tests/fixtures");
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}/data"
artifact_key_file = "{data}/data.key"
[[function]]
name = "hello"
wasm = "{wasm}"
[[trigger]]
name = "anonymous"
function = "hello"
path = "/"
[[trigger]]
name = "signed"
function = "hello"
path = "/signed"
auth = "signature"
signature = {{ keys = [ {{ id = "AK1", secret = "{SECRET}" }} ] }}
[[trigger]]
name = "jwt"
function = "hello"
path = "/jwt"
auth = "jwt"
jwt = {{ jwks_file = "{jwks}", algorithms = ["RS256"], issuer = "https://issuer.example", audience = ["wasmgate"] }}
{extra}
"#,
        wasm = hello_wasm().display(),
        jwks = fixtures.join("jwks.json").display(),
        data = data.path().display(),
    );
    let config = Config::parse(&text, &fixtures.join("bench.toml"), &|_| None).unwrap();
    (App::build(config).unwrap(), data)
}

fn jwt() -> String {
    let pem = std::fs::read(root().join("tests/fixtures/jwt-rsa.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    let claims = serde_json::json!({
        "sub": "bench", "iss": "https://issuer.example", "aud": "wasmgate",
        "exp": chrono::Utc::now().timestamp() + 3600,
    });
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

/// A request as hyper hands it over for HTTP/1.1: origin-form URI, `Host` header.
fn request(path: &str, headers: &[(String, String)]) -> http::Request<Empty<Bytes>> {
    let mut b = http::Request::builder()
        .uri(path)
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "wrk")
        .header("accept", "*/*");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Empty::new()).unwrap()
}

/// The bare engine host's state (as in `examples/floor.rs`).
struct Bare {
    ctx: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

async fn bare_request(engine: &wasmtime::Engine, pre: &ProxyPre<Bare>) -> Bytes {
    let mut store = Store::new(
        engine,
        Bare {
            ctx: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        },
    );
    // The gateway's engine interrupts on epochs: a store needs a deadline to run at all.
    store.set_epoch_deadline(u64::MAX / 2);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request("/", &[]))
        .unwrap();
    let out = store.data_mut().http().new_response_outparam(tx).unwrap();
    let proxy = pre.instantiate_async(&mut store).await.unwrap();
    let task = tokio::spawn(async move {
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });
    let resp = rx.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    task.await.unwrap().unwrap();
    body
}

fn benches(c: &mut Criterion) {
    // The server's access log format, written to a sink: formatting is part of the cost.
    if std::env::var_os("BENCH_NO_LOG").is_none() {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let (app, _data) = app();
    let conn = ConnInfo::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
        Listener::Public,
        false,
    );

    let engine = app.dispatcher.runtime().engine().clone();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let component = Component::from_file(&engine, hello_wasm()).unwrap();
    let pre = ProxyPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    c.bench_function("request/engine", |b| {
        b.iter(|| rt.block_on(bare_request(&engine, &pre)))
    });

    let hello = app
        .dispatcher
        .resolve(&Target {
            function: "hello".into(),
            qualifier: "LATEST".into(),
        })
        .unwrap();
    let request_id: Arc<str> = "bench-request".into();
    c.bench_function("request/runtime", |b| {
        b.iter(|| {
            rt.block_on(async {
                let out = hello
                    .invoke(
                        request("/", &[]),
                        request_id.clone(),
                        (),
                        wasmgate::trace::Span::off(),
                    )
                    .await
                    .unwrap();
                out.response.into_body().collect().await.unwrap().to_bytes()
            })
        })
    });

    let signed: Vec<(String, String)> = wasmgate::auth::signature::sign_acs3(
        "AK1",
        SECRET,
        "GET",
        "/signed",
        "",
        chrono::Utc::now(),
    )
    .into_iter()
    .map(|(k, v)| (k.to_ascii_lowercase(), v))
    .collect();
    let bearer = vec![("authorization".to_string(), format!("Bearer {}", jwt()))];
    for (name, path, headers) in [
        ("anonymous", "/", Vec::new()),
        ("acs3", "/signed", signed),
        ("jwt", "/jwt", bearer),
    ] {
        c.bench_function(&format!("request/gateway/{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let resp = app.handle(request(path, &headers), &conn).await;
                    assert_eq!(resp.status(), 200, "{name}");
                    resp.into_body().collect().await.unwrap().to_bytes()
                })
            })
        });
    }

    // Tracing on, every trace or 1% sampled, exporting to a port nobody listens on: the
    // spans are built, queued, encoded and their export fails at once (the network's share
    // is left out; `bench/load.sh` has it).
    drop(app);
    for (name, ratio) in [("traced", "1.0"), ("traced-1pct", "0.01")] {
        let (app, _data) = app_with(&format!(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:9\"\nsample_ratio = {ratio}"
        ));
        wasmgate::trace::install(app.config.tracing.as_ref());
        c.bench_function(&format!("request/gateway/anonymous-{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let resp = app.handle(request("/", &[]), &conn).await;
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap().to_bytes()
                })
            })
        });
    }
    wasmgate::trace::install(None);
}

criterion_group!(per_request, benches);
criterion_main!(per_request);
