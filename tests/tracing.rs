//! Tracing with OpenTelemetry (SPEC section 9), against the real binary: a collector
//! stand-in receives what the gateway exports over OTLP/HTTP and decodes it with the
//! `opentelemetry-proto` crate's types (not the gateway's own), then checks each span's
//! trace, parent, kind and attributes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Receiver, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CLIENT_SPAN}-01")
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// Everything the collector has received so far, and more as it comes.
struct Collector {
    receiver: Receiver,
    spans: Vec<Span>,
    /// The `service.name` of every export.
    services: Vec<String>,
}

impl Collector {
    fn start() -> Collector {
        Collector {
            receiver: Receiver::start(200),
            spans: Vec::new(),
            services: Vec::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.receiver.addr)
    }

    /// Reads exports (bounded) until `done` holds for the spans received; panics with what
    /// came when it does not.
    fn until(&mut self, what: &str, done: impl Fn(&[Span]) -> bool) -> &[Span] {
        for _ in 0..60 {
            if done(&self.spans) {
                return &self.spans;
            }
            let Some(export) = self.receiver.next(Duration::from_millis(500)) else {
                continue;
            };
            assert_eq!(export.path, "/v1/traces");
            assert_eq!(
                export.header("content-type"),
                Some("application/x-protobuf")
            );
            let request = ExportTraceServiceRequest::decode(export.body.as_slice())
                .expect("an OTLP ExportTraceServiceRequest");
            for rs in request.resource_spans {
                if let Some(r) = &rs.resource {
                    for kv in &r.attributes {
                        if kv.key == "service.name"
                            && let Some(Value::StringValue(s)) =
                                kv.value.as_ref().and_then(|v| v.value.as_ref())
                        {
                            self.services.push(s.clone());
                        }
                    }
                }
                for ss in rs.scope_spans {
                    self.spans.extend(ss.spans);
                }
            }
        }
        panic!("{what}: never came; spans: {:#?}", self.summary());
    }

    fn summary(&self) -> Vec<String> {
        self.spans
            .iter()
            .map(|s| {
                format!(
                    "{} trace={} span={} parent={}",
                    s.name,
                    hex::encode(&s.trace_id),
                    hex::encode(&s.span_id),
                    hex::encode(&s.parent_span_id)
                )
            })
            .collect()
    }
}

/// The spans of `trace` by name (each name once; a second one fails the test).
fn by_name(spans: &[Span], trace: &str) -> HashMap<String, Span> {
    let mut m = HashMap::new();
    for s in spans.iter().filter(|s| hex::encode(&s.trace_id) == trace) {
        assert!(
            m.insert(s.name.clone(), s.clone()).is_none(),
            "two '{}' spans in trace {trace}",
            s.name
        );
    }
    m
}

fn has(spans: &[Span], trace: &str, names: &[&str]) -> bool {
    let m: Vec<&str> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == trace)
        .map(|s| s.name.as_str())
        .collect();
    names.iter().all(|n| m.contains(n))
}

fn config(tracing: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "t"
data_dir = "data"

{tracing}

[[function]]
name = "echo"
wasm = "{{echo}}"
memory_mb = 16

[[function]]
name = "probe"
wasm = "{{probe}}"
memory_mb = 16
outbound_hosts = ["127.0.0.1"]

[[trigger]]
name = "echo"
function = "echo"

[[trigger]]
name = "probe"
function = "probe"

[[trigger]]
name = "guarded"
function = "echo"
auth = "bearer"
bearer = {{ tokens = [{{ name = "ci", token = "0123456789abcdef0123456789abcdef" }}] }}
"#
    )
}

async fn echo(s: &TestServer, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = reqwest::Client::new().get(s.url("/echo/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s.metrics("t").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trace_continues_through_the_run_span_to_an_outbound_call() {
    let mut collector = Collector::start();
    let upstream = Receiver::start(200);
    let s = TestServer::start(&config(&format!(
        "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"edge-7\"",
        collector.endpoint()
    )));
    let url = s.url(&format!("/probe/fetch?url={}", upstream.url("/up")));
    let resp = reqwest::Client::new()
        .get(url)
        .header("traceparent", traceparent(TRACE))
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-fc-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.text().await.unwrap(), "200");
    let up = upstream
        .next(Duration::from_secs(10))
        .expect("the upstream call");
    let sent = up.header("traceparent").expect("a traceparent upstream");
    assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent}");
    assert!(sent.ends_with("-01"), "{sent}");
    assert_eq!(up.header("tracestate"), Some("vendor=1"));

    let names = ["request", "admit", "run", "outbound"];
    let spans = collector.until("the request's four spans", |s| has(s, TRACE, &names));
    let m = by_name(spans, TRACE);
    let id = |n: &str| hex::encode(&m[n].span_id);
    let parent = |n: &str| hex::encode(&m[n].parent_span_id);
    // The client's span is the request's parent; the stages are the request's children;
    // the outbound call is the run's child, and the upstream was told so.
    assert_eq!(parent("request"), CLIENT_SPAN);
    // An anonymous trigger authenticates nobody: no span for that.
    assert!(!m.contains_key("authenticate"));
    for n in ["admit", "run"] {
        assert_eq!(parent(n), id("request"), "{n}");
    }
    assert_eq!(parent("outbound"), id("run"));
    assert_eq!(sent, format!("00-{TRACE}-{}-01", id("outbound")));
    assert_eq!(m["request"].kind, 2, "SERVER");
    // OTLP flags: sampled; the request's parent is remote (the client's), the run's is not.
    assert_eq!(m["request"].flags, 0x301);
    assert_eq!(m["run"].flags, 0x101);
    assert_eq!(m["outbound"].kind, 3, "CLIENT");
    assert_eq!(m["request"].trace_state, "vendor=1");
    let request = &m["request"];
    assert_eq!(
        attr(request, "wasmgate.request_id").as_deref(),
        Some(&*request_id)
    );
    assert_eq!(attr(request, "wasmgate.trigger").as_deref(), Some("probe"));
    assert_eq!(attr(request, "wasmgate.function").as_deref(), Some("probe"));
    assert_eq!(
        attr(request, "wasmgate.qualifier").as_deref(),
        Some("LATEST")
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&m["run"], "wasmgate.function").as_deref(),
        Some("probe")
    );
    assert_eq!(
        attr(&m["outbound"], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(m["request"].end_time_unix_nano >= m["run"].start_time_unix_nano);
    assert!(collector.services.iter().all(|s| s == "edge-7"));

    // The function receives a traceparent naming its run span.
    const OTHER: &str = "0af7651916cd43dd8448eb211c80319c";
    let seen = echo(&s, &[("traceparent", &traceparent(OTHER))]).await;
    let given = common::echoed_header(&seen, "traceparent").expect("a traceparent");
    let spans = collector.until("the echo's run span", |s| has(s, OTHER, &["run"]));
    let run = &by_name(spans, OTHER)["run"];
    assert_eq!(
        given,
        format!("00-{OTHER}-{}-01", hex::encode(&run.span_id))
    );
    // A trigger that authenticates has a span for it, naming the principal.
    const AUTHED: &str = "5555555555555555555555555555555a";
    let resp = reqwest::Client::new()
        .get(s.url("/guarded/"))
        .header("traceparent", traceparent(AUTHED))
        .bearer_auth("0123456789abcdef0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = collector.until("the authenticated request's spans", |s| {
        has(s, AUTHED, &["request", "authenticate", "run"])
    });
    let m = by_name(spans, AUTHED);
    assert_eq!(m["authenticate"].parent_span_id, m["request"].span_id);
    assert_eq!(
        attr(&m["authenticate"], "wasmgate.principal").as_deref(),
        Some("token:ci")
    );
    assert_eq!(
        attr(&m["request"], "wasmgate.principal").as_deref(),
        Some("token:ci")
    );
    // The principal's id, never its credential, in any span.
    let leaked: Vec<_> = m
        .values()
        .flat_map(|s| &s.attributes)
        .filter(|kv| format!("{:?}", kv.value).contains("0123456789abcdef"))
        .map(|kv| kv.key.clone())
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // Trace headers the client names in `Connection` are hop-by-hop: not continued.
    const HOP: &str = "66666666666666666666666666666666";
    let seen = echo(
        &s,
        &[
            ("traceparent", &traceparent(HOP)),
            ("connection", "traceparent"),
        ],
    )
    .await;
    let given = common::echoed_header(&seen, "traceparent").expect("a traceparent");
    assert!(!given.contains(HOP), "{given}");

    // The access log names the trace.
    assert!(
        s.wait_for_log(&format!("\"trace_id\":\"{OTHER}\"")),
        "{}",
        s.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_task_keeps_its_trace_across_a_restart() {
    let mut collector = Collector::start();
    let callbacks = Receiver::start(200);
    let template = config(&format!(
        "[tracing]\notlp_endpoint = \"{}\"",
        collector.endpoint()
    ))
    .replace(
        "name = \"echo\"\nfunction = \"echo\"\n",
        &format!(
            "name = \"echo\"\nfunction = \"echo\"\nasync = {{ on_success = \"{}\", callback_hosts = [\"127.0.0.1\"] }}\n",
            callbacks.url("/done")
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut a = TestServer::start_in(dir.path(), &template, &[]);
    let resp = reqwest::Client::new()
        .post(a.url("/echo/"))
        .header("traceparent", traceparent(TRACE))
        .header("x-fc-invocation-type", "Async")
        .header("x-fc-async-task-id", "traced")
        .header("x-fc-async-delay", "4")
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    collector.until("the submission's spans", |s| {
        has(s, TRACE, &["request", "enqueue"])
    });
    // Submitted, not run: the node goes down hard before the task is due.
    a.kill9();
    assert!(
        !has(&collector.spans, TRACE, &["attempt"]),
        "{:?}",
        collector.summary()
    );
    let _b = TestServer::start_in(dir.path(), &template, &[]);
    let cb = callbacks
        .next(Duration::from_secs(30))
        .expect("the success callback");
    let spans = collector.until("the task's spans after the restart", |s| {
        has(s, TRACE, &["attempt", "run", "callback"])
    });
    let m = by_name(spans, TRACE);
    let id = |n: &str| hex::encode(&m[n].span_id);
    let parent = |n: &str| hex::encode(&m[n].parent_span_id);
    assert_eq!(parent("request"), CLIENT_SPAN);
    assert_eq!(parent("enqueue"), id("request"));
    assert_eq!(parent("attempt"), id("enqueue"));
    assert_eq!(parent("run"), id("attempt"));
    assert_eq!(parent("callback"), id("enqueue"));
    assert_eq!(m["enqueue"].kind, 4, "PRODUCER");
    assert_eq!(m["attempt"].kind, 5, "CONSUMER");
    assert_eq!(m["callback"].kind, 3, "CLIENT");
    for n in ["enqueue", "attempt", "callback"] {
        assert_eq!(
            attr(&m[n], "wasmgate.task_id").as_deref(),
            Some("traced"),
            "{n}"
        );
    }
    assert_eq!(
        attr(&m["callback"], "http.response.status_code").as_deref(),
        Some("200")
    );
    // The webhook's host, never its URL (a webhook URL often carries its credential).
    assert_eq!(
        attr(&m["callback"], "server.address").as_deref(),
        Some("127.0.0.1")
    );
    let named_path: Vec<_> = m["callback"]
        .attributes
        .iter()
        .filter(|kv| format!("{:?}", kv.value).contains("/done"))
        .map(|kv| kv.key.clone())
        .collect();
    assert!(named_path.is_empty(), "{named_path:?}");
    // The callback's receiver continues the trace from the delivery's span.
    assert_eq!(
        cb.header("traceparent"),
        Some(format!("00-{TRACE}-{}-01", id("callback")).as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_collector_costs_requests_nothing_and_its_spans_are_counted_as_dropped() {
    let closed = common::free_port();
    let s = TestServer::start(&config(&format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{closed}\""
    )));
    for _ in 0..20 {
        let seen = echo(&s, &[]).await;
        assert!(common::echoed_header(&seen, "traceparent").is_some());
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = metric(&s, "wasmgate_trace_spans_dropped_total").await;
        if dropped >= 60.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three spans a request (request, admit, run: the trigger is anonymous), none exported.
    assert!(dropped >= 60.0, "dropped {dropped}");
    assert_eq!(metric(&s, "wasmgate_trace_spans_exported_total").await, 0.0);
    assert!(s.wait_for_log("exporting"), "{}", s.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_at_zero_exports_nothing_and_still_propagates() {
    let mut collector = Collector::start();
    let tracing = |ratio: &str| {
        format!(
            "[tracing]\notlp_endpoint = \"{}\"\nsample_ratio = {ratio}",
            collector.endpoint()
        )
    };
    let s = TestServer::start(&config(&tracing("0.0")));
    // A client's sampled trace goes on, not sampled: its id kept, a span id of ours.
    let seen = echo(&s, &[("traceparent", &traceparent(TRACE))]).await;
    let given = common::echoed_header(&seen, "traceparent").unwrap();
    assert!(given.starts_with(&format!("00-{TRACE}-")), "{given}");
    assert!(given.ends_with("-00"), "{given}");
    assert!(!given.contains(CLIENT_SPAN), "{given}");
    // Without one, a new trace starts, not sampled.
    let seen = echo(&s, &[]).await;
    let fresh = common::echoed_header(&seen, "traceparent").unwrap();
    assert!(fresh.ends_with("-00") && !fresh.contains(TRACE), "{fresh}");

    // The marker: sampling back at 1.0 (the same exporter and queue, in order), one
    // request; its spans are the first and only ones the collector ever gets.
    std::fs::write(
        s.dir.join("wasmgate.toml"),
        s.config_text(&config(&tracing("1.0"))),
    )
    .unwrap();
    let reload = reqwest::Client::new()
        .post(s.admin_url("/-/reload"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    const MARK: &str = "11111111111111111111111111111111";
    echo(&s, &[("traceparent", &traceparent(MARK))]).await;
    let spans = collector.until("the marker's spans", |s| has(s, MARK, &["request", "run"]));
    let others: Vec<_> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) != MARK)
        .map(|s| s.name.clone())
        .collect();
    assert!(others.is_empty(), "spans exported at ratio 0: {others:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tracing_the_trace_context_passes_through_unchanged() {
    let s = TestServer::start(&config(""));
    let tp = traceparent(TRACE);
    let seen = echo(&s, &[("traceparent", &tp), ("tracestate", "vendor=1")]).await;
    assert_eq!(common::echoed_header(&seen, "traceparent"), Some(tp));
    assert_eq!(
        common::echoed_header(&seen, "tracestate").as_deref(),
        Some("vendor=1")
    );
    let seen = echo(&s, &[]).await;
    assert_eq!(common::echoed_header(&seen, "traceparent"), None);
    assert!(s.wait_for_log("\"status\":200"));
    assert!(!s.stderr_text().contains("trace_id"), "{}", s.stderr_text());
}

/// Broker messages and cron ticks start at the queue: a NATS message's `traceparent` header
/// is continued (the enqueue span its child), a tick with none is the root of a new trace;
/// either way the attempt and the run follow in the same trace.
#[tokio::test(flavor = "multi_thread")]
async fn nats_messages_continue_their_trace_and_cron_ticks_start_one() {
    let broker = common::Broker::nats();
    let mut collector = Collector::start();
    let s = TestServer::start(
        &(config(&format!(
            "[tracing]\notlp_endpoint = \"{}\"",
            collector.endpoint()
        )) + &format!(
            r#"
[[trigger]]
name = "orders"
kind = "nats"
broker = "nats://127.0.0.1:{port}"
topics = ["orders.>"]
function = "echo"

[[trigger]]
name = "tick"
kind = "cron"
function = "echo"
schedule = "* * * * * *"
"#,
            port = broker.port
        )),
    );
    common::wait_source(&s, "orders", "running").await;
    let nats = async_nats::connect(format!("127.0.0.1:{}", broker.port))
        .await
        .expect("connect to nats-server");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE).as_str());
    let reply = nats
        .request_with_headers("orders.eu", headers, "o-1".into())
        .await
        .expect("the gateway answers a request");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 1, "{reply}");
    let spans = collector.until("the message's task spans", |s| {
        has(s, TRACE, &["enqueue", "attempt", "run"])
    });
    let m = by_name(spans, TRACE);
    let id = |n: &str| hex::encode(&m[n].span_id);
    let parent = |n: &str| hex::encode(&m[n].parent_span_id);
    assert_eq!(parent("enqueue"), CLIENT_SPAN);
    assert_eq!(parent("attempt"), id("enqueue"));
    assert_eq!(parent("run"), id("attempt"));
    assert_eq!(
        attr(&m["enqueue"], "wasmgate.trigger").as_deref(),
        Some("orders")
    );

    // A tick: its enqueue span is a root, and its attempt is in the same trace.
    let spans = collector.until("a tick's trace", |s| {
        s.iter().any(|e| {
            e.name == "enqueue"
                && e.parent_span_id.is_empty()
                && attr(e, "wasmgate.trigger").as_deref() == Some("tick")
                && s.iter().any(|a| {
                    a.name == "attempt" && a.trace_id == e.trace_id && a.parent_span_id == e.span_id
                })
        })
    });
    assert!(!spans.is_empty());
}

/// A CloudEvent that carries a trace context (the distributed tracing extension) is
/// delivered in its own trace, each delivery's enqueue span a child of the event's span and
/// linked to the request that posted it; a plain event's deliveries are in the request's.
#[tokio::test(flavor = "multi_thread")]
async fn an_events_deliveries_continue_its_cloudevent_trace_and_link_the_posting_request() {
    let mut collector = Collector::start();
    let s = TestServer::start(&format!(
        "{}{}",
        config(&format!(
            "[tracing]\notlp_endpoint = \"{}\"",
            collector.endpoint()
        ))
        .replace(
            "name = \"echo\"\nwasm = \"{echo}\"\n",
            "name = \"echo\"\nwasm = \"{echo}\"\nevents = [\"order.paid\"]\n"
        ),
        "\n[[trigger]]\nname = \"events\"\nkind = \"event\"\npath = \"/events\"\n"
    ));
    const EVENT_TRACE: &str = "22222222222222222222222222222222";
    const EVENT_SPAN: &str = "3333333333333333";
    let resp = reqwest::Client::new()
        .post(s.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .header("traceparent", traceparent(TRACE))
        .body(
            serde_json::json!({
                "specversion": "1.0", "type": "order.paid", "id": "e-1", "source": "/shop",
                "traceparent": format!("00-{EVENT_TRACE}-{EVENT_SPAN}-01"),
                "data": {"order": 7}
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let spans = collector.until("the event's spans", |s| {
        has(s, EVENT_TRACE, &["enqueue", "attempt", "run"]) && has(s, TRACE, &["request"])
    });
    let m = by_name(spans, EVENT_TRACE);
    let request = &by_name(spans, TRACE)["request"];
    assert_eq!(hex::encode(&m["enqueue"].parent_span_id), EVENT_SPAN);
    assert_eq!(m["enqueue"].links.len(), 1);
    assert_eq!(m["enqueue"].links[0].span_id, request.span_id);
    assert_eq!(m["enqueue"].links[0].trace_id, request.trace_id);
    assert_eq!(m["attempt"].parent_span_id, m["enqueue"].span_id);

    // A plain event: its delivery is in the posting request's trace.
    const PLAIN: &str = "44444444444444444444444444444444";
    let resp = reqwest::Client::new()
        .post(s.url("/events"))
        .header("traceparent", traceparent(PLAIN))
        .json(&serde_json::json!({"type": "order.paid", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let spans = collector.until("the plain event's spans", |s| {
        has(s, PLAIN, &["request", "enqueue", "attempt"])
    });
    let m = by_name(spans, PLAIN);
    assert_eq!(m["enqueue"].parent_span_id, m["request"].span_id);
    assert!(m["enqueue"].links.is_empty());
}
