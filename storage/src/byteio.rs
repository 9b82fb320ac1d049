//! The one checked byte reader and writer every Shale byte layout is decoded and encoded with:
//! storage records, segment headers, index files and checkpoints here, and the Raft and cluster
//! layouts in `shale-raft` (`raft/src/format.rs`, `raft/src/cluster/layout.rs`).
//!
//! All integers are little-endian (every layout in `docs/format.md` is). A [`ByteReader`] checks
//! every read against the bytes it holds and fails with a [`ByteError`] instead of panicking; a
//! read that fails consumes nothing. Length prefixes and counts are checked against a limit before
//! anything is taken, so hostile lengths cannot make a caller allocate without bound. Each caller
//! maps a [`ByteError`] into its own error type (storage: [`CorruptionReason`]); the variants carry
//! what is needed to do that without losing information.
//!
//! The length-prefixed and optional encodings (`bytes32` = `[len:u32][bytes]`, `str16` =
//! `[len:u16][utf8]`, `opt_u64` = `[present:u8 (0|1)][value:u64 (0 when absent)]`) and the CRC-32
//! trailer (`[body][crc32 of body:u32]`) are written and read here and nowhere else.

use std::borrow::BorrowMut;

use crate::error::CorruptionReason;

/// Declares a byte layout's field offsets as `pub const NAME: usize`, each derived from the one
/// before it: `NAME: T` says a field of type `T` (`u32`, `[u8; 32]`, ...; its width is
/// `size_of::<T>()`) starts at `NAME`, where the previous field ends (0 for the first); a last
/// `NAME` without a type is where the fields end. A table that continues a layout shared with
/// other ones starts with `after START;` (its first field is at `START` instead of 0). Every layout
/// table of storage and `shale-raft` is written with it, so the rule that offsets follow from
/// widths lives here once.
///
/// ```
/// mod header {
///     shale_storage::offsets! {
///         /// Offset of the magic number.
///         MAGIC_AT: u32,
///         /// Offset of the chain hash.
///         HASH_AT: [u8; 32],
///         /// Bytes of the header.
///         LEN,
///     }
/// }
/// assert_eq!((header::MAGIC_AT, header::HASH_AT, header::LEN), (0, 4, 36));
/// ```
#[macro_export]
macro_rules! offsets {
    (@at $at:expr; $(#[$doc:meta])* $name:ident : $field:ty, $($rest:tt)+) => {
        $(#[$doc])*
        pub const $name: usize = $at;
        $crate::offsets!(@at $name + ::core::mem::size_of::<$field>(); $($rest)+);
    };
    (@at $at:expr; $(#[$doc:meta])* $name:ident $(,)?) => {
        $(#[$doc])*
        pub const $name: usize = $at;
    };
    (after $start:expr; $($fields:tt)+) => {
        $crate::offsets!(@at $start; $($fields)+);
    };
    ($($fields:tt)+) => {
        $crate::offsets!(@at 0; $($fields)+);
    };
}

/// Why bytes could not be read: what was being decoded, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {kind}")]
pub struct ByteError {
    /// What was being decoded (the name given to [`ByteReader::new`]).
    pub what: &'static str,
    /// What went wrong.
    pub kind: ByteErrorKind,
}

/// What went wrong in a [`ByteError`].
///
/// Not `non_exhaustive`: every caller maps each kind into its own error type, and a new kind
/// should make each of those mappings fail to compile until it is handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteErrorKind {
    /// The input ends before a field it must hold: it must hold `needed` bytes from its start
    /// for the read to succeed, and holds `available`.
    #[error("truncated, {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The length or count `field` is `value`, over the largest accepted, `limit`.
    #[error("{field} is {value}, over the limit of {limit}")]
    OverLimit { field: &'static str, value: u64, limit: u64 },
    /// `field` holds `value`, which no writer produces (a presence byte other than 0 or 1).
    #[error("invalid {field} {value}")]
    InvalidField { field: &'static str, value: u64 },
    /// The string `field` is not UTF-8.
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    /// A CRC-32 trailer (`stored`) does not match the bytes before it (`computed`).
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// `extra` bytes are left over after a complete value.
    #[error("{extra} trailing bytes")]
    TrailingBytes { extra: usize },
}

impl From<ByteError> for CorruptionReason {
    /// How the storage's own decoders report a [`ByteError`].
    fn from(e: ByteError) -> Self {
        match e.kind {
            ByteErrorKind::Truncated { needed, available } => {
                CorruptionReason::Truncated { needed: needed as u64, available: available as u64 }
            }
            ByteErrorKind::OverLimit { value, limit, .. } => CorruptionReason::BadLength { length: value, limit },
            ByteErrorKind::InvalidField { field, value } => CorruptionReason::InvalidField { field, value },
            ByteErrorKind::CrcMismatch { stored, computed } => CorruptionReason::CrcMismatch { stored, computed },
            ByteErrorKind::NotUtf8 { .. } | ByteErrorKind::TrailingBytes { .. } => {
                CorruptionReason::Malformed(e.to_string())
            }
        }
    }
}

/// Reads little-endian fields from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader over `bytes`; `what` names the structure in errors.
    pub fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self { what, bytes, at: 0 }
    }

    /// A reader over `bytes` without its last four bytes, which must be a CRC-32 of the rest.
    pub fn with_crc32_trailer(what: &'static str, bytes: &'a [u8]) -> Result<Self, ByteError> {
        let Some(body_len) = bytes.len().checked_sub(4) else {
            let kind = ByteErrorKind::Truncated { needed: 4, available: bytes.len() };
            return Err(ByteError { what, kind });
        };
        let (body, trailer) = bytes.split_at(body_len);
        let stored = Self::new(what, trailer).u32()?;
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(ByteError { what, kind: ByteErrorKind::CrcMismatch { stored, computed } });
        }
        Ok(Self::new(what, body))
    }

    /// What the reader decodes (for a caller's own errors).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Bytes read so far: the position of the next read.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The bytes read so far (what a CRC stored next covers).
    pub fn consumed(&self) -> &'a [u8] {
        &self.bytes[..self.at]
    }

    /// Fails unless at least `n` more bytes remain; reads nothing. Lets a fixed-size layout
    /// report the whole size it needs instead of the first field that is missing.
    pub fn require(&self, n: usize) -> Result<(), ByteError> {
        if n > self.remaining() {
            let needed = self.at.saturating_add(n);
            return Err(self.error(ByteErrorKind::Truncated { needed, available: self.bytes.len() }));
        }
        Ok(())
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ByteError> {
        self.require(n)?;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ByteError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ByteError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, ByteError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, ByteError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, ByteError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u32 that must not exceed `limit` (a length or count named `field` in the error).
    pub fn u32_at_most(&mut self, field: &'static str, limit: u64) -> Result<u32, ByteError> {
        let value = self.u32()?;
        self.check_limit(field, u64::from(value), limit)?;
        Ok(value)
    }

    /// `[len:u32][bytes]`, the length at most `limit`.
    pub fn bytes32(&mut self, field: &'static str, limit: u64) -> Result<&'a [u8], ByteError> {
        let len = self.u32_at_most(field, limit)?;
        self.bytes(len as usize)
    }

    /// `[len:u16][utf8]`, the length at most `limit`.
    pub fn str16(&mut self, field: &'static str, limit: u64) -> Result<&'a str, ByteError> {
        let len = self.u16()?;
        self.check_limit(field, u64::from(len), limit)?;
        let b = self.bytes(usize::from(len))?;
        std::str::from_utf8(b).map_err(|_| self.error(ByteErrorKind::NotUtf8 { field }))
    }

    /// `[present:u8][value:u64]`: `None` when the presence byte is 0, any other byte but 1 is an error.
    pub fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, ByteError> {
        let present = self.u8()?;
        let value = self.u64()?;
        match present {
            0 => Ok(None),
            1 => Ok(Some(value)),
            other => Err(self.error(ByteErrorKind::InvalidField { field, value: u64::from(other) })),
        }
    }

    /// Checks a count already read: it must not exceed `limit`, nor the number of items of at
    /// least `min_item_bytes` each that the remaining bytes can hold, so a hostile count cannot
    /// make the caller allocate more than the input justifies.
    pub fn count(
        &self,
        field: &'static str,
        value: u64,
        limit: usize,
        min_item_bytes: usize,
    ) -> Result<usize, ByteError> {
        let fit = self.remaining() / min_item_bytes.max(1);
        self.check_limit(field, value, limit.min(fit) as u64)?;
        Ok(value as usize)
    }

    /// Fails unless every byte was read.
    pub fn expect_end(&self) -> Result<(), ByteError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(self.error(ByteErrorKind::TrailingBytes { extra })),
        }
    }

    fn check_limit(&self, field: &'static str, value: u64, limit: u64) -> Result<(), ByteError> {
        if value > limit {
            return Err(self.error(ByteErrorKind::OverLimit { field, value, limit }));
        }
        Ok(())
    }

    /// An error of this reader.
    fn error(&self, kind: ByteErrorKind) -> ByteError {
        ByteError { what: self.what, kind }
    }
}

/// Appends little-endian fields to a `Vec<u8>`: its own ([`ByteWriter::new`]) or the end of a
/// caller's ([`ByteWriter::append_to`]). Writing never fails; callers check limits first.
#[derive(Debug, Default)]
pub struct ByteWriter<B: BorrowMut<Vec<u8>> = Vec<u8>> {
    buf: B,
    /// Where this writer's bytes start in `buf`.
    start: usize,
}

impl ByteWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n), start: 0 }
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

impl<'a> ByteWriter<&'a mut Vec<u8>> {
    /// A writer that appends to `buf` (what is already there is kept, and not counted by
    /// [`ByteWriter::len`] or covered by [`ByteWriter::crc`]).
    pub fn append_to(buf: &'a mut Vec<u8>) -> Self {
        let start = buf.len();
        Self { buf, start }
    }
}

impl<B: BorrowMut<Vec<u8>>> ByteWriter<B> {
    /// Makes room for `n` more bytes.
    pub fn reserve(&mut self, n: usize) -> &mut Self {
        self.buf.borrow_mut().reserve(n);
        self
    }

    /// Raw bytes, no prefix.
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.borrow_mut().extend_from_slice(v);
        self
    }

    /// `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        let buf = self.buf.borrow_mut();
        buf.resize(buf.len() + n, 0);
        self
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.borrow_mut().push(v);
        self
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    /// `[len:u32][bytes]`; the caller has checked the length against its limit.
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        debug_assert!(u32::try_from(v.len()).is_ok());
        self.u32(v.len() as u32).raw(v)
    }

    /// `[len:u16][utf8]`; the caller has checked the length against its limit.
    pub fn str16(&mut self, v: &str) -> &mut Self {
        debug_assert!(u16::try_from(v.len()).is_ok());
        self.u16(v.len() as u16).raw(v.as_bytes())
    }

    /// `[present:u8][value:u64]` (value 0 when absent).
    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        self.u8(u8::from(v.is_some())).u64(v.unwrap_or(0))
    }

    /// Appends the CRC-32 of every byte this writer wrote so far.
    pub fn crc(&mut self) -> &mut Self {
        let crc = crc32fast::hash(self.written());
        self.u32(crc)
    }

    /// The bytes this writer wrote.
    pub fn written(&self) -> &[u8] {
        &self.buf.borrow()[self.start..]
    }

    /// How many bytes this writer wrote.
    pub fn len(&self) -> usize {
        self.written().len()
    }

    /// Whether this writer wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One field of each kind the reader and writer know.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Field {
        U8(u8),
        U16(u16),
        U32(u32),
        U64(u64),
        Bytes32(Vec<u8>),
        Str16(String),
        OptU64(Option<u64>),
        Array([u8; 5]),
    }

    const LIMIT: u64 = 64;

    fn any_field() -> impl Strategy<Value = Field> {
        prop_oneof![
            any::<u8>().prop_map(Field::U8),
            any::<u16>().prop_map(Field::U16),
            any::<u32>().prop_map(Field::U32),
            any::<u64>().prop_map(Field::U64),
            proptest::collection::vec(any::<u8>(), 0..=LIMIT as usize).prop_map(Field::Bytes32),
            "[a-zé]{0,20}".prop_map(Field::Str16),
            proptest::option::of(any::<u64>()).prop_map(Field::OptU64),
            any::<[u8; 5]>().prop_map(Field::Array),
        ]
    }

    fn write<B: BorrowMut<Vec<u8>>>(w: &mut ByteWriter<B>, f: &Field) {
        match f {
            Field::U8(v) => w.u8(*v),
            Field::U16(v) => w.u16(*v),
            Field::U32(v) => w.u32(*v),
            Field::U64(v) => w.u64(*v),
            Field::Bytes32(v) => w.bytes32(v),
            Field::Str16(v) => w.str16(v),
            Field::OptU64(v) => w.opt_u64(*v),
            Field::Array(v) => w.raw(v),
        };
    }

    /// Reads a field of the same kind as `like`.
    fn read(r: &mut ByteReader<'_>, like: &Field) -> Result<Field, ByteError> {
        Ok(match like {
            Field::U8(_) => Field::U8(r.u8()?),
            Field::U16(_) => Field::U16(r.u16()?),
            Field::U32(_) => Field::U32(r.u32()?),
            Field::U64(_) => Field::U64(r.u64()?),
            Field::Bytes32(_) => Field::Bytes32(r.bytes32("bytes", LIMIT)?.to_vec()),
            Field::Str16(_) => Field::Str16(r.str16("string", LIMIT)?.to_string()),
            Field::OptU64(_) => Field::OptU64(r.opt_u64("option")?),
            Field::Array(_) => Field::Array(r.array()?),
        })
    }

    fn read_all(bytes: &[u8], fields: &[Field]) -> Result<Vec<Field>, ByteError> {
        let mut r = ByteReader::with_crc32_trailer("test", bytes)?;
        let out = fields.iter().map(|f| read(&mut r, f)).collect::<Result<Vec<_>, _>>()?;
        r.expect_end()?;
        Ok(out)
    }

    fn encode(fields: &[Field]) -> Vec<u8> {
        let mut w = ByteWriter::new();
        for f in fields {
            write(&mut w, f);
        }
        w.crc();
        w.finish()
    }

    proptest! {
        #[test]
        fn fields_round_trip(fields in proptest::collection::vec(any_field(), 0..12)) {
            let bytes = encode(&fields);
            prop_assert_eq!(read_all(&bytes, &fields).unwrap(), fields);
        }

        #[test]
        fn every_truncation_and_flip_is_an_error(fields in proptest::collection::vec(any_field(), 0..8)) {
            let bytes = encode(&fields);
            for cut in 0..bytes.len() {
                prop_assert!(read_all(&bytes[..cut], &fields).is_err());
            }
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x04;
                prop_assert!(read_all(&bad, &fields).is_err(), "flip at {}", i);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), fields in proptest::collection::vec(any_field(), 0..8)) {
            let mut r = ByteReader::new("test", &bytes);
            for f in &fields {
                let before = r.position();
                if read(&mut r, f).is_err() {
                    // A failed read of a fixed-size field consumes nothing.
                    prop_assert!(matches!(f, Field::Bytes32(_) | Field::Str16(_) | Field::OptU64(_)) || r.position() == before);
                    break;
                }
            }
            let _ = read_all(&bytes, &fields);
            let _ = r.count("count", u64::from(bytes.first().copied().unwrap_or(0)), 10, 3);
        }

        #[test]
        fn appending_writer_covers_only_its_own_bytes(prefix in proptest::collection::vec(any::<u8>(), 0..16), fields in proptest::collection::vec(any_field(), 0..6)) {
            let mut out = prefix.clone();
            let mut w = ByteWriter::append_to(&mut out);
            for f in &fields {
                write(&mut w, f);
            }
            w.crc();
            let len = w.len();
            prop_assert_eq!(&out[..prefix.len()], prefix.as_slice());
            prop_assert_eq!(len, out.len() - prefix.len());
            let alone = encode(&fields);
            prop_assert_eq!(&out[prefix.len()..], alone.as_slice());
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let mut r = ByteReader::new("thing", &[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0201);
        let e = r.u32().unwrap_err();
        assert_eq!(e, ByteError { what: "thing", kind: ByteErrorKind::Truncated { needed: 6, available: 3 } });
        assert_eq!(e.to_string(), "thing: truncated, 6 bytes needed, 3 available");
        assert_eq!(r.position(), 2);
        assert_eq!(r.expect_end().unwrap_err().kind, ByteErrorKind::TrailingBytes { extra: 1 });
        let mut r = ByteReader::new("thing", &[0xff, 0xff, 0xff, 0xff]);
        let over = ByteErrorKind::OverLimit { field: "len", value: u64::from(u32::MAX), limit: 10 };
        assert_eq!(r.bytes32("len", 10).unwrap_err().kind, over);
        let r = ByteReader::new("thing", &[0u8; 16]);
        assert!(matches!(r.count("n", 3, 10, 8).unwrap_err().kind, ByteErrorKind::OverLimit { limit: 2, .. }));
        assert_eq!(r.count("n", 2, 10, 8), Ok(2));
        let mut r = ByteReader::new("thing", &[2, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(r.opt_u64("opt").unwrap_err().kind, ByteErrorKind::InvalidField { value: 2, .. }));
        let mut r = ByteReader::new("thing", &[2, 0, 0xff, 0xfe]);
        assert_eq!(r.str16("s", 10).unwrap_err().kind, ByteErrorKind::NotUtf8 { field: "s" });
        let short = ByteReader::with_crc32_trailer("thing", &[0; 3]).unwrap_err();
        assert!(matches!(short.kind, ByteErrorKind::Truncated { .. }));
        let mut w = ByteWriter::new();
        w.u8(1).crc();
        let mut bytes = w.finish();
        bytes[0] = 2;
        let bad = ByteReader::with_crc32_trailer("thing", &bytes).unwrap_err();
        assert!(matches!(bad.kind, ByteErrorKind::CrcMismatch { .. }));
    }
}
