//! gRPC messages read straight from a request's HTTP/2 body, without tonic's receive buffer.
//!
//! tonic's `Streaming` copies every DATA frame it receives into the call's buffer and decodes
//! messages from there; a decoded message's byte fields (a follower's entries) are slices of that
//! buffer, so once a buffer holds live entries it cannot be reused, and the next message that
//! does not fit is moved into a fresh allocation sized for it (a second copy). On a long
//! multiplexed call that was every message once the call's first buffer was used up: each entry a
//! follower received was copied twice before it was decoded (README "Entries decoded where they
//! arrived").
//!
//! [`BodyMessages`] keeps the frames as the HTTP/2 layer hands them over (each frame's payload is
//! already its own `Bytes`) and decodes a message that lies within one frame from that frame's
//! bytes, so its byte fields are slices of the received frame: no copy at all. Only a message
//! cut across frames (larger than a frame, or straddling two) is put together into a buffer of
//! its exact length first (one copy). A frame's memory lives as long as a decoded field still
//! slices it, as with tonic's buffer.
//!
//! [`serve_call`] answers such a call as tonic's generated server does, and [`MethodFromBody`]
//! mounts such a method next to tonic's generated server for the others.
//!
//! The gRPC framing read: each message is a 1-byte compression flag (0: not compressed; Shale's
//! peers never compress, a flag of 1 is refused), a 4-byte big-endian length, then the message.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use tonic::codec::{EncodeBody, Encoder, SingleMessageCompressionOverride};
use tonic::codegen::{Body, BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// Bytes of a gRPC message's prefix: compression flag and length.
const PREFIX_BYTES: usize = 5;

/// The messages of type `M` a gRPC request body carries, decoded as they arrive (see the module
/// documentation). Ends when the body ends between two messages; a body that ends inside a
/// message, a compressed or oversized message, or bytes that do not decode as `M` end it with an
/// error status naming what was wrong.
pub struct BodyMessages<M> {
    body: tonic::body::Body,
    /// Received bytes not yet decoded, frame by frame, in order (none empty).
    frames: VecDeque<Bytes>,
    /// The total length of `frames`.
    buffered: usize,
    /// The largest message accepted (as tonic's `max_decoding_message_size`).
    max_message_bytes: usize,
    /// The body has no more frames.
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for BodyMessages<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyMessages")
            .field("frames", &self.frames.len())
            .field("buffered", &self.buffered)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<M: prost::Message + Default> BodyMessages<M> {
    /// Reads the messages of `body`, each at most `max_message_bytes` long.
    pub fn new(body: tonic::body::Body, max_message_bytes: usize) -> Self {
        Self { body, frames: VecDeque::new(), buffered: 0, max_message_bytes, ended: false, _message: PhantomData }
    }

    /// The next whole message among the frames received, if one is there.
    fn next_buffered(&mut self) -> Result<Option<M>, Status> {
        if self.buffered < PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_BYTES];
        self.peek(&mut prefix);
        let compressed = prefix[0];
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if compressed != 0 {
            return Err(Status::internal(format!(
                "protocol error: a {} message has compression flag {compressed}; this server takes \
                 uncompressed messages only",
                message_name::<M>()
            )));
        }
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "a {} message length too large: found {len} bytes, the limit is {} bytes",
                message_name::<M>(),
                self.max_message_bytes
            )));
        }
        if self.buffered < PREFIX_BYTES + len {
            return Ok(None);
        }
        self.skip(PREFIX_BYTES);
        let bytes = self.take(len);
        M::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a {} message: {e}", message_name::<M>())))
    }

    /// Copies the first `out.len()` buffered bytes into `out` (there are at least that many).
    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for frame in &self.frames {
            let n = frame.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&frame[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
        debug_assert_eq!(filled, out.len(), "peek past the buffered bytes");
    }

    /// Drops the first `n` buffered bytes (there are at least that many).
    fn skip(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let front = self.frames.front_mut().expect("skip within the buffered bytes");
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.frames.pop_front();
        }
    }

    /// Takes the first `len` buffered bytes (there are at least that many): a slice of the first
    /// frame when it holds them all, else a copy put together from the frames they span.
    fn take(&mut self, len: usize) -> Bytes {
        self.buffered -= len;
        let front = self.frames.front_mut().expect("take within the buffered bytes");
        if front.len() >= len {
            let bytes = front.split_to(len);
            if front.is_empty() {
                self.frames.pop_front();
            }
            return bytes;
        }
        let mut joined = BytesMut::with_capacity(len);
        while joined.len() < len {
            let front = self.frames.front_mut().expect("take within the buffered bytes");
            let n = front.len().min(len - joined.len());
            joined.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.frames.pop_front();
            }
        }
        joined.freeze()
    }
}

impl<M: prost::Message + Default> Stream for BodyMessages<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.next_buffered() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    // Nothing after a broken message can be read.
                    this.ended = true;
                    this.frames.clear();
                    this.buffered = 0;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if this.ended {
                if this.buffered == 0 {
                    return Poll::Ready(None);
                }
                let left = this.buffered;
                this.frames.clear();
                this.buffered = 0;
                return Poll::Ready(Some(Err(Status::internal(format!(
                    "Unexpected EOF: the request ended inside a {} message ({left} bytes of it received)",
                    message_name::<M>()
                )))));
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers of a request carry nothing for the messages.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        this.buffered += data.len();
                        this.frames.push_back(data);
                    }
                }
                Some(Err(status)) => {
                    this.ended = true;
                    this.frames.clear();
                    this.buffered = 0;
                    // As tonic's request streams: a sender that cancelled its call ended it.
                    if status.code() == Code::Cancelled {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None => this.ended = true,
            }
        }
    }
}

/// Answers one streaming call whose requests are read from `request`'s body as [`BodyMessages`]
/// of type `M` (each at most `max_decoding_bytes` long): `open` opens the call from them (the
/// connection's metadata and extensions kept, so peer certificates are seen as tonic passes
/// them); its answers are encoded with `encoder` (each at most `max_encoding_bytes`) as tonic's
/// generated server sends them, or its refusal is sent as the call's status.
pub async fn serve_call<M, E, S, Open, Opened>(
    request: http::Request<tonic::body::Body>,
    max_decoding_bytes: usize,
    encoder: E,
    max_encoding_bytes: usize,
    open: Open,
) -> http::Response<tonic::body::Body>
where
    M: prost::Message + Default,
    E: Encoder<Error = Status> + Send + 'static,
    S: Stream<Item = Result<E::Item, Status>> + Send + 'static,
    Open: FnOnce(tonic::Request<BodyMessages<M>>) -> Opened,
    Opened: std::future::Future<Output = Result<tonic::Response<S>, Status>>,
{
    let (parts, body) = request.into_parts();
    let messages = BodyMessages::<M>::new(body, max_decoding_bytes);
    match open(tonic::Request::from_http(http::Request::from_parts(parts, messages))).await {
        Ok(response) => answers_response(response, encoder, max_encoding_bytes),
        Err(status) => status.into_http(),
    }
}

/// The HTTP response of a streaming call whose answers are `response`'s stream, each encoded
/// with `encoder` (at most `max_message_bytes` long): what tonic's generated server sends, with
/// the response's metadata as headers.
fn answers_response<E, S>(
    response: tonic::Response<S>,
    encoder: E,
    max_message_bytes: usize,
) -> http::Response<tonic::body::Body>
where
    E: Encoder<Error = Status> + Send + 'static,
    S: Stream<Item = Result<E::Item, Status>> + Send + 'static,
{
    let (metadata, answers, extensions) = response.into_parts();
    let body = EncodeBody::new_server(
        encoder,
        answers,
        None,
        SingleMessageCompressionOverride::default(),
        Some(max_message_bytes),
    );
    let mut http = http::Response::new(tonic::body::Body::new(body));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    *http.extensions_mut() = extensions;
    http
}

/// What answers one method of a [`MethodFromBody`] service: the whole HTTP request in, the HTTP
/// response out.
pub type ServeMethod = Arc<
    dyn Fn(http::Request<tonic::body::Body>) -> BoxFuture<http::Response<tonic::body::Body>, Infallible> + Send + Sync,
>;

/// A gRPC service that is tonic's generated server `S` for every method but the one at `path`,
/// which `serve` answers (reading its requests with [`BodyMessages`]); mount it where `S` would
/// be mounted (it has `S`'s service name).
#[derive(Clone)]
pub struct MethodFromBody<S> {
    generated: S,
    path: &'static str,
    serve: ServeMethod,
}

impl<S> MethodFromBody<S> {
    /// `generated`, with the method at `path` (`/package.Service/Method`) answered by `serve`.
    pub fn new(generated: S, path: &'static str, serve: ServeMethod) -> Self {
        Self { generated, path, serve }
    }
}

impl<S> std::fmt::Debug for MethodFromBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodFromBody").field("path", &self.path).finish_non_exhaustive()
    }
}

impl<S: NamedService> NamedService for MethodFromBody<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for MethodFromBody<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<tonic::body::Body>, Infallible>,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == self.path { (self.serve)(request) } else { self.generated.call(request) }
    }
}

fn message_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use prost::Message;

    use crate::network::pb;

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn request(group: u64, entries: usize, entry_bytes: usize) -> pb::MultiplexRequest {
        let append = pb::AppendEntriesRequest {
            group_id: group,
            entries: (0..entries).map(|i| bytes::Bytes::from(vec![i as u8; entry_bytes])).collect(),
            ..Default::default()
        };
        pb::MultiplexRequest {
            items: vec![pb::SessionRequest {
                session: group,
                append: Some(append),
                end: false,
                open: true,
                once: false,
            }],
        }
    }

    /// A body whose data arrives in the given frames.
    fn body_of(frames: Vec<Vec<u8>>) -> tonic::body::Body {
        let chunks = frames.into_iter().map(|f| Ok::<_, Status>(http_body::Frame::data(Bytes::from(f))));
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(chunks)))
    }

    async fn read_all(body: tonic::body::Body, max: usize) -> Vec<Result<pb::MultiplexRequest, Status>> {
        BodyMessages::<pb::MultiplexRequest>::new(body, max).collect().await
    }

    #[tokio::test]
    async fn messages_cut_anywhere_across_frames_decode_whole_and_in_order() {
        let messages: Vec<_> = (1..=4).map(|g| request(g, g as usize, 3000)).collect();
        let wire: Vec<u8> = messages.iter().flat_map(framed).collect();
        for cut in [1, 2, 4, 5, 6, 100, 3000, 7001, wire.len() - 1, wire.len()] {
            let frames: Vec<Vec<u8>> = wire.chunks(cut).map(<[u8]>::to_vec).collect();
            let read: Vec<_> = read_all(body_of(frames), 1 << 20).await.into_iter().map(Result::unwrap).collect();
            assert_eq!(read, messages, "frames of {cut} bytes");
        }
    }

    #[tokio::test]
    async fn a_message_within_one_frame_is_decoded_from_that_frame_without_a_copy() {
        let frame = Bytes::from([framed(&request(7, 2, 5000)), framed(&request(8, 1, 100))].concat());
        let range = frame.as_ptr_range();
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter([Ok::<_, Status>(
            http_body::Frame::data(frame.clone()),
        )])));
        let read = read_all(body, 1 << 20).await;
        assert_eq!(read.len(), 2);
        for message in read {
            let message = message.unwrap();
            for entry in &message.items[0].append.as_ref().unwrap().entries {
                assert!(range.contains(&entry.as_ptr()), "an entry is a slice of the received frame");
            }
        }
    }

    #[tokio::test]
    async fn a_body_ending_inside_a_message_is_an_error_naming_it() {
        let wire = framed(&request(1, 1, 1000));
        let read = read_all(body_of(vec![wire[..600].to_vec()]), 1 << 20).await;
        assert_eq!(read.len(), 1);
        let status = read.into_iter().next().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("ended inside a MultiplexRequest"), "{}", status.message());
    }

    #[tokio::test]
    async fn oversized_compressed_and_undecodable_messages_are_refused_with_what_was_wrong() {
        let wire = framed(&request(1, 1, 1000));
        let read = read_all(body_of(vec![wire.clone()]), 500).await;
        let status = read.into_iter().next().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(
            status
                .message()
                .contains(&format!("message length too large: found {} bytes, the limit is 500 bytes", wire.len() - 5)),
            "{}",
            status.message()
        );

        let mut compressed = wire.clone();
        compressed[0] = 1;
        let status = read_all(body_of(vec![compressed]), 1 << 20).await.into_iter().next().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("compression flag 1"), "{}", status.message());

        // A length-delimited field whose length runs past the message.
        let garbage = [0u8, 0, 0, 0, 3, 0x0a, 0x7f, 0x01];
        let read = read_all(body_of(vec![garbage.to_vec(), wire]), 1 << 20).await;
        assert_eq!(read.len(), 1, "nothing is read after a broken message");
        let status = read.into_iter().next().unwrap().unwrap_err();
        assert!(status.message().contains("decoding a MultiplexRequest"), "{}", status.message());
    }

    #[tokio::test]
    async fn a_cancelled_body_ends_the_messages_and_other_errors_are_passed_on() {
        let wire = framed(&request(1, 1, 10));
        for (status, ends_quietly) in [(Status::cancelled("gone"), true), (Status::unavailable("reset"), false)] {
            let frames = vec![Ok(http_body::Frame::data(Bytes::from(wire.clone()))), Err(status)];
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
            let read = read_all(body, 1 << 20).await;
            assert!(read[0].is_ok());
            assert_eq!(read.len(), if ends_quietly { 1 } else { 2 });
        }
    }
}
