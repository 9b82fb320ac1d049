//! Model-based property tests: random sequences of append / read / truncate / compact /
//! checkpoint / install (and reopen, for a persistent backend) run against a backend and against a
//! plain model, and every observation must agree.
//!
//! The model is independent of the crate: payloads in a `Vec`, chain hashes computed with `sha2`
//! directly, and segment accounting re-derived from the documented layout (a segment header, then
//! `record::OVERHEAD + payload` bytes per record; a segment rolls when the next record would pass
//! `max_segment_bytes`), so compaction results can be predicted exactly.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestRunner};
use sha2::{Digest, Sha256};
use shale_storage::{
    ChainHash, Checkpoint, CheckpointPolicy, CodecKind, CompactionConfig, CompactionResult, MemoryStorage, Offset,
    Storage, StorageBackend, StorageError, StorageOptions, StreamId, format,
};

mod common;

use common::noise::noise;

const MAX_SEGMENT_BYTES: u64 = 4096;
const CHECKPOINT_EVERY: u64 = 16;
const STREAMS: [StreamId; 2] = [StreamId::new(1), StreamId::new(2)];

fn options() -> StorageOptions {
    StorageOptions {
        max_segment_bytes: MAX_SEGMENT_BYTES,
        max_record_bytes: 2048,
        checkpoint_policy: CheckpointPolicy::EveryRecords(CHECKPOINT_EVERY),
        ..StorageOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

fn sha256(parts: &[&[u8]]) -> ChainHash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    ChainHash(h.finalize().into())
}

#[derive(Clone, Debug)]
struct ModelSegment {
    base: u64,
    end: u64,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct ModelStream {
    log_start: u64,
    /// Hash of record `log_start - 1`.
    anchor: ChainHash,
    payloads: Vec<Bytes>,
    hashes: Vec<ChainHash>,
    segments: Vec<ModelSegment>,
    /// Checkpoint offset -> chain hash.
    checkpoints: BTreeMap<u64, ChainHash>,
}

const SEGMENT_HEADER: u64 = format::segment::HEADER_LEN as u64;

fn record_bytes(payload_len: usize) -> u64 {
    format::record::encoded_len(payload_len) as u64
}

impl ModelStream {
    fn empty_at(start: u64, anchor: ChainHash) -> Self {
        Self {
            log_start: start,
            anchor,
            payloads: Vec::new(),
            hashes: Vec::new(),
            segments: vec![ModelSegment { base: start, end: start, bytes: SEGMENT_HEADER }],
            checkpoints: BTreeMap::new(),
        }
    }

    fn next(&self) -> u64 {
        self.log_start + self.payloads.len() as u64
    }

    fn hash_before(&self, offset: u64) -> ChainHash {
        if offset == self.log_start { self.anchor } else { self.hashes[(offset - self.log_start - 1) as usize] }
    }

    fn head(&self) -> ChainHash {
        self.hash_before(self.next())
    }

    fn append(&mut self, events: &[Bytes]) {
        for e in events {
            let offset = self.next();
            let prev = self.head();
            let hash = if offset == 0 { sha256(&[e]) } else { sha256(&[&prev.0, e]) };
            let len = record_bytes(e.len());
            let active = self.segments.last().unwrap();
            if active.end > active.base && active.bytes + len > MAX_SEGMENT_BYTES {
                self.segments.push(ModelSegment { base: offset, end: offset, bytes: SEGMENT_HEADER });
            }
            let active = self.segments.last_mut().unwrap();
            active.end = offset + 1;
            active.bytes += len;
            self.payloads.push(e.clone());
            self.hashes.push(hash);
        }
        let last = self.checkpoints.keys().next_back().copied().unwrap_or(0).min(self.next());
        if self.next() - last >= CHECKPOINT_EVERY {
            self.checkpoints.insert(self.next(), self.head());
        }
    }

    fn truncate(&mut self, offset: u64) {
        if offset >= self.next() {
            return;
        }
        self.payloads.truncate((offset - self.log_start) as usize);
        self.hashes.truncate((offset - self.log_start) as usize);
        let first_base = self.segments[0].base;
        self.segments.retain(|s| s.base < offset || s.base == first_base);
        let last = self.segments.last_mut().unwrap();
        last.end = offset;
        last.bytes = SEGMENT_HEADER
            + self.payloads[(last.base - self.log_start) as usize..].iter().map(|p| record_bytes(p.len())).sum::<u64>();
        self.checkpoints.retain(|&o, _| o <= offset);
    }

    fn compact(&mut self, config: &CompactionConfig) -> CompactionResult {
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let mut removed = 0;
        let mut freed = 0;
        // Age retention is only ever given as "an hour", which no segment here reaches.
        let unlimited = config.retain_bytes.is_none() && config.retain_age_ms.is_none();
        while self.segments.len() - removed > 1 {
            let seg = &self.segments[removed];
            if config.max_log_start.is_some_and(|max| seg.end > max.get()) {
                break;
            }
            if !(unlimited || config.retain_bytes.is_some_and(|b| total > b)) {
                break;
            }
            total -= seg.bytes;
            freed += seg.bytes;
            removed += 1;
        }
        if removed > 0 {
            let start = self.segments[removed].base;
            let anchor = self.hash_before(start);
            self.checkpoints.entry(start).or_insert(anchor);
            let drop = (start - self.log_start) as usize;
            self.payloads.drain(..drop);
            self.hashes.drain(..drop);
            self.segments.drain(..removed);
            self.log_start = start;
            self.anchor = anchor;
            self.checkpoints.retain(|&o, _| o >= start);
        }
        CompactionResult { segments_removed: removed, bytes_freed: freed, new_log_start: Offset::new(self.log_start) }
    }

    /// Compaction whose outcome the model cannot predict (compressed records): adopts the new
    /// log start the backend chose, after the caller checked it is a legal one.
    fn compact_to(&mut self, start: u64) {
        if start == self.log_start {
            return;
        }
        let anchor = self.hash_before(start);
        self.checkpoints.entry(start).or_insert(anchor);
        let drop = (start - self.log_start) as usize;
        self.payloads.drain(..drop);
        self.hashes.drain(..drop);
        self.log_start = start;
        self.anchor = anchor;
        self.checkpoints.retain(|&o, _| o >= start);
        // Segment accounting is not modelled in this mode; keep one segment so truncation works.
        let bytes = SEGMENT_HEADER + self.payloads.iter().map(|p| record_bytes(p.len())).sum::<u64>();
        self.segments = vec![ModelSegment { base: start, end: self.next(), bytes }];
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

#[derive(Debug, Default)]
struct Model {
    streams: BTreeMap<StreamId, ModelStream>,
}

impl Model {
    fn get(&mut self, s: StreamId) -> &mut ModelStream {
        self.streams.entry(s).or_insert_with(|| ModelStream::empty_at(0, ChainHash::ZERO))
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum CompactKind {
    /// `retain_bytes`, in segment-sized units.
    Bytes(u16),
    /// `max_log_start` somewhere in the stream.
    MaxLogStart(u16),
    /// No limit at all.
    Unlimited,
    /// Age limit of an hour: removes nothing.
    AgeHour,
}

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Append { stream: usize, sizes: Vec<u16>, fsync: bool },
    AppendAtWrongOffset { stream: usize, delta: i8 },
    Read { stream: usize, at: u16, max_bytes: usize },
    ReadRange { stream: usize, at: u16, len: u8 },
    Truncate { stream: usize, at: u16 },
    Compact { stream: usize, kind: CompactKind },
    Checkpoint { stream: usize, at: u16, data_len: u8 },
    InstallMatching { stream: usize, at: u16 },
    InstallForeign { stream: usize, at: u16 },
    ChainHashAt { stream: usize, at: u16 },
    Delete { stream: usize },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS.len();
    prop_oneof![
        8 => (stream.clone(), prop::collection::vec(0u16..700, 1..6), any::<bool>())
            .prop_map(|(stream, sizes, fsync)| Op::Append { stream, sizes, fsync }),
        1 => (stream.clone(), any::<i8>()).prop_map(|(stream, delta)| Op::AppendAtWrongOffset { stream, delta }),
        3 => (stream.clone(), any::<u16>(), prop_oneof![Just(0usize), Just(500), Just(3000), Just(usize::MAX)])
            .prop_map(|(stream, at, max_bytes)| Op::Read { stream, at, max_bytes }),
        1 => (stream.clone(), any::<u16>(), any::<u8>()).prop_map(|(stream, at, len)| Op::ReadRange { stream, at, len }),
        2 => (stream.clone(), any::<u16>()).prop_map(|(stream, at)| Op::Truncate { stream, at }),
        2 => (stream.clone(), prop_oneof![
            (0u16..8).prop_map(CompactKind::Bytes),
            any::<u16>().prop_map(CompactKind::MaxLogStart),
            Just(CompactKind::Unlimited),
            Just(CompactKind::AgeHour),
        ]).prop_map(|(stream, kind)| Op::Compact { stream, kind }),
        2 => (stream.clone(), any::<u16>(), any::<u8>())
            .prop_map(|(stream, at, data_len)| Op::Checkpoint { stream, at, data_len }),
        1 => (stream.clone(), any::<u16>()).prop_map(|(stream, at)| Op::InstallMatching { stream, at }),
        1 => (stream.clone(), any::<u16>()).prop_map(|(stream, at)| Op::InstallForeign { stream, at }),
        1 => (stream.clone(), any::<u16>()).prop_map(|(stream, at)| Op::ChainHashAt { stream, at }),
        1 => stream.prop_map(|stream| Op::Delete { stream }),
        1 => Just(Op::Reopen),
    ]
}

/// A payload unique to `seq` (a counter over the whole run): two in three are repetitive text
/// (compressible), the rest pseudo-random bytes (not).
fn payload(seq: u64, len: usize) -> Bytes {
    if !seq.is_multiple_of(3) {
        let unit = format!("event {seq} of the model run; ");
        let mut text = unit.repeat(len / unit.len() + 1).into_bytes();
        text.truncate(len);
        return Bytes::from(text);
    }
    noise(seq, len)
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// Opens the backend under test.
trait Harness {
    type Backend: StorageBackend;
    /// Opens it (again, for a persistent backend: on the same data).
    fn open(&mut self) -> Self::Backend;
    /// Whether data survives `open` being called again.
    const PERSISTENT: bool;
    /// How `stream_bytes` relates to the model's segment accounting.
    const STREAM_BYTES: BytesCheck;
    /// Whether records take exactly their uncompressed encoded size (no compression), so segment
    /// rotation and compaction results are predicted exactly.
    const EXACT_LAYOUT: bool = true;
}

/// What `stream_bytes` is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BytesCheck {
    /// Equal to the model's segment bytes.
    Exact,
    /// At least the segment bytes (index and checkpoint files come on top).
    AtLeastSegments,
    /// Not comparable (compressed records); only non-zero for a stream that exists.
    NonZero,
}

struct MemoryHarness;

impl Harness for MemoryHarness {
    type Backend = MemoryStorage;
    const PERSISTENT: bool = false;
    const STREAM_BYTES: BytesCheck = BytesCheck::Exact;
    fn open(&mut self) -> MemoryStorage {
        MemoryStorage::with_options(options()).expect("valid options")
    }
}

/// The disk [`Storage`] in a temp dir; `open` again reopens the same data.
struct DiskHarness {
    dir: tempfile::TempDir,
}

impl Harness for DiskHarness {
    type Backend = Storage;
    const PERSISTENT: bool = true;
    const STREAM_BYTES: BytesCheck = BytesCheck::AtLeastSegments;
    fn open(&mut self) -> Storage {
        Storage::open_with(self.dir.path(), options()).expect("open")
    }
}

/// The disk [`Storage`] compressing records with `codec` (kept where it makes a record smaller).
struct CompressedDiskHarness {
    dir: tempfile::TempDir,
    codec: CodecKind,
}

impl Harness for CompressedDiskHarness {
    type Backend = Storage;
    const PERSISTENT: bool = true;
    const STREAM_BYTES: BytesCheck = BytesCheck::NonZero;
    const EXACT_LAYOUT: bool = false;
    fn open(&mut self) -> Storage {
        Storage::open_with(self.dir.path(), StorageOptions { codec: self.codec, ..options() }).expect("open")
    }
}

fn check_stream<B: StorageBackend>(
    b: &B,
    s: StreamId,
    m: &ModelStream,
    bytes_check: BytesCheck,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(b.next_offset(s).unwrap(), Offset::new(m.next()), "next offset of {}", s);
    prop_assert_eq!(b.log_start(s).unwrap(), Offset::new(m.log_start), "log start of {}", s);
    prop_assert_eq!(b.latest_chain_hash(s).unwrap(), m.head(), "head of {}", s);
    let latest = b.latest_checkpoint(s).unwrap().map(|c| (c.offset.get(), c.chain_hash));
    prop_assert_eq!(latest, m.checkpoints.iter().next_back().map(|(o, h)| (*o, *h)), "latest checkpoint of {}", s);
    let bytes = b.stream_bytes(s).unwrap();
    match bytes_check {
        BytesCheck::Exact => prop_assert_eq!(bytes, m.bytes(), "stream bytes of {}", s),
        BytesCheck::AtLeastSegments => prop_assert!(bytes >= m.bytes(), "stream bytes of {} cover its segments", s),
        BytesCheck::NonZero => prop_assert!(bytes > 0, "stream {} takes some bytes", s),
    }
    Ok(())
}

fn check_all<B: StorageBackend>(
    b: &B,
    model: &Model,
    bytes_check: BytesCheck,
    full: bool,
) -> Result<(), TestCaseError> {
    let model_streams: Vec<StreamId> = model.streams.keys().copied().collect();
    prop_assert_eq!(b.streams(), model_streams);
    for (s, m) in &model.streams {
        check_stream(b, *s, m, bytes_check)?;
        if full {
            let v = b.verify_chain(*s).unwrap();
            prop_assert_eq!(
                (v.from.get(), v.to.get(), v.records, v.head),
                (m.log_start, m.next(), m.payloads.len() as u64, m.head())
            );
            let recs = b.read_records(*s, Offset::new(m.log_start), usize::MAX).unwrap();
            let got: Vec<&Bytes> = recs.iter().map(|r| &r.payload).collect();
            let want: Vec<&Bytes> = m.payloads.iter().collect();
            prop_assert_eq!(got, want, "payloads of {}", s);
        }
    }
    Ok(())
}

fn run_ops<H: Harness>(harness: &mut H, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut b = harness.open();
    let mut model = Model::default();
    let mut seq = 0u64;
    for op in ops {
        match op {
            Op::Append { stream, sizes, fsync } => {
                let s = STREAMS[*stream];
                let events: Vec<Bytes> = sizes
                    .iter()
                    .map(|&n| {
                        seq += 1;
                        payload(seq, n as usize)
                    })
                    .collect();
                let m = model.get(s);
                let first = m.next();
                let next = b.append_batch(s, events.clone(), Offset::new(first), *fsync).unwrap();
                m.append(&events);
                prop_assert_eq!(next, Offset::new(m.next()));
            }
            Op::AppendAtWrongOffset { stream, delta } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get(&s) else { continue };
                let delta = if *delta == 0 { 1 } else { i64::from(*delta) };
                let wrong = (m.next() as i64 + delta).max(0) as u64;
                if wrong == m.next() {
                    continue;
                }
                match b.append_batch(s, vec![payload(u64::MAX, 10)], Offset::new(wrong), false) {
                    Err(StorageError::OffsetMismatch { expected, actual, .. }) => {
                        prop_assert_eq!((expected.get(), actual.get()), (wrong, m.next()));
                    }
                    other => prop_assert!(false, "append at {} on a stream at {}: {:?}", wrong, m.next(), other),
                }
            }
            Op::Read { stream, at, max_bytes } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get(&s) else { continue };
                // From two below the log start to two past the end.
                let span = m.payloads.len() as u64 + 5;
                let from = (m.log_start + u64::from(*at) % span).saturating_sub(2);
                let got = b.read_records(s, Offset::new(from), *max_bytes);
                if from < m.log_start {
                    match got {
                        Err(StorageError::OffsetOutOfRange { requested, start, end, .. }) => {
                            prop_assert_eq!((requested.get(), start.get(), end.get()), (from, m.log_start, m.next()));
                        }
                        other => prop_assert!(false, "read below the log start: {:?}", other),
                    }
                    continue;
                }
                let got = got.unwrap();
                let mut want = Vec::new();
                let mut bytes = 0usize;
                for o in from..m.next() {
                    let p = &m.payloads[(o - m.log_start) as usize];
                    if !want.is_empty() && bytes.saturating_add(p.len()) > *max_bytes {
                        break;
                    }
                    bytes += p.len();
                    want.push((o, m.hash_before(o), m.hashes[(o - m.log_start) as usize], p.clone()));
                }
                let got: Vec<_> = got.into_iter().map(|r| (r.offset.get(), r.prev_hash, r.hash, r.payload)).collect();
                prop_assert_eq!(got, want, "read {} from {} max {}", s, from, max_bytes);
            }
            Op::ReadRange { stream, at, len } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get(&s) else { continue };
                let from = m.log_start + u64::from(*at) % (m.payloads.len() as u64 + 1);
                let end = from + u64::from(*len % 16);
                let got: Vec<u64> = b
                    .read_range(s, Offset::new(from), Offset::new(end), usize::MAX)
                    .unwrap()
                    .iter()
                    .map(|r| r.offset.get())
                    .collect();
                prop_assert_eq!(got, (from..end.min(m.next())).collect::<Vec<_>>());
            }
            Op::Truncate { stream, at } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get_mut(&s) else { continue };
                let offset = m.log_start + u64::from(*at) % (m.payloads.len() as u64 + 2);
                b.truncate_from(s, Offset::new(offset)).unwrap();
                m.truncate(offset);
                prop_assert_eq!(b.latest_chain_hash(s).unwrap(), m.head());
            }
            Op::Compact { stream, kind } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get_mut(&s) else { continue };
                let config = match kind {
                    CompactKind::Bytes(n) => CompactionConfig {
                        retain_bytes: Some(u64::from(*n) * MAX_SEGMENT_BYTES),
                        ..CompactionConfig::default()
                    },
                    CompactKind::MaxLogStart(at) => CompactionConfig {
                        max_log_start: Some(Offset::new(m.log_start + u64::from(*at) % (m.payloads.len() as u64 + 1))),
                        ..CompactionConfig::default()
                    },
                    CompactKind::Unlimited => CompactionConfig::default(),
                    CompactKind::AgeHour => {
                        CompactionConfig { retain_age_ms: Some(3_600_000), ..CompactionConfig::default() }
                    }
                };
                let got = b.compact(s, &config).unwrap();
                if !H::EXACT_LAYOUT {
                    // Only whole segments go, within the limits; the model follows the backend.
                    let (old, new) = (m.log_start, got.new_log_start.get());
                    prop_assert!(old <= new && new <= m.next(), "log start {} -> {} (next {})", old, new, m.next());
                    prop_assert_eq!(got.segments_removed == 0, new == old);
                    prop_assert_eq!(got.bytes_freed == 0, new == old);
                    if let Some(max) = config.max_log_start {
                        prop_assert!(new == old || new <= max.get(), "log start {} past the cap {}", new, max);
                    }
                    if config.retain_age_ms.is_some() {
                        prop_assert_eq!(got.segments_removed, 0, "no segment is an hour old");
                    }
                    m.compact_to(new);
                } else {
                    let want = m.compact(&config);
                    prop_assert_eq!(
                        (got.segments_removed, got.new_log_start),
                        (want.segments_removed, want.new_log_start),
                        "compaction {:?}",
                        config
                    );
                    // Both backends count the segment bytes removed (as the model does).
                    prop_assert_eq!(got.bytes_freed, want.bytes_freed);
                }
            }
            Op::Checkpoint { stream, at, data_len } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get_mut(&s) else { continue };
                let offset = m.log_start + u64::from(*at) % (m.payloads.len() as u64 + 1);
                let data = payload(u64::from(*data_len), usize::from(*data_len));
                let cp = b.create_checkpoint_at(s, Offset::new(offset), data.clone()).unwrap();
                prop_assert_eq!((cp.offset.get(), cp.chain_hash, cp.data), (offset, m.hash_before(offset), data));
                m.checkpoints.insert(offset, m.hash_before(offset));
                let below = b.checkpoint_at_or_below(s, Offset::new(offset)).unwrap().map(|c| c.offset.get());
                prop_assert_eq!(below, Some(offset));
            }
            Op::InstallMatching { stream, at } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get_mut(&s) else { continue };
                let offset = m.log_start + u64::from(*at) % (m.payloads.len() as u64 + 1);
                let cp = Checkpoint::new(Offset::new(offset), m.hash_before(offset), Bytes::from_static(b"snap"));
                b.install_checkpoint(s, cp).unwrap();
                m.checkpoints.insert(offset, m.hash_before(offset));
            }
            Op::InstallForeign { stream, at } => {
                let s = STREAMS[*stream];
                let (log_start, len) = model.streams.get(&s).map_or((0, 0), |m| (m.log_start, m.payloads.len()));
                // Anywhere from the log start to a little past the end, with a hash no record has.
                let offset = log_start + u64::from(*at) % (len as u64 + 20);
                seq += 1;
                let hash = sha256(&[b"foreign", &seq.to_le_bytes()]);
                if offset == 0 {
                    // A checkpoint at 0 covers no record: only the zero hash can anchor it.
                    let got = b.install_checkpoint(s, Checkpoint::new(Offset::ZERO, hash, Bytes::new()));
                    prop_assert!(matches!(got, Err(StorageError::InvalidCheckpoint { .. })), "{:?}", got);
                    continue;
                }
                b.install_checkpoint(s, Checkpoint::new(Offset::new(offset), hash, Bytes::new())).unwrap();
                let m = model.get(s);
                *m = ModelStream::empty_at(offset, hash);
                m.checkpoints.insert(offset, hash);
            }
            Op::ChainHashAt { stream, at } => {
                let s = STREAMS[*stream];
                let Some(m) = model.streams.get(&s) else { continue };
                let span = m.payloads.len() as u64 + 4;
                let offset = (m.log_start + u64::from(*at) % span).saturating_sub(2);
                let got = b.chain_hash_at(s, Offset::new(offset));
                let anchored = m.log_start > 0 && offset + 1 == m.log_start;
                if anchored {
                    prop_assert_eq!(got.unwrap(), m.anchor);
                } else if offset >= m.log_start && offset < m.next() {
                    prop_assert_eq!(got.unwrap(), m.hashes[(offset - m.log_start) as usize]);
                } else {
                    prop_assert!(
                        matches!(got, Err(StorageError::OffsetOutOfRange { .. })),
                        "chain_hash_at {} outside [{}, {}): {:?}",
                        offset,
                        m.log_start,
                        m.next(),
                        got
                    );
                }
            }
            Op::Delete { stream } => {
                let s = STREAMS[*stream];
                b.delete_stream(s).unwrap();
                model.streams.remove(&s);
                prop_assert_eq!(b.next_offset(s).unwrap(), Offset::ZERO);
                prop_assert_eq!(b.latest_chain_hash(s).unwrap(), ChainHash::ZERO);
            }
            Op::Reopen => {
                if H::PERSISTENT {
                    drop(b);
                    b = harness.open();
                    check_all(&b, &model, H::STREAM_BYTES, true)?;
                }
            }
        }
        check_all(&b, &model, H::STREAM_BYTES, false)?;
    }
    check_all(&b, &model, H::STREAM_BYTES, true)
}

/// 64 cases from a fixed seed, so every run checks the same sequences; explore further by hand
/// with `PROPTEST_RNG_SEED=<n>` and `PROPTEST_CASES=<n>` (both honoured when set).
fn config() -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { 64 },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(0x5_4A1E)
        },
        // A failing case is printed in full; no regression files are written into the tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..from_env
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), 1..=40)
}

#[test]
fn memory_matches_model() {
    let mut runner = TestRunner::new(config());
    runner.run(&ops(), |ops| run_ops(&mut MemoryHarness, &ops)).unwrap();
}

#[test]
fn disk_matches_model() {
    let mut runner = TestRunner::new(config());
    runner
        .run(&ops(), |ops| {
            let mut harness = DiskHarness { dir: tempfile::tempdir().expect("temp dir") };
            run_ops(&mut harness, &ops)
        })
        .unwrap();
}

#[test]
fn compressed_disk_matches_model() {
    for codec in [CodecKind::Lz4, CodecKind::Zstd { level: 1 }] {
        let mut runner = TestRunner::new(Config { cases: config().cases / 2, ..config() });
        runner
            .run(&ops(), |ops| {
                let mut harness = CompressedDiskHarness { dir: tempfile::tempdir().expect("temp dir"), codec };
                run_ops(&mut harness, &ops)
            })
            .unwrap();
    }
}
