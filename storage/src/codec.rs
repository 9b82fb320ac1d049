//! Per-record payload compression: the [`Codec`] trait, its three codecs and their registry.
//!
//! A record is compressed only when that makes it smaller; otherwise it is stored as is under
//! [`CodecId::NONE`]. Decompression is always bounded by the record's declared uncompressed length,
//! so a hostile payload cannot expand past it (no decompression bombs).

use std::fmt;
use std::io::Read;
use std::sync::Arc;

/// The id byte a record stores to name its codec. Part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodecId(pub u8);

impl CodecId {
    /// Stored as is.
    pub const NONE: CodecId = CodecId(0);
    /// LZ4 block format (lz4_flex), no size prefix.
    pub const LZ4: CodecId = CodecId(1);
    /// Zstandard frame.
    pub const ZSTD: CodecId = CodecId(2);
}

/// Why a codec could not decode a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The compressed bytes are not valid for this codec.
    #[error("invalid compressed data: {0}")]
    Invalid(String),
    /// The payload decodes to another length than the record declares.
    #[error("decoded length {actual} differs from declared length {declared}")]
    LengthMismatch {
        /// The length stored in the record.
        declared: usize,
        /// The length decoded (capped at `declared + 1`).
        actual: usize,
    },
}

/// A payload compressor. Implementations must be deterministic only in what they decode:
/// two replicas may compress differently, the chain hash is over the uncompressed payload.
pub trait Codec: Send + Sync + fmt::Debug {
    /// The id stored in each record compressed with this codec.
    fn id(&self) -> CodecId;
    /// A short name for errors and metrics.
    fn name(&self) -> &'static str;
    /// Appends the compressed form of `input` to `out`.
    fn compress(&self, input: &[u8], out: &mut Vec<u8>);
    /// Decodes `input`, which must expand to exactly `declared_len` bytes.
    fn decompress(&self, input: &[u8], declared_len: usize) -> Result<Vec<u8>, CodecError>;
}

/// Stores payloads as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoneCodec;

impl Codec for NoneCodec {
    fn id(&self) -> CodecId {
        CodecId::NONE
    }
    fn name(&self) -> &'static str {
        "none"
    }
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(input);
    }
    fn decompress(&self, input: &[u8], declared_len: usize) -> Result<Vec<u8>, CodecError> {
        if input.len() != declared_len {
            return Err(CodecError::LengthMismatch { declared: declared_len, actual: input.len() });
        }
        Ok(input.to_vec())
    }
}

/// LZ4 block compression (fast, modest ratio).
#[derive(Debug, Default, Clone, Copy)]
pub struct Lz4Codec;

impl Codec for Lz4Codec {
    fn id(&self) -> CodecId {
        CodecId::LZ4
    }
    fn name(&self) -> &'static str {
        "lz4"
    }
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&lz4_flex::block::compress(input));
    }
    fn decompress(&self, input: &[u8], declared_len: usize) -> Result<Vec<u8>, CodecError> {
        // The block decoder writes at most `declared_len` bytes: it errors rather than grow.
        let out = lz4_flex::block::decompress(input, declared_len).map_err(|e| CodecError::Invalid(e.to_string()))?;
        if out.len() != declared_len {
            return Err(CodecError::LengthMismatch { declared: declared_len, actual: out.len() });
        }
        Ok(out)
    }
}

/// Zstandard compression at a configurable level.
#[derive(Debug, Clone, Copy)]
pub struct ZstdCodec {
    level: i32,
}

impl ZstdCodec {
    /// The level used when none is given.
    pub const DEFAULT_LEVEL: i32 = 3;

    /// A codec compressing at `level` (clamped to zstd's supported range).
    pub fn new(level: i32) -> Self {
        let range = zstd::compression_level_range();
        Self { level: level.clamp(*range.start(), *range.end()) }
    }

    /// The compression level in use.
    pub fn level(&self) -> i32 {
        self.level
    }
}

impl Default for ZstdCodec {
    fn default() -> Self {
        Self::new(Self::DEFAULT_LEVEL)
    }
}

impl Codec for ZstdCodec {
    fn id(&self) -> CodecId {
        CodecId::ZSTD
    }
    fn name(&self) -> &'static str {
        "zstd"
    }
    fn compress(&self, input: &[u8], out: &mut Vec<u8>) {
        match zstd::bulk::compress(input, self.level) {
            Ok(c) => out.extend_from_slice(&c),
            // zstd only fails here on allocation failure; fall back to a stored frame-less copy
            // is not possible under this id, so store an uncompressible marker: empty output
            // makes `compress_payload` keep the raw payload.
            Err(_) => out.clear(),
        }
    }
    fn decompress(&self, input: &[u8], declared_len: usize) -> Result<Vec<u8>, CodecError> {
        // Stream-decode with a hard cap of declared_len + 1 bytes, so a bomb stops early.
        let decoder = zstd::stream::read::Decoder::new(input).map_err(|e| CodecError::Invalid(e.to_string()))?;
        let mut out = Vec::with_capacity(declared_len);
        let read = decoder
            .take(declared_len as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| CodecError::Invalid(e.to_string()))?;
        if read != declared_len {
            return Err(CodecError::LengthMismatch { declared: declared_len, actual: read });
        }
        Ok(out)
    }
}

/// Which codec a stream compresses new records with. Configuration, not on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecKind {
    /// No compression.
    #[default]
    None,
    /// LZ4.
    Lz4,
    /// Zstandard at the given level.
    Zstd {
        /// Compression level.
        level: i32,
    },
}

impl CodecKind {
    /// The codec this configuration names.
    pub fn codec(self) -> Arc<dyn Codec> {
        match self {
            CodecKind::None => Arc::new(NoneCodec),
            CodecKind::Lz4 => Arc::new(Lz4Codec),
            CodecKind::Zstd { level } => Arc::new(ZstdCodec::new(level)),
        }
    }
}

/// Finds the codec for a stored [`CodecId`].
#[derive(Debug, Clone)]
pub struct CodecRegistry {
    codecs: Vec<Arc<dyn Codec>>,
}

impl Default for CodecRegistry {
    fn default() -> Self {
        Self { codecs: vec![Arc::new(NoneCodec), Arc::new(Lz4Codec), Arc::new(ZstdCodec::default())] }
    }
}

impl CodecRegistry {
    /// A registry with the three built-in codecs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a codec under its id.
    pub fn register(&mut self, codec: Arc<dyn Codec>) {
        self.codecs.retain(|c| c.id() != codec.id());
        self.codecs.push(codec);
    }

    /// The codec stored under `id`, if known.
    pub fn get(&self, id: CodecId) -> Option<&Arc<dyn Codec>> {
        self.codecs.iter().find(|c| c.id() == id)
    }
}

/// Compresses `payload` with `codec` if that makes it smaller.
///
/// Returns the codec id actually used and the stored bytes (`None` means: store `payload` as is).
pub fn compress_payload(codec: &dyn Codec, payload: &[u8]) -> (CodecId, Option<Vec<u8>>) {
    if codec.id() == CodecId::NONE || payload.is_empty() {
        return (CodecId::NONE, None);
    }
    let mut out = Vec::with_capacity(payload.len());
    codec.compress(payload, &mut out);
    if !out.is_empty() && out.len() < payload.len() { (codec.id(), Some(out)) } else { (CodecId::NONE, None) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. ".repeat(40)
    }

    #[test]
    fn every_codec_round_trips() {
        let reg = CodecRegistry::new();
        for kind in [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 5 }] {
            let codec = kind.codec();
            let (id, stored) = compress_payload(codec.as_ref(), &sample());
            let stored = stored.unwrap_or_else(sample);
            let back = reg.get(id).unwrap().decompress(&stored, sample().len()).unwrap();
            assert_eq!(back, sample(), "{kind:?}");
        }
    }

    #[test]
    fn incompressible_payload_is_kept_raw() {
        let noise: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (id, stored) = compress_payload(&ZstdCodec::default(), &noise);
        assert_eq!(id, CodecId::NONE);
        assert!(stored.is_none());
    }

    #[test]
    fn bombs_are_refused() {
        let big = vec![0u8; 4 << 20];
        for codec in [Arc::new(Lz4Codec) as Arc<dyn Codec>, Arc::new(ZstdCodec::default())] {
            let (_, stored) = compress_payload(codec.as_ref(), &big);
            let stored = stored.unwrap();
            // The record claims 1 KiB: decoding must stop, not allocate 4 MiB.
            let err = codec.decompress(&stored, 1024).unwrap_err();
            assert!(matches!(err, CodecError::LengthMismatch { .. } | CodecError::Invalid(_)), "{err}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [Arc::new(Lz4Codec) as Arc<dyn Codec>, Arc::new(ZstdCodec::default())] {
            assert!(codec.decompress(&[0xff; 37], 100).is_err());
        }
    }
}
