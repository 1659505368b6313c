//! The body of a request on the mesh transport: nothing (a CONNECT), the app's body as
//! it streams, or a body held in memory so that the request can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// A request body the outbound pool sends.
#[derive(Debug)]
pub(crate) enum MeshBody {
    /// The app's body, forwarded as it arrives; such a request is sent once.
    Streaming(Incoming),
    /// A body read whole (at most [`crate::config::routes::MAX_RETRY_BODY_BYTES`]):
    /// cheap to clone, so a retry sends the same bytes.
    Held(HeldBody),
}

/// A body in memory: its data, then its trailers, each yielded once per copy.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HeldBody {
    pub(crate) fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl MeshBody {
    /// No body at all (CONNECT, or a GET).
    pub(crate) fn empty() -> Self {
        Self::Held(HeldBody::default())
    }

    /// A copy for a retry, if this body can be sent again.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        match self {
            Self::Held(held) => Some(Self::Held(held.clone())),
            Self::Streaming(_) => None,
        }
    }
}

/// A copy of `request` to send again (to another endpoint, or as a retry), if its body
/// can be sent again.
pub(crate) fn try_copy(request: &http::Request<MeshBody>) -> Option<http::Request<MeshBody>> {
    let body = request.body().try_clone()?;
    let mut copy = http::Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

impl Body for MeshBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Streaming(incoming) => Pin::new(incoming).poll_frame(cx),
            Self::Held(held) => Poll::Ready(
                held.data
                    .take()
                    .map(Frame::data)
                    .or_else(|| held.trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(incoming) => incoming.is_end_stream(),
            Self::Held(held) => held.data.is_none() && held.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streaming(incoming) => incoming.size_hint(),
            Self::Held(held) => {
                SizeHint::with_exact(held.data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_held_body_yields_the_same_bytes_and_trailers_in_every_copy() {
        let trailers: HeaderMap = [("grpc-status".parse().unwrap(), "0".parse().unwrap())]
            .into_iter()
            .collect();
        let body = MeshBody::Held(HeldBody::new(Bytes::from_static(b"order"), Some(trailers)));
        let copy = body.try_clone().unwrap();
        for body in [body, copy] {
            assert_eq!(body.size_hint().exact(), Some(5));
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), "order");
        }
        assert!(MeshBody::empty().is_end_stream());
    }
}
