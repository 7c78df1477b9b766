//! The body of every request and response the proxy passes on: most are whole already (an
//! answer small enough to be read with its head, a request without a body, a local reply),
//! and those are held as they are, without a box per message; the rest stream through a box.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};

/// Why a body could not be read or written, whichever side it came from.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) enum Body {
    /// All of it (`None`: no body, or taken already).
    Whole(Option<Bytes>),
    Streaming(BoxBody<Bytes, BoxError>),
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body::Whole(None)
    }

    pub(crate) fn whole(data: impl Into<Bytes>) -> Body {
        Body::Whole(Some(data.into()))
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Whole(data) => data.is_none(),
            Body::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Streaming(body) => body.size_hint(),
        }
    }
}
