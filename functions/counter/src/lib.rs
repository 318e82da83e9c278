//! `counter`: a stateful function on the standard `wasi:keyvalue@0.2.0-draft` (store, atomics,
//! batch) and `wasi:config@0.2.0-rc.1` (store) interfaces. Query parameters choose what it does
//! (values are percent-decoded):
//!
//! | query | does | answers |
//! |---|---|---|
//! | (no `op`) | `increment(bucket, "hits", 1)` | `hits: N\n` |
//! | `op=incr&key=K&delta=D` | `increment(bucket, K, D)`, D defaults to 1 | the new value |
//! | `op=get&key=K` | `get(K)` | the raw value, or 404 `not found` |
//! | `op=set&key=K` | `set(K, <request body>)` | `ok` |
//! | `op=delete&key=K` | `delete(K)` | `ok` |
//! | `op=exists&key=K` | `exists(K)` | `true` or `false` |
//! | `op=list&cursor=C` | one `list-keys` page, C optional | `cursor: <n>` or `cursor: none`, then one key per line |
//! | `op=get-many&keys=a,b` | `get-many` | per key a line `key=value`, or `key` when missing |
//! | `op=set-many` | `set-many` of the body's `key=value` lines | `ok` |
//! | `op=delete-many&keys=a,b` | `delete-many` | `ok` |
//! | `op=get-set&key=K` | one `get` of K, then one `set` of K to the number it held plus one (a read-modify-write: the benchmark op) | the new number |
//! | `op=config&key=K` | wasi:config `get(K)` | the value, or 404 `not found` |
//! | `op=config-all` | wasi:config `get-all` | `k=v` lines sorted by key |
//!
//! The bucket is `bucket=NAME`, else the wasi:config value `bucket`, else `counters`. Opening an
//! unknown bucket answers 404 `no-such-store`; any other keyvalue error answers 500
//! `<operation>: <error>` (`no-such-store`, `access-denied` or `other: <message>`), a wasi:config
//! error 500 `config: <error>` (`upstream: <message>` or `io: <message>`). Bad or missing
//! parameters answer 400. Every response is `text/plain`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

/// Bindings for the keyvalue and config imports only: wasi:http comes from the `wasi` crate.
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasmgate:counter;

            world imports {
                import wasi:keyvalue/store@0.2.0-draft;
                import wasi:keyvalue/atomics@0.2.0-draft;
                import wasi:keyvalue/batch@0.2.0-draft;
                import wasi:config/store@0.2.0-rc.1;
            }
        ",
        // The standard WIT, shared with the other functions.
        path: "../wit",
        // Generate every imported interface (none is mapped to another crate with `with`).
        generate_all,
    });
}

use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::store::{self, Bucket};
use bindings::wasi::keyvalue::{atomics, batch};

struct Counter;

wasi::http::proxy::export!(Counter);

/// The bucket opened when neither the query nor wasi:config names one.
const DEFAULT_BUCKET: &str = "counters";

/// A response: status and body.
type Reply = (u16, Vec<u8>);

fn reply(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    (status, body.into())
}

/// A failed keyvalue operation as a 500 reply, `<op>: <error>`.
fn kv_error(op: &str, e: store::Error) -> Reply {
    let text = match e {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(msg) => format!("other: {msg}"),
    };
    reply(500, format!("{op}: {text}"))
}

/// A failed wasi:config lookup as a 500 reply, `config: <error>`.
fn config_error(e: config::Error) -> Reply {
    let text = match e {
        config::Error::Upstream(msg) => format!("upstream: {msg}"),
        config::Error::Io(msg) => format!("io: {msg}"),
    };
    reply(500, format!("config: {text}"))
}

/// Decodes `%XX` escapes (an invalid escape is kept as it is); the result is read as UTF-8,
/// replacing invalid sequences.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's query parameters, decoded, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(path_with_query: &str) -> Self {
        let query = path_with_query.split_once('?').map_or("", |(_, q)| q);
        let pairs = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or a 400 reply naming it.
    fn require(&self, name: &str) -> Result<&str, Reply> {
        self.get(name)
            .ok_or_else(|| reply(400, format!("missing parameter: {name}")))
    }

    /// The comma-separated list in `name` (empty items dropped), or a 400 reply.
    fn list(&self, name: &str) -> Result<Vec<String>, Reply> {
        Ok(self
            .require(name)?
            .split(',')
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect())
    }

    /// The optional integer in `name`; a value that is not one is a 400 reply.
    fn number(&self, name: &str) -> Result<Option<u64>, Reply> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| reply(400, format!("bad {name}: {v}")))
            })
            .transpose()
    }
}

/// Reads the whole request body with blocking reads.
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, Reply> {
    let body_error = |what: String| reply(400, format!("body: {what}"));
    let body = request
        .consume()
        .map_err(|()| body_error("already consumed".into()))?;
    let stream = body.stream().map_err(|()| body_error("no stream".into()))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(body_error(e.to_debug_string()));
            }
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Ok(data)
}

/// Opens the bucket named by the query, by wasi:config or the default.
fn open_bucket(query: &Query) -> Result<Bucket, Reply> {
    let name = match query.get("bucket") {
        Some(name) => name.to_string(),
        None => config::get("bucket")
            .map_err(config_error)?
            .unwrap_or_else(|| DEFAULT_BUCKET.to_string()),
    };
    store::open(&name).map_err(|e| match e {
        store::Error::NoSuchStore => reply(404, "no-such-store"),
        e => kv_error("open", e),
    })
}

/// Handles one request; every failure is already a reply.
fn serve(request: &IncomingRequest, query: &Query) -> Result<Reply, Reply> {
    let op = query.get("op");
    // The wasi:config operations need no bucket.
    match op {
        Some("config") => {
            let key = query.require("key")?;
            return Ok(match config::get(key).map_err(config_error)? {
                Some(value) => reply(200, value),
                None => reply(404, "not found"),
            });
        }
        Some("config-all") => {
            let mut pairs = config::get_all().map_err(config_error)?;
            pairs.sort();
            let body: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            return Ok(reply(200, body));
        }
        _ => {}
    }

    let bucket = open_bucket(query)?;
    match op {
        None => {
            let n = atomics::increment(&bucket, "hits", 1).map_err(|e| kv_error("increment", e))?;
            Ok(reply(200, format!("hits: {n}\n")))
        }
        Some("incr") => {
            let key = query.require("key")?;
            let delta = query.number("delta")?.unwrap_or(1);
            let n =
                atomics::increment(&bucket, key, delta).map_err(|e| kv_error("increment", e))?;
            Ok(reply(200, n.to_string()))
        }
        Some("get") => {
            let key = query.require("key")?;
            Ok(match bucket.get(key).map_err(|e| kv_error("get", e))? {
                Some(value) => reply(200, value),
                None => reply(404, "not found"),
            })
        }
        Some("set") => {
            let key = query.require("key")?;
            let value = read_body(request)?;
            bucket.set(key, &value).map_err(|e| kv_error("set", e))?;
            Ok(reply(200, "ok"))
        }
        Some("delete") => {
            let key = query.require("key")?;
            bucket.delete(key).map_err(|e| kv_error("delete", e))?;
            Ok(reply(200, "ok"))
        }
        Some("exists") => {
            let key = query.require("key")?;
            let found = bucket.exists(key).map_err(|e| kv_error("exists", e))?;
            Ok(reply(200, found.to_string()))
        }
        Some("list") => {
            let cursor = query.number("cursor")?;
            let page = bucket
                .list_keys(cursor)
                .map_err(|e| kv_error("list-keys", e))?;
            let mut body = match page.cursor {
                Some(c) => format!("cursor: {c}\n"),
                None => "cursor: none\n".to_string(),
            };
            for key in page.keys {
                body.push_str(&key);
                body.push('\n');
            }
            Ok(reply(200, body))
        }
        Some("get-many") => {
            let keys = query.list("keys")?;
            let found = batch::get_many(&bucket, &keys).map_err(|e| kv_error("get-many", e))?;
            let mut body = String::new();
            for (i, key) in keys.iter().enumerate() {
                // The answer has one entry per requested key, `none` for a missing one.
                match found.get(i) {
                    Some(Some((k, v))) => {
                        body.push_str(&format!("{k}={}\n", String::from_utf8_lossy(v)))
                    }
                    _ => body.push_str(&format!("{key}\n")),
                }
            }
            Ok(reply(200, body))
        }
        Some("set-many") => {
            let data = read_body(request)?;
            let mut pairs = Vec::new();
            for (n, line) in data.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                let Some(eq) = line.iter().position(|&b| b == b'=') else {
                    return Err(reply(400, format!("set-many: line {} has no '='", n + 1)));
                };
                let key = String::from_utf8_lossy(&line[..eq]).into_owned();
                pairs.push((key, line[eq + 1..].to_vec()));
            }
            batch::set_many(&bucket, &pairs).map_err(|e| kv_error("set-many", e))?;
            Ok(reply(200, "ok"))
        }
        Some("delete-many") => {
            let keys = query.list("keys")?;
            batch::delete_many(&bucket, &keys).map_err(|e| kv_error("delete-many", e))?;
            Ok(reply(200, "ok"))
        }
        Some("get-set") => {
            // A read-modify-write, as a session update is: the value changes every time,
            // so every set is a real write.
            let key = query.require("key")?;
            let old = bucket.get(key).map_err(|e| kv_error("get", e))?;
            let n = old
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let next = (n + 1).to_string();
            bucket.set(key, next.as_bytes()).map_err(|e| kv_error("set", e))?;
            Ok(reply(200, next))
        }
        Some(other) => Err(reply(400, format!("unknown op: {other}"))),
    }
}

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = Query::parse(&request.path_with_query().unwrap_or_default());
        let (status, body) = serve(&request, &query).unwrap_or_else(|e| e);

        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        response
            .set_status_code(status)
            .expect("status code is valid");
        let outgoing = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().expect("stream is taken once");
        // blocking_write_and_flush writes at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .expect("host accepts the body");
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).expect("body finishes");
    }
}
