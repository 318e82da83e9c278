//! Static bearer tokens (SPEC section 4.5): compared as SHA-256 digests in constant time.

use sha2::{Digest, Sha256};

use super::AuthError;

pub struct BearerAuth {
    /// (token name, sha256(token)) for enabled tokens.
    tokens: Vec<(String, [u8; 32])>,
    challenge: String,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl BearerAuth {
    pub fn new(trigger: &str, tokens: &[(String, String)]) -> Self {
        BearerAuth {
            tokens: tokens
                .iter()
                .map(|(name, t)| (name.clone(), Sha256::digest(t.as_bytes()).into()))
                .collect(),
            challenge: format!("Bearer realm=\"{}\"", trigger.replace('"', "")),
        }
    }

    /// Returns the token's name when `authorization` carries an enabled token.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<String, AuthError> {
        let refuse = |message: &str, error: Option<&str>| AuthError::Unauthorized {
            message: message.to_string(),
            www_authenticate: match error {
                Some(e) => format!("{}, error=\"{e}\"", self.challenge),
                None => self.challenge.clone(),
            },
        };
        let Some(value) = authorization else {
            return Err(refuse("Authorization header is expected but missing", None));
        };
        let invalid = || {
            refuse(
                "access denied due to invalid bearer token",
                Some("invalid_token"),
            )
        };
        let value = std::str::from_utf8(value).map_err(|_| invalid())?.trim();
        let (scheme, token) = value.split_once(' ').ok_or_else(invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(invalid());
        }
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        super::match_digest(&self.tokens, &presented)
            .map(str::to_string)
            .ok_or_else(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn matches_enabled_tokens_only() {
        let a = BearerAuth::new("t", &[("ci".into(), TOKEN.into())]);
        assert_eq!(
            a.verify(Some(format!("Bearer {TOKEN}").as_bytes()))
                .unwrap(),
            "ci"
        );
        let e = a.verify(None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Authorization header is expected but missing"
        );
        for bad in [
            format!("Bearer {TOKEN}x"),
            format!("Basic {TOKEN}"),
            "Bearer".to_string(),
            String::new(),
        ] {
            let e = a.verify(Some(bad.as_bytes())).unwrap_err();
            assert_eq!(e.to_string(), "access denied due to invalid bearer token");
        }
    }
}
