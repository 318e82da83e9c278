//! Verification cost per request for each authentication scheme.
//!
//!     cargo bench --bench auth

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use wasmgate::auth::{AuthRequest, TriggerAuth};
use wasmgate::config::Config;

const SECRET: &str = "bench-signature-secret";
const TOKEN: &str = "bench-bearer-token-0123456789abcdef";

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn trigger(auth_toml: &str) -> TriggerAuth {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[trigger]]\nname = \"t\"\nfunction = \"f\"\n{auth_toml}\n"
    );
    let config = Config::parse(&text, &fixtures().join("bench.toml"), &|_| None).unwrap();
    TriggerAuth::build(&config.triggers[0]).unwrap()
}

fn parts(uri: &str, headers: &[(&str, String)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(()).unwrap().into_parts().0
}

fn run(c: &mut Criterion, name: &str, auth: &TriggerAuth, template: &http::request::Parts) {
    let now = chrono::Utc::now();
    c.bench_function(name, |b| {
        b.iter(|| {
            let mut p = template.clone();
            // Authentication with keys at hand never waits: polled once, it is ready.
            futures::executor::block_on(auth.authenticate(AuthRequest {
                parts: &mut p,
                body: None,
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                function_path: "/x",
                now,
            }))
            .expect("valid credentials")
        })
    });
}

fn jwt_token(alg: Algorithm, kid: &str, pem: &str) -> String {
    let pem = std::fs::read(fixtures().join(pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = serde_json::json!({"sub": "u", "exp": chrono::Utc::now().timestamp() + 3600});
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn benches(c: &mut Criterion) {
    let uri = "https://gw.example/t/x?a=1&b=two";

    let sig = trigger(&format!(
        "auth = \"signature\"\nsignature = {{ keys = [ {{ id = \"AK1\", secret = \"{SECRET}\" }} ] }}"
    ));
    let headers = wasmgate::auth::signature::sign_acs3(
        "AK1",
        SECRET,
        "GET",
        "/t/x",
        "a=1&b=two",
        chrono::Utc::now(),
    );
    let h: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                if k == "Authorization" {
                    "authorization"
                } else {
                    "x-acs-date"
                },
                v.clone(),
            )
        })
        .collect();
    run(c, "auth/acs3", &sig, &parts(uri, &h));

    let date = chrono::Utc::now().to_rfc2822().replace("+0000", "GMT");
    let sts = format!("GET\n\n\n{date}\n/t/x\na=1\nb=two");
    let mac = wasmgate::auth::signature::hmac_hex(SECRET.as_bytes(), sts.as_bytes());
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(mac).unwrap());
    run(
        c,
        "auth/fc",
        &sig,
        &parts(
            uri,
            &[
                ("date", date),
                ("authorization", format!("FC AK1:{sig_b64}")),
            ],
        ),
    );

    let basic = trigger(
        "auth = \"basic\"\nbasic = { users = [ { username = \"alice\", password = \"wonderland\" } ] }",
    );
    let cred = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    run(
        c,
        "auth/basic",
        &basic,
        &parts(uri, &[("authorization", format!("Basic {cred}"))]),
    );

    let bearer = trigger(&format!(
        "auth = \"bearer\"\nbearer = {{ tokens = [ {{ name = \"ci\", token = \"{TOKEN}\" }} ] }}"
    ));
    run(
        c,
        "auth/bearer",
        &bearer,
        &parts(uri, &[("authorization", format!("Bearer {TOKEN}"))]),
    );

    // Signature verification on every request (cache off), then the same tokens from the
    // verified-token cache (the default).
    let uncached = trigger(
        "auth = \"jwt\"\n[trigger.jwt]\njwks_file = \"jwks.json\"\nalgorithms = [\"RS256\", \"ES256\"]\ncache_ttl_s = 0",
    );
    let cached = trigger(
        "auth = \"jwt\"\n[trigger.jwt]\njwks_file = \"jwks.json\"\nalgorithms = [\"RS256\", \"ES256\"]",
    );
    let rs = parts(
        uri,
        &[(
            "authorization",
            format!(
                "Bearer {}",
                jwt_token(Algorithm::RS256, "rsa-1", "jwt-rsa.pem")
            ),
        )],
    );
    let es = parts(
        uri,
        &[(
            "authorization",
            format!(
                "Bearer {}",
                jwt_token(Algorithm::ES256, "ec-1", "jwt-ec.pem")
            ),
        )],
    );
    run(c, "auth/jwt-rs256", &uncached, &rs);
    run(c, "auth/jwt-es256", &uncached, &es);
    run(c, "auth/jwt-rs256-cached", &cached, &rs);
    run(c, "auth/jwt-es256-cached", &cached, &es);
}

criterion_group!(auth, benches);
criterion_main!(auth);
