//! The gRPC codec of the client API: prost messages, each encoded into room reserved for its
//! exact length.
//!
//! tonic's stock prost codec lets the message grow its buffer as it writes: a 1 MiB produce batch
//! went through about seven reallocations (8 KiB doubling up), each copying what was written so far
//! into fresh pages; in `shale bench produce` the kernel clearing those pages alone was a fifth of
//! the client's CPU. Reserving `encoded_len` first makes that one allocation and no copy.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// A prost codec whose encoder reserves each message's encoded length before writing it, and
/// whose decoder's buffer has room for large messages ([`DECODE_BUFFER_BYTES`]).
#[derive(Debug, Clone)]
pub struct SizedProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SizedProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for SizedProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedProstEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES))
    }
}

/// The encoder of [`SizedProstCodec`].
#[derive(Debug, Clone)]
pub struct SizedProstEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message> Encoder for SizedProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encoding a {}: {e}", std::any::type_name::<T>())))
    }
}

/// The room a call's receive buffer starts with, and takes again whenever it runs out (tonic's
/// default is 8 KiB). tonic copies each received frame into that buffer and, once it read a
/// message's length, reserves that length again on top of what is already there; the decoded
/// message's byte fields are slices of the buffer, so a buffer that still holds them cannot be
/// reused and each such reserve moved the whole message into a fresh allocation: a second copy of
/// every produce batch a leader received. With room for several messages the reserve is free
/// until the room is used up (README "One frame per message").
pub const DECODE_BUFFER_BYTES: usize = 4 << 20;

/// tonic's default: an encoded stream yields a chunk of messages once it holds this many bytes.
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;
