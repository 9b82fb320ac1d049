//! Bad input never panics: random byte flips, cuts and garbage in every kind of file of a stream
//! give a typed error (or a recovered stream), never a panic, on open and on every read. A
//! read-only open of the same files changes nothing, reports an error exactly where the
//! read-write open fails, and otherwise recovers the same stream.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    ChainHash, CheckpointPolicy, CodecKind, Offset, RecoveryKind, Storage, StorageBackend, StorageOptions, StreamId,
};

const S: StreamId = StreamId::new(2);

fn options(codec: CodecKind) -> StorageOptions {
    StorageOptions {
        max_segment_bytes: 4096,
        checkpoint_policy: CheckpointPolicy::EveryRecords(15),
        codec,
        ..Default::default()
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn build(codec: CodecKind) -> FaultyFileSystem {
    let fs = FaultyFileSystem::new();
    let s = Storage::open_with_fs("/d", options(codec), Arc::new(fs.clone())).unwrap();
    for b in 0..12u64 {
        let events: Vec<Bytes> =
            (0..5).map(|i| Bytes::from(format!("{b}-{i} ").repeat(1 + (i as usize * 7)))).collect();
        s.append_batch(S, events, Offset::new(b * 5), b % 4 == 0).unwrap();
    }
    s.create_checkpoint_at(S, Offset::new(12), Bytes::from_static(b"data")).unwrap();
    s.close().unwrap();
    fs
}

/// What a read-only open of a damaged file system gave.
struct ReadOnlyOpen {
    /// It reported an error a read-write open fails with.
    refused: bool,
    /// `S`'s log start, next offset and head.
    bounds: (Offset, Offset, ChainHash),
}

/// Opens `fs` read-only (which must succeed whatever the damage) and checks that it changed
/// nothing: no file's bytes, no write, no fsync.
fn read_only_open(fs: &FaultyFileSystem, codec: CodecKind) -> ReadOnlyOpen {
    let files = |fs: &FaultyFileSystem| fs.list_files().into_iter().map(|p| fs.file_bytes(&p)).collect::<Vec<_>>();
    let (before, counts) = (files(fs), fs.op_counts());
    let s = Storage::open_read_only_with_fs("/d", options(codec), Arc::new(fs.clone())).expect("read-only opens");
    let refused = s.recovery_report().iter().any(|f| matches!(f.kind, RecoveryKind::Refused(_)));
    let bounds = (s.log_start(S).unwrap(), s.next_offset(S).unwrap(), s.latest_chain_hash(S).unwrap());
    let _ = s.verify_chain(S);
    drop(s);
    assert_eq!((files(fs), fs.op_counts()), (before, counts), "a read-only open changes nothing");
    ReadOnlyOpen { refused, bounds }
}

#[test]
fn mutated_files_never_panic() {
    let mut rng = Rng(0x5EED);
    let mut outcomes = [0usize; 2];
    for codec in [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 1 }] {
        let pristine = build(codec);
        let files: Vec<PathBuf> = pristine.list_files().into_iter().filter(|p| !p.ends_with("LOCK")).collect();
        for _ in 0..120 {
            let fs = build(codec);
            let victim = &files[rng.below(files.len() as u64) as usize];
            let mut bytes = fs.file_bytes(victim).unwrap();
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(bytes.len() as u64) as usize;
                        bytes[i] ^= 1 << rng.below(8);
                    }
                }
                1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                2 => {
                    // A length-like field set to something huge.
                    let i = rng.below(bytes.len().saturating_sub(4) as u64) as usize;
                    bytes[i..i + 4].copy_from_slice(&(u32::MAX - rng.below(16) as u32).to_le_bytes());
                }
                _ => bytes = (0..rng.below(5000)).map(|_| rng.next() as u8).collect(),
            }
            fs.set_file_bytes(victim, bytes).unwrap();
            let read_only = read_only_open(&fs, codec);
            match Storage::open_with_fs("/d", options(codec), Arc::new(fs.clone())) {
                Err(_) => {
                    outcomes[0] += 1;
                    assert!(read_only.refused, "what the read-write open refuses, the read-only one reports");
                }
                Ok(s) => {
                    outcomes[1] += 1;
                    assert!(!read_only.refused, "the read-only open refuses only what the read-write one does");
                    let bounds = (s.log_start(S).unwrap(), s.next_offset(S).unwrap(), s.latest_chain_hash(S).unwrap());
                    assert_eq!(read_only.bounds, bounds, "both opens recover the same stream");
                    let _ = s.verify_chain(S);
                    let start = s.log_start(S).unwrap();
                    let next = s.next_offset(S).unwrap();
                    for o in start.get()..next.get() {
                        let _ = s.read_records(S, Offset::new(o), 100);
                        let _ = s.chain_hash_at(S, Offset::new(o));
                    }
                    let _ = s.append_batch(S, vec![Bytes::from_static(b"more")], next, true);
                }
            }
        }
    }
    // Both outcomes happen: damage is caught on open, or left for verified reads to find.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}
