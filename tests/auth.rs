//! Authentication end to end: each scheme accepted, and each way of being refused, against
//! the real binary. Tokens are minted here with the fixture keys.

mod common;

use common::{TestServer, client, error_body, root};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-signature-secret";
const TOKEN: &str = "test-bearer-token-0123456789abcdef";

fn config() -> String {
    let jwks = root()
        .join("tests/fixtures/jwks.json")
        .display()
        .to_string();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls = {{ cert = "{{certs}}/localhost.pem", key = "{{certs}}/localhost-key.pem" }}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[trigger]]
name = "signed"
function = "echo"
auth = "signature"
signature = {{ keys = [ {{ id = "AK1", secret_env = "AK1_SECRET" }} ] }}

[[trigger]]
name = "basic"
function = "echo"
auth = "basic"
basic = {{ users = [ {{ username = "alice", password = "wonder:land" }}, {{ username = "bob", password_env = "BOB_PASSWORD" }} ] }}

[[trigger]]
name = "bearer"
function = "echo"
auth = "bearer"
bearer = {{ tokens = [ {{ name = "ci", token = "{TOKEN}" }}, {{ name = "old", token = "retired-token-0123456789abcdefghij", enabled = false }} ] }}

[[trigger]]
name = "bearer-pass"
function = "echo"
auth = "bearer"
pass_credentials = true
bearer = {{ tokens = [ {{ name = "ci", token = "{TOKEN}" }} ] }}

[[trigger]]
name = "jwt"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256", "ES256", "EdDSA"]
issuer = "https://issuer.example"
audience = ["wasmgate"]
leeway_s = 5
token_lookup = "header:Authorization:Bearer ,cookie:token,query:access_token"
claim_pass_by = "header:sub:X-User-Id,query:role:role"
whitelist = ["/public/*"]

[[trigger]]
name = "jwt-black"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["ES256"]
blacklist = ["/admin/*"]
"#
    )
}

fn start() -> TestServer {
    TestServer::start_with_env(
        &config(),
        &[("AK1_SECRET", SECRET), ("BOB_PASSWORD", "builder")],
    )
}

fn header(v: &serde_json::Value, name: &str) -> Option<String> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn mint(alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let pem = |f: &str| std::fs::read(root().join("tests/fixtures").join(f)).unwrap();
    let key = match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&pem("jwt-rsa.pem")).unwrap()
        }
        Algorithm::ES384 => EncodingKey::from_ec_pem(&pem("jwt-ec384.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("jwt-ec.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("jwt-ed.pem")).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(b"a-shared-hmac-secret-of-32-bytes!"),
        other => panic!("{other:?}"),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn good_claims() -> serde_json::Value {
    json!({"sub": "user-42", "iss": "https://issuer.example", "aud": "wasmgate", "exp": now() + 300, "role": "admin"})
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_scheme() {
    let s = start();
    let c = client();
    let url = s.url("/signed/a/b?x=1&y=two%20words");
    let uri: http::Uri = url.parse().unwrap();

    // The CLI's headers sign a request the gateway accepts.
    let out = std::process::Command::new(common::bin())
        .args([
            "sign",
            "--key-id",
            "AK1",
            "--secret-env",
            "AK1_SECRET",
            "-X",
            "POST",
            &url,
        ])
        .env("AK1_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut req = c.post(&url).body("payload");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (k, v) = line.split_once(": ").unwrap();
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        header(&v, "authorization").is_none(),
        "credentials reach the function"
    );
    assert_eq!(v["body"], "payload");

    let sign = |key: &str, secret: &str, at: chrono::DateTime<chrono::Utc>| {
        wasmgate::auth::signature::sign_acs3(
            key,
            secret,
            "GET",
            uri.path(),
            uri.query().unwrap(),
            at,
        )
    };
    let send = |headers: Vec<(String, String)>| {
        let mut r = c.get(&url);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    let resp = send(sign("AK1", SECRET, chrono::Utc::now())).await.unwrap();
    assert_eq!(resp.status(), 200);

    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "MissingRequiredHeader");

    let resp = send(sign("AK1", "wrong", chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_body(resp).await["Code"], "SignatureNotMatch");

    let resp = send(sign("AK9", SECRET, chrono::Utc::now())).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_body(resp).await["Code"], "InvalidAccessKeyID");

    let old = chrono::Utc::now() - chrono::Duration::minutes(16);
    let resp = send(sign("AK1", SECRET, old)).await.unwrap();
    assert_eq!(resp.status(), 403);
    let v = error_body(resp).await;
    assert_eq!(v["Code"], "AccessDenied");
    assert!(
        v["Message"].as_str().unwrap().contains("is too large"),
        "{v}"
    );
    assert!(!v.to_string().contains(SECRET));

    // A body hash that is signed must match the body.
    let mut h = http::HeaderMap::new();
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    h.insert("x-acs-date", date.parse().unwrap());
    let hash = wasmgate::auth::signature::sha256_hex(b"exact body");
    h.insert("x-acs-content-sha256", hash.parse().unwrap());
    let names = vec!["x-acs-content-sha256".to_string(), "x-acs-date".to_string()];
    let canonical = wasmgate::auth::signature::acs3_canonical_request(
        "POST",
        uri.path(),
        uri.query().unwrap(),
        &h,
        &names,
        &hash,
    );
    let sig = wasmgate::auth::signature::hmac_hex(
        SECRET.as_bytes(),
        wasmgate::auth::signature::acs3_string_to_sign(&canonical).as_bytes(),
    );
    let auth = format!(
        "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=x-acs-content-sha256;x-acs-date,Signature={sig}"
    );
    let post = |body: &'static str| {
        c.post(&url)
            .header("x-acs-date", &date)
            .header("x-acs-content-sha256", &hash)
            .header("authorization", &auth)
            .body(body)
            .send()
    };
    let resp = post("exact body").await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["body"], "exact body");
    let resp = post("other body").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_body(resp).await["Code"], "SignatureNotMatch");

    // Garbage in the header is a clean 4xx.
    let resp = c
        .get(&url)
        .header("authorization", "ACS3-HMAC-SHA256 ???")
        .send()
        .await
        .unwrap();
    // docs/http-api.md: a malformed Authorization header is 400 InvalidArgument.
    assert_eq!(resp.status(), 400);
    assert_eq!(error_body(resp).await["Code"], "InvalidArgument");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_scheme() {
    let s = start();
    let c = client();
    let url = s.url("/basic/x");
    let resp = c
        .get(&url)
        .basic_auth("alice", Some("wonder:land"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(header(&v, "authorization").is_none());
    let resp = c
        .get(&url)
        .basic_auth("bob", Some("builder"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    for req in [
        c.get(&url),
        c.get(&url).basic_auth("alice", Some("builder")),
        c.get(&url).basic_auth("mallory", Some("wonder:land")),
        c.get(&url).header("authorization", "Basic %%%not-base64"),
        c.get(&url).header("authorization", "Basic Ym9i"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"basic\"");
        assert_eq!(error_body(resp).await["Code"], "Unauthorized");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_scheme() {
    let s = start();
    let c = client();
    let url = s.url("/bearer");
    let resp = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(header(&v, "authorization").is_none());

    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(
        error_body(resp).await["Message"],
        "Authorization header is expected but missing"
    );
    for bad in ["nope", "retired-token-0123456789abcdefghij"] {
        let resp = c.get(&url).bearer_auth(bad).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            error_body(resp).await["Message"],
            "access denied due to invalid bearer token"
        );
    }

    // pass_credentials = true hands the header on.
    let resp = c
        .get(s.url("/bearer-pass"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        header(&v, "authorization").unwrap(),
        format!("Bearer {TOKEN}")
    );
}

/// SPEC 3: hop-by-hop headers are the client's and go before authentication, so a
/// `Connection` header naming a claim header cannot remove the verified value (before, the
/// claim header was set, then removed as hop-by-hop).
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_header_cannot_remove_a_verified_claim_header() {
    let s = start();
    let c = common::client_http1();
    let t = mint(Algorithm::RS256, "rsa-1", good_claims());
    let resp = c
        .get(s.url("/jwt/x"))
        .bearer_auth(&t)
        .header("connection", "x-user-id, x-fc-request-id")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(header(&v, "x-user-id").as_deref(), Some("user-42"), "{v}");
    assert!(header(&v, "x-fc-request-id").is_some(), "{v}");
    assert!(header(&v, "connection").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_scheme_accepts_valid_tokens_from_every_source() {
    let s = start();
    let c = client();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let t = mint(alg, kid, good_claims());
        let resp = c
            .get(s.url("/jwt/x?role=spoofed&keep=1"))
            .bearer_auth(&t)
            .header("x-user-id", "spoofed")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{alg:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(header(&v, "x-user-id").unwrap(), "user-42");
        assert!(header(&v, "authorization").is_none());
        assert_eq!(v["path"], "/x?keep=1&role=admin");
    }
    let t = mint(Algorithm::RS256, "rsa-1", good_claims());
    // Cookie, then query; the token never reaches the function.
    let resp = c
        .get(s.url("/jwt/c"))
        .header("cookie", format!("a=1; token={t}; b=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(header(&v, "cookie").unwrap(), "a=1; b=2");
    let resp = c
        .get(s.url(&format!("/jwt/q?access_token={t}&z=9")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["path"], "/q?z=9&role=admin");

    // Whitelisted paths skip the check; blacklist mode protects only listed paths.
    assert_eq!(
        c.get(s.url("/jwt/public/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(s.url("/jwt-black/open"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(s.url("/jwt-black/admin/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_scheme_refuses_bad_tokens() {
    let s = start();
    let c = client();
    let mut claims = good_claims();
    let mut cases: Vec<(&str, String)> = Vec::new();
    claims["exp"] = json!(now() - 60);
    cases.push(("expired", mint(Algorithm::RS256, "rsa-1", claims.clone())));
    let mut c2 = good_claims();
    c2.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", mint(Algorithm::RS256, "rsa-1", c2)));
    let mut c3 = good_claims();
    c3["nbf"] = json!(now() + 600);
    cases.push(("not yet valid", mint(Algorithm::RS256, "rsa-1", c3)));
    let mut c4 = good_claims();
    c4["aud"] = json!("someone-else");
    cases.push(("wrong audience", mint(Algorithm::RS256, "rsa-1", c4)));
    let mut c5 = good_claims();
    c5["iss"] = json!("https://evil.example");
    cases.push(("wrong issuer", mint(Algorithm::RS256, "rsa-1", c5)));
    cases.push((
        "unknown kid",
        mint(Algorithm::RS256, "rsa-9", good_claims()),
    ));
    // HS256 is not configured: the HMAC key in the JWKS must not verify anything.
    cases.push((
        "hmac not allowed",
        mint(Algorithm::HS256, "hmac-1", good_claims()),
    ));
    // Algorithm confusion: an HS256 token claiming the RSA key.
    cases.push(("confusion", mint(Algorithm::HS256, "rsa-1", good_claims())));
    // alg=none.
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let payload = base64_url(good_claims().to_string().as_bytes());
    cases.push(("alg none", format!("{none_header}.{payload}.")));
    // A valid signature over different claims.
    let good = mint(Algorithm::RS256, "rsa-1", good_claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = base64_url(json!({"sub": "root", "exp": now() + 300, "iss": "https://issuer.example", "aud": "wasmgate"}).to_string().as_bytes());
    parts[1] = &forged;
    cases.push(("forged claims", parts.join(".")));
    cases.push(("garbage", "not.a.jwt".to_string()));

    let sent: Vec<String> = cases.iter().map(|(_, t)| t.clone()).collect();
    for (name, token) in cases {
        let resp = c
            .get(s.url("/jwt/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{name}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{name}"
        );
        let v = error_body(resp).await;
        assert!(
            !v.to_string().contains(&token),
            "{name}: the token is echoed"
        );
    }
    let resp = c.get(s.url("/jwt/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // No token the test sent, nor the signature of one, ever reaches the log.
    let log = s.stderr_text();
    for token in &sent {
        assert!(
            !log.contains(token.as_str()),
            "a token is in the log: {token}"
        );
        if let Some(sig) = token.rsplit('.').next().filter(|sig| sig.len() > 16) {
            assert!(
                !log.contains(sig),
                "a token's signature is in the log: {token}"
            );
        }
    }
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn tokens_from_the_jwt_command_are_accepted() {
    let s = start();
    let c = client();
    for (alg, key, kid) in [
        ("RS256", "jwt-rsa.pem", "rsa-1"),
        ("ES256", "jwt-ec.pem", "ec-1"),
        ("EdDSA", "jwt-ed.pem", "ed-1"),
    ] {
        let key = common::root().join("tests/fixtures").join(key);
        let out = std::process::Command::new(common::bin())
            .args(["jwt", "--alg", alg, "--kid", kid, "--sub", "carol"])
            .args(["--iss", "https://issuer.example", "--aud", "wasmgate"])
            .args(["--claim", "role=admin", "--key"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{alg}: {out:?}");
        let token = String::from_utf8(out.stdout).unwrap();
        let resp = c
            .get(s.url("/jwt/x"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{alg}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(header(&v, "x-user-id").unwrap(), "carol");
    }
    // A key that does not match the algorithm is a clear error.
    let out = std::process::Command::new(common::bin())
        .args(["jwt", "--alg", "ES256", "--key"])
        .arg(common::root().join("tests/fixtures/jwt-rsa.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ES256 private key"));
}

/// RSA-PSS and P-384 tokens verify against keys that allow them; a key pinned to another
/// algorithm, an algorithm the trigger does not list, or a token signed on the wrong curve is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_ps256_and_es384_verify_and_nothing_else_does() {
    let fixtures: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/jwks.json")).unwrap(),
    )
    .unwrap();
    let rsa = &fixtures["keys"][0];
    // The same RSA public key twice: unpinned (kid rsa-pss) and pinned to RS256 (rsa-1).
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rsa-pss", "n": rsa["n"], "e": rsa["e"] },
        rsa,
        { "kty": "EC", "kid": "ec384-1", "crv": "P-384",
          "x": "T1m_vavesFnG4woKwRhAic_DhsWeDRtO3ZUxSCFLDX3rMgPayW4njWFGq7dLCjYo",
          "y": "M_9d65LXACVbvUXayZNJSKfnJhaBiQdzB4JwSHZ5v2Z4egOy9BXfrlQ4TlZIJFy9" },
    ]});
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let s = TestServer::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[function]]
name = "echo"
wasm = "{{echo}}"

[[trigger]]
name = "jwt"
function = "echo"
auth = "jwt"
[trigger.jwt]
jwks_file = "{}"
algorithms = ["PS256", "ES384"]
"#,
        jwks_path.display()
    ));
    let c = client();
    let claims = json!({"sub": "user-42", "exp": now() + 300});
    let cases = [
        (
            Algorithm::PS256,
            "rsa-pss",
            200,
            "PS256 on an unpinned RSA key",
        ),
        (Algorithm::ES384, "ec384-1", 200, "ES384 on a P-384 key"),
        (
            Algorithm::PS256,
            "rsa-1",
            401,
            "PS256 on a key pinned to RS256",
        ),
        (
            Algorithm::RS256,
            "rsa-pss",
            401,
            "RS256, not in the trigger's list",
        ),
        (
            Algorithm::ES256,
            "ec384-1",
            401,
            "a P-256 signature for the P-384 key",
        ),
    ];
    for (alg, kid, want, what) in cases {
        let t = mint(alg, kid, claims.clone());
        let resp = c.get(s.url("/jwt")).bearer_auth(&t).send().await.unwrap();
        assert_eq!(resp.status(), want, "{what}");
        if want == 401 {
            assert_eq!(error_body(resp).await["Code"], "Unauthorized", "{what}");
        }
    }
}

/// The FC form's string to sign, built from the contract: METHOD, Content-MD5, Content-Type,
/// Date, each `x-fc-*` header as `name:value` (lowercase, sorted), the decoded path, then the
/// sorted decoded `k=v` query lines.
fn fc_string_to_sign(
    method: &str,
    content_type: &str,
    date: &str,
    fc_headers: &[(&str, &str)],
    path: &str,
    query: &[(&str, &str)],
) -> String {
    let mut headers: Vec<String> = fc_headers
        .iter()
        .map(|(k, v)| format!("{}:{v}\n", k.to_ascii_lowercase()))
        .collect();
    headers.sort();
    let mut lines: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    format!(
        "{method}\n\n{content_type}\n{date}\n{}{path}\n{}",
        headers.concat(),
        lines.join("\n")
    )
}

fn fc_sign(secret: &str, to_sign: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The FC header form end to end: a request signed over its method, content type, date,
/// `x-fc-*` headers, decoded path and query reaches the function without its credentials;
/// changing any signed part, the key id, or the clock is refused with the documented code.
#[tokio::test(flavor = "multi_thread")]
async fn the_fc_form_signs_method_headers_path_and_query() {
    let s = start();
    let c = client();
    let rfc1123 =
        |t: chrono::DateTime<chrono::Utc>| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let date = rfc1123(chrono::Utc::now());
    let fc = [("X-Fc-Trace", "t-1"), ("x-fc-account-id", "acct")];
    // Sent encoded; signed decoded, as the SDKs do.
    let sent_path = "/signed/a%20b?z=last&a=1%2B1&empty=";
    let signed_query = [("z", "last"), ("a", "1+1"), ("empty", "")];
    let to_sign = fc_string_to_sign(
        "GET",
        "text/plain",
        &date,
        &fc,
        "/signed/a b",
        &signed_query,
    );
    let sig = fc_sign(SECRET, &to_sign);
    let send = |key: &str, date: &str, sig: &str, path: &str, trace: &str, ctype: &str| {
        let mut req = c
            .get(s.url(path))
            .header("date", date)
            .header("content-type", ctype)
            .header("x-fc-trace", trace)
            .header("x-fc-account-id", "acct");
        if !key.is_empty() {
            req = req.header("authorization", format!("FC {key}:{sig}"));
        }
        req.send()
    };
    let resp = send("AK1", &date, &sig, sent_path, "t-1", "text/plain")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(header(&v, "authorization").is_none(), "{v}");
    // The signed x-fc-* headers are the client's; the function sees the gateway's own.
    assert!(header(&v, "x-fc-trace").is_none(), "{v}");
    assert_eq!(
        header(&v, "x-fc-trigger-name").as_deref(),
        Some("signed"),
        "{v}"
    );

    let other_query = "/signed/a%20b?z=last&a=1%2B2&empty=";
    for (what, path, trace, ctype) in [
        ("a query value", other_query, "t-1", "text/plain"),
        (
            "the path",
            "/signed/a%20c?z=last&a=1%2B1&empty=",
            "t-1",
            "text/plain",
        ),
        ("an x-fc header", sent_path, "t-2", "text/plain"),
        ("the content type", sent_path, "t-1", "text/html"),
    ] {
        let resp = send("AK1", &date, &sig, path, trace, ctype).await.unwrap();
        assert_eq!(resp.status(), 403, "changed {what}");
        assert_eq!(
            error_body(resp).await["Code"],
            "SignatureNotMatch",
            "changed {what}"
        );
    }
    let resp = send("AK9", &date, &sig, sent_path, "t-1", "text/plain")
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_body(resp).await["Code"], "InvalidAccessKeyID");

    // Signed correctly, but 16 minutes ago: outside the 15-minute window.
    let old = rfc1123(chrono::Utc::now() - chrono::Duration::minutes(16));
    let old_sig = fc_sign(
        SECRET,
        &fc_string_to_sign("GET", "text/plain", &old, &fc, "/signed/a b", &signed_query),
    );
    let resp = send("AK1", &old, &old_sig, sent_path, "t-1", "text/plain")
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = error_body(resp).await;
    assert_eq!(body["Code"], "AccessDenied", "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("too large"),
        "{body}"
    );

    let resp = c
        .get(s.url(sent_path))
        .header("authorization", format!("FC AK1:{sig}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no Date");
    assert_eq!(error_body(resp).await["Code"], "MissingRequiredHeader");
}
