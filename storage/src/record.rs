//! Encoding and decoding of records and segment headers (layouts in [`crate::format`]).
//!
//! Decoding never trusts a length field: every read is bounds-checked against the buffer and
//! against [`format::record::MAX_PAYLOAD_LEN`], and every defect is a value, never a panic.

use std::path::Path;

use crate::byteio::{ByteError, ByteReader, ByteWriter};
use crate::codec::CodecId;
use crate::error::{CorruptionReason, Result, StorageError};
use crate::format::{record as rec, segment as seg};
use crate::types::{ChainHash, Offset, StreamId};

/// One record as found in a buffer (payload not yet decompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordView {
    pub offset: Offset,
    pub codec: CodecId,
    pub append_time_ms: u64,
    pub prev_hash: ChainHash,
    pub uncompressed_len: usize,
    /// Where the stored payload lies in the buffer.
    pub payload_at: usize,
    pub stored_len: usize,
    /// The whole encoded length.
    pub len: usize,
}

impl RecordView {
    /// The stored payload bytes inside `buf` (the buffer the view was decoded from).
    #[cfg(test)]
    pub fn stored<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_at..self.payload_at + self.stored_len]
    }
}

/// Why bytes at a position are not a whole, valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordDefect {
    pub reason: CorruptionReason,
    /// How far into the buffer the record claims to extend (from its length field), when the
    /// header could be read: decides whether a defect at the end of a file is a torn write.
    pub claimed_end: Option<usize>,
}

/// Appends one encoded record to `out`, its CRC field left zero for [`seal_record`] to fill in
/// (possibly on another thread: the CRC is a good share of the encoding work).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    offset: Offset,
    codec: CodecId,
    append_time_ms: u64,
    prev_hash: &ChainHash,
    uncompressed_len: usize,
    stored: &[u8],
) {
    debug_assert!(stored.len() <= rec::MAX_PAYLOAD_LEN && uncompressed_len <= rec::MAX_PAYLOAD_LEN);
    debug_assert!(codec != CodecId::NONE || stored.len() == uncompressed_len);
    let mut w = ByteWriter::append_to(out);
    w.reserve(rec::encoded_len(stored.len()));
    w.u8(rec::START_MARKER).u8(rec::KIND_DATA).u8(codec.0).u8(0);
    w.u64(offset.get()).u64(append_time_ms).raw(&prev_hash.0);
    w.u32(uncompressed_len as u32).u32(stored.len() as u32);
    debug_assert_eq!(w.len(), rec::HEADER_LEN);
    w.raw(stored).u32(0).u8(rec::END_MARKER);
    debug_assert_eq!(w.len(), rec::encoded_len(stored.len()));
}

/// Fills in the CRC of one whole encoded record (which covers every byte before it).
pub(crate) fn seal_record(record: &mut [u8]) {
    let crc_at = record.len() - rec::TRAILER_LEN;
    let crc = crc32fast::hash(&record[..crc_at]);
    record[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record starting at `at` in `buf`.
pub(crate) fn decode_record(buf: &[u8], at: usize) -> std::result::Result<RecordView, RecordDefect> {
    let defect = |reason, claimed_end| Err(RecordDefect { reason, claimed_end });
    let mut r = ByteReader::new("record", buf.get(at..).unwrap_or_default());
    // The whole header, or an error that it needs all of its bytes.
    let header = |r: &mut ByteReader<'_>| -> std::result::Result<_, ByteError> {
        r.require(rec::HEADER_LEN)?;
        Ok((r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u64()?, r.u64()?, r.array::<32>()?, r.u32()?, r.u32()?))
    };
    let (start, kind, codec, flags, offset, append_time_ms, prev_hash, uncompressed_len, stored_len) =
        match header(&mut r) {
            Ok(h) => h,
            Err(e) => return defect(e.into(), None),
        };
    if start != rec::START_MARKER {
        return defect(CorruptionReason::BadMarker("record start marker missing"), None);
    }
    let stored_len = stored_len as usize;
    if stored_len > rec::MAX_PAYLOAD_LEN {
        return defect(
            CorruptionReason::BadLength { length: stored_len as u64, limit: rec::MAX_PAYLOAD_LEN as u64 },
            None,
        );
    }
    let len = rec::encoded_len(stored_len);
    let claimed_end = Some(at + len);
    // The payload and trailer, or an error that the record needs all of its bytes.
    let rest = |r: &mut ByteReader<'_>| -> std::result::Result<_, ByteError> {
        r.require(stored_len + rec::TRAILER_LEN)?;
        r.bytes(stored_len)?;
        let computed = crc32fast::hash(r.consumed());
        Ok((r.u32()?, computed, r.u8()?))
    };
    let (stored_crc, computed, end) = match rest(&mut r) {
        Ok(t) => t,
        Err(e) => return defect(e.into(), claimed_end),
    };
    if stored_crc != computed {
        return defect(CorruptionReason::CrcMismatch { stored: stored_crc, computed }, claimed_end);
    }
    if end != rec::END_MARKER {
        return defect(CorruptionReason::BadMarker("record end marker missing"), claimed_end);
    }
    if kind != rec::KIND_DATA {
        return defect(CorruptionReason::InvalidField { field: "record kind", value: kind.into() }, claimed_end);
    }
    if flags != 0 {
        return defect(CorruptionReason::InvalidField { field: "record flags", value: flags.into() }, claimed_end);
    }
    let codec = CodecId(codec);
    let uncompressed_len = uncompressed_len as usize;
    if uncompressed_len > rec::MAX_PAYLOAD_LEN {
        return defect(
            CorruptionReason::BadLength { length: uncompressed_len as u64, limit: rec::MAX_PAYLOAD_LEN as u64 },
            claimed_end,
        );
    }
    if codec == CodecId::NONE && uncompressed_len != stored_len {
        return defect(
            CorruptionReason::InvalidField {
                field: "uncompressed_len of an uncompressed record",
                value: uncompressed_len as u64,
            },
            claimed_end,
        );
    }
    Ok(RecordView {
        offset: Offset::new(offset),
        codec,
        append_time_ms,
        prev_hash: ChainHash(prev_hash),
        uncompressed_len,
        payload_at: at + rec::PAYLOAD_AT,
        stored_len,
        len,
    })
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub flags: u16,
    pub stream: StreamId,
    pub base: Offset,
    pub created_ms: u64,
    pub base_prev_hash: ChainHash,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; seg::HEADER_LEN] {
        let mut w = ByteWriter::with_capacity(seg::HEADER_LEN);
        w.u64(seg::MAGIC).u16(seg::VERSION).u16(self.flags);
        w.u64(self.stream.get()).u64(self.base.get()).u64(self.created_ms).raw(&self.base_prev_hash.0);
        debug_assert_eq!(w.len(), seg::CRC_AT);
        w.crc();
        let mut b = [0u8; seg::HEADER_LEN];
        b.copy_from_slice(w.written());
        b
    }

    /// Decodes and checks a header: magic, version, CRC, flags, owning stream, chain rule at 0.
    pub fn decode(b: &[u8], path: &Path, stream: StreamId, file: &str) -> Result<Self> {
        let corrupt = |position: usize, reason| StorageError::Corruption {
            stream,
            file: file.to_string(),
            position: position as u64,
            offset: None,
            reason,
        };
        // The whole header (and the CRC of the bytes before its CRC), or an error that it needs all of its bytes.
        let header = |r: &mut ByteReader<'_>| -> std::result::Result<_, ByteError> {
            r.require(seg::HEADER_LEN)?;
            let fields = (r.u64()?, r.u16()?, r.u16()?, r.u64()?, r.u64()?, r.u64()?, r.array::<32>()?);
            let computed = crc32fast::hash(r.consumed());
            Ok((fields, r.u32()?, computed))
        };
        let ((magic, version, flags, owner, base, created_ms, base_prev_hash), stored, computed) =
            header(&mut ByteReader::new("segment header", b)).map_err(|e| corrupt(0, e.into()))?;
        if magic != seg::MAGIC {
            return Err(StorageError::BadMagic { path: path.to_path_buf(), found: magic, expected: seg::MAGIC });
        }
        if version != seg::VERSION {
            return Err(StorageError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: seg::VERSION,
            });
        }
        if stored != computed {
            return Err(corrupt(seg::CRC_AT, CorruptionReason::CrcMismatch { stored, computed }));
        }
        if flags & !seg::KNOWN_FLAGS != 0 {
            return Err(corrupt(
                seg::FLAGS_AT,
                CorruptionReason::InvalidField { field: "segment flags", value: flags.into() },
            ));
        }
        if owner != stream.get() {
            return Err(corrupt(
                seg::STREAM_ID_AT,
                CorruptionReason::InvalidField { field: "segment stream id", value: owner },
            ));
        }
        let base = Offset::new(base);
        if base > crate::format::MAX_OFFSET {
            return Err(corrupt(
                seg::BASE_OFFSET_AT,
                CorruptionReason::InvalidField { field: "segment base offset", value: base.get() },
            ));
        }
        let base_prev_hash = ChainHash(base_prev_hash);
        if base == Offset::ZERO && base_prev_hash != ChainHash::ZERO {
            return Err(corrupt(
                seg::BASE_PREV_HASH_AT,
                CorruptionReason::Malformed("a segment based at offset 0 must have a zero base_prev_hash".into()),
            ));
        }
        Ok(Self { flags, stream, base, created_ms, base_prev_hash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, Offset::new(7), CodecId::NONE, 99, &ChainHash([3; 32]), payload.len(), payload);
        seal_record(&mut out);
        out
    }

    #[test]
    fn record_round_trips() {
        let buf = one(b"hello");
        assert_eq!(buf.len(), rec::encoded_len(5));
        let v = decode_record(&buf, 0).unwrap();
        assert_eq!(v.offset, Offset::new(7));
        assert_eq!(v.append_time_ms, 99);
        assert_eq!(v.prev_hash, ChainHash([3; 32]));
        assert_eq!(v.stored(&buf), b"hello");
        assert_eq!(v.len, buf.len());
    }

    #[test]
    fn every_prefix_is_truncated_and_every_flip_is_caught() {
        let buf = one(b"some payload");
        for cut in 0..buf.len() {
            let d = decode_record(&buf[..cut], 0).unwrap_err();
            assert!(matches!(d.reason, CorruptionReason::Truncated { .. } | CorruptionReason::BadMarker(_)), "{cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(decode_record(&bad, 0).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn hostile_length_is_a_defect() {
        let mut buf = one(b"x");
        buf[rec::STORED_LEN_AT..rec::STORED_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let d = decode_record(&buf, 0).unwrap_err();
        assert!(matches!(d.reason, CorruptionReason::BadLength { .. }));
    }

    #[test]
    fn header_checks() {
        let h = SegmentHeader {
            flags: 0,
            stream: StreamId::new(4),
            base: Offset::new(10),
            created_ms: 5,
            base_prev_hash: ChainHash([1; 32]),
        };
        let b = h.encode();
        let p = Path::new("x");
        assert_eq!(SegmentHeader::decode(&b, p, StreamId::new(4), "x").unwrap(), h);
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(SegmentHeader::decode(&bad, p, StreamId::new(4), "x"), Err(StorageError::BadMagic { .. })));
        let mut bad = b;
        bad[seg::VERSION_AT] = 9;
        assert!(matches!(
            SegmentHeader::decode(&bad, p, StreamId::new(4), "x"),
            Err(StorageError::UnsupportedVersion { found: 9, .. })
        ));
        let mut bad = b;
        bad[seg::CREATED_AT] ^= 1;
        assert!(matches!(SegmentHeader::decode(&bad, p, StreamId::new(4), "x"), Err(StorageError::Corruption { .. })));
        assert!(SegmentHeader::decode(&b, p, StreamId::new(5), "x").is_err());
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// A record as `encode_record` takes it: offset, codec, append time, prev hash,
        /// uncompressed length and stored payload (uncompressed length = payload length for
        /// codec 0, any length up to the limit otherwise).
        fn any_record() -> impl Strategy<Value = (u64, CodecId, u64, [u8; 32], usize, Vec<u8>)> {
            (any::<u64>(), any::<u8>(), any::<u64>(), any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..200))
                .prop_flat_map(|(offset, codec, time, hash, stored)| {
                    let uncompressed =
                        if codec == 0 { Just(stored.len()).boxed() } else { (0..=rec::MAX_PAYLOAD_LEN).boxed() };
                    (Just(offset), Just(CodecId(codec)), Just(time), Just(hash), uncompressed, Just(stored))
                })
        }

        fn encode(prefix: usize, r: &(u64, CodecId, u64, [u8; 32], usize, Vec<u8>)) -> Vec<u8> {
            let mut out = vec![0xEE; prefix];
            encode_record(&mut out, Offset::new(r.0), r.1, r.2, &ChainHash(r.3), r.4, &r.5);
            seal_record(&mut out[prefix..]);
            out
        }

        fn any_header() -> impl Strategy<Value = SegmentHeader> {
            (0..=seg::KNOWN_FLAGS, any::<u64>(), 0..=crate::format::MAX_OFFSET.get(), any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(flags, stream, base, created_ms, hash)| SegmentHeader {
                    flags,
                    stream: StreamId::new(stream),
                    base: Offset::new(base),
                    created_ms,
                    base_prev_hash: if base == 0 { ChainHash::ZERO } else { ChainHash(hash) },
                })
        }

        proptest! {
            #[test]
            fn records_round_trip(r in any_record(), prefix in 0usize..8) {
                let buf = encode(prefix, &r);
                let v = decode_record(&buf, prefix).unwrap();
                prop_assert_eq!(v.offset, Offset::new(r.0));
                prop_assert_eq!(v.codec, r.1);
                prop_assert_eq!(v.append_time_ms, r.2);
                prop_assert_eq!(v.prev_hash, ChainHash(r.3));
                prop_assert_eq!(v.uncompressed_len, r.4);
                prop_assert_eq!(v.stored(&buf), r.5.as_slice());
                prop_assert_eq!(v.len, buf.len() - prefix);
            }

            /// Every cut of a valid record is a truncation that says how many bytes it needs:
            /// the header's before the header is whole, the record's after.
            #[test]
            fn every_truncated_record_says_what_it_needs(r in any_record(), prefix in 0usize..4) {
                let buf = encode(prefix, &r);
                let len = buf.len() - prefix;
                for cut in prefix..buf.len() {
                    let d = decode_record(&buf[..cut], prefix).unwrap_err();
                    let available = (cut - prefix) as u64;
                    let (needed, claimed_end) =
                        if cut - prefix < rec::HEADER_LEN { (rec::HEADER_LEN, None) } else { (len, Some(buf.len())) };
                    prop_assert_eq!(d.reason, CorruptionReason::Truncated { needed: needed as u64, available });
                    prop_assert_eq!(d.claimed_end, claimed_end);
                }
            }

            /// Arbitrary bytes at any position are a defect or a record that lies inside them.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), at in 0usize..320) {
                if let Ok(v) = decode_record(&bytes, at) {
                    prop_assert!(at + v.len <= bytes.len());
                    prop_assert_eq!(v.payload_at + v.stored_len + rec::TRAILER_LEN, at + v.len);
                }
            }

            #[test]
            fn segment_headers_round_trip(h in any_header()) {
                let b = h.encode();
                prop_assert_eq!(SegmentHeader::decode(&b, Path::new("x"), h.stream, "x").unwrap(), h);
            }

            #[test]
            fn every_truncated_segment_header_is_a_typed_truncation(h in any_header()) {
                let b = h.encode();
                for cut in 0..b.len() {
                    let e = SegmentHeader::decode(&b[..cut], Path::new("x"), h.stream, "x").unwrap_err();
                    let truncated = CorruptionReason::Truncated { needed: seg::HEADER_LEN as u64, available: cut as u64 };
                    prop_assert!(
                        matches!(&e, StorageError::Corruption { position: 0, reason, .. } if *reason == truncated),
                        "cut {}: {:?}", cut, e
                    );
                }
            }

            #[test]
            fn arbitrary_segment_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100), stream in 0u64..4) {
                let _ = SegmentHeader::decode(&bytes, Path::new("x"), StreamId::new(stream), "x");
            }
        }
    }
}
