//! The gRPC codec of the Raft transport: tonic's prost codec, with a receive buffer that has room
//! for large messages.
//!
//! tonic copies each received frame into a call's buffer and, once it read a message's length,
//! reserves that length again on top of what is already there. A decoded AppendEntries' entries
//! are slices of that buffer, so a buffer that still holds earlier entries cannot be reused, and
//! with tonic's 8 KiB default each such reserve moved the whole message (up to 4 MiB of entries on
//! a multiplexed call) into a fresh allocation: a second copy of everything a follower received.
//! With [`DECODE_BUFFER_BYTES`] of room the reserve is free until the room is used up.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The room a call's receive buffer starts with, and takes again whenever it runs out.
pub const DECODE_BUFFER_BYTES: usize = 4 << 20;

/// tonic's default: an encoded stream yields a chunk of messages once it holds this many bytes.
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;

/// tonic's prost codec with [`DECODE_BUFFER_BYTES`] of receive buffer (the generated client and
/// server of `raft.proto` use it: `build.rs`).
#[derive(Debug, Clone)]
pub struct RaftCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for RaftCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for RaftCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES))
    }
}
