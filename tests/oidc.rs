//! Keys from a real OpenID provider (SPEC section 4.4): `oidc-provider` (npm, the certified
//! Node implementation, `tests/oidc/provider.mjs`) on a loopback port issues JWT access
//! tokens to a client-credentials client; the gateway finds its keys by discovery or by
//! `jwks_url`. Rotation without a restart, unknown `kid` floods, the provider down or not
//! there at start, a document naming another issuer, and `qualifier_by_claim`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestServer;

const ADMIN: &str = "oidc-admin-token";

/// The provider: a node process on `port`, its private keys kept in `dir` across restarts.
struct Provider {
    child: Option<Child>,
    port: u16,
    issuer: String,
    dir: tempfile::TempDir,
}

impl Provider {
    /// Runs on a free port as issuer `http://127.0.0.1:<port>`, signing with the first of
    /// `kids` and publishing them all.
    fn start(kids: &str) -> Provider {
        let port = common::free_port();
        Self::start_as(port, &format!("http://127.0.0.1:{port}"), kids)
    }

    fn start_as(port: u16, issuer: &str, kids: &str) -> Provider {
        let mut p = Provider {
            child: None,
            port,
            issuer: issuer.to_string(),
            dir: tempfile::tempdir().unwrap(),
        };
        p.restart(kids);
        p
    }

    /// (Re)starts the provider with `kids` (the first signs).
    fn restart(&mut self, kids: &str) {
        self.stop();
        let script = common::root().join("tests/oidc/provider.mjs");
        assert!(
            common::root()
                .join("tests/oidc/node_modules/oidc-provider")
                .exists(),
            "oidc-provider is not installed: run scripts/install-test-deps.sh"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("provider.log"))
            .unwrap();
        let child = Command::new("node")
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.issuer)
            .arg(self.dir.path().join("keys.json"))
            .arg(kids)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("node is not installed");
        self.child = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the provider did not start:\n{}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// An access token from the token endpoint (client credentials), with claim `plan` if
    /// given (a string, or a JSON array).
    async fn token(&self, plan: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", "api")];
        if let Some(p) = plan {
            form.push(("plan", p));
        }
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/token", self.port))
            .basic_auth("wasmgate-test", Some("wasmgate-test-secret"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", self.log());
        let body: serde_json::Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// How many times the JWKS endpoint was fetched since the provider (re)started.
    async fn jwks_requests(&self) -> u64 {
        let r = reqwest::get(format!("http://127.0.0.1:{}/__stats", self.port))
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["jwks"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway with trigger `api` (echo) whose keys come from `keys` (a `jwks_url = ...` or
/// `oidc_issuer = ...` line), an anonymous trigger `open` (hello), and `extra` in the
/// trigger's jwt table.
fn gateway(keys: &str, extra: &str) -> TestServer {
    TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN}"
data_dir = "data"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[function]]
name = "hello"
wasm = "{{hello}}"
memory_mb = 16

[[trigger]]
name = "api"
function = "echo"
auth = "jwt"
[trigger.jwt]
{keys}
audience = ["wasmgate"]
claim_pass_by = "header:sub:X-User-Id"
{extra}

[[trigger]]
name = "open"
function = "hello"
"#
    ))
}

async fn call(s: &TestServer, path: &str, token: &str) -> reqwest::Response {
    common::client()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn readyz(s: &TestServer) -> serde_json::Value {
    common::client()
        .get(s.admin_url("/readyz"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (bounded) until trigger `api` has keys.
async fn wait_keys(s: &TestServer) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..1200 {
        last = readyz(s).await;
        if last["jwt_keys"]["api"]["ready"] == true {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("trigger api never had keys: {last}\n{}", s.stderr_text());
}

/// A token the provider never issued: signed with the fixtures' RSA key under `kid`.
fn foreign_token(kid: &str, issuer: &str) -> String {
    let pem = std::fs::read(common::root().join("tests/fixtures/jwt-rsa.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"sub": "mallory", "iss": issuer, "aud": "wasmgate",
        "exp": now + 600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_then_a_rotated_key_passes_on_first_use_and_unknown_kids_cannot_hammer() {
    let mut provider = Provider::start("k1");
    let s = gateway(&format!("oidc_issuer = \"{}\"", provider.issuer), "");
    let ready = wait_keys(&s).await;
    assert_eq!(ready["jwt_keys"]["api"]["keys"], 1, "{ready}");

    let token = provider.token(None).await;
    let r = call(&s, "/api/x", &token).await;
    assert_eq!(r.status(), 200, "{}", s.stderr_text());
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        common::echoed_header(&echo, "x-user-id").as_deref(),
        Some("wasmgate-test")
    );
    // A token that is not the issuer's: refused, whatever it says.
    let forged = foreign_token("k1", &provider.issuer);
    assert_eq!(call(&s, "/api/x", &forged).await.status(), 401);

    // Rotation: the provider now signs with k2 (k1 still published). The gateway has not
    // seen k2; the first request that uses it passes, after one fetch.
    provider.restart("k2,k1");
    let rotated = provider.token(None).await;
    let r = call(&s, "/api/x", &rotated).await;
    assert_eq!(r.status(), 200, "{}", s.stderr_text());
    assert_eq!(provider.jwks_requests().await, 1);
    // The old key still verifies (it is still in the set).
    assert_eq!(call(&s, "/api/x", &token).await.status(), 200);

    // A flood of unknown kids: each refused, and the issuer is fetched at most once more
    // per 30 s (here: not at all, the rotation's refresh was just now).
    for i in 0..50 {
        let t = foreign_token(&format!("nope-{i}"), &provider.issuer);
        assert_eq!(call(&s, "/api/x", &t).await.status(), 401);
    }
    assert_eq!(provider.jwks_requests().await, 1);
    // Nothing of a token in the log.
    assert!(!s.stderr_text().contains(&rotated));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_good_keys_serve_while_the_provider_is_down_and_a_restart_is_picked_up() {
    let mut provider = Provider::start("k1");
    let s = gateway(&format!("oidc_issuer = \"{}\"", provider.issuer), "");
    wait_keys(&s).await;
    let fresh = provider.token(None).await;
    provider.stop();
    // Never seen before, verified with the set fetched before the provider went away.
    let r = call(&s, "/api/x", &fresh).await;
    assert_eq!(r.status(), 200, "{}", s.stderr_text());
    // A kid the set does not have while the provider is down: the refresh fails, the set
    // is kept, the token is refused (401, not 503: there are keys, not this one).
    let unknown = foreign_token("gone", &provider.issuer);
    assert_eq!(call(&s, "/api/x", &unknown).await.status(), 401);
    assert_eq!(call(&s, "/api/x", &fresh).await.status(), 200);
    let ready = readyz(&s).await;
    assert_eq!(ready["jwt_keys"]["api"]["ready"], true, "{ready}");
    assert!(
        ready["jwt_keys"]["api"]["problem"].is_string(),
        "the failed refresh is reported: {ready}"
    );
    // Back, signing with a new key: the first token with it passes once 30 s since the
    // last forced refresh have gone by; until then it is refused rather than fetched.
    provider.restart("k3,k1");
    let newer = provider.token(None).await;
    let mut status = 0;
    for _ in 0..900 {
        status = call(&s, "/api/x", &newer).await.status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "{}", s.stderr_text());
    assert!(provider.jwks_requests().await <= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_unreachable_at_start_answers_503_then_serves_without_a_restart() {
    let port = common::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let s = gateway(&format!("oidc_issuer = \"{issuer}\""), "");
    // The node is up and serves its other triggers.
    let r = common::client().get(s.url("/open")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = call(&s, "/api/x", &foreign_token("k1", &issuer)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(common::error_body(r).await["Code"], "ResourceThrottled");
    let ready = readyz(&s).await;
    assert_eq!(ready["ready"], true);
    assert!(
        ready["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "api")),
        "{ready}"
    );
    assert!(s.wait_for_log(&issuer), "the warning names the issuer");
    // Without the admin token the reason is withheld.
    let public: serde_json::Value = common::client()
        .get(s.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !public.to_string().contains("Connection refused")
            && !public.to_string().contains(&port.to_string()),
        "{public}"
    );
    // The provider comes up: the retries find it.
    let provider = Provider::start_as(port, &issuer, "k1");
    wait_keys(&s).await;
    let token = provider.token(None).await;
    assert_eq!(call(&s, "/api/x", &token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    // The provider calls itself localhost; the gateway was told 127.0.0.1.
    let port = common::free_port();
    let provider = Provider::start_as(port, &format!("http://localhost:{port}"), "k1");
    let configured = format!("http://127.0.0.1:{port}");
    let s = gateway(&format!("oidc_issuer = \"{configured}\""), "");
    let mut ready = serde_json::Value::Null;
    for _ in 0..400 {
        ready = readyz(&s).await;
        if ready["jwt_keys"]["api"]["problem"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let problem = ready["jwt_keys"]["api"]["problem"]
        .as_str()
        .unwrap_or_default();
    assert!(problem.contains("is not the configured"), "{ready}");
    assert_eq!(ready["jwt_keys"]["api"]["ready"], false, "{ready}");
    let token = provider.token(None).await;
    assert_eq!(call(&s, "/api/x", &token).await.status(), 503);
    assert_eq!(
        provider.jwks_requests().await,
        0,
        "its keys were never fetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_url_keys_verify_and_their_fetches_are_counted() {
    let provider = Provider::start("k1");
    let s = gateway(
        &format!(
            "jwks_url = \"http://127.0.0.1:{}/jwks\"\nalgorithms = [\"RS256\"]\nissuer = \"{}\"",
            provider.port, provider.issuer
        ),
        "",
    );
    wait_keys(&s).await;
    let token = provider.token(None).await;
    assert_eq!(call(&s, "/api/x", &token).await.status(), 200);
    let metrics = s.metrics(ADMIN).await;
    assert!(
        metrics.contains("wasmgate_jwks_fetches_total{trigger=\"api\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmgate_jwks_keys{trigger=\"api\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("wasmgate_jwks_age_seconds{trigger=\"api\"}"));
}

/// The CLI on the node's admin listener.
fn deploy(s: &TestServer, wasm: &str, alias: &str) {
    let (ok, _, err) = common::admin_cli(
        s,
        ADMIN,
        &["deploy", "greet", &common::wasm(wasm), "--alias", alias],
    );
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_claim_chooses_the_alias() {
    let provider = Provider::start("k1");
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN}"
data_dir = "data"

[[trigger]]
name = "plans"
function = "greet"
qualifier = "stable"
auth = "jwt"
[trigger.jwt]
oidc_issuer = "{issuer}"
audience = ["wasmgate"]
qualifier_by_claim = {{ claim = "plan", map = {{ beta = "canary", pinned = "1", ghost = "missing" }} }}
"#,
        issuer = provider.issuer
    ));
    deploy(&s, "hello", "stable");
    deploy(&s, "echo", "canary");
    let mut ready = serde_json::Value::Null;
    for _ in 0..1200 {
        ready = readyz(&s).await;
        if ready["jwt_keys"]["plans"]["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["jwt_keys"]["plans"]["ready"], true, "{ready}");
    let hello = "hello from wasmgate\n";
    for (plan, want) in [
        (None, Some("stable")),
        (Some("free"), Some("stable")),
        (Some("beta"), Some("canary")),
        (Some(r#"["x","beta"]"#), Some("canary")),
        (Some(r#"["x","y"]"#), Some("stable")),
        (Some("pinned"), Some("1")),
        (Some("ghost"), None),
    ] {
        let token = provider.token(plan).await;
        let r = call(&s, "/plans/p", &token).await;
        match want {
            None => {
                assert_eq!(r.status(), 404, "{plan:?}");
                assert_eq!(common::error_body(r).await["Code"], "FunctionNotFound");
            }
            Some("canary") => {
                assert_eq!(r.status(), 200, "{plan:?}");
                let echo: serde_json::Value = r.json().await.unwrap();
                assert_eq!(
                    common::echoed_header(&echo, "x-fc-qualifier").as_deref(),
                    Some("canary"),
                    "{plan:?}"
                );
            }
            Some(_) => {
                assert_eq!(r.status(), 200, "{plan:?}");
                assert_eq!(r.text().await.unwrap(), hello, "{plan:?}");
            }
        }
    }
    // The access log says which qualifier a claim chose.
    assert!(
        s.wait_for_log("\"qualifier\":\"canary\""),
        "{}",
        s.stderr_text()
    );
}
