//! Holding back commit notices: entry-less AppendEntries that only tell a follower a newer commit
//! index.
//!
//! openraft's replication stream sends such a request to every follower each time the leader's
//! commit index moves while no new entry is waiting to be sent, which is every batch of a
//! partition written to now and then: with hundreds of partitions each batch was followed, on
//! each follower, by a second message (a second wake-up of the transport, the follower's group
//! and the leader's, and a second answer) that carried nothing but the commit index (issue 15).
//!
//! [`CommitNotices`] sits in a replication session's request stream and holds such a notice back
//! for up to `delay`: if the session's next request comes first, the notice is dropped, since
//! every request carries the newest commit index the leader has (openraft reads it when it builds
//! the request), so the next one says at least as much. Otherwise the notice goes when `delay`
//! ends. No request with entries, no probe and no first request of a session is ever held.
//!
//! What this changes is only when a follower learns that entries it holds are committed: never
//! what is committed or when the leader acknowledges a write (a leader commits on its followers'
//! answers to the entries, not to notices). A follower applies, and serves reads of, a batch at
//! most `delay` later than before when the partition is idle. openraft needs no answer per
//! request: it matches answers to what it sent by log id, and the next answer covers a dropped
//! notice.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;

use crate::types::{LogId, TypeConfig};

/// A replication session's requests, with its commit notices held back (see the module docs).
pub(crate) struct CommitNotices<S> {
    input: S,
    delay: Duration,
    /// The last log id of the last request passed on; `None` before the first.
    sent_up_to: Option<Option<LogId>>,
    /// The newest commit notice held back, and when it goes at the latest.
    held: Option<AppendEntriesRequest<TypeConfig>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    input_ended: bool,
}

impl<S> CommitNotices<S> {
    /// `input`'s requests, holding each commit notice back up to `delay`.
    pub(crate) fn new(input: S, delay: Duration) -> Self {
        Self {
            input,
            delay,
            sent_up_to: None,
            held: None,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            input_ended: false,
        }
    }

    /// An entry-less request right after one that ended where it starts: it carries nothing but
    /// its commit index (a probe starts a session, or follows a refusal somewhere else).
    fn is_commit_notice(&self, r: &AppendEntriesRequest<TypeConfig>) -> bool {
        !self.delay.is_zero() && r.entries.is_empty() && self.sent_up_to == Some(r.prev_log_id)
    }
}

/// The last log id a request covers.
fn last_log_id(r: &AppendEntriesRequest<TypeConfig>) -> Option<LogId> {
    r.entries.last().map(|e| e.log_id).or(r.prev_log_id)
}

impl<S> Stream for CommitNotices<S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    type Item = AppendEntriesRequest<TypeConfig>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.input_ended {
            match this.input.poll_next_unpin(cx) {
                Poll::Ready(Some(r)) if this.is_commit_notice(&r) => {
                    if this.held.is_none() {
                        this.deadline.as_mut().reset(tokio::time::Instant::now() + this.delay);
                    }
                    // A newer notice replaces the one held (and keeps its deadline).
                    this.held = Some(r);
                }
                Poll::Ready(Some(r)) => {
                    // It carries a commit index at least as new as any notice held.
                    debug_assert!(this.held.as_ref().is_none_or(|h| h.leader_commit <= r.leader_commit));
                    this.held = None;
                    this.sent_up_to = Some(last_log_id(&r));
                    return Poll::Ready(Some(r));
                }
                Poll::Ready(None) => this.input_ended = true,
                Poll::Pending => break,
            }
        }
        if this.held.is_some() && (this.input_ended || this.deadline.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(this.held.take());
        }
        if this.input_ended && this.held.is_none() { Poll::Ready(None) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;
    use crate::types::{Entry, Vote};

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 1, node_id: 1 }, index)
    }

    fn request(prev: u64, entries: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            entries: (prev + 1..=prev + entries).map(|i| Entry::new_blank(log_id(i))).collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    fn shape(r: &AppendEntriesRequest<TypeConfig>) -> (u64, usize, u64) {
        (r.prev_log_id.unwrap().index(), r.entries.len(), r.leader_commit.unwrap().index())
    }

    #[tokio::test]
    async fn a_notice_followed_by_a_request_is_dropped_and_a_lone_one_goes_after_the_delay() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let delay = Duration::from_millis(100);
        let mut out = CommitNotices::new(rx, delay);
        // Probe first: never held, though entry-less.
        tx.unbounded_send(request(4, 0, 4)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (4, 0, 4));
        tx.unbounded_send(request(4, 2, 4)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (4, 2, 4));
        // Entries 5..=6 committed: a notice, then a second one, then entries 7..=7.
        tx.unbounded_send(request(6, 0, 5)).unwrap();
        tx.unbounded_send(request(6, 0, 6)).unwrap();
        tx.unbounded_send(request(6, 1, 6)).unwrap();
        let next = out.next().await.unwrap();
        assert_eq!(shape(&next), (6, 1, 6), "the notices gave way to the request carrying their commit");
        // Entry 7 committed and nothing follows: the notice goes once the delay is over.
        tx.unbounded_send(request(7, 0, 7)).unwrap();
        let started = std::time::Instant::now();
        let notice = out.next().await.unwrap();
        assert_eq!(shape(&notice), (7, 0, 7));
        assert!(started.elapsed() >= delay, "held for the delay, went after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_held_notice_goes_when_the_session_ends_and_a_probe_is_never_held() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut out = CommitNotices::new(rx, Duration::from_secs(3600));
        tx.unbounded_send(request(1, 1, 1)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (1, 1, 1));
        // Entry-less but not where the last request ended: a probe, passed on at once.
        tx.unbounded_send(request(0, 0, 1)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (0, 0, 1));
        tx.unbounded_send(request(0, 2, 1)).unwrap();
        assert_eq!(shape(&out.next().await.unwrap()), (0, 2, 1));
        tx.unbounded_send(request(2, 0, 2)).unwrap();
        drop(tx);
        let next = tokio::time::timeout(Duration::from_secs(60), out.next()).await;
        let notice = next.expect("a held notice goes as soon as the session's requests end").unwrap();
        assert_eq!(shape(&notice), (2, 0, 2), "the notice is not lost with the session");
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn with_no_delay_nothing_is_held() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut out = CommitNotices::new(rx, Duration::ZERO);
        for r in [request(1, 1, 1), request(2, 0, 2), request(2, 0, 2), request(2, 1, 2)] {
            tx.unbounded_send(r).unwrap();
        }
        let mut shapes = Vec::new();
        for _ in 0..4 {
            shapes.push(shape(&out.next().await.unwrap()));
        }
        assert_eq!(shapes, [(1, 1, 1), (2, 0, 2), (2, 0, 2), (2, 1, 2)]);
    }
}
