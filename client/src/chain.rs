//! Reading a partition's log entries: decoding the record batches a fetch returns and checking
//! the hash chain over them.
//!
//! A fetch answers with the partition's stored log entries (`FetchResponse.entries`), each exactly
//! as every replica stores it, plus the chain hash of the entry before the first one
//! (`prev_chain_hash`). Entry `i`'s chain hash is `SHA-256(hash(i - 1) || data)` (entry 0:
//! `SHA-256(data)`), the same rule as the storage's ([`shale_storage::chain_hash`]), so a reader
//! recomputes every hash of the answer from the bytes it received. A [`ChainReader`] keeps, per
//! partition, where it has verified up to (a [`ChainPoint`]: the next log index and the hash before
//! it) and asks the next fetch to start exactly there (`FetchRequest.from_index`), so every answer
//! must continue the chain it already holds:
//!
//! - the first answer's `prev_chain_hash` is the anchor: trusted on first use, or checked against
//!   a point the caller supplies ([`ChainReader::anchored`], e.g. from a producer's receipt);
//! - every later answer must start at the index asked for, chain from the last hash computed, and
//!   hold consecutive indexes;
//! - record offsets are dense: each visible batch starts where the one before it ended (the first
//!   one at or before the offset asked for), so a batch hidden, dropped, invented or moved by the
//!   server breaks the chain even where the hashes alone would only tell at the next answer.
//!
//! Any break is [`ClientError::ChainMismatch`], naming the partition, the log index, the offset and
//! what differs ([`ChainBreak`]). A server that rewrites the whole log consistently from the anchor
//! on is caught only against a hash learned elsewhere (an anchor, a producer's receipt, another
//! replica): the check proves that what was read is one chain, not which chain.
//!
//! Pure: no I/O, so the node-independent tests and the test harness use it on raw responses.

use shale_storage::codec::CodecRegistry;
use shale_storage::record_batch::{self, envelope};
use shale_storage::{ChainHash, Offset};

use crate::error::ClientError;
use crate::proto;
use crate::records::{ConsumedRecord, Header};

/// A position in a partition's hash chain: the log index the next entry has, and the chain hash
/// of the entry before it ([`ChainHash::ZERO`] before entry 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPoint {
    /// The index of the next entry to read (`FetchRequest.from_index`).
    pub next_index: u64,
    /// The chain hash of entry `next_index - 1`.
    pub prev_hash: ChainHash,
}

impl ChainPoint {
    /// The start of a log: entry 0, which chains from nothing.
    pub const GENESIS: ChainPoint = ChainPoint { next_index: 0, prev_hash: ChainHash::ZERO };

    /// Just after entry `index`, whose chain hash is `hash` (as a producer's receipt names it).
    pub fn after(index: u64, hash: ChainHash) -> Self {
        Self { next_index: index + 1, prev_hash: hash }
    }
}

/// What broke the chain (see [`ClientError::ChainMismatch`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The answer chains from another hash than the one the reader holds for the entry before it
    /// (the answer's `prev_chain_hash`, or the hash an entry 0 must start from).
    #[error("the answer chains from {found} but the entry before it hashes to {expected}")]
    PrevHash {
        /// The hash the reader computed (or was given) for the entry before.
        expected: ChainHash,
        /// The `prev_chain_hash` the server sent.
        found: ChainHash,
    },
    /// An entry is not at the log index it must be at: the answer starts elsewhere than asked, or
    /// skips or reorders entries.
    #[error("entry at log index {found} where index {expected} must be")]
    Index {
        /// The index the entry must have.
        expected: u64,
        /// The index it has.
        found: u64,
    },
    /// An entry's envelope names another log index than the position it was served at (a stored
    /// entry moved within the log, with the hashes recomputed around it).
    #[error("the entry served at log index {expected} names log index {found} in its envelope")]
    EnvelopeIndex {
        /// The index the entry was served at (and must name).
        expected: u64,
        /// The index its envelope names.
        found: u64,
    },
    /// The answer's entries, hashed from where it starts, do not arrive at the hash the replica
    /// holds for its last entry (`FetchResponse.last_chain_hash`): an entry of this answer was
    /// altered after it was stored (with its CRC recomputed, or the replica would have refused it).
    #[error("the answer's entries hash to {found} but the replica holds {expected} for its last entry")]
    LastHash {
        /// The `last_chain_hash` the server sent.
        expected: ChainHash,
        /// The hash the reader computed for the last entry.
        found: ChainHash,
    },
    /// A visible record batch does not start at the next offset: records were hidden, dropped,
    /// invented or moved (for the first batch read: it starts past the offset asked for).
    #[error("a record batch starts at offset {found} where offset {expected} comes next")]
    Offset {
        /// The offset the batch must start at (for the first batch read: at most this).
        expected: u64,
        /// Its base offset.
        found: u64,
    },
}

/// A partition's records from one fetch answer, and how far the chain is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedEntries {
    /// The records at or past the offset asked for, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Log entries in the answer (record batches, hidden batches and Raft's own entries).
    pub entries: u64,
}

/// Totals of what a [`ChainReader`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainStats {
    /// Log entries read (each hashed when the chain is checked).
    pub entries: u64,
    /// Records handed out.
    pub records: u64,
    /// Bytes of stored entries read.
    pub bytes: u64,
    /// Where the reader is in the chain: after the last entry read (`prev_hash` is that entry's
    /// hash when the chain is checked, else unknown and zero). `None` before the first entry.
    pub point: Option<ChainPoint>,
    /// Times the chain was started again because a replica could not continue it at the index
    /// asked ([`ChainReader::reanchor`]); the offsets stayed checked across each.
    pub reanchors: u64,
}

/// One partition's read position and chain state. See the module documentation.
#[derive(Clone, Debug)]
pub struct ChainReader {
    topic: String,
    partition: u32,
    verify: bool,
    /// The next offset to hand out.
    offset: u64,
    /// Where the chain continues; `None` until the first entry (the next answer's
    /// `prev_chain_hash` is then trusted, unless anchored).
    point: Option<ChainPoint>,
    /// `point` was supplied by the caller, not yet confirmed by an answer.
    anchored: bool,
    /// The offset the next visible batch must start at, once a batch was read.
    next_batch: Option<u64>,
    stats: ChainStats,
}

impl ChainReader {
    /// A reader of `topic/partition` from `offset`, trusting the first answer's anchor. With
    /// `verify` false it decodes only (no hashes are computed, records carry none).
    pub fn new(topic: impl Into<String>, partition: u32, offset: u64, verify: bool) -> Self {
        Self {
            topic: topic.into(),
            partition,
            verify,
            offset,
            point: None,
            anchored: false,
            next_batch: None,
            stats: ChainStats::default(),
        }
    }

    /// A reader from `offset` whose chain starts at `point` (the entry before `point.next_index`
    /// is known to hash to `point.prev_hash`): the first fetch starts at that index and must chain
    /// from that hash. `point.next_index` must not be past the entry holding `offset`.
    pub fn anchored(topic: impl Into<String>, partition: u32, offset: u64, point: ChainPoint) -> Self {
        let mut r = Self::new(topic, partition, offset, true);
        r.point = Some(point);
        r.anchored = true;
        r
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The next offset to read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The log index the next fetch starts at (`FetchRequest.from_index`), once known.
    pub fn from_index(&self) -> Option<u64> {
        self.point.map(|p| p.next_index)
    }

    /// Whether answers are checked.
    pub fn verifies(&self) -> bool {
        self.verify
    }

    /// What was read so far.
    pub fn stats(&self) -> ChainStats {
        ChainStats { point: if self.anchored { None } else { self.point }, ..self.stats }
    }

    /// Starts the hash chain again at the next answer (trusted on first use), for a replica that
    /// cannot continue it at the index asked (`INVALID_FROM_INDEX`: it no longer holds that index).
    /// The offsets stay checked: the next visible batch must still start where the last one ended.
    pub fn reanchor(&mut self) {
        self.point = None;
        self.anchored = false;
        self.stats.reanchors += 1;
    }

    fn broken(&self, index: u64, offset: u64, reason: ChainBreak) -> ClientError {
        ClientError::ChainMismatch { topic: self.topic.clone(), partition: self.partition, index, offset, reason }
    }

    fn malformed(&self, index: u64, reason: String) -> ClientError {
        ClientError::MalformedEntry { topic: self.topic.clone(), partition: self.partition, index, reason }
    }

    /// Takes one fetch answer to the request this reader made ([`ChainReader::offset`],
    /// [`ChainReader::from_index`]): checks it continues the chain (when verifying) and, when the
    /// server sent one (`last_chain_hash` not empty), that the chain arrives at the hash the server
    /// holds for the last entry; decodes its visible batches, and moves past it. On an error the
    /// reader is unchanged.
    pub fn accept(
        &mut self,
        entries: Vec<proto::LogEntry>,
        prev_chain_hash: &[u8],
        last_chain_hash: &[u8],
        codecs: &CodecRegistry,
    ) -> Result<DecodedEntries, ClientError> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(DecodedEntries { records: Vec::new(), entries: 0 });
        };
        if let Some(expected) = self.from_index()
            && first != expected
        {
            return Err(self.broken(first, self.offset, ChainBreak::Index { expected, found: first }));
        }
        let mut hash = if self.verify { self.anchor(first, prev_chain_hash)? } else { ChainHash::ZERO };
        let mut next_batch = self.next_batch;
        let mut records = Vec::new();
        let mut bytes = 0u64;
        for (i, entry) in entries.iter().enumerate() {
            let expected = first + i as u64;
            if entry.index != expected {
                let at = next_batch.unwrap_or(self.offset);
                return Err(self.broken(entry.index, at, ChainBreak::Index { expected, found: entry.index }));
            }
            bytes += entry.data.len() as u64;
            if self.verify {
                // Entry 0 chains from nothing (checked in `anchor`); every later one from its predecessor.
                hash = shale_storage::chain_hash(Offset::new(entry.index), &hash, &entry.data);
            }
            if entry.data.len() < envelope::HEADER_LEN {
                return Err(
                    self.malformed(entry.index, format!("{} bytes, shorter than the envelope", entry.data.len()))
                );
            }
            if self.verify && envelope::index(&entry.data) != Some(entry.index) {
                let at = next_batch.unwrap_or(self.offset);
                let found = envelope::index(&entry.data).unwrap_or(u64::MAX);
                return Err(self.broken(entry.index, at, ChainBreak::EnvelopeIndex { expected: entry.index, found }));
            }
            if entry.hidden || entry.data[envelope::KIND_AT] != envelope::KIND_NORMAL {
                continue;
            }
            let body = entry.data.slice(envelope::HEADER_LEN..);
            let (header, batch) =
                record_batch::decode_batch(&body, codecs).map_err(|e| self.malformed(entry.index, e.to_string()))?;
            if self.verify {
                match next_batch {
                    Some(expected) if header.base_offset != expected => {
                        let reason = ChainBreak::Offset { expected, found: header.base_offset };
                        return Err(self.broken(entry.index, expected, reason));
                    }
                    None if header.base_offset > self.offset => {
                        let reason = ChainBreak::Offset { expected: self.offset, found: header.base_offset };
                        return Err(self.broken(entry.index, self.offset, reason));
                    }
                    _ => {}
                }
            }
            next_batch = Some(header.end_offset());
            let chain_hash = self.verify.then_some(hash);
            records.extend(batch.into_iter().filter(|r| r.offset >= self.offset).map(|r| ConsumedRecord {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: r.offset,
                chain_hash,
                entry_index: entry.index,
                position: r.position,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|(key, value)| Header { key, value }).collect(),
                timestamp_ms: r.timestamp_ms,
            }));
        }
        let count = entries.len() as u64;
        if self.verify && !last_chain_hash.is_empty() {
            let expected = self.hash_field("last_chain_hash", last_chain_hash)?;
            if expected != hash {
                let last = first + count - 1;
                return Err(self.broken(last, self.offset, ChainBreak::LastHash { expected, found: hash }));
            }
        }
        debug_assert!(records.windows(2).all(|w| w[1].offset == w[0].offset + 1) || !self.verify);
        if let Some(end) = next_batch {
            self.offset = self.offset.max(end);
        }
        self.next_batch = next_batch;
        self.point = Some(ChainPoint { next_index: first + count, prev_hash: hash });
        self.anchored = false;
        self.stats.entries += count;
        self.stats.records += records.len() as u64;
        self.stats.bytes += bytes;
        Ok(DecodedEntries { records, entries: count })
    }

    /// The hash the answer starting at `first` chains from: the one the reader holds, which the
    /// server's `prev_chain_hash` must equal, or on first use the server's.
    fn anchor(&self, first: u64, prev_chain_hash: &[u8]) -> Result<ChainHash, ClientError> {
        let found = self.hash_field("prev_chain_hash", prev_chain_hash)?;
        // Entry 0 chains from nothing; else from the hash the reader holds, or (first use) the server's.
        let expected = match self.point {
            _ if first == 0 => ChainHash::ZERO,
            Some(p) => p.prev_hash,
            None => found,
        };
        if found != expected {
            return Err(self.broken(first, self.offset, ChainBreak::PrevHash { expected, found }));
        }
        Ok(found)
    }

    /// A 32-byte hash field of an answer.
    fn hash_field(&self, name: &str, bytes: &[u8]) -> Result<ChainHash, ClientError> {
        bytes.try_into().map(ChainHash).map_err(|_| {
            ClientError::Protocol(format!(
                "{name} of {}/{} is {} bytes, expected 32",
                self.topic,
                self.partition,
                bytes.len()
            ))
        })
    }
}

/// Decodes one fetch answer on its own (its `prev_chain_hash` trusted), for readers that do not
/// keep a [`ChainReader`]. Records below `offset` are left out.
pub fn decode_response(
    topic: &str,
    partition: u32,
    offset: u64,
    verify: bool,
    response: proto::FetchResponse,
) -> Result<DecodedEntries, ClientError> {
    let mut reader = ChainReader::new(topic, partition, offset, verify);
    reader.accept(response.entries, &response.prev_chain_hash, &response.last_chain_hash, &default_codecs())
}

/// The codecs a client decodes batches with (every built-in one).
pub fn default_codecs() -> CodecRegistry {
    CodecRegistry::new()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_storage::codec::NoneCodec;
    use shale_storage::record_batch::{NewRecord, encode_batch};

    use super::*;

    /// A stored entry: an envelope as `shale-raft` writes it (version, kind, term, node, index)
    /// and the body.
    fn entry(index: u64, kind: u8, body: &[u8]) -> Bytes {
        let mut data = vec![1u8, kind];
        data.extend_from_slice(&1u64.to_le_bytes());
        data.extend_from_slice(&1u64.to_le_bytes());
        data.extend_from_slice(&index.to_le_bytes());
        assert_eq!(data.len(), envelope::HEADER_LEN);
        data.extend_from_slice(body);
        Bytes::from(data)
    }

    /// A log: entry 0 blank, then batches of `sizes` records each (offsets dense from 0), with a
    /// membership entry after the first batch. Returns the entries and their chain hashes.
    fn log(sizes: &[u32]) -> (Vec<proto::LogEntry>, Vec<ChainHash>) {
        let mut entries = vec![proto::LogEntry { index: 0, data: entry(0, 0, b""), hidden: false }];
        let mut offset = 0u64;
        for (i, &n) in sizes.iter().enumerate() {
            let index = entries.len() as u64;
            let records: Vec<NewRecord> = (0..n)
                .map(|j| NewRecord {
                    value: Bytes::from(format!("r{}", offset + u64::from(j))),
                    ..NewRecord::default()
                })
                .collect();
            let batch = encode_batch(&records, offset, None, &NoneCodec);
            entries.push(proto::LogEntry { index, data: entry(index, envelope::KIND_NORMAL, &batch), hidden: false });
            offset += u64::from(n);
            if i == 0 {
                let index = entries.len() as u64;
                entries.push(proto::LogEntry { index, data: entry(index, 2, b"members"), hidden: false });
            }
        }
        let mut hashes = Vec::new();
        let mut prev = ChainHash::ZERO;
        for e in &entries {
            prev = shale_storage::chain_hash(Offset::new(e.index), &prev, &e.data);
            hashes.push(prev);
        }
        (entries, hashes)
    }

    fn prev(hashes: &[ChainHash], index: u64) -> Vec<u8> {
        if index == 0 { ChainHash::ZERO.0.to_vec() } else { hashes[index as usize - 1].0.to_vec() }
    }

    fn page(entries: &[proto::LogEntry], from: u64, to: u64) -> Vec<proto::LogEntry> {
        entries[from as usize..to as usize].to_vec()
    }

    #[test]
    fn pages_of_a_genuine_log_chain_and_hand_out_dense_offsets_from_the_one_asked() {
        let (entries, hashes) = log(&[3, 1, 4, 2]);
        let codecs = default_codecs();
        let mut r = ChainReader::new("t", 0, 2, true);
        assert_eq!(r.from_index(), None);
        // The first answer starts at the entry holding offset 2 (index 1); a second continues.
        let a = r.accept(page(&entries, 1, 3), &prev(&hashes, 1), &[], &codecs).unwrap();
        assert_eq!(a.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2]);
        assert_eq!((a.records[0].entry_index, a.records[0].position, a.records[0].chain_hash), (1, 2, Some(hashes[1])));
        assert_eq!((r.offset(), r.from_index()), (3, Some(3)));
        let b = r.accept(page(&entries, 3, 6), &prev(&hashes, 3), &[], &codecs).unwrap();
        assert_eq!(b.records.iter().map(|r| r.offset).collect::<Vec<_>>(), (3..10).collect::<Vec<_>>());
        assert_eq!(b.records.last().unwrap().value, Bytes::from("r9"));
        let stats = r.stats();
        assert_eq!((stats.entries, stats.records), (5, 8));
        assert_eq!(stats.point, Some(ChainPoint::after(5, hashes[5])));
        // Nothing new: nothing moves.
        assert!(r.accept(Vec::new(), &[], &[], &codecs).unwrap().records.is_empty());
        assert_eq!(r.from_index(), Some(6));
    }

    #[test]
    fn an_answer_must_hash_to_the_last_chain_hash_the_server_holds() {
        let (entries, hashes) = log(&[3, 1, 4, 2]);
        let codecs = default_codecs();
        // The server's link for the answer's last entry: the genuine chain hash of entry 2.
        let mut r = ChainReader::new("t", 0, 0, true);
        r.accept(page(&entries, 0, 3), &prev(&hashes, 0), &hashes[2].0, &codecs).unwrap();
        // Entry 4's last byte (a record value) rewritten in place, as by a replica that recomputed
        // its CRC: the answer still chains from the hash before it and decodes, but misses the
        // link the replica holds for its last entry.
        let mut altered = page(&entries, 3, 6);
        let mut data = altered[1].data.to_vec();
        *data.last_mut().unwrap() ^= 1;
        altered[1].data = Bytes::from(data);
        let before = r.clone();
        match r.accept(altered.clone(), &prev(&hashes, 3), &hashes[5].0, &codecs) {
            Err(ClientError::ChainMismatch {
                index: 5,
                offset,
                reason: ChainBreak::LastHash { expected, found },
                ..
            }) => {
                assert_eq!(offset, 3, "the offset the answer was asked for");
                assert_eq!(expected, hashes[5]);
                assert_ne!(found, hashes[5]);
            }
            other => panic!("expected a last-hash break, got {other:?}"),
        }
        assert_eq!(r.stats(), before.stats(), "a refused answer moves nothing");
        // Without the server's hash the answer is taken (the break shows at the next answer's anchor).
        r.clone().accept(altered, &prev(&hashes, 3), &[], &codecs).unwrap();
        // A hash of the wrong length is a protocol error; a reader that does not verify ignores it.
        assert!(matches!(
            r.clone().accept(page(&entries, 3, 6), &prev(&hashes, 3), &[1; 5], &codecs),
            Err(ClientError::Protocol(_))
        ));
        let mut off = ChainReader::new("t", 0, 0, false);
        assert!(off.accept(page(&entries, 0, 3), &prev(&hashes, 0), &[9; 32], &codecs).is_ok());
        // The genuine answer passes.
        r.accept(page(&entries, 3, 6), &prev(&hashes, 3), &hashes[5].0, &codecs).unwrap();
    }

    #[test]
    fn an_entry_whose_envelope_names_another_index_is_a_break_even_with_recomputed_hashes() {
        // A server that serves the stored entry 3 at index 1 and recomputes every hash around it:
        // the hashes chain, the envelope gives it away.
        let (mut entries, _) = log(&[3, 1, 4, 2]);
        let moved = entries[3].data.clone();
        entries[1].data = moved;
        let mut prev_hash = ChainHash::ZERO;
        for e in &entries {
            prev_hash = shale_storage::chain_hash(Offset::new(e.index), &prev_hash, &e.data);
        }
        let codecs = default_codecs();
        let mut r = ChainReader::new("t", 0, 0, true);
        match r.accept(page(&entries, 0, 3), &ChainHash::ZERO.0, &[], &codecs) {
            Err(ClientError::ChainMismatch {
                index: 1,
                reason: ChainBreak::EnvelopeIndex { expected: 1, found: 3 },
                ..
            }) => {}
            other => panic!("expected an envelope index break, got {other:?}"),
        }
        // Unverified reads do not look.
        let mut off = ChainReader::new("t", 0, 0, false);
        assert!(off.accept(page(&entries, 0, 3), &ChainHash::ZERO.0, &[], &codecs).is_ok());
    }

    #[test]
    fn every_break_is_named_with_its_index_and_offset() {
        let (entries, hashes) = log(&[3, 1, 4, 2]);
        let codecs = default_codecs();
        let reader = || {
            let mut r = ChainReader::new("t", 4, 0, true);
            r.accept(page(&entries, 0, 3), &prev(&hashes, 0), &[], &codecs).unwrap();
            r
        };
        let broken = |r: Result<DecodedEntries, ClientError>| match r {
            Err(ClientError::ChainMismatch { topic, partition: 4, index, offset, reason }) if topic == "t" => {
                (index, offset, reason)
            }
            other => panic!("expected a chain mismatch, got {other:?}"),
        };
        // Another prev hash than the one computed.
        let (index, offset, reason) = broken(reader().accept(page(&entries, 3, 5), &prev(&hashes, 2), &[], &codecs));
        assert_eq!((index, offset), (3, 3));
        assert_eq!(reason, ChainBreak::PrevHash { expected: hashes[2], found: hashes[1] });
        // Starting elsewhere than asked.
        let (index, _, reason) = broken(reader().accept(page(&entries, 4, 5), &prev(&hashes, 4), &[], &codecs));
        assert_eq!((index, reason), (4, ChainBreak::Index { expected: 3, found: 4 }));
        // A gap inside the answer (an entry dropped) and a reordered answer.
        let dropped = vec![entries[3].clone(), entries[5].clone()];
        let (_, _, reason) = broken(reader().accept(dropped, &prev(&hashes, 3), &[], &codecs));
        assert_eq!(reason, ChainBreak::Index { expected: 4, found: 5 });
        let swapped = vec![entries[4].clone(), entries[3].clone()];
        assert!(matches!(
            broken(reader().accept(swapped, &prev(&hashes, 3), &[], &codecs)).2,
            ChainBreak::Index { .. }
        ));
        // A genuine batch marked hidden: the next batch does not start where the chain is.
        let mut hidden = page(&entries, 3, 5);
        hidden[0].hidden = true;
        let (index, offset, reason) = broken(reader().accept(hidden, &prev(&hashes, 3), &[], &codecs));
        assert_eq!((index, offset, reason), (4, 3, ChainBreak::Offset { expected: 3, found: 4 }));
        // On a fresh reader: a first batch that starts past the offset asked for.
        let mut fresh = ChainReader::new("t", 4, 3, true);
        let (_, _, reason) = broken(fresh.accept(page(&entries, 4, 5), &prev(&hashes, 4), &[], &codecs));
        assert_eq!(reason, ChainBreak::Offset { expected: 3, found: 4 });
        // Entry 0 chains from nothing, whoever says otherwise.
        let mut zero = ChainReader::new("t", 4, 0, true);
        let (index, _, reason) = broken(zero.accept(page(&entries, 0, 2), &hashes[5].0, &[], &codecs));
        assert_eq!((index, reason), (0, ChainBreak::PrevHash { expected: ChainHash::ZERO, found: hashes[5] }));
        // A failed answer leaves the reader where it was.
        let mut r = reader();
        let _ = r.accept(page(&entries, 3, 5), &prev(&hashes, 2), &[], &codecs);
        assert_eq!((r.offset(), r.from_index()), (3, Some(3)));
        assert!(r.accept(page(&entries, 3, 5), &prev(&hashes, 3), &[], &codecs).is_ok());
    }

    #[test]
    fn a_reanchored_reader_trusts_the_next_answer_but_still_checks_the_offsets() {
        let (entries, hashes) = log(&[3, 1, 4, 2]);
        let codecs = default_codecs();
        let mut r = ChainReader::new("t", 0, 0, true);
        r.accept(page(&entries, 0, 2), &prev(&hashes, 0), &[], &codecs).unwrap();
        r.reanchor();
        assert_eq!((r.from_index(), r.offset(), r.stats().reanchors), (None, 3, 1));
        // A replica that starts the answer at the batch of offset 4 skipped offset 3.
        assert!(matches!(
            r.clone().accept(page(&entries, 4, 6), &prev(&hashes, 4), &[], &codecs),
            Err(ClientError::ChainMismatch { reason: ChainBreak::Offset { expected: 3, found: 4 }, .. })
        ));
        // From the batch holding offset 3, with whatever hash it says came before.
        let got = r.accept(page(&entries, 3, 6), &[7; 32], &[], &codecs).unwrap();
        assert_eq!(got.records.first().map(|r| r.offset), Some(3));
    }

    #[test]
    fn the_first_answer_is_trusted_unless_anchored() {
        let (entries, hashes) = log(&[3, 1, 4, 2]);
        let codecs = default_codecs();
        let forged = [9u8; 32];
        // Trust on first use: a forged anchor is accepted (and the chain continues from it).
        let mut tofu = ChainReader::new("t", 0, 4, true);
        assert!(tofu.accept(page(&entries, 4, 5), &forged, &[], &codecs).is_ok());
        // Anchored at a point the caller holds (a producer's receipt for entry 3).
        let mut anchored = ChainReader::anchored("t", 0, 4, ChainPoint::after(3, hashes[3]));
        assert_eq!(anchored.from_index(), Some(4));
        assert!(matches!(
            anchored.accept(page(&entries, 4, 5), &forged, &[], &codecs),
            Err(ClientError::ChainMismatch { reason: ChainBreak::PrevHash { .. }, .. })
        ));
        assert!(anchored.stats().point.is_none(), "an unconfirmed anchor is not reported as read");
        let ok = anchored.accept(page(&entries, 4, 6), &prev(&hashes, 4), &[], &codecs).unwrap();
        assert_eq!(ok.records.first().map(|r| r.offset), Some(4));
        // From the start of the log.
        let mut genesis = ChainReader::anchored("t", 0, 0, ChainPoint::GENESIS);
        assert_eq!(genesis.accept(page(&entries, 0, 6), &prev(&hashes, 0), &[], &codecs).unwrap().records.len(), 10);
    }

    #[test]
    fn without_verification_entries_are_only_decoded() {
        let (mut entries, hashes) = log(&[3, 1]);
        let last = entries[1].data.len() - 1;
        let mut flipped = entries[1].data.to_vec();
        flipped[last] ^= 1;
        entries[1].data = Bytes::from(flipped);
        let mut r = ChainReader::new("t", 0, 0, false);
        let got = r.accept(page(&entries, 0, 2), &[], &[], &default_codecs()).unwrap();
        assert_eq!(got.records.len(), 3);
        assert!(got.records.iter().all(|r| r.chain_hash.is_none()));
        assert_eq!(got.records[2].value, Bytes::from("r3"), "the flipped byte is handed out unnoticed");
        let next = r.accept(page(&entries, 2, 4), &prev(&hashes, 0), &[], &default_codecs()).unwrap();
        assert_eq!(next.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn short_entries_and_undecodable_visible_batches_are_errors_hidden_ones_are_skipped() {
        let codecs = default_codecs();
        let short = vec![proto::LogEntry { index: 1, data: Bytes::from_static(b"x"), hidden: false }];
        let mut r = ChainReader::new("t", 0, 0, true);
        assert!(matches!(r.accept(short, &[0; 32], &[], &codecs), Err(ClientError::MalformedEntry { index: 1, .. })));
        let junk = entry(1, envelope::KIND_NORMAL, b"not a batch");
        let visible = vec![proto::LogEntry { index: 1, data: junk.clone(), hidden: false }];
        assert!(matches!(r.accept(visible, &[0; 32], &[], &codecs), Err(ClientError::MalformedEntry { index: 1, .. })));
        let hidden = vec![proto::LogEntry { index: 1, data: junk, hidden: true }];
        assert_eq!(r.accept(hidden, &[0; 32], &[], &codecs).unwrap().entries, 1);
        assert!(matches!(
            ChainReader::new("t", 0, 0, true).accept(page(&log(&[1]).0, 0, 1), &[0; 3], &[], &codecs),
            Err(ClientError::Protocol(_))
        ));
    }
}
