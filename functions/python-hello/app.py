"""python-hello: a wasi:http/proxy function in Python, built with componentize-py.

Answers every request with a greeting, the method and the path it saw.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        if isinstance(method, Method_Other):
            name = method.value
        else:
            name = type(method).__name__.removeprefix("Method_").upper()
        path = request.path_with_query() or "/"
        text = f"hello from python ({name} {path})\n".encode()
        response = OutgoingResponse(
            Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        )
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text)
        OutgoingBody.finish(body, None)
