//! The one place where a refusal becomes an HTTP response.
//!
//! Every stage of the pipeline fails with a [`GatewayError`]; [`GatewayError::status`] and
//! [`GatewayError::code`] are the only mapping from errors to status codes and the
//! `{"Code", "Message", "RequestId"}` body of SPEC section 3.

use http::StatusCode;

/// A refusal or failure produced by the gateway itself (never by the function).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed input, size limits on headers/URI, bad `X-Fc-*` values.
    #[error("{0}")]
    InvalidArgument(String),
    /// A body over the sync or async limit.
    #[error("{0}")]
    EntityTooLarge(String),
    /// Signature trigger without `Authorization` or a date.
    #[error("{0}")]
    MissingRequiredHeader(String),
    /// basic / bearer / jwt: credentials missing or invalid. Carries `WWW-Authenticate`.
    #[error("{message}")]
    Unauthorized {
        message: String,
        www_authenticate: String,
    },
    /// The request was signed but the signature does not match.
    #[error("{0}")]
    SignatureNotMatch(String),
    /// The signature names an access key this trigger does not know.
    #[error("{0}")]
    InvalidAccessKeyId(String),
    /// Method, listener policy, clock skew, JWT path rules.
    #[error("{0}")]
    AccessDenied(String),
    /// No trigger matches the host and path.
    #[error("{0}")]
    TriggerNotFound(String),
    /// The trigger's function or qualifier names nothing deployed.
    #[error("{0}")]
    FunctionNotFound(String),
    /// No async task with this id (admin API).
    #[error("{0}")]
    TaskNotFound(String),
    /// An async task id was reused.
    #[error("{0}")]
    TaskAlreadyExists(String),
    /// Rate limit or function concurrency. Carries `Retry-After` seconds.
    #[error("{message}")]
    ResourceExhausted { message: String, retry_after_s: u64 },
    /// Node-wide in-flight limit, or draining. Carries `Retry-After` seconds.
    #[error("{message}")]
    ResourceThrottled { message: String, retry_after_s: u64 },
    /// The guest trapped or reported an error.
    #[error("{0}")]
    FunctionError(String),
    /// The guest's response is unusable (no response, headers too large, invalid).
    #[error("{0}")]
    BadResponse(String),
    /// The guest passed its `timeout_ms`.
    #[error("{0}")]
    FunctionTimeout(String),
    /// A host fault: a bug in the gateway, never the client's or the guest's doing.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status of this error (SPEC section 3 table).
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidArgument(_) | EntityTooLarge(_) | MissingRequiredHeader(_) => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            SignatureNotMatch(_) | InvalidAccessKeyId(_) | AccessDenied(_) => StatusCode::FORBIDDEN,
            TriggerNotFound(_) | FunctionNotFound(_) | TaskNotFound(_) => StatusCode::NOT_FOUND,
            TaskAlreadyExists(_) => StatusCode::CONFLICT,
            ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            FunctionError(_) | BadResponse(_) => StatusCode::BAD_GATEWAY,
            ResourceThrottled { .. } => StatusCode::SERVICE_UNAVAILABLE,
            FunctionTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `Code` field of the JSON body.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidArgument(_) => "InvalidArgument",
            EntityTooLarge(_) => "EntityTooLarge",
            MissingRequiredHeader(_) => "MissingRequiredHeader",
            Unauthorized { .. } => "Unauthorized",
            SignatureNotMatch(_) => "SignatureNotMatch",
            InvalidAccessKeyId(_) => "InvalidAccessKeyID",
            AccessDenied(_) => "AccessDenied",
            TriggerNotFound(_) => "TriggerNotFound",
            FunctionNotFound(_) => "FunctionNotFound",
            TaskNotFound(_) => "TaskNotFound",
            TaskAlreadyExists(_) => "TaskAlreadyExists",
            ResourceExhausted { .. } => "ResourceExhausted",
            ResourceThrottled { .. } => "ResourceThrottled",
            FunctionError(_) => "FunctionError",
            BadResponse(_) => "BadResponse",
            FunctionTimeout(_) => "FunctionTimeout",
            Internal(_) => "InternalServerError",
        }
    }

    /// Extra headers this error carries (`WWW-Authenticate`, `Retry-After`).
    pub fn extra_header(&self) -> Option<(http::HeaderName, String)> {
        match self {
            GatewayError::Unauthorized {
                www_authenticate, ..
            } => Some((http::header::WWW_AUTHENTICATE, www_authenticate.clone())),
            GatewayError::ResourceExhausted { retry_after_s, .. }
            | GatewayError::ResourceThrottled { retry_after_s, .. } => {
                Some((http::header::RETRY_AFTER, retry_after_s.max(&1).to_string()))
            }
            _ => None,
        }
    }

    /// The JSON body of SPEC section 3.
    pub fn body(&self, request_id: &str) -> String {
        serde_json::json!({
            "Code": self.code(),
            "Message": self.to_string(),
            "RequestId": request_id,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_spec_json() {
        let e = GatewayError::TriggerNotFound("no trigger for 'x'".into());
        let v: serde_json::Value = serde_json::from_str(&e.body("r1")).unwrap();
        assert_eq!(v["Code"], "TriggerNotFound");
        assert_eq!(v["Message"], "no trigger for 'x'");
        assert_eq!(v["RequestId"], "r1");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let e = GatewayError::ResourceThrottled {
            message: "busy".into(),
            retry_after_s: 0,
        };
        assert_eq!(e.extra_header().unwrap().1, "1");
    }
}
