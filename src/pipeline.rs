//! The request pipeline of SPEC section 3, top to bottom. Every request passes these stages
//! in this order; the first that refuses answers, through [`GatewayError`]:
//!
//! 1. [`check_limits`]: header, URI and declared body sizes; malformed `X-Fc-*` => 400
//! 2. [`route`]: host and path => 404 `TriggerNotFound`
//! 3. [`listener_policy`]: `disable_internet` => 403
//! 4. [`method_filter`]: the trigger's methods => 403
//! 5. [`authenticate`]: the trigger's scheme => 400/401/403
//! 6. [`throttle`]: draining (503), the trigger's rate limit (429)
//! 7. dispatch: the request becomes an [`Invocation`] ([`invocation`]) handed to the
//!    [`crate::dispatch::Dispatcher`]: sync => [`run_sync`] (resolve 404, function and node
//!    capacity 429/503, run); async => [`enqueue`] (persist durably, then 202)
//!
//! This is the HTTP door: the only module that turns a hyper request into an invocation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};

use crate::auth::{AuthRequest, Principal};
use crate::body::{HashChecked, LimitedBody, RequestBody, ResponseBody, collect_limited, full};
use crate::config::{CorsConfig, Listener};
use crate::dispatch::EnqueueOptions;
use crate::error::{GatewayError, error_response};
use crate::invocation::{Invocation, Source};
use crate::router;
use crate::throttle::ThrottleError;
use crate::{App, ConnInfo, Trigger};

/// Client `x-fc-*` headers that survive; every other `x-fc-*` header is removed.
const CLIENT_FC_HEADERS: [&str; 5] = [
    "x-fc-invocation-type",
    "x-fc-log-type",
    "x-fc-async-task-id",
    "x-fc-async-delay",
    "x-fc-trace-id",
];

/// Forwarding headers a client may not set (the gateway sets its own X-Forwarded-*).
const CLIENT_FORWARDING: [&str; 5] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-for",
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1) never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

static X_FC_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-fc-original-path");
static X_FC_LOG_TYPE: HeaderName = HeaderName::from_static("x-fc-log-type");
static X_FC_INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-fc-invocation-type");

/// `X-Fc-Invocation-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    Sync,
    Async,
}

pub use crate::invocation::new_request_id;

/// What the access log and the metrics record for one request.
#[derive(Default)]
struct Record {
    /// The trigger's index, once routed (its name, series and CORS table).
    index: Option<usize>,
    /// The request was a CORS preflight answered by the gateway.
    preflight: bool,
    principal: Option<String>,
    anonymous: bool,
    /// Which limit refused the request, if one did.
    throttled: Option<&'static str>,
    /// The qualifier a verified claim chose.
    qualifier: Option<String>,
    /// The function and qualifier the request was aimed at (for its span).
    target: Option<crate::invocation::Target>,
    /// The request's span is recorded (its trace is sampled).
    recording: bool,
}

impl App {
    /// Runs one request through the pipeline. Never fails: every refusal is a response.
    pub async fn handle<B>(&self, req: Request<B>, conn: &ConnInfo) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // The clock is read twice for a request: here (wall and monotonic) and at its end.
        // The request id's time, the body's deadline and the access line's time derive
        // from these.
        let wall = std::time::SystemTime::now();
        let started = Instant::now();
        let request_id = crate::invocation::request_id_at(wall);
        // Built once: the function's `X-Fc-Request-Id` and the response's share it.
        let request_id_value = HeaderValue::from_str(&request_id).ok();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let http1 = req.version() <= http::Version::HTTP_11;
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut record = Record::default();
        // The request's span continues the client's trace context, if it sent one.
        let mut span = crate::trace::start(
            "request",
            crate::trace::Kind::Server,
            client_trace(req.headers()).as_ref(),
        );
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (parts, body) = req.into_parts();
        record.recording = span.is_recording();
        // Whatever stage reads the body (authentication, read-ahead, the async store, the
        // function itself), its last byte is due `request_timeout_ms` after the head came.
        let due = tokio::time::Instant::from_std(started)
            + std::time::Duration::from_millis(self.config.limits.request_timeout_ms.get());
        let (body, expired) = crate::body::Deadline::new(body, due);
        // The body stays here until a stage reads it: a refusal before that is "early".
        let mut unread = Some(body);
        let result = self
            .run(
                parts,
                &mut unread,
                conn,
                (&request_id, request_id_value.as_ref()),
                &mut record,
                span.context(),
            )
            .await;
        let result = if expired.load(Ordering::SeqCst) {
            Err(GatewayError::RequestTimeout(format!(
                "the request was not received within {} ms",
                self.config.limits.request_timeout_ms
            )))
        } else {
            result
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => error_response(&e, &request_id),
        };
        if let Some(body) = unread.take() {
            linger(body, &mut response, http1, expects_continue);
        }
        if !record.preflight
            && let Some(cors) = record
                .index
                .and_then(|i| self.triggers.get(i))
                .and_then(|t| t.config.cors.as_ref())
        {
            cors.decorate(origin.as_deref(), &mut response);
        }
        if http1 && self.is_draining() {
            // A draining node asks keep-alive clients to reconnect elsewhere.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(v) = request_id_value {
            response
                .headers_mut()
                .insert(crate::invocation::names::REQUEST_ID.clone(), v);
        }
        // The trigger the request was routed to, if it was.
        let routed = record.index.and_then(|i| self.triggers.get(i));
        let auth = match (routed, &record.principal) {
            (None, _) => "none",
            (Some(_), Some(_)) if record.anonymous => "anonymous",
            (Some(_), Some(_)) => "ok",
            (Some(_), None) => "refused",
        };
        let status = response.status().as_u16();
        // One clock read for the metrics and the access line.
        let elapsed = started.elapsed();
        match routed {
            Some(t) => t
                .series
                .record(&t.name, status, auth, elapsed.as_secs_f64()),
            None => crate::metrics::record_unrouted(status, auth, elapsed.as_secs_f64()),
        }
        let m = &crate::metrics::METRICS;
        if let Some(reason) = record.throttled {
            m.throttled
                .get_or_create(&crate::metrics::ThrottleLabels {
                    trigger: routed.map_or_else(String::new, |t| t.config.name.clone()),
                    reason,
                })
                .inc();
        }
        let trace_id = span.context().map(crate::trace::Context::trace_id_hex);
        if span.is_recording() {
            let status = response.status().as_u16();
            span.set("wasmgate.request_id", &request_id);
            span.set(
                "http.request.method",
                crate::trace::Value::Str(match method {
                    http::Method::GET => "GET",
                    http::Method::POST => "POST",
                    http::Method::PUT => "PUT",
                    http::Method::DELETE => "DELETE",
                    http::Method::HEAD => "HEAD",
                    http::Method::PATCH => "PATCH",
                    http::Method::OPTIONS => "OPTIONS",
                    _ => "_OTHER",
                }),
            );
            span.set("url.path", path.as_str());
            if let Some(t) = routed {
                span.set("wasmgate.trigger", &t.name);
            }
            if let Some(t) = &record.target {
                span.set("wasmgate.function", &t.function);
                span.set("wasmgate.qualifier", &t.qualifier);
            }
            if let Some(p) = &record.principal {
                span.set("wasmgate.principal", p);
            }
            span.set_status(status);
        }
        drop(span);
        crate::access_log::record(&crate::access_log::Entry {
            request_id: &request_id,
            peer: conn.peer,
            peer_ip: conn.peer_ip(),
            method: &method,
            path: &path,
            trigger: routed.map(|t| &*t.name),
            principal: record.principal.as_deref(),
            qualifier: record.qualifier.as_deref(),
            status: response.status().as_u16(),
            duration_us: elapsed.as_micros() as u64,
            bytes: http_body::Body::size_hint(response.body()).exact(),
            trace_id: trace_id.as_ref().map(crate::trace::TraceIdHex::as_str),
            at: wall.checked_add(elapsed).unwrap_or(wall),
        });
        response
    }

    async fn run<B>(
        &self,
        mut parts: http::request::Parts,
        unread: &mut Option<B>,
        conn: &ConnInfo,
        // The request's id, and the same as a header value when it is one.
        (request_id, request_id_value): (&Arc<str>, Option<&HeaderValue>),
        record: &mut Record,
        trace: Option<&crate::trace::Context>,
    ) -> Result<Response<ResponseBody>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let invocation_type = check_limits(self, &parts)?;
        // The authority is validated before anything reads it (SPEC section 2): a function,
        // a host rule or a router never sees one the gateway did not check and normalise.
        let authority = request_authority(&parts)?;
        // Hop-by-hop headers are the client's, removed before authentication adds headers of
        // the gateway's own: `Connection: x-user-id` cannot remove a verified claim header.
        strip_hop_by_hop(&mut parts.headers);
        let path =
            router::normalize_path(parts.uri.path()).map_err(GatewayError::InvalidArgument)?;
        let routed = route(self, &parts, authority.as_deref(), &path)?;
        let trigger = routed.trigger;
        record.index = Some(routed.index);
        listener_policy(trigger, conn)?;
        if let Some(cors) = &trigger.config.cors
            && CorsConfig::is_preflight(&parts.method, &parts.headers)
        {
            // Browsers send no credentials with a preflight: it is answered here, before the
            // method filter and authentication, and never reaches the function.
            record.preflight = true;
            return cors
                .preflight(&parts.headers)
                .map_err(GatewayError::AccessDenied);
        }
        method_filter(trigger, &parts)?;
        let invocation_type = if routed.on_async_path {
            if parts.method != http::Method::POST {
                return Err(GatewayError::AccessDenied(format!(
                    "method '{}' is not allowed on the async path of trigger '{}' (POST only)",
                    parts.method, trigger.config.name
                )));
            }
            InvocationType::Async
        } else {
            invocation_type
        };
        // An anonymous trigger authenticates nobody: no span and no await for it. The others
        // are boxed: their future (a JWT trigger's may fetch keys) would otherwise take room
        // in every request's future, anonymous ones included.
        let (principal, read, body_digest, claimed) = if trigger.auth.is_anonymous() {
            (Principal::Anonymous(conn.peer.ip()), None, None, None)
        } else {
            let mut auth_span =
                crate::trace::child("authenticate", crate::trace::Kind::Internal, trace);
            let authenticated = Box::pin(authenticate(
                self,
                trigger,
                &mut parts,
                unread,
                conn,
                &routed.function_path,
            ))
            .await
            .inspect_err(|e| auth_span.set_error(e.to_string()))?;
            auth_span.set_with("wasmgate.principal", || authenticated.0.id());
            authenticated
        };
        record.principal = Some(match principal {
            Principal::Anonymous(_) => Principal::anonymous_id(conn.peer_ip()),
            _ => principal.id(),
        });
        record.anonymous = matches!(principal, Principal::Anonymous(_));
        throttle(self, trigger, &principal, conn).inspect_err(|e| {
            record.throttled = Some(e.reason());
        })?;
        let mut _read_grant = None;
        let is_event = matches!(trigger.config.kind, crate::config::Kind::Event);
        let body = match read {
            Some(body) => body,
            None => {
                let body = unread
                    .take()
                    .ok_or_else(|| GatewayError::Internal("the request body is gone".into()))?;
                // An event is read whole, within the async body limit.
                let read_as = if is_event {
                    InvocationType::Async
                } else {
                    invocation_type
                };
                let (body, grant) =
                    read_ahead(self, body, read_as, conn.read_budget.as_ref()).await?;
                // Held until the response head is out: the bytes stay counted while the
                // request waits for admission and the function starts on them.
                _read_grant = grant;
                body
            }
        };
        let (body, hash_mismatch) = check_body_hash(body, body_digest.as_ref())?;
        if is_event {
            // Boxed, like the async path below: rare next to sync requests, and their futures
            // would otherwise take room in every request's.
            return Box::pin(publish_event(
                self,
                trigger,
                &parts,
                body,
                hash_mismatch,
                request_id,
                trace,
            ))
            .await;
        }
        let mut target = routed
            .target
            .ok_or_else(|| GatewayError::Internal("the trigger has no target".into()))?;
        if let Some(q) = claimed {
            // qualifier_by_claim: the verified claim picks the alias or version.
            record.qualifier = Some(q.clone());
            target.qualifier = q;
        }
        if record.recording {
            record.target = Some(target.clone());
        }
        let inv = invocation(
            trigger,
            target,
            parts,
            body,
            conn,
            (request_id, request_id_value),
            &routed.function_path,
            authority.as_deref(),
            trace,
        )?;
        if invocation_type == InvocationType::Async {
            return Box::pin(enqueue(self, trigger, inv)).await;
        }
        run_sync(self, inv, hash_mismatch).await.inspect_err(|e| {
            if let GatewayError::Throttle(t) = e {
                record.throttled = Some(t.reason());
            }
        })
    }
}

/// The event API's request: its body read whole (within the async body limit), its
/// signed digest checked, and the event published to its subscribers.
async fn publish_event<B>(
    app: &App,
    trigger: &Trigger,
    parts: &http::request::Parts,
    body: B,
    hash_mismatch: Arc<std::sync::atomic::AtomicBool>,
    request_id: &Arc<str>,
    trace: Option<&crate::trace::Context>,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let limit = app.config.limits.max_async_body_bytes;
    let body = collect_limited(body, limit)
        .await
        .map_err(|e| GatewayError::InvalidArgument(format!("cannot read the request body: {e}")))?
        .ok_or_else(|| {
            GatewayError::EntityTooLarge(format!("event body is over the limit of {limit} bytes"))
        })?;
    if hash_mismatch.load(Ordering::SeqCst) {
        return Err(crate::auth::AuthError::SignatureNotMatch(
            "the request body does not match x-acs-content-sha256".into(),
        )
        .into());
    }
    crate::sources::event::publish(app, trigger, parts, body, request_id, trace).await
}

/// The client's trace context, unless its `Connection` header names the trace headers as
/// hop-by-hop (they are removed before the function sees the request, and so is what they
/// say).
fn client_trace(headers: &HeaderMap) -> Option<crate::trace::Context> {
    if !crate::trace::enabled() {
        return None;
    }
    let mut ctx = crate::trace::Context::from_headers(headers)?;
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if token.eq_ignore_ascii_case("traceparent") {
            return None;
        }
        if token.eq_ignore_ascii_case("tracestate") {
            ctx.state = None;
        }
    }
    Some(ctx)
}

/// Stage 1: sizes of headers, URI and declared body; malformed gateway headers.
///
/// Refuses with 400 `InvalidArgument` (headers, URI, `X-Fc-Invocation-Type`) or 400
/// `EntityTooLarge` (a `Content-Length` over the limit). A body without a length is
/// counted as it streams (see [`dispatch`]).
pub fn check_limits(
    app: &App,
    parts: &http::request::Parts,
) -> Result<InvocationType, GatewayError> {
    let limits = &app.config.limits;
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::InvalidArgument(format!(
            "request headers are {header_bytes} bytes, over the limit of {}",
            limits.max_header_bytes
        )));
    }
    let uri_bytes = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_bytes > limits.max_uri_bytes {
        return Err(GatewayError::InvalidArgument(format!(
            "request URI is {uri_bytes} bytes, over the limit of {}",
            limits.max_uri_bytes
        )));
    }
    let invocation_type = match parts.headers.get(&X_FC_INVOCATION_TYPE) {
        None => InvocationType::Sync,
        Some(v) => match v.to_str().map(str::trim) {
            Ok(s) if s.eq_ignore_ascii_case("sync") => InvocationType::Sync,
            Ok(s) if s.eq_ignore_ascii_case("async") => InvocationType::Async,
            _ => {
                return Err(GatewayError::InvalidArgument(
                    "X-Fc-Invocation-Type must be 'Sync' or 'Async'".into(),
                ));
            }
        },
    };
    let body_limit = match invocation_type {
        InvocationType::Sync => limits.max_body_bytes,
        InvocationType::Async => limits.max_async_body_bytes,
    };
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| GatewayError::InvalidArgument("invalid Content-Length".into()))?;
        if len > body_limit {
            return Err(GatewayError::EntityTooLarge(format!(
                "request body is {len} bytes, over the limit of {body_limit}"
            )));
        }
    }
    Ok(invocation_type)
}

/// Stage 2: the most specific trigger for the request's host and normalised path => 404
/// `TriggerNotFound`; a path whose `..` climbs above that trigger's prefix => 400 (the
/// path was normalised first: unreserved escapes decoded, dot segments resolved, `//`
/// collapsed; an encoded `/` or `\` was already a 400).
/// What routing found: the trigger, the function (chosen by the trigger, or by name from
/// the path), and the path the function sees.
#[derive(Debug)]
pub struct Routed<'a> {
    /// The trigger's position in the generation's table.
    pub index: usize,
    pub trigger: &'a Trigger,
    /// `None` for the event API, whose subscribers are found per event.
    pub target: Option<crate::invocation::Target>,
    /// The normalised path with the trigger's prefix (or template) removed.
    pub function_path: String,
    /// The request came on the trigger's `async_path`.
    pub on_async_path: bool,
}

pub fn route<'a>(
    app: &'a App,
    parts: &http::request::Parts,
    host: Option<&str>,
    path: &router::NormalPath,
) -> Result<Routed<'a>, GatewayError> {
    let (index, trigger) = app
        .router
        .lookup(host, &path.path)
        .map(|m| (*m.value, &app.triggers[*m.value]))
        .ok_or_else(|| {
            GatewayError::TriggerNotFound(format!("no trigger matches path '{}'", path.path))
        })?;
    if path.climbs_above(&trigger.config.path) {
        return Err(GatewayError::InvalidArgument(format!(
            "path '{}' climbs above the prefix of trigger '{}'",
            parts.uri.path(),
            trigger.config.name
        )));
    }
    let Some(routes) = &trigger.config.routes else {
        return Ok(Routed {
            index,
            trigger,
            target: trigger.target.clone(),
            function_path: router::strip_prefix(&trigger.config.path, &path.path, None),
            on_async_path: false,
        });
    };
    let (id, rest, on_async_path) = match routes.path.matches(&path.path) {
        Some((id, rest)) => (id, rest, false),
        None => match routes
            .async_path
            .as_ref()
            .and_then(|a| a.matches(&path.path))
        {
            Some((id, rest)) => (id, rest, true),
            None => {
                return Err(GatewayError::TriggerNotFound(format!(
                    "no trigger matches path '{}'",
                    path.path
                )));
            }
        },
    };
    if !routes.functions.allows(&id) {
        return Err(GatewayError::FunctionNotFound(format!(
            "function '{id}' is not exposed by trigger '{}'",
            trigger.config.name
        )));
    }
    Ok(Routed {
        index,
        trigger,
        target: Some(crate::invocation::Target {
            function: id,
            qualifier: trigger.config.qualifier.clone(),
        }),
        function_path: rest,
        on_async_path,
    })
}

/// Stage 3: a trigger with `disable_internet` is not served on the public listener.
pub fn listener_policy(trigger: &Trigger, conn: &ConnInfo) -> Result<(), GatewayError> {
    if trigger.config.disable_internet && conn.listener == Listener::Public {
        return Err(GatewayError::AccessDenied(
            "access denied due to function internet URL is disable".into(),
        ));
    }
    Ok(())
}

/// Stage 4: the trigger's `methods` => 403 `AccessDenied`.
pub fn method_filter(trigger: &Trigger, parts: &http::request::Parts) -> Result<(), GatewayError> {
    if trigger.config.methods.contains(&parts.method) {
        Ok(())
    } else {
        Err(GatewayError::AccessDenied(format!(
            "method '{}' is not allowed by trigger '{}'",
            parts.method, trigger.config.name
        )))
    }
}

/// Stage 5: the trigger's authentication scheme => the caller's [`Principal`]
/// (400 `MissingRequiredHeader`, 401 `Unauthorized`, 403 `SignatureNotMatch` /
/// `InvalidAccessKeyID` / `AccessDenied`). When the check needs the body (an ACS3 body hash,
/// a JWT in a form field) the body is read here, within `max_body_bytes`, and handed on
/// buffered.
pub async fn authenticate<B>(
    app: &App,
    trigger: &Trigger,
    parts: &mut http::request::Parts,
    unread: &mut Option<B>,
    conn: &ConnInfo,
    path: &str,
) -> Result<
    (
        Principal,
        Option<RequestBody<B>>,
        Option<crate::auth::signature::BodyDigest>,
        Option<String>,
    ),
    GatewayError,
>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let function_path = path;
    // A JWT in a form field: at most FORM_TOKEN_BYTES of the form are read before the
    // token is checked; a longer form is not searched (the other lookups still apply) and
    // streams on unchanged.
    let mut read: Option<RequestBody<B>> = None;
    let mut _form_grant = None;
    if trigger.auth.needs_body(parts)
        && let Some(body) = unread.take()
    {
        let idle = std::time::Duration::from_millis(app.config.limits.body_read_timeout_ms.get());
        // Before authentication too, the connection's read-ahead budget applies: with none
        // left, the form is not searched.
        let grant = conn.read_budget.as_ref().map(|b| b.take(FORM_TOKEN_BYTES));
        let buffer = grant.as_ref().map_or(FORM_TOKEN_BYTES, |g| g.bytes);
        _form_grant = grant;
        read = Some(
            crate::body::prefetch(ErrorText(body), buffer, u64::MAX, idle)
                .await
                .map(unwrap_error_text)
                .map_err(|e| prefetch_error(app, e, u64::MAX))?,
        );
    }
    let form = match &read {
        Some(RequestBody::Buffered(Some(b))) => Some(b.clone()),
        _ => None,
    };
    let authenticated = trigger
        .auth
        .authenticate(AuthRequest {
            parts,
            body: form.as_deref(),
            client_ip: conn.peer.ip(),
            function_path,
            now: chrono::Utc::now(),
        })
        .await?;
    if let Some(replaced) = authenticated.body {
        read = Some(RequestBody::Buffered(Some(Bytes::from(replaced))));
    }
    Ok((
        authenticated.principal,
        read,
        authenticated.body_digest,
        authenticated.qualifier,
    ))
}

/// Between stages 6 and 7: the body, or its first `body_buffer_bytes`, is read before a
/// function slot is taken, with at most `body_read_timeout_ms` between two chunks (408).
/// A slow sender holds a connection, never an instance. Larger bodies stream on.
async fn read_ahead<B>(
    app: &App,
    body: B,
    invocation_type: InvocationType,
    budget: Option<&crate::body::ReadBudget>,
) -> Result<(RequestBody<B>, Option<crate::body::Grant>), GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let limits = &app.config.limits;
    let (buffer, limit) = match invocation_type {
        // An async body is read whole (it is stored): the async limit is the buffer.
        InvocationType::Async => (
            limits.max_async_body_bytes as usize + 1,
            limits.max_async_body_bytes,
        ),
        InvocationType::Sync => (limits.body_buffer_bytes, limits.max_body_bytes),
    };
    // The connection's budget: a body that says how long it is needs no more than that; a
    // sync body gets what is left (streaming the rest), an async one (stored whole) must
    // get all it needs, else 503.
    let (buffer, grant) = match budget {
        None => (buffer, None),
        Some(b) => {
            let need = http_body::Body::size_hint(&body)
                .upper()
                .map_or(buffer, |u| {
                    usize::try_from(u).unwrap_or(usize::MAX).min(buffer)
                });
            let grant = b.take(need);
            if invocation_type == InvocationType::Async && grant.bytes < need {
                return Err(ThrottleError::ConnectionBuffered { max: b.max() }.into());
            }
            (grant.bytes, Some(grant))
        }
    };
    let idle = std::time::Duration::from_millis(limits.body_read_timeout_ms.get());
    crate::body::prefetch(ErrorText(body), buffer, limit, idle)
        .await
        .map(|b| (unwrap_error_text(b), grant))
        .map_err(|e| prefetch_error(app, e, limit))
}

/// What a form is read up to before a JWT is looked for in it.
const FORM_TOKEN_BYTES: usize = 64 * 1024;

fn unwrap_error_text<B>(b: RequestBody<ErrorText<B>>) -> RequestBody<B> {
    match b {
        RequestBody::Buffered(d) => RequestBody::Buffered(d),
        RequestBody::Prefixed(d, ErrorText(rest)) => RequestBody::Prefixed(d, rest),
        RequestBody::Streaming(ErrorText(rest)) => RequestBody::Streaming(rest),
    }
}

fn prefetch_error(app: &App, e: crate::body::PrefetchError, limit: u64) -> GatewayError {
    match e {
        crate::body::PrefetchError::Stalled => GatewayError::RequestTimeout(format!(
            "the request body paused for more than {} ms",
            app.config.limits.body_read_timeout_ms
        )),
        crate::body::PrefetchError::TooLarge => {
            GatewayError::EntityTooLarge(format!("request body is over the limit of {limit} bytes"))
        }
        crate::body::PrefetchError::Read(e) => {
            GatewayError::InvalidArgument(format!("cannot read the request body: {e}"))
        }
    }
}

/// The signed body hash (`x-acs-content-sha256`, its signature already verified): a body
/// read whole is checked now (403 before any function slot is taken); a longer one is
/// checked as it streams ([`HashChecked`]), and a mismatch at its end answers 403 instead
/// of the function's response.
fn check_body_hash<B>(
    body: RequestBody<B>,
    expected: Option<&crate::auth::signature::BodyDigest>,
) -> Result<
    (
        HashChecked<RequestBody<B>>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    GatewayError,
> {
    use crate::auth::signature::BodyDigest;
    use crate::body::Digest;
    let mismatch = |header: &str| {
        GatewayError::from(crate::auth::AuthError::SignatureNotMatch(format!(
            "the request body does not match {header}"
        )))
    };
    let expected: Option<Digest> = match expected {
        None => None,
        Some(BodyDigest::Sha256(hex)) => Some(Digest::Sha256(
            hex::decode(hex)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| mismatch("x-acs-content-sha256"))?,
        )),
        Some(BodyDigest::Md5(b64)) => Some(Digest::Md5(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .ok()
                .and_then(|v| <[u8; 16]>::try_from(v).ok())
                .ok_or_else(|| mismatch("Content-MD5"))?,
        )),
    };
    if let (Some(want), RequestBody::Buffered(data)) = (expected, &body) {
        if !want.matches(data.as_deref().unwrap_or_default()) {
            return Err(mismatch(match want {
                Digest::Sha256(_) => "x-acs-content-sha256",
                Digest::Md5(_) => "Content-MD5",
            }));
        }
        return Ok(HashChecked::new(body, None));
    }
    Ok(HashChecked::new(body, expected))
}

/// A body whose error can be shown (the runtime's error type is not `Display`).
struct ErrorText<B>(B);

impl<B> http_body::Body for ErrorText<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, String>>> {
        std::pin::Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(|e| format!("{:?}", e.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Stage 6: draining (503), then the trigger's rate limit (429). The function and node
/// capacity is taken by the dispatcher right before the function runs. Nothing here
/// allocates an instance; a refusal costs microseconds.
pub fn throttle(
    app: &App,
    trigger: &Trigger,
    principal: &Principal,
    conn: &ConnInfo,
) -> Result<(), ThrottleError> {
    if app.is_draining() {
        return Err(ThrottleError::Draining);
    }
    if let Some(limit) = &trigger.rate_limit {
        limit.check(principal, conn.peer.ip())?;
    }
    Ok(())
}

/// Stage 7 (async): validate the async headers, read the body (within
/// `max_async_body_bytes`), have the dispatcher commit the invocation to the durable queue,
/// then answer 202 with the task id.
///
/// 400 `InvalidArgument`: the trigger has no enabled `async` table, a bad
/// `X-Fc-Async-Task-Id`, `X-Fc-Async-Delay` or `X-Callback-Url` (whose host must be in
/// `callback_hosts`: an SSRF guard); 400 `EntityTooLarge` over `max_async_body_bytes`;
/// 409 `TaskAlreadyExists` for a reused id.
pub async fn enqueue<B>(
    app: &App,
    trigger: &Trigger,
    inv: Invocation<B>,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let invalid = GatewayError::InvalidArgument;
    let config = trigger
        .config
        .async_
        .as_ref()
        .filter(|a| a.enabled)
        .ok_or_else(|| {
            invalid(format!(
                "trigger '{}' does not accept async invocations",
                trigger.config.name
            ))
        })?;
    let Invocation {
        target,
        trigger: trigger_name,
        source,
        request_id,
        request,
        trace,
        prebuilt,
    } = inv;
    let (mut parts, body) = request.into_parts();
    let header = |name: &str| -> Result<Option<String>, GatewayError> {
        match parts.headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| invalid(format!("{name} is not valid text"))),
        }
    };
    let task_id = match header("x-fc-async-task-id")? {
        Some(id) if crate::queue::reserved_task_id(&id) => {
            return Err(invalid(format!(
                "X-Fc-Async-Task-Id '{id}': ids starting with {} are made by the gateway",
                crate::queue::RESERVED_PREFIXES.join(" or ")
            )));
        }
        Some(id) if crate::queue::valid_task_id(&id) => Some(id),
        Some(_) => {
            return Err(invalid(
                "X-Fc-Async-Task-Id must match [A-Za-z_][A-Za-z0-9_-]{0,127}".into(),
            ));
        }
        None => None,
    };
    let delay_s: i64 = match header("x-fc-async-delay")? {
        None => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| (0..=3600).contains(d))
            .ok_or_else(|| {
                invalid("X-Fc-Async-Delay must be a whole number of seconds from 0 to 3600".into())
            })?,
    };
    let callback_url = match header("x-callback-url")? {
        None => None,
        Some(url) => {
            crate::queue::callback::check_client_url(
                &url,
                &config.callback_hosts,
                app.admin_addr(),
            )
            .map_err(|why| invalid(format!("X-Callback-Url is refused: {why}")))?;
            Some(url)
        }
    };
    // Request-control headers are for the gateway, not part of the stored request.
    for name in ["x-fc-invocation-type", "x-callback-url", "x-fc-async-delay"] {
        parts.headers.remove(name);
    }
    let limit = app.config.limits.max_async_body_bytes;
    let body = collect_limited(body, limit)
        .await
        .map_err(|e| invalid(format!("cannot read the request body: {e}")))?
        .ok_or_else(|| {
            GatewayError::EntityTooLarge(format!(
                "async request body is over the limit of {limit} bytes"
            ))
        })?;
    let inv = Invocation {
        target,
        trigger: trigger_name,
        source,
        request_id,
        request: Request::from_parts(parts, body),
        trace,
        prebuilt,
    };
    let task_id = app
        .dispatcher
        .enqueue(
            inv,
            EnqueueOptions {
                task_id,
                delay_ms: delay_s * 1000,
                callback_url,
            },
        )
        .await?;
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        response.headers_mut().insert("x-fc-async-task-id", v);
    }
    Ok(response)
}

/// Stage 7 (sync): the dispatcher resolves, admits and runs the invocation; the body is
/// counted as it streams; the function's response is shaped for the client.
pub fn run_sync<B>(
    app: &App,
    inv: Invocation<B>,
    hash_mismatch: Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send + use<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    // Everything up to the guest's start is done here, not in the future: it holds only
    // what it needs after the response head (see `Function::invoke`).
    let tail = inv
        .request
        .headers()
        .get(&X_FC_LOG_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"));
    let max_body_bytes = app.config.limits.max_body_bytes;
    let mut too_large = None;
    let inv = inv.map_body(|body| {
        let (body, flag) = LimitedBody::new(body, max_body_bytes);
        too_large = Some(flag);
        body
    });
    let too_large = too_large.unwrap_or_default();
    let running = app.dispatcher.run(inv);
    // What follows the response head, without an async block around the guest's future
    // (it would keep a second copy of it); only a log tail, rare, waits for more.
    let checked = move |outcome: Result<crate::runtime::Outcome, GatewayError>| {
        if too_large.load(Ordering::SeqCst) {
            return Err(GatewayError::EntityTooLarge(format!(
                "request body is over the limit of {max_body_bytes} bytes"
            )));
        }
        if hash_mismatch.load(Ordering::SeqCst) {
            return Err(crate::auth::AuthError::SignatureNotMatch(
                "the request body does not match x-acs-content-sha256".into(),
            )
            .into());
        }
        outcome
    };
    use futures::FutureExt;
    if tail {
        futures::future::Either::Right(
            async move {
                let outcome = checked(running.await)?;
                let mut response = with_log_tail(outcome).await?;
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            .boxed(),
        )
    } else {
        futures::future::Either::Left(running.map(move |outcome| {
            let mut response = checked(outcome)?.response;
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        }))
    }
}

/// How much of a refused request's body is read and thrown away, and for how long, so the
/// client (still sending) reads the answer instead of a reset (nginx's lingering close).
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);
const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// After an early refusal (the body never read): on HTTP/1 the answer says
/// `Connection: close`, and unless the client waits for `100 Continue` (it is then never
/// invited to send), what it is still sending is read and discarded in the background,
/// bounded in bytes and time, before the connection closes. On HTTP/2 the same reading
/// keeps the stream open until the answer is out (dropping the body at once would reset
/// the stream under it); only the stream ends.
fn linger<B>(body: B, response: &mut Response<ResponseBody>, http1: bool, expects_continue: bool)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
{
    if http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if expects_continue {
            return;
        }
    }
    if http_body::Body::is_end_stream(&body) {
        return;
    }
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        let mut body = body;
        if expects_continue {
            // HTTP/2 and waiting for 100 Continue: never invite the body (reading would),
            // only keep the stream open while the answer goes out.
            tokio::time::sleep(LINGER_IDLE).await;
            return;
        }
        let mut read = 0usize;
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        while read < LINGER_BYTES {
            let next = tokio::time::timeout(LINGER_IDLE, body.frame());
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Ok(Some(Ok(frame)))) => {
                    read += frame.data_ref().map_or(0, |d| d.len());
                }
                _ => break,
            }
        }
    });
}

/// Largest response body buffered for `X-Fc-Log-Type: Tail`.
const MAX_TAIL_RESPONSE: usize = 6 * 1024 * 1024;

/// `X-Fc-Log-Type: Tail`: waits for the guest to finish (its body read whole), then adds
/// `X-Fc-Log-Result` with the base64 of the last 4 KiB it wrote to stdout and stderr.
async fn with_log_tail(
    outcome: crate::runtime::Outcome,
) -> Result<Response<ResponseBody>, GatewayError> {
    use base64::Engine as _;
    use http_body_util::BodyExt;
    let (mut parts, body) = outcome.response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_TAIL_RESPONSE)
        .collect()
        .await
        .map_err(|e| {
            crate::runtime::RuntimeError::BadResponse(format!(
                "the function's response could not be read for the log tail: {e}"
            ))
        })?
        .to_bytes();
    // The guest's task ends within its deadline; an error here means it is gone already.
    let _ = outcome.finished.await;
    let tail = base64::engine::general_purpose::STANDARD.encode(outcome.log.tail());
    if let Ok(v) = HeaderValue::from_str(&tail) {
        parts.headers.insert("x-fc-log-result", v);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, full(body)))
}

/// The HTTP door's invocation: the request as the function sees it (the trigger prefix
/// removed, `X-Fc-Original-Path` set, client `x-fc-*` headers filtered, hop-by-hop headers
/// removed before authentication), aimed at the trigger's target. Its URI is built only from
/// validated parts: the scheme of the listener, the checked authority and the normalised
/// path. The gateway headers common to every door are set by [`Invocation::stamp`] when it
/// is dispatched.
#[allow(clippy::too_many_arguments)]
fn invocation<B>(
    trigger: &Trigger,
    target: crate::invocation::Target,
    mut parts: http::request::Parts,
    body: B,
    conn: &ConnInfo,
    (request_id, request_id_value): (&Arc<str>, Option<&HeaderValue>),
    function_path: &str,
    authority: Option<&str>,
    trace: Option<&crate::trace::Context>,
) -> Result<Invocation<B>, GatewayError> {
    let original = parts.uri.path_and_query().cloned();
    // The path as the function sees it: the client's when routing kept it whole (the
    // common case: no copy), else the part after the trigger's prefix, with the query.
    let stripped = match &original {
        Some(pq) if pq.path() == function_path => pq.clone(),
        _ => {
            let query = parts.uri.query();
            let mut s =
                String::with_capacity(function_path.len() + query.map_or(0, |q| q.len() + 1));
            s.push_str(function_path);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            http::uri::PathAndQuery::from_maybe_shared(Bytes::from(s)).map_err(|e| {
                GatewayError::InvalidArgument(format!("invalid request target: {e}"))
            })?
        }
    };
    let authority = authority.unwrap_or("localhost");
    let scheme = if conn.https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    // Never the original target: a URI that cannot be rebuilt from checked parts is refused.
    let invalid = |e: &dyn std::fmt::Display| {
        GatewayError::InvalidArgument(format!("invalid request target: {e}"))
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(scheme);
    uri.authority = Some(authority.parse().map_err(|e| invalid(&e))?);
    uri.path_and_query = Some(stripped);
    parts.uri = http::Uri::from_parts(uri).map_err(|e| invalid(&e))?;
    let headers = &mut parts.headers;
    // In absolute form the URI's authority wins over `Host` (RFC 9112 section 3.2.2): the
    // function sees the one the router saw.
    if headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() != authority.as_bytes())
        && let Ok(v) = HeaderValue::from_str(authority)
    {
        headers.insert(header::HOST, v);
    }
    // The gateway is the edge: forwarding information from the client is unverified. It
    // sets X-Forwarded-For and X-Forwarded-Proto itself (see `Invocation::stamp`). Client
    // `x-fc-*` headers other than the few a client may send go too. One pass finds them;
    // usually there are none.
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            (k.starts_with("x-fc-") && !CLIENT_FC_HEADERS.contains(&k))
                || CLIENT_FORWARDING.contains(&k)
        })
        .cloned()
        .collect();
    for k in dropped {
        headers.remove(&k);
    }
    // Room, once, for this header and those `Invocation::stamp` adds (the map hyper built
    // holds the client's headers only: growing it header by header rehashes it twice).
    headers.reserve(crate::invocation::GATEWAY_HEADERS + 1);
    if let Ok(v) = HeaderValue::from_str(original.as_ref().map_or("/", |pq| pq.as_str())) {
        headers.insert(X_FC_ORIGINAL_PATH.clone(), v);
    }
    Ok(Invocation {
        target,
        trigger: trigger.name.clone(),
        source: Source::Http {
            peer: conn.peer,
            https: conn.https,
        },
        request_id: request_id.clone(),
        request: Request::from_parts(parts, body),
        trace: trace.cloned(),
        prebuilt: crate::invocation::Prebuilt {
            trigger: Some(trigger.values.clone()),
            request_id: request_id_value.cloned(),
            forwarded_for: Some(conn.peer_ip.clone()),
        },
    })
}

/// The request's authority (SPEC section 2), checked and normalised (lowercase, an empty
/// port dropped): the URI's (HTTP/2 `:authority`, or HTTP/1.1 absolute form, where `Host` is
/// then ignored), else the `Host` header. An HTTP/1.1 request with no `Host` or more than
/// one, or an authority that is not a valid `host[:port]`, is 400 `InvalidArgument`.
/// `None`: an HTTP/1.0 or HTTP/2 request that names none.
fn request_authority(parts: &http::request::Parts) -> Result<Option<String>, GatewayError> {
    let invalid = |what: &str| GatewayError::InvalidArgument(format!("invalid authority: {what}"));
    let hosts = parts.headers.get_all(header::HOST);
    let mut iter = hosts.iter();
    let first = iter.next();
    if iter.next().is_some() {
        return Err(invalid("more than one Host header"));
    }
    let raw: &[u8] = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => match first {
            Some(h) => h.as_bytes(),
            None if parts.version == http::Version::HTTP_11 => {
                return Err(invalid("an HTTP/1.1 request needs a Host header"));
            }
            None => return Ok(None),
        },
    };
    normalize_authority(raw)
        .map(Some)
        .ok_or_else(|| invalid("it must be host[:port]"))
}

/// `host[:port]` lowercased, where host is a DNS-style name (letters, digits, `-`, `.`, `_`,
/// `~`) or a bracketed IPv6 address and port is at most 65535. `None` for anything else:
/// userinfo, a path, percent-escapes, spaces, control bytes.
pub fn normalize_authority(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > 261 {
        return None;
    }
    // The common name or IPv4 form is checked byte by byte (no UTF-8 decoding, no char
    // searcher); only a bracketed IPv6 address is parsed as text.
    let (host, port) = if raw[0] == b'[' {
        let s = std::str::from_utf8(raw).ok()?;
        let (v6, after) = s[1..].split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.as_bytes()),
        };
        (&raw[..v6.len() + 2], port)
    } else {
        let (host, port) = match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if host.is_empty() || host.len() > 253 || !host.iter().all(ok) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None | Some(b"") => None,
        Some(p) => {
            if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            if n > 65535 {
                return None;
            }
            Some(p)
        }
    };
    // Every byte kept is ASCII (letters, digits, `-._~`, or an IPv6 address and its
    // brackets; the port's digits), so these checks take their ASCII fast path.
    let host = std::str::from_utf8(host).ok()?;
    let port = port.map(std::str::from_utf8).transpose().ok()?;
    let mut out = String::with_capacity(host.len() + port.map_or(0, |p| p.len() + 1));
    out.push_str(host);
    out.make_ascii_lowercase();
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    Some(out)
}

/// Removes hop-by-hop headers, including those the `Connection` header names. One pass over
/// the names finds them; most messages have none and nothing is allocated.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str()));
    if !found {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_uuid_shaped() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for (raw, want) in [
            ("Example.COM", Some("example.com")),
            ("a.b-c_d~e:8080", Some("a.b-c_d~e:8080")),
            ("x:", Some("x")),
            ("[::1]:443", Some("[::1]:443")),
            ("[FE80::1]", Some("[fe80::1]")),
            ("127.0.0.1:65535", Some("127.0.0.1:65535")),
        ] {
            assert_eq!(
                normalize_authority(raw.as_bytes()).as_deref(),
                want,
                "{raw}"
            );
        }
        for raw in [
            "",
            "a b",
            "%",
            "a%41",
            "a/b",
            "u@h",
            "h:65536",
            "h:1a",
            "h:123456",
            ":80",
            "[::1",
            "[zz]",
            "[::1]x",
            "a\tb",
            "h:80:80",
            "a?b",
            "a#b",
            "h\u{e9}",
            "h:\u{661}",
        ] {
            assert_eq!(normalize_authority(raw.as_bytes()), None, "{raw:?}");
        }
        for raw in [&b"h\xff"[..], b"h:8\xff", b"[::1]\xff"] {
            assert_eq!(normalize_authority(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
