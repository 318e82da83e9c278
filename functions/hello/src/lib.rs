//! `hello`: the smallest useful function. Answers `200 hello from wasmgate` (or `$GREETING`).

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasi::http::proxy::export!(Hello);

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello from wasmgate".into());
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        stream
            .blocking_write_and_flush(format!("{greeting}\n").as_bytes())
            .expect("host accepts the body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("body finishes");
    }
}
