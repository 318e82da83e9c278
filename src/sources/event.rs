//! The event API (SPEC section 8.3): `POST {path}` on an event trigger, after the whole
//! HTTP pipeline (limits, routing, authentication, rate limit), publishes an event to every
//! function whose `events` match its type.
//!
//! Input: the JSON body `{"type", "data", "timestamp" (ms), "delay" (s), "isSynchronous",
//! "id"}`, a structured CloudEvent (`Content-Type: application/cloudevents+json`) or a
//! binary-mode one (`ce-type`, `ce-id`, `ce-source` headers, the body as data). Every bad
//! field is a 400 `InvalidArgument` that names it.
//!
//! Asynchronous (the default): one durable task per subscriber, with the id
//! `evt-<event id>=<function>`, answered 202 `{"id", "tasks"}`; an id published before is
//! 409. Synchronous: the subscribers run now; one subscriber's response is the answer,
//! several give `[{"function", "status", "body"}]`. Either way each function receives
//! POST `/` with a CloudEvents 1.0 structured body, and (async) an answer outside 2xx is a
//! failed attempt, retried.

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use crate::body::{ResponseBody, full};
use crate::dispatch::EnqueueOptions;
use crate::error::GatewayError;
use crate::invocation::{Invocation, Source, Target};
use crate::queue::QueueError;
use crate::{App, Trigger};

/// An event as published, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub data: Value,
    /// When it happened (`timestamp`, a CloudEvent's `time`, else now).
    pub time: DateTime<Utc>,
    /// When its deliveries are due.
    pub due: DateTime<Utc>,
    pub synchronous: bool,
    /// A CloudEvent's own `source`, kept as an extension of the delivered event.
    pub origin: Option<String>,
    /// A CloudEvent's trace context (the distributed tracing extension: `traceparent` and
    /// `tracestate`, or `ce-traceparent` in binary mode); a malformed one is ignored.
    pub trace: Option<crate::trace::Context>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidArgument(format!("field `{field}`: {why}"))
}

/// Event ids: `[A-Za-z0-9_.-]{1,64}` (they become part of task ids).
/// The task id of one event's delivery to one function: `evt-<event id>=<function>`. `=`
/// appears in neither an event id nor a function name, so two pairs never share an id
/// (with `-`, `a-b` + `c` and `a` + `b-c` did).
pub fn event_task_id(event: &str, function: &str) -> String {
    format!("evt-{event}={function}")
}

fn check_id(id: &str) -> Result<(), GatewayError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            format!("'{id}' must match [A-Za-z0-9_.-]{{1,64}}"),
        ))
    }
}

/// Parses and validates an event from a request's headers and body.
pub fn parse(
    headers: &http::HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    max_age_s: u64,
) -> Result<Event, GatewayError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/cloudevents+json") {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| invalid("body", format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("body", "a CloudEvent is a JSON object"))?;
        return from_cloudevent(obj, now);
    }
    if let Some(t) = headers.get("ce-type") {
        return from_binary(headers, t, &content_type, body, now);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| invalid("body", format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("body", "an event is a JSON object"))?;
    let event_type = match obj.get("type") {
        None | Some(Value::Null) => return Err(invalid("type", "is required")),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(invalid("type", "must be a non-empty string")),
    };
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let ms = v
                .as_i64()
                .filter(|ms| *ms >= 0)
                .ok_or_else(|| invalid("timestamp", "must be milliseconds since the epoch"))?;
            Some(
                Utc.timestamp_millis_opt(ms)
                    .single()
                    .ok_or_else(|| invalid("timestamp", "out of range"))?,
            )
        }
    };
    let delay = match obj.get("delay") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let s = v
                .as_f64()
                .ok_or_else(|| invalid("delay", "must be a number of seconds"))?;
            if s < 0.0 || !s.is_finite() {
                return Err(invalid("delay", format!("{s} is negative")));
            }
            // Checked before any arithmetic: a client number never overflows a date.
            if s > max_age_s as f64 {
                return Err(invalid(
                    "delay",
                    format!("{s} s is more than max_event_age_s ({max_age_s} s)"),
                ));
            }
            Some(s)
        }
    };
    let synchronous = match obj.get("isSynchronous") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("isSynchronous", "must be true or false")),
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_id(s)?;
            Some(s.clone())
        }
        Some(_) => return Err(invalid("id", "must be a string")),
    };
    if synchronous && delay.is_some() {
        return Err(invalid("delay", "not allowed with isSynchronous"));
    }
    if synchronous && timestamp.is_some() {
        return Err(invalid("timestamp", "not allowed with isSynchronous"));
    }
    let from = timestamp.unwrap_or(now);
    let due = chrono::Duration::try_milliseconds((delay.unwrap_or(0.0) * 1000.0) as i64)
        .and_then(|d| from.checked_add_signed(d))
        .ok_or_else(|| invalid("timestamp", "out of range"))?;
    if (due - now).num_seconds() > max_age_s as i64 {
        return Err(invalid(
            if delay.is_some() {
                "delay"
            } else {
                "timestamp"
            },
            format!("the event would be due more than max_event_age_s ({max_age_s} s) from now"),
        ));
    }
    Ok(Event {
        id: id.unwrap_or_else(new_id),
        event_type,
        data,
        time: timestamp.unwrap_or(now),
        due,
        synchronous,
        origin: None,
        trace: None,
    })
}

fn new_id() -> String {
    crate::invocation::new_request_id().to_string()
}

fn from_cloudevent(obj: &Map<String, Value>, now: DateTime<Utc>) -> Result<Event, GatewayError> {
    let text = |field: &str, required: bool| -> Result<Option<String>, GatewayError> {
        match obj.get(field) {
            None | Some(Value::Null) if required => Err(invalid(field, "is required")),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(invalid(field, "must be a non-empty string")),
        }
    };
    match text("specversion", true)?.as_deref() {
        Some("1.0") => {}
        Some(v) => return Err(invalid("specversion", format!("'{v}' is not 1.0"))),
        None => {}
    }
    let event_type = text("type", true)?.unwrap_or_default();
    let id = text("id", true)?.unwrap_or_default();
    check_id(&id)?;
    let origin = text("source", true)?;
    let time = match text("time", false)? {
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map_err(|e| invalid("time", format!("not RFC 3339: {e}")))?
            .with_timezone(&Utc),
        None => now,
    };
    let data = match (obj.get("data"), obj.get("data_base64")) {
        (Some(_), Some(_)) => return Err(invalid("data_base64", "give data or data_base64")),
        (Some(d), None) => d.clone(),
        (None, Some(Value::String(b))) => Value::String(b.clone()),
        (None, Some(_)) => return Err(invalid("data_base64", "must be a string")),
        (None, None) => Value::Null,
    };
    let trace = match (obj.get("traceparent"), obj.get("tracestate")) {
        (Some(Value::String(tp)), state) => crate::trace::Context::parse(
            tp.as_bytes(),
            state.and_then(Value::as_str).map(str::as_bytes),
        ),
        _ => None,
    };
    Ok(Event {
        id,
        event_type,
        data,
        time,
        due: now,
        synchronous: false,
        origin,
        trace,
    })
}

fn from_binary(
    headers: &http::HeaderMap,
    event_type: &HeaderValue,
    content_type: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Event, GatewayError> {
    let header = |name: &str| -> Result<Option<String>, GatewayError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| invalid(name, "is not valid text")),
        }
    };
    let event_type = event_type
        .to_str()
        .ok()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid("ce-type", "must be a non-empty string"))?
        .trim()
        .to_string();
    let id = header("ce-id")?.ok_or_else(|| invalid("ce-id", "is required"))?;
    check_id(&id)?;
    let origin = Some(header("ce-source")?.ok_or_else(|| invalid("ce-source", "is required"))?);
    let time = match header("ce-time")? {
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map_err(|e| invalid("ce-time", format!("not RFC 3339: {e}")))?
            .with_timezone(&Utc),
        None => now,
    };
    let data = if body.is_empty() {
        Value::Null
    } else if content_type.starts_with("application/json") || content_type.contains("+json") {
        serde_json::from_slice(body).map_err(|e| invalid("body", format!("not JSON: {e}")))?
    } else {
        match std::str::from_utf8(body) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => {
                use base64::Engine as _;
                Value::String(base64::engine::general_purpose::STANDARD.encode(body))
            }
        }
    };
    let trace = headers.get("ce-traceparent").and_then(|tp| {
        crate::trace::Context::parse(
            tp.as_bytes(),
            headers.get("ce-tracestate").map(HeaderValue::as_bytes),
        )
    });
    Ok(Event {
        id,
        event_type,
        data,
        time,
        due: now,
        synchronous: false,
        origin,
        trace,
    })
}

/// Puts a delivery in its trace: the event's own context when it carries one (linked to the
/// request that posted it), else the posting request's.
fn traced<B>(inv: &mut Invocation<B>, event: &Event, request: Option<&crate::trace::Context>) {
    match (&event.trace, request) {
        (Some(own), request) => {
            inv.trace = Some(own.clone());
            if let Some(r) = request {
                inv.request
                    .extensions_mut()
                    .insert(crate::trace::Link(r.clone()));
            }
        }
        (None, request) => inv.trace = request.cloned(),
    }
}

/// The node's id, the `source` of every event it delivers.
pub fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("wasmgate://{host}")
    })
}

/// The CloudEvents 1.0 structured body a subscriber receives.
pub fn cloudevent(event: &Event) -> Value {
    let mut ce = json!({
        "specversion": "1.0",
        "id": event.id,
        "type": event.event_type,
        "source": node_id(),
        "time": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": event.data,
    });
    if let Some(origin) = &event.origin {
        ce["originsource"] = Value::String(origin.clone());
    }
    ce
}

/// The functions subscribed to an event type.
pub fn subscribers(app: &App, trigger: &Trigger, event_type: &str) -> Vec<Target> {
    app.config
        .functions
        .iter()
        .filter(|f| {
            f.events
                .iter()
                .any(|p| super::topics::event_matches(p, event_type))
        })
        .map(|f| Target {
            function: f.name.clone(),
            qualifier: trigger.config.qualifier.clone(),
        })
        .collect()
}

fn delivery(
    trigger: &Trigger,
    target: Target,
    event: &Event,
    body: &Bytes,
) -> Result<Invocation<Bytes>, GatewayError> {
    let request = super::post_root(body.clone(), "application/cloudevents+json")?;
    Ok(Invocation {
        target,
        trigger: trigger.config.name.as_str().into(),
        source: Source::Event {
            event_id: event.id.clone(),
        },
        request_id: crate::invocation::new_request_id(),
        request,
        trace: None,
        prebuilt: crate::invocation::Prebuilt {
            trigger: Some(trigger.values.clone()),
            ..Default::default()
        },
    })
}

/// Publishes an event (the HTTP pipeline has authenticated and throttled the request).
pub async fn publish(
    app: &App,
    trigger: &Trigger,
    parts: &http::request::Parts,
    body: Bytes,
    request_id: &str,
    trace: Option<&crate::trace::Context>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let policy = app
        .dispatcher
        .policy(&trigger.config.name)
        .unwrap_or_default();
    let now = Utc::now();
    let event = parse(&parts.headers, &body, now, policy.max_event_age_s)?;
    let targets = subscribers(app, trigger, &event.event_type);
    let ce = Bytes::from(cloudevent(&event).to_string());
    if event.synchronous {
        return run_now(app, trigger, &event, targets, &ce, request_id, trace).await;
    }
    let delay_ms = (event.due - now).num_milliseconds().max(0);
    let mut tasks = Vec::with_capacity(targets.len());
    let mut existed = 0;
    for target in targets.iter().cloned() {
        let task_id = event_task_id(&event.id, &target.function);
        let mut inv = delivery(trigger, target, &event, &ce)?;
        traced(&mut inv, &event, trace);
        let options = EnqueueOptions {
            task_id: Some(task_id.clone()),
            delay_ms,
            callback_url: None,
        };
        match app.dispatcher.enqueue(inv, options).await {
            Ok(id) => tasks.push(id),
            // Published before: a retry after a partial failure completes the set; a
            // repeat of a whole event is a conflict.
            Err(GatewayError::Queue(QueueError::Exists(_))) => {
                existed += 1;
                tasks.push(task_id);
            }
            Err(e) => return Err(e),
        }
    }
    if existed > 0 && existed == targets.len() {
        return Err(QueueError::Exists(event.id.clone()).into());
    }
    tracing::info!(
        request_id,
        trigger = %trigger.config.name,
        event_id = %event.id,
        event_type = %event.event_type,
        tasks = tasks.len(),
        "event published"
    );
    let body = json!({ "id": event.id, "tasks": tasks }).to_string();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = StatusCode::ACCEPTED;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Largest subscriber response gathered into a synchronous answer with several subscribers.
const MAX_SYNC_BODY: usize = 1 << 20;

async fn run_now(
    app: &App,
    trigger: &Trigger,
    event: &Event,
    targets: Vec<Target>,
    ce: &Bytes,
    request_id: &str,
    ctx: Option<&crate::trace::Context>,
) -> Result<Response<ResponseBody>, GatewayError> {
    if targets.is_empty() {
        return Err(GatewayError::NoSubscriber(format!(
            "no function subscribes to event type '{}'",
            event.event_type
        )));
    }
    if targets.len() == 1 {
        let target = targets.into_iter().next().expect("one target");
        let mut inv = delivery(trigger, target, event, ce)?.map_body(http_body_util::Full::new);
        traced(&mut inv, event, ctx);
        let outcome = app.dispatcher.run(inv).await?;
        return Ok(outcome.response);
    }
    let names: Vec<String> = targets.iter().map(|t| t.function.clone()).collect();
    let runs = targets.into_iter().map(|target| async move {
        let function = target.function.clone();
        let mut inv = delivery(trigger, target, event, ce)?.map_body(http_body_util::Full::new);
        traced(&mut inv, event, ctx);
        let outcome = app.dispatcher.run(inv).await?;
        let (parts, body) = outcome.response.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_SYNC_BODY)
            .collect()
            .await
            .map_err(|e| {
                crate::runtime::RuntimeError::BadResponse(format!(
                    "reading the response of '{function}' failed: {e}"
                ))
            })?
            .to_bytes();
        let body = serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok::<Value, GatewayError>(json!({
            "function": function,
            "status": parts.status.as_u16(),
            "body": body,
        }))
    });
    let results = futures::future::join_all(runs).await;
    let answers: Vec<Value> = results
        .into_iter()
        .zip(names)
        .map(|(r, function)| match r {
            Ok(v) => v,
            // The public message only; a host fault's detail goes to the log.
            Err(e) => {
                if e.status() == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(
                        request_id,
                        function,
                        "a subscriber of a synchronous event: {e}"
                    );
                }
                json!({
                    "function": function,
                    "status": e.status().as_u16(),
                    "error": e.public_message(request_id),
                })
            }
        })
        .collect();
    let mut response = Response::new(full(Bytes::from(Value::Array(answers).to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    fn parse_json(body: &str) -> Result<Event, String> {
        parse(&http::HeaderMap::new(), body.as_bytes(), now(), 86_400).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_events_and_defaults() {
        let e = parse_json(r#"{"type":"order.created","data":{"n":1},"id":"o-1"}"#).unwrap();
        assert_eq!(e.event_type, "order.created");
        assert_eq!(e.data, json!({"n": 1}));
        assert_eq!(e.id, "o-1");
        assert_eq!(e.due, now());
        assert!(!e.synchronous);
        let e = parse_json(r#"{"type":"x","delay":30}"#).unwrap();
        assert_eq!((e.due - now()).num_seconds(), 30);
        let ts = now().timestamp_millis() + 60_000;
        let e = parse_json(&format!(r#"{{"type":"x","timestamp":{ts},"delay":10}}"#)).unwrap();
        assert_eq!((e.due - now()).num_seconds(), 70);
    }

    #[test]
    fn every_bad_field_is_named() {
        for (body, field) in [
            ("[1]", "body"),
            ("not json", "body"),
            (r#"{"data":1}"#, "type"),
            (r#"{"type":""}"#, "type"),
            (r#"{"type":"x","delay":-1}"#, "delay"),
            (r#"{"type":"x","delay":"soon"}"#, "delay"),
            (r#"{"type":"x","delay":100000}"#, "delay"),
            // Numbers that overflow a date are refused, never a panic.
            (r#"{"type":"x","delay":1e13}"#, "delay"),
            (r#"{"type":"x","delay":1.7e308}"#, "delay"),
            (
                r#"{"type":"x","timestamp":8210298412799999,"delay":1}"#,
                "timestamp",
            ),
            (r#"{"type":"x","timestamp":"now"}"#, "timestamp"),
            (r#"{"type":"x","isSynchronous":"yes"}"#, "isSynchronous"),
            (r#"{"type":"x","isSynchronous":true,"delay":1}"#, "delay"),
            (
                r#"{"type":"x","isSynchronous":true,"timestamp":1}"#,
                "timestamp",
            ),
            (r#"{"type":"x","id":"a b"}"#, "id"),
            (r#"{"type":"x","id":7}"#, "id"),
        ] {
            let err = parse_json(body).unwrap_err();
            assert!(err.contains(&format!("field `{field}`")), "{body}: {err}");
        }
    }

    #[test]
    fn cloudevents_structured_and_binary() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
        );
        let body = r#"{"specversion":"1.0","type":"sent-email","id":"ce-1","source":"/mailer","data":{"to":"a"}}"#;
        let e = parse(&h, body.as_bytes(), now(), 60).unwrap();
        assert_eq!(
            (e.event_type.as_str(), e.id.as_str()),
            ("sent-email", "ce-1")
        );
        assert_eq!(e.origin.as_deref(), Some("/mailer"));
        let missing = r#"{"specversion":"1.0","type":"x","source":"/s"}"#;
        let err = parse(&h, missing.as_bytes(), now(), 60).unwrap_err();
        assert!(err.to_string().contains("field `id`"), "{err}");

        let mut h = http::HeaderMap::new();
        h.insert("ce-type", HeaderValue::from_static("order.paid"));
        h.insert("ce-id", HeaderValue::from_static("b-1"));
        h.insert("ce-source", HeaderValue::from_static("/shop"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let e = parse(&h, br#"{"total":3}"#, now(), 60).unwrap();
        assert_eq!(e.data, json!({"total": 3}));
        h.remove("ce-source");
        let err = parse(&h, b"{}", now(), 60).unwrap_err();
        assert!(err.to_string().contains("field `ce-source`"), "{err}");
    }

    #[test]
    fn delivered_as_structured_cloudevent() {
        let e = parse_json(r#"{"type":"t","data":[1,2],"id":"i"}"#).unwrap();
        let ce = cloudevent(&e);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], "i");
        assert_eq!(ce["type"], "t");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["data"], json!([1, 2]));
        assert_eq!(ce["time"], "2026-11-24T12:00:00.000Z");
        assert!(ce["source"].as_str().unwrap().starts_with("wasmgate://"));
    }
}
