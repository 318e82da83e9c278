//! `unknown-import`: a wasi:http/proxy function that also imports `example:missing/thing`, an
//! interface no host provides. A host must refuse to load it, naming that import.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Bindings for the one extra import; wasi:http comes from the `wasi` crate.
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package example:missing;

            interface thing {
                ping: func();
            }

            world imports {
                import thing;
            }
        ",
    });
}

struct UnknownImport;

wasi::http::proxy::export!(UnknownImport);

impl Guest for UnknownImport {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        // Calling the import keeps it in the component.
        bindings::example::missing::thing::ping();
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        stream
            .blocking_write_and_flush(b"pong\n")
            .expect("host accepts the body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("body finishes");
    }
}
