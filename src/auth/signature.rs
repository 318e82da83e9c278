//! HMAC-SHA256 request signatures, compatible with the platform SDKs (SPEC section 4.2).
//!
//! Three forms, chosen by the request:
//! - `Authorization: ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=<hex>` with
//!   `x-acs-date`;
//! - `Authorization: FC <id>:<base64>` with `Date`;
//! - a signed URL: `x-fc-access-key-id`, `x-fc-expires`, `x-fc-signature` in the query.
//!
//! Checks run in this order: form and headers (400 `MissingRequiredHeader` /
//! `InvalidArgument`), key id (403 `InvalidAccessKeyID`), clock window or expiry (403
//! `AccessDenied`), signature (403 `SignatureNotMatch`). "Now" is a parameter, so the vectors
//! in `tests/fixtures/signature.json` are tested with the clock fixed to their date.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (uppercase hex).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A signature trigger's keys and window.
pub struct SignatureAuth {
    /// Each key id with its secret's HMAC state, keyed once: a request's MAC starts from a
    /// copy of it instead of hashing the secret's inner and outer pads again.
    keys: Vec<(String, HmacSha256)>,
    window_s: i64,
}

impl std::fmt::Debug for SignatureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureAuth")
            .field("keys", &self.keys.len())
            .field("window_s", &self.window_s)
            .finish()
    }
}

/// A digest of the body that a verified signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDigest {
    /// ACS3 `x-acs-content-sha256`, lowercase hex.
    Sha256(String),
    /// The FC forms' `Content-MD5` (in their string to sign), base64 as sent.
    Md5(String),
}

/// The FC forms sign the `Content-MD5` header's value; when one is sent, the body must
/// match it.
fn signed_md5(req: &SignedRequest<'_>) -> Option<BodyDigest> {
    header_str(req.headers, "content-md5")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| BodyDigest::Md5(v.to_string()))
}

/// What a successful check found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    /// What the signature says the body hashes to: the body must match it.
    pub body_digest: Option<BodyDigest>,
    /// The credentials came in the query (a signed URL).
    pub signed_url: bool,
}

/// `x-acs-date`: ISO 8601 UTC, extended (`2024-01-02T03:04:05Z`, RFC 3339, fractions
/// allowed) or basic (`20240102T030405Z`) format.
fn parse_acs_date(date: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(date) {
        return Some(at.with_timezone(&Utc));
    }
    ["%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S%.fZ"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(date, f).ok())
        .map(|n| n.and_utc())
}

/// The parts of a request a signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as received (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

fn missing(what: &str) -> AuthError {
    AuthError::MissingRequiredHeader(what.to_string())
}

fn mismatch() -> AuthError {
    AuthError::SignatureNotMatch(
        "the request signature does not match the signature computed by the server".into(),
    )
}

fn malformed(what: &str) -> AuthError {
    AuthError::InvalidArgument(format!("malformed signature: {what}"))
}

fn skew(request: DateTime<Utc>, now: DateTime<Utc>) -> AuthError {
    AuthError::AccessDenied(format!(
        "the difference between the request time '{}' and the current time '{}' is too large",
        request.format("%Y-%m-%dT%H:%M:%SZ"),
        now.format("%Y-%m-%dT%H:%M:%SZ")
    ))
}

/// Lowercase hex HMAC-SHA256.
pub fn hmac_hex(secret: &[u8], data: &[u8]) -> String {
    hex::encode(hmac_raw(secret, data))
}

fn hmac_raw(secret: &[u8], data: &[u8]) -> [u8; 32] {
    keyed_mac(&keyed(secret), data)
}

/// The HMAC state for `secret`, before any data.
fn keyed(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes any key length")
}

/// The MAC of `data` from a keyed state.
fn keyed_mac(key: &HmacSha256, data: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Splits a raw query into decoded (key, value) pairs; `+` is a space, as form decoding has it.
fn decoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

impl SignatureAuth {
    pub fn new(keys: &[(String, String)], window_s: u64) -> Self {
        SignatureAuth {
            keys: keys
                .iter()
                .map(|(id, s)| (id.clone(), keyed(s.as_bytes())))
                .collect(),
            window_s: i64::try_from(window_s).unwrap_or(i64::MAX),
        }
    }

    fn secret(&self, key_id: &str) -> Result<&HmacSha256, AuthError> {
        self.keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, key)| key)
            .ok_or_else(|| {
                AuthError::InvalidAccessKeyId(format!(
                    "the access key id '{key_id}' is not valid for this trigger"
                ))
            })
    }

    fn check_window(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), AuthError> {
        if (now - at).num_seconds().abs() > self.window_s {
            return Err(skew(at, now));
        }
        Ok(())
    }

    /// Verifies a request in whichever of the three forms it uses.
    pub fn verify(
        &self,
        req: &SignedRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let auth = header_str(req.headers, "authorization").map(str::trim);
        match auth {
            Some(a) if a.starts_with("ACS3-HMAC-SHA256 ") => self.verify_acs3(req, a, now),
            Some(a) if a.starts_with("FC ") => self.verify_fc(req, a, now),
            Some(_) => Err(malformed(
                "the Authorization header is neither ACS3-HMAC-SHA256 nor FC",
            )),
            None => {
                let signed_url = req
                    .query
                    .is_some_and(|q| decoded_pairs(q).iter().any(|(k, _)| k == "x-fc-signature"));
                if signed_url {
                    self.verify_signed_url(req, now)
                } else {
                    Err(missing(
                        "the Authorization header and a date header are required",
                    ))
                }
            }
        }
    }

    fn verify_acs3(
        &self,
        req: &SignedRequest<'_>,
        auth: &str,
        now: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let params = &auth["ACS3-HMAC-SHA256 ".len()..];
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in params.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| malformed("expected Credential=,SignedHeaders=,Signature="))?;
            match k {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed_headers = Some(v),
                "Signature" => signature = Some(v),
                _ => return Err(malformed("unknown ACS3 parameter")),
            }
        }
        let (Some(key_id), Some(signed_headers), Some(signature)) =
            (credential, signed_headers, signature)
        else {
            return Err(malformed("expected Credential=,SignedHeaders=,Signature="));
        };
        let date = header_str(req.headers, "x-acs-date")
            .ok_or_else(|| missing("the x-acs-date header is required"))?;
        let secret = self.secret(key_id)?;
        let at = parse_acs_date(date.trim())
            .ok_or_else(|| AuthError::InvalidArgument(format!("invalid x-acs-date '{date}'")))?;
        self.check_window(at, now)?;

        let names: Vec<String> = signed_headers
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if !names.iter().any(|n| n == "x-acs-date") {
            return Err(AuthError::SignatureNotMatch(
                "x-acs-date must be one of the signed headers".into(),
            ));
        }
        let payload = header_str(req.headers, "x-acs-content-sha256").map(str::trim);
        let expected = hex::decode(signature).map_err(|_| mismatch())?;
        // Clients sign the path as they sent it; some sign it decoded. Both are functions of
        // the request alone, so accepting either weakens nothing.
        let mut paths = vec![req.path.to_string()];
        if req.path.contains('%') {
            paths.push(
                percent_decode_str(req.path)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
        for path in paths {
            let canonical = acs3_canonical_request(
                req.method,
                &path,
                req.query.unwrap_or(""),
                req.headers,
                &names,
                payload.unwrap_or(""),
            );
            // The string to sign (`acs3_string_to_sign`) fed to the MAC in its two parts.
            let mut hash = [0u8; 64];
            crate::text::hex_into(&mut hash, &Sha256::digest(canonical.as_bytes()));
            let mut mac = secret.clone();
            mac.update(b"ACS3-HMAC-SHA256\n");
            mac.update(&hash);
            let computed: [u8; 32] = mac.finalize().into_bytes().into();
            if bool::from(computed.ct_eq(&expected)) {
                let body_digest = payload
                    .filter(|p| !p.eq_ignore_ascii_case("UNSIGNED-PAYLOAD"))
                    .map(|p| BodyDigest::Sha256(p.to_ascii_lowercase()));
                return Ok(Verified {
                    key_id: key_id.to_string(),
                    body_digest,
                    signed_url: false,
                });
            }
        }
        Err(mismatch())
    }

    fn verify_fc(
        &self,
        req: &SignedRequest<'_>,
        auth: &str,
        now: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let (key_id, signature) = auth["FC ".len()..]
            .trim()
            .split_once(':')
            .ok_or_else(|| malformed("expected 'FC <access key id>:<signature>'"))?;
        let date = header_str(req.headers, "date")
            .ok_or_else(|| missing("the Date header is required"))?;
        let secret = self.secret(key_id)?;
        let at = DateTime::parse_from_rfc2822(date.trim())
            .map_err(|_| AuthError::InvalidArgument(format!("invalid Date '{date}'")))?
            .with_timezone(&Utc);
        self.check_window(at, now)?;
        let pairs = req.query.map(decoded_pairs).unwrap_or_default();
        let string_to_sign = fc_string_to_sign(req, date, &pairs);
        let expected = B64.decode(signature.trim()).map_err(|_| mismatch())?;
        let computed = keyed_mac(secret, string_to_sign.as_bytes());
        if bool::from(computed.ct_eq(&expected)) {
            Ok(Verified {
                key_id: key_id.to_string(),
                body_digest: signed_md5(req),
                signed_url: false,
            })
        } else {
            Err(mismatch())
        }
    }

    fn verify_signed_url(
        &self,
        req: &SignedRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let pairs = req.query.map(decoded_pairs).unwrap_or_default();
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let key_id =
            get("x-fc-access-key-id").ok_or_else(|| missing("x-fc-access-key-id is required"))?;
        let expires = get("x-fc-expires").ok_or_else(|| missing("x-fc-expires is required"))?;
        let signature = get("x-fc-signature").unwrap_or_default();
        let secret = self.secret(&key_id)?;
        let expires_at: i64 = expires
            .trim()
            .parse()
            .map_err(|_| AuthError::InvalidArgument(format!("invalid x-fc-expires '{expires}'")))?;
        if expires_at.saturating_sub(now.timestamp()) > self.window_s {
            let at = DateTime::from_timestamp(expires_at, 0).unwrap_or_default();
            return Err(AuthError::AccessDenied(format!(
                "the signed URL expires at '{}', more than {} s after the current time '{}'",
                at.format("%Y-%m-%dT%H:%M:%SZ"),
                self.window_s,
                now.format("%Y-%m-%dT%H:%M:%SZ")
            )));
        }
        if now.timestamp() > expires_at {
            let at = DateTime::from_timestamp(expires_at, 0).unwrap_or_default();
            return Err(AuthError::AccessDenied(format!(
                "the signed URL expired at '{}'; the current time is '{}'",
                at.format("%Y-%m-%dT%H:%M:%SZ"),
                now.format("%Y-%m-%dT%H:%M:%SZ")
            )));
        }
        let resource_pairs: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "x-fc-signature")
            .cloned()
            .collect();
        let string_to_sign = fc_string_to_sign(req, &expires, &resource_pairs);
        let expected = B64.decode(signature.trim()).map_err(|_| mismatch())?;
        let computed = keyed_mac(secret, string_to_sign.as_bytes());
        if bool::from(computed.ct_eq(&expected)) {
            Ok(Verified {
                key_id,
                body_digest: signed_md5(req),
                signed_url: true,
            })
        } else {
            Err(mismatch())
        }
    }
}

/// The ACS3 canonical request.
pub fn acs3_canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &http::HeaderMap,
    signed: &[String],
    hashed_payload: &str,
) -> String {
    // Built in one buffer: this runs for every signed request.
    let mut out = String::with_capacity(256 + query.len() + hashed_payload.len());
    out.push_str(method);
    out.push('\n');
    out.push_str(if path.is_empty() { "/" } else { path });
    out.push('\n');
    if !query.is_empty() {
        let mut pairs: Vec<(&str, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k, utf8_percent_encode(&form_decode(v), RFC3986).to_string())
            })
            .collect();
        pairs.sort();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
    }
    out.push('\n');
    let mut sorted: Vec<&str> = signed.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    for name in sorted {
        out.push_str(name);
        out.push(':');
        let values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(v.trim());
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, name) in signed.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    out.push_str(hashed_payload);
    out
}

/// `ACS3-HMAC-SHA256\n` + hex(sha256(canonical request)).
pub fn acs3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The FC string to sign: METHOD, Content-MD5, Content-Type, date (or expiry), the sorted
/// `x-fc-*` headers, then the decoded path, `\n`, and the sorted `k=v` query lines.
fn fc_string_to_sign(req: &SignedRequest<'_>, date: &str, pairs: &[(String, String)]) -> String {
    let content_md5 = header_str(req.headers, "content-md5").unwrap_or("");
    let content_type = header_str(req.headers, "content-type").unwrap_or("");
    let mut fc_headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-fc-"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("").trim().to_string(),
            )
        })
        .collect();
    fc_headers.sort();
    let mut s = format!("{}\n{content_md5}\n{content_type}\n{date}\n", req.method);
    for (k, v) in fc_headers {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&percent_decode_str(req.path).decode_utf8_lossy());
    s.push('\n');
    let mut lines: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    s.push_str(&lines.join("\n"));
    s
}

/// The headers that sign a request in the ACS3 form (for `wasmgate sign`): `x-acs-date` and
/// `Authorization`.
pub fn sign_acs3(
    key_id: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let date = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-acs-date",
        http::HeaderValue::from_str(&date).expect("a date is a valid header value"),
    );
    let signed = vec!["x-acs-date".to_string()];
    let canonical = acs3_canonical_request(method, path, query, &headers, &signed, "");
    let signature = hmac_hex(
        secret.as_bytes(),
        acs3_string_to_sign(&canonical).as_bytes(),
    );
    vec![
        ("x-acs-date".to_string(), date),
        (
            "Authorization".to_string(),
            format!(
                "ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders=x-acs-date,Signature={signature}"
            ),
        ),
    ]
}

/// Lowercase hex SHA-256 of a body, for `x-acs-content-sha256`.
pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/signature.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn headers(v: &Value) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(map) = v.as_object() {
            for (k, val) in map {
                h.append(
                    http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
                    http::HeaderValue::from_str(val.as_str().unwrap()).unwrap(),
                );
            }
        }
        h
    }

    fn enc(s: &str) -> String {
        utf8_percent_encode(s, RFC3986).to_string()
    }

    /// A raw query string from the vectors' `queries` object (values may be lists).
    fn raw_query(q: &Value) -> Option<String> {
        let map = q.as_object()?;
        let mut parts = Vec::new();
        for (k, v) in map {
            match v {
                Value::Array(vals) => {
                    for val in vals {
                        parts.push(format!("{}={}", enc(k), enc(val.as_str().unwrap())));
                    }
                }
                other => parts.push(format!("{}={}", enc(k), enc(other.as_str().unwrap()))),
            }
        }
        Some(parts.join("&"))
    }

    fn auth(id: &str, secret: &str) -> SignatureAuth {
        SignatureAuth::new(&[(id.to_string(), secret.to_string())], 900)
    }

    fn at_rfc2822(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc2822(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fc_header_vectors() {
        for v in vectors()["fc_header"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            let mut h = headers(&v["headers"]);
            h.insert(
                "authorization",
                v["authorization"].as_str().unwrap().parse().unwrap(),
            );
            let path = v["canonical_path_unescaped"]
                .as_str()
                .unwrap()
                .replace(' ', "%20");
            let query = raw_query(&v["queries"]);
            let req = SignedRequest {
                method: v["method"].as_str().unwrap(),
                path: &path,
                query: query.as_deref().filter(|q| !q.is_empty()),
                headers: &h,
            };
            let now = at_rfc2822(h["date"].to_str().unwrap());
            let a = auth(
                v["access_key_id"].as_str().unwrap(),
                v["access_key_secret"].as_str().unwrap(),
            );
            let result = a.verify(&req, now);
            if name.contains("no-newline") {
                assert!(
                    matches!(result, Err(AuthError::SignatureNotMatch(_))),
                    "{name} must not verify: {result:?}"
                );
            } else {
                let pairs = req.query.map(decoded_pairs).unwrap_or_default();
                assert_eq!(
                    fc_string_to_sign(&req, h["date"].to_str().unwrap(), &pairs),
                    v["string_to_sign"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(result.unwrap().key_id, "testAccessKeyId", "{name}");
            }
        }
    }

    #[test]
    fn acs3_vectors() {
        for v in vectors()["acs3"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            let url: http::Uri = v["url"].as_str().unwrap().parse().unwrap();
            let mut h = headers(&v["signed_headers_input"]);
            h.insert(
                "authorization",
                v["authorization"].as_str().unwrap().parse().unwrap(),
            );
            let signed: Vec<String> = vec!["x-acs-date".into(), "x-acs-security-token".into()];
            let canonical = acs3_canonical_request(
                v["method"].as_str().unwrap(),
                url.path(),
                url.query().unwrap_or(""),
                &h,
                &signed,
                "",
            );
            assert_eq!(
                canonical,
                v["canonical_request"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                acs3_string_to_sign(&canonical),
                v["string_to_sign"].as_str().unwrap(),
                "{name}"
            );
            let now = DateTime::parse_from_rfc3339(h["x-acs-date"].to_str().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            let req = SignedRequest {
                method: v["method"].as_str().unwrap(),
                path: url.path(),
                query: url.query(),
                headers: &h,
            };
            let ok = auth("testAccessKeyId", "testAccessKeySecret")
                .verify(&req, now)
                .unwrap();
            assert_eq!(ok.key_id, "testAccessKeyId", "{name}");
            assert_eq!(ok.body_digest, None);
        }
    }

    #[test]
    fn official_sdk_vectors() {
        let all = vectors();
        let tests = all["official_sdk_tests"].as_array().unwrap();
        // fc-go-sdk TestGetSignature: the HMAC of the string to sign, and the same request
        // verified end to end as a signed URL.
        let t = &tests[0];
        let sig = B64.encode(hmac_raw(
            t["access_key_secret"].as_str().unwrap().as_bytes(),
            t["string_to_sign"].as_str().unwrap().as_bytes(),
        ));
        assert_eq!(sig, t["signature_base64"].as_str().unwrap());
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-md5",
            "ef5b43a0fe1d5b401b62c3ba33a7a3d6".parse().unwrap(),
        );
        h.insert("content-type", "text/json".parse().unwrap());
        h.insert("x-fc-trace-id", "trace-id".parse().unwrap());
        let query = format!(
            "x=xyz&a=123%2045&x-fc-access-key-id=akID&x-fc-expires=1583221068&x-fc-security-token=stsToken&x=456&x-fc-signature={}",
            enc(&sig)
        );
        let req = SignedRequest {
            method: "GET",
            path: "/2016-08-15/proxy/service.LATEST/func/abc%20123",
            query: Some(&query),
            headers: &h,
        };
        let a = auth("akID", t["access_key_secret"].as_str().unwrap());
        let now = DateTime::from_timestamp(1583221068, 0).unwrap();
        assert_eq!(a.verify(&req, now).unwrap().key_id, "akID");
        // One second after the expiry the URL is refused.
        let later = DateTime::from_timestamp(1583221069, 0).unwrap();
        assert!(matches!(
            a.verify(&req, later),
            Err(AuthError::AccessDenied(_))
        ));

        // fc-go-sdk TestSignURL with and without STS.
        for t in &tests[1..3] {
            let url: http::Uri = t["expected_url"].as_str().unwrap().parse().unwrap();
            let h = http::HeaderMap::new();
            let req = SignedRequest {
                method: "GET",
                path: url.path(),
                query: url.query(),
                headers: &h,
            };
            let pairs: Vec<_> = decoded_pairs(url.query().unwrap())
                .into_iter()
                .filter(|(k, _)| k != "x-fc-signature")
                .collect();
            assert_eq!(
                fc_string_to_sign(&req, "1583339600", &pairs),
                t["string_to_sign"].as_str().unwrap()
            );
            let a = auth("akid", "akSec");
            let now = DateTime::from_timestamp(1583339000, 0).unwrap();
            assert_eq!(a.verify(&req, now).unwrap().key_id, "akid");
            // Tampering with any signed parameter breaks it.
            let tampered = url.query().unwrap().replace("1583339600", "1583339700");
            let req2 = SignedRequest {
                query: Some(&tampered),
                ..req
            };
            assert!(matches!(
                a.verify(&req2, now),
                Err(AuthError::SignatureNotMatch(_))
            ));
        }

        // openapi-util Test_GetAuthorization: canonicalization with an empty method and
        // path, empty query values, repeated headers, and a payload hash.
        let t = &tests[3];
        let mut h = http::HeaderMap::new();
        h.append("x-acs-test", "http".parse().unwrap());
        h.append("x-acs-test", "https".parse().unwrap());
        let canonical = acs3_canonical_request(
            "",
            "",
            "test=ok&empty=",
            &h,
            &["x-acs-test".to_string()],
            t["payload"].as_str().unwrap(),
        );
        assert_eq!(canonical, t["canonical_request"].as_str().unwrap());
        let sig = hmac_hex(b"secret", acs3_string_to_sign(&canonical).as_bytes());
        assert!(t["authorization"].as_str().unwrap().ends_with(&sig));
    }

    fn acs3_request(
        a_key: &str,
        secret: &str,
        date: &str,
        extra: &[(&str, &str)],
    ) -> (http::HeaderMap, String) {
        let mut h = http::HeaderMap::new();
        h.insert("x-acs-date", date.parse().unwrap());
        for (k, v) in extra {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut signed: Vec<String> = vec!["x-acs-date".into()];
        signed.extend(extra.iter().map(|(k, _)| k.to_string()));
        signed.sort();
        let payload = h
            .get("x-acs-content-sha256")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let canonical =
            acs3_canonical_request("POST", "/p/a%20b", "b=2&a=x+y", &h, &signed, &payload);
        let sig = hmac_hex(
            secret.as_bytes(),
            acs3_string_to_sign(&canonical).as_bytes(),
        );
        let auth = format!(
            "ACS3-HMAC-SHA256 Credential={a_key},SignedHeaders={},Signature={sig}",
            signed.join(";")
        );
        h.insert("authorization", auth.parse().unwrap());
        (h, date.to_string())
    }

    #[test]
    fn acs3_rejections_in_order() {
        let a = auth("AK1", "s3cret");
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let verify = |h: &http::HeaderMap, now| {
            a.verify(
                &SignedRequest {
                    method: "POST",
                    path: "/p/a%20b",
                    query: Some("b=2&a=x+y"),
                    headers: h,
                },
                now,
            )
        };
        // Valid, with fractional seconds in the date.
        let (h, _) = acs3_request("AK1", "s3cret", "2026-01-01T00:00:00.123Z", &[]);
        assert_eq!(verify(&h, now).unwrap().key_id, "AK1");
        // Unknown key.
        let (h, _) = acs3_request("AK2", "s3cret", "2026-01-01T00:00:00Z", &[]);
        assert!(matches!(
            verify(&h, now),
            Err(AuthError::InvalidAccessKeyId(_))
        ));
        // Wrong secret.
        let (h, _) = acs3_request("AK1", "other", "2026-01-01T00:00:00Z", &[]);
        assert!(matches!(
            verify(&h, now),
            Err(AuthError::SignatureNotMatch(_))
        ));
        // Skew: 901 s either way is refused, 900 s accepted.
        for (date, ok) in [
            ("2025-12-31T23:44:59Z", false),
            ("2025-12-31T23:45:00Z", true),
            ("2026-01-01T00:15:00Z", true),
            ("2026-01-01T00:15:01Z", false),
        ] {
            let (h, _) = acs3_request("AK1", "s3cret", date, &[]);
            match verify(&h, now) {
                Ok(_) => assert!(ok, "{date}"),
                Err(AuthError::AccessDenied(m)) => {
                    assert!(!ok, "{date}");
                    assert!(
                        m.starts_with("the difference between the request time"),
                        "{m}"
                    );
                }
                Err(e) => panic!("{date}: {e:?}"),
            }
        }
        // A tampered signed header.
        let (mut h, _) = acs3_request("AK1", "s3cret", "2026-01-01T00:00:00Z", &[("x-acs-x", "1")]);
        h.insert("x-acs-x", "2".parse().unwrap());
        assert!(matches!(
            verify(&h, now),
            Err(AuthError::SignatureNotMatch(_))
        ));
        // No date header at all.
        let (mut h, _) = acs3_request("AK1", "s3cret", "2026-01-01T00:00:00Z", &[]);
        h.remove("x-acs-date");
        assert!(matches!(
            verify(&h, now),
            Err(AuthError::MissingRequiredHeader(_))
        ));
        // Nothing at all.
        assert!(matches!(
            verify(&http::HeaderMap::new(), now),
            Err(AuthError::MissingRequiredHeader(_))
        ));
        // A body hash is returned for the pipeline to check.
        let hash = sha256_hex(b"hello");
        let (h, _) = acs3_request(
            "AK1",
            "s3cret",
            "2026-01-01T00:00:00Z",
            &[("x-acs-content-sha256", &hash)],
        );
        assert_eq!(
            verify(&h, now).unwrap().body_digest,
            Some(BodyDigest::Sha256(hash))
        );
    }

    #[test]
    fn canonical_query_rules() {
        let h = http::HeaderMap::new();
        let c =
            acs3_canonical_request("GET", "/", "b=2&a=&c&a=1&sp=a+b&pct=a%20b%2Fc", &h, &[], "");
        // Keys sorted byte-wise, empty values as k=, '+' and %20 both mean a space, values
        // RFC 3986-encoded.
        assert_eq!(c, "GET\n/\na=&a=1&b=2&c=&pct=a%20b%2Fc&sp=a%20b\n\n\n");
    }

    #[test]
    fn fc_form_rejects_skew_and_unknown_keys() {
        let a = auth("AK1", "s3cret");
        let date = "Mon, 02 Jan 2006 15:04:05 GMT";
        let mut h = http::HeaderMap::new();
        h.insert("date", date.parse().unwrap());
        let req = SignedRequest {
            method: "GET",
            path: "/x",
            query: None,
            headers: &h,
        };
        let sts = fc_string_to_sign(&req, date, &[]);
        assert_eq!(sts, "GET\n\n\nMon, 02 Jan 2006 15:04:05 GMT\n/x\n");
        let sig = B64.encode(hmac_raw(b"s3cret", sts.as_bytes()));
        h.insert("authorization", format!("FC AK1:{sig}").parse().unwrap());
        let req = SignedRequest {
            method: "GET",
            path: "/x",
            query: None,
            headers: &h,
        };
        let at = at_rfc2822(date);
        assert!(a.verify(&req, at).is_ok());
        let late = at + chrono::Duration::seconds(901);
        assert!(matches!(
            a.verify(&req, late),
            Err(AuthError::AccessDenied(_))
        ));
        let mut h2 = h.clone();
        h2.insert("authorization", format!("FC AK9:{sig}").parse().unwrap());
        let req = SignedRequest {
            method: "GET",
            path: "/x",
            query: None,
            headers: &h2,
        };
        assert!(matches!(
            a.verify(&req, at),
            Err(AuthError::InvalidAccessKeyId(_))
        ));
    }

    #[test]
    fn sign_produces_what_verify_accepts() {
        let now = Utc::now();
        let headers = sign_acs3("AK1", "s3cret", "GET", "/hello/x", "q=1", now);
        let mut h = http::HeaderMap::new();
        for (k, v) in &headers {
            h.insert(
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = SignedRequest {
            method: "GET",
            path: "/hello/x",
            query: Some("q=1"),
            headers: &h,
        };
        assert_eq!(
            auth("AK1", "s3cret").verify(&req, now).unwrap().key_id,
            "AK1"
        );
    }

    #[test]
    fn arbitrary_authorization_bytes_never_panic() {
        // A deterministic pseudo-random walk over header values, including every prefix of
        // the real forms; every outcome must be an error, never a panic.
        let a = auth("AK1", "s3cret");
        let now = Utc::now();
        let seeds = [
            "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=x-acs-date,Signature=zz",
            "ACS3-HMAC-SHA256 ,,,===",
            "FC AK1:%%%",
            "FC :",
            "FC",
        ];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for seed in seeds {
            for cut in 0..=seed.len() {
                let mut s = seed.as_bytes()[..cut].to_vec();
                for _ in 0..8 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    s.push(b' ' + (x % 95) as u8);
                }
                let Ok(v) = http::HeaderValue::from_bytes(&s) else {
                    continue;
                };
                let mut h = http::HeaderMap::new();
                h.insert("authorization", v);
                h.insert("x-acs-date", "2026-01-01T00:00:00Z".parse().unwrap());
                h.insert("date", "garbage".parse().unwrap());
                let verdict = a.verify(
                    &SignedRequest {
                        method: "GET",
                        path: "/",
                        query: Some("x-fc-signature=%zz&x-fc-expires=abc"),
                        headers: &h,
                    },
                    now,
                );
                assert!(verdict.is_err(), "{s:?} was accepted");
            }
        }
    }
}
