//! The offset search of online verification: where replicas stop agreeing.
//!
//! Chain hashes make disagreement monotone: once two replicas hold different records, every later
//! chain hash differs too. A binary search over offsets therefore finds the first offset where
//! they part with O(log n) probes. A sweep re-reads the whole range in pieces instead.

use std::future::Future;

/// The pieces a sweep of `[lo, hi]` re-reads, one request each: `[a, b]` (inclusive) of at most
/// `step` records, contiguous and ascending, the last ending at `hi`.
pub fn sweep_pieces(lo: u64, hi: u64, step: u64) -> Vec<(u64, u64)> {
    debug_assert!(step > 0, "step is validated by clap");
    let mut pieces = Vec::new();
    let mut a = lo;
    while a <= hi {
        let b = a.saturating_add(step - 1).min(hi);
        pieces.push((a, b));
        match b.checked_add(1) {
            Some(next) => a = next,
            None => break,
        }
    }
    pieces
}

/// The smallest offset in `[lo, hi]` where `agrees` is false, given that it is false at `hi`
/// (not checked again) and monotone (true up to some offset, false after). Returns that offset
/// and what the probe there answered (`None` when `hi` itself is the answer and was not re-probed).
pub async fn first_disagreement<T, E, F, Fut>(lo: u64, hi: u64, mut probe: F) -> Result<(u64, Option<T>), E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(bool, T), E>>,
{
    debug_assert!(lo <= hi);
    let (mut lo, mut hi) = (lo, hi);
    let mut at_hi: Option<T> = None;
    // Invariant: disagreement at hi; agreement everywhere below the original lo is not assumed.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (agrees, answer) = probe(mid).await?;
        if agrees {
            lo = mid + 1;
        } else {
            hi = mid;
            at_hi = Some(answer);
        }
    }
    Ok((hi, at_hi))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn sweep_pieces_cover_the_range_once() {
        assert_eq!(sweep_pieces(0, 200, 64), vec![(0, 63), (64, 127), (128, 191), (192, 200)]);
        assert_eq!(sweep_pieces(64, 127, 64), vec![(64, 127)]);
        assert_eq!(sweep_pieces(5, 10, 64), vec![(5, 10)]);
        assert_eq!(sweep_pieces(0, 3, 1), vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert_eq!(sweep_pieces(7, 7, 3), vec![(7, 7)]);
        assert!(sweep_pieces(10, 5, 64).is_empty());
        assert_eq!(sweep_pieces(u64::MAX - 2, u64::MAX, 64), vec![(u64::MAX - 2, u64::MAX)]);
    }

    fn search(lo: u64, hi: u64, first_bad: u64) -> (u64, u32) {
        let probes = Cell::new(0u32);
        let r = futures::executor::block_on(first_disagreement::<u64, (), _, _>(lo, hi, |o| {
            probes.set(probes.get() + 1);
            async move { Ok((o < first_bad, o)) }
        }))
        .unwrap();
        if let Some(answer) = r.1 {
            assert_eq!(answer, r.0, "the answer returned is the probe at the offset found");
        }
        (r.0, probes.get())
    }

    #[test]
    fn binary_search_finds_the_first_bad_offset_in_log_probes() {
        for first_bad in [0u64, 1, 2, 37, 500, 999, 1000] {
            let (found, probes) = search(0, 1000, first_bad);
            assert_eq!(found, first_bad);
            assert!(probes <= 10, "{probes} probes for 1001 offsets");
        }
        assert_eq!(search(7, 7, 7), (7, 0));
        assert_eq!(search(10, 20, 3).0, 10, "bad from before lo: lo is the first bad offset seen");
    }
}
