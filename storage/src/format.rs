//! Every on-disk byte layout of the storage crate, as named constants.
//!
//! All integers are little-endian. Each field's offset is derived from the one before it, so a
//! change of one field's width moves the rest. `docs/format.md` tables the same layouts; keep the
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

    /// Offset of the magic number.
    pub const MAGIC_AT: usize = 0;
    /// Offset of the format version.
    pub const VERSION_AT: usize = MAGIC_AT + 4;
    /// Offset of the flags (reserved, zero).
    pub const FLAGS_AT: usize = VERSION_AT + 2;
    /// Offset of the checkpoint's stream offset (the next offset it anchors).
    pub const OFFSET_AT: usize = FLAGS_AT + 2;
    /// Offset of the chain hash (hash of the record before `offset`).
    pub const CHAIN_HASH_AT: usize = OFFSET_AT + 8;
    /// Offset of the record count.
    pub const RECORD_COUNT_AT: usize = CHAIN_HASH_AT + 32;
    /// Offset of the creation time (milliseconds since the Unix epoch).
    pub const CREATED_AT_AT: usize = RECORD_COUNT_AT + 8;
    /// Offset of the caller-data length.
    pub const DATA_LEN_AT: usize = CREATED_AT_AT + 8;
    /// Offset of the caller data.
    pub const DATA_AT: usize = DATA_LEN_AT + 4;
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

    /// Offset of the start marker.
    pub const START_AT: usize = 0;
    /// Offset of the kind byte.
    pub const KIND_AT: usize = START_AT + 1;
    /// Offset of the codec id.
    pub const CODEC_AT: usize = KIND_AT + 1;
    /// Offset of the flags (reserved, zero).
    pub const FLAGS_AT: usize = CODEC_AT + 1;
    /// Offset of the record's stream offset.
    pub const OFFSET_AT: usize = FLAGS_AT + 1;
    /// Offset of the append time (ms since the Unix epoch; used by age retention, not hashed).
    pub const APPEND_TIME_AT: usize = OFFSET_AT + 8;
    /// Offset of the previous record's chain hash.
    pub const PREV_HASH_AT: usize = APPEND_TIME_AT + 8;
    /// Offset of the uncompressed payload length.
    pub const UNCOMPRESSED_LEN_AT: usize = PREV_HASH_AT + 32;
    /// Offset of the stored (possibly compressed) payload length.
    pub const STORED_LEN_AT: usize = UNCOMPRESSED_LEN_AT + 4;
    /// Offset of the payload.
    pub const PAYLOAD_AT: usize = STORED_LEN_AT + 4;
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

/// The header at the start of every segment file (`segment_NNNNNN.log`).
///
/// `[magic:u64][version:u16][flags:u16][stream_id:u64][base_offset:u64][created_ms:u64]`
/// `[base_prev_hash:32][crc32:u32]`; the CRC covers the 68 bytes before it. Records follow directly.
/// `base_prev_hash` is the chain hash of record `base_offset - 1` (zero at offset 0): a segment names
/// its own chain anchor, so the first segment of a compacted or restarted stream is self-describing.
///
/// The active segment may end in zero bytes past its last record: once a stream has been fsynced,
/// a write that would grow the file first extends it with [`segment::PREALLOCATION_BYTES`] of zeros,
/// so later fsyncs flush allocated blocks and carry no size or extent change (on ext4 such an
/// fdatasync skips the journal commit). Every record ends in a non-zero end marker, so the records end
/// at or before the last non-zero byte; open cuts the zeros off, and sealing a segment trims them
/// first, so a sealed segment holds records only.
pub mod segment {
    /// Zero bytes a write to a stream that has been fsynced adds past its end when it would grow
    /// the active segment (never past `max_segment_bytes`).
    pub const PREALLOCATION_BYTES: u64 = 1 << 20;

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

    /// Offset of the magic number.
    pub const MAGIC_AT: usize = 0;
    /// Offset of the format version.
    pub const VERSION_AT: usize = MAGIC_AT + 8;
    /// Offset of the flags.
    pub const FLAGS_AT: usize = VERSION_AT + 2;
    /// Offset of the owning stream's id.
    pub const STREAM_ID_AT: usize = FLAGS_AT + 2;
    /// Offset of the first record's offset.
    pub const BASE_OFFSET_AT: usize = STREAM_ID_AT + 8;
    /// Offset of the creation time.
    pub const CREATED_AT: usize = BASE_OFFSET_AT + 8;
    /// Offset of the chain hash of the record before `base_offset`.
    pub const BASE_PREV_HASH_AT: usize = CREATED_AT + 8;
    /// Offset of the header CRC.
    pub const CRC_AT: usize = BASE_PREV_HASH_AT + 32;
    /// Bytes of the whole header.
    pub const HEADER_LEN: usize = CRC_AT + 4;
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

    /// Offset of the magic number.
    pub const MAGIC_AT: usize = 0;
    /// Offset of the format version.
    pub const VERSION_AT: usize = MAGIC_AT + 8;
    /// Offset of the flags (reserved, zero).
    pub const FLAGS_AT: usize = VERSION_AT + 2;
    /// Offset of the owning stream's id.
    pub const STREAM_ID_AT: usize = FLAGS_AT + 2;
    /// Offset of the segment's base offset.
    pub const BASE_OFFSET_AT: usize = STREAM_ID_AT + 8;
    /// Offset of the number of records indexed.
    pub const RECORD_COUNT_AT: usize = BASE_OFFSET_AT + 8;
    /// Offset of the segment length covered.
    pub const SEGMENT_LEN_AT: usize = RECORD_COUNT_AT + 8;
    /// Offset of the newest record's append time.
    pub const LAST_APPEND_MS_AT: usize = SEGMENT_LEN_AT + 8;
    /// Offset of the chain hash before the segment's first record.
    pub const BASE_PREV_HASH_AT: usize = LAST_APPEND_MS_AT + 8;
    /// Offset of the chain hash of the segment's last record.
    pub const LAST_HASH_AT: usize = BASE_PREV_HASH_AT + 32;
    /// Offset of the anchor count.
    pub const ANCHOR_COUNT_AT: usize = LAST_HASH_AT + 32;
    /// Offset of the first position entry.
    pub const POSITIONS_AT: usize = ANCHOR_COUNT_AT + 4;
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
    /// Offset of the process id of the holder.
    pub const PID_AT: usize = 12;
    /// Bytes of the whole file.
    pub const LEN: usize = PID_AT + 4;
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
