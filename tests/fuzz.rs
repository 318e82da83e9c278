//! Property-based fuzzing of every parser that reads bytes from the network (or the config
//! file): arbitrary input never panics. Each parser gets arbitrary bytes or strings, and a
//! structured generator that starts from a valid input (a correctly signed request, a signed
//! JWT, a valid cron expression, the example config) and mutates it, so the deeper code is
//! reached too.
//!
//! The default run is short (one to four thousand cases per property, about a second in all)
//! and reproducible (a fixed seed; `FUZZ_SEED=n` picks another). `FUZZ_SECONDS=60` makes each
//! property run for at least that long, batch after batch with fresh seeds:
//!
//! ```text
//! FUZZ_SECONDS=60 cargo test --test fuzz -- --test-threads=1 --nocapture
//! ```
//!
//! Every property prints its number of cases, how many inputs the parser accepted, and its
//! slowest case. A panic is shrunk to a minimal input, which is reported with the panic's
//! message and source location. Inputs that once failed are run first, every time.
//!
//! Beyond "never panics", a few cheap invariants are checked where a wrong answer would hurt:
//! a normalised authority is a fixed point of the normaliser, and a cron trigger's next tick
//! is strictly after the time it is asked from (and, for every-minute and every-second
//! schedules, exactly the next whole minute or second, whatever the time zone does).

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{
    STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD, URL_SAFE_NO_PAD as B64URL,
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestError, TestRunner,
};
use serde_json::Value;
use sha2::Sha256;

use wasmgate::auth::basic::BasicAuth;
use wasmgate::auth::bearer::BearerAuth;
use wasmgate::auth::signature::{
    SignatureAuth, SignedRequest, acs3_canonical_request, acs3_string_to_sign, hmac_hex,
};
use wasmgate::auth::{AuthRequest, Authenticator, TriggerAuth};
use wasmgate::config::kinds::parse_schedule;
use wasmgate::config::{Config, CronConfig, RouteTemplate, TopicMatch};
use wasmgate::router::{Router, normalize_path, strip_prefix};
use wasmgate::sources::{cron, event, topics};

// ---------------------------------------------------------------------------------------
// The runner: a fixed number of cases by default, or batches until FUZZ_SECONDS have passed.
// ---------------------------------------------------------------------------------------

thread_local! {
    /// Set while a property runs: panics are expected there and recorded, not printed.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
    /// The message and location of the last panic recorded on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if RECORDING.with(Cell::get) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".into());
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message} (at {at})")));
            } else {
                previous(info);
            }
        }));
    });
}

/// How long each property runs when `FUZZ_SECONDS` is set.
fn fuzz_seconds() -> Option<f64> {
    std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
}

/// The seed of the default run, so that `cargo test` is reproducible; `FUZZ_SEED` sets
/// another, and a timed run (`FUZZ_SECONDS`) takes a fresh one for every batch.
fn seed(batch: u64) -> RngSeed {
    match std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(s) => RngSeed::Fixed(s.wrapping_add(batch)),
        None if fuzz_seconds().is_some() => RngSeed::Random,
        None => RngSeed::Fixed(0x5eed_f022),
    }
}

/// Runs `test` on values of `strategy`: `cases` of them, or batches of `cases` until
/// `FUZZ_SECONDS` have passed. `test` returns whether the parser accepted the input (for
/// the summary only). A panic fails the property with the shrunk input, the panic message
/// and the source line.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> bool) {
    fuzz_with(name, cases, strategy, Vec::new(), test)
}

/// [`fuzz`], after running `known` inputs (ones that once panicked) first.
fn fuzz_with<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    known: Vec<S::Value>,
    test: impl Fn(S::Value) -> bool,
) {
    install_panic_recorder();
    for input in known {
        let shown = format!("{input:?}");
        RECORDING.with(|r| r.set(true));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            test(input);
        }));
        RECORDING.with(|r| r.set(false));
        if result.is_err() {
            let panic = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_default();
            panic!("fuzz {name}: PANIC on a known input\n  input: {shown}\n  panic: {panic}");
        }
    }
    let deadline = fuzz_seconds().map(|s| Instant::now() + Duration::from_secs_f64(s));
    let started = Instant::now();
    let (count, accepted) = (Cell::new(0u64), Cell::new(0u64));
    let slowest: RefCell<(Duration, String)> = RefCell::new((Duration::ZERO, String::new()));
    let mut batches = 0u64;
    loop {
        batches += 1;
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            rng_seed: seed(batches),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..ProptestConfig::default()
        });
        RECORDING.with(|r| r.set(true));
        let result = runner.run(&strategy, |value| {
            count.set(count.get() + 1);
            let shown = format!("{value:?}");
            let t = Instant::now();
            let ok = test(value);
            let took = t.elapsed();
            if ok {
                accepted.set(accepted.get() + 1);
            }
            let mut s = slowest.borrow_mut();
            if took > s.0 {
                *s = (took, shown.chars().take(300).collect());
            }
            Ok::<(), TestCaseError>(())
        });
        RECORDING.with(|r| r.set(false));
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, minimal)) => {
                let shown = format!("{minimal:?}");
                // Run the minimal input once more to know where it panics.
                RECORDING.with(|r| r.set(true));
                LAST_PANIC.with(|p| p.borrow_mut().take());
                let rerun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    test(minimal);
                }));
                RECORDING.with(|r| r.set(false));
                let location = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .filter(|_| rerun.is_err())
                    .unwrap_or_else(|| reason.to_string());
                panic!(
                    "fuzz {name}: PANIC after {} cases\n  minimal input: {shown}\n  panic: {location}",
                    count.get()
                );
            }
            Err(e) => panic!("fuzz {name}: {e}"),
        }
        match deadline {
            Some(d) if Instant::now() < d => continue,
            _ => break,
        }
    }
    let (took, input) = slowest.into_inner();
    eprintln!(
        "fuzz {name}: {} cases ({} accepted) in {:.1} s, {batches} batch(es), 0 panics; slowest case {:.1} ms: {input}",
        count.get(),
        accepted.get(),
        started.elapsed().as_secs_f64(),
        took.as_secs_f64() * 1000.0,
    );
}

// ---------------------------------------------------------------------------------------
// Shared generators.
// ---------------------------------------------------------------------------------------

/// Number texts at the edges of every integer and float type, and some that are not numbers.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "31",
    "59",
    "60",
    "61",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e13",
    "1e308",
    "1.7976931348623157e308",
    "1e309",
    "-1e400",
    "5e-324",
    "1e-400",
    "0.5",
    "-0.0",
    "NaN",
    "inf",
    "-inf",
    "8210298412799999",
    "8210298412800000",
    "253402300799999",
    "-62135596800000",
    "99999999999999999999999999",
    "0x10",
    "1_000",
    "+5",
    "00",
    "1.",
    ".5",
];

/// A byte-level edit of a seed input.
#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Overwrite(usize, Vec<u8>),
    Repeat(usize, usize, usize),
    Truncate(usize),
}

/// Up to `max` edits whose inserted pieces come from `pieces`, `NUMBERS` or random bytes.
fn edits(pieces: &'static [&'static str], max: usize) -> BoxedStrategy<Vec<Edit>> {
    let piece = prop_oneof![
        4 => select(pieces).prop_map(|s| s.as_bytes().to_vec()),
        1 => select(NUMBERS).prop_map(|s| s.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 1..4),
    ]
    .boxed();
    let edit = prop_oneof![
        3 => (any::<usize>(), piece.clone()).prop_map(|(i, p)| Edit::Insert(i, p)),
        2 => (any::<usize>(), 1..16usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        2 => (any::<usize>(), piece).prop_map(|(i, p)| Edit::Overwrite(i, p)),
        1 => (any::<usize>(), 1..16usize, 1..32usize).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ];
    vec(edit, 0..=max).boxed()
}

fn apply(mut s: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| i % (len + 1);
        match e {
            Edit::Insert(i, p) => {
                let i = at(*i, s.len());
                s.splice(i..i, p.iter().copied());
            }
            Edit::Remove(i, n) => {
                let i = at(*i, s.len());
                let end = (i + n).min(s.len());
                s.drain(i..end);
            }
            Edit::Overwrite(i, p) => {
                let i = at(*i, s.len());
                for (k, b) in p.iter().enumerate() {
                    match s.get_mut(i + k) {
                        Some(slot) => *slot = *b,
                        None => s.push(*b),
                    }
                }
            }
            Edit::Repeat(i, n, k) => {
                let i = at(*i, s.len());
                let end = (i + n).min(s.len());
                let chunk = s[i..end].to_vec();
                for _ in 0..*k {
                    s.splice(end..end, chunk.iter().copied());
                }
            }
            Edit::Truncate(i) => {
                let i = at(*i, s.len());
                s.truncate(i);
            }
        }
    }
    s
}

fn apply_str(s: &str, e: &[Edit]) -> String {
    String::from_utf8_lossy(&apply(s.as_bytes().to_vec(), e)).into_owned()
}

/// Strings made of pieces a parser cares about, numbers, and random text.
fn soup(pieces: &'static [&'static str], max: usize) -> BoxedStrategy<String> {
    vec(
        prop_oneof![
            6 => select(pieces).prop_map(str::to_string),
            1 => select(NUMBERS).prop_map(str::to_string),
            1 => any::<char>().prop_map(String::from),
        ],
        0..=max,
    )
    .prop_map(|v| v.concat())
    .boxed()
}

/// Arbitrary text: any Unicode, or pieces of the format.
fn text(pieces: &'static [&'static str], max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        1 => any::<String>(),
        1 => vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        3 => soup(pieces, max),
    ]
    .boxed()
}

/// Header-value bytes: anything (most of it is not a valid header value and is dropped).
fn header_bytes(pieces: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..48),
        3 => soup(pieces, 12).prop_map(String::into_bytes),
    ]
    .boxed()
}

fn headers(pairs: &[(String, Vec<u8>)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// Integers at the edges, and near "now" (seconds).
fn edge_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0i64),
        Just(-1i64),
        (i64::MIN..i64::MIN + (1 << 40)),
        (i64::MAX - (1 << 40)..=i64::MAX),
        (-(1i64 << 40)..(1i64 << 40)),
        any::<i64>(),
        (NOW_S - 4000..NOW_S + 4000),
    ]
    .boxed()
}

const JSON_KEYS: &[&str] = &[
    "type", "data", "id", "exp", "nbf", "sub", "aud", "iss", "a", "", "\u{0}",
];
const JSON_STRINGS: &[&str] = &[
    "",
    " ",
    "x",
    "order.created",
    "wasmgate",
    "https://issuer.example",
    "a\nb",
    "\u{7f}",
    "\u{0}",
    "é",
    "\u{fffd}",
    "1e13",
];

/// Arbitrary JSON values with edge numbers and a little nesting.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        edge_i64().prop_map(Value::from),
        select(
            &[
                1e13,
                1e308,
                -1e308,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
                -0.0,
                9.3e18,
                -9.3e18,
                1.8446744073709552e19,
                2e53 + 1.0,
                8.2e15,
            ][..]
        )
        .prop_map(Value::from),
        select(JSON_STRINGS).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((select(JSON_KEYS), inner), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
    .boxed()
}

/// JSON text for a value: a serialised JSON value, or a raw number text (valid or not).
fn json_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string()),
        2 => select(NUMBERS).prop_map(str::to_string),
        1 => edge_i64().prop_map(|n| n.to_string()),
    ]
    .boxed()
}

/// 2026-01-01T00:00:00Z: "now" for every check that takes a clock.
const NOW_S: i64 = 1_767_225_600;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW_S, 0).unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---------------------------------------------------------------------------------------
// pipeline::normalize_authority
// ---------------------------------------------------------------------------------------

const AUTHORITY_PIECES: &[&str] = &[
    "a",
    "Z",
    "0",
    "9",
    "-",
    ".",
    "_",
    "~",
    ":",
    "[",
    "]",
    "::",
    "::1",
    "fe80::1%25eth0",
    "::ffff:1.2.3.4",
    "127.0.0.1",
    "example.COM",
    "@",
    "%",
    "%41",
    " ",
    "\t",
    "/",
    "?",
    "#",
    "080",
    "00000",
    "\u{fc}",
    "\u{130}",
    "\u{212a}",
    "xn--",
    "[::1]:",
    ":80",
    "localhost",
];

#[test]
fn normalize_authority_never_panics() {
    let input = prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        3 => soup(AUTHORITY_PIECES, 12).prop_map(String::into_bytes),
        // Long names around the length limits (253 for a name, 261 in all).
        1 => (select(&["a", "A.", "[", ":"][..]), 240..270usize, soup(AUTHORITY_PIECES, 3))
            .prop_map(|(p, n, tail)| format!("{}{tail}", p.repeat(n)).into_bytes()),
    ];
    fuzz("normalize_authority", 4096, input, |raw| {
        let Some(out) = wasmgate::pipeline::normalize_authority(&raw) else {
            return false;
        };
        // What comes out is normal: lowercase, no longer than what went in, and a fixed
        // point of the normaliser.
        assert!(!out.bytes().any(|b| b.is_ascii_uppercase()), "{out:?}");
        assert!(out.len() <= raw.len(), "{out:?}");
        assert_eq!(
            wasmgate::pipeline::normalize_authority(out.as_bytes()).as_deref(),
            Some(out.as_str()),
            "not idempotent"
        );
        true
    });
}

// ---------------------------------------------------------------------------------------
// auth::signature: the ACS3 and FC Authorization headers, and signed URLs.
// ---------------------------------------------------------------------------------------

const SIG_PIECES: &[&str] = &[
    "ACS3-HMAC-SHA256 ",
    "FC ",
    "Credential=",
    "SignedHeaders=",
    "Signature=",
    "AK1",
    "akid",
    "x-acs-date",
    "host",
    ";",
    ",",
    "=",
    ":",
    " ",
    "  ",
    "\t",
    "0123456789abcdef",
    "zz",
    "=",
    "==",
    "+/",
    "-_",
    "x-fc-signature",
    "x-fc-expires",
    "x-fc-access-key-id",
    "&",
    "%",
    "%2",
    "%zz",
    "%20",
    "%E4%BD%A0",
    "%FF",
    "+",
    "/",
    "..",
    "é",
];

const DATE_PIECES: &[&str] = &[
    "2026",
    "-01",
    "-13",
    "-02-29",
    "01",
    "T",
    "t",
    " ",
    "00:00:00",
    "23:59:60",
    "24:00:00",
    ".",
    "123456789",
    "99999999999999999999",
    "Z",
    "z",
    "+23:59",
    "-24:00",
    "+99:99",
    "+262143",
    "-262144",
    "9999",
    "0000",
    "Mon, ",
    "Thu, ",
    "01 Jan ",
    "31 Feb ",
    "GMT",
    "UT",
    "EST",
    "+0000",
    "-2359",
    "+9999",
    "20260101T000000Z",
];

const SIG_HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-acs-date",
    "date",
    "x-acs-content-sha256",
    "x-acs-security-token",
    "x-acs-x",
    "content-md5",
    "content-type",
    "host",
    "x-fc-trace-id",
    "x-fc-account-id",
];

/// A request as a signature check sees it.
#[derive(Clone, Debug)]
struct SigInput {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    window_s: u64,
    pass_credentials: bool,
}

const SECRET: &str = "s3cret";

fn signature_auth(window_s: u64) -> SignatureAuth {
    SignatureAuth::new(
        &[
            ("AK1".to_string(), SECRET.to_string()),
            ("akid".to_string(), "akSec".to_string()),
        ],
        window_s,
    )
}

/// Runs one signed request through the verifier directly (raw strings, whatever they are)
/// and, when it is a valid HTTP request, through the trigger's authenticator.
fn check_signature(input: SigInput) -> bool {
    let h = headers(&input.headers);
    let auth = signature_auth(input.window_s);
    let ok = auth
        .verify(
            &SignedRequest {
                method: &input.method,
                path: &input.path,
                query: input.query.as_deref(),
                headers: &h,
            },
            now(),
        )
        .is_ok();
    let target = match &input.query {
        Some(q) => format!("{}?{q}", input.path),
        None => input.path.clone(),
    };
    if let Ok(request) = http::Request::builder()
        .method(input.method.as_str())
        .uri(target.as_str())
        .body(())
    {
        let (mut parts, ()) = request.into_parts();
        parts.headers = h;
        let trigger = TriggerAuth {
            authenticator: Authenticator::Signature(auth),
            pass_credentials: input.pass_credentials,
        };
        let _ = futures::executor::block_on(trigger.authenticate(AuthRequest {
            parts: &mut parts,
            body: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            function_path: "/",
            now: now(),
        }));
    }
    ok
}

fn window() -> BoxedStrategy<u64> {
    prop_oneof![
        4 => Just(900u64),
        1 => select(&[0u64, 1, 86_400, i64::MAX as u64, u64::MAX][..]),
    ]
    .boxed()
}

#[test]
fn signature_arbitrary_requests_never_panic() {
    let header = (select(SIG_HEADER_NAMES).prop_map(str::to_string), {
        prop_oneof![
            header_bytes(SIG_PIECES),
            header_bytes(DATE_PIECES),
            vec(any::<u8>(), 0..16),
        ]
    });
    let input = (
        prop_oneof![
            select(&["GET", "POST", "", "get", "M\u{e9}"][..]).prop_map(str::to_string),
            any::<String>()
        ],
        text(SIG_PIECES, 10),
        proptest::option::of(text(SIG_PIECES, 16)),
        vec(header, 0..6),
        window(),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, query, headers, window_s, pass_credentials)| SigInput {
                method,
                path,
                query,
                headers,
                window_s,
                pass_credentials,
            },
        );
    fuzz("signature (arbitrary)", 2048, input, check_signature);
}

/// `x-acs-date` values: valid ones around now in each accepted format, edge dates, and
/// date-like soup.
fn acs_date() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (-1200i64..1200, 0..3u8, 0..1_000_000_000u32).prop_map(|(off, style, nanos)| {
            let t = DateTime::from_timestamp(NOW_S + off, 0).unwrap();
            match style {
                0 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                1 => format!("{}.{nanos:09}Z", t.format("%Y-%m-%dT%H:%M:%S")),
                _ => t.format("%Y%m%dT%H%M%SZ").to_string(),
            }
        }),
        1 => select(&[
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "2026-01-01T00:00:00+23:59",
            "2026-01-01T00:00:00-23:59",
            "2025-12-31T23:59:60Z",
            "2026-01-01T00:00:00.99999999999999999999Z",
            "+262143-12-31T23:59:59Z",
            "+2621431231T235959Z",
            "-2621440101T000000Z",
            "99991231T235959.999999999Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01t00:00:00z",
            "2026-01-01 00:00:00Z",
            "",
        ][..]).prop_map(str::to_string),
        1 => soup(DATE_PIECES, 8),
    ]
    .boxed()
}

/// `Date` values (RFC 2822) around now, at the edges, and soup.
fn http_date() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (-1200i64..1200).prop_map(|off| {
            DateTime::from_timestamp(NOW_S + off, 0)
                .unwrap()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string()
        }),
        1 => select(&[
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Fri, 31 Dec 9999 23:59:59 -2359",
            "Mon, 01 Jan 0000 00:00:00 +2359",
            "Thu, 01 Jan 2026 00:00:60 GMT",
            "01 Jan 26 00:00:00 EST",
            "Thu, 01 Jan 99999 00:00:00 GMT",
            "Thu, 1 Jan 2026 0:0:0 +9999",
            "",
        ][..]).prop_map(str::to_string),
        1 => soup(DATE_PIECES, 8),
    ]
    .boxed()
}

const PATH_PIECES: &[&str] = &[
    "/",
    "p",
    "a%20b",
    "%",
    "%2F",
    "%zz",
    "%E4%BD%A0",
    "%FF",
    "..",
    ".",
    "é",
    "+",
    "?",
    "#",
];
const QUERY_PIECES: &[&str] = &[
    "a", "b", "=", "&", "+", "%20", "%", "%zz", "%2B", "x", "1", "é", "==", "&&",
];

/// The FC string to sign, as the platform SDKs compute it.
fn fc_string_to_sign(
    method: &str,
    path: &str,
    h: &http::HeaderMap,
    date: &str,
    pairs: &[(String, String)],
) -> String {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut fc: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-fc-"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("").trim().to_string(),
            )
        })
        .collect();
    fc.sort();
    let mut s = format!(
        "{method}\n{}\n{}\n{date}\n",
        get("content-md5"),
        get("content-type")
    );
    for (k, v) in fc {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&percent_decode_str(path).decode_utf8_lossy());
    s.push('\n');
    let mut lines: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    s.push_str(&lines.join("\n"));
    s
}

fn form_decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn decoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn hmac_b64(secret: &[u8], data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// What the near-valid generator changes after signing.
#[derive(Clone, Copy, Debug)]
enum SigPart {
    Nothing,
    Authorization,
    Date,
    Query,
    Path,
    Method,
    OtherHeader,
}

#[test]
fn signature_near_valid_requests_never_panic() {
    let form = 0..3u8; // ACS3, FC, signed URL
    let common = (
        select(&["GET", "POST", "PUT", "DELETE"][..]),
        soup(PATH_PIECES, 5).prop_map(|p| format!("/{p}")),
        soup(QUERY_PIECES, 8),
        (
            acs_date(),
            http_date(),
            prop_oneof![
                3 => (NOW_S - 600..NOW_S + 1200).prop_map(|n| n.to_string()),
                1 => edge_i64().prop_map(|n| n.to_string()),
                1 => select(NUMBERS).prop_map(str::to_string),
            ],
        ),
        proptest::option::of(select(
            &[
                "UNSIGNED-PAYLOAD",
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                "ZZ",
                "",
            ][..],
        )),
        any::<bool>(),
    );
    let mutation = (
        select(
            &[
                SigPart::Nothing,
                SigPart::Nothing,
                SigPart::Authorization,
                SigPart::Authorization,
                SigPart::Date,
                SigPart::Query,
                SigPart::Path,
                SigPart::Method,
                SigPart::OtherHeader,
            ][..],
        ),
        edits(SIG_PIECES, 4),
        edits(DATE_PIECES, 3),
    );
    let input = (form, common, mutation, window(), any::<bool>()).prop_map(
        |(
            form,
            (method, path, query, (acs, http, expires), payload, extra),
            mutation,
            window_s,
            pass,
        )| {
            let (part, edit, date_edit) = mutation;
            let mut h = http::HeaderMap::new();
            let mut query = query;
            h.insert("host", "h.example".parse().unwrap());
            if extra {
                h.insert("x-acs-x", "1".parse().unwrap());
                h.insert("x-fc-trace-id", " trace ".parse().unwrap());
                h.insert("content-type", "text/json".parse().unwrap());
            }
            match form {
                0 => {
                    h.insert(
                        "x-acs-date",
                        acs.parse().unwrap_or(http::HeaderValue::from_static("x")),
                    );
                    if let Some(p) = payload {
                        h.insert("x-acs-content-sha256", http::HeaderValue::from_static(p));
                    }
                    let mut names = vec!["host".to_string(), "x-acs-date".to_string()];
                    if extra {
                        names.push("x-acs-x".to_string());
                    }
                    if payload.is_some() {
                        names.push("x-acs-content-sha256".to_string());
                    }
                    names.sort();
                    let canonical = acs3_canonical_request(
                        method,
                        &path,
                        &query,
                        &h,
                        &names,
                        payload.unwrap_or(""),
                    );
                    let sig = hmac_hex(
                        SECRET.as_bytes(),
                        acs3_string_to_sign(&canonical).as_bytes(),
                    );
                    let auth = format!(
                        "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders={},Signature={sig}",
                        names.join(";")
                    );
                    h.insert("authorization", auth.parse().unwrap());
                }
                1 => {
                    if let Ok(v) = http.parse() {
                        h.insert("date", v);
                    }
                    let date = h
                        .get("date")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let sts = fc_string_to_sign(method, &path, &h, &date, &decoded_pairs(&query));
                    let sig = hmac_b64(SECRET.as_bytes(), &sts);
                    h.insert("authorization", format!("FC AK1:{sig}").parse().unwrap());
                }
                _ => {
                    h.remove("x-fc-trace-id");
                    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
                    let mut q = format!(
                        "{query}&x-fc-access-key-id=AK1&x-fc-expires={}",
                        enc(&expires)
                    );
                    let sts = fc_string_to_sign(method, &path, &h, &expires, &decoded_pairs(&q));
                    let sig = hmac_b64(SECRET.as_bytes(), &sts);
                    q.push_str(&format!("&x-fc-signature={}", enc(&sig)));
                    query = q;
                }
            }
            let mut method = method.to_string();
            let mut path = path;
            let edit_header = |h: &mut http::HeaderMap, name: &str, e: &[Edit]| {
                let old = h
                    .get(name)
                    .map(|v| v.as_bytes().to_vec())
                    .unwrap_or_default();
                h.remove(name);
                if let Ok(v) = http::HeaderValue::from_bytes(&apply(old, e)) {
                    h.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
                }
            };
            match part {
                SigPart::Nothing => {}
                SigPart::Authorization => edit_header(&mut h, "authorization", &edit),
                SigPart::Date => {
                    edit_header(&mut h, "x-acs-date", &date_edit);
                    edit_header(&mut h, "date", &date_edit);
                }
                SigPart::Query => query = apply_str(&query, &edit),
                SigPart::Path => path = apply_str(&path, &edit),
                SigPart::Method => method = apply_str(&method, &edit),
                SigPart::OtherHeader => edit_header(&mut h, "x-acs-content-sha256", &edit),
            }
            SigInput {
                method,
                path,
                query: (!query.is_empty()).then_some(query),
                headers: h
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                window_s,
                pass_credentials: pass,
            }
        },
    );
    // Found by this property: a signed URL that expires at i64::MIN.
    let known = vec![SigInput {
        method: "GET".into(),
        path: "/".into(),
        query: Some(
            "x-fc-access-key-id=AK1&x-fc-expires=-9223372036854775808&x-fc-signature=x".into(),
        ),
        headers: Vec::new(),
        window_s: 900,
        pass_credentials: false,
    }];
    fuzz_with(
        "signature (near-valid)",
        2048,
        input,
        known,
        check_signature,
    );
}

// ---------------------------------------------------------------------------------------
// auth::jwt: tokens from a header, a cookie, the query or a form body.
// ---------------------------------------------------------------------------------------

/// Two JWT triggers over the test JWKS: every algorithm family and token source with claims
/// copied out; and issuer, audience, a whitelist, no cache, credentials passed on.
fn jwt_triggers() -> Vec<TriggerAuth> {
    let jwks = fixtures().join("jwks.json");
    let jwks = jwks.display();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[trigger]]
name = "j"
function = "f"
auth = "jwt"
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["RS256", "ES256", "EdDSA", "HS256"]
token_lookup = "header:Authorization:Bearer ,cookie:token,query:access_token,form:jwt"
claim_pass_by = "header:sub:X-User,query:uid:uid"
[[trigger]]
name = "k"
function = "f"
auth = "jwt"
pass_credentials = true
[trigger.jwt]
jwks_file = "{jwks}"
algorithms = ["HS256", "RS256"]
issuer = "https://issuer.example"
audience = ["wasmgate", "other"]
leeway_s = 0
cache_ttl_s = 0
whitelist = ["/public/*", "/health"]
token_lookup = "header:X-Token:,query:t,form:jwt"
claim_pass_by = "header:role:X-Role,query:sub:user"
"#
    );
    let config = Config::parse(&text, Path::new("fuzz.toml"), &|_| None).unwrap();
    config
        .triggers
        .iter()
        .map(|t| TriggerAuth::build(t).unwrap())
        .collect()
}

/// A request carrying a token.
#[derive(Clone, Debug)]
struct JwtInput {
    token: String,
    /// 0: Authorization, 1: cookie, 2: query, 3: form body, 4: X-Token, 5: all of them.
    place: u8,
    query: String,
    cookie: Vec<u8>,
    function_path: String,
}

const JWT_PIECES: &[&str] = &[
    "eyJ",
    "eyJhbGciOiJIUzI1NiJ9",
    "eyJhbGciOiJub25lIn0",
    "e30",
    ".",
    "..",
    "=",
    "-",
    "_",
    "+",
    "/",
    "A",
    "Bearer ",
    "bearer",
    " ",
    "%",
    "%2E",
    ";",
];

fn check_jwt(auths: &[TriggerAuth], input: JwtInput) -> bool {
    let enc = utf8_percent_encode(&input.token, NON_ALPHANUMERIC).to_string();
    let mut query = input.query.clone();
    if matches!(input.place, 2 | 5) {
        query.push_str(&format!("&access_token={enc}&t={enc}"));
    }
    let uri = format!("/p?{query}");
    let uri: http::Uri = uri.parse().unwrap_or_else(|_| "/p".parse().unwrap());
    let (mut template, ()) = http::Request::builder()
        .uri(uri)
        .body(())
        .unwrap()
        .into_parts();
    let mut put = |name: &'static str, value: Vec<u8>| {
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            template.headers.append(name, v);
        }
    };
    put("cookie", input.cookie.clone());
    if matches!(input.place, 0 | 5) {
        put(
            "authorization",
            format!("Bearer {}", input.token).into_bytes(),
        );
    }
    if matches!(input.place, 1 | 5) {
        put(
            "cookie",
            format!("a=1; token={}; b", input.token).into_bytes(),
        );
    }
    if matches!(input.place, 4 | 5) {
        put("x-token", input.token.clone().into_bytes());
    }
    let body = if matches!(input.place, 3 | 5) {
        put(
            "content-type",
            b"application/x-www-form-urlencoded".to_vec(),
        );
        Some(format!("a=1&jwt={enc}&b=%zz&jwt").into_bytes())
    } else {
        None
    };
    let mut accepted = false;
    for a in auths {
        let mut parts = template.clone();
        let body = body.as_deref().filter(|_| a.needs_body(&parts));
        let result = futures::executor::block_on(a.authenticate(AuthRequest {
            parts: &mut parts,
            body,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            function_path: &input.function_path,
            now: now(),
        }));
        accepted |=
            result.is_ok_and(|r| matches!(r.principal, wasmgate::auth::Principal::Subject(_)));
    }
    accepted
}

fn function_path() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(&["/", "/public/x", "/public/", "/publicx", "/health", "/health/x", "/admin"][..])
            .prop_map(str::to_string),
        1 => text(PATH_PIECES, 6),
    ]
    .boxed()
}

#[test]
fn jwt_arbitrary_tokens_never_panic() {
    let auths = jwt_triggers();
    let input = (
        text(JWT_PIECES, 16),
        0..6u8,
        soup(QUERY_PIECES, 6),
        header_bytes(JWT_PIECES),
        function_path(),
    )
        .prop_map(|(token, place, query, cookie, function_path)| JwtInput {
            token,
            place,
            query,
            cookie,
            function_path,
        });
    fuzz("jwt (arbitrary)", 2048, input, |i| check_jwt(&auths, i));
}

/// The key `hmac-1` of the test JWKS.
fn hmac_key() -> Vec<u8> {
    B64URL
        .decode("YS1zaGFyZWQtaG1hYy1zZWNyZXQtb2YtMzItYnl0ZXMh")
        .unwrap()
}

/// A claim value: realistic times and names, or any JSON.
fn claim(realistic: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    proptest::option::weighted(0.8, prop_oneof![4 => realistic, 1 => json_value()]).boxed()
}

#[test]
fn jwt_near_valid_tokens_never_panic() {
    let auths = jwt_triggers();
    let key = hmac_key();
    let header = (
        prop_oneof![
            4 => Just(Value::from("HS256")),
            1 => select(&["RS256", "ES256", "EdDSA", "none", "HS512", "PS256", "", "hs256"][..])
                .prop_map(Value::from),
            1 => json_value(),
        ],
        proptest::option::weighted(
            0.9,
            prop_oneof![
                4 => Just(Value::from("hmac-1")),
                1 => select(&["rsa-1", "ec-1", "ed-1", "nope", ""][..]).prop_map(Value::from),
                1 => json_value(),
            ],
        ),
        proptest::option::weighted(
            0.2,
            (
                select(&["typ", "crit", "jku", "b64", "x5c", "cty"][..]),
                json_value(),
            ),
        ),
    )
        .prop_map(|(alg, kid, extra)| {
            let mut h = serde_json::Map::new();
            h.insert("alg".into(), alg);
            if let Some(k) = kid {
                h.insert("kid".into(), k);
            }
            if let Some((k, v)) = extra {
                h.insert(k.into(), v);
            }
            Value::Object(h)
        });
    let time = |base: i64| -> BoxedStrategy<Value> {
        prop_oneof![
            3 => (base - 3600..base + 3600).prop_map(Value::from),
            1 => (base as f64 - 3600.0..base as f64 + 3600.0).prop_map(Value::from),
            1 => edge_i64().prop_map(Value::from),
        ]
        .boxed()
    };
    let claims = (
        claim(time(NOW_S + 1800)),
        claim(time(NOW_S - 1800)),
        claim(
            select(&["https://issuer.example", "other"][..])
                .prop_map(Value::from)
                .boxed(),
        ),
        claim(
            prop_oneof![
                Just(Value::from("wasmgate")),
                Just(serde_json::json!(["x", "wasmgate"])),
                Just(serde_json::json!(["wasmgate", 1])),
                Just(serde_json::json!([])),
            ]
            .boxed(),
        ),
        claim(
            select(&["alice", "a\nb", "", "é"][..])
                .prop_map(Value::from)
                .boxed(),
        ),
        claim(select(&["admin", "1"][..]).prop_map(Value::from).boxed()),
        claim(select(&["u-1"][..]).prop_map(Value::from).boxed()),
    )
        .prop_map(|(exp, nbf, iss, aud, sub, role, uid)| {
            let mut c = serde_json::Map::new();
            for (k, v) in [
                ("exp", exp),
                ("nbf", nbf),
                ("iss", iss),
                ("aud", aud),
                ("sub", sub),
                ("role", role),
                ("uid", uid),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), v);
                }
            }
            Value::Object(c)
        });
    // How the token is put together: the segments' JSON (or raw bytes), the base64 flavour,
    // the signature, and edits of the whole.
    let segment = |json: BoxedStrategy<Value>| -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            12 => json.prop_map(|v| v.to_string().into_bytes()),
            1 => json_text().prop_map(String::into_bytes),
            1 => vec(any::<u8>(), 0..24),
        ]
        .boxed()
    };
    let input = (
        segment(header.boxed()),
        segment(claims.boxed()),
        // base64: url-safe unpadded, padded, standard, raw
        prop_oneof![10 => Just(0u8), 1 => 1..4u8],
        // signature: right, random, empty, right but cut
        prop_oneof![10 => Just(0u8), 1 => 1..4u8],
        vec(any::<u8>(), 0..64), // a random signature
        prop_oneof![4 => Just(Vec::new()), 1 => edits(JWT_PIECES, 3)],
        0..6u8,
        soup(QUERY_PIECES, 4),
        function_path(),
    )
        .prop_map(
            move |(h, c, flavour, sig_kind, random_sig, edits, place, query, function_path)| {
                let b64 = |b: &[u8]| match flavour {
                    0 => B64URL.encode(b),
                    1 => base64::engine::general_purpose::URL_SAFE.encode(b),
                    2 => B64.encode(b),
                    _ => String::from_utf8_lossy(b).into_owned(),
                };
                let signing_input = format!("{}.{}", b64(&h), b64(&c));
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
                mac.update(signing_input.as_bytes());
                let right = mac.finalize().into_bytes().to_vec();
                let sig = match sig_kind {
                    0 => B64URL.encode(&right),
                    1 => B64URL.encode(&random_sig),
                    2 => String::new(),
                    _ => B64URL.encode(&right[..right.len() / 2]),
                };
                let token = apply_str(&format!("{signing_input}.{sig}"), &edits);
                JwtInput {
                    token,
                    place,
                    query,
                    cookie: Vec::new(),
                    function_path,
                }
            },
        );
    fuzz("jwt (near-valid)", 2048, input, |i| check_jwt(&auths, i));
}

// ---------------------------------------------------------------------------------------
// auth::basic (and auth::bearer): the Authorization header.
// ---------------------------------------------------------------------------------------

const BASIC_PIECES: &[&str] = &[
    "Basic ", "basic", "BASIC", "Bearer ", " ", "\t", ":", "=", "==", "YWxpY2U6", "Og==", "+", "/",
    "-", "_", "%",
];

#[test]
fn basic_and_bearer_headers_never_panic() {
    let basic = BasicAuth::new(
        "t\"",
        &[
            ("alice".into(), "wonder:land".into()),
            ("bob".into(), "builder".into()),
            ("".into(), "".into()),
        ],
    );
    let bearer = BearerAuth::new(
        "t",
        &[("ci".into(), "0123456789abcdef0123456789abcdef".into())],
    );
    let user = prop_oneof![
        3 => select(&["alice", "bob", "", "alice:wonder", "é"][..]).prop_map(|s| s.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..12),
    ];
    let password = prop_oneof![
        3 => select(&["wonder:land", "builder", "", ":"][..]).prop_map(|s| s.as_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..12),
    ];
    let pair = prop_oneof![
        4 => select(&[("alice", "wonder:land"), ("bob", "builder"), ("", ""), ("bob", "")][..])
            .prop_map(|(u, p)| (u.as_bytes().to_vec(), p.as_bytes().to_vec())),
        1 => (user, password),
    ];
    let structured = (
        select(&["Basic", "basic", "BASIC", "Bearer", "", "Basic\t", "Digest"][..]),
        select(&[" ", "  ", "\t", "", " \t "][..]),
        pair,
        // base64: standard, unpadded, url-safe, none; or the bearer token
        prop_oneof![4 => Just(0u8), 1 => 1..5u8],
        prop_oneof![2 => Just(Vec::new()), 1 => edits(BASIC_PIECES, 3)],
    )
        .prop_map(|(scheme, sep, (user, password), flavour, edits)| {
            let mut credentials = user;
            credentials.push(b':');
            credentials.extend(password);
            let encoded = match flavour {
                0 => B64.encode(&credentials),
                1 => B64_NO_PAD.encode(&credentials),
                2 => B64URL.encode(&credentials),
                3 => String::from_utf8_lossy(&credentials).into_owned(),
                _ => "0123456789abcdef0123456789abcdef".to_string(),
            };
            let value = format!("{scheme}{sep}{encoded}").into_bytes();
            Some(apply(value, &edits))
        });
    let input = prop_oneof![
        1 => proptest::option::of(vec(any::<u8>(), 0..64)),
        1 => proptest::option::of(soup(BASIC_PIECES, 10).prop_map(String::into_bytes)),
        3 => structured,
    ];
    fuzz("basic and bearer", 4096, input, |value| {
        let a = basic.verify(value.as_deref()).is_ok();
        let b = bearer.verify(value.as_deref()).is_ok();
        a || b
    });
}

// ---------------------------------------------------------------------------------------
// sources::event: the event API's JSON, structured and binary CloudEvents.
// ---------------------------------------------------------------------------------------

const CONTENT_TYPES: &[&str] = &[
    "",
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents+json; charset=utf-8",
    "APPLICATION/CLOUDEVENTS+JSON",
    "application/x+json",
    "text/plain",
    "application/octet-stream",
];

const EVENT_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\"type\"",
    "\"data\"",
    "\"delay\"",
    "\"timestamp\"",
    "\"id\"",
    "\"isSynchronous\"",
    "\"specversion\"",
    "\"source\"",
    "\"time\"",
    "\"data_base64\"",
    "true",
    "null",
    "\"1.0\"",
    "\\u0000",
    "\\ud800",
    "e",
    "E",
    "-",
    ".",
];

fn max_age() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => Just(86_400u64),
        1 => select(&[1u64, 60, 31_536_000, u32::MAX as u64, i64::MAX as u64, u64::MAX][..]),
        1 => any::<u64>(),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct EventInput {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    max_age_s: u64,
}

fn check_event(input: EventInput) -> bool {
    let h = headers(&input.headers);
    match event::parse(&h, &input.body, now(), input.max_age_s) {
        Ok(e) => {
            // What the event becomes: each subscriber's task id and delivered body.
            let _ = event::event_task_id(&e.id, "f");
            let ce = event::cloudevent(&e);
            let _ = serde_json::to_vec(&ce).unwrap();
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

fn content_type_header() -> BoxedStrategy<Vec<(String, Vec<u8>)>> {
    prop_oneof![
        4 => select(CONTENT_TYPES).prop_map(|c| vec![("content-type".to_string(), c.as_bytes().to_vec())]),
        1 => vec(any::<u8>(), 0..24).prop_map(|c| vec![("content-type".to_string(), c)]),
        1 => Just(Vec::new()),
    ]
    .boxed()
}

#[test]
fn event_arbitrary_bodies_never_panic() {
    let ce_header = (
        select(&["ce-type", "ce-id", "ce-source", "ce-time", "ce-specversion"][..])
            .prop_map(str::to_string),
        header_bytes(DATE_PIECES),
    );
    let input = (
        content_type_header(),
        vec(ce_header, 0..5),
        prop_oneof![
            vec(any::<u8>(), 0..128),
            soup(EVENT_PIECES, 24).prop_map(String::into_bytes),
        ],
        max_age(),
    )
        .prop_map(|(mut headers, ce, body, max_age_s)| {
            headers.extend(ce);
            EventInput {
                headers,
                body,
                max_age_s,
            }
        });
    fuzz("event (arbitrary)", 4096, input, check_event);
}

/// One `"key":value` member of an event object.
fn event_member() -> BoxedStrategy<String> {
    let string = |values: &'static [&'static str]| -> BoxedStrategy<String> {
        prop_oneof![
            4 => select(values).prop_map(|s| Value::from(s).to_string()),
            1 => json_text(),
        ]
        .boxed()
    };
    let rfc3339 = string(&[
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.123456789+23:59",
        "9999-12-31T23:59:59.999999999-23:59",
        "0000-01-01T00:00:00+23:59",
        "2026-01-01T23:59:60Z",
        "2026-13-01T00:00:00Z",
        "now",
    ]);
    let ms = prop_oneof![
        3 => (NOW_S * 1000 - 10_000_000..NOW_S * 1000 + 200_000_000).prop_map(|n| n.to_string()),
        1 => json_text(),
    ]
    .boxed();
    let seconds = prop_oneof![
        3 => (0.0..200_000.0f64).prop_map(|n| n.to_string()),
        1 => (0..200_000u64).prop_map(|n| n.to_string()),
        2 => json_text(),
    ]
    .boxed();
    let member = |key: &'static str, value: BoxedStrategy<String>| -> BoxedStrategy<String> {
        value.prop_map(move |v| format!("\"{key}\":{v}")).boxed()
    };
    prop_oneof![
        member("type", string(&["order.created", "x", "", " "])),
        member("data", json_value().prop_map(|v| v.to_string()).boxed()),
        member("timestamp", ms),
        member("delay", seconds),
        member(
            "isSynchronous",
            select(&["true", "false", "\"yes\"", "null", "1"][..])
                .prop_map(str::to_string)
                .boxed()
        ),
        member(
            "id",
            string(&[
                "o-1",
                "a b",
                "",
                "a.b_c-D",
                "0123456789012345678901234567890123456789012345678901234567890123",
                "01234567890123456789012345678901234567890123456789012345678901234",
                "é",
            ])
        ),
        member("specversion", string(&["1.0", "0.3", "1"])),
        member("source", string(&["/s", ""])),
        member("time", rfc3339),
        member("data_base64", string(&["aGk=", "%%%", ""])),
    ]
    .boxed()
}

#[test]
fn event_near_valid_bodies_never_panic() {
    // A valid event (or CloudEvent) first; the members after it override its fields (the
    // last of duplicate keys wins).
    let json = (
        content_type_header(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        vec(event_member(), 0..5),
        prop_oneof![4 => Just(Vec::new()), 1 => edits(EVENT_PIECES, 3)],
        max_age(),
    )
        .prop_map(|(headers, valid_first, members, edits, max_age_s)| {
            let mut all: Vec<String> = Vec::new();
            if valid_first {
                all.push(
                    r#""specversion":"1.0","type":"order.created","id":"e-1","source":"/s""#
                        .to_string(),
                );
            }
            all.extend(members);
            EventInput {
                headers,
                body: apply(format!("{{{}}}", all.join(",")).into_bytes(), &edits),
                max_age_s,
            }
        });
    let binary = (
        select(&["order.paid", "", " ", "x"][..]),
        proptest::option::of(select(&["b-1", "a b", ""][..])),
        proptest::option::of(select(&["/shop", ""][..])),
        proptest::option::of(prop_oneof![
            acs_date(),
            Just("9999-12-31T23:59:59.999999999-23:59".to_string())
        ]),
        content_type_header(),
        prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            vec(any::<u8>(), 0..32),
        ],
        max_age(),
    )
        .prop_map(|(t, id, source, time, mut headers, body, max_age_s)| {
            headers.push(("ce-type".into(), t.as_bytes().to_vec()));
            for (name, value) in [("ce-id", id), ("ce-source", source)] {
                if let Some(v) = value {
                    headers.push((name.into(), v.as_bytes().to_vec()));
                }
            }
            if let Some(t) = time {
                headers.push(("ce-time".into(), t.into_bytes()));
            }
            EventInput {
                headers,
                body,
                max_age_s,
            }
        });
    let input = prop_oneof![4 => json, 1 => binary];
    fuzz("event (near-valid)", 4096, input, check_event);
}

// ---------------------------------------------------------------------------------------
// sources::cron: schedule expressions, and the ticks they give in every kind of time zone.
// ---------------------------------------------------------------------------------------

const CRON_PIECES: &[&str] = &[
    "*",
    "?",
    "L",
    "W",
    "LW",
    "5L",
    "15W",
    "1#3",
    "5#5",
    "#",
    "MON",
    "sun",
    "SAT",
    "JAN",
    "dec",
    "1",
    "0",
    "7",
    "12",
    "13",
    "23",
    "24",
    "29",
    "30",
    "31",
    "32",
    "59",
    "60",
    "-",
    "/",
    ",",
    "*/0",
    "*/1",
    "*/7",
    "1-5",
    "5-1",
    "0-59/60",
    " ",
    "\t",
    "@",
    "@daily",
    "@midnight",
    "@every",
    "L-3",
    "LL",
];

/// One field of an expression: lists of atoms, ranges and steps.
fn cron_field() -> BoxedStrategy<String> {
    let atom = prop_oneof![
        4 => (1..8u32).prop_map(|n| n.to_string()),
        4 => Just("*".to_string()),
        1 => (0..62u32).prop_map(|n| n.to_string()),
        1 => select(&[
            "*", "?", "L", "W", "LW", "5L", "15W", "1#3", "5#5", "MON", "sun", "SAT", "JAN", "dec",
            "L-3", "7",
        ][..]).prop_map(str::to_string),
        1 => select(NUMBERS).prop_map(str::to_string),
    ]
    .boxed();
    let item = (
        atom.clone(),
        proptest::option::weighted(0.2, atom),
        proptest::option::weighted(
            0.2,
            prop_oneof![
                3 => (0..70u32).prop_map(|n| n.to_string()),
                1 => select(NUMBERS).prop_map(str::to_string),
            ],
        ),
    )
        .prop_map(|(a, b, step)| {
            let mut s = a;
            if let Some(b) = b {
                s = format!("{s}-{b}");
            }
            if let Some(step) = step {
                s = format!("{s}/{step}");
            }
            s
        });
    prop_oneof![3 => vec(item.clone(), 1..2), 1 => vec(item, 2..4)]
        .prop_map(|v| v.join(","))
        .boxed()
}

/// A field valid for its position: values, ranges and steps within `lo..=hi`, or one of
/// the field's special forms.
fn valid_cron_field(lo: u32, hi: u32, special: &'static [&'static str]) -> BoxedStrategy<String> {
    // `*` stands alone: croner takes no `*` inside a list.
    let item = prop_oneof![
        3 => (lo..=hi).prop_map(|n| n.to_string()),
        2 => (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        2 => (1..=hi.max(1) + 1).prop_map(|n| format!("*/{n}")),
        1 => (lo..=hi, 1..=hi.max(1)).prop_map(|(a, n)| format!("{a}/{n}")),
        1 => select(special).prop_map(str::to_string),
    ];
    prop_oneof![
        3 => Just("*".to_string()),
        4 => item.clone(),
        1 => vec(item, 2..4).prop_map(|v| v.join(",")),
    ]
    .boxed()
}

fn valid_cron_expression() -> BoxedStrategy<String> {
    (
        proptest::option::of(valid_cron_field(0, 59, &["*"])),
        valid_cron_field(0, 59, &["*"]),
        valid_cron_field(0, 23, &["*"]),
        valid_cron_field(1, 31, &["L", "15W", "1W", "?", "L-3", "LW"]),
        valid_cron_field(1, 12, &["JAN", "feb", "DEC", "JAN-MAR"]),
        valid_cron_field(0, 7, &["MON", "sun", "MON-FRI", "5L", "1#3", "5#5", "?"]),
    )
        .prop_map(|(s, m, h, dom, mon, dow)| {
            let five = format!("{m} {h} {dom} {mon} {dow}");
            match s {
                Some(s) => format!("{s} {five}"),
                None => five,
            }
        })
        .boxed()
}

fn cron_expression() -> BoxedStrategy<String> {
    prop_oneof![
        6 => valid_cron_expression(),
        6 => (vec(cron_field(), 5..=6), select(&[" ", "  ", "\t", " \t"][..]))
            .prop_map(|(fields, sep)| fields.join(sep)),
        1 => vec(cron_field(), 0..9).prop_map(|f| f.join(" ")),
        1 => select(&[
            "* * * * *", "* * * * * *", "0 * * * * *", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly", "@midnight",
            "@MIDNIGHT", "@reboot", "@", " @daily ", "0 0 31 2 *", "0 0 30 2 *", "0 0 29 2 1",
            "59 59 23 31 12 *", "0 0 * * 5#5", "0 0 L 2 *", "0 0 LW * *", "0 0 1W * *",
            "0 30 2 * * *", "0 30 1 * * *", "*/1 * * * * *", "0 0 ? * 7L",
        ][..]).prop_map(str::to_string),
    ]
    .boxed()
}

const TIME_ZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Africa/Casablanca",
    "America/Havana",
    "America/Santiago",
    "Asia/Tehran",
    "Antarctica/Troll",
];

/// Instants for "now": any time this century, and times around DST changes.
fn instant() -> BoxedStrategy<DateTime<Utc>> {
    let around = [
        1_774_746_000i64, // 2026-03-29 01:00 UTC, Europe springs forward
        1_792_890_000,    // 2026-10-25 01:00 UTC, Europe falls back
        1_772_953_200,    // 2026-03-08 07:00 UTC, US springs forward
        1_793_512_800,    // 2026-11-01 06:00 UTC, US falls back
        1_775_318_400,    // 2026-04-04 16:00 UTC, Lord Howe's half hour
        1_767_225_599,    // the end of 2025
        951_782_400,      // 2000-02-29
    ];
    prop_oneof![
        2 => (0i64..4_102_444_800, 0..1_000_000_000u32),
        3 => (select(around.to_vec()), -7200i64..7200, 0..1_000_000_000u32)
            .prop_map(|(t, off, ns)| (t + off, ns)),
    ]
    .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
    .boxed()
}

fn check_cron(expr: String, tz: &str, at: DateTime<Utc>, max_age_s: u64) -> bool {
    let Ok(schedule) = parse_schedule(&expr) else {
        return false;
    };
    let c = CronConfig {
        schedule: expr,
        cron: schedule,
        timezone: tz.parse().unwrap(),
        payload: None,
        catch_up: true,
    };
    let _ = cron::fingerprint(&c);
    // Where the answer is known whatever the time zone does (every offset since 1970 is a
    // whole number of minutes): every minute, or every second, ticks at the next whole one
    // (compared to the second: croner keeps the fraction of a second it starts from).
    let step = match c.schedule.trim() {
        "* * * * *" | "0 * * * * *" => Some(60),
        "* * * * * *" => Some(1),
        _ => None,
    };
    let whole = |t: DateTime<Utc>, s: i64| t.timestamp().div_euclid(s) * s;
    // A few ticks on: each strictly after the one before (the timer relies on it).
    let mut after = at;
    for _ in 0..3 {
        let Some(next) = cron::next_tick(&c, after) else {
            break;
        };
        assert!(next > after, "next tick {next} is not after {after}");
        if let Some(s) = step {
            assert_eq!(
                next.timestamp(),
                whole(after, s) + s,
                "next tick after {after}: {next}"
            );
        }
        let _ = cron::tick_id("t", next);
        after = next;
    }
    if let Some(prev) = cron::missed_tick(&c, at, max_age_s) {
        assert!(prev <= at, "missed tick {prev} is after now {at}");
        assert!(
            ((at - prev).num_seconds() as u64) <= max_age_s,
            "missed tick {prev} is older than {max_age_s} s"
        );
        if let Some(s) = step {
            assert_eq!(
                prev.timestamp(),
                whole(at, s),
                "missed tick at {at}: {prev}"
            );
        }
    }
    true
}

#[test]
fn cron_arbitrary_expressions_never_panic() {
    let input = (
        text(CRON_PIECES, 16),
        select(TIME_ZONES),
        instant(),
        max_age(),
    );
    fuzz(
        "cron (arbitrary)",
        2048,
        input,
        |(expr, tz, at, max_age_s)| check_cron(expr, tz, at, max_age_s),
    );
}

#[test]
fn cron_near_valid_expressions_never_panic() {
    let input = (
        cron_expression(),
        prop_oneof![4 => Just(Vec::new()), 1 => edits(CRON_PIECES, 3)],
        select(TIME_ZONES),
        instant(),
        max_age(),
    );
    // Found by this property: during a DST fall-back the next tick was before `after`...
    let fall_back = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
    let known = vec![
        (
            "* * * * *".to_string(),
            Vec::new(),
            "Europe/London",
            fall_back(1_792_891_800), // 2026-10-25T01:30:00Z
            86_400,
        ),
        (
            "30 1 * * *".to_string(),
            Vec::new(),
            "America/New_York",
            fall_back(1_793_514_600), // 2026-11-01T06:30:00Z
            86_400,
        ),
        // ... and after the last minute of the first pass the next was two passes on.
        (
            "* * * * *".to_string(),
            Vec::new(),
            "Europe/London",
            fall_back(1_792_889_970), // 2026-10-25T00:59:30Z
            86_400,
        ),
    ];
    fuzz_with(
        "cron (near-valid)",
        1024,
        input,
        known,
        |(expr, edits, tz, at, max_age_s)| check_cron(apply_str(&expr, &edits), tz, at, max_age_s),
    );
}

// ---------------------------------------------------------------------------------------
// config: the whole file, then everything built from it without running anything.
// ---------------------------------------------------------------------------------------

/// The config's path: beside the example config, so its relative files (the JWKS) resolve.
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz.toml")
}

fn config_env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("s3cret".into()),
        "TOKEN" => Some("0123456789abcdef0123456789abcdef".into()),
        "NATS_USER" => Some("gw:pa:ss".into()),
        "NATS_FILE" => Some("nats.creds".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn check_config(text: &str) -> bool {
    let Ok(config) = Config::parse(text, &config_path(), &config_env) else {
        return false;
    };
    // What `check` and start-up build from a config without compiling or binding: the
    // authenticators (reading the JWKS), the route table, the source warnings and table.
    let mut router = Router::new();
    for (i, t) in config.triggers.iter().enumerate() {
        let _ = TriggerAuth::build(t);
        for prefix in t.prefixes() {
            router.insert(t.host.as_deref(), prefix, i);
        }
        let _ = t.function_label();
        let _ = t.auth.scheme();
        if let Some(cron) = match &t.kind {
            wasmgate::config::Kind::Cron(c) => Some(c),
            _ => None,
        } {
            let _ = cron::next_tick(cron, now());
        }
        if let Some(b) = t.kind.broker() {
            let _ = b.fingerprint();
        }
    }
    let _ = wasmgate::config::reach::reach_warnings(&config);
    let _ = wasmgate::config::reach::source_table(&config);
    let _ = format!("{config:?}");
    true
}

const TOML_PIECES: &[&str] = &[
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "\n",
    "\r\n",
    "#",
    " ",
    "\\",
    "\\u0000",
    "\\UFFFFFFFF",
    "true",
    "false",
    "1979-05-27T07:32:00Z",
    "[[trigger]]\n",
    "[[function]]\n",
    "[server]\n",
    "[limits]\n",
    "[queue]\n",
    "[cluster]\n",
    "[trigger.jwt]\n",
    "name = \"t\"\n",
    "function = \"f\"\n",
    "kind = \"cron\"\n",
    "kind = \"mqtt\"\n",
    "kind = \"nats\"\n",
    "kind = \"event\"\n",
    "schedule = \"",
    "auth = \"",
    "path = \"/{function}\"\n",
    "{function}",
    "{namespace}",
];

#[test]
fn config_arbitrary_text_never_panics() {
    let input = prop_oneof![
        1 => any::<String>(),
        1 => vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        3 => soup(TOML_PIECES, 40),
        // Deep nesting: arrays and inline tables many levels down.
        1 => (select(&["a = ", "[server]\nlisten = ", "x.y.z = "][..]), select(&["[", "{a=", "[{b=", "{a.b.c=["][..]), 1..3000usize)
            .prop_map(|(head, open, n)| format!("{head}{}", open.repeat(n))),
    ];
    fuzz("config (arbitrary)", 1024, input, |text| {
        check_config(&text)
    });
}

/// A `key = value` line of a trigger, one of each kind's keys with values good and bad.
fn trigger_line() -> BoxedStrategy<String> {
    let kv = |key: &'static str, values: &'static [&'static str]| -> BoxedStrategy<String> {
        select(values)
            .prop_map(move |v| format!("{key} = {v}"))
            .boxed()
    };
    let jwt_tables: &'static [&'static str] = &[
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"RS256\", \"HS256\"] }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"none\"] }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"XX1\"] }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [] }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"ES256\"], token_lookup = \"body:x\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"ES256\"], token_lookup = \"header:bad name:x\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"ES256\"], token_lookup = \",,,\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"ES256\"], token_lookup = \"header:\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"EdDSA\"], claim_pass_by = \"header:sub\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"EdDSA\"], claim_pass_by = \"header:sub:bad name\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"EdDSA\"], claim_pass_by = \"query:a:b,cookie:x:y\" }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"RS256\"], whitelist = [\"/a\"], blacklist = [\"/b\"] }",
        "jwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"RS256\"], leeway_s = 9223372036854775807, cache_ttl_s = 9223372036854775807 }",
        "jwt = { jwks_file = \"tests/fixtures/signature.json\", algorithms = [\"RS256\"] }",
        "jwt = { jwks_file = \"/nonexistent\", algorithms = [\"RS256\"] }",
        "jwt = { jwks_file = \"tests/fixtures\", algorithms = [\"RS256\"] }",
    ];
    prop_oneof![
        kv("kind", &["\"http\"", "\"event\"", "\"cron\"", "\"mqtt\"", "\"nats\"", "\"smtp\"", "1"]),
        kv("function", &["\"f\"", "\"f.ns\"", "\"F\"", "\"\"", "\"a.b.c\"", "\"f.\""]),
        kv("qualifier", &["\"LATEST\"", "\"live\"", "\"\""]),
        kv("path", &[
            "\"/x\"", "\"/f/{function}\"", "\"/s/{namespace}/f/{function}\"", "\"x\"", "\"/a?b\"",
            "\"/\"", "\"//\"", "\"/{function}/{function}\"", "\"/{fn}\"", "\"/{function}\"",
            "\"/a/{namespace}/{namespace}/{function}\"", "\"{function}\"", "\"/x/\"", "\"\"",
        ]),
        kv("async_path", &["\"/a/{function}\"", "\"/a\"", "\"/{fn}\""]),
        kv("functions", &["[\"*\"]", "[\"f\"]", "[\"bad name\"]", "[]"]),
        kv("host", &["\"API.example.com:8443\"", "\"[::1]:80\"", "\":\"", "\"\"", "\"h:\"", "\"[::1\""]),
        kv("methods", &["[\"GET\"]", "[]", "[\"FETCH\"]", "[\"get\", \"post\"]", "[\"\"]"]),
        kv("auth", &["\"signature\"", "\"basic\"", "\"jwt\"", "\"bearer\"", "\"anonymous\"", "\"magic\""]),
        kv("disable_internet", &["true", "false"]),
        kv("pass_credentials", &["true", "false"]),
        kv("signature", &[
            "{ keys = [ { id = \"AK1\", secret = \"s\" } ], window_s = 9223372036854775807 }",
            "{ keys = [ { id = \"AK1\", secret_env = \"SECRET\" } ] }",
            "{ keys = [ { id = \"AK1\", secret_env = \"NOPE\" } ] }",
            "{ keys = [ { id = \"\", secret = \"\", secret_env = \"SECRET\" } ] }",
            "{ keys = [] }",
        ]),
        kv("basic", &[
            "{ users = [ { username = \"u\", password = \"p\" } ] }",
            "{ users = [ { username = \"u:v\", password = \"p\" } ] }",
            "{ users = [ { username = \"\", password_env = \"EMPTY\" } ] }",
            "{ users = [] }",
        ]),
        kv("bearer", &[
            "{ tokens = [ { name = \"n\", token_env = \"TOKEN\" } ] }",
            "{ tokens = [ { name = \"n\", token = \"short\" } ] }",
            "{ tokens = [ { name = \"n\", token = \"0123456789abcdef0123456789abcdef\", enabled = false } ] }",
            "{ tokens = [] }",
        ]),
        select(jwt_tables).prop_map(str::to_string).boxed(),
        kv("rate_limit", &[
            "{ per_second = 0 }", "{ per_second = 1 }", "{ per_second = 4294967295, burst = 0 }",
            "{ per_second = 4294967296 }", "{ per_second = 5, key = \"ip\" }",
            "{ per_second = 5, key = \"x\" }", "{ per_second = -1 }",
        ]),
        cron_expression().prop_map(|e| format!("schedule = {}", Value::from(e))).boxed(),
        kv("timezone", &["\"UTC\"", "\"Mars/Base\"", "\"Europe/London\"", "\"\"", "\"utc\""]),
        kv("payload", &["'{\"job\":1}'", "\"\""]),
        kv("catch_up", &["true", "false"]),
        kv("broker", &[
            "\"mqtt://h:1\"", "\"mqtts://h\"", "\"nats://h:65536\"", "\"tls://[::1]:4222\"",
            "\"mqtt://\"", "\"mqtt://:1\"", "\"nats://u:p@h:1\"", "\"ssl://[::1]\"", "\"tcp://h:0\"",
            "\"nats://h/x\"", "\"h:1\"", "\"mqtt://[::1]]:1\"", "\"mqtt://]:1\"", "\"mqtt://[:1\"",
        ]),
        kv("topics", &[
            "[\"a/#\"]", "[\"a/#/b\"]", "[\"a.>\"]", "[\"+\"]", "[\"\"]", "[\"a.*.>\"]", "[\" \"]",
            "[]", "[\"a+\"]", "[\">.a\"]", "[\"a..b\"]",
        ]),
        kv("qos", &["0", "1", "2", "-1", "256"]),
        kv("client_id", &["\"c\"", "\"\""]),
        kv("username", &["\"u\""]),
        kv("username_env", &["\"SECRET\"", "\"NOPE\""]),
        kv("password", &["\"p\""]),
        kv("password_env", &["\"SECRET\""]),
        kv("ca_file", &["\"ca.pem\""]),
        kv("queue_group", &["\"g\""]),
        kv("content_type", &["\"text/plain\"", "\"a\\nb\"", "\"\""]),
        kv("namespace", &["\"ns\"", "\"NS\"", "\"\""]),
        kv("topic_match", &["\"mqtt\"", "\"exact\"", "\"regex\"", "\"exact-ignore-case\"", "\"nats\""]),
        kv("cors", &[
            "{ allow_origins = [\"*\"] }",
            "{ allow_origins = [\"*\"], allow_credentials = true }",
            "{ allow_origins = [\"https://a.example\"], allow_methods = [\"get\", \"FETCH\"] }",
            "{ allow_origins = [\"https://\"], allow_headers = [\"*\", \"bad name\"] }",
            "{ allow_origins = [], expose_headers = [\"x\"], max_age_s = 9223372036854775807 }",
            "{ allow_origins = [\"http://a/b\"] }",
        ]),
        kv("async", &[
            "{ enabled = true }",
            "{ max_event_age_s = 0 }",
            "{ max_event_age_s = 9223372036854775807, max_retries = 4294967295 }",
            "{ on_success = \"http://x\", on_failure = \"ftp://x\" }",
            "{ on_success = \"http://\" }",
            "{ on_success = \"not a url\" }",
            "{ callback_hosts = [\"LOCALHOST\"], max_tasks = 0 }",
        ]),
    ]
    .boxed()
}

/// A whole config: the server table, some functions and triggers.
fn generated_config() -> BoxedStrategy<String> {
    let server = prop_oneof![
        select(
            &[
                "listen = \"127.0.0.1:0\"",
                "listen = \"[::1]:8443\"",
                "listen = \"0.0.0.0:99999\"",
                "listen = \"localhost:80\"",
            ][..]
        )
        .prop_map(str::to_string),
        select(
            &[
                "admin_listen = \"0.0.0.0:9090\"",
                "admin_listen = \"127.0.0.1:9090\"",
                "admin_token_env = \"NOPE\"",
                "admin_token = \"t\"",
                "internal_listen = \"x\"",
                "data_dir = \"\"",
                "artifact_key_file = \"\"",
                "tls = { cert = \"c\", key = \"k\" }",
                "drain_timeout_ms = 0",
            ][..]
        )
        .prop_map(str::to_string),
    ];
    let limits = (
        select(
            &[
                "max_header_bytes",
                "max_uri_bytes",
                "max_body_bytes",
                "max_async_body_bytes",
                "max_in_flight",
                "max_connections",
                "header_read_timeout_ms",
                "body_read_timeout_ms",
                "body_buffer_bytes",
                "max_connections_per_ip",
                "idle_timeout_ms",
                "request_timeout_ms",
                "send_timeout_ms",
            ][..],
        ),
        select(
            &[
                "0",
                "1",
                "15",
                "16",
                "255",
                "256",
                "100000",
                "100001",
                "9223372036854775807",
                "-1",
            ][..],
        ),
    )
        .prop_map(|(k, v)| format!("{k} = {v}"));
    let queue = (
        select(
            &[
                "group_commit",
                "workers",
                "retention_s",
                "max_tasks",
                "max_queue_bytes",
                "callback_concurrency",
            ][..],
        ),
        select(
            &[
                "0",
                "1",
                "4294967295",
                "4294967296",
                "9223372036854775807",
                "true",
            ][..],
        ),
    )
        .prop_map(|(k, v)| format!("{k} = {v}"));
    let cluster = select(
        &[
            "nats = \"nats://a:4222, tls://b:4222\"\ncredentials_env = \"NATS_USER\"\nreplicas = 3",
            "nats = \"nats://a\"\ncredentials_env = \"NATS_FILE\"",
            "nats = \"127.0.0.1:4222\"",
            "nats = \"\"",
            "nats = \",\"",
            "nats = \"nats://a\"\nreplicas = 0",
            "nats = \"nats://a\"\nreplicas = 4294967295",
            "nats = \"nats://a\"\nack_wait_ms = 299",
        ][..],
    );
    let function = (
        select(&["f", "g", "F", "", "a-b"][..]),
        proptest::option::of(select(&["ns", "default", "NS"][..])),
        vec(
            select(
                &[
                    "memory_mb = 0",
                    "memory_mb = 4097",
                    "memory_mb = 16",
                    "timeout_ms = 0",
                    "max_concurrency = 0",
                    "topics = [\"a/#\"]",
                    "topics = [\" \"]",
                    "events = [\"order.*\"]",
                    "events = [\"\"]",
                    "env = { A = \"1\" }",
                    "outbound_hosts = [\"LOCALHOST\"]",
                ][..],
            ),
            0..3,
        ),
    )
        .prop_map(|(name, ns, lines)| {
            let mut s = format!("[[function]]\nname = \"{name}\"\nwasm = \"f.wasm\"\n");
            if let Some(ns) = ns {
                s.push_str(&format!("namespace = \"{ns}\"\n"));
            }
            for l in lines {
                s.push_str(l);
                s.push('\n');
            }
            s
        });
    // A valid trigger of each kind (`{i}` keeps names and paths apart), with lines added.
    let base = prop_oneof![
        select(&[
            "function = \"f\"\npath = \"/x{i}\"",
            "path = \"/fn{i}/{function}\"\nfunctions = [\"*\"]\nasync_path = \"/async{i}/{function}\"",
            "kind = \"event\"\npath = \"/events{i}\"",
            "kind = \"mqtt\"\nbroker = \"mqtt://h:1883\"\ntopics = [\"a/#\"]",
            "kind = \"nats\"\nbroker = \"nats://h:4222\"\ntopics = [\"a.>\"]\nqueue_group = \"g\"",
            "function = \"f\"\npath = \"/s{i}\"\nauth = \"signature\"\nsignature = { keys = [ { id = \"AK1\", secret = \"s\" } ] }",
            "function = \"f\"\npath = \"/j{i}\"\nauth = \"jwt\"\njwt = { jwks_file = \"tests/fixtures/jwks.json\", algorithms = [\"RS256\", \"HS256\"], claim_pass_by = \"header:sub:X-User\" }",
            "function = \"f\"\npath = \"/b{i}\"\nauth = \"basic\"\nbasic = { users = [ { username = \"u\", password = \"p\" } ] }",
            "",
        ][..])
        .prop_map(str::to_string),
        cron_expression().prop_map(|e| {
            format!("kind = \"cron\"\nfunction = \"f\"\nschedule = {}", Value::from(e))
        }),
    ];
    let trigger = (
        prop_oneof![8 => Just(None), 1 => proptest::option::of(select(&["t", "T", ""][..]))],
        base,
        prop_oneof![2 => vec(trigger_line(), 0..3), 1 => vec(trigger_line(), 0..7)],
    );
    (
        vec(server, 1..3),
        vec(limits, 0..3),
        vec(queue, 0..2),
        proptest::option::of(cluster),
        vec(function, 0..3),
        vec(trigger, 1..4),
    )
        .prop_map(|(server, limits, queue, cluster, functions, triggers)| {
            let triggers: Vec<String> = triggers
                .into_iter()
                .enumerate()
                .map(|(i, (name, base, lines))| {
                    let name = match name {
                        None => format!("t{i}"),
                        Some(n) => n.to_string(),
                    };
                    format!(
                        "[[trigger]]\nname = \"{name}\"\n{}\n{}\n",
                        base.replace("{i}", &i.to_string()),
                        lines.join("\n")
                    )
                })
                .collect();
            let mut s = format!("[server]\n{}\n", server.join("\n"));
            if !limits.is_empty() {
                s.push_str(&format!("[limits]\n{}\n", limits.join("\n")));
            }
            if !queue.is_empty() {
                s.push_str(&format!("[queue]\n{}\n", queue.join("\n")));
            }
            if let Some(c) = cluster {
                s.push_str(&format!("[cluster]\n{c}\n"));
            }
            s.push_str(&functions.concat());
            s.push_str(&triggers.concat());
            s
        })
        .boxed()
}

#[test]
fn config_near_valid_files_never_panic() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("wasmgate.toml"))
            .unwrap();
    let input = prop_oneof![
        // The example config, edited byte-wise or line-wise.
        2 => (Just(example.clone()), edits(TOML_PIECES, 4))
            .prop_map(|(e, edits)| apply_str(&e, &edits)),
        2 => (Just(example), vec((any::<usize>(), trigger_line()), 0..4)).prop_map(|(e, lines)| {
            let mut all: Vec<String> = e.lines().map(str::to_string).collect();
            for (at, line) in lines {
                let i = at % (all.len() + 1);
                all.insert(i, line);
            }
            all.join("\n")
        }),
        // Generated configs of every kind of trigger, sometimes edited.
        4 => (generated_config(), prop_oneof![3 => Just(Vec::new()), 1 => edits(TOML_PIECES, 2)])
            .prop_map(|(c, edits)| apply_str(&c, &edits)),
    ];
    fuzz("config (near-valid)", 1024, input, |text| {
        check_config(&text)
    });
}

// ---------------------------------------------------------------------------------------
// Request paths: normalisation, routing, templates and topic matching.
// ---------------------------------------------------------------------------------------

#[test]
fn request_paths_never_panic() {
    let templates: Vec<RouteTemplate> = [
        "/function/{function}",
        "/spaces/{namespace}/functions/{function}/invoke",
        "/{function}",
        "/a/{function}/b",
    ]
    .iter()
    .map(|t| RouteTemplate::parse(t).unwrap().unwrap())
    .collect();
    let mut router = Router::new();
    for (i, (host, prefix)) in [
        (None, "/"),
        (None, "/hello"),
        (None, "/hello/deep"),
        (Some("api.example.com"), "/hello"),
        (Some("[::1]"), "/v6"),
    ]
    .into_iter()
    .enumerate()
    {
        router.insert(host, prefix, i);
    }
    const PIECES: &[&str] = &[
        "/", "//", "hello", "deep", "function", "f", "spaces", "default", "ns", "invoke", "..",
        ".", "%2e", "%2E%2E", "%2F", "%2f", "%5C", "%", "%4", "%zz", "%41", "%7E", "%C3%A9",
        "\u{e9}", "?", "#", ";", "a", "b", "\\",
    ];
    const HOSTS: &[&str] = &[
        "api.example.com",
        "API.EXAMPLE.COM:443",
        "[::1]:8443",
        "[::1",
        ":",
        "",
        " h ",
        "\u{e9}:1",
    ];
    let input = (
        text(PIECES, 12),
        proptest::option::of(prop_oneof![
            select(HOSTS).prop_map(str::to_string),
            any::<String>()
        ]),
        proptest::option::of(soup(QUERY_PIECES, 4)),
        text(&["a", "/", "+", "#", "$SYS", ".", "*", ">", ""], 8),
        text(&["a", "/", "+", "#", "$SYS", ".", "*", ">", ""], 8),
    );
    fuzz(
        "request paths",
        4096,
        input,
        |(raw, host, query, pattern, topic)| {
            for t in &templates {
                let _ = t.matches(&raw);
            }
            let _ = topics::mqtt_matches(&pattern, &topic);
            let _ = topics::nats_matches(&pattern, &topic);
            let _ = topics::event_matches(&pattern, &topic);
            let _ = topics::matches(TopicMatch::ExactIgnoreCase, false, &pattern, &topic);
            let Ok(normal) = normalize_path(&raw) else {
                return false;
            };
            for t in &templates {
                let _ = t.matches(&normal.path);
            }
            if let Some(m) = router.lookup(host.as_deref(), &normal.path) {
                let _ = normal.climbs_above(m.prefix);
                let _ = strip_prefix(m.prefix, &normal.path, query.as_deref());
            }
            true
        },
    );
}
