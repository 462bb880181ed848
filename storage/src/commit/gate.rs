//! Who commits: the committer thread, or a lone writer on its own thread.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{send_answers, CommitRequest, Committer};
use crate::inner::Inner;

/// Who commits: the committer thread, or a writer committing its own request on its own
/// thread.
///
/// A writer alone commits in place: that saves the hand-off to the committer thread and
/// the wake-up back, two cross-thread wake-ups that cost a lone publish more than its own
/// work (on a virtual machine, a wake-up of an idle vCPU can take tens of µs). Alone
/// means: its last [`ALONE_AFTER`] requests before this one came from it too (the same
/// tokio task, say one connection), the last group commit held one request, nothing is
/// queued, and the committer is between batches. Writers that overlap go through the
/// queue and share one fsync; committing one of them in place would hold a runtime worker
/// through an fsync while the others wait behind it.
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
    /// Who made the last request (a hash of its tokio task id, or of its thread outside a
    /// task), and how many requests in a row before it came from the same writer.
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

    /// Notes who makes a request; true if the same writer made the [`ALONE_AFTER`] before.
    pub(crate) fn same_writer(&self) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let me = match tokio::task::try_id() {
            Some(task) => hasher.hash_one(task) | 1,
            // Outside a task (a runtime's `block_on`, a thread of its own): the thread.
            None => hasher.hash_one(std::thread::current().id()) & !1,
        };
        let before = self.last_writer.swap(me, Ordering::Relaxed);
        if before == me {
            self.run.fetch_add(1, Ordering::Relaxed) >= ALONE_AFTER - 1
        } else {
            self.run.store(0, Ordering::Relaxed);
            false
        }
    }
}

tokio::task_local! {
    /// Set while polling writes their writer makes ahead of more (see [`queue_if`]).
    static AHEAD: ();
}

/// Runs `writes`; if `more_follow`, their commits are queued, never committed in place.
/// For commits a writer makes ahead of others without waiting (a connection's pipelined
/// statements, several Raft entries at once): they should share one group commit, not
/// each take an fsync of its own in turn.
pub async fn queue_if<F: std::future::Future>(more_follow: bool, writes: F) -> F::Output {
    if more_follow {
        AHEAD.scope((), writes).await
    } else {
        writes.await
    }
}

/// Commits `req` on this thread if its writer is alone (see [`CommitGate`]); gives it back
/// otherwise, to be queued.
pub(crate) fn commit_in_place(
    inner: &Arc<Inner>,
    gate: &CommitGate,
    req: CommitRequest,
) -> std::result::Result<(), CommitRequest> {
    if !gate.same_writer()
        || req.is_catalog()
        || gate.last_batch.load(Ordering::Relaxed) > 1
        || AHEAD.try_with(|_| ()).is_ok()
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
