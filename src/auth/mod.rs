//! Authentication at the trigger (SPEC section 4): one [`Authenticator`] per trigger, built at
//! start-up, that turns a request into a [`Principal`] or refuses it with the codes of the
//! spec. One module per scheme; all secret comparisons are constant-time and no secret or
//! token ever reaches a log line or an error message.

pub mod basic;
pub mod bearer;
pub mod jwt;
pub mod signature;

use std::net::IpAddr;

use anyhow::Result;
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, TriggerConfig};
use crate::error::GatewayError;

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
        match self {
            Principal::Anonymous(ip) => format!("ip:{ip}"),
            Principal::AccessKey(k) => format!("key:{k}"),
            Principal::User(u) => format!("user:{u}"),
            Principal::Subject(s) => format!("sub:{s}"),
            Principal::Token(t) => format!("token:{t}"),
        }
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

/// A trigger's authenticator.
#[derive(Debug)]
pub enum Authenticator {
    Anonymous,
    Signature(signature::SignatureAuth),
    Basic(basic::BasicAuth),
    Jwt(jwt::JwtAuth),
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
            AuthConfig::Jwt(j) => Authenticator::Jwt(jwt::JwtAuth::new(j)?),
            AuthConfig::Bearer { tokens } => {
                Authenticator::Bearer(bearer::BearerAuth::new(&trigger.name, tokens))
            }
        };
        Ok(TriggerAuth {
            authenticator,
            pass_credentials: trigger.pass_credentials,
        })
    }

    /// Whether this request's check needs the body (an ACS3 body hash, a JWT form field).
    pub fn needs_body(&self, parts: &http::request::Parts) -> bool {
        match &self.authenticator {
            Authenticator::Signature(_) => parts
                .headers
                .get("x-acs-content-sha256")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("UNSIGNED-PAYLOAD")),
            Authenticator::Jwt(j) => j.needs_body(parts),
            _ => false,
        }
    }

    /// Checks the request and returns who made it.
    pub fn authenticate(&self, req: AuthRequest<'_>) -> Result<Principal, GatewayError> {
        let authorization = req
            .parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let principal = match &self.authenticator {
            Authenticator::Anonymous => return Ok(Principal::Anonymous(req.client_ip)),
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
                if let Some(expected) = &verified.body_sha256 {
                    let actual = signature::sha256_hex(req.body.unwrap_or(&[]));
                    if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                        return Err(GatewayError::SignatureNotMatch(
                            "the request body does not match x-acs-content-sha256".into(),
                        ));
                    }
                }
                Principal::AccessKey(verified.key_id)
            }
            Authenticator::Jwt(j) => {
                return match j.verify(
                    req.parts,
                    req.body,
                    req.function_path,
                    req.now.timestamp(),
                    self.pass_credentials,
                )? {
                    jwt::JwtOutcome::Skipped => Ok(Principal::Anonymous(req.client_ip)),
                    jwt::JwtOutcome::Valid { subject } => Ok(Principal::Subject(subject)),
                };
            }
        };
        if !self.pass_credentials {
            req.parts.headers.remove(http::header::AUTHORIZATION);
        }
        Ok(principal)
    }
}
