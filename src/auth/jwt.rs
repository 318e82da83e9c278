//! JWT bearer tokens verified against a JWKS (SPEC section 4.4).
//!
//! The JWKS is a file parsed once at start-up (a bad file is a start-up error), or fetched
//! from a URL or an OpenID issuer and refreshed ([`super::jwks`]). Keys are chosen by
//! `kid` (at most one key without one). Algorithms are pinned by the config and by each key's
//! family, so `none` and algorithm confusion (an HMAC "signature" made with an RSA public key)
//! cannot verify. `exp` is required; `exp`/`nbf` are checked against an injected "now" with
//! `leeway_s`; `iss`/`aud` when configured.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::AuthError;
use super::jwks::RemoteKeys;
use crate::config::{JwtConfig, KeySource, QualifierByClaim};

/// Where a token may be found, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Header { name: String, prefix: String },
    Cookie(String),
    Query(String),
    Form(String),
}

/// Where a claim is copied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassTarget {
    Header(http::HeaderName),
    Query(String),
}

#[derive(Debug, Clone)]
struct ClaimPass {
    claim: String,
    target: PassTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRule {
    All,
    Whitelist(Vec<String>),
    Blacklist(Vec<String>),
}

pub(super) struct Key {
    kid: Option<String>,
    /// The SHA-256 of the key's JWK as published: a verified token is taken from the cache
    /// only while the key that verified it is still in the set, unchanged.
    fingerprint: [u8; 32],
    key: DecodingKey,
    validation: Validation,
}

/// The keys a trigger verifies with: from its file, or as last fetched.
pub struct KeySet {
    keys: Vec<Key>,
}

/// Where a trigger's keys are held.
enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

/// Verified tokens, by the SHA-256 of the token, so a token's signature is checked once per
/// token rather than once per request (like Envoy's jwt_authn cache). An entry lives until the
/// earlier of the token's `exp` (plus leeway) and `cache_ttl_s` after it was verified; the
/// claims' time checks still run on every request. The cache belongs to one authenticator,
/// built with its JWKS: a reload that changes the keys starts from an empty cache.
struct VerifiedCache {
    ttl_s: i64,
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

/// A verified token's claims, the unix second its cache entry lapses, and the `kid` and
/// fingerprint of the key that verified it (an entry is used only while that key is in the
/// set, unchanged).
type Verified = (
    std::sync::Arc<serde_json::Value>,
    i64,
    (Option<String>, [u8; 32]),
);

/// Tokens one trigger keeps verified at most; a full cache first drops what expired, then
/// starts over.
const CACHE_ENTRIES: usize = 10_000;

impl VerifiedCache {
    fn get(&self, digest: &[u8; 32], now: i64, set: &KeySet) -> Option<Arc<serde_json::Value>> {
        if self.ttl_s == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (claims, until, (kid, fingerprint)) = entries.get(digest)?;
        if now > *until {
            return None;
        }
        if set
            .find(kid.as_deref())
            .is_none_or(|k| k.fingerprint != *fingerprint)
        {
            // The key that verified it left the set (rotated out): verified again, and
            // refused unless the set still has a key for it.
            entries.remove(digest);
            return None;
        }
        Some(claims.clone())
    }

    fn put(
        &self,
        digest: [u8; 32],
        claims: std::sync::Arc<serde_json::Value>,
        until: i64,
        now: i64,
        key: (Option<String>, [u8; 32]),
    ) {
        if self.ttl_s == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, u, _)| now <= *u);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            (claims, until.min(now.saturating_add(self.ttl_s)), key),
        );
    }
}

pub struct JwtAuth {
    cache: VerifiedCache,
    keys: Keys,
    qualifier_by_claim: Option<QualifierByClaim>,
    lookups: Vec<Lookup>,
    passes: Vec<ClaimPass>,
    rule: PathRule,
    leeway: i64,
    issuer: Option<String>,
    audience: Vec<String>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::Fixed(set) => format!("{} from a file", set.len()),
            Keys::Remote(r) => format!("{r:?}"),
        };
        f.debug_struct("JwtAuth")
            .field("keys", &keys)
            .field("lookups", &self.lookups)
            .finish()
    }
}

/// The outcome of a JWT check.
#[derive(Debug, PartialEq, Eq)]
pub enum JwtOutcome {
    /// The path is exempt (whitelist, or not on the blacklist).
    Skipped,
    /// A valid token; its `sub` claim (empty if absent). `form_body` is the form body with
    /// the token's field removed, when the token came from one (and is not passed on).
    Valid {
        subject: String,
        form_body: Option<Vec<u8>>,
        /// The qualifier `qualifier_by_claim` chose, when the claim's value is in its map.
        qualifier: Option<String>,
    },
}

/// What every failed check answers: which check failed (expiry, issuer, audience, key,
/// signature) is logged at debug level, never told to the client.
const INVALID_TOKEN: &str = "the JWT is missing or not valid for this trigger";

fn invalid(reason: &str) -> AuthError {
    tracing::debug!("JWT refused: {reason}");
    AuthError::Unauthorized {
        message: INVALID_TOKEN.to_string(),
        www_authenticate: "Bearer error=\"invalid_token\"".to_string(),
    }
}

/// What answers while a trigger has no keys yet (or only a set past `jwks_stale_s`).
fn keys_unavailable() -> AuthError {
    AuthError::KeysUnavailable(
        "the keys to verify this trigger's tokens are not available yet; try again shortly"
            .to_string(),
    )
}

fn family(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => "oct",
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "RSA",
        ES256 | ES384 => "EC",
        EdDSA => "OKP",
    }
}

/// Parses `token_lookup`: `header:Authorization:Bearer ,cookie:token,query:access_token,form:t`.
pub fn parse_lookups(spec: &str) -> Result<Vec<Lookup>> {
    let mut out = Vec::new();
    for entry in spec.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let mut parts = entry.splitn(3, ':');
        let source = parts.next().unwrap_or("").trim();
        let name = parts.next().unwrap_or("").trim().to_string();
        if name.is_empty() {
            bail!("key `jwt.token_lookup`: '{entry}' needs a name (source:name)");
        }
        out.push(match source {
            "header" => {
                http::HeaderName::from_str(&name).map_err(|_| {
                    anyhow!("key `jwt.token_lookup`: '{name}' is not a header name")
                })?;
                Lookup::Header {
                    name: name.to_ascii_lowercase(),
                    prefix: parts.next().unwrap_or("").to_string(),
                }
            }
            "cookie" => Lookup::Cookie(name),
            "query" => Lookup::Query(name),
            "form" => Lookup::Form(name),
            other => bail!(
                "key `jwt.token_lookup`: source '{other}' is not one of header, cookie, query, form"
            ),
        });
    }
    if out.is_empty() {
        bail!("key `jwt.token_lookup`: at least one source is required");
    }
    Ok(out)
}

fn parse_passes(spec: &str) -> Result<Vec<ClaimPass>> {
    let mut out = Vec::new();
    for entry in spec.split(',').filter(|e| !e.trim().is_empty()) {
        let parts: Vec<&str> = entry.trim().splitn(3, ':').collect();
        let [target, claim, name] = parts[..] else {
            bail!(
                "key `jwt.claim_pass_by`: '{entry}' must be header:claim:Name or query:claim:name"
            );
        };
        let target =
            match target {
                "header" => PassTarget::Header(http::HeaderName::from_str(name).map_err(|_| {
                    anyhow!("key `jwt.claim_pass_by`: '{name}' is not a header name")
                })?),
                "query" => PassTarget::Query(name.to_string()),
                other => bail!("key `jwt.claim_pass_by`: target '{other}' is not header or query"),
            };
        out.push(ClaimPass {
            claim: claim.to_string(),
            target,
        });
    }
    Ok(out)
}

impl KeySet {
    /// The set's size.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of the set, sorted (a key without one is `None`).
    pub fn kids(&self) -> Vec<Option<String>> {
        let mut kids: Vec<_> = self.keys.iter().map(|k| k.kid.clone()).collect();
        kids.sort();
        kids
    }

    /// The key for a token's `kid` (or the one key without a `kid`).
    fn find(&self, kid: Option<&str>) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == kid)
    }

    /// Whether the set has a key for `kid`.
    pub fn has(&self, kid: Option<&str>) -> bool {
        self.find(kid).is_some()
    }

    #[cfg(test)]
    pub fn empty_for_tests() -> KeySet {
        KeySet { keys: Vec::new() }
    }

    /// Parses a JWKS document (read from `source`) into keys, each with the algorithms it
    /// may verify of `algorithms`, checking `issuer` when given. A file is the operator's own:
    /// a key in it that cannot be used is an error. A fetched document is an issuer's, which
    /// may publish keys for other uses (`use: enc`, algorithms not configured, kinds this
    /// gateway does not know): those are skipped with a warning (`lenient`).
    pub fn parse(
        jwks: &str,
        source: &str,
        algorithms: &[String],
        issuer: Option<&str>,
        config: &JwtConfig,
        lenient: bool,
    ) -> Result<KeySet> {
        Ok(KeySet {
            keys: load_keys(jwks, source, algorithms, issuer, config, lenient)?,
        })
    }
}

/// Parses a JWKS document into keys, each with the algorithms it may verify.
fn load_keys(
    jwks: &str,
    source: &str,
    configured: &[String],
    issuer: Option<&str>,
    config: &JwtConfig,
    lenient: bool,
) -> Result<Vec<Key>> {
    let mut allowed = Vec::new();
    for a in configured {
        if a.eq_ignore_ascii_case("none") {
            bail!("key `jwt.algorithms`: 'none' is never accepted");
        }
        allowed.push(
            Algorithm::from_str(a)
                .map_err(|_| anyhow!("key `jwt.algorithms`: '{a}' is not a JWT algorithm"))?,
        );
    }
    let mut published: Vec<(jsonwebtoken::jwk::Jwk, [u8; 32])> = Vec::new();
    let doc: serde_json::Value =
        serde_json::from_str(jwks).with_context(|| format!("{source}: not a valid JWKS"))?;
    if lenient {
        let entries = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| anyhow!("{source}: not a valid JWKS (no `keys` array)"))?;
        for entry in entries {
            let name = entry
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("(no kid)");
            if entry
                .get("use")
                .and_then(|u| u.as_str())
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            match serde_json::from_value::<jsonwebtoken::jwk::Jwk>(entry.clone()) {
                Ok(jwk) => published.push((jwk, fingerprint(entry))),
                Err(e) => tracing::warn!("{source}: key {name} is skipped: {e}"),
            }
        }
    } else {
        let set: JwkSet = serde_json::from_value(doc.clone())
            .with_context(|| format!("{source}: not a valid JWKS"))?;
        let raw = doc.get("keys").and_then(|k| k.as_array());
        for (i, jwk) in set.keys.into_iter().enumerate() {
            let fp = raw
                .and_then(|r| r.get(i))
                .map(fingerprint)
                .unwrap_or_default();
            published.push((jwk, fp));
        }
    }
    let mut keys = Vec::new();
    for (jwk, fingerprint) in &published {
        let kid = jwk.common.key_id.clone();
        let kty = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => "RSA",
            AlgorithmParameters::EllipticCurve(_) => "EC",
            AlgorithmParameters::OctetKeyPair(_) => "OKP",
            AlgorithmParameters::OctetKey(_) => "oct",
        };
        let mut algorithms: Vec<Algorithm> = allowed
            .iter()
            .copied()
            .filter(|a| family(*a) == kty)
            .collect();
        if let Some(pinned) = jwk.common.key_algorithm {
            let pinned = Algorithm::from_str(&format!("{pinned:?}")).ok();
            algorithms.retain(|a| Some(*a) == pinned);
        }
        let name = kid.as_deref().unwrap_or("(no kid)");
        if algorithms.is_empty() {
            tracing::warn!(
                "{}: key {name} ({kty}) matches none of the configured algorithms; it is ignored",
                source
            );
            continue;
        }
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => k,
            Err(e) if lenient => {
                tracing::warn!("{source}: key {name} is skipped: {e}");
                continue;
            }
            Err(e) => bail!("{source}: key {name}: {e}"),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        validation.leeway = config.leeway_s;
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
        }
        keys.push(Key {
            kid,
            fingerprint: *fingerprint,
            key,
            validation,
        });
    }
    if keys.is_empty() {
        bail!("{}: no key usable with algorithms {:?}", source, configured);
    }
    if keys.iter().filter(|k| k.kid.is_none()).count() > 1 {
        bail!("{}: at most one key may have no `kid`", source);
    }
    let mut seen = HashSet::new();
    for k in keys.iter().filter_map(|k| k.kid.as_deref()) {
        if !seen.insert(k) {
            bail!("{}: kid '{k}' appears twice", source);
        }
    }
    Ok(keys)
}

/// The SHA-256 of a JWK as published (its JSON).
fn fingerprint(jwk: &serde_json::Value) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(jwk.to_string().as_bytes()).into()
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| percent_decode_str(k).decode_utf8_lossy() == name)
        .map(|(_, v)| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Rewrites the query of `uri` without `name`, and with `extra` pairs appended.
pub(crate) fn rewrite_query(
    uri: &http::Uri,
    remove: &[&str],
    extra: &[(String, String)],
) -> Option<http::Uri> {
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            let k = percent_decode_str(k).decode_utf8_lossy();
            !remove.iter().any(|r| *r == k)
        })
        .collect();
    let mut query = kept.join("&");
    for (k, v) in extra {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&utf8_percent_encode(k, NON_ALPHANUMERIC).to_string());
        query.push('=');
        query.push_str(&utf8_percent_encode(v, NON_ALPHANUMERIC).to_string());
    }
    let pq = if query.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{query}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

fn claim_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl JwtAuth {
    /// Builds from config: reads and parses a `jwks_file`; for `jwks_url` and
    /// `oidc_issuer`, fetches nothing (see [`JwtAuth::remote`]).
    pub fn new(trigger: &str, config: &JwtConfig) -> Result<Self> {
        let keys = match &config.source {
            KeySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read JWKS", path.display()))?;
                Keys::Fixed(Arc::new(KeySet::parse(
                    &text,
                    &path.display().to_string(),
                    &config.algorithms,
                    config.issuer.as_deref(),
                    config,
                    false,
                )?))
            }
            KeySource::Url(_) | KeySource::Issuer(_) => Keys::Remote(
                RemoteKeys::new(trigger, config)?
                    .ok_or_else(|| anyhow!("remote keys without a URL"))?,
            ),
        };
        Self::with_keys(keys, config)
    }

    /// Builds from a JWKS document given whole (tests and benches).
    pub fn from_jwks(jwks: &str, config: &JwtConfig) -> Result<Self> {
        let set = KeySet::parse(
            jwks,
            "JWKS",
            &config.algorithms,
            config.issuer.as_deref(),
            config,
            false,
        )?;
        Self::with_keys(Keys::Fixed(Arc::new(set)), config)
    }

    fn with_keys(keys: Keys, config: &JwtConfig) -> Result<Self> {
        let rule = if !config.whitelist.is_empty() {
            PathRule::Whitelist(config.whitelist.clone())
        } else if !config.blacklist.is_empty() {
            PathRule::Blacklist(config.blacklist.clone())
        } else {
            PathRule::All
        };
        Ok(JwtAuth {
            cache: VerifiedCache {
                ttl_s: i64::try_from(config.cache_ttl_s).unwrap_or(i64::MAX),
                entries: std::sync::Mutex::new(std::collections::HashMap::new()),
            },
            keys,
            qualifier_by_claim: config.qualifier_by_claim.clone(),
            lookups: parse_lookups(&config.token_lookup)?,
            passes: parse_passes(&config.claim_pass_by)?,
            rule,
            leeway: i64::try_from(config.leeway_s).unwrap_or(i64::MAX),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Uses `previous`'s fetched keys (the same trigger before a reload) when they come from
    /// the same place under the same rules: one refresher, and no wait for a first fetch.
    pub fn adopt(&mut self, previous: &JwtAuth) {
        if let (Keys::Remote(new), Keys::Remote(old)) = (&self.keys, &previous.keys)
            && new.same_source(old)
        {
            self.keys = Keys::Remote(old.clone());
        }
    }

    /// The fetched keys of a `jwks_url` or `oidc_issuer` trigger.
    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        match &self.keys {
            Keys::Remote(r) => Some(r),
            Keys::Fixed(_) => None,
        }
    }

    /// Whether the request needs its body for the lookup (a form field, form-encoded body).
    pub fn needs_body(&self, parts: &http::request::Parts) -> bool {
        self.lookups.iter().any(|l| matches!(l, Lookup::Form(_)))
            && parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    }

    /// Checks the request. `path` is the path the function sees; `now` is unix seconds.
    /// On success credentials are removed (unless `pass_credentials`) and claims are copied.
    pub async fn verify(
        &self,
        parts: &mut http::request::Parts,
        body: Option<&[u8]>,
        path: &str,
        now: i64,
        pass_credentials: bool,
    ) -> Result<JwtOutcome, AuthError> {
        // Every claim target is cleared on every request of the trigger, before the path
        // rule: on a path that skips the check nothing the client sent under those names may
        // pass for a value the gateway set.
        let mut remove_query: Vec<&str> = Vec::new();
        for pass in &self.passes {
            match &pass.target {
                PassTarget::Header(name) => {
                    parts.headers.remove(name);
                }
                PassTarget::Query(name) => remove_query.push(name),
            }
        }
        let protected = match &self.rule {
            PathRule::All => true,
            PathRule::Whitelist(list) => !list.iter().any(|p| path_matches(p, path)),
            PathRule::Blacklist(list) => list.iter().any(|p| path_matches(p, path)),
        };
        if !protected {
            if !remove_query.is_empty()
                && let Some(uri) = rewrite_query(&parts.uri, &remove_query, &[])
            {
                parts.uri = uri;
            }
            return Ok(JwtOutcome::Skipped);
        }
        let (token, found_by) = self
            .find_token(parts, body)
            .ok_or_else(|| invalid("no token found"))?;
        let claims = self.verified_claims(&token, now).await?;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| invalid("the JWT has no exp claim"))?;
        if (now as f64) > exp + self.leeway as f64 {
            return Err(invalid("the JWT has expired"));
        }
        if let Some(nbf) = claims.get("nbf").and_then(|v| v.as_f64())
            && (now as f64) + (self.leeway as f64) < nbf
        {
            return Err(invalid("the JWT is not valid yet"));
        }

        let mut extra_query = Vec::new();
        for pass in &self.passes {
            match &pass.target {
                PassTarget::Header(name) => {
                    if let Some(v) = claims.get(&pass.claim).and_then(claim_string)
                        && let Ok(v) = http::HeaderValue::from_str(&v)
                    {
                        parts.headers.insert(name.clone(), v);
                    }
                }
                PassTarget::Query(name) => {
                    if let Some(v) = claims.get(&pass.claim).and_then(claim_string) {
                        extra_query.push((name.clone(), v));
                    }
                }
            }
        }
        let mut form_body = None;
        if !pass_credentials {
            match &found_by {
                Lookup::Header { name, .. } => {
                    parts.headers.remove(name.as_str());
                }
                Lookup::Cookie(name) => strip_cookie(&mut parts.headers, name),
                Lookup::Query(name) => remove_query.push(name),
                Lookup::Form(name) => form_body = body.map(|b| strip_form_field(b, name)),
            }
        }
        if (!remove_query.is_empty() || !extra_query.is_empty())
            && let Some(uri) = rewrite_query(&parts.uri, &remove_query, &extra_query)
        {
            parts.uri = uri;
        }
        let subject = claims.get("sub").and_then(claim_string).unwrap_or_default();
        let qualifier = self
            .qualifier_by_claim
            .as_ref()
            .and_then(|q| chosen_qualifier(q, &claims));
        Ok(JwtOutcome::Valid {
            subject,
            form_body,
            qualifier,
        })
    }

    /// The claims of a token whose signature, key, issuer and audience check out: from the
    /// cache, or verified now (and cached until its `exp` or the cache TTL).
    async fn verified_claims(
        &self,
        token: &str,
        now: i64,
    ) -> Result<std::sync::Arc<serde_json::Value>, AuthError> {
        use sha2::Digest;
        let mut set = match &self.keys {
            Keys::Fixed(set) => set.clone(),
            Keys::Remote(r) => r.current().ok_or_else(keys_unavailable)?,
        };
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.cache.get(&digest, now, &set) {
            return Ok(claims);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("the JWT is malformed"))?;
        if set.find(header.kid.as_deref()).is_none()
            && let Keys::Remote(r) = &self.keys
        {
            // A key the set does not have: perhaps rotated in since the last fetch.
            set = r
                .after_unknown_kid(header.kid.as_deref())
                .await
                .ok_or_else(keys_unavailable)?;
        }
        let key = set
            .find(header.kid.as_deref())
            .ok_or_else(|| invalid("the JWT is signed with an unknown key"))?;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &key.validation)
            .map_err(|e| invalid(&format!("{e}")))?;
        let claims = data.claims;
        // Configured issuer and audience are required claims of the right type, whatever the
        // library makes of a missing or malformed one.
        if let Some(iss) = &self.issuer
            && claims.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str())
        {
            return Err(invalid("issuer missing or not accepted"));
        }
        if !self.audience.is_empty() {
            let accepted = |a: &serde_json::Value| {
                a.as_str()
                    .is_some_and(|a| self.audience.iter().any(|x| x == a))
            };
            let ok = match claims.get("aud") {
                Some(serde_json::Value::String(_)) => claims.get("aud").is_some_and(accepted),
                Some(serde_json::Value::Array(list)) => {
                    list.iter().all(|a| a.is_string()) && list.iter().any(accepted)
                }
                _ => false,
            };
            if !ok {
                return Err(invalid("audience missing or not accepted"));
            }
        }
        let claims = std::sync::Arc::new(claims);
        if let Some(exp) = claims.get("exp").and_then(|v| v.as_f64()) {
            let until = (exp as i64).saturating_add(self.leeway);
            self.cache.put(
                digest,
                claims.clone(),
                until,
                now,
                (header.kid.clone(), key.fingerprint),
            );
        }
        Ok(claims)
    }

    fn find_token(
        &self,
        parts: &http::request::Parts,
        body: Option<&[u8]>,
    ) -> Option<(String, Lookup)> {
        for lookup in &self.lookups {
            let found = match lookup {
                Lookup::Header { name, prefix } => parts
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        if prefix.is_empty() {
                            Some(v.trim().to_string())
                        } else if v.len() >= prefix.len()
                            && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                        {
                            Some(v[prefix.len()..].trim().to_string())
                        } else {
                            None
                        }
                    }),
                Lookup::Cookie(name) => cookie(&parts.headers, name).map(str::to_string),
                Lookup::Query(name) => parts.uri.query().and_then(|q| query_param(q, name)),
                Lookup::Form(name) => body
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|b| query_param(b, name)),
            };
            if let Some(token) = found.filter(|t| !t.is_empty()) {
                return Some((token, lookup.clone()));
            }
        }
        None
    }
}

/// The qualifier the claim `q.claim` picks through `q.map`: a string value, or the first
/// value of an array of strings that the map has.
fn chosen_qualifier(q: &QualifierByClaim, claims: &serde_json::Value) -> Option<String> {
    match claims.get(&q.claim)? {
        serde_json::Value::String(v) => q.map.get(v).cloned(),
        serde_json::Value::Array(values) => values
            .iter()
            .filter_map(|v| v.as_str())
            .find_map(|v| q.map.get(v).cloned()),
        _ => None,
    }
}

/// A form body without the fields named `name` (the rest byte for byte).
fn strip_form_field(body: &[u8], name: &str) -> Vec<u8> {
    body.split(|b| *b == b'&')
        .filter(|field| {
            let key = field.split(|b| *b == b'=').next().unwrap_or_default();
            let key = String::from_utf8_lossy(key).replace('+', " ");
            percent_decode_str(&key).decode_utf8_lossy() != name
        })
        .collect::<Vec<_>>()
        .join(&b'&')
}

fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    let rest: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k) != name)
        .map(str::to_string)
        .collect();
    headers.remove(http::header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(http::header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_parse_in_order() {
        let l =
            parse_lookups("header:Authorization:Bearer ,cookie:token,query:access_token,form:jwt")
                .unwrap();
        assert_eq!(
            l,
            vec![
                Lookup::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into()
                },
                Lookup::Cookie("token".into()),
                Lookup::Query("access_token".into()),
                Lookup::Form("jwt".into()),
            ]
        );
        assert!(parse_lookups("body:x").is_err());
        assert!(parse_lookups("header").is_err());
    }

    #[test]
    fn path_patterns() {
        assert!(path_matches("/public/*", "/public/a/b"));
        assert!(path_matches("/public/*", "/public/"));
        assert!(!path_matches("/public/*", "/publicx"));
        assert!(path_matches("/health", "/health"));
        assert!(!path_matches("/health", "/health/x"));
    }

    #[test]
    fn query_rewrite_removes_and_appends() {
        let uri: http::Uri = "http://h/p?access_token=abc&a=1&uid=spoof".parse().unwrap();
        let out = rewrite_query(
            &uri,
            &["access_token", "uid"],
            &[("uid".into(), "user 1".into())],
        )
        .unwrap();
        assert_eq!(
            out.path_and_query().unwrap().as_str(),
            "/p?a=1&uid=user%201"
        );
    }

    #[test]
    fn cookies_are_stripped_by_name() {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", "a=1; token=secret; b=2".parse().unwrap());
        strip_cookie(&mut h, "token");
        assert_eq!(h["cookie"], "a=1; b=2");
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_but_time_checks_run_every_request() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let config = JwtConfig {
            source: KeySource::File(dir.join("jwks.json")),
            jwks_ca: None,
            jwks_refresh_s: 3600,
            jwks_stale_s: 86400,
            qualifier_by_claim: None,
            algorithms: vec!["RS256".into()],
            issuer: Some("https://issuer.example".into()),
            audience: vec!["wasmgate".into()],
            leeway_s: 0,
            token_lookup: "header:Authorization:Bearer ".into(),
            claim_pass_by: String::new(),
            whitelist: Vec::new(),
            blacklist: Vec::new(),
            cache_ttl_s: 60,
        };
        let jwks = std::fs::read_to_string(dir.join("jwks.json")).unwrap();
        let auth = JwtAuth::from_jwks(&jwks, &config).unwrap();
        let now = 2_000_000_000i64;
        let claims = serde_json::json!({"sub": "a", "iss": "https://issuer.example",
            "aud": "wasmgate", "exp": now + 600});
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(dir.join("jwt-rsa.pem")).unwrap(),
        )
        .unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let request = || {
            http::Request::builder()
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let len = |a: &JwtAuth| a.cache.entries.lock().unwrap().len();
        assert!(
            auth.verify(&mut request(), None, "/", now, false)
                .await
                .is_ok()
        );
        assert_eq!(len(&auth), 1);
        assert!(
            auth.verify(&mut request(), None, "/", now + 1, false)
                .await
                .is_ok()
        );
        assert_eq!(
            len(&auth),
            1,
            "the second request used the cached verification"
        );
        // Past exp the cached token is refused all the same.
        assert!(
            auth.verify(&mut request(), None, "/", now + 601, false)
                .await
                .is_err()
        );
        // A tampered token is not the cached one: verified, and refused.
        let mut bad = token.clone();
        bad.pop();
        let mut p = request();
        p.headers
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        assert!(auth.verify(&mut p, None, "/", now, false).await.is_err());
        assert_eq!(len(&auth), 1);
        // With the cache off nothing is kept.
        let off = JwtAuth::from_jwks(
            &jwks,
            &JwtConfig {
                cache_ttl_s: 0,
                ..config
            },
        )
        .unwrap();
        assert!(
            off.verify(&mut request(), None, "/", now, false)
                .await
                .is_ok()
        );
        assert_eq!(len(&off), 0);
    }
}
