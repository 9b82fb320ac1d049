//! The small value types every storage API speaks in.

use std::fmt;

use bytes::Bytes;

/// Names one append-only stream (a partition log, a Raft meta log, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u64);

impl StreamId {
    /// Wraps a raw stream number.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The raw stream number; also the stream's directory name on disk.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of a record in its stream: record n has offset n, with no gaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(u64);

impl Offset {
    /// The first offset of every stream.
    pub const ZERO: Offset = Offset(0);

    /// Wraps a raw offset.
    pub const fn new(offset: u64) -> Self {
        Self(offset)
    }

    /// The raw offset.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset `n` records later.
    #[must_use]
    pub const fn plus(self, n: u64) -> Self {
        Self(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SHA-256 chain hash: `hash_0 = SHA-256(payload_0)`, `hash_n = SHA-256(hash_{n-1} || payload_n)`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of record 0.
    pub const ZERO: ChainHash = ChainHash([0; 32]);

    /// The hash as lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// Parses 64 hex characters; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How much a read checks of each record it returns
/// ([`crate::StorageBackend::read_range_checked`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadCheck {
    /// Framing, CRC, offset, decompression and the chain link: each record is re-hashed, chained
    /// from a trusted anchor, so a record rewritten with a recomputed CRC is refused.
    #[default]
    Chain,
    /// Framing, CRC, offset and decompression only. The hashes returned are the links the records
    /// store (a record's `hash` is its successor's `prev_hash`, or the stream's head for the last
    /// record), not recomputed: accidental damage is still refused, but a record rewritten with a
    /// recomputed CRC is served. For a reader that recomputes the chain itself from what it is
    /// given and compares it with those links (a verifying consumer), so the chain is not hashed
    /// twice.
    Frames,
}

/// One verified record as read back from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the stream.
    pub offset: Offset,
    /// The chain hash of the record before it ([`ChainHash::ZERO`] for record 0).
    pub prev_hash: ChainHash,
    /// Its own chain hash, `SHA-256(prev_hash || payload)` (or `SHA-256(payload)` for record 0).
    pub hash: ChainHash,
    /// The uncompressed payload.
    pub payload: Bytes,
}

/// What a full chain verification saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVerification {
    /// The stream verified.
    pub stream: StreamId,
    /// The first offset verified (the log start).
    pub from: Offset,
    /// One past the last offset verified (the stream's next offset).
    pub to: Offset,
    /// How many records were checked.
    pub records: u64,
    /// The chain hash after the last record (the anchoring checkpoint's hash for an empty range).
    pub head: ChainHash,
}
