#!/usr/bin/env python3
"""Floods and a measuring client for bench/abuse.sh (Python 3 standard library only).

  abuse.py zerowindow --port P [--sources 127.0.0.2-127.0.0.41] [--conns N] [--duration S]
      HTTP/2 by prior knowledge (h2c), SETTINGS_INITIAL_WINDOW_SIZE = 0, a few GET requests
      per connection (alternating between --paths), never a WINDOW_UPDATE: the responses'
      bodies can never be sent. SETTINGS and PING are acknowledged, so the connection looks
      alive. When the server closes the connection, the client reconnects.

  abuse.py trickle --port P [--sources ...] [--conns N] [--duration S]
      HTTP/1.1 POST heads with a large Content-Length, then one body byte every --interval
      seconds; reconnects when the server closes the connection.

  abuse.py client --port P [--source 127.0.0.100] [--duration S]
      The normal client: --concurrency workers, --rate requests per second in all, HTTP/1.1
      keep-alive GETs of --path; a fresh connection every --reqs-per-conn requests (0: only
      when the server closes one). Prints a JSON line: requests, 2xx, other statuses, errors,
      p50/p99 of the successful requests (ms, connect time included for a request that had to
      open its connection).

Every socket is bound to its source address before connect, so the server sees distinct
client addresses (all of 127.0.0.0/8 is local on Linux). The floods print a JSON line of
their own counts when they end.
"""

import argparse
import asyncio
import json
import random
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_str(s):
    b = s.encode()
    assert len(b) < 127
    return bytes([len(b)]) + b


def get_headers(authority, path):
    # :method GET (static 2), :scheme http (static 6); :path and :authority as literals
    # without indexing on their static names (4, 1). ":path /" is static 4 itself.
    block = b"\x82\x86"
    block += b"\x84" if path == "/" else b"\x04" + hpack_str(path)
    block += b"\x01" + hpack_str(authority)
    return block


def parse_sources(spec):
    """127.0.0.2-127.0.0.41 or a comma-separated list."""
    if "-" in spec:
        lo, hi = spec.split("-")
        base = lo.rsplit(".", 1)[0]
        a, b = int(lo.rsplit(".", 1)[1]), int(hi.rsplit(".", 1)[1])
        return [f"{base}.{i}" for i in range(a, b + 1)]
    return spec.split(",")


class Counts:
    def __init__(self):
        self.connects = 0
        self.connect_errors = 0
        self.open = 0  # connected and not yet closed
        self.held = 0  # the server answered on it (HTTP/2 SETTINGS) or (HTTP/1.1) it is open
        self.peak_held = 0
        self.server_closed = 0
        self.lifetimes = []
        self.responses = 0  # HTTP/2 response HEADERS received
        self.resets = 0  # RST_STREAM received
        self.goaways = 0
        self.statuses = {}
        self.bytes_sent = 0

    def hold(self, d):
        self.held += d
        self.peak_held = max(self.peak_held, self.held)

    def summary(self, mode, conns, sources):
        lt = sorted(self.lifetimes)
        med = lt[len(lt) // 2] if lt else None
        return {
            "mode": mode,
            "target_connections": conns * sources,
            "connects": self.connects,
            "connect_errors": self.connect_errors,
            "peak_held": self.peak_held,
            "held_at_end": self.held,
            "closed_by_server": self.server_closed,
            "median_lifetime_s": round(med, 1) if med is not None else None,
            "responses": self.responses,
            "resets": self.resets,
            "goaways": self.goaways,
            "statuses": self.statuses,
            "body_bytes_sent": self.bytes_sent,
        }


async def connect(host, port, src, timeout=10.0):
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(src, 0)), timeout
    )


async def zerowindow_conn(args, src, counts, stop):
    authority = f"{args.host}:{args.port}"
    paths = args.paths.split(",")
    await asyncio.sleep(random.uniform(0, args.ramp))
    while not stop.is_set():
        try:
            r, w = await connect(args.host, args.port, src)
        except (OSError, asyncio.TimeoutError):
            counts.connect_errors += 1
            await asyncio.sleep(args.reconnect_delay * random.uniform(0.5, 1.5))
            continue
        counts.connects += 1
        counts.open += 1
        born = time.monotonic()
        held = False
        try:
            out = PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0) + struct.pack(">HI", 0x2, 0))
            for i in range(args.streams):
                out += frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1,
                             get_headers(authority, paths[i % len(paths)]))
            w.write(out)
            await w.drain()
            while True:
                head = await r.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                payload = await r.readexactly(length) if length else b""
                if kind == SETTINGS and not flags & ACK:
                    if not held:
                        held = True
                        counts.hold(1)
                    w.write(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    w.write(frame(PING, ACK, 0, payload))
                elif kind == HEADERS:
                    counts.responses += 1
                elif kind == RST_STREAM:
                    counts.resets += 1
                elif kind == GOAWAY:
                    counts.goaways += 1
                    code = f"goaway {int.from_bytes(payload[4:8], 'big')}"
                    counts.statuses[code] = counts.statuses.get(code, 0) + 1
        except (OSError, asyncio.IncompleteReadError):
            counts.server_closed += 1
            counts.lifetimes.append(time.monotonic() - born)
        except asyncio.CancelledError:
            w.close()
            raise
        finally:
            counts.open -= 1
            if held:
                counts.hold(-1)
        w.close()
        await asyncio.sleep(args.reconnect_delay * random.uniform(0.5, 1.5))


async def trickle_conn(args, src, counts, stop):
    await asyncio.sleep(random.uniform(0, args.ramp))
    head = (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {args.content_length}\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            r, w = await connect(args.host, args.port, src)
        except (OSError, asyncio.TimeoutError):
            counts.connect_errors += 1
            await asyncio.sleep(args.reconnect_delay * random.uniform(0.5, 1.5))
            continue
        counts.connects += 1
        counts.open += 1
        counts.hold(1)
        born = time.monotonic()

        async def reader():
            # Whatever the server says (a 408, a 400), then its close.
            data = await r.read(4096)
            if data.startswith(b"HTTP/1.1 "):
                code = data[9:12].decode(errors="replace")
                counts.statuses[code] = counts.statuses.get(code, 0) + 1
            while data:
                data = await r.read(4096)

        async def writer():
            w.write(head)
            await w.drain()
            sent = 0
            while sent < args.content_length:
                await asyncio.sleep(args.interval * random.uniform(0.8, 1.2))
                w.write(b"x")
                await w.drain()
                sent += 1
                counts.bytes_sent += 1
            await asyncio.Event().wait()  # the whole body is out (never, in practice)

        tasks = [asyncio.ensure_future(reader()), asyncio.ensure_future(writer())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                t.exception()  # retrieved: a reset is a close like any other
            counts.server_closed += 1
            counts.lifetimes.append(time.monotonic() - born)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            w.close()
            raise
        finally:
            counts.open -= 1
            counts.hold(-1)
        w.close()
        await asyncio.sleep(args.reconnect_delay * random.uniform(0.5, 1.5))


async def flood(args, conn_fn):
    sources = parse_sources(args.sources)
    counts = Counts()
    stop = asyncio.Event()
    tasks = [
        asyncio.ensure_future(conn_fn(args, src, counts, stop))
        for src in sources
        for _ in range(args.conns)
    ]
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline:
        await asyncio.sleep(min(args.report, max(deadline - time.monotonic(), 0.01)))
        if args.verbose:
            print(f"{args.mode}: open {counts.open} held {counts.held} connects {counts.connects} "
                  f"errors {counts.connect_errors} closed {counts.server_closed}", file=sys.stderr)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts.summary(args.mode, args.conns, len(sources))), flush=True)


# --- the normal client -----------------------------------------------------------------

class Http1:
    def __init__(self, r, w):
        self.r, self.w = r, w

    async def get(self, host, path):
        self.w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: abuse-client\r\n\r\n".encode())
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.r.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.r.readexactly(size + 2)
                if size == 0:
                    break  # no trailers from these servers
        elif "content-length" in headers:
            await self.r.readexactly(int(headers["content-length"]))
        keep = headers.get("connection", "").lower() != "close"
        return status, keep


async def client(args):
    host = f"{args.host}:{args.port}"
    interval = args.concurrency / args.rate
    ok, other, errors = [], {}, {}
    stop_at = time.monotonic() + args.duration

    async def worker(i):
        conn, used = None, 0
        next_at = time.monotonic() + random.uniform(0, interval)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - interval)
            t0 = time.monotonic()
            try:
                if conn is None:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection(args.host, args.port, local_addr=(args.source, 0)),
                        args.timeout)
                    conn, used = Http1(r, w), 0
                status, keep = await asyncio.wait_for(conn.get(host, args.path), args.timeout - (time.monotonic() - t0))
                used += 1
                ms = (time.monotonic() - t0) * 1000
                if 200 <= status < 300:
                    ok.append(ms)
                else:
                    other[status] = other.get(status, 0) + 1
                if not keep or (args.reqs_per_conn and used >= args.reqs_per_conn):
                    conn.w.close()
                    conn = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                name = "timeout" if isinstance(e, asyncio.TimeoutError) else type(e).__name__
                errors[name] = errors.get(name, 0) + 1
                if conn is not None:
                    conn.w.close()
                    conn = None
        if conn is not None:
            conn.w.close()

    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    total = len(ok) + sum(other.values()) + sum(errors.values())
    lat = sorted(ok)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

    print(json.dumps({
        "requests": total,
        "ok": len(ok),
        "success_pct": round(100.0 * len(ok) / total, 2) if total else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1], 2) if lat else None,
        "other_statuses": other,
        "errors": errors,
    }), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("zerowindow", "trickle", "client"):
        s = sub.add_parser(name)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--duration", type=float, default=20)
        if name == "client":
            s.add_argument("--source", default="127.0.0.100")
            s.add_argument("--path", default="/hello")
            s.add_argument("--concurrency", type=int, default=8)
            s.add_argument("--rate", type=float, default=200, help="requests per second, all workers")
            s.add_argument("--reqs-per-conn", type=int, default=0)
            s.add_argument("--timeout", type=float, default=5)
        else:
            s.add_argument("--sources", default="127.0.0.2-127.0.0.41")
            s.add_argument("--conns", type=int, default=256, help="connections per source address")
            s.add_argument("--ramp", type=float, default=3, help="connections start over this many seconds")
            s.add_argument("--reconnect-delay", type=float, default=0.5)
            s.add_argument("--report", type=float, default=5)
            s.add_argument("--verbose", action="store_true")
        if name == "zerowindow":
            s.add_argument("--paths", default="/nope,/hello")
            s.add_argument("--streams", type=int, default=4, help="requests per connection")
        if name == "trickle":
            s.add_argument("--path", default="/hello")
            s.add_argument("--content-length", type=int, default=1_000_000)
            s.add_argument("--interval", type=float, default=5, help="seconds between body bytes")
    args = p.parse_args()
    if args.mode == "client":
        asyncio.run(client(args))
    else:
        asyncio.run(flood(args, zerowindow_conn if args.mode == "zerowindow" else trickle_conn))


if __name__ == "__main__":
    main()
