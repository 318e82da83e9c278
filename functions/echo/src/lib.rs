//! `echo`: answers with a JSON description of the request it saw (method, path, headers, body),
//! its environment and a per-instance counter, so tests can check exactly what reached a guest.

use std::sync::atomic::{AtomicU64, Ordering};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Counts requests seen by this instance: with a fresh instance per request it is always 1.
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Echo;

wasi::http::proxy::export!(Echo);

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut data = Vec::new();
    let Ok(body) = request.consume() else {
        return data;
    };
    if let Ok(stream) = body.stream() {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            data.extend_from_slice(&chunk);
        }
    }
    let _ = IncomingBody::finish(body);
    data
}

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let count = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        let mut j = String::from("{");
        j.push_str("\"method\":");
        json_string(&mut j, &method_name(&request.method()));
        j.push_str(",\"path\":");
        json_string(&mut j, &request.path_with_query().unwrap_or_default());
        j.push_str(",\"authority\":");
        json_string(&mut j, &request.authority().unwrap_or_default());
        j.push_str(",\"headers\":[");
        for (i, (name, value)) in request.headers().entries().into_iter().enumerate() {
            if i > 0 {
                j.push(',');
            }
            j.push('[');
            json_string(&mut j, &name);
            j.push(',');
            json_string(&mut j, &String::from_utf8_lossy(&value));
            j.push(']');
        }
        j.push_str("],\"env\":{");
        for (i, (k, v)) in std::env::vars().enumerate() {
            if i > 0 {
                j.push(',');
            }
            json_string(&mut j, &k);
            j.push(':');
            json_string(&mut j, &v);
        }
        let body = read_body(&request);
        j.push_str("},\"body\":");
        json_string(&mut j, &String::from_utf8_lossy(&body));
        j.push_str(&format!(
            ",\"body_len\":{},\"counter\":{count}}}",
            body.len()
        ));

        let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let out_body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = out_body.write().expect("stream is taken once");
        for chunk in j.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .expect("host accepts the body");
        }
        drop(stream);
        OutgoingBody::finish(out_body, None).expect("body finishes");
    }
}
