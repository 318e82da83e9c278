//! The gateway's own work per request, stage by stage (`benches/request.rs` measures the
//! whole: gateway minus engine). Each bench runs one stage of the pipeline alone, on the
//! request `wrk` sends (`GET /`, `Host`, `User-Agent`, `Accept`), in-process:
//!
//!     bash scripts/build-functions.sh && cargo bench --bench stages
//!
//! - `stage/request_id`: the id every request gets.
//! - `stage/limits`: header, URI and declared body sizes, the `X-Fc-*` checks.
//! - `stage/route`: path normalisation, host and longest-prefix routing.
//! - `stage/authenticate/{anonymous,acs3}`: the trigger's scheme (ACS3: canonical request,
//!   HMAC, skew window).
//! - `stage/throttle`: draining and the trigger's rate limit (none here).
//! - `stage/stamp`: the `X-Fc-*` and forwarding headers every function receives.
//! - `stage/metrics`: the request counter and the latency histogram of one request.
//! - `stage/access_log`: one JSON access line, formatted and handed to the log writer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Empty;
use wasmgate::config::{Config, Listener};
use wasmgate::invocation::{Invocation, Source};
use wasmgate::{App, ConnInfo, pipeline, router};

const SECRET: &str = "bench-signature-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn app() -> (App, tempfile::TempDir) {
    let wasm = root().join("functions/target/wasm32-wasip2/release/hello.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run scripts/build-functions.sh first",
        wasm.display()
    );
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
"#,
        wasm = wasm.display(),
        data = data.path().display(),
    );
    let fixtures = root().join("tests/fixtures");
    let config = Config::parse(&text, &fixtures.join("bench.toml"), &|_| None).unwrap();
    (App::build(config).unwrap(), data)
}

fn parts(path: &str, headers: &[(String, String)]) -> http::request::Parts {
    let mut b = http::Request::builder()
        .uri(path)
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "wrk")
        .header("accept", "*/*");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(()).unwrap().into_parts().0
}

fn benches(c: &mut Criterion) {
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
    let plain = parts("/", &[]);

    c.bench_function("stage/request_id", |b| {
        b.iter(wasmgate::invocation::new_request_id)
    });
    c.bench_function("stage/limits", |b| {
        b.iter(|| pipeline::check_limits(&app, &plain).unwrap())
    });
    c.bench_function("stage/route", |b| {
        b.iter(|| {
            let path = router::normalize_path(plain.uri.path()).unwrap();
            pipeline::route(&app, &plain, Some("127.0.0.1:8080"), &path)
                .map(|r| r.index)
                .unwrap()
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
    for (name, trigger, path, headers) in [
        ("anonymous", 0usize, "/", Vec::new()),
        ("acs3", 1, "/signed", signed),
    ] {
        let trigger = &app.triggers[trigger];
        let template = parts(path, &headers);
        c.bench_function(&format!("stage/authenticate/{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut p = template.clone();
                    let mut unread = Some(Empty::<Bytes>::new());
                    pipeline::authenticate(&app, trigger, &mut p, &mut unread, &conn, path)
                        .await
                        .map(|a| a.0)
                        .unwrap()
                })
            })
        });
    }

    let principal = wasmgate::auth::Principal::Anonymous(conn.peer.ip());
    c.bench_function("stage/throttle", |b| {
        b.iter(|| pipeline::throttle(&app, &app.triggers[0], &principal, &conn).unwrap())
    });

    let request_id: Arc<str> = "0f8e6b2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b".into();
    // As the HTTP door stamps: the trigger's values built once, the connection's address
    // formatted once, the request id's value shared with the response.
    let prebuilt = wasmgate::invocation::Prebuilt {
        trigger: Some(app.triggers[0].values.clone()),
        request_id: http::HeaderValue::from_str(&request_id).ok(),
        forwarded_for: Some(conn.peer_ip.clone()),
    };
    let target = app.triggers[0].target.clone().unwrap();
    c.bench_function("stage/stamp", |b| {
        b.iter(|| {
            let mut inv = Invocation {
                target: target.clone(),
                trigger: app.triggers[0].name.clone(),
                source: Source::Http {
                    peer: conn.peer,
                    https: false,
                },
                request_id: request_id.clone(),
                request: http::Request::from_parts(plain.clone(), ()),
                trace: None,
                prebuilt: prebuilt.clone(),
            };
            inv.stamp();
            inv
        })
    });

    c.bench_function("stage/metrics", |b| {
        let t = &app.triggers[0];
        b.iter(|| t.series.record(&t.name, 200, "anonymous", 0.000_05))
    });

    // The server's writer: the batching writer thread, here writing to nowhere.
    let (writer, _guard) = wasmgate::log_writer::LogWriter::start(std::io::sink()).unwrap();
    wasmgate::access_log::install(wasmgate::access_log::Format::Json, writer);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let method = http::Method::GET;
    // The pipeline hands the line its time (no clock read of its own).
    let at = std::time::SystemTime::now();
    c.bench_function("stage/access_log", |b| {
        b.iter(|| {
            wasmgate::access_log::record(&wasmgate::access_log::Entry {
                request_id: &request_id,
                peer: conn.peer,
                peer_ip: conn.peer_ip(),
                method: &method,
                path: "/",
                trigger: Some("anonymous"),
                principal: Some("ip:127.0.0.1"),
                qualifier: None,
                status: 200,
                duration_us: 52,
                bytes: Some(20),
                trace_id: None,
                at,
            })
        })
    });
}

criterion_group!(stages, benches);
criterion_main!(stages);
