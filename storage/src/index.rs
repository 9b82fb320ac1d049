//! The dense offset index of a segment, and its file (`segment_NNNNNN.idx`, layout in
//! [`crate::format::index`]).
//!
//! In memory each segment keeps `positions[i]` = byte position of record `base + i`, so finding
//! a record is O(1). The file is written when a segment is sealed (and on a clean close for the
//! active segment) so that opening a stream does not rescan its sealed segments. A missing or
//! damaged index file is never an error: it is rebuilt from the segment.

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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl IndexFile {
    /// The file's bytes.
    pub fn encode(&self, stream: StreamId) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            idx::HEADER_LEN
                + self.positions.len() * idx::POSITION_LEN
                + self.anchors.len() * idx::ANCHOR_LEN
                + idx::CRC_LEN,
        );
        out.extend_from_slice(&idx::MAGIC.to_le_bytes());
        out.extend_from_slice(&idx::VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&stream.get().to_le_bytes());
        out.extend_from_slice(&self.base.get().to_le_bytes());
        out.extend_from_slice(&(self.positions.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.last_append_ms.to_le_bytes());
        out.extend_from_slice(&self.base_prev_hash.0);
        out.extend_from_slice(&self.last_hash.0);
        out.extend_from_slice(&(self.anchors.len() as u32).to_le_bytes());
        debug_assert_eq!(out.len(), idx::HEADER_LEN);
        for p in &self.positions {
            out.extend_from_slice(&p.to_le_bytes());
        }
        for (k, h) in &self.anchors {
            out.extend_from_slice(&k.get().to_le_bytes());
            out.extend_from_slice(&h.0);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates an index file; `Err` says why it cannot be trusted (it is then rebuilt).
    pub fn decode(b: &[u8], stream: StreamId) -> Result<Self, String> {
        if b.len() < idx::HEADER_LEN + idx::CRC_LEN {
            return Err(format!("{} bytes is shorter than an index header", b.len()));
        }
        if u64_at(b, idx::MAGIC_AT) != idx::MAGIC {
            return Err("bad magic".into());
        }
        let version = u16::from_le_bytes([b[idx::VERSION_AT], b[idx::VERSION_AT + 1]]);
        if version != idx::VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let crc_at = b.len() - idx::CRC_LEN;
        let (stored, computed) = (u32_at(b, crc_at), crc32fast::hash(&b[..crc_at]));
        if stored != computed {
            return Err(format!("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"));
        }
        if u64_at(b, idx::STREAM_ID_AT) != stream.get() {
            return Err("written for another stream".into());
        }
        let count = u64_at(b, idx::RECORD_COUNT_AT);
        let anchors = u64::from(u32_at(b, idx::ANCHOR_COUNT_AT));
        let body = (crc_at - idx::HEADER_LEN) as u64;
        let needed =
            count.checked_mul(idx::POSITION_LEN as u64).and_then(|p| p.checked_add(anchors * idx::ANCHOR_LEN as u64));
        if needed != Some(body) {
            return Err(format!("{count} positions and {anchors} anchors do not fill {body} bytes"));
        }
        let base = Offset::new(u64_at(b, idx::BASE_OFFSET_AT));
        let segment_len = u64_at(b, idx::SEGMENT_LEN_AT);
        let positions: Vec<u64> =
            (0..count as usize).map(|i| u64_at(b, idx::POSITIONS_AT + i * idx::POSITION_LEN)).collect();
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
        let anchors_at = idx::POSITIONS_AT + count as usize * idx::POSITION_LEN;
        let mut list = Vec::with_capacity(anchors as usize);
        for i in 0..anchors as usize {
            let at = anchors_at + i * idx::ANCHOR_LEN;
            let k = u64_at(b, at);
            if k <= base.get() || k > end {
                return Err(format!("anchor at {k} lies outside ({base}, {end}]"));
            }
            list.push((Offset::new(k), ChainHash(b[at + 8..at + 40].try_into().expect("32 bytes"))));
        }
        let hash = |at: usize| ChainHash(b[at..at + 32].try_into().expect("32 bytes"));
        Ok(Self {
            base,
            segment_len,
            last_append_ms: u64_at(b, idx::LAST_APPEND_MS_AT),
            base_prev_hash: hash(idx::BASE_PREV_HASH_AT),
            last_hash: hash(idx::LAST_HASH_AT),
            positions,
            anchors: list,
        })
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
}
