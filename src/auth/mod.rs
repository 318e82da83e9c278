//! Authentication at the trigger (SPEC section 4): one [`Authenticator`] per trigger that
//! turns a request into a [`Principal`] or refuses it.

use std::net::IpAddr;

use crate::config::AuthConfig;
use crate::error::GatewayError;

/// Who a request was authenticated as. Used for rate-limit keys and logs; never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An anonymous trigger: the client address stands for the caller.
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

/// What an authenticator may look at.
pub struct AuthRequest<'a> {
    pub parts: &'a mut http::request::Parts,
    pub client_ip: IpAddr,
}

/// A trigger's authenticator, built once at start-up.
#[derive(Debug)]
pub enum Authenticator {
    Anonymous,
}

impl Authenticator {
    pub fn build(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        match config {
            AuthConfig::Anonymous => Ok(Authenticator::Anonymous),
            other => anyhow::bail!("auth '{}' is not available in this version", other.scheme()),
        }
    }

    /// Checks the request; on success the credentials it used may be removed from `parts`.
    pub fn authenticate(&self, req: AuthRequest<'_>) -> Result<Principal, GatewayError> {
        match self {
            Authenticator::Anonymous => Ok(Principal::Anonymous(req.client_ip)),
        }
    }

    /// Whether this scheme consumes credentials that must not reach the function.
    pub fn uses_credentials(&self) -> bool {
        !matches!(self, Authenticator::Anonymous)
    }
}
