//! Many groups' replication over one call per peer: the sending side of the `Multiplex` RPC.
//!
//! A replication session (openraft's `stream_append` for one group and one follower) used to be an
//! HTTP/2 stream of its own: every AppendEntries was one stream message (one frame, one wake-up of
//! the connection and of the stream's handler on each side), and with hundreds of partitions
//! written at once the nodes spent about a third of their CPU in the connections (issue 15). Here
//! every session to a peer shares one long-lived bidirectional call ([`Call`]): a session's
//! requests go into the call's queue, and each message of the call carries whatever the queue
//! holds when the connection is ready for the next one, so the more groups are busy, the more
//! AppendEntries share a message. The peer answers the same way (`crate::server`), one session's
//! answers in the order of its requests.
//!
//! A session is numbered by the sender (ids are never reused within a call) and starts with its first
//! request (marked `open`: sessions' first items may reach the call's queue in any order). It ends when
//! openraft drops it (the sender queues an `end` item; the receiver finishes the session's
//! pipeline), or when the receiver ends it (an `end` item with a status: the group stopped, a
//! request was refused, ...). A call that fails (the connection broke, the peer stopped) ends
//! every session on it with its status, and the next session opens a new call.
//!
//! Flow control is per session: at most [`SESSION_IN_FLIGHT`] requests may be unanswered, so one
//! slow follower group cannot fill the call's queue or the peer's memory (the receiver ends a
//! session that sends more with `RESOURCE_EXHAUSTED`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;
use tonic::transport::Channel;

use crate::network::pb::{self, raft_service_client::RaftServiceClient};

/// Most requests of one session that may wait for their answers (the receiver's own pipeline per
/// session holds 64: openraft's `stream_append` buffer).
pub const SESSION_IN_FLIGHT: usize = 64;

/// Most requests a receiver keeps queued for one session before it ends the session with
/// `RESOURCE_EXHAUSTED` (twice what a sender that keeps [`SESSION_IN_FLIGHT`] can have queued).
pub const SESSION_QUEUE_LIMIT: u64 = 2 * SESSION_IN_FLIGHT as u64;

/// Most items one message of a multiplexed call carries.
pub const MAX_ITEMS_PER_MESSAGE: usize = 1024;

/// Entry bytes after which a message takes no further request (a single larger request still goes,
/// alone).
pub const MAX_MESSAGE_ENTRY_BYTES: usize = 4 << 20;

/// Requests (and session ends) a call queues before its sessions wait.
const CALL_QUEUE: usize = 4096;

/// Turns a queue into a stream of batches: each batch is everything queued when it is taken (at
/// least one item, at most `max_items`, and no more once `max_bytes` of `size` is reached).
pub(crate) fn batches<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
    max_items: usize,
    max_bytes: usize,
    size: fn(&T) -> usize,
) -> impl Stream<Item = Vec<T>> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| async move {
        let first = rx.recv().await?;
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < max_items && bytes < max_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += size(&item);
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        Some((batch, rx))
    })
}

/// The entry bytes a session request carries (what [`MAX_MESSAGE_ENTRY_BYTES`] counts).
fn request_bytes(item: &pb::SessionRequest) -> usize {
    item.append.as_ref().map_or(0, |a| a.entries.iter().map(bytes::Bytes::len).sum())
}

/// What a session hears from the peer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The answer to its next request.
    Append(pb::AppendEntriesResponse),
    /// The peer ended the session normally: no more answers.
    Ended,
    /// The session, or the whole call, failed.
    Failed(Status),
}

/// The sessions of one call that still wait for answers, by id.
#[derive(Debug, Default)]
struct Routes {
    sessions: HashMap<u64, mpsc::UnboundedSender<Answer>>,
    /// The call failed or ended: it takes no new session.
    over: bool,
    /// The id of the last session opened (ids start at 1).
    last_session: u64,
}

/// The shared part of a call: what its reader task and its sessions both need.
#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<Routes>,
}

impl Shared {
    /// Hands every item of a message to its session; answers of sessions no longer here (given
    /// up by this side) are dropped.
    fn route(&self, message: pb::MultiplexResponse) {
        let mut routes = self.routes.lock();
        for item in message.items {
            let tx = routes.sessions.get(&item.session);
            // An answer first; an item may carry both (the answer to a `once` request and its end).
            if let (Some(append), Some(tx)) = (&item.append, tx) {
                let _ = tx.send(Answer::Append(*append));
            }
            let end = match item.end {
                Some(end) if end.code == 0 => Answer::Ended,
                Some(end) => Answer::Failed(Status::new(tonic::Code::from_i32(end.code), end.message)),
                None if item.append.is_some() => continue,
                None => Answer::Failed(Status::internal("the peer sent a session item with neither answer nor end")),
            };
            if let Some(tx) = routes.sessions.remove(&item.session) {
                let _ = tx.send(end);
            }
        }
    }

    /// The call is over: every session on it fails with `status`.
    fn fail_all(&self, status: &Status) {
        let mut routes = self.routes.lock();
        routes.over = true;
        for (_, tx) in routes.sessions.drain() {
            let _ = tx.send(Answer::Failed(status.clone()));
        }
    }
}

/// One `Multiplex` call to a peer. The call's requests end (and the peer then ends the call) once
/// nothing holds it any more: the cache in [`Multiplexer`] and every open session.
#[derive(Debug)]
pub(crate) struct Call {
    requests: mpsc::Sender<pb::SessionRequest>,
    shared: Arc<Shared>,
    /// `Peers::tls_generation` when the call was made.
    tls_generation: u64,
}

impl Call {
    /// Opens a call on `client`; `limit` bounds the wait for the peer to accept it.
    /// Every message sent is counted in `messages`.
    fn open(
        mut client: RaftServiceClient<Channel>,
        limit: Duration,
        tls_generation: u64,
        messages: Arc<AtomicU64>,
    ) -> Arc<Call> {
        let (requests, rx) = mpsc::channel(CALL_QUEUE);
        let shared = Arc::new(Shared::default());
        let reader = shared.clone();
        let messages = batches(rx, MAX_ITEMS_PER_MESSAGE, MAX_MESSAGE_ENTRY_BYTES, request_bytes).map(move |items| {
            messages.fetch_add(1, Ordering::Relaxed);
            pb::MultiplexRequest { items }
        });
        tokio::spawn(async move {
            let status = match tokio::time::timeout(limit, client.multiplex(messages)).await {
                Ok(Ok(response)) => {
                    let mut answers = response.into_inner();
                    loop {
                        match answers.next().await {
                            Some(Ok(message)) => reader.route(message),
                            Some(Err(status)) => break status,
                            None => break Status::unavailable("the peer ended the multiplexed call"),
                        }
                    }
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "the peer did not accept the multiplexed call within {} ms",
                    limit.as_millis()
                )),
            };
            reader.fail_all(&status);
        });
        Arc::new(Call { requests, shared, tls_generation })
    }

    /// A new session on this call, or `None` if the call is over.
    fn session(self: &Arc<Self>) -> Option<Session> {
        let (tx, answers) = mpsc::unbounded_channel();
        let id = {
            let mut routes = self.shared.routes.lock();
            if routes.over {
                return None;
            }
            routes.last_session += 1;
            let id = routes.last_session;
            routes.sessions.insert(id, tx);
            id
        };
        Some(Session {
            call: self.clone(),
            id,
            answers: Some(answers),
            credit: Arc::new(Semaphore::new(SESSION_IN_FLIGHT)),
        })
    }
}

/// One replication session on a call: where its requests go, where its answers come from.
#[derive(Debug)]
pub(crate) struct Session {
    call: Arc<Call>,
    id: u64,
    answers: Option<mpsc::UnboundedReceiver<Answer>>,
    /// One permit per request that may still be sent unanswered ([`SESSION_IN_FLIGHT`]).
    credit: Arc<Semaphore>,
}

impl Session {
    /// Sends `requests` on the call as credit allows, then the session's end. Runs until
    /// `requests` ends or the session is dropped (its credit is closed then).
    pub(crate) fn send_all<S>(&self, requests: S) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: Stream<Item = pb::AppendEntriesRequest> + Send + 'static,
    {
        let call = self.call.requests.clone();
        let credit = self.credit.clone();
        let session = self.id;
        async move {
            let mut requests = std::pin::pin!(requests);
            let mut open = true;
            loop {
                // Closed when the session is dropped: nothing more is pulled.
                let Ok(permit) = credit.acquire().await else { break };
                let Some(append) = requests.next().await else { break };
                permit.forget();
                let item = pb::SessionRequest { session, append: Some(append), end: false, open, once: false };
                open = false;
                if call.send(item).await.is_err() {
                    return;
                }
            }
            if !open {
                let _ =
                    call.send(pb::SessionRequest { session, append: None, end: true, open: false, once: false }).await;
            }
        }
    }

    /// The session's answers, in the order of its requests. `sent` counts the requests sent: when
    /// some are unanswered and no answer at all comes for `limit`, the stream ends with
    /// `DEADLINE_EXCEEDED` (openraft then sends those entries again, and a follower that answers
    /// heartbeats but never its entries cannot hold the leader's retention forever).
    pub(crate) fn answers(
        &mut self,
        sent: Arc<AtomicU64>,
        limit: Duration,
    ) -> impl Stream<Item = Result<pb::AppendEntriesResponse, Status>> + Send + 'static {
        let answers = self.answers.take().expect("a session's answers are taken once");
        let credit = self.credit.clone();
        futures::stream::unfold(Some((answers, 0u64)), move |state| {
            let credit = credit.clone();
            let sent = sent.clone();
            async move {
                let (mut answers, mut answered) = state?;
                loop {
                    // Requests already sent when this wait began, if still unanswered when it ends, stalled.
                    let waiting = sent.load(Ordering::Relaxed) > answered;
                    tokio::select! {
                        answer = answers.recv() => return match answer? {
                            Answer::Append(r) => {
                                answered += 1;
                                credit.add_permits(1);
                                Some((Ok(r), Some((answers, answered))))
                            }
                            Answer::Ended => None,
                            Answer::Failed(status) => Some((Err(status), None)),
                        },
                        () = tokio::time::sleep(limit) => if waiting {
                            let stalled = Status::deadline_exceeded(format!(
                                "the peer answered none of {} outstanding AppendEntries within {} ms",
                                sent.load(Ordering::Relaxed) - answered,
                                limit.as_millis()
                            ));
                            return Some((Err(stalled), None));
                        },
                    }
                }
            }
        })
    }

    /// Sends `request` as the session's only request (`once`: the peer answers it as a unary
    /// AppendEntries and keeps no session) and waits for its answer, at most `limit`.
    pub(crate) async fn once(
        mut self,
        request: pb::AppendEntriesRequest,
        limit: Duration,
    ) -> Result<pb::AppendEntriesResponse, Status> {
        let mut answers = self.answers.take().expect("a session's answers are taken once");
        let item = pb::SessionRequest { session: self.id, append: Some(request), end: false, open: true, once: true };
        let exchange = async {
            self.call.requests.send(item).await.map_err(|_| Status::unavailable("the multiplexed call is over"))?;
            match answers.recv().await {
                Some(Answer::Append(r)) => Ok(r),
                Some(Answer::Failed(status)) => Err(status),
                Some(Answer::Ended) => Err(Status::internal("the peer ended a once request without an answer")),
                None => Err(Status::unavailable("the multiplexed call is over")),
            }
        };
        tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!("no answer to a lone AppendEntries within {} ms", limit.as_millis())))
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Stops the session's sender at its next pull, which then queues the session's end.
        self.credit.close();
        self.call.shared.routes.lock().sessions.remove(&self.id);
    }
}

/// The node's multiplexed calls, one per peer address.
#[derive(Debug)]
pub(crate) struct Multiplexer {
    calls: Mutex<HashMap<String, Arc<Call>>>,
    /// Messages sent on every call (`SentCounters::multiplexed_messages`).
    messages: Arc<AtomicU64>,
}

impl Multiplexer {
    /// No calls yet; messages will be counted in `messages`.
    pub(crate) fn new(messages: Arc<AtomicU64>) -> Self {
        Self { calls: Mutex::new(HashMap::new()), messages }
    }

    /// A new session to the peer at `addr`, on its current call, or on a new call made with
    /// `client` if there is none, it is over, or it was made under other certificates.
    pub(crate) fn session(
        &self,
        addr: &str,
        client: &RaftServiceClient<Channel>,
        limit: Duration,
        tls_generation: u64,
    ) -> Session {
        let mut calls = self.calls.lock();
        if let Some(call) = calls.get(addr)
            && call.tls_generation == tls_generation
            && let Some(session) = call.session()
        {
            return session;
        }
        let call = Call::open(client.clone(), limit, tls_generation, self.messages.clone());
        let session = call.session().expect("a call just opened takes sessions");
        calls.insert(addr.to_string(), call);
        session
    }

    /// Forgets every call: the next session to each peer opens a new one (after a certificate
    /// reload). Calls in use carry on until their sessions end.
    pub(crate) fn clear(&self) {
        self.calls.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_its_limits() {
        let (tx, rx) = mpsc::channel(16);
        for n in [1usize, 2, 3, 4, 5] {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let out: Vec<Vec<usize>> = batches(rx, 2, usize::MAX, |_| 0).collect().await;
        assert_eq!(out, vec![vec![1, 2], vec![3, 4], vec![5]], "at most two items each");

        let (tx, rx) = mpsc::channel(16);
        for n in [3usize, 4, 10, 1] {
            tx.send(n).await.unwrap();
        }
        drop(tx);
        let out: Vec<Vec<usize>> = batches(rx, 100, 5, |n| *n).collect().await;
        assert_eq!(out, vec![vec![3, 4], vec![10], vec![1]], "no more once the byte bound is reached");
    }

    #[tokio::test]
    async fn answers_go_to_their_sessions_and_a_failed_call_fails_every_session() {
        let shared = Shared::default();
        let (a_tx, mut a) = mpsc::unbounded_channel();
        let (b_tx, mut b) = mpsc::unbounded_channel();
        shared.routes.lock().sessions.insert(1, a_tx);
        shared.routes.lock().sessions.insert(2, b_tx);
        let ok = pb::AppendEntriesResponse::default();
        shared.route(pb::MultiplexResponse {
            items: vec![
                pb::SessionResponse { session: 2, append: Some(ok), end: None },
                pb::SessionResponse { session: 1, append: Some(ok), end: None },
                pb::SessionResponse { session: 2, append: None, end: Some(pb::SessionEnd::default()) },
                pb::SessionResponse { session: 7, append: Some(ok), end: None },
            ],
        });
        assert!(matches!(a.try_recv(), Ok(Answer::Append(_))));
        assert!(matches!(b.try_recv(), Ok(Answer::Append(_))));
        assert!(matches!(b.try_recv(), Ok(Answer::Ended)), "a normal end");
        assert!(!shared.routes.lock().sessions.contains_key(&2), "an ended session is forgotten");

        let (c_tx, mut c) = mpsc::unbounded_channel();
        shared.routes.lock().sessions.insert(3, c_tx);
        let not_found = pb::SessionEnd { code: tonic::Code::NotFound as i32, message: "group 9 is not running".into() };
        shared.route(pb::MultiplexResponse {
            items: vec![pb::SessionResponse { session: 3, append: None, end: Some(not_found) }],
        });
        assert!(matches!(c.try_recv(), Ok(Answer::Failed(s)) if s.code() == tonic::Code::NotFound));
        assert!(shared.routes.lock().sessions.contains_key(&1), "the other sessions carry on");

        // The answer to a `once` request carries its end too: the answer is delivered, then the end.
        let (d_tx, mut d) = mpsc::unbounded_channel();
        shared.routes.lock().sessions.insert(4, d_tx);
        shared.route(pb::MultiplexResponse {
            items: vec![pb::SessionResponse { session: 4, append: Some(ok), end: Some(pb::SessionEnd::default()) }],
        });
        assert!(matches!(d.try_recv(), Ok(Answer::Append(_))), "the answer first");
        assert!(matches!(d.try_recv(), Ok(Answer::Ended)), "then the end");
        assert!(!shared.routes.lock().sessions.contains_key(&4), "a once session is forgotten with its answer");
        assert!(!shared.routes.lock().over, "a session's failure keeps the call");
        shared.fail_all(&Status::unavailable("connection lost"));
        assert!(matches!(a.try_recv(), Ok(Answer::Failed(s)) if s.code() == tonic::Code::Unavailable));
        assert!(shared.routes.lock().over, "a failed call takes no new session");
    }
}
