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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(b) => b.is_end_stream(),
            RequestBody::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(b) => b.size_hint(),
            RequestBody::Buffered(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RequestBody::Buffered(None) => SizeHint::with_exact(0),
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
}
