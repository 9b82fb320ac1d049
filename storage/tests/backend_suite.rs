//! The shared behaviour suite of `shale-storage`: every test is written once, generic over a
//! [`Fixture`] that opens a fresh backend, and instantiated per backend by `backend_suite!`.
//!
//! Expected chain hashes are computed here with `sha2` directly (never with the crate's own
//! `chain_hash`), and segment layouts from the documented byte sizes, so a backend cannot pass by
//! agreeing with itself.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shale_storage::{
    ChainHash, Checkpoint, CheckpointPolicy, CodecKind, CompactionConfig, CompactionResult, MemoryStorage, Offset,
    Storage, StorageBackend, StorageError, StorageOptions, StreamId, format,
};

mod common;

use common::noise::xorshift;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Opens fresh backends for one test.
trait Fixture {
    type Backend: StorageBackend;
    /// A new, empty backend with `options`.
    fn open(&self, options: StorageOptions) -> Self::Backend;
    /// Flips one bit in the stored payload of record `offset` (every record of `stream` holding
    /// a payload of `payload_len` bytes, stored uncompressed), as a bad disk would.
    fn damage(&self, b: &Self::Backend, stream: StreamId, offset: Offset, payload_len: usize);
}

/// [`MemoryStorage`], the reference semantics.
struct Memory;

impl Fixture for Memory {
    type Backend = MemoryStorage;
    fn open(&self, options: StorageOptions) -> MemoryStorage {
        MemoryStorage::with_options(options).expect("valid options")
    }
    fn damage(&self, b: &MemoryStorage, stream: StreamId, offset: Offset, _payload_len: usize) {
        assert!(b.damage_record(stream, offset), "offset {offset} to damage exists");
    }
}

/// The disk [`Storage`], each backend in its own directory of one temp dir.
struct Disk {
    dir: tempfile::TempDir,
    opened: Cell<u32>,
}

impl Disk {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), opened: Cell::new(0) }
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("storage-{n}"))
    }

    /// Drops `b` and opens its directory again: only what reached the files survives.
    fn reopen(&self, b: Storage, options: StorageOptions) -> Storage {
        let path = b.path().to_path_buf();
        drop(b);
        Storage::open_with(path, options).expect("reopen")
    }
}

impl Fixture for Disk {
    type Backend = Storage;
    fn open(&self, options: StorageOptions) -> Storage {
        let n = self.opened.get() + 1;
        self.opened.set(n);
        Storage::open_with(self.path(n), options).expect("open")
    }
    fn damage(&self, b: &Storage, stream: StreamId, offset: Offset, payload_len: usize) {
        // Position from the documented layout: header, then fixed-size records.
        let seg =
            b.segments(stream).unwrap().into_iter().find(|s| s.base <= offset && offset < s.end).expect("segment");
        let record = format::record::encoded_len(payload_len) as u64;
        let at = format::segment::HEADER_LEN as u64
            + (offset.get() - seg.base.get()) * record
            + format::record::HEADER_LEN as u64
            + payload_len as u64 / 2;
        flip_bit(&b.path().join(stream.get().to_string()).join(&seg.file), at);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: independent expectations
// ---------------------------------------------------------------------------------------------

const S: StreamId = StreamId::new(7);

fn off(n: u64) -> Offset {
    Offset::new(n)
}

/// Manual checkpoints only, default limits.
fn manual() -> StorageOptions {
    StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..StorageOptions::default() }
}

/// Manual checkpoints and 4 KiB segments, so a few records fill a segment.
fn small_segments() -> StorageOptions {
    StorageOptions { max_segment_bytes: 4096, ..manual() }
}

/// A deterministic payload of `len` bytes that differs per `(tag, i)`.
fn payload(tag: u64, i: u64, len: usize) -> Bytes {
    // Varied bytes, so no two payloads of a test collide.
    xorshift(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5555, len)
}

fn payloads(tag: u64, range: std::ops::Range<u64>, len: usize) -> Vec<Bytes> {
    range.map(|i| payload(tag, i, len)).collect()
}

/// SHA-256 over the concatenation of `parts`, with `sha2` directly.
fn sha256(parts: &[&[u8]]) -> ChainHash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    ChainHash(h.finalize().into())
}

/// Chain hashes of `events` written from offset `start` after `prev` (record 0 hashes its payload
/// alone, every later record `prev || payload`).
fn expected_chain(start: u64, mut prev: ChainHash, events: &[Bytes]) -> Vec<ChainHash> {
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        prev = if start + i as u64 == 0 { sha256(&[e]) } else { sha256(&[&prev.0, e]) };
        out.push(prev);
    }
    out
}

/// Appends `events` one batch of `batch` at a time; returns the next offset.
fn append_all<B: StorageBackend>(b: &B, stream: StreamId, events: &[Bytes], batch: usize) -> Offset {
    let mut next = b.next_offset(stream).unwrap();
    for chunk in events.chunks(batch) {
        let got = b.append_batch(stream, chunk.to_vec(), next, false).unwrap();
        assert_eq!(got, next.plus(chunk.len() as u64), "append_batch returns the new next offset");
        next = got;
    }
    next
}

/// Every payload from `from` to the end, read in calls of at most `max_bytes`.
fn read_all<B: StorageBackend>(b: &B, stream: StreamId, from: Offset, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let recs = b.read_records(stream, at, max_bytes).unwrap();
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            assert_eq!(r.offset, at, "records come back in offset order without gaps");
            out.push(r.payload);
            at = at.plus(1);
        }
    }
}

/// Segment accounting as documented in `format`: a segment header, then records of
/// `record::OVERHEAD + payload` bytes; a segment rolls when the next record would pass the limit.
fn records_per_segment(max_segment_bytes: u64, payload_len: usize) -> u64 {
    let header = format::segment::HEADER_LEN as u64;
    let record = format::record::encoded_len(payload_len) as u64;
    ((max_segment_bytes - header) / record).max(1)
}

fn sealed_segment_bytes(per_segment: u64, payload_len: usize) -> u64 {
    format::segment::HEADER_LEN as u64 + per_segment * format::record::encoded_len(payload_len) as u64
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Flips bit 4 of byte `at` of the file at `path`, in place.
fn flip_bit(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
    f.sync_data().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

fn round_trip<F: Fixture>(f: &F) {
    let b = f.open(manual());
    let events = vec![
        Bytes::from_static(b"first"),
        Bytes::new(),
        Bytes::from(vec![0u8; 1000]),
        payload(1, 3, 4096),
        Bytes::from_static(b"\x00\xff\x00"),
    ];
    assert_eq!(b.append_batch(S, events[..2].to_vec(), off(0), false).unwrap(), off(2));
    assert_eq!(b.append_batch(S, events[2..].to_vec(), off(2), true).unwrap(), off(5));
    assert_eq!(b.read_from(S, off(0), usize::MAX).unwrap(), events);
    let recs = b.read_records(S, off(0), usize::MAX).unwrap();
    assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..5).map(off).collect::<Vec<_>>());
    assert_eq!(b.read_from(S, off(3), usize::MAX).unwrap(), events[3..].to_vec());
    assert_eq!(b.next_offset(S).unwrap(), off(5));
    assert_eq!(b.log_start(S).unwrap(), off(0));
    b.sync(S).unwrap();
    assert!(b.stream_bytes(S).unwrap() > 4096 + 1000, "stream_bytes counts what was written");
}

fn compressed_codecs_round_trip_with_same_hashes<F: Fixture>(f: &F) {
    // Compressible (repetitive text) and incompressible payloads, mixed.
    let events: Vec<Bytes> = (0..120u64)
        .map(|i| {
            if i % 3 == 0 {
                payload(23, i, 300)
            } else {
                Bytes::from(format!("event {i}: ").repeat(1 + (i as usize % 40)))
            }
        })
        .collect();
    let expected = expected_chain(0, ChainHash::ZERO, &events);
    for codec in [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 3 }] {
        let b = f.open(StorageOptions { codec, ..small_segments() });
        append_all(&b, S, &events, 8);
        let recs = b.read_records(S, off(0), usize::MAX).unwrap();
        assert_eq!(recs.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), events, "{codec:?}");
        assert_eq!(recs.iter().map(|r| r.hash).collect::<Vec<_>>(), expected, "{codec:?}");
        assert_eq!(b.verify_chain(S).unwrap().head, expected[119], "{codec:?}");
        assert_eq!(read_all(&b, S, off(17), 700), events[17..].to_vec(), "{codec:?}");
    }
}

fn offsets_are_per_stream_and_gapless<F: Fixture>(f: &F) {
    let b = f.open(manual());
    let (a, c) = (StreamId::new(1), StreamId::new(2));
    assert_eq!(b.next_offset(a).unwrap(), off(0), "an unknown stream is empty at 0");
    assert_eq!(b.log_start(a).unwrap(), off(0));
    assert_eq!(b.latest_chain_hash(a).unwrap(), ChainHash::ZERO);
    let mut next_a = off(0);
    for n in 1..=10u64 {
        let evs = payloads(1, 0..n, 10);
        next_a = b.append_batch(a, evs, next_a, false).unwrap();
    }
    assert_eq!(next_a, off(55));
    assert_eq!(b.append_batch(c, vec![payload(2, 0, 3)], off(0), false).unwrap(), off(1));
    assert_eq!(b.next_offset(a).unwrap(), off(55));
    assert_eq!(b.next_offset(c).unwrap(), off(1));
    let recs = b.read_records(a, off(0), usize::MAX).unwrap();
    assert_eq!(recs.len(), 55);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, off(i as u64));
    }
}

fn chain_hashes_match_independent_sha256<F: Fixture>(f: &F) {
    let b = f.open(manual());
    // A well-known vector first: record 0 is SHA-256 of its payload alone.
    b.append_batch(S, vec![Bytes::from_static(b"abc")], off(0), false).unwrap();
    assert_eq!(
        b.latest_chain_hash(S).unwrap().to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let mut events = vec![Bytes::from_static(b"abc")];
    events.extend(payloads(3, 1..40, 77));
    events.push(Bytes::new());
    append_all(&b, S, &events[1..], 7);
    let expected = expected_chain(0, ChainHash::ZERO, &events);
    // Record 1 by hand: SHA-256(hash_0 || payload_1).
    assert_eq!(expected[1], sha256(&[&expected[0].0, &events[1]]));

    let recs = b.read_records(S, off(0), usize::MAX).unwrap();
    assert_eq!(recs.len(), events.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.hash, expected[i], "hash of record {i}");
        let prev = if i == 0 { ChainHash::ZERO } else { expected[i - 1] };
        assert_eq!(r.prev_hash, prev, "prev_hash of record {i}");
        assert_eq!(b.chain_hash_at(S, off(i as u64)).unwrap(), expected[i]);
    }
    assert_eq!(b.latest_chain_hash(S).unwrap(), *expected.last().unwrap());
    let v = b.verify_chain(S).unwrap();
    assert_eq!((v.stream, v.from, v.to, v.records), (S, off(0), off(events.len() as u64), events.len() as u64));
    assert_eq!(v.head, *expected.last().unwrap());

    let end = events.len() as u64;
    match b.chain_hash_at(S, off(end)) {
        Err(StorageError::OffsetOutOfRange { stream, requested, start, end: e }) => {
            assert_eq!((stream, requested, start, e), (S, off(end), off(0), off(end)));
        }
        other => panic!("chain_hash_at past the end: {other:?}"),
    }
}

fn offset_mismatch_writes_nothing<F: Fixture>(f: &F) {
    let b = f.open(manual());
    append_all(&b, S, &payloads(4, 0..5, 20), 5);
    let head = b.latest_chain_hash(S).unwrap();
    let bytes = b.stream_bytes(S).unwrap();
    for wrong in [0u64, 4, 6, 1000] {
        match b.append_batch(S, vec![payload(4, 99, 20), payload(4, 98, 20)], off(wrong), true) {
            Err(StorageError::OffsetMismatch { stream, expected, actual }) => {
                assert_eq!((stream, expected, actual), (S, off(wrong), off(5)));
            }
            other => panic!("append at {wrong} on a stream at 5: {other:?}"),
        }
    }
    assert_eq!(b.next_offset(S).unwrap(), off(5));
    assert_eq!(b.latest_chain_hash(S).unwrap(), head);
    assert_eq!(b.stream_bytes(S).unwrap(), bytes);
    assert_eq!(b.read_from(S, off(0), usize::MAX).unwrap(), payloads(4, 0..5, 20));
    b.verify_chain(S).unwrap();
    // The right offset still works afterwards.
    assert_eq!(b.append_batch(S, vec![payload(4, 5, 20)], off(5), false).unwrap(), off(6));

    // On a stream that does not exist yet, only offset 0 is accepted.
    let fresh = StreamId::new(99);
    match b.append_batch(fresh, vec![payload(4, 0, 1)], off(3), false) {
        Err(StorageError::OffsetMismatch { stream, expected, actual }) => {
            assert_eq!((stream, expected, actual), (fresh, off(3), off(0)));
        }
        other => panic!("append at 3 on a new stream: {other:?}"),
    }
    assert_eq!(b.next_offset(fresh).unwrap(), off(0));
    assert!(b.read_from(fresh, off(0), usize::MAX).unwrap().is_empty());
    assert!(!b.streams().contains(&fresh), "a rejected append does not create the stream");
}

fn empty_batch_is_rejected<F: Fixture>(f: &F) {
    let b = f.open(manual());
    match b.append_batch(S, Vec::new(), off(0), false) {
        Err(StorageError::EmptyBatch { stream }) => assert_eq!(stream, S),
        other => panic!("empty batch: {other:?}"),
    }
    append_all(&b, S, &payloads(5, 0..3, 8), 3);
    assert!(matches!(b.append_batch(S, Vec::new(), off(3), true), Err(StorageError::EmptyBatch { .. })));
    assert_eq!(b.next_offset(S).unwrap(), off(3));
}

fn oversized_records_and_batches_are_rejected<F: Fixture>(f: &F) {
    let options = StorageOptions { max_record_bytes: 1024, max_batch_bytes: 4096, ..manual() };
    let b = f.open(options);
    let batch = vec![payload(6, 0, 10), payload(6, 1, 1025), payload(6, 2, 10)];
    match b.append_batch(S, batch, off(0), false) {
        Err(StorageError::RecordTooLarge { stream, index, size, max }) => {
            assert_eq!((stream, index, size, max), (S, 1, 1025, 1024));
        }
        other => panic!("1025-byte record with max 1024: {other:?}"),
    }
    assert_eq!(b.next_offset(S).unwrap(), off(0), "no event of a rejected batch is written");
    // Exactly at the limit is fine.
    assert_eq!(b.append_batch(S, vec![payload(6, 3, 1024)], off(0), false).unwrap(), off(1));
    let five = payloads(6, 10..15, 1000);
    match b.append_batch(S, five, off(1), false) {
        Err(StorageError::BatchTooLarge { stream, count, bytes, max_bytes }) => {
            assert_eq!((stream, count, bytes, max_bytes), (S, 5, 5000, 4096));
        }
        other => panic!("5000-byte batch with max 4096: {other:?}"),
    }
    assert_eq!(b.next_offset(S).unwrap(), off(1));
    assert_eq!(b.read_from(S, off(0), usize::MAX).unwrap(), vec![payload(6, 3, 1024)]);
}

fn read_semantics<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    // 60 records of 100 B (165 B encoded): 24 a 4 KiB segment, so three segments.
    let events = payloads(7, 0..60, 100);
    append_all(&b, S, &events, 20);

    // Always at least one record, even when it alone is over max_bytes.
    assert_eq!(b.read_from(S, off(0), 0).unwrap(), events[..1].to_vec());
    assert_eq!(b.read_from(S, off(4), 99).unwrap(), events[4..5].to_vec());
    // max_bytes bounds the payload total: exactly three fit, three and a half give three.
    assert_eq!(b.read_from(S, off(2), 300).unwrap(), events[2..5].to_vec());
    assert_eq!(b.read_from(S, off(2), 350).unwrap(), events[2..5].to_vec());
    assert_eq!(b.read_from(S, off(2), 299).unwrap(), events[2..4].to_vec());

    // At or past the end: empty, not an error.
    assert!(b.read_from(S, off(60), usize::MAX).unwrap().is_empty());
    assert!(b.read_from(S, off(1000), usize::MAX).unwrap().is_empty());

    // read_range is half-open and clamps its end.
    let r = b.read_range(S, off(5), off(8), usize::MAX).unwrap();
    assert_eq!(r.iter().map(|r| r.offset.get()).collect::<Vec<_>>(), vec![5, 6, 7]);
    assert_eq!(b.read_range(S, off(58), off(500), usize::MAX).unwrap().len(), 2);
    assert!(b.read_range(S, off(5), off(5), usize::MAX).unwrap().is_empty());
    assert!(b.read_range(S, off(9), off(5), usize::MAX).unwrap().is_empty(), "an end below from is empty");

    // An unknown stream reads as empty.
    assert!(b.read_from(StreamId::new(12345), off(0), usize::MAX).unwrap().is_empty());

    // Below the log start: OffsetOutOfRange naming start and end.
    let r = b.compact(S, &CompactionConfig::default()).unwrap();
    assert_eq!(r.new_log_start, off(48), "two sealed segments of 24 records go");
    let start = b.log_start(S).unwrap();
    assert_eq!(start, r.new_log_start);
    match b.read_from(S, off(start.get() - 1), usize::MAX) {
        Err(StorageError::OffsetOutOfRange { stream, requested, start: s, end }) => {
            assert_eq!((stream, requested, s, end), (S, off(start.get() - 1), start, off(60)));
        }
        other => panic!("read below the log start: {other:?}"),
    }
    assert!(matches!(
        b.read_range(S, off(0), off(60), usize::MAX),
        Err(StorageError::OffsetOutOfRange { requested, .. }) if requested == off(0)
    ));
    assert_eq!(b.read_from(S, start, usize::MAX).unwrap(), events[start.get() as usize..].to_vec());
}

fn reads_across_segment_rotation<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    // Sizes 0..700 cycle so records straddle segment boundaries at varied points.
    let events: Vec<Bytes> = (0..300u64).map(|i| payload(8, i, (i as usize * 37) % 700)).collect();
    append_all(&b, S, &events[..150], 1);
    append_all(&b, S, &events[150..], 13);
    let total: usize = events.iter().map(Bytes::len).sum();
    assert!(b.stream_bytes(S).unwrap() as usize > total, "{} bytes of payload in several segments", total);

    for max_bytes in [0, 1, 500, 4096, 10_000, usize::MAX] {
        assert_eq!(read_all(&b, S, off(0), max_bytes), events, "max_bytes {max_bytes}");
    }
    for from in (0..300u64).step_by(17) {
        assert_eq!(read_all(&b, S, off(from), 3000), events[from as usize..].to_vec(), "from {from}");
    }
    let expected = expected_chain(0, ChainHash::ZERO, &events);
    let recs = b.read_records(S, off(0), usize::MAX).unwrap();
    assert_eq!(recs.iter().map(|r| r.hash).collect::<Vec<_>>(), expected);
    assert_eq!(b.verify_chain(S).unwrap().head, expected[299]);
    // A range that starts and ends mid-segment.
    let r = b.read_range(S, off(123), off(211), usize::MAX).unwrap();
    assert_eq!(r.into_iter().map(|r| r.payload).collect::<Vec<_>>(), events[123..211].to_vec());
}

fn truncate_then_append_matches_fresh_stream<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let old = payloads(9, 0..120, 200);
    append_all(&b, S, &old, 10);
    let old_hashes = expected_chain(0, ChainHash::ZERO, &old);
    b.create_checkpoint_at(S, off(40), Bytes::new()).unwrap();
    b.create_checkpoint_at(S, off(100), Bytes::new()).unwrap();

    // Cut mid-segment.
    b.truncate_from(S, off(57)).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(57));
    assert_eq!(b.latest_chain_hash(S).unwrap(), old_hashes[56], "chain head restored to record 56");
    assert!(b.read_from(S, off(57), usize::MAX).unwrap().is_empty());
    assert_eq!(b.latest_checkpoint(S).unwrap().unwrap().offset, off(40), "checkpoints above the cut go");
    let new = payloads(10, 57..90, 150);
    append_all(&b, S, &new, 4);

    let mut combined = old[..57].to_vec();
    combined.extend(new.iter().cloned());
    let fresh = f.open(small_segments());
    let other = StreamId::new(8);
    append_all(&fresh, other, &combined, 1);
    let expected = expected_chain(0, ChainHash::ZERO, &combined);
    let got: Vec<ChainHash> = b.read_records(S, off(0), usize::MAX).unwrap().iter().map(|r| r.hash).collect();
    let fresh_got: Vec<ChainHash> =
        fresh.read_records(other, off(0), usize::MAX).unwrap().iter().map(|r| r.hash).collect();
    assert_eq!(got, expected);
    assert_eq!(fresh_got, expected);
    assert_eq!(b.verify_chain(S).unwrap().head, *expected.last().unwrap());

    // Cut exactly at a segment boundary and at 0.
    let per = records_per_segment(4096, 200);
    b.truncate_from(S, off(per)).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(per));
    assert_eq!(b.latest_chain_hash(S).unwrap(), expected[per as usize - 1]);
    append_all(&b, S, &combined[per as usize..], 9);
    assert_eq!(b.verify_chain(S).unwrap().head, *expected.last().unwrap());
    b.truncate_from(S, off(0)).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(0));
    assert_eq!(b.latest_chain_hash(S).unwrap(), ChainHash::ZERO);
    append_all(&b, S, &combined[..3], 3);
    assert_eq!(b.latest_chain_hash(S).unwrap(), expected[2]);

    // At or past the end: a no-op.
    b.truncate_from(S, off(3)).unwrap();
    b.truncate_from(S, off(1000)).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(3));
}

fn truncate_below_log_start_is_out_of_range<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    append_all(&b, S, &payloads(11, 0..100, 200), 10);
    let r = b.compact(S, &CompactionConfig::default()).unwrap();
    let start = r.new_log_start;
    assert!(start > off(0));
    match b.truncate_from(S, off(start.get() - 1)) {
        Err(StorageError::OffsetOutOfRange { stream, requested, start: s, end }) => {
            assert_eq!((stream, requested, s, end), (S, off(start.get() - 1), start, off(100)));
        }
        other => panic!("truncate below the log start: {other:?}"),
    }
    assert_eq!(b.next_offset(S).unwrap(), off(100));
    // Truncating at the log start empties the stream but keeps its anchor.
    let anchor = b.chain_hash_at(S, off(start.get() - 1)).unwrap();
    b.truncate_from(S, start).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), start);
    assert_eq!(b.log_start(S).unwrap(), start);
    assert_eq!(b.latest_chain_hash(S).unwrap(), anchor);
    let more = payloads(12, 0..3, 10);
    append_all(&b, S, &more, 3);
    assert_eq!(b.latest_chain_hash(S).unwrap(), expected_chain(start.get(), anchor, &more)[2]);
    b.verify_chain(S).unwrap();
}

fn checkpoints_create_and_look_up<F: Fixture>(f: &F) {
    let b = f.open(manual());
    assert_eq!(b.latest_checkpoint(S).unwrap(), None);
    let events = payloads(13, 0..30, 50);
    let hashes = expected_chain(0, ChainHash::ZERO, &events);
    append_all(&b, S, &events[..10], 10);

    let cp = b.create_checkpoint(S).unwrap();
    assert_eq!((cp.offset, cp.chain_hash, cp.record_count), (off(10), hashes[9], 10));
    assert!(cp.data.is_empty());
    assert_eq!(b.latest_checkpoint(S).unwrap(), Some(cp.clone()));

    append_all(&b, S, &events[10..], 5);
    let data = Bytes::from_static(b"raft snapshot state");
    let cp20 = b.create_checkpoint_at(S, off(20), data.clone()).unwrap();
    assert_eq!((cp20.offset, cp20.chain_hash, cp20.data.clone()), (off(20), hashes[19], data));
    let cp0 = b.create_checkpoint_at(S, off(0), Bytes::from_static(b"zero")).unwrap();
    assert_eq!(cp0.chain_hash, ChainHash::ZERO);
    let cp30 = b.create_checkpoint_at(S, off(30), Bytes::new()).unwrap();
    assert_eq!(cp30.chain_hash, hashes[29]);

    assert_eq!(b.latest_checkpoint(S).unwrap().unwrap().offset, off(30));
    let below = |o: u64| b.checkpoint_at_or_below(S, off(o)).unwrap().map(|c| c.offset.get());
    assert_eq!(
        [below(0), below(9), below(10), below(19), below(20), below(29), below(30), below(1000)],
        [Some(0), Some(0), Some(10), Some(10), Some(20), Some(20), Some(30), Some(30)]
    );
    assert_eq!(b.checkpoint_at_or_below(S, off(25)).unwrap(), Some(cp20));
    assert_eq!(b.checkpoint_at_or_below(StreamId::new(1), off(25)).unwrap(), None);

    // Past the next offset cannot be anchored.
    match b.create_checkpoint_at(S, off(31), Bytes::new()) {
        Err(StorageError::InvalidCheckpoint { stream, offset, .. }) => assert_eq!((stream, offset), (S, off(31))),
        other => panic!("checkpoint past the end: {other:?}"),
    }
    // Checkpoints consume no offsets and do not touch the chain.
    assert_eq!(b.next_offset(S).unwrap(), off(30));
    assert_eq!(b.verify_chain(S).unwrap().head, hashes[29]);
}

fn checkpoint_policy_writes_every_n_records<F: Fixture>(f: &F) {
    let options = StorageOptions { checkpoint_policy: CheckpointPolicy::EveryRecords(10), ..StorageOptions::default() };
    let b = f.open(options);
    let events = payloads(14, 0..60, 16);
    let hashes = expected_chain(0, ChainHash::ZERO, &events);
    // One by one: checkpoints land at exactly 10 and 20.
    append_all(&b, S, &events[..25], 1);
    let at = |o: u64| b.checkpoint_at_or_below(S, off(o)).unwrap().map(|c| (c.offset, c.chain_hash));
    assert_eq!(at(9), None);
    assert_eq!(at(19), Some((off(10), hashes[9])));
    assert_eq!(at(24), Some((off(20), hashes[19])));
    // A batch that crosses the mark checkpoints at its end.
    append_all(&b, S, &events[25..37], 12);
    assert_eq!(b.latest_checkpoint(S).unwrap().map(|c| (c.offset, c.chain_hash)), Some((off(37), hashes[36])));
    // The count restarts from the last checkpoint, not from multiples of 10.
    append_all(&b, S, &events[37..46], 1);
    assert_eq!(b.latest_checkpoint(S).unwrap().unwrap().offset, off(37));
    append_all(&b, S, &events[46..47], 1);
    assert_eq!(b.latest_checkpoint(S).unwrap().unwrap().offset, off(47));

    let m = f.open(manual());
    append_all(&m, S, &events, 1);
    assert_eq!(m.latest_checkpoint(S).unwrap(), None, "Manual writes no checkpoint on its own");
}

fn install_checkpoint_that_matches_keeps_records<F: Fixture>(f: &F) {
    let b = f.open(manual());
    let events = payloads(15, 0..20, 64);
    let hashes = expected_chain(0, ChainHash::ZERO, &events);
    append_all(&b, S, &events, 4);
    // A snapshot from a replica with the same history.
    let cp = Checkpoint::new(off(12), hashes[11], Bytes::from_static(b"state@12"));
    b.install_checkpoint(S, cp.clone()).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(20));
    assert_eq!(b.log_start(S).unwrap(), off(0));
    assert_eq!(b.read_from(S, off(0), usize::MAX).unwrap(), events);
    assert_eq!(b.checkpoint_at_or_below(S, off(15)).unwrap(), Some(cp.clone()));
    assert_eq!(b.latest_checkpoint(S).unwrap(), Some(cp));
    assert_eq!(b.verify_chain(S).unwrap().head, hashes[19]);
    // At the very end also matches.
    let end = Checkpoint::new(off(20), hashes[19], Bytes::new());
    b.install_checkpoint(S, end).unwrap();
    assert_eq!(b.next_offset(S).unwrap(), off(20));
    assert_eq!(b.read_from(S, off(0), usize::MAX).unwrap().len(), 20);
}

fn install_checkpoint_that_conflicts_restarts_stream<F: Fixture>(f: &F) {
    let b = f.open(manual());
    let events = payloads(16, 0..20, 64);
    append_all(&b, S, &events, 5);
    b.create_checkpoint_at(S, off(5), Bytes::new()).unwrap();
    // Another history: its hash at 15 is not ours.
    let foreign = sha256(&[b"another history"]);
    let cp = Checkpoint::new(off(15), foreign, Bytes::from_static(b"their state"));
    b.install_checkpoint(S, cp.clone()).unwrap();
    assert_eq!(b.log_start(S).unwrap(), off(15));
    assert_eq!(b.next_offset(S).unwrap(), off(15));
    assert_eq!(b.latest_chain_hash(S).unwrap(), foreign);
    assert_eq!(b.chain_hash_at(S, off(14)).unwrap(), foreign);
    assert!(b.read_from(S, off(15), usize::MAX).unwrap().is_empty());
    assert!(matches!(
        b.read_from(S, off(0), usize::MAX),
        Err(StorageError::OffsetOutOfRange { start, end, .. }) if start == off(15) && end == off(15)
    ));
    assert_eq!(b.latest_checkpoint(S).unwrap(), Some(cp.clone()));
    assert_eq!(b.checkpoint_at_or_below(S, off(10)).unwrap(), None, "the old history's checkpoints are gone");
    let v = b.verify_chain(S).unwrap();
    assert_eq!((v.from, v.to, v.records, v.head), (off(15), off(15), 0, foreign));

    // The chain continues from the checkpoint's hash.
    let more = payloads(17, 15..25, 30);
    append_all(&b, S, &more, 3);
    let expected = expected_chain(15, foreign, &more);
    let recs = b.read_records(S, off(15), usize::MAX).unwrap();
    assert_eq!(recs[0].prev_hash, foreign);
    assert_eq!(recs.iter().map(|r| r.hash).collect::<Vec<_>>(), expected);
    assert_eq!(b.verify_chain(S).unwrap().head, expected[9]);

    // A checkpoint at 0 covers no record: only the zero hash can anchor it.
    let bad = Checkpoint::new(off(0), foreign, Bytes::new());
    match b.install_checkpoint(S, bad) {
        Err(StorageError::InvalidCheckpoint { stream, offset, .. }) => assert_eq!((stream, offset), (S, off(0))),
        other => panic!("checkpoint at 0 with a non-zero hash: {other:?}"),
    }
    assert_eq!(b.next_offset(S).unwrap(), off(25), "a rejected install changes nothing");
    assert!(!b.streams().contains(&StreamId::new(78)));
    assert!(b.install_checkpoint(StreamId::new(78), Checkpoint::new(off(0), foreign, Bytes::new())).is_err());
    assert!(!b.streams().contains(&StreamId::new(78)), "a rejected install creates no stream");

    // Past the end of a shorter log, and on a stream that does not exist: both restart there.
    let far = Checkpoint::new(off(1000), sha256(&[b"far"]), Bytes::new());
    b.install_checkpoint(S, far.clone()).unwrap();
    assert_eq!((b.log_start(S).unwrap(), b.next_offset(S).unwrap()), (off(1000), off(1000)));
    let new = StreamId::new(77);
    b.install_checkpoint(new, far.clone()).unwrap();
    assert!(b.streams().contains(&new));
    assert_eq!(b.latest_chain_hash(new).unwrap(), far.chain_hash);
    assert_eq!(b.append_batch(new, vec![payload(17, 0, 5)], off(1000), true).unwrap(), off(1001));
    b.verify_chain(new).unwrap();
}

/// 100 records of 235 B (300 B encoded) in 4 KiB segments: 13 records a segment, so segments
/// `[0,13) [13,26) ... [78,91)` are sealed and `[91,100)` is active.
struct CompactionLayout {
    per_segment: u64,
    sealed_bytes: u64,
    events: Vec<Bytes>,
}

fn compaction_layout<B: StorageBackend>(b: &B, tag: u64) -> CompactionLayout {
    let per_segment = records_per_segment(4096, 235);
    assert_eq!(per_segment, 13, "a segment header of at most 196 B + 13 * 300 B fits in 4096 B, 14 records do not");
    let events = payloads(tag, 0..100, 235);
    append_all(b, S, &events, 7);
    CompactionLayout { per_segment, sealed_bytes: sealed_segment_bytes(per_segment, 235), events }
}

fn check_after_compaction<B: StorageBackend>(b: &B, layout: &CompactionLayout, r: &CompactionResult) {
    let start = r.new_log_start;
    assert_eq!(b.log_start(S).unwrap(), start);
    assert_eq!(start.get() % layout.per_segment, 0, "only whole segments go");
    assert_eq!(b.next_offset(S).unwrap(), off(100));
    let hashes = expected_chain(0, ChainHash::ZERO, &layout.events);
    assert_eq!(read_all(b, S, start, 2000), layout.events[start.get() as usize..].to_vec());
    let v = b.verify_chain(S).unwrap();
    assert_eq!((v.from, v.to, v.records, v.head), (start, off(100), 100 - start.get(), hashes[99]));
    if start > off(0) {
        assert_eq!(b.chain_hash_at(S, off(start.get() - 1)).unwrap(), hashes[start.get() as usize - 1]);
        let anchor = b.checkpoint_at_or_below(S, start).unwrap().expect("a checkpoint anchors the log start");
        assert_eq!((anchor.offset, anchor.chain_hash), (start, hashes[start.get() as usize - 1]));
        assert!(matches!(
            b.read_from(S, off(0), usize::MAX),
            Err(StorageError::OffsetOutOfRange { start: s, .. }) if s == start
        ));
    }
}

fn compaction_by_bytes<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let layout = compaction_layout(&b, 18);
    let before = b.stream_bytes(S).unwrap();
    // Keep about three segments: the oldest go while the total is over it.
    let config = CompactionConfig { retain_bytes: Some(3 * layout.sealed_bytes), ..CompactionConfig::default() };
    // The dry run names the same log start and removes nothing.
    assert_eq!(b.compaction_target(S, &config).unwrap(), off(65));
    assert_eq!((b.log_start(S).unwrap(), b.stream_bytes(S).unwrap()), (off(0), before));
    let r = b.compact(S, &config).unwrap();
    // With a header of H bytes: 7 sealed segments of H + 3900 B and an active one of H + 2700 B.
    // Keeping 3 * (H + 3900): removing 4 leaves 4H + 14400 (too much), removing 5 leaves 3H + 10500.
    assert_eq!((r.segments_removed, r.new_log_start), (5, off(65)));
    assert!(r.bytes_freed >= 5 * layout.sealed_bytes, "freed {} bytes", r.bytes_freed);
    assert!(b.stream_bytes(S).unwrap() <= before - 5 * layout.sealed_bytes);
    check_after_compaction(&b, &layout, &r);
    // Nothing more to do under the same limit.
    let again = b.compact(S, &config).unwrap();
    assert_eq!(again, CompactionResult { segments_removed: 0, bytes_freed: 0, new_log_start: off(65) });
    // A limit below the active segment never removes it.
    let r = b.compact(S, &CompactionConfig { retain_bytes: Some(0), ..CompactionConfig::default() }).unwrap();
    assert_eq!((r.segments_removed, r.new_log_start), (2, off(91)));
    check_after_compaction(&b, &layout, &r);
}

fn compaction_by_age<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let layout = compaction_layout(&b, 19);
    let keep_hour = CompactionConfig { retain_age_ms: Some(3_600_000), ..CompactionConfig::default() };
    let r = b.compact(S, &keep_hour).unwrap();
    assert_eq!(r, CompactionResult { segments_removed: 0, bytes_freed: 0, new_log_start: off(0) });
    // Once a few milliseconds have passed, every sealed segment is older than 1 ms.
    let written = now_ms();
    wait_until("the clock to pass 2 ms after the appends", Duration::from_secs(5), || now_ms() > written + 2);
    let r = b.compact(S, &CompactionConfig { retain_age_ms: Some(1), ..CompactionConfig::default() }).unwrap();
    assert_eq!((r.segments_removed, r.new_log_start), (7, off(91)));
    assert!(r.bytes_freed >= 7 * layout.sealed_bytes);
    check_after_compaction(&b, &layout, &r);
}

fn compaction_respects_max_log_start<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let layout = compaction_layout(&b, 20);
    // Segment [26,39) ends past 30, so it stays.
    let config = CompactionConfig { max_log_start: Some(off(30)), ..CompactionConfig::default() };
    assert_eq!(b.compaction_target(S, &config).unwrap(), off(26));
    assert_eq!(b.compaction_target(StreamId::new(999), &config).unwrap(), off(0), "an unknown stream");
    let r = b.compact(S, &config).unwrap();
    assert_eq!((r.segments_removed, r.new_log_start), (2, off(26)));
    check_after_compaction(&b, &layout, &r);
    // Combined with a byte limit that would remove more: the cap still holds.
    let config =
        CompactionConfig { retain_bytes: Some(0), max_log_start: Some(off(65)), ..CompactionConfig::default() };
    let r = b.compact(S, &config).unwrap();
    assert_eq!((r.segments_removed, r.new_log_start), (3, off(65)));
    check_after_compaction(&b, &layout, &r);
    // A cap below the first segment's end removes nothing.
    let config = CompactionConfig { max_log_start: Some(off(70)), ..CompactionConfig::default() };
    assert_eq!(b.compaction_target(S, &config).unwrap(), off(65), "nothing more to remove: the log start");
    assert_eq!(b.compact(S, &config).unwrap().segments_removed, 0);
}

fn compaction_unlimited_then_append<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let layout = compaction_layout(&b, 21);
    let r = b.compact(S, &CompactionConfig::default()).unwrap();
    assert_eq!((r.segments_removed, r.new_log_start), (7, off(91)));
    assert!(r.bytes_freed >= 7 * layout.sealed_bytes);
    check_after_compaction(&b, &layout, &r);
    // Appends continue the chain after compaction.
    let more = payloads(22, 100..140, 235);
    append_all(&b, S, &more, 6);
    let mut all = layout.events.clone();
    all.extend(more);
    let hashes = expected_chain(0, ChainHash::ZERO, &all);
    assert_eq!(b.verify_chain(S).unwrap().head, hashes[139]);
    assert_eq!(read_all(&b, S, off(91), 1000), all[91..].to_vec());
    // Compacting an unknown stream does nothing.
    assert_eq!(b.compact(StreamId::new(4242), &CompactionConfig::default()).unwrap().segments_removed, 0);
}

fn verify_range_rereads_and_chains<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let layout = compaction_layout(&b, 23);
    let hashes = expected_chain(0, ChainHash::ZERO, &layout.events);
    let v = b.verify_range(S, off(0), off(100)).unwrap();
    assert_eq!((v.stream, v.from, v.to, v.records, v.head), (S, off(0), off(100), 100, hashes[99]));
    // Ranges inside and across segments, chained piece by piece, give the same hashes.
    let mut from = 0u64;
    for to in [5u64, 13, 14, 40, 64, 65, 91, 100] {
        let v = b.verify_range(S, off(from), off(to)).unwrap();
        assert_eq!((v.from, v.to, v.records, v.head), (off(from), off(to), to - from, hashes[to as usize - 1]));
        from = to;
    }
    // An empty range gives the hash before it.
    assert_eq!(b.verify_range(S, off(40), off(40)).unwrap().head, hashes[39]);
    assert_eq!(b.verify_range(S, off(0), off(0)).unwrap().head, ChainHash::ZERO);
    // Outside the stream, or backwards.
    for (from, to) in [(5, 101), (100, 101), (50, 10)] {
        assert!(
            matches!(b.verify_range(S, off(from), off(to)), Err(StorageError::OffsetOutOfRange { .. })),
            "[{from}, {to})"
        );
    }
    let unknown = StreamId::new(4243);
    assert_eq!(b.verify_range(unknown, off(0), off(0)).unwrap().head, ChainHash::ZERO);
    assert!(matches!(b.verify_range(unknown, off(0), off(1)), Err(StorageError::OffsetOutOfRange { .. })));
    // After compaction the range starts at the new log start, anchored by its checkpoint.
    let r = b.compact(S, &CompactionConfig { max_log_start: Some(off(30)), ..CompactionConfig::default() }).unwrap();
    assert_eq!(r.new_log_start, off(26));
    let v = b.verify_range(S, off(26), off(100)).unwrap();
    assert_eq!((v.records, v.head), (74, hashes[99]));
    assert_eq!(b.verify_range(S, off(26), off(26)).unwrap().head, hashes[25]);
    assert!(matches!(
        b.verify_range(S, off(20), off(30)),
        Err(StorageError::OffsetOutOfRange { requested, start, .. }) if requested == off(20) && start == off(26)
    ));
    // Appends after it continue the chain the range verifies.
    let more = payloads(24, 100..110, 235);
    append_all(&b, S, &more, 3);
    let mut all = layout.events.clone();
    all.extend(more);
    let hashes = expected_chain(0, ChainHash::ZERO, &all);
    assert_eq!(b.verify_range(S, off(95), off(110)).unwrap().head, hashes[109]);
}

fn streams_and_delete<F: Fixture>(f: &F) {
    let b = f.open(manual());
    assert!(b.streams().is_empty());
    for id in [30u64, 10, 20] {
        append_all(&b, StreamId::new(id), &payloads(id, 0..5, 10), 2);
    }
    assert_eq!(b.streams(), vec![StreamId::new(10), StreamId::new(20), StreamId::new(30)]);
    b.delete_stream(StreamId::new(20)).unwrap();
    assert_eq!(b.streams(), vec![StreamId::new(10), StreamId::new(30)]);
    let gone = StreamId::new(20);
    assert_eq!(b.next_offset(gone).unwrap(), off(0));
    assert_eq!(b.latest_chain_hash(gone).unwrap(), ChainHash::ZERO);
    assert_eq!(b.stream_bytes(gone).unwrap(), 0);
    assert!(b.read_from(gone, off(0), usize::MAX).unwrap().is_empty());
    assert_eq!(b.latest_checkpoint(gone).unwrap(), None);
    // Unknown streams: a no-op.
    b.delete_stream(StreamId::new(999)).unwrap();
    // The others are untouched.
    assert_eq!(b.read_from(StreamId::new(10), off(0), usize::MAX).unwrap(), payloads(10, 0..5, 10));
    assert_eq!(b.read_from(StreamId::new(30), off(0), usize::MAX).unwrap(), payloads(30, 0..5, 10));
    // A deleted stream starts again at 0 with a fresh chain.
    let again = payloads(99, 0..3, 10);
    append_all(&b, gone, &again, 3);
    assert_eq!(b.latest_chain_hash(gone).unwrap(), expected_chain(0, ChainHash::ZERO, &again)[2]);
    assert_eq!(b.streams().len(), 3);
}

fn many_streams_in_parallel<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    const THREADS: u64 = 8;
    const RECORDS: u64 = 150;
    thread::scope(|scope| {
        for t in 0..THREADS {
            let b = &b;
            scope.spawn(move || {
                let stream = StreamId::new(100 + t);
                let events = payloads(t, 0..RECORDS, 64 + t as usize * 16);
                for (i, chunk) in events.chunks(1 + t as usize).enumerate() {
                    let next = b.next_offset(stream).unwrap();
                    b.append_batch(stream, chunk.to_vec(), next, i % 10 == 0).unwrap();
                    if i % 7 == 0 {
                        // Readers interleave with writers on other streams.
                        b.read_from(stream, off(0), 4096).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(b.streams().len(), THREADS as usize);
    for t in 0..THREADS {
        let stream = StreamId::new(100 + t);
        let events = payloads(t, 0..RECORDS, 64 + t as usize * 16);
        assert_eq!(read_all(&b, stream, off(0), 8192), events);
        let v = b.verify_chain(stream).unwrap();
        assert_eq!(v.head, *expected_chain(0, ChainHash::ZERO, &events).last().unwrap());
    }
}

/// Readers racing one appender always see a gapless prefix of the stream, every record verified
/// and equal to what was appended.
fn readers_see_verified_prefixes_while_appending<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let events: Vec<Bytes> = (0..1500u64).map(|i| payload(24, i, (i as usize * 13) % 300)).collect();
    let expected = expected_chain(0, ChainHash::ZERO, &events);
    let done = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|scope| {
        for r in 0..2u64 {
            let (b, events, expected, done) = (&b, &events, &expected, &done);
            scope.spawn(move || {
                let mut rounds = 0u64;
                loop {
                    // Read the whole stream as it is now, in chunks, from a varying start.
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let mut at = (rounds * 37 + r * 11) % 50;
                    loop {
                        let recs = b.read_records(S, off(at), 2000 + r as usize * 3000).unwrap();
                        if recs.is_empty() {
                            break;
                        }
                        for rec in recs {
                            let i = rec.offset.get() as usize;
                            assert_eq!(rec.offset, off(at), "gapless");
                            assert_eq!((&rec.payload, rec.hash), (&events[i], expected[i]), "record {i}");
                            at += 1;
                        }
                    }
                    if finished {
                        assert_eq!(at, 1500, "after the last append, a reader sees every record");
                        return;
                    }
                    rounds += 1;
                    assert!(rounds < 1_000_000, "reader {r} never saw the appender finish");
                }
            });
        }
        for chunk in events.chunks(7) {
            let next = b.next_offset(S).unwrap();
            b.append_batch(S, chunk.to_vec(), next, false).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    assert_eq!(b.verify_chain(S).unwrap().head, expected[1499]);
}

/// Appenders race for one stream, retrying on `OffsetMismatch`: every batch lands exactly once,
/// contiguous, and the chain verifies.
fn concurrent_appenders_to_one_stream<F: Fixture>(f: &F, fsync: bool) {
    let b = f.open(small_segments());
    const THREADS: u64 = 6;
    const BATCHES: u64 = 25;
    const PER_BATCH: u64 = 3;
    let retries = std::sync::atomic::AtomicU64::new(0);
    thread::scope(|scope| {
        for t in 0..THREADS {
            let (b, retries) = (&b, &retries);
            scope.spawn(move || {
                for k in 0..BATCHES {
                    let batch = payloads(1000 + t, k * PER_BATCH..(k + 1) * PER_BATCH, 40);
                    let mut attempts = 0u32;
                    loop {
                        let next = b.next_offset(S).unwrap();
                        match b.append_batch(S, batch.clone(), next, fsync) {
                            Ok(_) => break,
                            Err(StorageError::OffsetMismatch { .. }) => {
                                attempts += 1;
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                assert!(attempts < 1_000_000, "thread {t} could not append batch {k}");
                                thread::yield_now();
                            }
                            Err(e) => panic!("thread {t} batch {k}: {e}"),
                        }
                    }
                }
            });
        }
    });
    let total = THREADS * BATCHES * PER_BATCH;
    assert_eq!(b.next_offset(S).unwrap(), off(total));
    let got = read_all(&b, S, off(0), 16 << 10);
    assert_eq!(got.len() as u64, total);
    let mut position: HashMap<Bytes, usize> = HashMap::new();
    for (i, p) in got.iter().enumerate() {
        assert!(position.insert(p.clone(), i).is_none(), "event at {i} landed twice");
    }
    let mut seen = HashSet::new();
    for t in 0..THREADS {
        for k in 0..BATCHES {
            let batch = payloads(1000 + t, k * PER_BATCH..(k + 1) * PER_BATCH, 40);
            let first = position[&batch[0]];
            for (j, e) in batch.iter().enumerate() {
                assert_eq!(position[e], first + j, "batch {k} of thread {t} is contiguous");
                seen.insert(e.clone());
            }
        }
    }
    assert_eq!(seen.len() as u64, total);
    assert_eq!(b.verify_chain(S).unwrap().head, *expected_chain(0, ChainHash::ZERO, &got).last().unwrap());
}

fn concurrent_appenders_no_fsync<F: Fixture>(f: &F) {
    concurrent_appenders_to_one_stream(f, false);
}

fn concurrent_appenders_fsync<F: Fixture>(f: &F) {
    concurrent_appenders_to_one_stream(f, true);
}

/// Batches of different sizes, with and without fsync, each at the offset the one before ended
/// at, into a stream the first one creates: each returns where the next one goes. Bad batches
/// into a stream that does not exist are refused, and create no stream.
fn appends_return_where_the_next_one_goes<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let all = payloads(7, 0..12, 300);
    assert_eq!(b.append_batch(S, all[0..2].to_vec(), off(0), false).unwrap(), off(2));
    b.append_batch(S, all[2..5].to_vec(), off(2), false).unwrap();
    assert_eq!(b.append_batch(S, all[5..6].to_vec(), off(5), true).unwrap(), off(6));
    assert_eq!(b.append_batch(S, all[6..11].to_vec(), off(6), false).unwrap(), off(11));
    assert_eq!(b.append_batch(S, all[11..12].to_vec(), off(11), true).unwrap(), off(12));
    assert_eq!(read_all(&b, S, off(0), 1 << 20), all);
    assert_eq!(b.verify_chain(S).unwrap().head, *expected_chain(0, ChainHash::ZERO, &all).last().unwrap());

    let other = StreamId::new(99);
    assert!(matches!(
        b.append_batch(other, Vec::new(), off(0), true),
        Err(StorageError::EmptyBatch { stream }) if stream == other
    ));
    let huge = Bytes::from(vec![1u8; StorageOptions::default().max_record_bytes + 1]);
    assert!(matches!(
        b.append_batch(other, vec![Bytes::from_static(b"ok"), huge], off(0), true),
        Err(StorageError::RecordTooLarge { index: 1, .. })
    ));
    assert!(!b.streams().contains(&other), "a refused append creates no stream");
}

/// `append_batch_hashed` returns the chain hash of every record it wrote, in order: the hashes an
/// independent SHA-256 gives and `chain_hash_at` answers, for small batches, batches big enough to
/// be prepared ahead, with and without fsync, across segment rotations.
fn appends_return_their_records_chain_hashes<F: Fixture>(f: &F) {
    let b = f.open(StorageOptions { max_segment_bytes: 256 << 10, ..manual() });
    let small = payloads(11, 0..5, 300);
    let big = payloads(12, 0..40, 4 << 10); // 160 KiB: prepared ahead, rotates a segment
    let last = payloads(13, 0..1, 10);
    let mut all = Vec::new();
    let mut got = Vec::new();
    for (events, fsync) in [(&small, false), (&big, true), (&last, false)] {
        let at = off(all.len() as u64);
        let hashes = b.append_batch_hashed(S, events.clone(), at, fsync).unwrap();
        assert_eq!(hashes.len(), events.len());
        got.extend(hashes);
        all.extend(events.iter().cloned());
    }
    let expected = expected_chain(0, ChainHash::ZERO, &all);
    assert_eq!(got, expected);
    for (i, h) in expected.iter().enumerate() {
        assert_eq!(b.chain_hash_at(S, off(i as u64)).unwrap(), *h, "chain hash of record {i}");
    }
    assert_eq!(b.next_offset(S).unwrap(), off(all.len() as u64));
    // A refused append returns no hashes and writes nothing.
    assert!(matches!(b.append_batch_hashed(S, small.clone(), off(3), false), Err(StorageError::OffsetMismatch { .. })));
    assert_eq!(b.next_offset(S).unwrap(), off(all.len() as u64));
}

/// Threads race to append to one stream, each at the next offset it reads (retrying on
/// `OffsetMismatch`), some batches big enough to be prepared ahead: each batch lands once,
/// whole, at the range its caller was told, and the ranges tile the stream.
fn racing_appenders_of_mixed_sizes_get_their_ranges<F: Fixture>(f: &F, fsync: bool) {
    let b = f.open(small_segments());
    const THREADS: u64 = 6;
    const BATCHES: u64 = 20;
    let batch_of = |t: u64, k: u64| -> Vec<Bytes> {
        if t == 0 && k.is_multiple_of(5) {
            // 80 KiB: takes the prepare-ahead path on disk.
            payloads(2000 + t, k * 100..k * 100 + 80, 1024)
        } else {
            payloads(2000 + t, k * 100..k * 100 + 1 + (k + t) % 4, 40)
        }
    };
    let ranges: Vec<(u64, u64, std::ops::Range<Offset>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = &b;
                scope.spawn(move || {
                    (0..BATCHES)
                        .map(|k| {
                            let batch = batch_of(t, k);
                            let mut attempts = 0u32;
                            let r = loop {
                                let next = b.next_offset(S).unwrap();
                                match b.append_batch(S, batch.clone(), next, fsync) {
                                    Ok(end) => break next..end,
                                    Err(StorageError::OffsetMismatch { .. }) => {
                                        attempts += 1;
                                        assert!(attempts < 1_000_000, "thread {t} could not append batch {k}");
                                        thread::yield_now();
                                    }
                                    Err(e) => panic!("thread {t} batch {k}: {e}"),
                                }
                            };
                            assert_eq!(r.end.get() - r.start.get(), batch.len() as u64, "thread {t} batch {k}");
                            (t, k, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut sorted: Vec<_> = ranges.iter().map(|(_, _, r)| r.clone()).collect();
    sorted.sort_by_key(|r| r.start);
    let mut at = off(0);
    for r in &sorted {
        assert_eq!(r.start, at, "ranges tile the stream without gap or overlap");
        at = r.end;
    }
    assert_eq!(b.next_offset(S).unwrap(), at);
    let got = read_all(&b, S, off(0), 1 << 20);
    for (t, k, r) in &ranges {
        let at = &got[r.start.get() as usize..r.end.get() as usize];
        assert_eq!(at, batch_of(*t, *k).as_slice(), "batch {k} of thread {t} at {r:?}");
    }
    assert_eq!(b.verify_chain(S).unwrap().head, *expected_chain(0, ChainHash::ZERO, &got).last().unwrap());
}

fn racing_appenders_of_mixed_sizes_no_fsync<F: Fixture>(f: &F) {
    racing_appenders_of_mixed_sizes_get_their_ranges(f, false);
}

fn racing_appenders_of_mixed_sizes_fsync<F: Fixture>(f: &F) {
    racing_appenders_of_mixed_sizes_get_their_ranges(f, true);
}

/// Runs the same operations on two backends; every observable chain hash, offset, log start and
/// compaction result must agree.
fn same_results_on_both<A: Fixture, B: Fixture>(fa: &A, fb: &B) {
    let a = fa.open(small_segments());
    let b = fb.open(small_segments());
    let ids = [StreamId::new(1), StreamId::new(2)];
    let mut results = Vec::new();
    let observe = |label: &str| {
        for s in ids {
            let seen_a = (a.next_offset(s).unwrap(), a.log_start(s).unwrap(), a.latest_chain_hash(s).unwrap());
            let seen_b = (b.next_offset(s).unwrap(), b.log_start(s).unwrap(), b.latest_chain_hash(s).unwrap());
            assert_eq!(seen_a, seen_b, "{label}, stream {s}: (next, log start, head)");
            let ra = a.read_records(s, seen_a.1, usize::MAX).unwrap();
            let rb = b.read_records(s, seen_b.1, usize::MAX).unwrap();
            assert_eq!(ra, rb, "{label}, stream {s}: records");
        }
    };
    for (i, s) in ids.into_iter().enumerate() {
        let events: Vec<Bytes> = (0..150u64).map(|k| payload(50 + i as u64, k, (k as usize * 53) % 400)).collect();
        for chunk in events.chunks(4 + i * 5) {
            let na = a.append_batch(s, chunk.to_vec(), a.next_offset(s).unwrap(), false).unwrap();
            let nb = b.append_batch(s, chunk.to_vec(), b.next_offset(s).unwrap(), false).unwrap();
            assert_eq!(na, nb);
        }
    }
    observe("after appends");
    for s in ids {
        a.truncate_from(s, off(120)).unwrap();
        b.truncate_from(s, off(120)).unwrap();
    }
    observe("after truncation");
    let configs = [
        CompactionConfig { max_log_start: Some(off(40)), ..CompactionConfig::default() },
        CompactionConfig { retain_bytes: Some(12_000), ..CompactionConfig::default() },
        CompactionConfig { retain_age_ms: Some(3_600_000), ..CompactionConfig::default() },
        CompactionConfig::default(),
    ];
    for config in &configs {
        for s in ids {
            let ra = a.compact(s, config).unwrap();
            let rb = b.compact(s, config).unwrap();
            assert_eq!(ra, rb, "compaction {config:?} of stream {s}");
            results.push(ra);
        }
        observe(&format!("after compaction {config:?}"));
    }
    assert!(results.iter().any(|r| r.segments_removed > 0), "the scenario compacts something");
    for s in ids {
        let ca = a.create_checkpoint(s).unwrap();
        let cb = b.create_checkpoint(s).unwrap();
        assert_eq!((ca.offset, ca.chain_hash), (cb.offset, cb.chain_hash));
        let more = payloads(60, 0..30, 90);
        let na = a.append_batch(s, more.clone(), a.next_offset(s).unwrap(), true).unwrap();
        let nb = b.append_batch(s, more, b.next_offset(s).unwrap(), true).unwrap();
        assert_eq!(na, nb);
        assert_eq!(a.verify_chain(s).unwrap(), b.verify_chain(s).unwrap());
    }
    observe("after more appends");
    assert_eq!(a.streams(), b.streams());
}

/// Disk only: everything observable survives a clean close and reopen, and the chain continues.
fn reopen_keeps_everything(f: &Disk) {
    let b = f.open(small_segments());
    let events: Vec<Bytes> = (0..200u64).map(|i| payload(70, i, (i as usize * 29) % 500)).collect();
    append_all(&b, S, &events[..150], 6);
    b.create_checkpoint_at(S, off(50), Bytes::from_static(b"state@50")).unwrap();
    b.truncate_from(S, off(140)).unwrap();
    append_all(&b, S, &events[140..], 7);
    let r = b.compact(S, &CompactionConfig { max_log_start: Some(off(60)), ..CompactionConfig::default() }).unwrap();
    assert!(r.segments_removed > 0);
    let other = StreamId::new(3);
    let foreign = sha256(&[b"foreign"]);
    b.install_checkpoint(other, Checkpoint::new(off(500), foreign, Bytes::from_static(b"snap"))).unwrap();
    append_all(&b, other, &payloads(71, 0..5, 10), 5);
    let snapshot = |b: &Storage| {
        let per_stream: Vec<_> = [S, other]
            .into_iter()
            .map(|s| {
                (
                    b.next_offset(s).unwrap(),
                    b.log_start(s).unwrap(),
                    b.latest_chain_hash(s).unwrap(),
                    b.latest_checkpoint(s).unwrap(),
                    b.checkpoint_at_or_below(s, off(55)).unwrap(),
                    b.read_records(s, b.log_start(s).unwrap(), usize::MAX).unwrap(),
                    b.verify_chain(s).unwrap(),
                )
            })
            .collect();
        (b.streams(), per_stream)
    };
    let before = snapshot(&b);
    let b = f.reopen(b, small_segments());
    assert_eq!(snapshot(&b), before);
    let hashes = expected_chain(0, ChainHash::ZERO, &events);
    assert_eq!(b.latest_chain_hash(S).unwrap(), hashes[199]);
    assert_eq!(b.checkpoint_at_or_below(S, off(55)).unwrap().unwrap().data, Bytes::from_static(b"state@50"));
    // Appends continue where they stopped, on both streams.
    let more = payloads(72, 200..230, 100);
    append_all(&b, S, &more, 10);
    let mut all = events.clone();
    all.extend(more);
    assert_eq!(b.verify_chain(S).unwrap().head, *expected_chain(0, ChainHash::ZERO, &all).last().unwrap());
    append_all(&b, other, &payloads(71, 5..8, 10), 1);
    assert_eq!(b.latest_chain_hash(other).unwrap(), expected_chain(500, foreign, &payloads(71, 0..8, 10))[7]);
    let b = f.reopen(b, small_segments());
    assert_eq!(b.next_offset(S).unwrap(), off(230));
    assert_eq!(read_all(&b, S, b.log_start(S).unwrap(), 4096), all[b.log_start(S).unwrap().get() as usize..].to_vec());
}

/// Five sealed segments of 100-byte records and an active one; returns the records.
fn scrub_layout<B: StorageBackend>(b: &B) -> Vec<shale_storage::Record> {
    let per = records_per_segment(4096, 100);
    let events = payloads(90, 0..per * 5 + 3, 100);
    append_all(b, S, &events, 7);
    let segs = b.segments(S).unwrap();
    assert_eq!(segs.len(), 6, "five sealed segments and the active one");
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.sealed, i + 1 < segs.len(), "only the last segment is active");
        assert_eq!(s.base, off(per * i as u64), "segment {i} starts where the one before ends");
        assert_eq!(s.end, if s.sealed { off(per * (i as u64 + 1)) } else { off(per * 5 + 3) });
    }
    b.read_records(S, off(0), usize::MAX).unwrap()
}

fn scrub_finds_a_flipped_byte_and_repair_restores_it<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let good = scrub_layout(&b);
    let per = records_per_segment(4096, 100);
    for s in b.segments(S).unwrap() {
        let r = b.scrub_segment(S, s.base).unwrap();
        assert_eq!(r.damage, None, "a fresh segment scrubs clean");
        assert_eq!((r.base, r.end, r.sealed), (s.base, s.end, s.sealed));
    }
    // Damage the third record of the second segment.
    let bad = off(per + 2);
    f.damage(&b, S, bad, 100);
    let mut damaged = Vec::new();
    for s in b.segments(S).unwrap() {
        if let Some(d) = b.scrub_segment(S, s.base).unwrap().damage {
            damaged.push(d);
        }
    }
    assert_eq!(damaged.len(), 1, "exactly one segment is damaged: {damaged:?}");
    let d = &damaged[0];
    assert_eq!((d.stream, d.first_bad, d.good_from), (S, bad, bad.plus(1)), "the damaged range is the one record");
    assert!(
        matches!(b.read_range(S, bad, bad.plus(1), usize::MAX), Err(StorageError::Corruption { offset: Some(o), .. }) if o == bad)
    );
    assert!(b.verify_chain(S).is_err());

    let range = |from: u64, to: u64| good[from as usize..to as usize].to_vec();
    let rejected = |from: Offset, recs: Vec<shale_storage::Record>| match b.repair_range(S, from, recs) {
        Err(StorageError::RepairRejected { reason, .. }) => reason,
        other => panic!("repair at {from} should be refused, got {other:?}"),
    };
    // A record whose payload does not hash to its hash.
    let mut forged = range(bad.get(), bad.get() + 1);
    forged[0].payload = payload(91, 0, 100);
    assert!(matches!(rejected(bad, forged.clone()), shale_storage::RepairRejection::HashMismatch { .. }));
    // A self-consistent record that does not lead to the known-good hash after it.
    forged[0].hash = sha256(&[&forged[0].prev_hash.0, &forged[0].payload]);
    assert!(matches!(rejected(bad, forged), shale_storage::RepairRejection::EndMismatch { .. }));
    // Records of other offsets.
    assert!(matches!(
        rejected(bad, range(bad.get() + 1, bad.get() + 2)),
        shale_storage::RepairRejection::OffsetSequence { .. }
    ));
    // A range that does not cover the damage.
    assert!(matches!(
        rejected(bad.plus(1), range(bad.get() + 1, bad.get() + 3)),
        shale_storage::RepairRejection::UntrustedBoundary { .. }
    ));
    // A range across two segments is not repaired in one call; nor is an empty list.
    assert!(matches!(
        rejected(off(per * 2 - 1), range(per * 2 - 1, per * 2 + 1)),
        shale_storage::RepairRejection::OutsideSegment { .. }
    ));
    assert!(matches!(rejected(bad, Vec::new()), shale_storage::RepairRejection::Empty));
    assert!(b.read_range(S, bad, bad.plus(1), usize::MAX).is_err(), "a refused repair changes nothing");

    // The good records (a wider range than the damage is fine) are accepted.
    let out = b.repair_range(S, off(per + 1), range(per + 1, per + 4)).unwrap();
    assert_eq!(out.range, off(per + 1)..off(per + 4));
    assert_eq!(b.scrub_segment(S, off(per)).unwrap().damage, None);
    let all = b.read_records(S, off(0), usize::MAX).unwrap();
    assert_eq!(all, good, "every record reads back with its hashes");
    assert_eq!(b.verify_chain(S).unwrap().head, good.last().unwrap().hash);
    // Appends continue.
    append_all(&b, S, &payloads(92, 0..3, 100), 3);
    assert_eq!(b.next_offset(S).unwrap(), off(per * 5 + 6));
}

fn the_active_segment_is_scrubbed_and_repaired_against_the_head<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let good = scrub_layout(&b);
    let per = records_per_segment(4096, 100);
    let active = off(per * 5);
    let bad = active.plus(1);
    assert_eq!(b.scrub_segment(S, active).unwrap().damage, None);
    f.damage(&b, S, bad, 100);
    let r = b.scrub_segment(S, active).unwrap();
    assert!(!r.sealed);
    assert_eq!(r.damage.expect("damage").range(), bad..bad.plus(1));
    b.repair_range(S, bad, good[bad.get() as usize..bad.get() as usize + 1].to_vec()).unwrap();
    assert_eq!(b.scrub_segment(S, active).unwrap().damage, None);
    // Appends continue on the rewritten active segment, and everything reads back.
    let more = payloads(93, 0..20, 100);
    let next = append_all(&b, S, &more, 4);
    assert_eq!(next, off(per * 5 + 23));
    let all = b.read_records(S, off(0), usize::MAX).unwrap();
    assert_eq!(all[..good.len()], good[..]);
    assert_eq!(all[good.len()..].iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), more);
    b.verify_chain(S).unwrap();
}

fn scrub_reports_a_damaged_run_and_repairs_the_segment_end<F: Fixture>(f: &F) {
    let b = f.open(small_segments());
    let good = scrub_layout(&b);
    let per = records_per_segment(4096, 100);
    // Two damaged records with a good one between them, and the last record of another segment.
    f.damage(&b, S, off(2 * per + 1), 100);
    f.damage(&b, S, off(2 * per + 3), 100);
    f.damage(&b, S, off(4 * per - 1), 100);
    let d = b.scrub_segment(S, off(2 * per)).unwrap().damage.expect("damage");
    assert_eq!(d.range(), off(2 * per + 1)..off(2 * per + 4));
    let d3 = b.scrub_segment(S, off(3 * per)).unwrap().damage.expect("damage");
    assert_eq!(
        d3.range(),
        off(4 * per - 1)..off(4 * per),
        "the last record's known-good hash is the next segment's link"
    );
    b.repair_range(S, d.first_bad, good[d.range().start.get() as usize..d.range().end.get() as usize].to_vec())
        .unwrap();
    b.repair_range(S, d3.first_bad, good[d3.range().start.get() as usize..d3.range().end.get() as usize].to_vec())
        .unwrap();
    for s in b.segments(S).unwrap() {
        assert_eq!(b.scrub_segment(S, s.base).unwrap().damage, None);
    }
    assert_eq!(b.read_records(S, off(0), usize::MAX).unwrap(), good);
    assert!(matches!(b.scrub_segment(S, off(1)), Err(StorageError::UnknownSegment { .. })));
}

// ---------------------------------------------------------------------------------------------
// Instantiation per backend
// ---------------------------------------------------------------------------------------------

macro_rules! backend_suite {
    ($module:ident, $fixture:expr $(; extra: $($extra:ident),*)?) => {
        mod $module {
            use super::*;
            $(backend_suite!(@tests $fixture; $($extra),*);)?
            backend_suite!(@tests $fixture;
                round_trip,
                offsets_are_per_stream_and_gapless,
                compressed_codecs_round_trip_with_same_hashes,
                chain_hashes_match_independent_sha256,
                offset_mismatch_writes_nothing,
                empty_batch_is_rejected,
                oversized_records_and_batches_are_rejected,
                read_semantics,
                reads_across_segment_rotation,
                truncate_then_append_matches_fresh_stream,
                truncate_below_log_start_is_out_of_range,
                checkpoints_create_and_look_up,
                checkpoint_policy_writes_every_n_records,
                install_checkpoint_that_matches_keeps_records,
                install_checkpoint_that_conflicts_restarts_stream,
                compaction_by_bytes,
                compaction_by_age,
                compaction_respects_max_log_start,
                compaction_unlimited_then_append,
                verify_range_rereads_and_chains,
                streams_and_delete,
                many_streams_in_parallel,
                readers_see_verified_prefixes_while_appending,
                concurrent_appenders_no_fsync,
                concurrent_appenders_fsync,
                appends_return_where_the_next_one_goes,
                appends_return_their_records_chain_hashes,
                racing_appenders_of_mixed_sizes_no_fsync,
                racing_appenders_of_mixed_sizes_fsync,
                scrub_finds_a_flipped_byte_and_repair_restores_it,
                scrub_reports_a_damaged_run_and_repairs_the_segment_end,
                the_active_segment_is_scrubbed_and_repaired_against_the_head,
            );
        }
    };
    (@tests $fixture:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test(&$fixture);
            }
        )*
    };
}

backend_suite!(memory, Memory);
backend_suite!(disk, Disk::new(); extra: reopen_keeps_everything);

#[test]
fn memory_and_disk_agree() {
    same_results_on_both(&Memory, &Disk::new());
}
