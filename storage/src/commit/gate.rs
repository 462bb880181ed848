//! Who commits: the committer thread, or a lone writer on its own thread. The writer
//! says which it is ([`Lane`]); nothing here looks at which task or thread calls.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::ops::Lane;
use super::{send_answers, CommitRequest, Committer};
use crate::inner::Inner;

/// Who commits: the committer thread, or a writer committing its own request on its own
/// thread.
///
/// A writer alone commits in place: that saves the hand-off to the committer thread and
/// the wake-up back, two cross-thread wake-ups that cost a lone publish more than its own
/// work (on a virtual machine, a wake-up of an idle vCPU can take tens of µs). Alone
/// means: it asked for [`Lane::Alone`], its last [`ALONE_AFTER`] requests before this one
/// came from it too, the last group commit held one request, nothing is queued, and the
/// committer is between batches. Writers that overlap go through the queue and share one
/// fsync; committing one of them in place would hold a runtime worker through an fsync
/// while the others wait behind it.
#[derive(Debug, Default)]
pub(crate) struct CommitGate {
    /// Held by whoever commits.
    pub(crate) turn: parking_lot::Mutex<()>,
    /// Requests handed to the queue, and of those how many are committed: a writer
    /// commits in place only when the two are equal, so it never overtakes a queued one.
    queued: AtomicU64,
    done: AtomicU64,
    /// Requests in the last group commit.
    last_batch: AtomicUsize,
    /// Who made the last request ([`WriterId::key`], 0 for a queued one), and how many
    /// requests in a row before it came from the same writer.
    last_writer: AtomicU64,
    run: AtomicU32,
}

/// Requests in a row from one writer before it counts as alone.
const ALONE_AFTER: u32 = 2;

impl CommitGate {
    /// Counts a request about to be queued.
    pub(crate) fn queueing(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a queued request that will never be committed (its queue closed).
    pub(crate) fn unqueued(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts the `taken` requests the committer thread took from the queue as committed.
    pub(super) fn committed(&self, taken: usize) {
        self.last_batch.store(taken, Ordering::Relaxed);
        self.done.fetch_add(taken as u64, Ordering::SeqCst);
    }

    /// Notes who makes a request; true if it is a writer alone whose [`ALONE_AFTER`]
    /// requests before this one were its own.
    pub(crate) fn same_writer(&self, lane: Lane) -> bool {
        let me = match lane {
            Lane::Queued => 0,
            Lane::Alone(writer) => writer.key(),
        };
        let before = self.last_writer.swap(me, Ordering::Relaxed);
        if me != 0 && before == me {
            self.run.fetch_add(1, Ordering::Relaxed) >= ALONE_AFTER - 1
        } else {
            self.run.store(0, Ordering::Relaxed);
            false
        }
    }
}

/// Commits `req` on this thread if its writer is alone (see [`CommitGate`]); gives it back
/// otherwise, to be queued.
pub(crate) fn commit_in_place(
    inner: &Arc<Inner>,
    gate: &CommitGate,
    req: CommitRequest,
) -> std::result::Result<(), CommitRequest> {
    if !gate.same_writer(req.commit.lane)
        || req.is_catalog()
        || gate.last_batch.load(Ordering::Relaxed) > 1
    {
        return Err(req);
    }
    let Some(turn) = gate.turn.try_lock() else {
        return Err(req);
    };
    if gate.queued.load(Ordering::SeqCst) != gate.done.load(Ordering::SeqCst) {
        return Err(req);
    }
    let mut answers = Vec::with_capacity(1);
    Committer {
        inner: inner.clone(),
    }
    .commit_data(vec![req], &mut answers);
    gate.last_batch.store(1, Ordering::Relaxed);
    inner.stats.commits_in_place.fetch_add(1, Ordering::Relaxed);
    drop(turn);
    send_answers(answers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::WriterId;

    #[test]
    fn only_a_named_writer_after_a_run_of_its_own_counts_as_alone() {
        let gate = CommitGate::default();
        let a = Lane::Alone(WriterId::Session(7));
        let b = Lane::Alone(WriterId::Session(8));
        assert!(!gate.same_writer(a));
        assert!(!gate.same_writer(a), "one request before is not a run");
        assert!(gate.same_writer(a));
        assert!(gate.same_writer(a));
        // Another writer breaks the run, and so does a queued request.
        assert!(!gate.same_writer(b));
        assert!(!gate.same_writer(a));
        assert!(!gate.same_writer(a));
        assert!(gate.same_writer(a));
        assert!(!gate.same_writer(Lane::Queued));
        assert!(!gate.same_writer(a));
        // Queued requests never count as alone, however many in a row.
        for _ in 0..5 {
            assert!(!gate.same_writer(Lane::Queued));
        }
        // A group's log and its state machine are two writers; so are two groups.
        let log = Lane::Alone(WriterId::RaftLog(3));
        assert!(!gate.same_writer(log));
        assert!(!gate.same_writer(log));
        assert!(!gate.same_writer(Lane::Alone(WriterId::RaftApply(3))));
        assert!(!gate.same_writer(log));
        assert!(!gate.same_writer(Lane::Alone(WriterId::RaftLog(4))));
    }
}
