//! Every byte layout shale-raft writes: log entry records, membership configs, meta records and
//! snapshot checkpoint data. Each layout is a set of named constants, each field's offset derived
//! from the previous one ([`shale_storage::offsets!`]), with a version byte. The bytes are read and
//! written with storage's [`ByteReader`]/[`ByteWriter`]; decoders check every length against the
//! input and return [`DecodeError`] instead of panicking. Tabled in docs/format.md ("Raft").
//!
//! All integers are little-endian. Encodings are deterministic: an entry always encodes to the same
//! bytes, so replicas holding the same entries have the same storage chain hashes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use shale_storage::byteio::{ByteError, ByteErrorKind, ByteReader, ByteWriter};

use crate::types::{AppPayload, Entry, EntryEncoding, EntryPayload, LogId, Membership, Node, NodeId, Vote, log_id};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before a field it must hold.
    #[error("{what}: truncated, {needed} bytes needed, {available} available")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A version byte names a layout this build does not read.
    #[error("{what}: format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A field holds a value no writer produces.
    #[error("{what}: invalid {field} {value}")]
    InvalidField {
        /// What was being decoded.
        what: &'static str,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A count or length is over its limit.
    #[error("{what}: {field} is {value}, over the limit of {limit}")]
    OverLimit {
        /// What was being decoded.
        what: &'static str,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Bytes are left over after a complete value.
    #[error("{what}: {extra} trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// A decoded membership config is not a valid config.
    #[error("invalid membership config: {0}")]
    InvalidMembership(String),
}

impl From<ByteError> for DecodeError {
    /// The shared reader's errors, as this crate's decoders report them.
    fn from(e: ByteError) -> Self {
        let what = e.what;
        match e.kind {
            ByteErrorKind::Truncated { needed, available } => DecodeError::Truncated { what, needed, available },
            ByteErrorKind::OverLimit { field, value, limit } => DecodeError::OverLimit { what, field, value, limit },
            ByteErrorKind::InvalidField { field, value } => DecodeError::InvalidField { what, field, value },
            ByteErrorKind::TrailingBytes { extra } => DecodeError::TrailingBytes { what, extra },
            // No Raft layout has a string or a CRC field; mapped for completeness.
            ByteErrorKind::NotUtf8 { field } => DecodeError::InvalidField { what, field, value: 0 },
            ByteErrorKind::CrcMismatch { stored, .. } => {
                DecodeError::InvalidField { what, field: "crc32", value: u64::from(stored) }
            }
        }
    }
}

/// The log entry record: the storage payload of record `i` in a group's log stream is the Raft
/// entry with log index `i`.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version (1) |
/// | 1 | 1 | kind: 0 blank, 1 normal, 2 membership |
/// | 2 | 8 | term of the proposing leader |
/// | 10 | 8 | node id of the proposing leader |
/// | 18 | 8 | log index (equals the record's storage offset) |
/// | 26 | n | body: normal = the application payload as is; membership = [`membership`] encoding; blank = empty |
pub mod entry {
    /// Layout version written and read.
    pub const VERSION: u8 = 1;
    shale_storage::offsets! {
        /// Offset of the version byte.
        VERSION_AT: u8,
        /// Offset of the kind byte.
        KIND_AT: u8,
        /// Offset of the term.
        TERM_AT: u64,
        /// Offset of the leader node id.
        NODE_AT: u64,
        /// Offset of the log index.
        INDEX_AT: u64,
        /// Length of the fixed header; the body starts here.
        HEADER_LEN,
    }
    // A payload of up to `RAFT_PAYLOAD_BYTES` plus this header fits one storage record (see the
    // table in shale_storage::limits).
    const _: () = assert!(HEADER_LEN <= shale_storage::limits::RAFT_ENTRY_RESERVE_BYTES);
    /// Kind of a blank entry.
    pub const KIND_BLANK: u8 = 0;
    /// Kind of a normal (application) entry.
    pub const KIND_NORMAL: u8 = 1;
    /// Kind of a membership entry.
    pub const KIND_MEMBERSHIP: u8 = 2;

    // Clients find a partition entry's record batch with storage's copy of this envelope (they do
    // not depend on shale-raft): the two must agree.
    const _: () = {
        use shale_storage::record_batch::envelope;
        assert!(KIND_AT == envelope::KIND_AT);
        assert!(KIND_NORMAL == envelope::KIND_NORMAL);
        assert!(INDEX_AT == envelope::INDEX_AT);
        assert!(HEADER_LEN == envelope::HEADER_LEN);
    };
}

/// A membership config: the voter sets (one, or two while a joint change is in progress) and every
/// node's address.
///
/// | size | field |
/// |---|---|
/// | 4 | config count C (<= [`MAX_CONFIGS`](membership::MAX_CONFIGS); 0 only with N = 0: the empty config) |
/// | per config: 4 + 8k | voter count k, then k node ids ascending |
/// | 4 | node count N (<= [`MAX_NODES`](membership::MAX_NODES)) |
/// | per node: 8 + 4 + a | node id (ascending), address length a, address UTF-8 |
pub mod membership {
    /// Most voter sets in one config (a joint config has two).
    pub const MAX_CONFIGS: u64 = 8;
    /// Most nodes (voters and learners) in one config: the most members a cluster may have.
    pub const MAX_NODES: u64 = shale_storage::limits::MAX_MEMBERS as u64;
    /// Longest node address: the longest address a member may advertise.
    pub const MAX_ADDR_LEN: u64 = shale_storage::limits::MAX_ADDR_BYTES as u64;
}

/// One meta stream record: the full durable state of a group's log; the latest record wins.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version (1) |
/// | 1 | 1 | flags: bit 0 vote present, bit 1 committed present, bit 2 last purged present |
/// | 2 | 8 | vote term |
/// | 10 | 8 | vote node id |
/// | 18 | 1 | vote committed (0 or 1) |
/// | 19 | 24 | committed log id: term, node id, index |
/// | 43 | 24 | last purged log id: term, node id, index |
/// | 67 | | end |
pub mod meta {
    /// Layout version written and read.
    pub const VERSION: u8 = 1;
    shale_storage::offsets! {
        /// Offset of the version byte.
        VERSION_AT: u8,
        /// Offset of the flags byte.
        FLAGS_AT: u8,
        /// Offset of the vote: term, node id, committed (0 or 1).
        VOTE_AT: [u8; 8 + 8 + 1],
        /// Offset of the committed log id: term, node id, index.
        COMMITTED_AT: [u8; 24],
        /// Offset of the last purged log id: term, node id, index.
        PURGED_AT: [u8; 24],
        /// Total record length.
        LEN,
    }
    /// Flag: a vote is stored.
    pub const HAS_VOTE: u8 = 1;
    /// Flag: a committed log id is stored.
    pub const HAS_COMMITTED: u8 = 2;
    /// Flag: a last purged log id is stored.
    pub const HAS_PURGED: u8 = 4;
}

/// The snapshot state stored as a log-stream checkpoint's `data` (checkpoint at offset
/// `last_log_id.index + 1`) and sent, prefixed by the checkpoint chain hash, to lagging followers.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `SRSN` (0x4e53_5253) |
/// | 4 | 1 | version (1) |
/// | 5 | 1 | flags: bit 0 last log id present, bit 1 membership log id present |
/// | 6 | 24 | last included log id: term, node id, index |
/// | 30 | 24 | last membership log id: term, node id, index |
/// | 54 | 4 | membership encoding length M |
/// | 58 | M | membership config ([`membership`] encoding) |
/// | 58+M | 4 | application snapshot length A |
/// | 62+M | A | application snapshot bytes (opaque) |
pub mod snapshot {
    /// `SRSN` read as a little-endian u32.
    pub const MAGIC: u32 = 0x4e53_5253;
    /// Layout version written and read.
    pub const VERSION: u8 = 1;
    /// Flag: the last included log id is present.
    pub const HAS_LAST: u8 = 1;
    /// Flag: the membership log id is present.
    pub const HAS_MEMBERSHIP_LOG_ID: u8 = 2;
    /// Largest application snapshot carried (the storage checkpoint limit applies too).
    pub const MAX_APP_LEN: u64 = 1 << 30;
    /// Largest membership encoding accepted.
    pub const MAX_MEMBERSHIP_LEN: u64 = 16 << 20;
}

fn put_log_id(w: &mut ByteWriter, id: Option<&LogId>) {
    match id {
        Some(id) => w.u64(id.leader_id.term).u64(id.leader_id.node_id).u64(id.index),
        None => w.zeros(24),
    };
}

fn read_log_id(r: &mut ByteReader<'_>) -> Result<LogId, DecodeError> {
    let term = r.u64()?;
    let node = r.u64()?;
    let index = r.u64()?;
    Ok(log_id(term, node, index))
}

fn write_membership(w: &mut ByteWriter, m: &Membership) {
    let configs = m.get_joint_config();
    debug_assert!(configs.len() as u64 <= membership::MAX_CONFIGS);
    w.u32(configs.len() as u32);
    for set in configs {
        w.u32(set.len() as u32);
        for id in set {
            w.u64(*id);
        }
    }
    let nodes: Vec<(&NodeId, &Node)> = m.nodes().collect();
    w.u32(nodes.len() as u32);
    for (id, node) in nodes {
        w.u64(*id).bytes32(node.addr.as_bytes());
    }
}

/// Encodes a membership config, appending it to `out`.
pub fn encode_membership(m: &Membership, out: &mut BytesMut) {
    let mut w = ByteWriter::new();
    write_membership(&mut w, m);
    out.extend_from_slice(w.written());
}

fn read_membership(r: &mut ByteReader<'_>) -> Result<Membership, DecodeError> {
    let n_configs = r.u32_at_most("config count", membership::MAX_CONFIGS)?;
    let mut configs = Vec::with_capacity(n_configs as usize);
    for _ in 0..n_configs {
        let k = r.u32_at_most("voter count", membership::MAX_NODES)?;
        let mut set = BTreeSet::new();
        for _ in 0..k {
            set.insert(r.u64()?);
        }
        configs.push(set);
    }
    let n_nodes = r.u32_at_most("node count", membership::MAX_NODES)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n_nodes {
        let id = r.u64()?;
        let addr = std::str::from_utf8(r.bytes32("address length", membership::MAX_ADDR_LEN)?)
            .map_err(|_| DecodeError::InvalidField { what: r.what(), field: "address utf-8 of node", value: id })?;
        nodes.insert(id, Node::new(addr));
    }
    if configs.is_empty() && nodes.is_empty() {
        // The empty config of a group that was never initialised.
        return Ok(Membership::default());
    }
    Membership::new(configs, nodes).map_err(|e| DecodeError::InvalidMembership(e.to_string()))
}

/// Decodes a membership config written by [`encode_membership`].
pub fn decode_membership(bytes: &[u8]) -> Result<Membership, DecodeError> {
    let mut r = ByteReader::new("membership", bytes);
    let m = read_membership(&mut r)?;
    r.expect_end()?;
    Ok(m)
}

/// Encodes one log entry as its storage record payload.
///
/// A normal entry whose payload remembers its encoding for this very log id (set by
/// [`decode_entry`] and by the log append, see [`remember_encoding`]) is answered with those
/// bytes, without a copy: the same bytes a fresh encoding would give.
pub fn encode_entry(e: &Entry) -> Bytes {
    if let Some(encoded) = remembered_encoding(e) {
        debug_assert_eq!(encoded, encode_entry_afresh(e), "a remembered encoding is the entry's encoding");
        return encoded;
    }
    encode_entry_afresh(e)
}

/// The encoding `e`'s payload remembers, if it is exactly `e`'s: its header names `e`'s log id
/// and the payload is the rest of those same bytes (not just equal ones).
fn remembered_encoding(e: &Entry) -> Option<Bytes> {
    let EntryPayload::Normal(p) = &e.payload else { return None };
    let encoded = p.1.0.as_ref()?;
    let body = encoded.get(entry::HEADER_LEN..)?;
    let same_body = body.len() == p.0.len() && std::ptr::eq(body.as_ptr(), p.0.as_ptr());
    let same_header = decode_entry_header(encoded).is_ok_and(|h| h.kind == entry::KIND_NORMAL && h.log_id == e.log_id);
    (same_body && same_header).then(|| encoded.clone())
}

/// Lets a normal entry remember `encoded`, which must be [`encode_entry`]'s answer for it: its
/// payload becomes the body of those bytes (the same contents), so later encodings of it (each
/// follower's AppendEntries) are free. Other entries are left as they are.
pub fn remember_encoding(e: &mut Entry, encoded: &Bytes) {
    if let EntryPayload::Normal(p) = &mut e.payload {
        debug_assert_eq!(encoded.get(entry::HEADER_LEN..), Some(&p.0[..]), "the encoding holds the payload");
        if encoded.len() == entry::HEADER_LEN + p.0.len() {
            p.0 = encoded.slice(entry::HEADER_LEN..);
            p.1 = EntryEncoding(Some(encoded.clone()));
        }
    }
}

fn encode_entry_afresh(e: &Entry) -> Bytes {
    let body_len = match &e.payload {
        EntryPayload::Normal(p) => p.0.len(),
        _ => 64,
    };
    let mut w = ByteWriter::with_capacity(entry::HEADER_LEN + body_len);
    w.u8(entry::VERSION).u8(match &e.payload {
        EntryPayload::Blank => entry::KIND_BLANK,
        EntryPayload::Normal(_) => entry::KIND_NORMAL,
        EntryPayload::Membership(_) => entry::KIND_MEMBERSHIP,
    });
    w.u64(e.log_id.leader_id.term).u64(e.log_id.leader_id.node_id).u64(e.log_id.index);
    debug_assert_eq!(w.len(), entry::HEADER_LEN);
    match &e.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(p) => {
            w.raw(&p.0);
        }
        EntryPayload::Membership(m) => write_membership(&mut w, m),
    }
    Bytes::from(w.finish())
}

/// The header of an encoded entry, without decoding its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// The entry's log id.
    pub log_id: LogId,
    /// [`entry::KIND_BLANK`], [`entry::KIND_NORMAL`] or [`entry::KIND_MEMBERSHIP`].
    pub kind: u8,
}

/// Decodes just the fixed header of an encoded entry.
pub fn decode_entry_header(bytes: &[u8]) -> Result<EntryHeader, DecodeError> {
    let mut r = ByteReader::new("raft entry", bytes);
    let version = r.u8()?;
    if version != entry::VERSION {
        return Err(DecodeError::UnsupportedVersion { what: "raft entry", found: version, supported: entry::VERSION });
    }
    let kind = r.u8()?;
    if kind > entry::KIND_MEMBERSHIP {
        return Err(DecodeError::InvalidField { what: "raft entry", field: "kind", value: u64::from(kind) });
    }
    let term = r.u64()?;
    let node = r.u64()?;
    let index = r.u64()?;
    Ok(EntryHeader { log_id: log_id(term, node, index), kind })
}

/// Decodes one log entry. `bytes` must be exactly one encoded entry.
pub fn decode_entry(bytes: &Bytes) -> Result<Entry, DecodeError> {
    let header = decode_entry_header(bytes)?;
    let body = bytes.slice(entry::HEADER_LEN..);
    let payload = match header.kind {
        entry::KIND_BLANK => {
            if !body.is_empty() {
                return Err(DecodeError::TrailingBytes { what: "blank raft entry", extra: body.len() });
            }
            EntryPayload::Blank
        }
        entry::KIND_NORMAL => EntryPayload::Normal(AppPayload(body, EntryEncoding(Some(bytes.clone())))),
        _ => EntryPayload::Membership(decode_membership(&body)?),
    };
    Ok(Entry { log_id: header.log_id, payload })
}

/// The durable per-group state kept in the meta stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    /// The last saved vote.
    pub vote: Option<Vote>,
    /// The last saved committed log id.
    pub committed: Option<LogId>,
    /// The last purged log id (openraft's view; the storage may still hold records below it).
    pub last_purged: Option<LogId>,
}

/// Encodes a meta record.
pub fn encode_meta(m: &MetaState) -> Bytes {
    let mut w = ByteWriter::with_capacity(meta::LEN);
    let mut flags = 0u8;
    if m.vote.is_some() {
        flags |= meta::HAS_VOTE;
    }
    if m.committed.is_some() {
        flags |= meta::HAS_COMMITTED;
    }
    if m.last_purged.is_some() {
        flags |= meta::HAS_PURGED;
    }
    w.u8(meta::VERSION).u8(flags);
    match &m.vote {
        Some(v) => w.u64(v.leader_id.term).u64(v.leader_id.node_id).u8(u8::from(v.committed)),
        None => w.zeros(17),
    };
    put_log_id(&mut w, m.committed.as_ref());
    put_log_id(&mut w, m.last_purged.as_ref());
    debug_assert_eq!(w.len(), meta::LEN);
    Bytes::from(w.finish())
}

/// Decodes a meta record.
pub fn decode_meta(bytes: &[u8]) -> Result<MetaState, DecodeError> {
    let mut r = ByteReader::new("raft meta record", bytes);
    let version = r.u8()?;
    if version != meta::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: "raft meta record",
            found: version,
            supported: meta::VERSION,
        });
    }
    let flags = r.u8()?;
    if flags & !(meta::HAS_VOTE | meta::HAS_COMMITTED | meta::HAS_PURGED) != 0 {
        return Err(DecodeError::InvalidField { what: "raft meta record", field: "flags", value: u64::from(flags) });
    }
    let term = r.u64()?;
    let node = r.u64()?;
    let committed_flag = r.u8()?;
    if committed_flag > 1 {
        return Err(DecodeError::InvalidField {
            what: "raft meta record",
            field: "vote committed",
            value: u64::from(committed_flag),
        });
    }
    let vote = (flags & meta::HAS_VOTE != 0)
        .then(|| if committed_flag == 1 { Vote::new_committed(term, node) } else { Vote::new(term, node) });
    let committed = read_log_id(&mut r)?;
    let purged = read_log_id(&mut r)?;
    r.expect_end()?;
    Ok(MetaState {
        vote,
        committed: (flags & meta::HAS_COMMITTED != 0).then_some(committed),
        last_purged: (flags & meta::HAS_PURGED != 0).then_some(purged),
    })
}

/// What a snapshot checkpoint's data holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotState {
    /// The last log id the snapshot includes.
    pub last_log_id: Option<LogId>,
    /// The log id of the membership config in force at `last_log_id`.
    pub membership_log_id: Option<LogId>,
    /// That membership config.
    pub membership: Membership,
    /// The application's opaque snapshot.
    pub app: Bytes,
}

/// Encodes snapshot checkpoint data.
pub fn encode_snapshot_state(s: &SnapshotState) -> Bytes {
    let mut m = ByteWriter::new();
    write_membership(&mut m, &s.membership);
    let mut w = ByteWriter::with_capacity(62 + m.len() + s.app.len());
    let mut flags = 0;
    if s.last_log_id.is_some() {
        flags |= snapshot::HAS_LAST;
    }
    if s.membership_log_id.is_some() {
        flags |= snapshot::HAS_MEMBERSHIP_LOG_ID;
    }
    w.u32(snapshot::MAGIC).u8(snapshot::VERSION).u8(flags);
    put_log_id(&mut w, s.last_log_id.as_ref());
    put_log_id(&mut w, s.membership_log_id.as_ref());
    w.bytes32(m.written()).bytes32(&s.app);
    Bytes::from(w.finish())
}

/// Decodes snapshot checkpoint data.
pub fn decode_snapshot_state(bytes: &Bytes) -> Result<SnapshotState, DecodeError> {
    let what = "raft snapshot data";
    let mut r = ByteReader::new(what, bytes);
    let magic = r.u32()?;
    if magic != snapshot::MAGIC {
        return Err(DecodeError::InvalidField { what, field: "magic", value: u64::from(magic) });
    }
    let version = r.u8()?;
    if version != snapshot::VERSION {
        return Err(DecodeError::UnsupportedVersion { what, found: version, supported: snapshot::VERSION });
    }
    let flags = r.u8()?;
    if flags & !(snapshot::HAS_LAST | snapshot::HAS_MEMBERSHIP_LOG_ID) != 0 {
        return Err(DecodeError::InvalidField { what, field: "flags", value: u64::from(flags) });
    }
    let last = read_log_id(&mut r)?;
    let mem_id = read_log_id(&mut r)?;
    let membership = decode_membership(r.bytes32("membership length", snapshot::MAX_MEMBERSHIP_LEN)?)?;
    // A view into `bytes`, not a copy: the application snapshot may be large.
    let app = bytes.slice_ref(r.bytes32("application snapshot length", snapshot::MAX_APP_LEN)?);
    r.expect_end()?;
    Ok(SnapshotState {
        last_log_id: (flags & snapshot::HAS_LAST != 0).then_some(last),
        membership_log_id: (flags & snapshot::HAS_MEMBERSHIP_LOG_ID != 0).then_some(mem_id),
        membership,
        app,
    })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use proptest::prelude::*;

    use super::*;

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        let nodes: BTreeMap<NodeId, Node> =
            voters.iter().chain(learners).map(|&id| (id, Node::new(format!("10.0.0.{id}:7000")))).collect();
        Membership::new(vec![voters.iter().copied().collect()], nodes).unwrap()
    }

    #[test]
    fn entry_layout_is_fixed() {
        let e = Entry {
            log_id: log_id(7, 3, 42),
            payload: EntryPayload::Normal(AppPayload::new(Bytes::from_static(b"hi"))),
        };
        let b = encode_entry(&e);
        let mut want = vec![entry::VERSION, entry::KIND_NORMAL];
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&42u64.to_le_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(b.as_ref(), want.as_slice());
        assert_eq!(decode_entry(&b).unwrap(), e);
    }

    fn normal(term: u64, index: u64, data: &'static [u8]) -> Entry {
        Entry {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(AppPayload::new(Bytes::from_static(data))),
        }
    }

    #[test]
    fn a_received_or_appended_entry_is_encoded_again_without_a_copy() {
        // Received: decoding remembers the bytes, and encoding answers those very bytes.
        let wire = encode_entry(&normal(3, 9, b"records"));
        let received = decode_entry(&wire).unwrap();
        let again = encode_entry(&received);
        assert_eq!((again.as_ptr(), again.len()), (wire.as_ptr(), wire.len()));

        // Appended by a leader: a fresh encoding, remembered for the followers' requests.
        let mut appended = normal(3, 10, b"more records");
        let first = encode_entry(&appended);
        remember_encoding(&mut appended, &first);
        let EntryPayload::Normal(p) = &appended.payload else { unreachable!() };
        assert_eq!(&p.0[..], b"more records", "the payload is unchanged");
        assert_eq!(encode_entry(&appended).as_ptr(), first.as_ptr());
        assert_eq!(decode_entry(&first).unwrap(), appended);
    }

    #[test]
    fn a_remembered_encoding_is_used_only_for_its_own_log_id_and_payload() {
        let wire = encode_entry(&normal(3, 9, b"records"));
        let received = decode_entry(&wire).unwrap();

        // Another log id (same payload bytes): encoded afresh, with its own header.
        let moved = Entry { log_id: log_id(4, 2, 11), payload: received.payload.clone() };
        let b = encode_entry(&moved);
        assert_ne!(b.as_ptr(), wire.as_ptr());
        assert_eq!(decode_entry_header(&b).unwrap().log_id, log_id(4, 2, 11));
        assert_eq!(decode_entry(&b).unwrap(), moved);

        // The payload replaced: encoded afresh with the new payload.
        let mut replaced = received.clone();
        let EntryPayload::Normal(p) = &mut replaced.payload else { unreachable!() };
        p.0 = Bytes::from_static(b"other");
        assert_eq!(encode_entry(&replaced), encode_entry(&normal(3, 9, b"other")));

        // Equal payload bytes in another buffer: not the remembered body, so encoded afresh.
        let mut copied = received;
        let EntryPayload::Normal(p) = &mut copied.payload else { unreachable!() };
        p.0 = Bytes::copy_from_slice(&p.0);
        let c = encode_entry(&copied);
        assert_eq!(c, wire);
        assert_ne!(c.as_ptr(), wire.as_ptr());
    }

    #[test]
    fn meta_and_snapshot_round_trip() {
        let m = MetaState {
            vote: Some(Vote::new_committed(5, 2)),
            committed: Some(log_id(5, 2, 99)),
            last_purged: Some(log_id(4, 1, 50)),
        };
        let b = encode_meta(&m);
        assert_eq!(b.len(), meta::LEN);
        assert_eq!(decode_meta(&b).unwrap(), m);
        assert_eq!(decode_meta(&encode_meta(&MetaState::default())).unwrap(), MetaState::default());

        let s = SnapshotState {
            last_log_id: Some(log_id(5, 2, 99)),
            membership_log_id: Some(log_id(1, 1, 0)),
            membership: membership(&[1, 2, 3], &[4]),
            app: Bytes::from_static(b"app state"),
        };
        assert_eq!(decode_snapshot_state(&encode_snapshot_state(&s)).unwrap(), s);
        let empty = SnapshotState {
            last_log_id: None,
            membership_log_id: None,
            membership: Membership::default(),
            app: Bytes::new(),
        };
        assert_eq!(decode_snapshot_state(&encode_snapshot_state(&empty)).unwrap(), empty);
    }

    #[test]
    fn hostile_lengths_are_typed_errors() {
        let mut b = BytesMut::new();
        b.put_u32_le(u32::MAX);
        assert!(matches!(decode_membership(&b), Err(DecodeError::OverLimit { .. })));
        let s = SnapshotState {
            last_log_id: None,
            membership_log_id: None,
            membership: membership(&[1], &[]),
            app: Bytes::from_static(b"x"),
        };
        let mut bad = encode_snapshot_state(&s).to_vec();
        let app_len_at = bad.len() - 1 - 4;
        bad[app_len_at..app_len_at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decode_snapshot_state(&Bytes::from(bad)), Err(DecodeError::Truncated { .. })));
        let mut v = encode_entry(&Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank }).to_vec();
        v[0] = 9;
        assert!(matches!(decode_entry(&Bytes::from(v)), Err(DecodeError::UnsupportedVersion { found: 9, .. })));
    }

    /// A membership config: one voter set or a joint pair, learners, or the empty config.
    fn any_membership() -> impl Strategy<Value = Membership> {
        let set = || proptest::collection::btree_set(0u64..20, 1..5);
        prop_oneof![
            Just(Membership::default()),
            (set(), proptest::collection::btree_set(20u64..30, 0..3)).prop_map(|(v, l)| {
                let v: Vec<u64> = v.into_iter().collect();
                let l: Vec<u64> = l.into_iter().collect();
                membership(&v, &l)
            }),
            (set(), set()).prop_map(|(a, b)| {
                let nodes: BTreeMap<NodeId, Node> =
                    a.union(&b).map(|&id| (id, Node::new(format!("h{id}:7000")))).collect();
                Membership::new(vec![a, b], nodes).unwrap()
            }),
        ]
    }

    fn any_log_id() -> impl Strategy<Value = LogId> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(t, n, i)| log_id(t, n, i))
    }

    fn any_entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            Just(EntryPayload::Blank),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|v| EntryPayload::Normal(AppPayload::new(v.into()))),
            any_membership()
                .prop_filter("an entry holds a real config", |m| m.voter_ids().next().is_some())
                .prop_map(EntryPayload::Membership),
        ];
        (any_log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
    }

    fn any_meta() -> impl Strategy<Value = MetaState> {
        let vote = (any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(t, n, c)| if c { Vote::new_committed(t, n) } else { Vote::new(t, n) });
        (proptest::option::of(vote), proptest::option::of(any_log_id()), proptest::option::of(any_log_id()))
            .prop_map(|(vote, committed, last_purged)| MetaState { vote, committed, last_purged })
    }

    fn any_snapshot() -> impl Strategy<Value = SnapshotState> {
        let app = proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
        (proptest::option::of(any_log_id()), proptest::option::of(any_log_id()), any_membership(), app).prop_map(
            |(last_log_id, membership_log_id, membership, app)| SnapshotState {
                last_log_id,
                membership_log_id,
                membership,
                app,
            },
        )
    }

    fn membership_bytes(m: &Membership) -> Bytes {
        let mut out = BytesMut::new();
        encode_membership(m, &mut out);
        out.freeze()
    }

    /// Every cut of `bytes` short of its end is a typed truncation (for layouts whose last field
    /// is fixed or length-prefixed).
    fn every_cut_is_truncated<T: std::fmt::Debug>(
        bytes: &Bytes,
        decode: impl Fn(&Bytes) -> Result<T, DecodeError>,
    ) -> Result<(), TestCaseError> {
        for cut in 0..bytes.len() {
            let e = decode(&bytes.slice(..cut));
            prop_assert!(matches!(e, Err(DecodeError::Truncated { .. })), "cut {}: {:?}", cut, e);
        }
        Ok(())
    }

    #[test]
    fn raft_layouts_match_the_documented_tables() {
        use entry as e;
        assert_eq!(
            [e::VERSION_AT, e::KIND_AT, e::TERM_AT, e::NODE_AT, e::INDEX_AT, e::HEADER_LEN],
            [0, 1, 2, 10, 18, 26]
        );
        use meta as m;
        assert_eq!(
            [m::VERSION_AT, m::FLAGS_AT, m::VOTE_AT, m::COMMITTED_AT, m::PURGED_AT, m::LEN],
            [0, 1, 2, 19, 43, 67]
        );
    }

    proptest! {
        #[test]
        fn entries_round_trip(e in any_entry()) {
            let b = encode_entry(&e);
            prop_assert_eq!(encode_entry(&e), b.clone(), "encoding is deterministic");
            prop_assert_eq!(decode_entry(&b).unwrap(), e);
        }

        #[test]
        fn entry_headers_match_and_every_cut_header_is_truncated(e in any_entry()) {
            let b = encode_entry(&e);
            let kind = decode_entry_header(&b).unwrap().kind;
            prop_assert_eq!(decode_entry_header(&b).unwrap(), EntryHeader { log_id: e.log_id, kind });
            for cut in 0..entry::HEADER_LEN {
                let h = decode_entry_header(&b[..cut]);
                prop_assert!(matches!(h, Err(DecodeError::Truncated { .. })), "cut {}: {:?}", cut, h);
            }
        }

        #[test]
        fn memberships_round_trip_and_every_cut_is_truncated(m in any_membership()) {
            let b = membership_bytes(&m);
            prop_assert_eq!(decode_membership(&b).unwrap(), m);
            every_cut_is_truncated(&b, |b| decode_membership(b))?;
        }

        #[test]
        fn meta_records_round_trip_and_every_cut_is_truncated(m in any_meta()) {
            let b = encode_meta(&m);
            prop_assert_eq!(b.len(), meta::LEN);
            prop_assert_eq!(decode_meta(&b).unwrap(), m);
            every_cut_is_truncated(&b, |b| decode_meta(b))?;
        }

        #[test]
        fn snapshots_round_trip_and_every_cut_is_truncated(s in any_snapshot()) {
            let b = encode_snapshot_state(&s);
            prop_assert_eq!(decode_snapshot_state(&b).unwrap(), s);
            every_cut_is_truncated(&b, decode_snapshot_state)?;
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = decode_entry_header(&b);
            let _ = decode_entry(&b);
            let _ = decode_meta(&b);
            let _ = decode_membership(&b);
            let _ = decode_snapshot_state(&b);
        }

        #[test]
        fn truncated_entries_fail_cleanly(e in any_entry(), cut in 0usize..400) {
            let b = encode_entry(&e);
            if cut < b.len() {
                let short = b.slice(..cut);
                // Normal payloads have no length field: a cut body is still a (shorter) entry.
                if cut < entry::HEADER_LEN || !matches!(e.payload, EntryPayload::Normal(_) | EntryPayload::Blank) {
                    prop_assert!(decode_entry(&short).is_err());
                }
            }
        }
    }
}
