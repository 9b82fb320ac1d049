//! Every on-disk byte layout of the storage crate, as named constants.
//!
//! All integers are little-endian. Each field's offset is derived from the one before it, so a
//! change of one field's width moves the rest. `docs/format.md` tables the same layouts; keep the
//! two in step and bump the matching version on any change.

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
/// `[magic:u64][version:u16][flags:u16][stream_id:u64][base_offset:u64][created_ms:u64][crc32:u32]`;
/// the CRC covers the 36 bytes before it. Records follow directly.
pub mod segment {
    /// "SHALESEG".
    pub const MAGIC: u64 = u64::from_le_bytes(*b"SHALESEG");
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
    /// Offset of the first record's offset.
    pub const BASE_OFFSET_AT: usize = STREAM_ID_AT + 8;
    /// Offset of the creation time.
    pub const CREATED_AT: usize = BASE_OFFSET_AT + 8;
    /// Offset of the header CRC.
    pub const CRC_AT: usize = CREATED_AT + 8;
    /// Bytes of the whole header.
    pub const HEADER_LEN: usize = CRC_AT + 4;
}
