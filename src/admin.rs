//! The admin listener (SPEC section 9): health and readiness probes, and the async task API.
//!
//! Only served on `server.admin_listen` (loopback by default), never on the public or
//! internal listener. Every route but `/healthz` and `/readyz` needs the admin bearer token
//! when one is configured (it must be, on a non-loopback address).

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::body::{ResponseBody, full};
use crate::error::{GatewayError, error_response};
use crate::pipeline::new_request_id;
use crate::queue::TaskState;
use crate::{App, Gateway};

fn json(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn authorized(app: &App, headers: &http::HeaderMap) -> bool {
    let Some(token) = &app.config.server.admin_token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests so the comparison is constant-time whatever the lengths.
    use sha2::{Digest, Sha256};
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(token.as_bytes());
    bool::from(a.ct_eq(&b))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// Serves one admin request.
pub async fn handle<B>(gateway: &std::sync::Arc<Gateway>, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request_id = new_request_id();
    let mut resp = match route(gateway, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e, &request_id),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-fc-request-id", v);
    }
    resp
}

async fn read_body<B>(body: B, limit: usize) -> Result<bytes::Bytes, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            GatewayError::EntityTooLarge(format!("cannot read the body (limit {limit} bytes): {e}"))
        })
}

async fn route<B>(
    gateway: &std::sync::Arc<Gateway>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let app = &*gateway.app();
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let path = req.uri().path().to_string();
    let path = path.as_str();
    let method = req.method().clone();
    let method = &method;
    match (method, path) {
        (&Method::GET, "/healthz") => {
            return Ok(json(StatusCode::OK, serde_json::json!({"status": "ok"})));
        }
        (&Method::GET, "/readyz") => {
            let ready = !app.is_draining();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let queue = app.dispatcher.queue();
            // A cluster queue that cannot reach NATS: async requests get 503 meanwhile,
            // sync ones are served, so it is named rather than failing readiness.
            let queue_problem = queue.and_then(|q| q.degraded());
            let mut degraded: Vec<String> = gateway
                .sources
                .snapshot()
                .into_iter()
                .filter(|(_, s)| s.state != crate::sources::Phase::Running)
                .map(|(name, _)| name)
                .collect();
            if queue_problem.is_some() {
                degraded.push("queue".into());
            }
            // jwt triggers whose keys come from a URL or an issuer: one with no usable set
            // (it answers 503 meanwhile), or whose last refresh failed, is named.
            let keys: Vec<_> = app
                .triggers
                .iter()
                .filter_map(|t| t.auth.remote_keys())
                .map(|k| k.status())
                .collect();
            for k in keys.iter().filter(|k| !k.ready || k.problem.is_some()) {
                degraded.push(k.trigger.clone());
            }
            // Without the token: states only. The reasons (a broker's error text, where a
            // source listens) are for the operator; a prober gets the public message.
            let full = authorized(app, req.headers());
            let queue_problem = match queue_problem {
                Some(_) if !full => Some("not available (details with the admin token)".into()),
                p => p,
            };
            let jwt_keys: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|k| {
                    let problem = match &k.problem {
                        Some(_) if !full => Some("details with the admin token".to_string()),
                        p => p.clone(),
                    };
                    (
                        k.trigger.clone(),
                        serde_json::json!({
                            "ready": k.ready,
                            "keys": k.keys,
                            "age_s": k.age_s.map(|a| a.floor()),
                            "problem": problem,
                        }),
                    )
                })
                .collect();
            let mut sources = gateway.sources.snapshot();
            if !full {
                for s in sources.values_mut() {
                    s.detail.clear();
                }
            }
            return Ok(json(
                status,
                serde_json::json!({
                    "ready": ready,
                    "draining": app.is_draining(),
                    "functions": app.config.functions.len(),
                    "in_flight": app.dispatcher.limits().in_flight(),
                    "queue_depth": queue.map(|q| q.depth()),
                    "queue": queue.map(|q| serde_json::json!({
                        "backend": q.backend(),
                        "problem": queue_problem,
                    })),
                    "services": gateway.supervisor.running(),
                    // Event sources and their state; a failed one does not stop the node
                    // serving HTTP, so it is named here rather than failing readiness.
                    "sources": sources,
                    "jwt_keys": jwt_keys,
                    "degraded": degraded,
                }),
            ));
        }
        _ => {}
    }
    if !authorized(app, req.headers()) {
        return Err(crate::auth::AuthError::Unauthorized {
            message: "a valid admin token is required".into(),
            www_authenticate: "Bearer realm=\"wasmgate-admin\"".into(),
        }
        .into());
    }
    let not_found = || GatewayError::TriggerNotFound(format!("no admin route for {method} {path}"));
    if method == Method::POST && path == "/-/reload" {
        let g = gateway.clone();
        return match tokio::task::spawn_blocking(move || g.reload()).await {
            Ok(Ok(())) => Ok(json(StatusCode::OK, serde_json::json!({"reloaded": true}))),
            Ok(Err(e)) => {
                tracing::error!("reload failed, the running configuration stays: {e}");
                Err(
                    crate::config::ConfigError(format!("the configuration was not reloaded: {e}"))
                        .into(),
                )
            }
            Err(e) => Err(GatewayError::Internal(format!("reload failed: {e}"))),
        };
    }
    if method == Method::GET && path == "/-/sources" {
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({ "sources": gateway.sources.snapshot() }),
        ));
    }
    if method == Method::GET && path == "/metrics" {
        crate::auth::jwks::update_gauges();
        app.dispatcher.runtime().stores().refresh_stats().await;
        let m = &crate::metrics::METRICS;
        m.in_flight.set(app.dispatcher.limits().in_flight() as i64);
        if let Some(q) = app.dispatcher.queue() {
            m.queue_depth.set(q.depth() as i64);
        }
        let mut r = Response::new(full(m.encode()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return Ok(r);
    }
    if let Some(rest) = path.strip_prefix("/-/functions") {
        return functions(app, method, rest, body).await;
    }
    if let Some(rest) = path.strip_prefix("/-/buckets") {
        return buckets(app, method, rest, req.uri().query(), body).await;
    }
    let Some(rest) = path.strip_prefix("/-/tasks") else {
        return Err(not_found());
    };
    let queue = app.dispatcher.queue().ok_or_else(|| {
        GatewayError::from(crate::queue::QueueError::NotFound(
            "(no trigger enables async invocation)".into(),
        ))
    })?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (&Method::GET, []) => {
            let state = match query_param(req.uri().query(), "state") {
                Some(s) => Some(TaskState::parse(&s).ok_or_else(|| {
                    GatewayError::InvalidArgument(format!("unknown task state '{s}'"))
                })?),
                None => None,
            };
            let limit = query_param(req.uri().query(), "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .min(1000);
            let (tasks, next) = queue
                .list(
                    query_param(req.uri().query(), "trigger"),
                    query_param(req.uri().query(), "function"),
                    state,
                    limit,
                    query_param(req.uri().query(), "after"),
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "tasks": tasks, "next": next }),
            ))
        }
        (&Method::GET, [id]) => {
            let trigger = query_param(req.uri().query(), "trigger");
            let task = queue.find(id, trigger.as_deref()).await?;
            Ok(json(
                StatusCode::OK,
                serde_json::to_value(task).unwrap_or_default(),
            ))
        }
        (&Method::POST, [id, "stop"]) => {
            let trigger = query_param(req.uri().query(), "trigger");
            let found = queue.find(id, trigger.as_deref()).await?;
            let task = queue
                .stop(&crate::queue::task_key(&found.trigger, &found.id))
                .await?;
            Ok(json(
                StatusCode::OK,
                serde_json::to_value(task).unwrap_or_default(),
            ))
        }
        _ => Err(not_found()),
    }
}

/// `/-/functions...`: deploy, list, describe, aliases.
/// `/-/buckets...` (SPEC section 5.1): what the buckets hold; keys read, written and
/// deleted by an operator. A key in the path is percent-encoded (it may hold `/`).
async fn buckets<B>(
    app: &App,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    body: B,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stores = app.dispatcher.runtime().stores();
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        if method != Method::GET {
            return Err(GatewayError::TriggerNotFound(format!(
                "no admin route for {method} /-/buckets"
            )));
        }
        stores.refresh_stats().await;
        let mut list = Vec::new();
        for b in stores.buckets() {
            list.push(serde_json::json!({
                "name": b.name(),
                "keys": b.stats().keys(),
                "bytes": b.stats().bytes(),
                "max_bytes": b.config.max_bytes,
                "max_value_bytes": b.config.max_value_bytes,
            }));
        }
        return Ok(json(StatusCode::OK, serde_json::json!({ "buckets": list })));
    }
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = stores.bucket(name).ok_or(crate::kv::KvError::NoSuchStore)?;
    let key = match rest {
        "keys" | "keys/" => None,
        r => match r.strip_prefix("keys/") {
            Some(k) => Some(
                percent_encoding::percent_decode_str(k)
                    .decode_utf8()
                    .map_err(|_| GatewayError::InvalidArgument("a key must be UTF-8".into()))?
                    .into_owned(),
            ),
            None => {
                return Err(GatewayError::TriggerNotFound(format!(
                    "no admin route for {method} /-/buckets/{name}/{rest}"
                )));
            }
        },
    };
    match (method, key) {
        (&Method::GET, None) => {
            let prefix = query_param(query, "prefix").unwrap_or_default();
            let cursor = match query_param(query, "cursor") {
                None => None,
                Some(c) => Some(c.parse::<u64>().map_err(|_| {
                    GatewayError::InvalidArgument(format!("cursor '{c}' is not one this API gave"))
                })?),
            };
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(crate::kv::PAGE_KEYS);
            let page = bucket.list(&prefix, cursor, limit).await?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "keys": page.keys, "cursor": page.cursor }),
            ))
        }
        (&Method::GET, Some(key)) => {
            let value = bucket.get(&key).await?.ok_or_else(|| {
                GatewayError::KeyNotFound(format!("bucket '{name}' has no key '{key}'"))
            })?;
            let mut r = Response::new(full(value));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            Ok(r)
        }
        (&Method::PUT, Some(key)) => {
            let limit = bucket.config.max_value_bytes as usize + 1;
            let value = read_body(body, limit).await.map_err(|_| {
                crate::kv::KvError::Quota(format!(
                    "the value is over bucket '{name}''s max_value_bytes ({})",
                    bucket.config.max_value_bytes
                ))
            })?;
            let bytes = value.len();
            bucket
                .write(
                    "admin_put",
                    vec![crate::kv::Write::Set(key.clone(), value.to_vec())],
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "bucket": name, "key": key, "bytes": bytes }),
            ))
        }
        (&Method::DELETE, Some(key)) => {
            bucket
                .write("admin_delete", vec![crate::kv::Write::Delete(key.clone())])
                .await?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "bucket": name, "deleted": key }),
            ))
        }
        _ => Err(GatewayError::TriggerNotFound(format!(
            "no admin route for {method} /-/buckets/{name}/{rest}"
        ))),
    }
}

async fn functions<B>(
    app: &App,
    method: &Method,
    rest: &str,
    body: B,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let registry = app
        .dispatcher
        .registry()
        .ok_or_else(|| GatewayError::Internal("the function registry is not open".into()))?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (&Method::GET, []) => Ok(json(
            StatusCode::OK,
            serde_json::json!({ "functions": registry.list() }),
        )),
        (&Method::GET, [name]) => registry
            .describe(name)
            .map(|v| json(StatusCode::OK, v))
            .ok_or_else(|| {
                GatewayError::FunctionNotFound(format!(
                    "function '{name}' has no deployed versions"
                ))
            }),
        (&Method::PUT, [name]) => {
            let bytes = read_body(body, crate::registry::MAX_COMPONENT_BYTES).await?;
            // Compiling takes a while: keep it off the other requests' threads.
            let info = tokio::task::block_in_place(|| {
                registry.deploy(&app.config, app.dispatcher.runtime(), name, &bytes)
            })?;
            Ok(json(
                StatusCode::OK,
                serde_json::json!({
                    "name": name,
                    "version": info.version,
                    "sha256": info.sha256,
                    "size": info.size,
                }),
            ))
        }
        (&Method::PUT, [name, "aliases", alias]) => {
            let bytes = read_body(body, 64 * 1024).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Additional {
                version: u32,
                weight: f64,
            }
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                version: u32,
                additional: Option<Additional>,
            }
            let b: Body = serde_json::from_slice(&bytes).map_err(|e| {
                GatewayError::InvalidArgument(format!(
                    "expected {{\"version\": N}} or {{\"version\": N, \"additional\": {{\"version\": M, \"weight\": W}}}}: {e}"
                ))
            })?;
            let alias = registry.set_alias(
                name,
                alias,
                crate::registry::Alias {
                    version: b.version,
                    additional: b.additional.map(|a| crate::registry::Additional {
                        version: a.version,
                        weight: a.weight,
                    }),
                },
            )?;
            Ok(json(
                StatusCode::OK,
                serde_json::to_value(alias).unwrap_or_default(),
            ))
        }
        _ => Err(GatewayError::TriggerNotFound(format!(
            "no admin route for {method} /-/functions{rest}"
        ))),
    }
}
