//! The body of every request and response the proxy passes on: most are whole already (an
//! answer small enough to be read with its head, a request without a body, a local reply),
//! and those are held as they are, without a box per message; the rest stream through a box.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A connection after a protocol switch: bytes both ways.
pub(crate) trait Tunnel: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Tunnel for T {}

/// An upstream's side of a switch it agreed to (`crate::upgrade`): its connection, and what
/// it sent after its `101`.
pub(crate) struct Switched {
    pub io: Box<dyn Tunnel>,
    pub read_ahead: Bytes,
}

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

    /// Keeps what it takes to send this body again should the try it goes to take none of it:
    /// a copy of one held whole; a streaming one is lent to the try instead, and comes back
    /// from a try that read none of it (a connection refused before the request was written).
    pub(crate) fn keep_again(&mut self) -> Option<Again> {
        match self {
            Body::Whole(_) => self.copy().map(Again::Copy),
            Body::Streaming(_) => {
                let (back, again) = oneshot::channel();
                let body = std::mem::replace(self, Body::empty());
                *self = Body::Streaming(OnLoan { body, back: Some(back) }.boxed());
                Some(Again::Lent(again))
            }
            Body::Switched(_) => None,
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

/// A response made by the agent: plain text for HTTP, a trailers-only status for gRPC.
pub(crate) fn local_reply(grpc: bool, status: StatusCode, grpc_code: u8, message: &str) -> Response<Body> {
    if grpc {
        let mut r = Response::new(Body::empty());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(grpc_code)));
        if let Ok(v) = HeaderValue::try_from(message) {
            h.insert("grpc-message", v);
        }
        return r;
    }
    let mut r = Response::new(Body::whole(format!("{message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// What [`Body::keep_again`] kept.
pub(crate) enum Again {
    Copy(Body),
    Lent(oneshot::Receiver<Body>),
}

impl Again {
    /// The body once more, unless the try it was lent to read some of it.
    pub(crate) fn take(self) -> Option<Body> {
        match self {
            Again::Copy(body) => Some(body),
            Again::Lent(mut back) => back.try_recv().ok(),
        }
    }
}

/// A streaming body lent to one try: dropped before a frame of it was read, it goes back.
struct OnLoan {
    body: Body,
    /// `None` once a frame was read.
    back: Option<oneshot::Sender<Body>>,
}

impl Drop for OnLoan {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(std::mem::replace(&mut self.body, Body::empty()));
        }
    }
}

impl hyper::body::Body for OnLoan {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        this.back = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

    fn streamed(parts: &[&'static str]) -> Body {
        let frames = parts.iter().map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(*p))));
        Body::streaming(StreamBody::new(tokio_stream::iter(frames.collect::<Vec<_>>())))
    }

    #[tokio::test]
    async fn a_body_kept_again_comes_back_whole_from_a_try_that_read_none_of_it() {
        let mut whole = Body::whole("all");
        let copy = whole.keep_again().unwrap();
        drop(whole.collect().await.unwrap());
        assert_eq!(copy.take().unwrap().collect().await.unwrap().to_bytes(), "all", "a copy, read or not");

        let mut unread = streamed(&["a", "b"]);
        let again = unread.keep_again().unwrap();
        assert_eq!(unread.size_hint().exact(), None, "lent as it is");
        drop(unread);
        let back = again.take().expect("dropped unread: it comes back");
        assert_eq!(back.collect().await.unwrap().to_bytes(), "ab", "whole");

        let mut begun = streamed(&["a", "b"]);
        let again = begun.keep_again().unwrap();
        let first = begun.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        drop(begun);
        assert!(again.take().is_none(), "what a try began to read is not sent again");
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
