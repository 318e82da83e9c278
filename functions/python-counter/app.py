"""python-counter: a stateful wasi:http/proxy function in Python, built with componentize-py
against the `wasmgate:functions/stateful` world.

Opens the wasi:keyvalue bucket named by the wasi:config value `bucket` (default `counters`),
increments its key `hits` and answers `hits from python: N`. A failure answers 500 with
`<operation>: <error>`, e.g. `increment: other: <message>`.
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, wasi_config_store, wasi_keyvalue_store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

DEFAULT_BUCKET = "counters"


def describe(error) -> str:
    """The text of a wasi:keyvalue or wasi:config error variant."""
    if isinstance(error, wasi_keyvalue_store.Error_NoSuchStore):
        return "no-such-store"
    if isinstance(error, wasi_keyvalue_store.Error_AccessDenied):
        return "access-denied"
    if isinstance(error, wasi_keyvalue_store.Error_Other):
        return f"other: {error.value}"
    if isinstance(error, wasi_config_store.Error_Upstream):
        return f"upstream: {error.value}"
    if isinstance(error, wasi_config_store.Error_Io):
        return f"io: {error.value}"
    return repr(error)


def count() -> tuple[int, str]:
    """Increments `hits`; returns the status and body to answer."""
    # Each call raises Err(<error variant>) when the host answers an error.
    op = "config"
    try:
        name = wasi_config_store.get("bucket")
        if name is None:
            name = DEFAULT_BUCKET
        op = "open"
        with wasi_keyvalue_store.open(name) as bucket:
            op = "increment"
            hits = atomics.increment(bucket, "hits", 1)
    except Err as e:
        return 500, f"{op}: {describe(e.value)}"
    return 200, f"hits from python: {hits}\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        status, text = count()
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(status)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
