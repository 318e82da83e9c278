//! `probe`: a guest that misbehaves on request, for tests and benchmarks.
//!
//! | path | does |
//! |---|---|
//! | `/status/N` | answers status N with body `ok` (the benchmark route) |
//! | `/loop` | spins forever (the host's deadline must stop it) |
//! | `/trap` | executes `unreachable` |
//! | `/alloc` | allocates without bound until the memory cap stops it |
//! | `/sleep?ms=N` | logs `sleep start`, blocks on the monotonic clock for N ms, answers 200 |
//! | `/counter` | the number of requests this instance has seen (1 with fresh instances) |
//! | `/big-headers?n=N` | answers with N bytes of response headers |
//! | `/log?n=N` | writes N lines to stdout and stderr, then answers 200 |
//! | `/fetch?url=U` | makes an outbound wasi:http GET to U; answers `200 <status>` or `502 <error>` |
//! | `/no-response` | returns without ever setting a response |
//! | `/consume` | reads the request body, logging `consumed N` (bytes so far) after each chunk; answers the total |

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Probe;

wasi::http::proxy::export!(Probe);

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn respond(out: ResponseOutparam, status: u16, headers: Vec<(String, Vec<u8>)>, body: &[u8]) {
    let fields = Fields::from_list(&headers).expect("headers are valid");
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let out_body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = out_body.write().expect("stream is taken once");
    stream
        .blocking_write_and_flush(body)
        .expect("host accepts the body");
    drop(stream);
    OutgoingBody::finish(out_body, None).expect("body finishes");
}

fn fetch(url: &str) -> Result<u16, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err("url must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&scheme)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority))
        .map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(resp))) => Ok(resp.status()),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        _ => Err("no response".into()),
    }
}

impl Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let count = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        let pq = request.path_with_query().unwrap_or_default();
        let (path, query) = pq.split_once('?').unwrap_or((pq.as_str(), ""));
        let text = vec![("content-type".to_string(), b"text/plain".to_vec())];
        match path {
            p if p.starts_with("/status/") => {
                let status = p["/status/".len()..].parse().unwrap_or(200);
                respond(out, status, text, b"ok");
            }
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/trap" => {
                core::arch::wasm32::unreachable();
            }
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/sleep" => {
                let ms: u64 = query_param(query, "ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                let _ = writeln!(std::io::stderr(), "sleep start {ms} ms");
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, text, b"slept");
            }
            "/counter" => respond(out, 200, text, count.to_string().as_bytes()),
            "/big-headers" => {
                let n: usize = query_param(query, "n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000);
                let mut headers = text;
                let mut left = n;
                let mut i = 0;
                while left > 0 {
                    let len = left.min(1000);
                    headers.push((format!("x-big-{i}"), vec![b'a'; len]));
                    left -= len;
                    i += 1;
                }
                respond(out, 200, headers, b"big");
            }
            "/log" => {
                let n: usize = query_param(query, "n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                for i in 0..n {
                    let _ = writeln!(std::io::stdout(), "probe stdout line {i}");
                    let _ = writeln!(std::io::stderr(), "probe stderr line {i}");
                }
                respond(out, 200, text, b"logged");
            }
            "/fetch" => {
                let url = query_param(query, "url").unwrap_or("");
                match fetch(url) {
                    Ok(status) => respond(out, 200, text, status.to_string().as_bytes()),
                    Err(e) => respond(out, 502, text, e.as_bytes()),
                }
            }
            "/no-response" => drop(out),
            "/consume" => {
                let mut total = 0usize;
                if let Ok(body) = request.consume()
                    && let Ok(stream) = body.stream()
                {
                    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                        total += chunk.len();
                        let _ = writeln!(std::io::stderr(), "consumed {total}");
                    }
                }
                respond(out, 200, text, total.to_string().as_bytes());
            }
            // Any other path: 200, or the status in the PROBE_STATUS environment variable (a
            // subscriber that always answers, say, 404).
            _ => {
                // PROBE_TRAP: a subscriber whose every delivery traps.
                if std::env::var("PROBE_TRAP").is_ok() {
                    core::arch::wasm32::unreachable();
                }
                let status = std::env::var("PROBE_STATUS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(200);
                respond(out, status, text, b"probe")
            }
        }
    }
}
