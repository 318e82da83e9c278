//! Trust boundaries, tried as an attacker would, against the real binary: identities the
//! gateway asserts cannot be forged, tokens are held to every configured claim, failures say
//! nothing about which check failed, credentials the gateway checked never reach the
//! function, and client-sent forwarding headers are not trusted.

mod common;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::Sha256;

use common::{TestServer, root};

const FC_SECRET: &str = "trust-signature-secret";

fn config() -> String {
    let jwks = root()
        .join("tests/fixtures/jwks.json")
        .display()
        .to_string();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "jwt"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256"]
issuer = "https://issuer.example"
audience = ["wasmgate"]
token_lookup = "header:Authorization:Bearer ,form:jwt"
claim_pass_by = "header:sub:X-User-Id,query:sub:uid"
whitelist = ["/public/*"]

[[trigger]]
name = "jwt-black"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256"]
claim_pass_by = "header:sub:X-User-Id"
blacklist = ["/admin/*"]

[[trigger]]
name = "signed"
function = "echo"
auth = "signature"
signature = {{ keys = [ {{ id = "AK1", secret = "{FC_SECRET}" }} ], window_s = 900 }}

[[trigger]]
name = "open"
function = "echo"
"#
    )
}

fn mint(claims: serde_json::Value) -> String {
    let pem = std::fs::read(root().join("tests/fixtures/jwt-rsa.pem")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The request the echo function saw.
async fn seen(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn header(v: &serde_json::Value, name: &str) -> Option<String> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_targets_cannot_be_forged_on_paths_that_skip_the_jwt() {
    let s = TestServer::start(&config());
    let c = reqwest::Client::new();
    // Whitelisted path: no token needed, and nothing the client sends under a claim's name
    // reaches the function as if the gateway had set it.
    let v = seen(
        c.get(s.url("/jwt/public/x?uid=admin&keep=1"))
            .header("x-user-id", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(header(&v, "x-user-id"), None, "{v}");
    let path = v["path"].as_str().unwrap();
    assert!(!path.contains("uid="), "{path}");
    assert!(path.contains("keep=1"), "{path}");
    // Blacklist mode: every unlisted path skips the check; the same holds.
    let v = seen(
        c.get(s.url("/jwt-black/other"))
            .header("x-user-id", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(header(&v, "x-user-id"), None, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_issuer_and_audience_are_required() {
    let s = TestServer::start(&config());
    let c = reqwest::Client::new();
    let exp = now() + 300;
    let good =
        mint(json!({"sub": "u", "iss": "https://issuer.example", "aud": "wasmgate", "exp": exp}));
    let ok = c
        .get(s.url("/jwt/x"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let mut messages = std::collections::BTreeSet::new();
    for claims in [
        json!({"sub": "u", "aud": "wasmgate", "exp": exp}),
        json!({"sub": "u", "iss": "https://issuer.example", "exp": exp}),
        json!({"sub": "u", "iss": "https://issuer.example", "aud": 1, "exp": exp}),
        json!({"sub": "u", "iss": 7, "aud": "wasmgate", "exp": exp}),
        json!({"sub": "u", "iss": "https://evil.example", "aud": "wasmgate", "exp": exp}),
        json!({"sub": "u", "iss": "https://issuer.example", "aud": "wasmgate", "exp": now() - 600}),
        json!({"sub": "u", "iss": "https://issuer.example", "aud": "wasmgate", "exp": exp, "nbf": now() + 600}),
    ] {
        let resp = c
            .get(s.url("/jwt/x"))
            .bearer_auth(mint(claims.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{claims}");
        let v: serde_json::Value = resp.json().await.unwrap();
        messages.insert(v["Message"].as_str().unwrap().to_string());
    }
    // Failures never say which check failed.
    assert_eq!(messages.len(), 1, "{messages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_a_form_field_is_not_passed_to_the_function() {
    let s = TestServer::start(&config());
    let token = mint(
        json!({"sub": "u", "iss": "https://issuer.example", "aud": "wasmgate", "exp": now() + 300}),
    );
    let v = seen(
        reqwest::Client::new()
            .post(s.url("/jwt/x"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("a=1&jwt={token}&b=2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let body = v["body"].as_str().unwrap();
    assert!(!body.contains(&token), "{body}");
    assert_eq!(body, "a=1&b=2");
}

fn fc_signed_url(path: &str, expires: i64) -> String {
    // String to sign: METHOD \n Content-MD5 \n Content-Type \n expires \n resource.
    let mut pairs = [
        ("x-fc-access-key-id", "AK1".to_string()),
        ("x-fc-expires", expires.to_string()),
    ];
    pairs.sort();
    let resource = format!(
        "{path}\n{}",
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let sts = format!("GET\n\n\n{expires}\n{resource}");
    let mut mac = Hmac::<Sha256>::new_from_slice(FC_SECRET.as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sig = percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC);
    format!("{path}?x-fc-access-key-id=AK1&x-fc-expires={expires}&x-fc-signature={sig}")
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_are_bounded_by_the_window_and_their_credentials_stay_behind() {
    let s = TestServer::start(&config());
    let c = reqwest::Client::new();
    let v = seen(
        c.get(s.url(&fc_signed_url("/signed/a", now() + 60)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let path = v["path"].as_str().unwrap();
    assert!(!path.contains("x-fc-signature"), "{path}");
    assert!(!path.contains("x-fc-access-key-id"), "{path}");
    // An expiry further ahead than the window is a URL that would live too long.
    let resp = c
        .get(s.url(&fc_signed_url("/signed/a", now() + 86_400)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["Code"], "AccessDenied");
}

#[tokio::test(flavor = "multi_thread")]
async fn acs3_dates_in_iso_8601_basic_format_are_accepted() {
    let s = TestServer::start(&config());
    let at = chrono::Utc::now();
    let date = at.format("%Y%m%dT%H%M%SZ").to_string();
    let path = "/signed/b";
    let mut headers = http::HeaderMap::new();
    headers.insert("x-acs-date", date.parse().unwrap());
    headers.insert("host", s.addr().parse().unwrap());
    let names = vec!["host".to_string(), "x-acs-date".to_string()];
    let canonical =
        wasmgate::auth::signature::acs3_canonical_request("GET", path, "", &headers, &names, "");
    let sig = wasmgate::auth::signature::hmac_hex(
        FC_SECRET.as_bytes(),
        wasmgate::auth::signature::acs3_string_to_sign(&canonical).as_bytes(),
    );
    let resp = reqwest::Client::new()
        .get(s.url(path))
        .header("x-acs-date", &date)
        .header(
            "authorization",
            format!(
                "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=host;x-acs-date,Signature={sig}"
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_forwarding_headers_are_replaced_by_the_gateways_own() {
    let s = TestServer::start(&config());
    let v = seen(
        reqwest::Client::new()
            .get(s.url("/open"))
            .header("forwarded", "for=1.2.3.4;host=evil")
            .header("x-real-ip", "1.2.3.4")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-port", "1")
            .header("x-forwarded-for", "1.2.3.4")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for name in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-port",
    ] {
        assert_eq!(header(&v, name), None, "{name}: {v}");
    }
    assert_eq!(header(&v, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
}
