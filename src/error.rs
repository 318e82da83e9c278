//! The one place where a refusal or failure becomes an HTTP answer.
//!
//! Each concern says what went wrong in its own type ([`AuthError`], [`ThrottleError`],
//! [`RuntimeError`], [`QueueError`], [`RegistryError`], [`ConfigError`]); the pipeline's
//! own refusals are variants of [`GatewayError`], which wraps the rest. [`GatewayError::status`],
//! [`GatewayError::code`] and [`error_response`] are the only mapping to status codes,
//! headers and the `{"Code", "Message", "RequestId"}` body of SPEC section 3. A 500 tells
//! the client a fixed message and the request id; the detail goes to the log.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::body::{ResponseBody, full};
use crate::config::ConfigError;
use crate::kv::KvError;
use crate::queue::QueueError;
use crate::registry::RegistryError;
use crate::runtime::RuntimeError;
use crate::throttle::ThrottleError;

/// A refusal or failure produced by the gateway itself (never by the function).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed input, size limits on headers/URI, bad `X-Fc-*` values.
    #[error("{0}")]
    InvalidArgument(String),
    /// A body over the sync or async limit.
    #[error("{0}")]
    EntityTooLarge(String),
    /// The request body paused longer than `body_read_timeout_ms`.
    #[error("{0}")]
    RequestTimeout(String),
    /// Method filter, listener policy.
    #[error("{0}")]
    AccessDenied(String),
    /// No trigger (or admin route) matches.
    #[error("{0}")]
    TriggerNotFound(String),
    /// The target's function or qualifier names nothing deployed.
    #[error("{0}")]
    FunctionNotFound(String),
    /// A synchronous event no function subscribes to.
    #[error("{0}")]
    NoSubscriber(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// (admin API) a key-value bucket operation failed.
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    /// (admin API) no such key in the bucket.
    #[error("{0}")]
    KeyNotFound(String),
    /// A host fault: a bug in the gateway, never the client's or the guest's doing.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status of this error (SPEC section 3 table).
    pub fn status(&self) -> StatusCode {
        use GatewayError as G;
        match self {
            G::InvalidArgument(_) | G::EntityTooLarge(_) | G::Config(_) => StatusCode::BAD_REQUEST,
            G::AccessDenied(_) => StatusCode::FORBIDDEN,
            G::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            G::TriggerNotFound(_) | G::FunctionNotFound(_) | G::NoSubscriber(_) => {
                StatusCode::NOT_FOUND
            }
            G::Auth(e) => match e {
                AuthError::InvalidArgument(_) | AuthError::MissingRequiredHeader(_) => {
                    StatusCode::BAD_REQUEST
                }
                AuthError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
                AuthError::SignatureNotMatch(_)
                | AuthError::InvalidAccessKeyId(_)
                | AuthError::AccessDenied(_) => StatusCode::FORBIDDEN,
                AuthError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            G::Throttle(e) => match e {
                ThrottleError::RateLimited { .. } | ThrottleError::FunctionBusy { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                ThrottleError::NodeBusy { .. }
                | ThrottleError::Draining
                | ThrottleError::ConnectionBuffered { .. } => StatusCode::SERVICE_UNAVAILABLE,
            },
            G::Runtime(e) => match e {
                RuntimeError::Failed(_) | RuntimeError::BadResponse(_) => StatusCode::BAD_GATEWAY,
                RuntimeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                RuntimeError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            G::Queue(e) => match e {
                QueueError::Exists(_) | QueueError::Ambiguous { .. } => StatusCode::CONFLICT,
                QueueError::Full(_) | QueueError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                QueueError::NotFound(_) | QueueError::TriggerGone(_) => StatusCode::NOT_FOUND,
                QueueError::Expired(_) => StatusCode::GATEWAY_TIMEOUT,
                QueueError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            G::Registry(e) => match e {
                RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
                RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
                RegistryError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            G::Kv(e) => match e {
                KvError::NoSuchStore => StatusCode::NOT_FOUND,
                KvError::Quota(_) => StatusCode::PAYLOAD_TOO_LARGE,
                KvError::Invalid(_) => StatusCode::BAD_REQUEST,
                KvError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            G::KeyNotFound(_) => StatusCode::NOT_FOUND,
            G::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One error of every kind the gateway can answer with, for the test that checks the
    /// documented status/Code table against [`GatewayError::status`] and
    /// [`GatewayError::code`]. [`GatewayError::kind_index`] matches every variant without a
    /// wildcard: a new variant does not compile until it has an index, and the test fails
    /// until it has a sample here.
    #[doc(hidden)]
    pub fn every_kind() -> Vec<GatewayError> {
        let s = || String::from("x");
        vec![
            GatewayError::InvalidArgument(s()),
            GatewayError::EntityTooLarge(s()),
            GatewayError::RequestTimeout(s()),
            GatewayError::AccessDenied(s()),
            GatewayError::TriggerNotFound(s()),
            GatewayError::FunctionNotFound(s()),
            GatewayError::NoSubscriber(s()),
            AuthError::InvalidArgument(s()).into(),
            AuthError::MissingRequiredHeader(s()).into(),
            AuthError::Unauthorized {
                message: s(),
                www_authenticate: s(),
            }
            .into(),
            AuthError::SignatureNotMatch(s()).into(),
            AuthError::InvalidAccessKeyId(s()).into(),
            AuthError::AccessDenied(s()).into(),
            AuthError::KeysUnavailable(s()).into(),
            ThrottleError::RateLimited {
                trigger: s(),
                retry_after_s: 1,
            }
            .into(),
            ThrottleError::FunctionBusy {
                function: s(),
                max: 1,
            }
            .into(),
            ThrottleError::NodeBusy { max: 1 }.into(),
            ThrottleError::Draining.into(),
            ThrottleError::ConnectionBuffered { max: 1 }.into(),
            RuntimeError::Failed(s()).into(),
            RuntimeError::BadResponse(s()).into(),
            RuntimeError::Timeout(s()).into(),
            RuntimeError::Host(s()).into(),
            QueueError::Exists(s()).into(),
            QueueError::Full(s()).into(),
            QueueError::NotFound(s()).into(),
            QueueError::Expired(1).into(),
            QueueError::TriggerGone(s()).into(),
            QueueError::Ambiguous {
                id: s(),
                triggers: vec![s()],
            }
            .into(),
            QueueError::Storage(s()).into(),
            QueueError::Unavailable(s()).into(),
            RegistryError::Invalid(s()).into(),
            RegistryError::NotFound(s()).into(),
            RegistryError::Storage(s()).into(),
            ConfigError(s()).into(),
            KvError::NoSuchStore.into(),
            KvError::Quota(s()).into(),
            KvError::Invalid(s()).into(),
            KvError::Unavailable(s()).into(),
            GatewayError::KeyNotFound(s()),
            GatewayError::Internal(s()),
        ]
    }

    /// The number of kinds [`GatewayError::kind_index`] tells apart.
    #[doc(hidden)]
    pub const KINDS: usize = 41;

    /// Which kind of error this is, 0..[`GatewayError::KINDS`] (see
    /// [`GatewayError::every_kind`]).
    #[doc(hidden)]
    pub fn kind_index(&self) -> usize {
        use GatewayError as G;
        match self {
            G::InvalidArgument(_) => 0,
            G::EntityTooLarge(_) => 1,
            G::RequestTimeout(_) => 2,
            G::AccessDenied(_) => 3,
            G::TriggerNotFound(_) => 4,
            G::FunctionNotFound(_) => 5,
            G::NoSubscriber(_) => 6,
            G::Auth(e) => match e {
                AuthError::InvalidArgument(_) => 7,
                AuthError::MissingRequiredHeader(_) => 8,
                AuthError::Unauthorized { .. } => 9,
                AuthError::SignatureNotMatch(_) => 10,
                AuthError::InvalidAccessKeyId(_) => 11,
                AuthError::AccessDenied(_) => 12,
                AuthError::KeysUnavailable(_) => 35,
            },
            G::Throttle(e) => match e {
                ThrottleError::RateLimited { .. } => 13,
                ThrottleError::FunctionBusy { .. } => 14,
                ThrottleError::NodeBusy { .. } => 15,
                ThrottleError::Draining => 16,
                ThrottleError::ConnectionBuffered { .. } => 17,
            },
            G::Runtime(e) => match e {
                RuntimeError::Failed(_) => 18,
                RuntimeError::BadResponse(_) => 19,
                RuntimeError::Timeout(_) => 20,
                RuntimeError::Host(_) => 21,
            },
            G::Queue(e) => match e {
                QueueError::Exists(_) => 22,
                QueueError::Full(_) => 23,
                QueueError::NotFound(_) => 24,
                QueueError::Expired(_) => 25,
                QueueError::TriggerGone(_) => 26,
                QueueError::Ambiguous { .. } => 27,
                QueueError::Storage(_) => 28,
                QueueError::Unavailable(_) => 29,
            },
            G::Registry(e) => match e {
                RegistryError::Invalid(_) => 30,
                RegistryError::NotFound(_) => 31,
                RegistryError::Storage(_) => 32,
            },
            G::Config(_) => 33,
            G::Internal(_) => 34,
            G::Kv(e) => match e {
                KvError::NoSuchStore => 36,
                KvError::Quota(_) => 37,
                KvError::Invalid(_) => 38,
                KvError::Unavailable(_) => 39,
            },
            G::KeyNotFound(_) => 40,
        }
    }

    /// The `Code` field of the JSON body.
    pub fn code(&self) -> &'static str {
        use GatewayError as G;
        match self {
            G::InvalidArgument(_) | G::Config(_) => "InvalidArgument",
            G::EntityTooLarge(_) => "EntityTooLarge",
            G::AccessDenied(_) => "AccessDenied",
            G::RequestTimeout(_) => "RequestTimeout",
            G::TriggerNotFound(_) => "TriggerNotFound",
            G::FunctionNotFound(_) => "FunctionNotFound",
            G::NoSubscriber(_) => "NoSubscriber",
            G::Auth(e) => match e {
                AuthError::InvalidArgument(_) => "InvalidArgument",
                AuthError::MissingRequiredHeader(_) => "MissingRequiredHeader",
                AuthError::Unauthorized { .. } => "Unauthorized",
                AuthError::SignatureNotMatch(_) => "SignatureNotMatch",
                AuthError::InvalidAccessKeyId(_) => "InvalidAccessKeyID",
                AuthError::AccessDenied(_) => "AccessDenied",
                AuthError::KeysUnavailable(_) => "ResourceThrottled",
            },
            G::Throttle(e) => match e {
                ThrottleError::RateLimited { .. } | ThrottleError::FunctionBusy { .. } => {
                    "ResourceExhausted"
                }
                ThrottleError::NodeBusy { .. }
                | ThrottleError::Draining
                | ThrottleError::ConnectionBuffered { .. } => "ResourceThrottled",
            },
            G::Runtime(e) => match e {
                RuntimeError::Failed(_) => "FunctionError",
                RuntimeError::BadResponse(_) => "BadResponse",
                RuntimeError::Timeout(_) => "FunctionTimeout",
                RuntimeError::Host(_) => "InternalServerError",
            },
            G::Queue(e) => match e {
                QueueError::Exists(_) => "TaskAlreadyExists",
                QueueError::Ambiguous { .. } => "TaskAmbiguous",
                QueueError::Full(_) | QueueError::Unavailable(_) => "ResourceThrottled",
                QueueError::NotFound(_) => "TaskNotFound",
                QueueError::TriggerGone(_) => "TriggerNotFound",
                QueueError::Expired(_) => "TaskExpired",
                QueueError::Storage(_) => "InternalServerError",
            },
            G::Registry(e) => match e {
                RegistryError::Invalid(_) => "InvalidArgument",
                RegistryError::NotFound(_) => "FunctionNotFound",
                RegistryError::Storage(_) => "InternalServerError",
            },
            G::Kv(e) => match e {
                KvError::NoSuchStore => "BucketNotFound",
                KvError::Quota(_) => "QuotaExceeded",
                KvError::Invalid(_) => "InvalidArgument",
                KvError::Unavailable(_) => "ServiceUnavailable",
            },
            G::KeyNotFound(_) => "KeyNotFound",
            G::Internal(_) => "InternalServerError",
        }
    }

    /// Whether this is a capacity refusal (429/503 with `Retry-After`) that a queued task or
    /// a broker message waits out: a limit, a full queue, or a queue not reachable yet (a
    /// cluster node before NATS answers).
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            GatewayError::Throttle(_)
                | GatewayError::Queue(QueueError::Full(_) | QueueError::Unavailable(_))
        )
    }

    /// Extra headers this error carries (`WWW-Authenticate`, `Retry-After`).
    pub fn extra_header(&self) -> Option<(http::HeaderName, String)> {
        match self {
            GatewayError::Auth(AuthError::Unauthorized {
                www_authenticate, ..
            }) => Some((header::WWW_AUTHENTICATE, www_authenticate.clone())),
            GatewayError::Throttle(e) => {
                Some((header::RETRY_AFTER, e.retry_after_s().max(1).to_string()))
            }
            GatewayError::Queue(QueueError::Full(_) | QueueError::Unavailable(_))
            | GatewayError::Auth(AuthError::KeysUnavailable(_)) => {
                Some((header::RETRY_AFTER, "5".into()))
            }
            _ => None,
        }
    }

    /// What the client is told: the error's own message, except for host faults, whose
    /// detail stays in the log.
    pub fn public_message(&self, request_id: &str) -> String {
        if self.status() == StatusCode::INTERNAL_SERVER_ERROR {
            format!(
                "internal error; the gateway's log has the details under request id {request_id}"
            )
        } else {
            self.to_string()
        }
    }

    /// The JSON body of SPEC section 3.
    pub fn body(&self, request_id: &str) -> String {
        serde_json::json!({
            "Code": self.code(),
            "Message": self.public_message(request_id),
            "RequestId": request_id,
        })
        .to_string()
    }
}

/// The one place a [`GatewayError`] becomes a response (status, headers, JSON body). A
/// host fault's detail is logged here with the request id.
pub fn error_response(e: &GatewayError, request_id: &str) -> Response<ResponseBody> {
    if e.status() == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(request_id, "internal error: {e}");
    }
    let mut response = Response::new(full(e.body(request_id)));
    *response.status_mut() = e.status();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = e.extra_header()
        && let Ok(v) = HeaderValue::from_str(&value)
    {
        h.insert(name, v);
    }
    response
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
        let e = GatewayError::from(ThrottleError::NodeBusy { max: 1 });
        assert_eq!(e.extra_header().unwrap().1, "1");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), "ResourceThrottled");
    }

    #[test]
    fn host_faults_tell_the_client_nothing_but_the_request_id() {
        for e in [
            GatewayError::from(RuntimeError::Host(
                "host fault: table full at 0x1234".into(),
            )),
            GatewayError::from(QueueError::Storage("disk I/O error in /var/data".into())),
            GatewayError::Internal("bug".into()),
        ] {
            assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let v: serde_json::Value = serde_json::from_str(&e.body("rid-7")).unwrap();
            let msg = v["Message"].as_str().unwrap();
            assert!(!msg.contains("0x1234") && !msg.contains("/var/data") && !msg.contains("bug"));
            assert!(msg.contains("rid-7"), "{msg}");
            assert_eq!(v["Code"], "InternalServerError");
        }
    }

    #[test]
    fn each_concern_maps_to_its_spec_status() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (
                AuthError::Unauthorized {
                    message: "m".into(),
                    www_authenticate: "Basic".into(),
                }
                .into(),
                401,
                "Unauthorized",
            ),
            (
                AuthError::InvalidAccessKeyId("k".into()).into(),
                403,
                "InvalidAccessKeyID",
            ),
            (
                ThrottleError::FunctionBusy {
                    function: "f".into(),
                    max: 1,
                }
                .into(),
                429,
                "ResourceExhausted",
            ),
            (
                RuntimeError::Timeout("t".into()).into(),
                504,
                "FunctionTimeout",
            ),
            (
                RuntimeError::Failed("t".into()).into(),
                502,
                "FunctionError",
            ),
            (
                QueueError::Exists("a".into()).into(),
                409,
                "TaskAlreadyExists",
            ),
            (QueueError::Expired(5).into(), 504, "TaskExpired"),
            (
                RegistryError::Invalid("x".into()).into(),
                400,
                "InvalidArgument",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
        }
    }
}
