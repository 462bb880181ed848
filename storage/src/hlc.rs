//! The hybrid logical clock that orders writes to gossip objects.
//!
//! A timestamp is one `u64`: wall-clock milliseconds since the epoch in the top 48 bits
//! and a counter in the low 16. [`Hlc::now`] never goes backwards and never repeats, and
//! [`Hlc::observe`] moves the clock past a timestamp seen from another node, so a write
//! made after receiving another node's write always carries a larger timestamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the counter part.
const LOGICAL_BITS: u32 = 16;

/// A hybrid logical clock shared by the threads of one node.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// The wall-clock milliseconds of a timestamp.
pub fn hlc_millis(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The timestamp of wall-clock `millis` with a zero counter.
pub fn hlc_from_millis(millis: u64) -> u64 {
    millis << LOGICAL_BITS
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// A timestamp greater than every one this clock has given or observed.
    pub fn now(&self) -> u64 {
        self.tick(hlc_from_millis(wall_millis()))
    }

    fn tick(&self, wall: u64) -> u64 {
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = if wall > last { wall } else { last + 1 };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock to at least `ts` (a timestamp received from another node).
    pub fn observe(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }

    /// How far `ts` is ahead of this node's wall clock, in milliseconds (0 if not ahead).
    pub fn ahead_millis(ts: u64) -> u64 {
        hlc_millis(ts).saturating_sub(wall_millis())
    }

    /// The newest timestamp given or observed.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_increases_and_follows_the_wall_clock() {
        let c = Hlc::new();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let wall = wall_millis();
        assert!(hlc_millis(b) <= wall && hlc_millis(b) + 1000 > wall);
    }

    #[test]
    fn observe_moves_past_a_remote_timestamp_from_the_future() {
        let c = Hlc::new();
        let remote = hlc_from_millis(wall_millis() + 60_000) + 7;
        c.observe(remote);
        let next = c.now();
        assert_eq!(
            next,
            remote + 1,
            "the counter moves on while the wall is behind"
        );
        assert!(Hlc::ahead_millis(remote) > 50_000);
        assert_eq!(Hlc::ahead_millis(hlc_from_millis(1)), 0);
    }

    #[test]
    fn concurrent_callers_never_get_the_same_timestamp() {
        let c = std::sync::Arc::new(Hlc::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
