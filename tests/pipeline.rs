//! The pipeline in-process, through `App::handle`, for logic that is awkward to reach over a
//! socket (draining).

mod common;

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use wasmgate::config::{Config, Listener};
use wasmgate::{App, ConnInfo};

fn app() -> App {
    // Compiled functions are cached under the build's scratch directory, not the checkout.
    let data = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline");
    let text = common::render(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nartifact_key_file = \"{}\"\n[limits]\nmax_in_flight = 4\n[[function]]\nname = \"hello\"\nwasm = \"{{hello}}\"\nmemory_mb = 16\n[[trigger]]\nname = \"hello\"\nfunction = \"hello\"\n",
        data.join("data").display(),
        data.join("data.key").display()
    ));
    let config = Config::parse(&text, std::path::Path::new("inline.toml"), &|_| None).unwrap();
    App::build(config).unwrap()
}

fn conn() -> ConnInfo {
    ConnInfo::new(
        "127.0.0.1:5000".parse::<SocketAddr>().unwrap(),
        Listener::Public,
        false,
    )
}

fn get(path: &str) -> http::Request<Full<bytes::Bytes>> {
    http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_then_refuses_with_503_while_draining() {
    let app = app();
    let resp = app.handle(get("/hello"), &conn()).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from wasmgate\n");

    app.start_draining();
    let resp = app.handle(get("/hello"), &conn()).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers().contains_key("x-fc-request-id"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Code"], "ResourceThrottled");
    // Routing errors still answer with their own code while draining.
    assert_eq!(app.handle(get("/nope"), &conn()).await.status(), 404);
}
