//! What each stream of a node's data directory holds, named as an operator knows it: the metadata
//! group, or a topic (by name) and partition. Stream ids follow the Raft layer's mapping (group `g`
//! keeps its log in stream `2g` and its vote/committed/purged state in `2g + 1`) and the cluster
//! layer's group ids (group 0 = metadata, partition group = `(topic_id << 16) | (partition + 1)`);
//! topic names come from the node's own copy of the cluster metadata: the metadata group's Raft log
//! (stream 0), replayed from its latest snapshot checkpoint with the metadata state machine, as the
//! node does on start. `docs/format.md` ("Stream mapping", "Identifiers") tables the scheme.

use std::collections::BTreeMap;

use serde::Serialize;
use shale_raft::GroupId;
use shale_raft::cluster::metadata::{MetadataCommand, MetadataReply, MetadataState};
use shale_raft::cluster::{TopicId, group_partition};
use shale_raft::format::{decode_entry_header, entry};
use shale_raft::snapshot::latest_snapshot;
use shale_storage::{Offset, Storage, StorageBackend, StreamId};

/// Bytes of metadata log read per call.
const READ_BYTES: usize = 4 << 20;

/// A topic as the node's metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KnownTopic {
    name: String,
    /// Deleted since (its streams are removed once the node sees it).
    deleted: bool,
}

/// What one stream holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamRole {
    /// The Raft group (0 = metadata).
    pub group: u64,
    /// `raft log` (stream `2g`) or `raft state` (stream `2g + 1`).
    pub part: &'static str,
    /// The topic's id, for a partition group.
    pub topic_id: Option<u32>,
    /// The topic's name, when the node's metadata knows it.
    pub topic: Option<String>,
    /// The partition, for a partition group.
    pub partition: Option<u32>,
    /// The topic is deleted in the node's metadata.
    pub deleted: bool,
}

impl StreamRole {
    /// `metadata group, raft log`, `topic orders partition 3, raft state`, ...
    pub fn describe(&self) -> String {
        let what = match (self.topic_id, &self.topic, self.partition) {
            _ if self.group == GroupId::METADATA.0 => "metadata group".to_string(),
            (Some(_), Some(name), Some(p)) if self.deleted => format!("topic {name} (deleted) partition {p}"),
            (Some(_), Some(name), Some(p)) => format!("topic {name} partition {p}"),
            (Some(id), None, Some(p)) => format!("topic #{id} (not in this node's metadata) partition {p}"),
            _ => format!("group {} (no topic partition)", self.group),
        };
        format!("{what}, {}", self.part)
    }
}

/// Topic names from a data directory's metadata, for naming its streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamNames {
    topics: BTreeMap<TopicId, KnownTopic>,
    /// Why the metadata could not be read (in full), if it could not.
    problem: Option<String>,
}

impl StreamNames {
    /// Reads the topic table from the metadata group's log in `storage` (opened read-only): the
    /// state of its latest snapshot, then every metadata command after it. Entries past the
    /// committed index, if the log holds any, are applied too: a name is only a label here. A
    /// log that cannot be read (in full) leaves the topics known so far, and says why.
    pub fn read(storage: &Storage) -> Self {
        let mut names = Self::default();
        if let Err(problem) = names.replay(storage) {
            names.problem = Some(problem);
        }
        names
    }

    fn replay(&mut self, storage: &Storage) -> Result<(), String> {
        let log = GroupId::METADATA.log_stream();
        if !storage.streams().contains(&log) {
            return Err("this data directory holds no metadata group log (stream 0)".into());
        }
        let mut state = MetadataState::new();
        let mut from = storage.log_start(log).map_err(|e| e.to_string())?;
        match latest_snapshot(storage, log) {
            Ok(Some((snapshot, snap))) => {
                if !snap.app.is_empty() {
                    state = MetadataState::decode(&snap.app)
                        .map_err(|e| format!("metadata snapshot at offset {}: {e}", snapshot.offset))?;
                }
                from = from.max(Offset::new(snapshot.offset));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("metadata snapshot: {e}")),
        }
        self.learn(&state);
        let next = storage.next_offset(log).map_err(|e| e.to_string())?;
        while from < next {
            let records = storage.read_range(log, from, next, READ_BYTES).map_err(|e| e.to_string())?;
            let Some(last) = records.last() else { break };
            from = last.offset.plus(1);
            for r in records {
                let header =
                    decode_entry_header(&r.payload).map_err(|e| format!("metadata log offset {}: {e}", r.offset))?;
                if header.kind != entry::KIND_NORMAL {
                    continue;
                }
                // A command the state machine cannot decode is rejected by it on every replica.
                let Ok(command) = MetadataCommand::decode(&r.payload[entry::HEADER_LEN..]) else { continue };
                if let MetadataCommand::DeleteTopic { name } = &command
                    && let Some(t) = state.topic(name)
                    && let Some(known) = self.topics.get_mut(&t.id)
                {
                    known.deleted = true;
                }
                if let MetadataReply::Topic(info) = state.apply(&command) {
                    self.topics.insert(info.id, KnownTopic { name: info.name, deleted: false });
                }
            }
        }
        Ok(())
    }

    /// Records the topics of `state`.
    fn learn(&mut self, state: &MetadataState) {
        for t in state.topics().values() {
            self.topics.insert(t.id, KnownTopic { name: t.name.clone(), deleted: false });
        }
    }

    /// Why topic names could not be read (in full), if they could not.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// What stream `stream` holds.
    pub fn role(&self, stream: StreamId) -> StreamRole {
        let group = GroupId::of_stream(stream);
        let part = if stream == group.log_stream() { "raft log" } else { "raft state" };
        let (topic_id, partition) = group_partition(group).unzip();
        let known = topic_id.and_then(|id| self.topics.get(&id));
        StreamRole {
            group: group.0,
            part,
            topic_id,
            topic: known.map(|t| t.name.clone()),
            partition,
            deleted: known.is_some_and(|t| t.deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_raft::cluster::{RetentionPolicy, TopicSpec, partition_group_id};
    use shale_raft::format::{SnapshotState, encode_entry, encode_snapshot_state};
    use shale_raft::types::{AppPayload, Entry, EntryPayload, Membership, log_id};
    use shale_storage::{ChainHash, Checkpoint, CodecKind};

    use super::*;

    fn create(name: &str, partitions: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic(TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: 1,
            retention: RetentionPolicy::default(),
            codec: CodecKind::None,
        })
    }

    /// Appends `commands` to the metadata log as normal entries from offset `at`.
    fn append(s: &Storage, at: u64, commands: &[MetadataCommand]) {
        let events: Vec<Bytes> = (at..)
            .zip(commands)
            .map(|(i, c)| {
                let payload = EntryPayload::Normal(AppPayload::new(Bytes::from(c.encode())));
                encode_entry(&Entry { log_id: log_id(1, 1, i), payload })
            })
            .collect();
        s.append_batch(GroupId::METADATA.log_stream(), events, Offset::new(at), true).unwrap();
    }

    fn stream_of(topic: TopicId, partition: u32, log: bool) -> StreamId {
        let g = partition_group_id(topic, partition);
        if log { g.log_stream() } else { g.meta_stream() }
    }

    fn bootstrap() -> MetadataCommand {
        MetadataCommand::Bootstrap { members: [(1, shale_raft::cluster::MemberAddrs::one("h:1"))].into() }
    }

    #[test]
    fn streams_are_named_by_topic_and_partition_from_the_metadata_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let delete = MetadataCommand::DeleteTopic { name: "orders".into() };
        append(&s, 0, &[bootstrap(), create("ledger", 2), create("orders", 1), delete]);
        s.close().unwrap();
        let s = Storage::open_read_only(dir.path(), Default::default()).unwrap();
        let names = StreamNames::read(&s);
        assert_eq!(names.problem(), None);
        let role = |stream| names.role(stream).describe();
        assert_eq!(role(StreamId::new(0)), "metadata group, raft log");
        assert_eq!(role(StreamId::new(1)), "metadata group, raft state");
        assert_eq!(role(stream_of(1, 1, true)), "topic ledger partition 1, raft log");
        assert_eq!(role(stream_of(1, 0, false)), "topic ledger partition 0, raft state");
        assert_eq!(role(stream_of(2, 0, true)), "topic orders (deleted) partition 0, raft log");
        assert_eq!(role(stream_of(3, 0, true)), "topic #3 (not in this node's metadata) partition 0, raft log");
        assert_eq!(role(StreamId::new(6)), "group 3 (no topic partition), raft log");
        let r = names.role(stream_of(1, 1, true));
        assert_eq!((r.topic_id, r.topic.as_deref(), r.partition), (Some(1), Some("ledger"), Some(1)));
    }

    #[test]
    fn a_snapshot_supplies_the_topics_created_before_it() {
        // The metadata state at offset 10 (ledger, id 1) is in a snapshot checkpoint; the log
        // holds only what came after (orders, id 2).
        let mut state = MetadataState::new();
        state.apply(&bootstrap());
        state.apply(&create("ledger", 1));
        let snap = SnapshotState {
            last_log_id: Some(log_id(1, 1, 9)),
            membership_log_id: None,
            membership: Membership::default(),
            app: Bytes::from(state.encode()),
        };
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let log = GroupId::METADATA.log_stream();
        s.install_checkpoint(log, Checkpoint::new(Offset::new(10), ChainHash([3; 32]), encode_snapshot_state(&snap)))
            .unwrap();
        append(&s, 10, &[create("orders", 1)]);
        s.close().unwrap();
        let s = Storage::open_read_only(dir.path(), Default::default()).unwrap();
        assert_eq!(s.log_start(log).unwrap(), Offset::new(10));
        let names = StreamNames::read(&s);
        assert_eq!(names.problem(), None);
        assert_eq!(names.role(stream_of(1, 0, true)).describe(), "topic ledger partition 0, raft log");
        assert_eq!(names.role(stream_of(2, 0, true)).describe(), "topic orders partition 0, raft log");
    }

    #[test]
    fn without_a_metadata_log_streams_are_named_by_topic_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        s.append_batch(stream_of(2, 0, true), vec![Bytes::from_static(b"x")], Offset::ZERO, true).unwrap();
        s.close().unwrap();
        let s = Storage::open_read_only(dir.path(), Default::default()).unwrap();
        let names = StreamNames::read(&s);
        assert!(names.problem().unwrap().contains("no metadata group log"));
        assert_eq!(
            names.role(stream_of(2, 0, true)).describe(),
            "topic #2 (not in this node's metadata) partition 0, raft log"
        );
    }
}
