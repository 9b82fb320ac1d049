//! Bad input never panics: random byte flips, cuts and garbage in every kind of file of a stream
//! give a typed error (or a recovered stream), never a panic, on open and on every read.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{CheckpointPolicy, CodecKind, Offset, Storage, StorageBackend, StorageOptions, StreamId};

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
            match Storage::open_with_fs("/d", options(codec), Arc::new(fs.clone())) {
                Err(_) => outcomes[0] += 1,
                Ok(s) => {
                    outcomes[1] += 1;
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
