//! The body of every request and response the proxy passes on: most are whole already (an
//! answer small enough to be read with its head, a request without a body, a local reply),
//! and those are held as they are, without a box per message; the rest stream through a box.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};

use crate::upgrade::Switched;

/// Why a body could not be read or written, whichever side it came from.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) enum Body {
    /// All of it (`None`: no body, or taken already).
    Whole(Option<Bytes>),
    Streaming(BoxBody<Bytes, BoxError>),
    /// An upstream's `101 Switching Protocols` has no body; what follows it on its
    /// connection is the protocol switched to, handed back with it.
    Switched(Box<Switched>),
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body::Whole(None)
    }

    /// `data` as the whole body; no bytes at all are no body.
    pub(crate) fn whole(data: impl Into<Bytes>) -> Body {
        let data = data.into();
        Body::Whole((!data.is_empty()).then_some(data))
    }

    /// The same body once more, for a request sent again: only one held whole can be.
    pub(crate) fn copy(&self) -> Option<Body> {
        match self {
            Body::Whole(data) => Some(Body::Whole(data.clone())),
            Body::Streaming(_) | Body::Switched(_) => None,
        }
    }

    /// `body` as it comes; one that has ended already is held as none.
    pub(crate) fn streaming<B>(body: B) -> Body
    where
        B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static,
    {
        if body.is_end_stream() { Body::empty() } else { Body::Streaming(body.map_err(Into::into).boxed()) }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Streaming(body) => Pin::new(body).poll_frame(cx),
            Body::Switched(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(data) => data.is_none(),
            Body::Streaming(body) => body.is_end_stream(),
            Body::Switched(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Streaming(body) => body.size_hint(),
            Body::Switched(_) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Body as _;

    use super::*;

    #[tokio::test]
    async fn a_whole_body_is_one_frame_of_its_exact_size_and_nothing_is_no_body() {
        let body = Body::whole("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        for nothing in [Body::whole(""), Body::empty(), Body::streaming(Full::new(Bytes::new()))] {
            assert!(nothing.is_end_stream(), "ended before a frame: HTTP/2 sends END_STREAM on the head");
            assert_eq!(nothing.size_hint().exact(), Some(0));
        }
    }

    #[tokio::test]
    async fn a_streaming_body_passes_its_frames_and_trailers_on() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames =
            [Ok::<_, BoxError>(Frame::data(Bytes::from("a"))), Ok(Frame::trailers(trailers.clone()))];
        let body = Body::streaming(StreamBody::new(tokio_stream::iter(frames)));
        assert!(matches!(body, Body::Streaming(_)));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "a");
    }
}
