//! One stream of 100-byte records in 4 KiB segments, manual checkpoints: a few dozen records fill
//! a segment, so tests that damage segment files can compute where each record lies.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shale_storage::format::{record as rec, segment as seg};
use shale_storage::{CheckpointPolicy, StorageOptions, StreamId};

/// The stream.
pub const S: StreamId = StreamId::new(1);
/// Every payload's length.
pub const LEN: usize = 100;

pub fn options() -> StorageOptions {
    StorageOptions { max_segment_bytes: 4096, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

/// Records per 4 KiB segment with 100-byte payloads.
pub fn per_segment() -> u64 {
    ((4096 - seg::HEADER_LEN) / rec::encoded_len(LEN)) as u64
}

/// The payload of record `i`: its number, then one letter repeated.
pub fn payload(i: u64) -> Bytes {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(LEN, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

/// The file of segment `seq` of [`S`] in the storage at `dir`.
pub fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("1").join(format!("segment_{seq:06}.log"))
}

/// Byte position of record `offset` in its segment file.
pub fn position(offset: u64) -> usize {
    seg::HEADER_LEN + (offset % per_segment()) as usize * rec::encoded_len(LEN)
}

/// Flips payload byte `byte` of record `offset`; with `fix_crc` the record's CRC is rewritten so
/// only the chain can tell.
pub fn flip(dir: &Path, offset: u64, byte: usize, fix_crc: bool) {
    let path = seg_path(dir, offset / per_segment());
    let mut b = fs::read(&path).unwrap();
    let p = position(offset);
    b[p + rec::PAYLOAD_AT + byte] ^= 0x01;
    if fix_crc {
        let crc_at = p + rec::PAYLOAD_AT + LEN;
        let crc = crc32fast::hash(&b[p..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    fs::write(&path, b).unwrap();
}
