//! Request and response bodies: the body type every response uses, and the size-capped
//! request body handed to functions.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

/// The body of every response wasmgate sends (the guest's, or a gateway error's).
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The request body a function reads: streamed from the client, or already buffered
/// (when authentication needed to see it).
pub enum RequestBody<B> {
    Streaming(B),
    Buffered(Option<Bytes>),
    /// What was read before the function was admitted, then the rest as it streams.
    Prefixed(Option<Bytes>, B),
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Buffered(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Prefixed(prefix, b) => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(b).poll_frame(cx).map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Buffered(data) => data.is_none(),
            RequestBody::Prefixed(prefix, b) => prefix.is_none() && b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Buffered(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RequestBody::Buffered(None) => SizeHint::with_exact(0),
            RequestBody::Prefixed(prefix, b) => {
                let have = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = b.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + have);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + have);
                }
                hint
            }
        }
    }
}

/// The digest a verified signature claims for a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha256([u8; 32]),
    Md5([u8; 16]),
}

/// A running hash of one of the [`Digest`] kinds.
enum Hasher {
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
}

impl Hasher {
    fn new(kind: &Digest) -> Hasher {
        use sha2::Digest as _;
        match kind {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Md5(_) => Hasher::Md5(md5::Md5::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    /// Whether what was hashed matches `expected` (constant time).
    fn matches(self, expected: &Digest) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq;
        match (self, expected) {
            (Hasher::Sha256(h), Digest::Sha256(want)) => h.finalize()[..].ct_eq(&want[..]).into(),
            (Hasher::Md5(h), Digest::Md5(want)) => h.finalize()[..].ct_eq(&want[..]).into(),
            _ => false,
        }
    }
}

impl Digest {
    /// Whether `data` (a whole body) matches.
    pub fn matches(&self, data: &[u8]) -> bool {
        let mut h = Hasher::new(self);
        h.update(data);
        h.matches(self)
    }
}

/// A body checked, as it streams, against the digest its (verified) signature claims. The
/// function never gets the end of an unverified body: each data frame is held back until the
/// next one arrives, and the last one (with the end of the body) is handed on only once the
/// digest matches; otherwise the body fails and the flag is set, so the pipeline answers 403
/// `SignatureNotMatch`. A function can read all but the last frame of a forged body before
/// the mismatch is known, but never its end, so it cannot complete on it.
pub struct HashChecked<B> {
    inner: B,
    /// The expected digest and the running hash; `None` once checked (or with no digest).
    /// Boxed, as are the trailers: most bodies have neither, and every request's body is
    /// moved several times on its way to the function.
    check: Option<Box<(Digest, Hasher)>>,
    /// The data frame held back until the next one (or the verdict) arrives.
    held: Option<Bytes>,
    /// Trailers that ended the body, handed on after the held frame.
    trailers: Option<Box<Frame<Bytes>>>,
    /// The inner body has ended (it is not polled again).
    ended: bool,
    mismatch: Arc<AtomicBool>,
}

impl<B> HashChecked<B> {
    pub fn new(inner: B, expected: Option<Digest>) -> (Self, Arc<AtomicBool>) {
        let mismatch = Arc::new(AtomicBool::new(false));
        (
            HashChecked {
                inner,
                check: expected.map(|e| {
                    let h = Hasher::new(&e);
                    Box::new((e, h))
                }),
                held: None,
                trailers: None,
                ended: false,
                mismatch: mismatch.clone(),
            },
            mismatch,
        )
    }

    /// The body has ended: checks the digest; true when it matches.
    fn verdict(&mut self) -> bool {
        self.ended = true;
        match self.check.take() {
            Some(check) => {
                let (expected, hasher) = *check;
                hasher.matches(&expected)
            }
            None => true,
        }
    }
}

impl<B> Body for HashChecked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.check.is_none() {
            // Checked (or nothing to check): what was held back, then the rest.
            if let Some(d) = this.held.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(*t)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(None) => None,
            };
            let frame = match frame.map(Frame::into_data) {
                Some(Ok(data)) => {
                    if let Some(check) = this.check.as_mut() {
                        check.1.update(&data);
                    }
                    match this.held.replace(data) {
                        Some(previous) => return Poll::Ready(Some(Ok(Frame::data(previous)))),
                        None => continue,
                    }
                }
                Some(Err(trailers)) => Some(trailers),
                None => None,
            };
            // The end of the body (or its trailers): the verdict decides what follows.
            if !this.verdict() {
                this.held = None;
                this.mismatch.store(true, Ordering::SeqCst);
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestDenied)));
            }
            this.trailers = frame.map(Box::new);
            if let Some(d) = this.held.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            return Poll::Ready(this.trailers.take().map(|t| Ok(*t)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.check.is_none()
            && self.held.is_none()
            && self.trailers.is_none()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why reading a body before admission stopped.
#[derive(Debug)]
pub enum PrefetchError {
    /// The client paused longer than the idle timeout between two chunks.
    Stalled,
    /// More than the limit arrived.
    TooLarge,
    /// The connection failed.
    Read(String),
}

/// The bytes one connection's requests may hold read ahead of their functions, together
/// (`limits.connection_buffer_bytes`): without it, an HTTP/2 connection's 256 streams could
/// each hold a whole `body_buffer_bytes`.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    left: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

impl ReadBudget {
    pub fn new(max: usize) -> ReadBudget {
        ReadBudget {
            left: Arc::new(std::sync::atomic::AtomicUsize::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes up to `want` bytes (what is left, if less); they come back when the grant is
    /// dropped.
    pub fn take(&self, want: usize) -> Grant {
        let mut granted = 0;
        let _ = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                granted = want.min(left);
                Some(left - granted)
            });
        Grant {
            left: self.left.clone(),
            bytes: granted,
        }
    }
}

/// Bytes of a [`ReadBudget`] held by one request.
#[derive(Debug)]
pub struct Grant {
    left: Arc<std::sync::atomic::AtomicUsize>,
    pub bytes: usize,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.left.fetch_add(self.bytes, Ordering::SeqCst);
    }
}

/// Reads what a slow sender would otherwise make a function wait for: up to `buffer`
/// bytes, with at most `idle` between two chunks. The body comes back whole when it ended
/// within `buffer` (at most `limit` bytes), else as what was read followed by the rest.
pub async fn prefetch<B>(
    mut body: B,
    buffer: usize,
    limit: u64,
    idle: std::time::Duration,
) -> Result<RequestBody<B>, PrefetchError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut read = bytes::BytesMut::new();
    loop {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Some(read.freeze())));
        }
        if read.len() >= buffer {
            return Ok(RequestBody::Prefixed(Some(read.freeze()), body));
        }
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(PrefetchError::Stalled),
            Ok(None) => return Ok(RequestBody::Buffered(Some(read.freeze()))),
            Ok(Some(Err(e))) => return Err(PrefetchError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                    if read.len() as u64 > limit {
                        return Err(PrefetchError::TooLarge);
                    }
                }
            }
        }
    }
}

/// Reads a whole body, refusing with `None` once it passes `limit` bytes.
pub async fn collect_limited<B>(
    body: B,
    limit: u64,
) -> Result<Option<Bytes>, wasmtime_wasi_http::Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (limited, too_large) = LimitedBody::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(Some(c.to_bytes())),
        Err(_) if too_large.load(Ordering::SeqCst) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A request body that fails once more than `limit` bytes have been read, and records that
/// it did so the pipeline can answer 400 EntityTooLarge instead of the function's response.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        (
            LimitedBody {
                inner,
                remaining: limit,
                limit,
                exceeded: exceeded.clone(),
            },
            exceeded,
        )
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.exceeded.store(true, Ordering::SeqCst);
                        self.remaining = 0;
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(self.limit)),
                        )));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body with a deadline for its last byte (`request_timeout_ms`): once the
/// deadline passes while the client still owes bytes, the body fails and the flag is set, so
/// the pipeline answers 408 `RequestTimeout` whatever stage was reading it. A body that
/// arrives before the deadline never creates a timer.
pub struct Deadline<B> {
    inner: B,
    at: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, at: tokio::time::Instant) -> (Self, Arc<AtomicBool>) {
        let expired = Arc::new(AtomicBool::new(false));
        (
            Deadline {
                inner,
                at,
                timer: None,
                expired: expired.clone(),
            },
            expired,
        )
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.expired.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                let at = self.at;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.expired.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(
                        wasmtime_wasi_http::Error::ConnectionReadTimeout,
                    )));
                }
                Poll::Pending
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_limit_fails_and_is_recorded() {
        let (body, flag) = LimitedBody::new(Full::new(Bytes::from(vec![0u8; 100])), 10);
        assert!(body.collect().await.is_err());
        assert!(flag.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn at_the_limit_passes() {
        let (body, flag) = LimitedBody::new(Full::new(Bytes::from(vec![0u8; 10])), 10);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn prefetch_buffers_small_bodies_and_prefixes_large_ones() {
        let idle = std::time::Duration::from_secs(5);
        let small = Full::new(Bytes::from_static(b"hello"));
        match prefetch(small, 1024, 1 << 20, idle).await.unwrap() {
            RequestBody::Buffered(Some(b)) => assert_eq!(&b[..], b"hello"),
            _ => panic!("a small body is read whole"),
        }
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 400]))))
            .collect();
        let large = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let body = prefetch(large, 500, 1 << 20, idle).await.unwrap();
        assert!(matches!(body, RequestBody::Prefixed(Some(ref p), _) if p.len() == 800));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1600);
    }

    #[tokio::test]
    async fn a_stalled_body_is_reported() {
        let (_tx, rx) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let body = http_body_util::StreamBody::new(rx);
        let r = prefetch(body, 1024, 1 << 20, std::time::Duration::from_millis(20)).await;
        assert!(matches!(r, Err(PrefetchError::Stalled)));
    }
}
