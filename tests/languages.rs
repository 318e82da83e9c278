//! Functions in other languages: the Python (componentize-py) and JavaScript
//! (componentize-js) components from functions/, built by scripts/build-functions.sh, served
//! through the gateway like the Rust ones, a fresh instance per request.

mod common;

use common::{TestServer, client};

fn built(name: &str) -> String {
    let path = common::functions_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/build-functions.sh` (scripts/test.sh does)",
        path.display()
    );
    path.display().to_string()
}

#[tokio::test]
async fn python_and_javascript_functions_answer_through_the_gateway() {
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls = {{ cert = "{{certs}}/localhost.pem", key = "{{certs}}/localhost-key.pem" }}

[[function]]
name = "python-hello"
wasm = "{py}"

[[function]]
name = "js-hello"
wasm = "{js}"

[[trigger]]
name = "python"
function = "python-hello"
path = "/python"

[[trigger]]
name = "js"
function = "js-hello"
path = "/js"
"#,
        py = built("python-hello"),
        js = built("js-hello"),
    ));
    let c = client();
    for (path, want) in [
        ("/python/a/b?x=1", "hello from python (GET /a/b?x=1)\n"),
        ("/js/a/b?x=1", "hello from javascript (GET /a/b?x=1)\n"),
    ] {
        // Several requests: each gets a fresh instance, and each answers the same.
        for _ in 0..3 {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert!(r.headers().contains_key("x-fc-request-id"));
            assert_eq!(r.text().await.unwrap(), want);
        }
    }
    let r = c.post(s.url("/js/p")).body("x").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello from javascript (POST /p)\n");
    let r = c.put(s.url("/python/p")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello from python (PUT /p)\n");
}
