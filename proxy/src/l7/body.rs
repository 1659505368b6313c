//! The bodies of a forwarded request: the request body on its way to the app (counted,
//! capped, timed, trailers screened) and the app's response body on its way back, which
//! holds the request's place in the live table and its log line until it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::StatusCode;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Sleep;

use super::exchange::Exchange;
use crate::request_shape::screen_trailers;
use crate::tunnels::TunnelGuard;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the caller gets: the app's body or a refusal's.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// What ended a request body early.
pub(super) const BODY_OK: u8 = 0;
pub(super) const BODY_TOO_LARGE: u8 = 1;
pub(super) const BODY_TIMED_OUT: u8 = 2;

/// What an allowed request holds until its response ends.
pub(super) struct Held {
    pub(super) guard: TunnelGuard,
    pub(super) cancelled: oneshot::Receiver<()>,
    pub(super) permit: OwnedSemaphorePermit,
}

/// The request body on its way to the app: counted, capped and timed.
pub(super) struct RequestBody {
    pub(super) inner: Incoming,
    pub(super) received: Arc<AtomicU64>,
    pub(super) max: Option<u64>,
    pub(super) deadline: Pin<Box<Sleep>>,
    /// One of the `BODY_` values, for the refusal after the app's client failed.
    pub(super) state: Arc<AtomicU8>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers cannot carry identity headers to the app either.
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        screen_trailers(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if this.max.is_some_and(|max| total > max) {
                        this.state.store(BODY_TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body too large".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.state.store(BODY_TIMED_OUT, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("request body timed out".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The app's response body on its way to the peer. It holds the request's registration
/// (so a re-check can cut it), its concurrency permit, and its log line, written when the
/// body ends, fails or is dropped.
pub(super) struct ResponseBody {
    pub(super) inner: Incoming,
    pub(super) bytes: u64,
    pub(super) status: StatusCode,
    pub(super) exchange: Option<Exchange>,
    pub(super) held: Option<Held>,
}

impl ResponseBody {
    fn finish(&mut self) {
        self.held = None;
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.status, self.bytes);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(held) = &mut this.held
            && Pin::new(&mut held.cancelled).poll(cx).is_ready()
        {
            this.finish();
            return Poll::Ready(Some(Err("closed: the request is no longer allowed".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}
