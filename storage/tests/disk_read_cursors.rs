//! Sequential readers chain from where their last read stopped (the stream's read cursors), not
//! from the sparse anchor below: shown with damage between the anchor and the readers' positions,
//! which a read that re-hashed from the anchor would have to read (and report), and which reads
//! continuing from a cursor never touch. Several readers keep their positions at once.

use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    CheckpointPolicy, Offset, Storage, StorageBackend, StorageError, StorageOptions, StreamId, format,
};

const S: StreamId = StreamId::new(9);
const ROOT: &str = "/data";
const PAYLOAD: usize = 200;
/// Records written: all in one segment, below the second grid anchor (64).
const RECORDS: u64 = 60;
/// The damaged record: above the segment's base anchor (0), below every reader's position.
const DAMAGED: u64 = 5;

fn payload(i: u64) -> Bytes {
    Bytes::from((0..PAYLOAD).map(|j| (i as usize * 31 + j * 7) as u8).collect::<Vec<u8>>())
}

fn setup() -> (FaultyFileSystem, Storage) {
    let fs = FaultyFileSystem::new();
    let options = StorageOptions {
        max_segment_bytes: 1 << 20,
        checkpoint_policy: CheckpointPolicy::Manual,
        ..Default::default()
    };
    let s = Storage::open_with_fs(ROOT, options, Arc::new(fs.clone())).unwrap();
    s.append_batch(S, (0..RECORDS).map(payload).collect(), Offset::ZERO, true).unwrap();
    assert_eq!(s.segments(S).unwrap().len(), 1, "one segment: its base is the only anchor below 64");
    (fs, s)
}

/// Flips a bit in the payload of record `offset` of the stream's one segment.
fn damage(fs: &FaultyFileSystem, s: &Storage, offset: u64) {
    let seg = s.segments(S).unwrap().remove(0);
    let path = std::path::PathBuf::from(ROOT).join(S.get().to_string()).join(&seg.file);
    let record = format::record::encoded_len(PAYLOAD);
    let at = format::segment::HEADER_LEN + offset as usize * record + format::record::HEADER_LEN + PAYLOAD / 2;
    let mut bytes = fs.file_bytes(&path).unwrap();
    bytes[at] ^= 0x01;
    fs.set_file_bytes(&path, bytes).unwrap();
}

/// Reads 3 records from `from`; checks they are the ones written.
fn read3(s: &Storage, from: u64) -> Result<(), StorageError> {
    let recs = s.read_range(S, Offset::new(from), Offset::new(from + 3), usize::MAX)?;
    assert_eq!(recs.len(), 3);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, Offset::new(from + i as u64));
        assert_eq!(r.payload, payload(from + i as u64));
    }
    Ok(())
}

#[test]
fn readers_continue_from_their_own_positions() {
    let (fs, s) = setup();
    // Four readers (consumers of one partition at different positions) each read once...
    let starts = [10, 20, 30, 40];
    for from in starts {
        read3(&s, from).unwrap();
    }
    damage(&fs, &s, DAMAGED);
    // ...and each continues where it stopped without re-reading from the anchor at 0 (which
    // would read the damaged record and fail).
    for round in 1..4 {
        for from in starts {
            read3(&s, from + 3 * round).unwrap_or_else(|e| panic!("reader at {}: {e}", from + 3 * round));
        }
    }
    // A read below every reader's position re-hashes from the anchor and finds the damage.
    let e = read3(&s, DAMAGED + 2).unwrap_err();
    assert!(
        matches!(e, StorageError::Corruption { offset: Some(o), .. } if o == Offset::new(DAMAGED)),
        "a read from the anchor reports the damaged record: {e}"
    );
}

#[test]
fn the_oldest_reader_position_is_forgotten_past_the_limit() {
    let (fs, s) = setup();
    // Nine readers, three records apart (8 positions are kept per stream).
    let starts: Vec<u64> = (0..9).map(|i| 10 + 4 * i).collect();
    for &from in &starts {
        read3(&s, from).unwrap();
    }
    damage(&fs, &s, DAMAGED);
    // The eight most recent continue from their positions...
    for &from in &starts[1..] {
        read3(&s, from + 3).unwrap_or_else(|e| panic!("reader at {}: {e}", from + 3));
    }
    // ...the first one's position was dropped: its next read starts at the anchor again.
    let e = read3(&s, starts[0] + 3).unwrap_err();
    assert!(matches!(e, StorageError::Corruption { offset: Some(o), .. } if o == Offset::new(DAMAGED)), "{e}");
}
