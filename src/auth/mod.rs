//! Authentication at the trigger (SPEC section 4): one [`Authenticator`] per trigger, built at
//! start-up, that turns a request into a [`Principal`] or refuses it with the codes of the
//! spec. One module per scheme; all secret comparisons are constant-time and no secret or
//! token ever reaches a log line or an error message.

pub mod basic;
pub mod bearer;
pub mod jwks;
pub mod jwt;
pub mod signature;

use std::net::IpAddr;

use anyhow::Result;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, TriggerConfig};

/// Why authentication refused a request (SPEC section 4). `crate::error` maps each to its
/// status and Code; messages never carry a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed credentials (a date, a signature header) => 400 `InvalidArgument`.
    #[error("{0}")]
    InvalidArgument(String),
    /// Signature trigger without `Authorization` or a date => 400.
    #[error("{0}")]
    MissingRequiredHeader(String),
    /// basic / bearer / jwt: credentials missing or invalid => 401 with `WWW-Authenticate`.
    #[error("{message}")]
    Unauthorized {
        message: String,
        www_authenticate: String,
    },
    /// The request was signed but the signature does not match => 403.
    #[error("{0}")]
    SignatureNotMatch(String),
    /// The signature names an access key this trigger does not know => 403.
    #[error("{0}")]
    InvalidAccessKeyId(String),
    /// Clock skew, an expired signed URL, JWT path rules => 403.
    #[error("{0}")]
    AccessDenied(String),
    /// A `jwks_url` / `oidc_issuer` trigger with no usable key set yet => 503 with
    /// `Retry-After`.
    #[error("{0}")]
    KeysUnavailable(String),
}

/// Finds the entry whose SHA-256 digest equals `presented`, comparing against every entry in
/// constant time (no early exit), so timing says nothing about which one or how close.
pub(crate) fn match_digest<'a>(
    entries: &'a [(String, [u8; 32])],
    presented: &[u8; 32],
) -> Option<&'a str> {
    let mut found = None;
    for (name, expected) in entries {
        if bool::from(expected.ct_eq(presented)) {
            found = Some(name.as_str());
        }
    }
    found
}

/// Who a request was authenticated as. Used for rate-limit keys and logs; never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were checked: the client address stands for the caller.
    Anonymous(IpAddr),
    /// A signature trigger's access key id.
    AccessKey(String),
    /// A basic user name.
    User(String),
    /// A JWT `sub` claim.
    Subject(String),
    /// A bearer token's configured name.
    Token(String),
}

impl Principal {
    /// A stable identifier for logs and rate-limit keys.
    pub fn id(&self) -> String {
        let (kind, name) = match self {
            Principal::Anonymous(ip) => {
                // Written in place, as `anonymous_id` writes it from the address's text.
                let mut id = String::with_capacity(3 + 39);
                id.push_str("ip:");
                crate::text::push_ip(&mut id, *ip);
                return id;
            }
            Principal::AccessKey(k) => ("key:", k),
            Principal::User(u) => ("user:", u),
            Principal::Subject(s) => ("sub:", s),
            Principal::Token(t) => ("token:", t),
        };
        let mut id = String::with_capacity(kind.len() + name.len());
        id.push_str(kind);
        id.push_str(name);
        id
    }

    /// The id of an anonymous principal whose address, as text, is `ip` (every anonymous
    /// request has one: the HTTP door passes the address its connection formatted once).
    pub fn anonymous_id(ip: &str) -> String {
        let mut id = String::with_capacity(3 + ip.len());
        id.push_str("ip:");
        id.push_str(ip);
        id
    }
}

/// What an authenticator may look at (and, on success, change: credentials removed, JWT
/// claims copied into headers or the query).
pub struct AuthRequest<'a> {
    pub parts: &'a mut http::request::Parts,
    /// The body, when [`Authenticator::needs_body`] asked for it.
    pub body: Option<&'a [u8]>,
    pub client_ip: IpAddr,
    /// The path the function will see (the trigger prefix removed), for JWT path rules.
    pub function_path: &'a str,
    pub now: DateTime<Utc>,
}

/// A request that passed authentication.
#[derive(Debug)]
pub struct Authenticated {
    pub principal: Principal,
    /// The body the function gets instead of the one read, when a credential was removed
    /// from it (a JWT form field).
    pub body: Option<Vec<u8>>,
    /// The digest a verified signature claims for the body (`x-acs-content-sha256`, or the
    /// FC forms' `Content-MD5`): the signature is verified over the claim, and the body must
    /// be checked against it as it is read (never before the signature is known to be good).
    pub body_digest: Option<signature::BodyDigest>,
    /// The qualifier a verified claim chose (`qualifier_by_claim`), instead of the trigger's.
    pub qualifier: Option<String>,
}

/// A trigger's authenticator.
#[derive(Debug)]
pub enum Authenticator {
    Anonymous,
    Signature(signature::SignatureAuth),
    Basic(basic::BasicAuth),
    Jwt(Box<jwt::JwtAuth>),
    Bearer(bearer::BearerAuth),
}

/// A trigger's authenticator and whether credentials are passed on to the function.
#[derive(Debug)]
pub struct TriggerAuth {
    pub authenticator: Authenticator,
    pub pass_credentials: bool,
}

impl TriggerAuth {
    /// Builds the authenticator of a trigger (reads the JWKS file for `jwt`).
    pub fn build(trigger: &TriggerConfig) -> Result<TriggerAuth> {
        let authenticator = match &trigger.auth {
            AuthConfig::Anonymous => Authenticator::Anonymous,
            AuthConfig::Signature { keys, window_s } => {
                Authenticator::Signature(signature::SignatureAuth::new(keys, *window_s))
            }
            AuthConfig::Basic { users } => {
                Authenticator::Basic(basic::BasicAuth::new(&trigger.name, users))
            }
            AuthConfig::Jwt(j) => {
                Authenticator::Jwt(Box::new(jwt::JwtAuth::new(&trigger.name, j)?))
            }
            AuthConfig::Bearer { tokens } => {
                Authenticator::Bearer(bearer::BearerAuth::new(&trigger.name, tokens))
            }
        };
        Ok(TriggerAuth {
            authenticator,
            pass_credentials: trigger.pass_credentials,
        })
    }

    /// Starts what the authenticator keeps up to date by itself: the fetch and refresh of a
    /// `jwks_url` / `oidc_issuer` trigger's keys (`check` never calls it: it fetches nothing).
    pub fn start(&self) {
        if let Authenticator::Jwt(j) = &self.authenticator
            && let Some(remote) = j.remote()
        {
            remote.start();
        }
    }

    /// The fetched keys of a `jwks_url` / `oidc_issuer` trigger.
    pub fn remote_keys(&self) -> Option<&std::sync::Arc<jwks::RemoteKeys>> {
        match &self.authenticator {
            Authenticator::Jwt(j) => j.remote(),
            _ => None,
        }
    }

    /// Uses the keys `previous` (the same trigger in the generation a reload replaces)
    /// fetched, when they come from the same place under the same rules.
    pub fn adopt(&mut self, previous: &TriggerAuth) {
        if let (Authenticator::Jwt(new), Authenticator::Jwt(old)) =
            (&mut self.authenticator, &previous.authenticator)
        {
            new.adopt(old);
        }
    }

    /// Whether this request's check looks into the body (a JWT form field). A signature's
    /// body hash is not read here: it is checked as the body streams, after the signature.
    /// Whether it authenticates nobody: every request is its client address's.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.authenticator, Authenticator::Anonymous)
    }

    pub fn needs_body(&self, parts: &http::request::Parts) -> bool {
        match &self.authenticator {
            Authenticator::Jwt(j) => j.needs_body(parts),
            _ => false,
        }
    }

    /// Checks the request and returns who made it. The credentials checked are removed
    /// from the request (and its body) unless the trigger passes them on.
    pub async fn authenticate(&self, req: AuthRequest<'_>) -> Result<Authenticated, AuthError> {
        let principal = |principal| Authenticated {
            principal,
            body: None,
            body_digest: None,
            qualifier: None,
        };
        let authorization = req
            .parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let mut body_digest = None;
        let p = match &self.authenticator {
            Authenticator::Anonymous => return Ok(principal(Principal::Anonymous(req.client_ip))),
            Authenticator::Basic(b) => Principal::User(b.verify(authorization)?),
            Authenticator::Bearer(b) => Principal::Token(b.verify(authorization)?),
            Authenticator::Signature(s) => {
                let verified = s.verify(
                    &signature::SignedRequest {
                        method: req.parts.method.as_str(),
                        path: req.parts.uri.path(),
                        query: req.parts.uri.query(),
                        headers: &req.parts.headers,
                    },
                    req.now,
                )?;
                body_digest = verified.body_digest.clone();
                if verified.signed_url && !self.pass_credentials {
                    const URL_CREDENTIALS: [&str; 3] =
                        ["x-fc-access-key-id", "x-fc-expires", "x-fc-signature"];
                    if let Some(uri) = jwt::rewrite_query(&req.parts.uri, &URL_CREDENTIALS, &[]) {
                        req.parts.uri = uri;
                    }
                }
                Principal::AccessKey(verified.key_id)
            }
            Authenticator::Jwt(j) => {
                return match j
                    .verify(
                        req.parts,
                        req.body,
                        req.function_path,
                        req.now.timestamp(),
                        self.pass_credentials,
                    )
                    .await?
                {
                    jwt::JwtOutcome::Skipped => Ok(principal(Principal::Anonymous(req.client_ip))),
                    jwt::JwtOutcome::Valid {
                        subject,
                        form_body,
                        qualifier,
                    } => Ok(Authenticated {
                        principal: Principal::Subject(subject),
                        body: form_body,
                        body_digest: None,
                        qualifier,
                    }),
                };
            }
        };
        if !self.pass_credentials {
            req.parts.headers.remove(http::header::AUTHORIZATION);
        }
        Ok(Authenticated {
            principal: p,
            body: None,
            body_digest,
            qualifier: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn principal_ids_name_their_kind() {
        let cases = [
            (
                Principal::Anonymous("10.1.2.3".parse().unwrap()),
                "ip:10.1.2.3",
            ),
            (
                Principal::Anonymous("2001:db8::1".parse().unwrap()),
                "ip:2001:db8::1",
            ),
            (Principal::AccessKey("AK1".into()), "key:AK1"),
            (Principal::User("ann".into()), "user:ann"),
            (Principal::Subject("u-42".into()), "sub:u-42"),
            (Principal::Token("ci".into()), "token:ci"),
        ];
        for (p, id) in cases {
            assert_eq!(p.id(), id);
            // The HTTP door's form, from the address its connection formatted once.
            if let Principal::Anonymous(ip) = p {
                let conn = crate::ConnInfo::new(
                    std::net::SocketAddr::new(ip, 443),
                    crate::config::Listener::Public,
                    true,
                );
                assert_eq!(Principal::anonymous_id(conn.peer_ip()), id);
            }
        }
    }

    fn triggers() -> Vec<TriggerAuth> {
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json");
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
[[trigger]]
name = "s"
function = "f"
auth = "signature"
signature = {{ keys = [ {{ id = "AK1", secret = "s" }} ] }}
[[trigger]]
name = "b"
function = "f"
auth = "basic"
basic = {{ users = [ {{ username = "u", password = "p" }} ] }}
[[trigger]]
name = "t"
function = "f"
auth = "bearer"
bearer = {{ tokens = [ {{ name = "n", token = "0123456789abcdef0123456789abcdef" }} ] }}
[[trigger]]
name = "j"
function = "f"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256", "ES256", "EdDSA", "HS256"]
token_lookup = "header:Authorization:Bearer ,cookie:token,query:access_token,form:jwt"
claim_pass_by = "header:sub:X-User,query:uid:uid"
"#
        );
        let config = Config::parse(&text, std::path::Path::new("t.toml"), &|_| None).unwrap();
        config
            .triggers
            .iter()
            .map(|t| TriggerAuth::build(t).unwrap())
            .collect()
    }

    /// Arbitrary bytes in every place a credential is read from never panic: every outcome
    /// is a principal or a gateway error. (A deterministic xorshift walk, so failures
    /// reproduce; seeded with the prefixes of the real forms.)
    #[test]
    fn arbitrary_credentials_never_panic() {
        let auths = triggers();
        let seeds: [&[u8]; 9] = [
            b"Basic dTpw",
            b"Bearer 0123456789abcdef",
            b"Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJleHAiOjF9.",
            b"ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=x-acs-date,Signature=",
            b"FC AK1:",
            b"eyJhbGciOiJub25lIn0.e30.",
            b"e30.e30.e30",
            b"",
            b"\xff\xfe\x00",
        ];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let seed = seeds[round % seeds.len()];
            let mut bytes = seed[..(next() as usize % (seed.len() + 1))].to_vec();
            for _ in 0..(next() % 48) {
                let r = next();
                bytes.push(if r % 3 == 0 {
                    b"=.;:,%+ /_-\"'"[(r >> 8) as usize % 13]
                } else {
                    (r >> 16) as u8
                });
            }
            let text = String::from_utf8_lossy(&bytes).replace(['\r', '\n', '\0'], "");
            let enc =
                percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC);
            let uri = format!(
                "/p?access_token={enc}&x-fc-signature={enc}&x-fc-expires={enc}&x-fc-access-key-id=AK1"
            );
            let mut b = http::Request::builder()
                .uri(uri.as_str())
                .header("content-type", "application/x-www-form-urlencoded");
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                b = b
                    .header("authorization", v.clone())
                    .header("cookie", v.clone())
                    .header("x-acs-date", v.clone())
                    .header("date", v);
            }
            let Ok(req) = b.body(()) else { continue };
            let (template, _) = req.into_parts();
            for a in &auths {
                let mut parts = template.clone();
                let _ = futures::executor::block_on(a.authenticate(AuthRequest {
                    parts: &mut parts,
                    body: Some(&bytes),
                    client_ip: IpAddr::from([127, 0, 0, 1]),
                    function_path: "/p",
                    now: Utc::now(),
                }));
            }
        }
    }

    mod claim_targets {
        use proptest::prelude::*;

        use super::*;

        const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json");
        const RSA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-rsa.pem");

        fn trigger(rule: &str) -> TriggerAuth {
            let text = format!(
                r#"[server]
listen = "127.0.0.1:0"
[[trigger]]
name = "j"
function = "f"
auth = "jwt"
[trigger.jwt]
jwks_file = "{JWKS}"
algorithms = ["RS256"]
token_lookup = "header:Authorization:Bearer "
claim_pass_by = "header:sub:X-User-Id,header:role:X-Role,query:sub:uid"
{rule}
"#
            );
            let config = Config::parse(&text, std::path::Path::new("t.toml"), &|_| None).unwrap();
            TriggerAuth::build(&config.triggers[0]).unwrap()
        }

        fn mint(claims: &serde_json::Value) -> String {
            let key =
                jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(RSA).unwrap()).unwrap();
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, claims, &key).unwrap()
        }

        fn query_values(uri: &http::Uri, name: &str) -> Vec<String> {
            uri.query()
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| {
                    percent_encoding::percent_decode_str(k).decode_utf8_lossy() == name
                })
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect()
        }

        fn value() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,8}"
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

            /// Whatever the path, the client's headers and query, and the token (valid with
            /// any claims, expired, or none), a claim target the function sees holds exactly
            /// what a verified token said, and nothing when no token was verified.
            #[test]
            fn targets_only_ever_hold_verified_claims(
                rule in prop_oneof![
                    Just(""),
                    Just("whitelist = [\"/public/*\"]"),
                    Just("blacklist = [\"/admin/*\"]"),
                ],
                path in prop_oneof![
                    Just("/public/x".to_string()),
                    Just("/admin/x".to_string()),
                    "/[a-z]{0,6}(/[a-z]{0,6}){0,2}",
                ],
                forged_header in proptest::option::of(value()),
                forged_role in proptest::option::of(value()),
                forged_query in proptest::option::of(value()),
                token in prop_oneof![
                    Just(None),
                    (proptest::option::of(value()), proptest::option::of(value()), any::<bool>())
                        .prop_map(Some),
                ],
            ) {
                let auth = trigger(rule);
                let query = forged_query
                    .as_ref()
                    .map(|q| format!("?uid={q}&keep=1"))
                    .unwrap_or_default();
                let mut b = http::Request::builder().uri(format!("{path}{query}"));
                if let Some(h) = &forged_header {
                    b = b.header("x-user-id", h.as_str());
                }
                if let Some(r) = &forged_role {
                    b = b.header("x-role", r.as_str());
                }
                let now = Utc::now();
                let mut claims = serde_json::json!({});
                if let Some((sub, role, expired)) = &token {
                    let exp = now.timestamp() + if *expired { -3600 } else { 3600 };
                    claims = serde_json::json!({ "exp": exp });
                    if let Some(s) = sub {
                        claims["sub"] = serde_json::json!(s);
                    }
                    if let Some(r) = role {
                        claims["role"] = serde_json::json!(r);
                    }
                    b = b.header("authorization", format!("Bearer {}", mint(&claims)));
                }
                let (mut parts, ()) = b.body(()).unwrap().into_parts();
                let outcome = futures::executor::block_on(auth.authenticate(AuthRequest {
                    parts: &mut parts,
                    body: None,
                    client_ip: IpAddr::from([127, 0, 0, 1]),
                    function_path: &path,
                    now,
                }));
                let verified = matches!(&outcome, Ok(a) if matches!(a.principal, Principal::Subject(_)));
                let claim = |name: &str| -> Option<String> {
                    verified.then(|| claims.get(name).and_then(|v| v.as_str()).map(str::to_string)).flatten()
                };
                if outcome.is_ok() {
                    let header = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_string());
                    prop_assert_eq!(header("x-user-id"), claim("sub"));
                    prop_assert_eq!(header("x-role"), claim("role"));
                    prop_assert_eq!(query_values(&parts.uri, "uid"), claim("sub").into_iter().collect::<Vec<_>>());
                    prop_assert_eq!(query_values(&parts.uri, "keep").len(), usize::from(forged_query.is_some()));
                }
            }
        }
    }
}
