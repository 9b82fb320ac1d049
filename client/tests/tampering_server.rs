//! The consumer against a tampering server: a real gRPC Fetch service on loopback that serves a
//! genuine partition log (record batches of mixed sizes through every codec, Raft's own entries
//! and a hidden duplicate between them), or the same log altered in one way. Every alteration
//! must fail the read with `ClientError::ChainMismatch`; the genuine log must read back whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use shale_client::proto::fetch_server::{Fetch, FetchServer};
use shale_client::{
    ChainBreak, ChainHash, ChainPoint, ChainReader, Client, ClientConfig, ClientError, ConsumedRecord, ConsumerConfig,
    proto,
};
use shale_storage::Offset;
use shale_storage::codec::{CodecId, CodecKind};
use shale_storage::record_batch::{self, NewRecord, envelope};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

const TOPIC: &str = "orders";
/// Entries per answer.
const PAGE: usize = 4;

/// A stored entry: the envelope as `shale-raft` writes it (version 1, kind, term, leader node,
/// log index; `shale_raft::format::entry`) and the body.
fn stored(index: u64, kind: u8, body: &[u8]) -> Bytes {
    let mut data = vec![1u8, kind];
    data.extend_from_slice(&3u64.to_le_bytes());
    data.extend_from_slice(&2u64.to_le_bytes());
    data.extend_from_slice(&index.to_le_bytes());
    assert_eq!(data.len(), envelope::HEADER_LEN);
    data.extend_from_slice(body);
    Bytes::from(data)
}

fn record(offset: u64, size: usize) -> NewRecord {
    NewRecord {
        key: (!offset.is_multiple_of(3)).then(|| Bytes::from(format!("key-{offset}"))),
        value: Bytes::from(format!("value {offset};").repeat(size / 10 + 1)),
        headers: (0..offset % 3).map(|h| (format!("h{h}"), Bytes::from(vec![h as u8; 3]))).collect(),
        timestamp_ms: 1_700_000_000_000 + offset,
    }
}

/// A genuine partition log and what it holds.
struct Log {
    entries: Vec<proto::LogEntry>,
    hashes: Vec<ChainHash>,
    /// Every record, at its offset.
    records: Vec<NewRecord>,
    /// Per record: (entry index, position).
    places: Vec<(u64, u32)>,
    /// Indexes of visible batches stored uncompressed (a flipped byte there still decodes).
    plain: Vec<u64>,
}

impl Log {
    fn new() -> Self {
        let kinds = [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 3 }];
        // (records, value size): one record, several, hundreds, large values.
        let batches = [(1, 10), (7, 100), (300, 40), (2, 5_000), (50, 3_000), (1, 0), (120, 200), (3, 10), (5, 60)];
        let mut log =
            Log { entries: Vec::new(), hashes: Vec::new(), records: Vec::new(), places: Vec::new(), plain: Vec::new() };
        log.push(0, Bytes::new(), false); // the leader's blank entry
        for (i, &(count, size)) in batches.iter().enumerate() {
            let base = log.records.len() as u64;
            let records: Vec<NewRecord> = (0..count).map(|j| record(base + j, size)).collect();
            let codec = kinds[i % kinds.len()].codec();
            let body = record_batch::encode_batch(&records, base, Some((77, base)), codec.as_ref());
            let index = log.entries.len() as u64;
            if record_batch::decode_header(&body).unwrap().codec == CodecId::NONE {
                log.plain.push(index);
            }
            log.push(envelope::KIND_NORMAL, Bytes::from(body.clone()), false);
            for position in 0..count as u32 {
                log.places.push((index, position));
            }
            log.records.extend(records);
            if i == 2 {
                // A retry of the batch just written: a duplicate, hidden (its base offset is stale).
                log.push(envelope::KIND_NORMAL, Bytes::from(body), true);
            }
            if i == 4 {
                log.push(2, Bytes::from_static(b"membership"), false);
            }
        }
        log
    }

    fn push(&mut self, kind: u8, body: Bytes, hidden: bool) {
        let index = self.entries.len() as u64;
        let data = stored(index, kind, &body);
        let prev = self.hashes.last().copied().unwrap_or(ChainHash::ZERO);
        self.hashes.push(shale_storage::chain_hash(Offset::new(index), &prev, &data));
        self.entries.push(proto::LogEntry { index, data, hidden });
    }

    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    fn prev_hash(&self, index: u64) -> ChainHash {
        if index == 0 { ChainHash::ZERO } else { self.hashes[index as usize - 1] }
    }

    /// The index of the visible batch holding `offset`.
    fn holding(&self, offset: u64) -> Option<u64> {
        self.places.get(offset as usize).map(|p| p.0)
    }
}

/// How the server alters what it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tamper {
    Genuine,
    /// Flips the last byte of this entry (a value byte of an uncompressed batch), and sends the
    /// genuine `last_chain_hash` (as a replica serving stored links does).
    Flip(u64),
    /// As `Flip`, with no `last_chain_hash` (a server that does not send it).
    FlipUnlinked(u64),
    /// Leaves this entry out.
    Drop(u64),
    /// Swaps this entry with the next one.
    Reorder(u64),
    /// Serves every answer after the first with a wrong `prev_chain_hash`.
    PrevHash,
    /// Marks this (visible) batch hidden.
    Hide(u64),
}

struct Server {
    log: Arc<Log>,
    tamper: Tamper,
    answers: AtomicUsize,
    /// Fetches that asked the server not to hash again (`client_checks_chain`), and the others.
    checking: AtomicUsize,
    not_checking: AtomicUsize,
}

impl Server {
    /// The answer to a read at `offset` / `from_index`, as altered.
    fn answer(&self, offset: u64, from_index: Option<u64>) -> proto::FetchResponse {
        let log = &self.log;
        let n = self.answers.fetch_add(1, Ordering::SeqCst);
        let start = from_index.or_else(|| log.holding(offset)).unwrap_or(log.entries.len() as u64);
        let end = (start as usize + PAGE).min(log.entries.len());
        let mut entries: Vec<proto::LogEntry> = log.entries[start as usize..end].to_vec();
        let mut prev = log.prev_hash(start);
        let at = |entries: &[proto::LogEntry], index: u64| entries.iter().position(|e| e.index == index);
        match self.tamper {
            Tamper::Genuine => {}
            Tamper::Flip(k) | Tamper::FlipUnlinked(k) => {
                if let Some(i) = at(&entries, k) {
                    let mut data = entries[i].data.to_vec();
                    *data.last_mut().unwrap() ^= 0x01;
                    entries[i].data = Bytes::from(data);
                }
            }
            Tamper::Drop(k) => {
                if let Some(i) = at(&entries, k) {
                    entries.remove(i);
                }
            }
            Tamper::Reorder(k) => {
                if let Some(i) = at(&entries, k)
                    && i + 1 < entries.len()
                {
                    entries.swap(i, i + 1);
                }
            }
            Tamper::PrevHash => {
                if n > 0 {
                    prev = ChainHash([0xab; 32]);
                }
            }
            Tamper::Hide(k) => {
                if let Some(i) = at(&entries, k) {
                    entries[i].hidden = true;
                }
            }
        }
        let next_index = if entries.is_empty() { start } else { end as u64 };
        // The genuine hash of the last entry served (whatever the tampering did to the others).
        let last_chain_hash = match entries.last() {
            Some(e) if !matches!(self.tamper, Tamper::FlipUnlinked(_)) => {
                Bytes::copy_from_slice(&log.hashes[e.index as usize].0)
            }
            _ => Bytes::new(),
        };
        proto::FetchResponse {
            last_chain_hash,
            topic: TOPIC.into(),
            partition: 0,
            log_start: 0,
            log_end: log.end(),
            next_offset: offset,
            prev_chain_hash: if entries.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&prev.0) },
            next_index,
            entries,
            throttle_time_ms: 0,
        }
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<proto::FetchResponse, Status>> + Send>>;

/// The gRPC service over a [`Server`].
struct Service(Arc<Server>);

#[tonic::async_trait]
impl Fetch for Service {
    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        let req = request.into_inner();
        let asked = if req.client_checks_chain { &self.0.checking } else { &self.0.not_checking };
        asked.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.0.answer(req.offset, req.from_index)))
    }

    type SubscribeStream = AnswerStream;

    async fn subscribe(&self, request: Request<proto::SubscribeRequest>) -> Result<Response<AnswerStream>, Status> {
        let req = request.into_inner();
        let asked = if req.client_checks_chain { &self.0.checking } else { &self.0.not_checking };
        asked.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(2);
        let server = self.0.clone();
        tokio::spawn(async move {
            let mut from_index = req.from_index;
            loop {
                let answer = server.answer(req.offset, from_index);
                if answer.entries.is_empty() {
                    break;
                }
                from_index = Some(answer.next_index);
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            // Caught up: the subscription stays open until the client leaves.
            tx.closed().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        _: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        Err(Status::unimplemented("these tests tamper with fetches only"))
    }
}

impl Server {
    fn new(log: &Arc<Log>, tamper: Tamper) -> Self {
        let zero = AtomicUsize::new;
        Self { log: log.clone(), tamper, answers: zero(0), checking: zero(0), not_checking: zero(0) }
    }
}

/// Serves `tamper` on a loopback port; answers a client of it.
async fn serve(log: &Arc<Log>, tamper: Tamper) -> Client {
    serve_counted(log, tamper).await.0
}

/// [`serve`], and the server (to see what the client asked).
async fn serve_counted(log: &Arc<Log>, tamper: Tamper) -> (Client, Arc<Server>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server::new(log, tamper));
    let counted = server.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FetchServer::new(Service(server)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let config = ClientConfig { max_attempts: 2, request_timeout_ms: 5_000, ..ClientConfig::new([addr.to_string()]) };
    (Client::new(config).unwrap(), counted)
}

fn consumer_config(verify_chain: bool) -> ConsumerConfig {
    ConsumerConfig { max_wait_ms: 0, verify_chain, ..ConsumerConfig::default() }
}

/// Polls from `offset` (or from an anchor) to the log end.
async fn read(
    client: &Client,
    log: &Log,
    offset: u64,
    verify: bool,
    anchor: Option<ChainPoint>,
) -> Result<Vec<ConsumedRecord>, ClientError> {
    let mut consumer = client.consumer(consumer_config(verify));
    match anchor {
        Some(point) => consumer.seek_anchored(TOPIC, 0, offset, point),
        None => consumer.seek(TOPIC, 0, offset),
    }
    let mut out = Vec::new();
    for _ in 0..log.entries.len() + 2 {
        if consumer.position(TOPIC, 0) >= Some(log.end()) {
            let stats = consumer.chain_stats(TOPIC, 0).unwrap();
            assert_eq!(stats.records, out.len() as u64);
            return Ok(out);
        }
        out.extend(consumer.poll().await?);
    }
    panic!("the read did not reach the log end");
}

fn assert_genuine(log: &Log, records: &[ConsumedRecord], from: u64, verified: bool) {
    assert_eq!(records.len() as u64, log.end() - from);
    for (r, offset) in records.iter().zip(from..) {
        let want = &log.records[offset as usize];
        let (index, position) = log.places[offset as usize];
        assert_eq!((r.offset, r.entry_index, r.position), (offset, index, position));
        assert_eq!((&r.key, &r.value, r.timestamp_ms), (&want.key, &want.value, want.timestamp_ms));
        let headers: Vec<(String, Bytes)> = r.headers.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
        assert_eq!(headers, want.headers);
        assert_eq!(r.chain_hash, verified.then_some(log.hashes[index as usize]), "offset {offset}");
    }
}

fn mismatch(result: Result<Vec<ConsumedRecord>, ClientError>) -> (u64, u64, ChainBreak) {
    match result {
        Err(ClientError::ChainMismatch { topic, partition: 0, index, offset, reason }) if topic == TOPIC => {
            (index, offset, reason)
        }
        other => panic!("expected a chain mismatch, got {:?}", other.map(|r| r.len())),
    }
}

#[tokio::test]
async fn a_genuine_log_reads_back_whole_with_every_hash_recomputed() {
    let log = Arc::new(Log::new());
    let client = serve(&log, Tamper::Genuine).await;
    let all = read(&client, &log, 0, true, None).await.unwrap();
    assert_genuine(&log, &all, 0, true);
    // From the middle of a batch, trusting the first answer; and anchored at the start.
    let middle = read(&client, &log, 150, true, None).await.unwrap();
    assert_genuine(&log, &middle, 150, true);
    let anchored = read(&client, &log, 0, true, Some(ChainPoint::GENESIS)).await.unwrap();
    assert_genuine(&log, &anchored, 0, true);
    let unverified = read(&client, &log, 0, false, None).await.unwrap();
    assert_genuine(&log, &unverified, 0, false);
}

#[tokio::test]
async fn a_flipped_byte_breaks_the_chain_at_the_next_answer_unless_verification_is_off() {
    let log = Arc::new(Log::new());
    // The last byte of an uncompressed batch: still a valid batch, so only the hash tells.
    let k = *log.plain.iter().find(|&&i| (i as usize) < log.entries.len() - PAGE).unwrap();
    // A server that sends no `last_chain_hash`: the next answer's anchor gives it away.
    let client = serve(&log, Tamper::FlipUnlinked(k)).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    assert!(index > k, "found where the next answer starts: {index}");
    assert!(
        matches!(reason, ChainBreak::PrevHash { expected, found } if found == log.hashes[index as usize - 1] && expected != found)
    );
    let unverified = read(&client, &log, 0, false, None).await.unwrap();
    let changed: Vec<u64> =
        unverified.iter().filter(|r| r.value != log.records[r.offset as usize].value).map(|r| r.entry_index).collect();
    assert_eq!(changed, vec![k], "without the check the altered value is handed out");
}

#[tokio::test]
async fn a_flipped_byte_is_caught_in_the_answer_that_carries_it_by_the_servers_last_chain_hash() {
    let log = Arc::new(Log::new());
    let k = *log.plain.iter().find(|&&i| (i as usize) < log.entries.len() - PAGE).unwrap();
    let (client, server) = serve_counted(&log, Tamper::Flip(k)).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    // The answer holding entry k ends at most PAGE entries later; the break names its last entry.
    assert!(index >= k && index < k + PAGE as u64, "entry {k} altered, break at {index}");
    match reason {
        ChainBreak::LastHash { expected, found } => {
            assert_eq!(expected, log.hashes[index as usize]);
            assert_ne!(found, expected);
        }
        other => panic!("expected the last-hash check to fail, got {other:?}"),
    }
    // A verifying consumer asks the server not to hash again; one that does not verify does not.
    assert!(server.checking.load(Ordering::SeqCst) > 0);
    assert_eq!(server.not_checking.load(Ordering::SeqCst), 0);
    let unverified = read(&client, &log, 0, false, None).await.unwrap();
    assert_eq!(unverified.len() as u64, log.end());
    assert!(server.not_checking.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn a_dropped_batch_breaks_the_chain() {
    let log = Arc::new(Log::new());
    let client = serve(&log, Tamper::Drop(6)).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    assert_eq!((index, reason), (7, ChainBreak::Index { expected: 6, found: 7 }));
    // The first entry of an answer dropped: the answer starts elsewhere than asked.
    let client = serve(&log, Tamper::Drop(4)).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    assert_eq!((index, reason), (5, ChainBreak::Index { expected: 4, found: 5 }));
}

#[tokio::test]
async fn reordered_entries_break_the_chain() {
    let log = Arc::new(Log::new());
    let client = serve(&log, Tamper::Reorder(5)).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    assert_eq!((index, reason), (6, ChainBreak::Index { expected: 5, found: 6 }));
}

#[tokio::test]
async fn a_changed_prev_hash_breaks_the_chain_and_an_anchor_catches_the_first_answer() {
    let log = Arc::new(Log::new());
    let client = serve(&log, Tamper::PrevHash).await;
    let (index, _, reason) = mismatch(read(&client, &log, 0, true, None).await);
    // The first answer starts at entry 1 (the batch holding offset 0); the second is forged.
    assert_eq!(index, 1 + PAGE as u64);
    assert_eq!(reason, ChainBreak::PrevHash { expected: log.hashes[PAGE], found: ChainHash([0xab; 32]) });
    // A reader anchored at a receipt checks the first answer too (trusted on first use otherwise).
    let offset = 400;
    let holding = log.holding(offset).unwrap();
    let anchor = ChainPoint::after(holding - 1, log.hashes[holding as usize - 1]);
    let forged = ChainHash([0xcd; 32]);
    let mut reader = ChainReader::anchored(TOPIC, 0, offset, anchor);
    let mut answer = Server::new(&log, Tamper::Genuine).answer(offset, reader.from_index());
    answer.prev_chain_hash = Bytes::copy_from_slice(&forged.0);
    let err = reader
        .accept(answer.entries.clone(), &answer.prev_chain_hash, &answer.last_chain_hash, &Default::default())
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ChainMismatch { reason: ChainBreak::PrevHash { found, .. }, .. } if found == forged)
    );
    let mut trusting = ChainReader::new(TOPIC, 0, offset, true);
    // (A server forging the anchor forges the answer's last hash to match; here it sends none.)
    assert!(trusting.accept(answer.entries, &answer.prev_chain_hash, &[], &Default::default()).is_ok());
}

#[tokio::test]
async fn a_hidden_genuine_batch_breaks_the_dense_offsets() {
    let log = Arc::new(Log::new());
    let hidden = log.places[200].0;
    let client = serve(&log, Tamper::Hide(hidden)).await;
    let (index, offset, reason) = mismatch(read(&client, &log, 0, true, None).await);
    assert!(index > hidden, "found at the next visible batch: {index}");
    let base = log.places.iter().position(|p| p.0 == hidden).unwrap() as u64;
    assert_eq!(offset, base);
    assert!(matches!(reason, ChainBreak::Offset { expected, found } if expected == base && found > base));
}

#[tokio::test]
async fn a_subscription_checks_the_chain_the_same_way() {
    let log = Arc::new(Log::new());
    let (client, server) = serve_counted(&log, Tamper::Genuine).await;
    let consumer = client.consumer(consumer_config(true));
    let records: Vec<ConsumedRecord> =
        consumer.stream(TOPIC, 0, 0).take(log.end() as usize).map(Result::unwrap).collect().await;
    assert_genuine(&log, &records, 0, true);
    // The subscription asked the server not to hash again (the client checks each message).
    assert!(server.checking.load(Ordering::SeqCst) > 0);
    assert_eq!(server.not_checking.load(Ordering::SeqCst), 0);
    // An entry altered in place: the message carrying it misses its `last_chain_hash`.
    let k = *log.plain.iter().find(|&&i| (i as usize) < log.entries.len() - PAGE).unwrap();
    let client = serve(&log, Tamper::Flip(k)).await;
    let consumer = client.consumer(consumer_config(true));
    let results: Vec<Result<ConsumedRecord, ClientError>> = consumer.stream(TOPIC, 0, 0).collect().await;
    let (last, good) = results.split_last().unwrap();
    assert!(good.iter().all(Result::is_ok));
    assert!(
        matches!(last, Err(ClientError::ChainMismatch { index, reason: ChainBreak::LastHash { .. }, .. }) if *index >= k),
        "{last:?}"
    );
    let client = serve(&log, Tamper::Drop(6)).await;
    let consumer = client.consumer(consumer_config(true));
    let results: Vec<Result<ConsumedRecord, ClientError>> = consumer.stream(TOPIC, 0, 0).collect().await;
    let (last, good) = results.split_last().unwrap();
    assert!(good.iter().all(Result::is_ok));
    assert!(matches!(last, Err(ClientError::ChainMismatch { index: 7, reason: ChainBreak::Index { .. }, .. })));
}
