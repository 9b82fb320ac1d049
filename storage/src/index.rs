//! The dense offset index of a segment, and its file (`segment_NNNNNN.idx`, layout in
//! [`crate::format::index`]).
//!
//! In memory each segment keeps `positions[i]` = byte position of record `base + i`, so finding
//! a record is O(1). The file is written when a segment is sealed (and on a clean close for the
//! active segment) so that opening a stream does not rescan its sealed segments. A missing or
//! damaged index file is never an error: it is rebuilt from the segment.

use crate::byteio::{ByteError, ByteReader, ByteWriter};
use crate::format::index as idx;
use crate::format::segment as seg;
use crate::types::{ChainHash, Offset, StreamId};

/// The content of an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub base: Offset,
    pub segment_len: u64,
    pub last_append_ms: u64,
    pub base_prev_hash: ChainHash,
    pub last_hash: ChainHash,
    pub positions: Vec<u64>,
    /// `(k, hash of record k - 1)` for offsets `k` in `(base, base + positions.len()]`.
    pub anchors: Vec<(Offset, ChainHash)>,
}

/// Names index files in errors.
const WHAT: &str = "index file";

/// An index file's defect, as the reason it is rebuilt.
fn why(e: ByteError) -> String {
    e.to_string()
}

impl IndexFile {
    /// The file's bytes.
    pub fn encode(&self, stream: StreamId) -> Vec<u8> {
        let mut w = ByteWriter::with_capacity(
            idx::HEADER_LEN
                + self.positions.len() * idx::POSITION_LEN
                + self.anchors.len() * idx::ANCHOR_LEN
                + idx::CRC_LEN,
        );
        w.u64(idx::MAGIC).u16(idx::VERSION).u16(0).u64(stream.get()).u64(self.base.get());
        w.u64(self.positions.len() as u64).u64(self.segment_len).u64(self.last_append_ms);
        w.raw(&self.base_prev_hash.0).raw(&self.last_hash.0).u32(self.anchors.len() as u32);
        debug_assert_eq!(w.len(), idx::HEADER_LEN);
        for p in &self.positions {
            w.u64(*p);
        }
        for (k, h) in &self.anchors {
            w.u64(k.get()).raw(&h.0);
        }
        w.crc();
        w.finish()
    }

    /// Decodes and validates an index file; `Err` says why it cannot be trusted (it is then rebuilt).
    pub fn decode(b: &[u8], stream: StreamId) -> Result<Self, String> {
        let mut r = ByteReader::new(WHAT, b);
        r.require(idx::HEADER_LEN + idx::CRC_LEN)
            .map_err(|_| format!("{} bytes is shorter than an index header", b.len()))?;
        // No read of the header below runs out of bytes after that check.
        if r.u64().map_err(why)? != idx::MAGIC {
            return Err("bad magic".into());
        }
        let version = r.u16().map_err(why)?;
        if version != idx::VERSION {
            return Err(format!("unsupported version {version}"));
        }
        ByteReader::with_crc32_trailer(WHAT, b).map_err(why)?;
        let _flags = r.u16().map_err(why)?;
        if r.u64().map_err(why)? != stream.get() {
            return Err("written for another stream".into());
        }
        let base = Offset::new(r.u64().map_err(why)?);
        let count = r.u64().map_err(why)?;
        let segment_len = r.u64().map_err(why)?;
        let last_append_ms = r.u64().map_err(why)?;
        let base_prev_hash = ChainHash(r.array().map_err(why)?);
        let last_hash = ChainHash(r.array().map_err(why)?);
        let anchors = u64::from(r.u32().map_err(why)?);
        let entries = r.remaining().saturating_sub(idx::CRC_LEN) as u64;
        let needed =
            count.checked_mul(idx::POSITION_LEN as u64).and_then(|p| p.checked_add(anchors * idx::ANCHOR_LEN as u64));
        if needed != Some(entries) {
            return Err(format!("{count} positions and {anchors} anchors do not fill {entries} bytes"));
        }
        let positions = (0..count).map(|_| r.u64()).collect::<Result<Vec<u64>, _>>().map_err(why)?;
        let mut expected_min = seg::HEADER_LEN as u64;
        for (i, &p) in positions.iter().enumerate() {
            // Every record takes at least its overhead, and lies inside the covered length.
            if p < expected_min || p >= segment_len {
                return Err(format!("position {p} of record {i} is out of order or past {segment_len}"));
            }
            expected_min = p + crate::format::record::OVERHEAD as u64;
        }
        if expected_min > segment_len || (positions.is_empty() && segment_len != seg::HEADER_LEN as u64) {
            return Err("segment length does not match the positions".into());
        }
        let end = base.get().checked_add(count).ok_or("offset overflow")?;
        let mut list = Vec::with_capacity(anchors as usize);
        for _ in 0..anchors {
            let (k, hash) = (r.u64().map_err(why)?, r.array().map_err(why)?);
            if k <= base.get() || k > end {
                return Err(format!("anchor at {k} lies outside ({base}, {end}]"));
            }
            list.push((Offset::new(k), ChainHash(hash)));
        }
        Ok(Self { base, segment_len, last_append_ms, base_prev_hash, last_hash, positions, anchors: list })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::OVERHEAD;

    fn sample() -> IndexFile {
        let h = seg::HEADER_LEN as u64;
        let o = OVERHEAD as u64;
        IndexFile {
            base: Offset::new(100),
            segment_len: h + 3 * o + 10,
            last_append_ms: 77,
            base_prev_hash: ChainHash([1; 32]),
            last_hash: ChainHash([2; 32]),
            positions: vec![h, h + o + 4, h + 2 * o + 7],
            anchors: vec![(Offset::new(103), ChainHash([2; 32]))],
        }
    }

    #[test]
    fn round_trips_and_catches_damage() {
        let f = sample();
        let b = f.encode(StreamId::new(1));
        assert_eq!(IndexFile::decode(&b, StreamId::new(1)).unwrap(), f);
        assert!(IndexFile::decode(&b, StreamId::new(2)).is_err());
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            assert!(IndexFile::decode(&bad, StreamId::new(1)).is_err(), "flip at {i}");
        }
        for cut in 0..b.len() {
            assert!(IndexFile::decode(&b[..cut], StreamId::new(1)).is_err());
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// A valid index: positions at least a record apart inside `segment_len`, anchors inside
        /// `(base, base + count]`.
        fn any_index() -> impl Strategy<Value = IndexFile> {
            let gaps = proptest::collection::vec(0u64..100, 0..20);
            (any::<u64>(), gaps, 0u64..100, any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>())
                .prop_flat_map(|(base, gaps, tail, last_append_ms, h1, h2)| {
                    let base = base % (1 << 62);
                    let mut positions = Vec::new();
                    let mut at = seg::HEADER_LEN as u64;
                    for g in &gaps {
                        positions.push(at);
                        at += OVERHEAD as u64 + g;
                    }
                    let segment_len = if positions.is_empty() { seg::HEADER_LEN as u64 } else { at + tail };
                    let count = positions.len() as u64;
                    let anchors =
                        proptest::collection::btree_map(1..=count.max(1), any::<[u8; 32]>(), 0..=count.min(5) as usize);
                    (Just((base, positions, segment_len, last_append_ms, h1, h2)), anchors)
                })
                .prop_map(|((base, positions, segment_len, last_append_ms, h1, h2), anchors)| IndexFile {
                    base: Offset::new(base),
                    segment_len,
                    last_append_ms,
                    base_prev_hash: ChainHash(h1),
                    last_hash: ChainHash(h2),
                    anchors: anchors.into_iter().map(|(k, h)| (Offset::new(base + k), ChainHash(h))).collect(),
                    positions,
                })
        }

        proptest! {
            #[test]
            fn indexes_round_trip(f in any_index(), stream in any::<u64>()) {
                let b = f.encode(StreamId::new(stream));
                prop_assert_eq!(IndexFile::decode(&b, StreamId::new(stream)).unwrap(), f);
            }

            #[test]
            fn every_truncated_index_is_refused(f in any_index()) {
                let b = f.encode(StreamId::new(1));
                for cut in 0..b.len() {
                    prop_assert!(IndexFile::decode(&b[..cut], StreamId::new(1)).is_err(), "cut {}", cut);
                }
            }

            #[test]
            fn arbitrary_indexes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = IndexFile::decode(&bytes, StreamId::new(1));
            }
        }
    }
}
