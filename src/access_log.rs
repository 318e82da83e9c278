//! The access log: one line per request on the `wasmgate::access` target.
//!
//! It is written on every request, so it does not go through `tracing`'s formatters (a
//! field visitor, `serde_json` and a timestamp formatter per line, a tenth of a small
//! request's cost). [`install`] gives it the same non-blocking writer and format as the rest
//! of the log; a line is built in a reused per-thread buffer and handed to the writer whole.
//! The lines keep the shape `tracing` gives every other line (JSON: `timestamp`, `level`,
//! `fields`, `target`), and `RUST_LOG` filters the target as before. Without [`install`]
//! (the library used in-process), the line is an ordinary `tracing` event.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;

use crate::text::{push_int, push_ip};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

struct Sink {
    format: Format,
    writer: crate::log_writer::LogWriter,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines to `writer` in `format` from now on (once per process).
pub fn install(format: Format, writer: crate::log_writer::LogWriter) {
    let _ = SINK.set(Sink { format, writer });
}

/// One request, as the access log records it.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub peer: SocketAddr,
    /// `peer`'s IP address as text (formatted once per connection).
    pub peer_ip: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub trigger: Option<&'a str>,
    pub principal: Option<&'a str>,
    /// The qualifier a verified claim chose (`qualifier_by_claim`), when one did.
    pub qualifier: Option<&'a str>,
    pub status: u16,
    pub duration_us: u64,
    /// The response body's length, when known.
    pub bytes: Option<u64>,
    /// The request's trace id (hex), when tracing is on.
    pub trace_id: Option<&'a str>,
    /// The line's time (the request's end): the pipeline has it from the clock reads it
    /// makes anyway (its start's wall time plus its duration).
    pub at: std::time::SystemTime,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes `entry` if the `wasmgate::access` target is enabled at INFO.
pub fn record(entry: &Entry<'_>) {
    if !tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else {
        tracing::info!(
            target: "wasmgate::access",
            request_id = entry.request_id,
            peer = %entry.peer,
            method = %entry.method,
            path = entry.path,
            trigger = entry.trigger.unwrap_or("-"),
            principal = entry.principal.unwrap_or("-"),
            qualifier = entry.qualifier,
            status = entry.status,
            duration_us = entry.duration_us,
            bytes = entry.bytes,
            trace_id = entry.trace_id,
            "request"
        );
        return;
    };
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        match sink.format {
            Format::Json => json_line(&mut line, entry),
            Format::Text => text_line(&mut line, entry),
        }
        // Appended whole to the log's batch (lossy under pressure: past its bound lines are
        // dropped and counted rather than stalling requests).
        sink.writer.append(line.as_bytes());
    });
}

thread_local! {
    /// The last second formatted on this thread (`YYYY-MM-DDTHH:MM:SS`) and its Unix time.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as `tracing`'s formatter writes it; the date and
/// time are formatted once a second per thread, the microseconds every line.
fn timestamp(out: &mut String, at: std::time::SystemTime) {
    let now = chrono::DateTime::<chrono::Utc>::from(at);
    let secs = now.timestamp();
    let micros = now.timestamp_subsec_micros().min(999_999);
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            let _ = write!(out, "{}", now.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
            return;
        };
        if cached.0 != secs {
            cached.1.clear();
            let _ = write!(cached.1, "{}", now.format("%Y-%m-%dT%H:%M:%S"));
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    });
    // Six digits, zero-padded.
    let mut digits = *b".000000Z";
    let mut m = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or(".000000Z"));
}

/// Appends a socket address as `Display` writes it (`[v6]:port` for IPv6), its IPv4
/// address from `ip` (the address as text) when that is one.
fn push_peer(out: &mut String, peer: SocketAddr, ip: &str) {
    match peer {
        SocketAddr::V4(a) => {
            if ip.is_empty() {
                push_ip(out, std::net::IpAddr::V4(*a.ip()));
            } else {
                out.push_str(ip);
            }
            out.push(':');
            push_int(out, a.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{peer}");
        }
    }
}

fn json_line(out: &mut String, e: &Entry<'_>) {
    out.push_str("{\"timestamp\":\"");
    timestamp(out, e.at);
    out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":");
    json_str(out, e.request_id);
    out.push_str(",\"peer\":\"");
    push_peer(out, e.peer, e.peer_ip);
    out.push_str("\",\"method\":");
    json_str(out, e.method.as_str());
    out.push_str(",\"path\":");
    json_str(out, e.path);
    out.push_str(",\"trigger\":");
    json_str(out, e.trigger.unwrap_or("-"));
    out.push_str(",\"principal\":");
    json_str(out, e.principal.unwrap_or("-"));
    if let Some(q) = e.qualifier {
        out.push_str(",\"qualifier\":");
        json_str(out, q);
    }
    out.push_str(",\"status\":");
    push_int(out, e.status);
    out.push_str(",\"duration_us\":");
    push_int(out, e.duration_us);
    if let Some(b) = e.bytes {
        out.push_str(",\"bytes\":");
        push_int(out, b);
    }
    if let Some(t) = e.trace_id {
        // Lowercase hex: nothing to escape.
        out.push_str(",\"trace_id\":\"");
        out.push_str(t);
        out.push('"');
    }
    out.push_str("},\"target\":\"wasmgate::access\"}\n");
}

fn text_line(out: &mut String, e: &Entry<'_>) {
    timestamp(out, e.at);
    let _ = write!(
        out,
        "  INFO wasmgate::access: request request_id={} peer={} method={} path={:?} trigger={} principal={:?} status={} duration_us={}",
        e.request_id,
        e.peer,
        e.method,
        e.path,
        e.trigger.unwrap_or("-"),
        e.principal.unwrap_or("-"),
        e.status,
        e.duration_us
    );
    if let Some(q) = e.qualifier {
        let _ = write!(out, " qualifier={q:?}");
    }
    if let Some(b) = e.bytes {
        let _ = write!(out, " bytes={b}");
    }
    if let Some(t) = e.trace_id {
        let _ = write!(out, " trace_id={t}");
    }
    out.push('\n');
}

/// `s` as a JSON string literal. Scanned as bytes: only `"`, `\\` and control characters
/// are escaped, and every byte of a multi-byte character is at least 0x80. Eight bytes at a
/// time while none of them needs escaping (most lines need none), then byte by byte.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes[i..].first_chunk::<8>()
            && !may_need_escape(u64::from_le_bytes(*word))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes of `w` may be `"`, `\\` or below 0x20. Never false when
/// one is; true may also come from a byte next to one that is (the caller then looks at each
/// byte).
fn may_need_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `v` is zero (or below `n`): subtracting borrows into its high bit, which a
    // byte of `v` at 0x80 or above would have set itself (masked out by `!v`).
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGHS;
    (below(w, 0x20)
        | below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1))
        != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a http::Method, principal: Option<&'a str>) -> Entry<'a> {
        Entry {
            request_id: "0f8e-1",
            peer: "127.0.0.1:4000".parse().unwrap(),
            peer_ip: "127.0.0.1",
            method,
            path: "/a\"b",
            trigger: Some("hello"),
            principal,
            qualifier: None,
            status: 200,
            duration_us: 81,
            bytes: Some(20),
            trace_id: None,
            at: std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_600_267_537_366),
        }
    }

    #[test]
    fn json_lines_parse_and_keep_the_tracing_shape() {
        let m = http::Method::GET;
        let mut line = String::new();
        json_line(&mut line, &entry(&m, Some("sub:a\"\\\n\u{1}é")));
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "wasmgate::access");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["request_id"], "0f8e-1");
        assert_eq!(f["peer"], "127.0.0.1:4000");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/a\"b");
        assert_eq!(f["trigger"], "hello");
        assert_eq!(f["principal"], "sub:a\"\\\n\u{1}é");
        assert_eq!(f["status"], 200);
        assert_eq!(f["duration_us"], 81);
        assert_eq!(f["bytes"], 20);
        // The entry's time, not the clock's.
        assert_eq!(v["timestamp"], "2026-12-06T23:37:47.537366Z");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them_wherever_the_byte_falls() {
        // Every byte that needs escaping, and some that do not, at every offset of strings
        // long enough to be scanned a word at a time.
        let specials = [
            '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é', ' ', '!', '#', '[', ']',
        ];
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 31] {
            for at in 0..len.max(1) {
                for c in specials {
                    let s: String = (0..len)
                        .map(|i| {
                            if i == at {
                                c
                            } else {
                                (b'a' + (i % 26) as u8) as char
                            }
                        })
                        .collect();
                    let mut out = String::new();
                    json_str(&mut out, &s);
                    assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
        let mut out = String::new();
        json_str(
            &mut out,
            "anonymous:127.0.0.1 \"quoted\" \\ and\ttabs, long enough\u{1}",
        );
        assert_eq!(
            out,
            serde_json::to_string("anonymous:127.0.0.1 \"quoted\" \\ and\ttabs, long enough\u{1}")
                .unwrap()
        );
    }

    #[test]
    fn addresses_and_numbers_are_written_as_display_writes_them() {
        for peer in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.9.100.1:80",
            "[::1]:8443",
            "[2001:db8::7]:1",
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut out = String::new();
            push_peer(&mut out, peer, "");
            assert_eq!(out, peer.to_string());
            // With the address a connection formatted once.
            let conn = crate::ConnInfo::new(peer, crate::config::Listener::Public, false);
            assert_eq!(conn.peer_ip(), peer.ip().to_string());
            out.clear();
            push_peer(&mut out, peer, conn.peer_ip());
            assert_eq!(out, peer.to_string());
            out.clear();
            push_ip(&mut out, peer.ip());
            assert_eq!(out, peer.ip().to_string());
        }
        for n in [0u64, 7, 10, 999_999, u64::MAX] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn text_lines_quote_what_a_client_controls() {
        let m = http::Method::POST;
        let mut line = String::new();
        text_line(&mut line, &entry(&m, None));
        assert!(
            line.contains("INFO wasmgate::access: request request_id=0f8e-1"),
            "{line}"
        );
        assert!(line.contains("path=\"/a\\\"b\""), "{line}");
        assert!(
            line.contains("principal=\"-\" status=200 duration_us=81 bytes=20\n"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn timestamps_match_the_formatters_and_follow_the_clock_across_seconds() {
        let mut seen = std::collections::BTreeSet::new();
        // Bounded: a few seconds at most, until three different seconds were formatted.
        for _ in 0..400 {
            let before = chrono::Utc::now();
            let mut ts = String::new();
            timestamp(&mut ts, std::time::SystemTime::now());
            let after = chrono::Utc::now();
            let parsed = chrono::DateTime::parse_from_rfc3339(&ts)
                .unwrap_or_else(|e| panic!("{ts}: {e}"))
                .with_timezone(&chrono::Utc);
            // Microseconds are truncated, as the formatters do.
            let (b, p, a) = (
                before.timestamp_micros(),
                parsed.timestamp_micros(),
                after.timestamp_micros(),
            );
            assert!(b <= p && p <= a, "{ts} not in [{before}, {after}]");
            assert_eq!(ts.len(), "2026-12-07T02:17:47.537366Z".len(), "{ts}");
            seen.insert(ts[..19].to_string());
            if seen.len() == 3 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the clock did not move across two seconds: {seen:?}");
    }
}
