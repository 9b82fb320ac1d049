//! Every on-disk byte layout of the storage crate, as named constants.
//!
//! All integers are little-endian. Each field's offset is derived from the one before it (by
//! [`crate::offsets!`], from the fields' types), so a change of one field's width moves the rest.
//! The bytes are read and written with [`crate::byteio`]. `docs/format.md` tables the same layouts; keep the
//! two in step and bump the matching version on any change.

/// The largest offset a stream may reach (2^63): far beyond any real log, and low enough that
/// offset arithmetic never overflows. Headers, checkpoints and appends past it are refused.
pub const MAX_OFFSET: crate::types::Offset = crate::types::Offset::new(1 << 63);

/// Checkpoint payload (the body of one checkpoint, as stored and as shipped in Raft snapshots).
///
/// `[magic:u32][version:u16][flags:u16][offset:u64][chain_hash:32][record_count:u64]`
/// `[created_at_ms:u64][data_len:u32][data:data_len][crc32:u32]`; the CRC covers every byte before it.
pub mod checkpoint {
    /// "SCKP".
    pub const MAGIC: u32 = u32::from_le_bytes(*b"SCKP");
    /// The version this build writes and reads.
    pub const VERSION: u16 = 1;

    crate::offsets! {
        /// Offset of the magic number.
        MAGIC_AT: u32,
        /// Offset of the format version.
        VERSION_AT: u16,
        /// Offset of the flags (reserved, zero).
        FLAGS_AT: u16,
        /// Offset of the checkpoint's stream offset (the next offset it anchors).
        OFFSET_AT: u64,
        /// Offset of the chain hash (hash of the record before `offset`).
        CHAIN_HASH_AT: [u8; 32],
        /// Offset of the record count.
        RECORD_COUNT_AT: u64,
        /// Offset of the creation time (milliseconds since the Unix epoch).
        CREATED_AT_AT: u64,
        /// Offset of the caller-data length.
        DATA_LEN_AT: u32,
        /// Offset of the caller data.
        DATA_AT,
    }
    /// Bytes before the caller data.
    pub const HEADER_LEN: usize = DATA_AT;
    /// Bytes of the trailing CRC.
    pub const CRC_LEN: usize = 4;
    /// Largest caller data accepted (256 MiB): a bound on what a hostile length can make us allocate.
    pub const MAX_DATA_LEN: usize = 256 << 20;
}

/// One record in a segment file.
///
/// `[start:u8=0xA5][kind:u8][codec:u8][flags:u8][offset:u64][append_time_ms:u64][prev_hash:32]`
/// `[uncompressed_len:u32][stored_len:u32][payload:stored_len][crc32:u32][end:u8=0x5A]`.
/// The CRC covers every byte before it (start marker included); the end marker follows it, so a
/// record whose last byte did not reach the disk is recognised as torn.
pub mod record {
    /// Largest stored payload length any record may declare (1 GiB): a bound on what a hostile
    /// length field can make a reader allocate.
    pub const MAX_PAYLOAD_LEN: usize = 1 << 30;
    /// First byte of every record.
    pub const START_MARKER: u8 = 0xA5;
    /// Last byte of every record.
    pub const END_MARKER: u8 = 0x5A;
    /// `kind` of a data record (the only kind today).
    pub const KIND_DATA: u8 = 1;

    crate::offsets! {
        /// Offset of the start marker.
        START_AT: u8,
        /// Offset of the kind byte.
        KIND_AT: u8,
        /// Offset of the codec id.
        CODEC_AT: u8,
        /// Offset of the flags (reserved, zero).
        FLAGS_AT: u8,
        /// Offset of the record's stream offset.
        OFFSET_AT: u64,
        /// Offset of the append time (ms since the Unix epoch; used by age retention, not hashed).
        APPEND_TIME_AT: u64,
        /// Offset of the previous record's chain hash.
        PREV_HASH_AT: [u8; 32],
        /// Offset of the uncompressed payload length.
        UNCOMPRESSED_LEN_AT: u32,
        /// Offset of the stored (possibly compressed) payload length.
        STORED_LEN_AT: u32,
        /// Offset of the payload.
        PAYLOAD_AT,
    }
    /// Bytes before the payload.
    pub const HEADER_LEN: usize = PAYLOAD_AT;
    /// Bytes after the payload: CRC and end marker.
    pub const TRAILER_LEN: usize = 4 + 1;
    /// Bytes a record takes beyond its stored payload.
    pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;

    /// The whole encoded size of a record whose stored payload is `stored_len` bytes.
    pub const fn encoded_len(stored_len: usize) -> usize {
        OVERHEAD + stored_len
    }
}

/// The first bytes of every file whose magic number is a `u64` (segments, index files, the lock
/// file): `[magic:u64][version:u16][flags:u16]`. Each of those layouts continues after it.
pub mod preamble {
    crate::offsets! {
        /// Offset of the magic number.
        MAGIC_AT: u64,
        /// Offset of the format version.
        VERSION_AT: u16,
        /// Offset of the flags (reserved, zero, where a file kind defines none).
        FLAGS_AT: u16,
        /// Bytes of the preamble.
        LEN,
    }
}

/// The header at the start of every segment file (`segment_NNNNNN.log`).
///
/// `[magic:u64][version:u16][flags:u16][stream_id:u64][base_offset:u64][created_ms:u64]`
/// `[base_prev_hash:32][crc32:u32]`; the CRC covers the 68 bytes before it. Records follow directly.
/// `base_prev_hash` is the chain hash of record `base_offset - 1` (zero at offset 0): a segment names
/// its own chain anchor, so the first segment of a compacted or restarted stream is self-describing.
///
/// The active segment may end in zero bytes past its last record: once a stream has been fsynced,
/// a write that would grow the file (on a stream whose writes are small, see
/// [`segment::PREALLOCATE_BELOW_BYTES`]) first extends it with [`segment::PREALLOCATION_BYTES`] of zeros,
/// so later fsyncs flush allocated blocks and carry no size or extent change (on ext4 such an
/// fdatasync skips the journal commit). Every record ends in a non-zero end marker, so the records end
/// at or before the last non-zero byte; open cuts the zeros off, and sealing a segment trims them
/// first, so a sealed segment holds records only.
pub mod segment {
    /// Most zero bytes a write to a stream that has been fsynced adds past its end when it would
    /// grow the active segment (never past `max_segment_bytes`). The step is the segment's length
    /// so far, between [`PREALLOCATION_MIN_BYTES`] and this: a segment doubles while small, so a
    /// node with thousands of mostly idle streams (each group's log and meta stream) does not
    /// write, and flush, a whole MiB of zeros for each of them (a node taking over 1,000 partition
    /// leaders wrote ~2 GB of zeros that way).
    pub const PREALLOCATION_BYTES: u64 = 1 << 20;
    /// Fewest zero bytes such a write adds (see [`PREALLOCATION_BYTES`]).
    pub const PREALLOCATION_MIN_BYTES: u64 = 64 << 10;
    /// A stream whose writes average this many bytes or more (a running mean, each write weighing
    /// 1/8) grows its segment without preallocating: every zero is written, then flushed, then
    /// overwritten and flushed again, which doubles what a busy stream copies and writes, while
    /// the fsync time the zeros save (~200 us per fdatasync on ext4) matters only next to small
    /// writes. The zeros are an optimisation: the layout is the same either way.
    pub const PREALLOCATE_BELOW_BYTES: u64 = 64 << 10;

    /// "SHALESEG".
    pub const MAGIC: u64 = u64::from_le_bytes(*b"SHALESEG");
    /// The version this build writes and reads.
    pub const VERSION: u16 = 1;
    /// `flags` bit: this segment restarts the stream (written by `install_checkpoint` when the
    /// checkpoint does not match the records held). On open, every segment with a lower sequence
    /// number than the newest restart segment is a leftover of an interrupted install and is deleted.
    pub const FLAG_RESTART: u16 = 1;
    /// Every flag bit this build knows; any other set bit is corruption.
    pub const KNOWN_FLAGS: u16 = FLAG_RESTART;

    pub use super::preamble::{FLAGS_AT, MAGIC_AT, VERSION_AT};
    crate::offsets! {
        after super::preamble::LEN;
        /// Offset of the owning stream's id.
        STREAM_ID_AT: u64,
        /// Offset of the first record's offset.
        BASE_OFFSET_AT: u64,
        /// Offset of the creation time.
        CREATED_AT: u64,
        /// Offset of the chain hash of the record before `base_offset`.
        BASE_PREV_HASH_AT: [u8; 32],
        /// Offset of the header CRC.
        CRC_AT: u32,
        /// Bytes of the whole header.
        HEADER_LEN,
    }
}

/// The dense offset index next to each segment (`segment_NNNNNN.idx`).
///
/// `[magic:u64][version:u16][flags:u16][stream_id:u64][base_offset:u64][record_count:u64]`
/// `[segment_len:u64][last_append_ms:u64][base_prev_hash:32][last_hash:32][anchor_count:u32]`
/// `[positions: record_count x u64][anchors: anchor_count x (offset:u64, hash_before:32)][crc32:u32]`;
/// the CRC covers every byte before it. `positions[i]` is the byte position of record
/// `base_offset + i` in the segment; `segment_len` is the segment file length the index covers;
/// `last_hash` is the chain hash of the last record (`base_prev_hash` when empty); each anchor is
/// the verified chain hash of the record before `offset` (the sparse chain table).
pub mod index {
    /// "SHALEIDX".
    pub const MAGIC: u64 = u64::from_le_bytes(*b"SHALEIDX");
    /// The version this build writes and reads.
    pub const VERSION: u16 = 1;

    /// The flags ([`FLAGS_AT`]) are reserved (zero).
    pub use super::preamble::{FLAGS_AT, MAGIC_AT, VERSION_AT};
    crate::offsets! {
        after super::preamble::LEN;
        /// Offset of the owning stream's id.
        STREAM_ID_AT: u64,
        /// Offset of the segment's base offset.
        BASE_OFFSET_AT: u64,
        /// Offset of the number of records indexed.
        RECORD_COUNT_AT: u64,
        /// Offset of the segment length covered.
        SEGMENT_LEN_AT: u64,
        /// Offset of the newest record's append time.
        LAST_APPEND_MS_AT: u64,
        /// Offset of the chain hash before the segment's first record.
        BASE_PREV_HASH_AT: [u8; 32],
        /// Offset of the chain hash of the segment's last record.
        LAST_HASH_AT: [u8; 32],
        /// Offset of the anchor count.
        ANCHOR_COUNT_AT: u32,
        /// Offset of the first position entry.
        POSITIONS_AT,
    }
    /// Bytes before the position entries.
    pub const HEADER_LEN: usize = POSITIONS_AT;
    /// Bytes of one position entry.
    pub const POSITION_LEN: usize = 8;
    /// Bytes of one anchor entry.
    pub const ANCHOR_LEN: usize = 8 + 32;
    /// Bytes of the trailing CRC.
    pub const CRC_LEN: usize = 4;
}

/// The lock file `data_dir/LOCK`, held with an exclusive advisory lock while a `Storage` is open.
///
/// `[magic:u64][version:u16][reserved:u16][pid:u32]`: informational only; the lock itself is the
/// operating system's file lock, released when the process exits.
pub mod lock {
    /// The lock file's name inside the data directory.
    pub const FILE_NAME: &str = "LOCK";
    /// "SHALELCK".
    pub const MAGIC: u64 = u64::from_le_bytes(*b"SHALELCK");
    /// The version this build writes.
    pub const VERSION: u16 = 1;
    /// The flags ([`FLAGS_AT`]) are reserved (zero).
    pub use super::preamble::{FLAGS_AT, MAGIC_AT, VERSION_AT};
    crate::offsets! {
        after super::preamble::LEN;
        /// Offset of the process id of the holder.
        PID_AT: u32,
        /// Bytes of the whole file.
        LEN,
    }
}

/// File names inside a stream directory (`data_dir/{stream_id}/`).
pub mod names {
    /// Segment file suffix.
    pub const SEGMENT_SUFFIX: &str = ".log";
    /// Index file suffix.
    pub const INDEX_SUFFIX: &str = ".idx";
    /// Checkpoint file suffix.
    pub const CHECKPOINT_SUFFIX: &str = ".ckp";
    /// Suffix of a file being written before its atomic rename; leftovers are deleted on open.
    pub const TMP_SUFFIX: &str = ".tmp";

    /// `segment_NNNNNN.log` for sequence number `seq`.
    pub fn segment(seq: u64) -> String {
        format!("segment_{seq:06}{SEGMENT_SUFFIX}")
    }

    /// `segment_NNNNNN.idx` for sequence number `seq`.
    pub fn index(seq: u64) -> String {
        format!("segment_{seq:06}{INDEX_SUFFIX}")
    }

    /// `checkpoint_{offset:020}.ckp`.
    pub fn checkpoint(offset: u64) -> String {
        format!("checkpoint_{offset:020}{CHECKPOINT_SUFFIX}")
    }

    /// The sequence number of a segment file name, if it is one.
    pub fn parse_segment(name: &str) -> Option<u64> {
        parse_number(name.strip_prefix("segment_")?.strip_suffix(SEGMENT_SUFFIX)?)
    }

    /// The sequence number of an index file name, if it is one.
    pub fn parse_index(name: &str) -> Option<u64> {
        parse_number(name.strip_prefix("segment_")?.strip_suffix(INDEX_SUFFIX)?)
    }

    /// The offset of a checkpoint file name, if it is one.
    pub fn parse_checkpoint(name: &str) -> Option<u64> {
        parse_number(name.strip_prefix("checkpoint_")?.strip_suffix(CHECKPOINT_SUFFIX)?)
    }

    /// A stream directory name: the decimal stream id.
    pub fn parse_stream_dir(name: &str) -> Option<u64> {
        parse_number(name)
    }

    fn parse_number(digits: &str) -> Option<u64> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    //! The sizes `docs/format.md` tables: a change here must change the document (and a version).
    use super::*;

    #[test]
    fn layouts_match_the_documented_tables() {
        use segment as s;
        let fields = [s::MAGIC_AT, s::VERSION_AT, s::FLAGS_AT, s::STREAM_ID_AT, s::BASE_OFFSET_AT, s::CREATED_AT];
        assert_eq!(fields, [0, 8, 10, 12, 20, 28]);
        assert_eq!([s::BASE_PREV_HASH_AT, s::CRC_AT], [36, 68]);
        use record as r;
        assert_eq!(
            [r::START_AT, r::KIND_AT, r::CODEC_AT, r::FLAGS_AT, r::OFFSET_AT, r::APPEND_TIME_AT],
            [0, 1, 2, 3, 4, 12]
        );
        assert_eq!([r::PREV_HASH_AT, r::UNCOMPRESSED_LEN_AT, r::STORED_LEN_AT, r::PAYLOAD_AT], [20, 52, 56, 60]);
        use index as i;
        let fields = [i::MAGIC_AT, i::VERSION_AT, i::FLAGS_AT, i::STREAM_ID_AT, i::BASE_OFFSET_AT, i::RECORD_COUNT_AT];
        assert_eq!(fields, [0, 8, 10, 12, 20, 28]);
        let fields = [i::SEGMENT_LEN_AT, i::LAST_APPEND_MS_AT, i::BASE_PREV_HASH_AT, i::LAST_HASH_AT, i::POSITIONS_AT];
        assert_eq!(fields, [36, 44, 52, 84, 120]);
        use checkpoint as c;
        assert_eq!([c::MAGIC_AT, c::VERSION_AT, c::FLAGS_AT, c::OFFSET_AT, c::CHAIN_HASH_AT], [0, 4, 6, 8, 16]);
        assert_eq!([c::RECORD_COUNT_AT, c::CREATED_AT_AT, c::DATA_LEN_AT, c::DATA_AT], [48, 56, 64, 68]);
        assert_eq!([lock::MAGIC_AT, lock::VERSION_AT, lock::FLAGS_AT, lock::PID_AT], [0, 8, 10, 12]);
        assert_eq!(segment::HEADER_LEN, 72);
        assert_eq!(segment::BASE_PREV_HASH_AT, 36);
        assert_eq!(record::HEADER_LEN, 60);
        assert_eq!(record::OVERHEAD, 65);
        assert_eq!(index::HEADER_LEN, 120);
        assert_eq!(index::ANCHOR_COUNT_AT, 116);
        assert_eq!(checkpoint::HEADER_LEN, 68);
        assert_eq!(lock::LEN, 16);
        assert_eq!(&segment::MAGIC.to_le_bytes(), b"SHALESEG");
        assert_eq!(&index::MAGIC.to_le_bytes(), b"SHALEIDX");
        assert_eq!(&checkpoint::MAGIC.to_le_bytes(), b"SCKP");
        assert_eq!(&lock::MAGIC.to_le_bytes(), b"SHALELCK");
        assert_eq!(names::segment(3), "segment_000003.log");
        assert_eq!(names::checkpoint(42), "checkpoint_00000000000000000042.ckp");
        assert_eq!(names::parse_segment("segment_1234567.log"), Some(1_234_567));
        assert_eq!(names::parse_segment("segment_.log"), None);
    }
}
