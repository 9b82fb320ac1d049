//! The leader side of a partition's produce path: it numbers batches and hands them to Raft in
//! order.
//!
//! A visible batch must carry the partition's next record offset and, for a producer the partition
//! knows, the producer's next sequence ([`super::partition`]). Those are decided at apply time, but
//! the leader must write them into a batch before proposing it, while earlier batches are still in
//! flight. So each local partition has one `Proposer`, which keeps a **prediction** of the state
//! the machine will have once everything this leader proposed has applied (next offset, each
//! producer's next sequence) and, under one async mutex:
//!
//! 1. makes sure the prediction is exact: after a leadership change (a new term) or after any of
//!    its proposals failed or was refused at apply, it waits until none of its proposals is in
//!    flight, runs a read-index ([`RaftGroup::ensure_linearizable`]: applies everything committed,
//!    including a new leader's blank entry, so no entry of an earlier term is pending), and takes
//!    the next offset and producer sequences from the applied machine;
//! 2. answers a pure retry (every batch of the request already written, in the producer's window)
//!    from the machine without proposing;
//! 3. lets a batch whose first sequence is ahead of its producer's predicted next sequence wait
//!    (bounded) until the batches before it are proposed, instead of refusing it: pipelined batches
//!    that arrive out of order are proposed in sequence order; past the wait it is
//!    [`ClusterError::SequenceGap`]. A producer the partition does not know yet starts at sequence
//!    0, so its batch at a later sequence waits the same way for its first (a producer pipelines
//!    from its first batch on); past the wait that one is taken at its sequence, as the partition
//!    takes any sequence from a producer it does not know (one it forgot);
//! 4. gives each batch its base offset ([`record_batch::set_base_offset`], in place) and queues it
//!    in the Raft core on the condition that the leadership it predicted for still leads
//!    ([`RaftGroup::propose`]), so a batch numbered in term T is never appended in another term.
//!
//! It then releases the lock; the request's own task awaits the commits ([`InFlight::settle`]),
//! checks every outcome against the prediction (a mismatch marks the prediction stale) and takes the
//! results, with no task hand-off in between. A request dropped before its proposals settled (a
//! timeout) leaves them to a task spawned then, so they count as in flight until they settle. The
//! apply-time checks stay the safety net: a wrongly numbered batch is hidden, never visible at a
//! wrong offset.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use shale_storage::record_batch;
use tokio::sync::{Notify, watch};

use crate::cluster::api::ClusterError;
use crate::cluster::partition::{BatchPosition, PartitionMachine};
use crate::{LeaderId, PendingWrite, RaftError, RaftGroup, WriteResult};

/// The longest a batch ahead of its producer's next sequence waits for its predecessor (less if
/// half the request timeout is shorter). Pipelined batches overtake each other by far less; a
/// predecessor that is later than this was lost or is being retried elsewhere, and the producer
/// must hear `SequenceGap` (and park the batch) well before its own deadline, not time out and
/// spend an attempt.
pub(super) const MAX_GAP_WAIT: Duration = Duration::from_secs(1);

/// One encoded batch waiting for its base offset.
#[derive(Debug)]
pub(super) struct UnplacedBatch {
    /// The encoded batch (base offset 0 until placed).
    pub bytes: Vec<u8>,
    /// Its records.
    pub record_count: u32,
    /// `(producer_id, base_sequence)` of an idempotent producer's batch.
    pub producer: Option<(u64, u64)>,
}

/// What the partition is predicted to do with a proposed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Predicted {
    /// Visible at this base offset.
    Appended { base_offset: u64 },
    /// A duplicate of a batch already proposed (a retry racing its original): hidden.
    Duplicate,
}

/// The outcome of one proposal, as the awaiting task saw it.
#[derive(Debug)]
pub(super) struct Settled {
    /// What the proposer predicted.
    pub predicted: Predicted,
    /// What Raft answered: the entry's index and the partition's apply outcome.
    pub result: Result<WriteResult, RaftError>,
}

/// What [`Proposer::propose`] did with a request.
#[derive(Debug)]
pub(super) enum Proposal {
    /// Every batch was written before: their positions, nothing proposed.
    Retry(Vec<BatchPosition>),
    /// Proposed; [`InFlight::settle`] gives one [`Settled`] per batch proposed, in order (fewer
    /// than the request's batches if queueing one failed: the last then carries the error).
    Pending(InFlight),
}

/// One request's proposals until they settle (counted in the proposer's in-flight requests until
/// then, also when the request is dropped first: see the module docs).
#[derive(Debug)]
pub(super) struct InFlight {
    proposer: Arc<Proposer>,
    /// The proposals not settled yet, in order.
    queued: VecDeque<(Predicted, PendingWrite)>,
    /// The proposal that could not be queued (the last), if one could not.
    failed: Option<(Predicted, RaftError)>,
    /// How long proposals left behind by a dropped request are awaited at most (see
    /// [`Proposer::place`]): then they settle as timed out and the prediction is stale.
    settle_by: tokio::time::Instant,
}

impl InFlight {
    /// Waits for every proposal's outcome, in order. Cancel-safe: dropped before the end, the
    /// proposals still pending are awaited by a task of their own.
    pub(super) async fn settle(mut self) -> Vec<Settled> {
        let mut settled = Vec::with_capacity(self.queued.len() + 1);
        while let Some((predicted, pending)) = self.queued.front_mut() {
            let result = pending.result().await;
            let predicted = *predicted;
            self.queued.pop_front();
            self.proposer.check(predicted, &result);
            settled.push(Settled { predicted, result });
        }
        if let Some((predicted, e)) = self.failed.take() {
            settled.push(Settled { predicted, result: Err(e) });
        }
        settled
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let proposer = self.proposer.clone();
        if self.queued.is_empty() {
            proposer.in_flight.send_modify(|n| *n -= 1);
            return;
        }
        let mut queued = std::mem::take(&mut self.queued);
        let settle_by = self.settle_by;
        let rest = async move {
            for (predicted, pending) in &mut queued {
                match tokio::time::timeout_at(settle_by, pending.result()).await {
                    Ok(result) => proposer.check(*predicted, &result),
                    Err(_) => {
                        tracing::warn!(group = %pending.group(), "a proposal did not settle in time; counted as failed");
                        proposer.stale.store(true, Ordering::Release);
                    }
                }
            }
            proposer.in_flight.send_modify(|n| *n -= 1);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(rest);
            }
            // No runtime left to wait on (it is shutting down, and the group with it): the
            // outcomes are unknown, so the prediction is.
            Err(_) => {
                self.proposer.stale.store(true, Ordering::Release);
                self.proposer.in_flight.send_modify(|n| *n -= 1);
            }
        }
    }
}

/// The state the machine is predicted to have once every proposal of this leader applied.
#[derive(Debug, Default)]
struct Prediction {
    /// The leadership the prediction was made for; `None` = resync before proposing.
    leader: Option<LeaderId>,
    /// The next record offset.
    next_offset: u64,
    /// The next sequence of each producer proposed for since the last resync (others: the
    /// machine's, as none of their batches is in flight).
    next_sequence: HashMap<u64, u64>,
}

/// Per local partition: numbers and proposes batches in order (see the module docs).
#[derive(Debug)]
pub(super) struct Proposer {
    prediction: tokio::sync::Mutex<Prediction>,
    /// Requests whose proposals are not all settled.
    in_flight: watch::Sender<usize>,
    /// Set when a proposal failed or settled other than predicted.
    stale: AtomicBool,
    /// Woken after every proposal and resync (batches waiting for their predecessor recheck).
    progress: Notify,
}

impl Proposer {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            prediction: tokio::sync::Mutex::new(Prediction::default()),
            in_flight: watch::Sender::new(0),
            stale: AtomicBool::new(false),
            progress: Notify::new(),
        })
    }

    /// Numbers and queues `batches` (one request's, consecutive sequences if it has a producer),
    /// or answers a pure retry. `timeout` is the request timeout: a batch ahead of its producer's
    /// sequence waits for its predecessor up to half of it (at most [`MAX_GAP_WAIT`]); it bounds
    /// the resync, and each proposal's wait for its outcome.
    pub(super) async fn propose(
        self: &Arc<Self>,
        group: &Arc<RaftGroup>,
        machine: &Arc<RwLock<PartitionMachine>>,
        mut batches: Vec<UnplacedBatch>,
        timeout: Duration,
    ) -> Result<Proposal, ClusterError> {
        debug_assert!(!batches.is_empty());
        let deadline = tokio::time::Instant::now() + (timeout / 2).min(MAX_GAP_WAIT);
        let first = batches[0].producer;
        let total: u64 = batches.iter().map(|b| u64::from(b.record_count)).sum();
        loop {
            let mut p = self.prediction.lock().await;
            let leader = group.leader_id()?;
            if p.leader != Some(leader) || self.stale.load(Ordering::Acquire) {
                self.resync(&mut p, leader, group, machine, timeout).await?;
            }
            let Some((producer_id, base_sequence)) = first else {
                return Ok(self.place(&mut p, leader, group, batches, None, timeout).await);
            };
            if let Some(known) = machine.read().known_retry(producer_id, base_sequence, total as usize) {
                return Ok(Proposal::Retry(known));
            }
            let expected = p
                .next_sequence
                .get(&producer_id)
                .copied()
                .or_else(|| machine.read().last_sequence(producer_id).map(|l| l + 1));
            // A batch ahead of its producer's next sequence waits (bounded) for the batches before
            // it. A producer the partition does not know starts at sequence 0, so its batch at a
            // later sequence is a pipelined one that overtook the first and waits for it too; past
            // the wait it is taken at its sequence (a producer the partition forgot: see
            // [`PartitionMachine`]), where a known producer's is refused as a gap.
            let ahead = expected.map_or(base_sequence > 0, |expected| base_sequence > expected);
            if ahead && tokio::time::Instant::now() < deadline {
                // Register for the wake-up before letting go of the lock: the proposal this batch
                // waits for may be made the moment it is released.
                let notified = self.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                drop(p);
                let _ = tokio::time::timeout_at(deadline, notified).await;
                continue;
            }
            // Past the wait a known producer's batch ahead of its sequence is refused as a gap (the
            // first batch's check below), and every batch but the first must follow its predecessor:
            // a request whose later batch would skip ahead (an overlapping retry of other batches)
            // is not proposed at all.
            let mut next = expected;
            for b in &mut batches {
                let (_, seq) = b.producer.expect("one producer per request");
                if let Some(n) = next
                    && seq > n
                {
                    return Err(ClusterError::SequenceGap { producer_id, sequence: seq, expected: n });
                }
                let end = seq + u64::from(b.record_count);
                next = Some(next.map_or(end, |n| n.max(end)));
            }
            return Ok(self.place(&mut p, leader, group, batches, expected, timeout).await);
        }
    }

    /// Makes the prediction exact for `leader` (see the module docs, step 1).
    async fn resync(
        &self,
        p: &mut Prediction,
        leader: LeaderId,
        group: &Arc<RaftGroup>,
        machine: &Arc<RwLock<PartitionMachine>>,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        p.leader = None;
        let started = std::time::Instant::now();
        let timed_out = |what: &str| ClusterError::Timeout { what: what.into(), waited_ms: timeout.as_millis() as u64 };
        let mut in_flight = self.in_flight.subscribe();
        tokio::time::timeout(timeout, in_flight.wait_for(|n| *n == 0))
            .await
            .map_err(|_| {
                tracing::warn!(group = %group.id(), in_flight = *self.in_flight.borrow(), "in-flight proposals did not settle");
                timed_out("in-flight proposals to settle")
            })?
            .map_err(|_| ClusterError::Shutdown)?;
        // Cleared before the read: a proposal failing from here on is this prediction's.
        self.stale.store(false, Ordering::Release);
        tokio::time::timeout(timeout, group.ensure_linearizable())
            .await
            .map_err(|_| timed_out("partition read-index"))??;
        p.next_offset = machine.read().next_offset();
        p.next_sequence.clear();
        p.leader = Some(leader);
        if started.elapsed() >= Duration::from_millis(500) {
            tracing::warn!(group = %group.id(), took_ms = started.elapsed().as_millis() as u64, "slow proposer resync");
        }
        self.progress.notify_waiters();
        Ok(())
    }

    /// Numbers and queues the batches (steps 4); `expected` is the producer's predicted next
    /// sequence (`None`: unknown producer, or no producer).
    ///
    /// The request awaits its proposals' outcomes for at most its timeout; proposals it leaves
    /// behind are awaited until twice `timeout` after they were queued: openraft resolves every
    /// queued write (committed, truncated, purged or shut down), but should one never resolve, the
    /// proposer must not wait for it forever (every later resync waits until nothing is in
    /// flight). Such a proposal counts as failed and marks the prediction stale; if it is applied
    /// after all, the apply-time checks hide whatever it makes misnumbered.
    async fn place(
        self: &Arc<Self>,
        p: &mut Prediction,
        leader: LeaderId,
        group: &Arc<RaftGroup>,
        batches: Vec<UnplacedBatch>,
        mut expected: Option<u64>,
        timeout: Duration,
    ) -> Proposal {
        let mut queued = VecDeque::with_capacity(batches.len());
        let mut failed = None;
        for mut b in batches {
            let predicted = match (b.producer, expected) {
                (Some((_, seq)), Some(e)) if seq < e => Predicted::Duplicate,
                _ => Predicted::Appended { base_offset: p.next_offset },
            };
            record_batch::set_base_offset(&mut b.bytes, p.next_offset);
            match group.propose(Bytes::from(b.bytes), leader).await {
                Ok(pending) => queued.push_back((predicted, pending)),
                Err(e) => {
                    failed = Some((predicted, e));
                    break;
                }
            }
            if let Predicted::Appended { .. } = predicted {
                p.next_offset += u64::from(b.record_count);
                if let Some((producer_id, seq)) = b.producer {
                    let next = seq + u64::from(b.record_count);
                    p.next_sequence.insert(producer_id, next);
                    expected = Some(next);
                }
            }
        }
        if failed.is_some() {
            self.stale.store(true, Ordering::Release);
        }
        self.progress.notify_waiters();
        self.in_flight.send_modify(|n| *n += 1);
        Proposal::Pending(InFlight {
            proposer: self.clone(),
            queued,
            failed,
            settle_by: tokio::time::Instant::now() + 2 * timeout,
        })
    }

    /// Marks the prediction stale if a settled proposal did other than predicted.
    fn check(&self, predicted: Predicted, result: &Result<WriteResult, RaftError>) {
        if !as_predicted(predicted, result) {
            self.stale.store(true, Ordering::Release);
        }
    }
}

/// Whether a settled proposal did what was predicted (an undecodable response counts as not).
fn as_predicted(predicted: Predicted, result: &Result<WriteResult, RaftError>) -> bool {
    use crate::cluster::partition::ApplyOutcome;
    let Ok(written) = result else { return false };
    match (predicted, ApplyOutcome::decode(&written.response)) {
        (Predicted::Appended { base_offset }, Ok(ApplyOutcome::Appended { base_offset: b, .. })) => b == base_offset,
        (Predicted::Duplicate, Ok(ApplyOutcome::Duplicate { .. })) => true,
        _ => false,
    }
}
