//! Every byte layout of the cluster layer, as named constants, plus the reader and writer they
//! are built with (the storage crate's [`shale_storage::byteio`], errors mapped to
//! [`ClusterError::Decode`]). `docs/format.md` ("Cluster layer") tables the same layouts.
//!
//! All integers are little-endian. Variable-length fields are length-prefixed; every length is
//! checked against a limit before anything is allocated, so hostile bytes cannot make a decoder
//! allocate without bound or panic. A reader that meets an unknown version returns a typed error.

use bytes::Bytes;
use shale_storage::byteio::{ByteError, ByteReader};

use crate::cluster::api::ClusterError;

/// Metadata-group command (one Raft entry payload of group 0).
///
/// `[magic:u16 = "MC"][version:u8][kind:u8][body...]`; bodies per kind are tabled in `docs/format.md`.
pub mod metadata_command {
    /// "MC" as a little-endian u16.
    pub const MAGIC: u16 = u16::from_le_bytes(*b"MC");
    /// Version written and read.
    pub const VERSION: u8 = 1;
    /// Bytes before the body.
    pub const HEADER_LEN: usize = 4;
    /// Kind: create a topic.
    pub const KIND_CREATE_TOPIC: u8 = 1;
    /// Kind: delete a topic.
    pub const KIND_DELETE_TOPIC: u8 = 2;
    /// Kind: alter a topic's settings.
    pub const KIND_ALTER_TOPIC: u8 = 3;
    /// Kind: commit a consumer group's offset.
    pub const KIND_COMMIT_OFFSET: u8 = 4;
    /// Kind: add (or re-address) a member.
    pub const KIND_ADD_MEMBER: u8 = 5;
    /// Kind: remove a member.
    pub const KIND_REMOVE_MEMBER: u8 = 6;
    /// Kind: record the initial members (applies only while there are none).
    pub const KIND_BOOTSTRAP: u8 = 7;
    /// Kind: add a user (name, SHA-256 of its token's secret).
    pub const KIND_CREATE_USER: u8 = 8;
    /// Kind: remove a user.
    pub const KIND_DELETE_USER: u8 = 9;
    /// Kind: add an ACL allow rule.
    pub const KIND_ADD_ACL: u8 = 10;
    /// Kind: remove an ACL allow rule.
    pub const KIND_REMOVE_ACL: u8 = 11;
    /// Kind: create a topic within cluster totals (topics, partitions) the command carries.
    pub const KIND_CREATE_TOPIC_WITHIN: u8 = 12;
    /// Kind: add (or re-address) a member, with its internal and its client address (written
    /// instead of [`KIND_ADD_MEMBER`], which is still read: one address for both).
    pub const KIND_ADD_MEMBER_ADDRS: u8 = 13;
    /// Kind: record the initial members with internal and client addresses (written instead of
    /// [`KIND_BOOTSTRAP`], which is still read: one address for both).
    pub const KIND_BOOTSTRAP_ADDRS: u8 = 14;
    /// Kind: set (replace) a quota entry; body is a [`super::quota_entry`].
    pub const KIND_SET_QUOTA: u8 = 17;
    /// Kind: remove a quota entry; body is its entity (`[kind:u8][name:str16]`).
    pub const KIND_REMOVE_QUOTA: u8 = 18;
    /// Kind: add a password user (name, SCRAM-SHA-256 credential).
    pub const KIND_CREATE_PASSWORD_USER: u8 = 15;
    /// Kind: give an existing user a new password (name, SCRAM-SHA-256 credential).
    pub const KIND_SET_PASSWORD: u8 = 16;
    /// Kind: create a topic within optional cluster totals and a per-node replica limit (spec,
    /// `[has totals:u8]([max_topics:u32][max_partitions:u32])`, `[max_replicas:u32][limit:u8]`).
    pub const KIND_CREATE_TOPIC_BOUNDED: u8 = 40;
    /// Kind: a member joins a consumer group (`[group:str16][member_id:str16][client_addr:str16]`
    /// `[session_timeout_ms:u32][assignor:u8]` then its subscriptions).
    pub const KIND_JOIN_GROUP: u8 = 41;
    /// Kind: a member reports what it still holds (`[group][member_id]` then its partitions).
    pub const KIND_ACKNOWLEDGE_GROUP: u8 = 42;
    /// Kind: a member leaves, or its session expired (`[group][member_id]`).
    pub const KIND_LEAVE_GROUP: u8 = 43;
    /// Kind: commit many offsets of a group at once, fenced by a member (`[group][has fence:u8]`
    /// (`[member_id:str16][member_epoch:u64]`)`[now_ms:u64][count:u32]` then
    /// `[topic:str16][partition:u32][offset:u64]` each).
    pub const KIND_COMMIT_OFFSETS: u8 = 44;
    /// Kind: delete a group without members and its offsets (`[group]`).
    pub const KIND_DELETE_GROUP: u8 = 45;
    /// Kind: drop a memberless group whose last commit is older than the retention
    /// (`[group][now_ms:u64][retention_ms:u64]`).
    pub const KIND_EXPIRE_GROUP_OFFSETS: u8 = 46;
    /// Kind: add (or re-address) a member with its internal, client and Kafka addresses
    /// (`[id:u64][internal:str16][client:str16][kafka:str16]`; written instead of
    /// [`KIND_ADD_MEMBER_ADDRS`], which is still read: no Kafka address).
    pub const KIND_ADD_MEMBER_KAFKA: u8 = 47;
    /// Kind: record the initial members with internal, client and Kafka addresses (written instead
    /// of [`KIND_BOOTSTRAP_ADDRS`], which is still read: no Kafka addresses).
    pub const KIND_BOOTSTRAP_KAFKA: u8 = 48;
    /// Kind: give a topic more partitions (`[name:str16][count:u32]`, then totals and the per-node
    /// limit as [`KIND_CREATE_TOPIC_BOUNDED`] writes them, each behind a presence byte).
    pub const KIND_ADD_PARTITIONS: u8 = 49;
    /// Per-node limit byte: `limits.max_partitions_per_node`.
    pub const NODE_LIMIT_MAX_PARTITIONS: u8 = 1;
    /// Per-node limit byte: the entry-cache budget (`memory.log_cache_bytes`).
    pub const NODE_LIMIT_LOG_CACHE: u8 = 2;
}

/// Metadata-group reply (the bytes an applied command answers with).
///
/// `[version:u8][kind:u8][body...]`.
pub mod metadata_reply {
    /// Version written and read.
    pub const VERSION: u8 = 1;
    /// Kind: done, no body.
    pub const KIND_OK: u8 = 0;
    /// Kind: topic created; body is the topic.
    pub const KIND_TOPIC: u8 = 1;
    /// Kind: rejected; body is `[reason:u8][...]`.
    pub const KIND_REJECTED: u8 = 2;
}

/// Metadata snapshot (the whole metadata state).
///
/// `[magic:u32 = "SHMD"][version:u16][body...][crc32:u32]`; the CRC covers every byte before it.
pub mod metadata_snapshot {
    /// "SHMD".
    pub const MAGIC: u32 = u32::from_le_bytes(*b"SHMD");
    /// Version written and read (5: each member has a Kafka address after its client address).
    pub const VERSION: u16 = 5;
    /// Still read: the consumer groups' coordinator state follows the quota entries; members
    /// have no Kafka address.
    pub const VERSION_4: u16 = 4;
    /// Still read: each member has an internal and a client address; each user's credential
    /// carries a kind byte, token or SCRAM-SHA-256 password; quota entries follow the ACL rules;
    /// no group coordinator state.
    pub const VERSION_3: u16 = 3;
    /// Still read: users (all token users, no kind byte) and ACL rules follow the offsets; each
    /// member's one address is both its internal and its client address; no quotas.
    pub const VERSION_2: u16 = 2;
    /// The version before users and ACL rules, still read (as holding none).
    pub const VERSION_BEFORE_ACCESS: u16 = 1;
}

/// One client-quota entry (in the `SetQuota` command and the metadata snapshot).
///
/// `[entity kind:u8][name:str16][produce_bytes_per_sec:u64][consume_bytes_per_sec:u64]`: kind 1 is
/// the default entity (`*`, empty name), 2 a user; a rate of 0 is unset.
pub mod quota_entry {
    /// Entity kind: the default for every user.
    pub const ENTITY_DEFAULT: u8 = 1;
    /// Entity kind: one user.
    pub const ENTITY_USER: u8 = 2;
    /// Fewest bytes of an entry.
    pub const MIN_LEN: usize = 1 + 2 + 8 + 8;
}

/// The reply to a partition entry (what applying it decided; a Raft response, never stored).
///
/// `[kind:u8][a:u64][b:u64][c:u64][d:u64]`, unused fields 0:
///
/// | kind | meaning | a | b | c | d |
/// |---|---|---|---|---|---|
/// | 0 | appended | base offset | record count | 0 | 0 |
/// | 1 | duplicate | original's base offset (`u64::MAX`: not remembered) | its record count | its log index | producer's last sequence |
/// | 2 | invalid | 0 | 0 | 0 | 0 |
/// | 3 | out of sequence | expected sequence | 0 | 0 | 0 |
/// | 4 | offset mismatch | expected offset | 0 | 0 | 0 |
///
/// A partition entry's body is a record batch: its layout is
/// [`shale_storage::record_batch`]'s, tabled in docs/format.md ("Record batch").
pub mod apply_outcome {
    /// Encoded length.
    pub const LEN: usize = 1 + 4 * 8;
    /// The batch is visible.
    pub const KIND_APPENDED: u8 = 0;
    /// The producer already wrote these sequences.
    pub const KIND_DUPLICATE: u8 = 1;
    /// Not a batch.
    pub const KIND_INVALID: u8 = 2;
    /// The producer skipped sequences.
    pub const KIND_OUT_OF_SEQUENCE: u8 = 3;
    /// The batch's base offset is not the partition's next offset.
    pub const KIND_OFFSET_MISMATCH: u8 = 4;
}

/// Partition snapshot (next offset, producer dedup table, hidden entries, sparse offset index).
///
/// `[magic:u32 = "SHPS"][version:u16][body...][crc32:u32]`; the body is tabled in docs/format.md
/// ("Partition snapshot").
pub mod partition_snapshot {
    /// "SHPS".
    pub const MAGIC: u32 = u32::from_le_bytes(*b"SHPS");
    /// Version written and read (3: index points carry the running maximum timestamp, and the
    /// machine its maximum timestamp and untimed bound).
    pub const VERSION: u16 = 3;
    /// The version before (batches with dense offsets, no timestamps): still read, its entries
    /// marked untimed. Version 1 (one record per entry) is not read.
    pub const VERSION_UNTIMED: u16 = 2;
    /// Bytes of one index point: base offset, log index, largest timestamp before it.
    pub const INDEX_POINT_LEN: usize = 8 + 8 + 8;
    /// Least bytes of one producer: id, last sequence, last index, window count.
    pub const PRODUCER_LEN: usize = 8 + 8 + 8 + 4;
    /// Bytes of one window batch: base sequence, record count, base offset, log index.
    pub const WINDOW_BATCH_LEN: usize = 8 + 4 + 8 + 8;
}

/// Appends little-endian fields to a buffer: the storage crate's
/// [`ByteWriter`](shale_storage::byteio::ByteWriter), which owns the `str16`, `bytes32`, `opt_u64`
/// and CRC-trailer encodings these layouts use.
pub use shale_storage::byteio::ByteWriter as Writer;

/// `Reader` methods that read one fixed-width integer with the shared reader.
macro_rules! fixed_width_reads {
    ($($(#[$doc:meta])* $name:ident -> $ty:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(&mut self) -> Result<$ty, ClusterError> {
            let v = self.inner.$name();
            self.lift(v)
        }
    )*};
}

/// Reads little-endian fields with the storage crate's [`ByteReader`], failing with
/// [`ClusterError::Decode`] (naming the byte position) instead of panicking.
#[derive(Debug)]
pub struct Reader<'a> {
    inner: ByteReader<'a>,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { inner: ByteReader::new(what, buf) }
    }

    /// A reader over a buffer whose last four bytes are a CRC32 of the rest; checks it first.
    pub fn with_crc(what: &'static str, buf: &'a [u8]) -> Result<Self, ClusterError> {
        let inner = ByteReader::with_crc32_trailer(what, buf)
            .map_err(|e| ClusterError::Decode { what, reason: e.kind.to_string() })?;
        Ok(Self { inner })
    }

    /// Reads and checks a snapshot header `[magic:u32][version:u16]`.
    pub fn snapshot_header(&mut self, magic: u32, version: u16) -> Result<(), ClusterError> {
        let found = self.u32()?;
        if found != magic {
            return Err(self.error(format!("magic {found:#x}, expected {magic:#x}")));
        }
        let found = self.u16()?;
        if found != version {
            return Err(self.error(format!("format version {found}, this build reads {version}")));
        }
        Ok(())
    }

    /// Reads and checks a snapshot header `[magic:u32][version:u16]` whose version is one of
    /// `versions`; returns the version.
    pub fn snapshot_header_of(&mut self, magic: u32, versions: &[u16]) -> Result<u16, ClusterError> {
        let found = self.u32()?;
        if found != magic {
            return Err(self.error(format!("magic {found:#x}, expected {magic:#x}")));
        }
        let found = self.u16()?;
        if !versions.contains(&found) {
            return Err(self.error(format!("format version {found}, this build reads {versions:?}")));
        }
        Ok(found)
    }

    /// An error naming the current position.
    pub fn error(&self, reason: impl Into<String>) -> ClusterError {
        ClusterError::Decode {
            what: self.inner.what(),
            reason: format!("at byte {}: {}", self.inner.position(), reason.into()),
        }
    }

    /// The shared reader's result, its error as [`ClusterError::Decode`] at the current position.
    fn lift<T>(&self, result: Result<T, ByteError>) -> Result<T, ClusterError> {
        result.map_err(|e| self.error(e.kind.to_string()))
    }

    fixed_width_reads! {
        /// One byte.
        u8 -> u8;
        /// Two bytes.
        u16 -> u16;
        /// Four bytes.
        u32 -> u32;
        /// Eight bytes.
        u64 -> u64;
    }
    /// `[present:u8][value:u64]`.
    pub fn opt_u64(&mut self) -> Result<Option<u64>, ClusterError> {
        let v = self.inner.opt_u64("presence byte");
        self.lift(v)
    }
    /// `[len:u16][utf8]`, at most `max` bytes.
    pub fn str16(&mut self, max: usize) -> Result<String, ClusterError> {
        let v = self.inner.str16("string length", max as u64).map(str::to_owned);
        self.lift(v)
    }
    /// `[len:u32][bytes]`, at most `max` bytes, copied out.
    pub fn bytes32(&mut self, max: usize) -> Result<Bytes, ClusterError> {
        let v = self.inner.bytes32("field length", max as u64).map(Bytes::copy_from_slice);
        self.lift(v)
    }
    /// A count that must not exceed `max` nor the bytes left divided by `min_item_bytes`
    /// (so a hostile count cannot make us allocate more than the input justifies).
    pub fn count(&mut self, raw: u64, max: usize, min_item_bytes: usize) -> Result<usize, ClusterError> {
        let v = self.inner.count("count", raw, max, min_item_bytes);
        self.lift(v)
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), ClusterError> {
        self.lift(self.inner.expect_end())
    }
}

/// Codec configuration as one byte plus a level: `[kind:u8][zstd_level:i32 as u32]`.
pub mod codec_kind {
    use shale_storage::CodecKind;

    use super::{Reader, Writer};
    use crate::cluster::api::ClusterError;

    /// Writes a codec kind.
    pub fn write(w: &mut Writer, kind: CodecKind) {
        match kind {
            CodecKind::None => w.u8(0).u32(0),
            CodecKind::Lz4 => w.u8(1).u32(0),
            CodecKind::Zstd { level } => w.u8(2).u32(level as u32),
        };
    }

    /// Reads a codec kind.
    pub fn read(r: &mut Reader<'_>) -> Result<CodecKind, ClusterError> {
        let kind = r.u8()?;
        let level = r.u32()? as i32;
        match kind {
            0 => Ok(CodecKind::None),
            1 => Ok(CodecKind::Lz4),
            2 => Ok(CodecKind::Zstd { level }),
            other => Err(r.error(format!("unknown codec kind {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_detects_flips() {
        let mut w = Writer::new();
        w.u64(7).str16("abc").crc();
        let mut bytes = w.finish();
        let mut r = Reader::with_crc("t", &bytes).unwrap();
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.str16(10).unwrap(), "abc");
        r.finish().unwrap();
        bytes[3] ^= 1;
        assert!(Reader::with_crc("t", &bytes).is_err());
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut w = Writer::new();
        w.u32(u32::MAX);
        let bytes = w.finish();
        assert!(Reader::new("t", &bytes).bytes32(1 << 20).is_err());
        let mut r = Reader::new("t", &[5, 0, b'a']);
        assert!(r.str16(100).is_err());
        let mut r = Reader::new("t", &[0u8; 16]);
        assert!(r.count(1000, 10_000, 8).is_err());
    }

    /// Every decoder of the cluster layer (metadata commands, replies and snapshots; partition
    /// records, apply outcomes and snapshots), fed encodings built from arbitrary values and every
    /// cut of them, and arbitrary bytes.
    mod props {
        use std::collections::BTreeMap;
        use std::fmt::Debug;

        use proptest::prelude::*;
        use shale_storage::record_batch::{NewRecord, encode_batch};
        use shale_storage::{CodecKind, NoneCodec};

        use crate::cluster::quota::{Quota, QuotaEntity};

        use super::*;
        use crate::cluster::access::{AclRule, Operation, ResourcePattern, ScramCredential};
        use crate::cluster::api::{MemberAddrs, RetentionPolicy, TopicSpec, TopicTotals, TopicUpdate};
        use crate::cluster::metadata::{MetadataCommand, MetadataReply, MetadataState};
        use crate::cluster::partition::{ApplyOutcome, PartitionMachine};

        /// `decode(encode)` gives the value back and every cut of the encoding is an error.
        fn round_trip_and_every_cut_fails<T: Debug + PartialEq>(
            value: &T,
            bytes: &[u8],
            decode: impl Fn(&[u8]) -> Result<T, ClusterError>,
        ) -> Result<(), TestCaseError> {
            prop_assert_eq!(&decode(bytes).unwrap(), value);
            for cut in 0..bytes.len() {
                let e = decode(&bytes[..cut]);
                prop_assert!(matches!(e, Err(ClusterError::Decode { .. })), "{:?} cut at {}: {:?}", value, cut, e);
            }
            Ok(())
        }

        /// One command of each kind, in an order that applies: members, a topic, changes to it.
        fn commands(name: &str, n: u64, level: i32) -> Vec<MetadataCommand> {
            let retention = RetentionPolicy { retention_bytes: Some(n), retention_ms: n.checked_sub(1) };
            let members = BTreeMap::from([
                (1, MemberAddrs::one("a:1")),
                (2, MemberAddrs::pair(format!("{name}:2"), format!("127.0.0.1:{n}")).with_kafka(format!("k-{name}:2"))),
            ]);
            let spec = TopicSpec {
                name: name.into(),
                partitions: 2,
                replication_factor: 2,
                retention,
                codec: CodecKind::Zstd { level },
            };
            let update = TopicUpdate { retention: Some(retention), codec: Some(CodecKind::Lz4) };
            vec![
                MetadataCommand::Bootstrap { members },
                MetadataCommand::AddMember {
                    id: 3,
                    addrs: MemberAddrs::pair(format!("{name}:3"), format!("c-{name}:3"))
                        .with_kafka(format!("k-{name}:3")),
                },
                MetadataCommand::CreateTopic(spec.clone()),
                // Within the totals (2 + 2 partitions of 4), then past them (refused).
                MetadataCommand::CreateTopicWithin {
                    spec: TopicSpec { name: format!("{name}.w"), ..spec.clone() },
                    totals: TopicTotals { max_topics: 8, max_partitions: 4 },
                },
                MetadataCommand::CreateTopicWithin {
                    spec: TopicSpec { name: format!("{name}.x"), ..spec.clone() },
                    totals: TopicTotals { max_topics: 8, max_partitions: 5 },
                },
                MetadataCommand::CreateTopic(spec),
                MetadataCommand::AlterTopic { name: name.into(), update },
                MetadataCommand::AlterTopic { name: name.into(), update: TopicUpdate::default() },
                MetadataCommand::CommitOffset { group: "g".into(), topic: name.into(), partition: 1, offset: n },
                MetadataCommand::CommitOffset { group: "g".into(), topic: name.into(), partition: 9, offset: n },
                MetadataCommand::RemoveMember { id: 3 },
                MetadataCommand::RemoveMember { id: 3 },
                MetadataCommand::AddPartitions {
                    name: name.into(),
                    count: 3,
                    totals: Some(TopicTotals { max_topics: 8, max_partitions: 64 }),
                    per_node: Some(crate::cluster::ReplicaLimit {
                        max_replicas: 99,
                        limit: crate::cluster::NodeLimit::LogCacheBudget,
                    }),
                },
                MetadataCommand::DeleteTopic { name: "other".into() },
                MetadataCommand::CreateUser { name: name.into(), token_hash: [level as u8; 32] },
                MetadataCommand::CreateUser { name: name.into(), token_hash: [0; 32] },
                MetadataCommand::CreatePasswordUser {
                    name: format!("{name}.p"),
                    credential: ScramCredential {
                        salt: vec![level as u8; 16 + (n % 49) as usize],
                        iterations: 4096 + (n % 100_000) as u32,
                        stored_key: [1; 32],
                        server_key: [2; 32],
                    },
                },
                MetadataCommand::SetPassword {
                    name: name.into(),
                    credential: ScramCredential {
                        salt: vec![3; 32],
                        iterations: 10_000,
                        stored_key: [4; 32],
                        server_key: [5; 32],
                    },
                },
                MetadataCommand::AddAcl(AclRule {
                    principal: name.into(),
                    operation: Operation::Produce,
                    resource: ResourcePattern::TopicPrefix(name.into()),
                }),
                MetadataCommand::AddAcl(AclRule {
                    principal: "*".into(),
                    operation: Operation::ClusterAdmin,
                    resource: ResourcePattern::Cluster,
                }),
                MetadataCommand::RemoveAcl(AclRule {
                    principal: "*".into(),
                    operation: Operation::GroupRead,
                    resource: ResourcePattern::Group("g".into()),
                }),
                MetadataCommand::DeleteUser { name: "other".into() },
                MetadataCommand::SetQuota {
                    entity: QuotaEntity::Default,
                    quota: Quota { produce_bytes_per_sec: Some(n.max(1)), consume_bytes_per_sec: None },
                },
                MetadataCommand::SetQuota {
                    entity: QuotaEntity::User(name.into()),
                    quota: Quota { produce_bytes_per_sec: None, consume_bytes_per_sec: Some(n.max(1)) },
                },
                MetadataCommand::RemoveQuota { entity: QuotaEntity::User("other".into()) },
            ]
        }

        proptest! {
            #[test]
            fn metadata_encodings_round_trip_and_every_cut_fails(name in "[a-z]{1,8}", n in any::<u64>(), level in -5i32..20) {
                let mut state = MetadataState::new();
                for c in commands(&name, n, level) {
                    round_trip_and_every_cut_fails(&c, &c.encode(), MetadataCommand::decode)?;
                    let reply = state.apply(&c);
                    round_trip_and_every_cut_fails(&reply, &reply.encode(), MetadataReply::decode)?;
                    round_trip_and_every_cut_fails(&state, &state.encode(), MetadataState::decode)?;
                }
                let deleted = state.apply(&MetadataCommand::DeleteTopic { name });
                prop_assert_eq!(deleted, MetadataReply::Ok);
            }

            #[test]
            fn partition_encodings_round_trip_and_every_cut_fails(
                key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                value in proptest::collection::vec(any::<u8>(), 0..64),
                header in "[a-z]{0,8}",
                producer in proptest::option::of((any::<u64>(), 0u64..4)),
                timestamp_ms in any::<u64>(),
            ) {
                let record = NewRecord {
                    key: key.map(Bytes::from),
                    value: Bytes::from(value),
                    headers: vec![(header, Bytes::from_static(b"v"))],
                    timestamp_ms,
                };
                let mut machine = PartitionMachine::new();
                for index in 1..=3 {
                    let bytes = encode_batch(std::slice::from_ref(&record), machine.next_offset(), producer, &NoneCodec);
                    let outcome = machine.apply(index, &bytes);
                    round_trip_and_every_cut_fails(&outcome, &outcome.encode(), ApplyOutcome::decode)?;
                    round_trip_and_every_cut_fails(&machine, &machine.encode(), PartitionMachine::decode)?;
                }
                let bytes = encode_batch(std::slice::from_ref(&record), machine.next_offset(), None, &NoneCodec);
                let invalid = machine.apply(4, &bytes[..bytes.len() - 1]);
                prop_assert_eq!(invalid, ApplyOutcome::Invalid);
                round_trip_and_every_cut_fails(&invalid, &invalid.encode(), ApplyOutcome::decode)?;
                let mismatch = machine.apply(5, &encode_batch(&[record], 1 << 40, None, &NoneCodec));
                round_trip_and_every_cut_fails(&mismatch, &mismatch.encode(), ApplyOutcome::decode)?;
            }

            /// Any reader call on arbitrary bytes is a value or a typed error, never a panic.
            #[test]
            fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), calls in proptest::collection::vec(0u8..9, 1..12)) {
                let mut r = Reader::new("t", &bytes);
                for call in calls {
                    let ok = match call {
                        0 => r.u8().is_ok(),
                        1 => r.u16().is_ok(),
                        2 => r.u32().is_ok(),
                        3 => r.u64().is_ok(),
                        4 => r.opt_u64().is_ok(),
                        5 => r.str16(16).is_ok(),
                        6 => r.bytes32(16).is_ok(),
                        7 => codec_kind::read(&mut r).is_ok(),
                        _ => r.count(u64::from(bytes.first().copied().unwrap_or(0)), 8, 2).is_ok(),
                    };
                    if !ok {
                        break;
                    }
                }
                let _ = r.finish();
                let _ = Reader::with_crc("t", &bytes).map(|r| r.finish());
            }
        }
    }
}
