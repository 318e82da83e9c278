//! HTTP Basic authentication (SPEC section 4.3).
//!
//! Credentials are compared as SHA-256 digests of `user:password` with a constant-time
//! equality over every configured user, so neither timing nor the message says which part
//! was wrong. Malformed headers are 401s, never 500s.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::AuthError;

pub struct BasicAuth {
    /// (username, sha256("user:password")).
    users: Vec<(String, [u8; 32])>,
    challenge: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .finish()
    }
}

fn digest(user: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

impl BasicAuth {
    pub fn new(trigger: &str, users: &[(String, String)]) -> Self {
        BasicAuth {
            users: users
                .iter()
                .map(|(u, p)| (u.clone(), digest(u, p.as_bytes())))
                .collect(),
            challenge: format!("Basic realm=\"{}\"", trigger.replace('"', "")),
        }
    }

    fn refuse(&self, message: &str) -> AuthError {
        AuthError::Unauthorized {
            message: message.to_string(),
            www_authenticate: self.challenge.clone(),
        }
    }

    /// Returns the user name when `authorization` holds valid credentials.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<String, AuthError> {
        let Some(value) = authorization else {
            return Err(self.refuse("Authorization header is expected but missing"));
        };
        let invalid = || self.refuse("invalid username or password");
        let value = std::str::from_utf8(value).map_err(|_| invalid())?.trim();
        let (scheme, encoded) = value.split_once(' ').ok_or_else(invalid)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(invalid());
        }
        let decoded = B64.decode(encoded.trim()).map_err(|_| invalid())?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(invalid)?;
        let user = std::str::from_utf8(&decoded[..colon]).map_err(|_| invalid())?;
        let presented = digest(user, &decoded[colon + 1..]);
        super::match_digest(&self.users, &presented)
            .map(str::to_string)
            .ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> BasicAuth {
        BasicAuth::new(
            "t",
            &[
                ("alice".into(), "wonder:land".into()),
                ("bob".into(), "builder".into()),
            ],
        )
    }

    fn header(s: &str) -> Vec<u8> {
        format!("Basic {}", B64.encode(s)).into_bytes()
    }

    #[test]
    fn accepts_any_configured_user_and_passwords_with_colons() {
        assert_eq!(
            auth().verify(Some(&header("alice:wonder:land"))).unwrap(),
            "alice"
        );
        assert_eq!(auth().verify(Some(&header("bob:builder"))).unwrap(), "bob");
        assert_eq!(
            auth().verify(Some(b"basic Ym9iOmJ1aWxkZXI=")).unwrap(),
            "bob"
        );
    }

    #[test]
    fn refuses_wrong_missing_and_malformed() {
        let cases: [Option<&[u8]>; 8] = [
            None,
            Some(b"Basic"),
            Some(b"Basic !!!notbase64"),
            Some(b"Bearer abc"),
            Some(b"Basic Ym9i"), // "bob", no colon
            Some(b"\xff\xfe"),
            Some(&[]),
            Some(b"Basic Ym9iOmJ1aWxkZXJ4"), // bob:builderx
        ];
        for c in cases {
            match auth().verify(c) {
                Err(AuthError::Unauthorized {
                    www_authenticate, ..
                }) => assert_eq!(www_authenticate, "Basic realm=\"t\""),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        assert!(auth().verify(Some(&header("alice:builder"))).is_err());
        assert!(auth().verify(Some(&header("mallory:builder"))).is_err());
    }
}
