//! Read-modify-writes (`UPDATE`, `DELETE ... WHERE`, `ON CONFLICT DO UPDATE`) decided
//! where the order is decided.
//!
//! A statement reads its rows on this node, computes the new ones, and submits the
//! writes together with a condition per row read: [`WriteOp::Expect`], "this row is
//! still as I read it" (or still absent). The conditions are checked when the unit is
//! applied, by the Raft group's state machine in log order, the same on every replica;
//! if one fails nothing of the statement is written and it fails with `RowChanged`.
//! [`Conflicts::again`] then runs the statement again (not the client's retry) after this
//! replica has caught up, so it reads the row that beat it. Two nodes adding 1 to the
//! same row from the same version thus cannot both succeed, and no node-local lock is
//! needed. Gossip tables check this node's copy only: across nodes they stay
//! last-writer-wins (docs/consistency.md).
//!
//! ```text
//!   read (local replica) ─► compute ─► [Expect.., Insert/Delete..] ─► Raft apply
//!        ▲                                                              │
//!        └──── RowChanged: read barrier, back off, run again ◄─────────┘
//! ```

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use eddy_storage::{Lane, ObjectId, TableDef, Value, WriteOp};

use crate::core::Core;
use crate::error::{Error, Result};

/// How often a statement runs again after its rows changed under it before it gives up
/// with `40001` (the client may retry it: nothing of it was written). Every failed try
/// means another statement's write to the row succeeded, so the cluster as a whole
/// always progresses; this bounds how long one statement may keep losing.
const ATTEMPTS: u32 = 64;

/// The longest pause between two tries; each pause is random up to a bound that
/// doubles per try, so statements that collided spread out.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// A statement's conditions and writes, submitted as one unit (conditions first, so
/// each is checked against the row as it was before the statement).
#[derive(Default)]
pub(super) struct Ops {
    expects: Vec<WriteOp>,
    writes: Vec<WriteOp>,
}

impl Ops {
    /// The write applies only if `table`'s row at `key` is still `row` (`None`: absent).
    pub(super) fn expect(&mut self, table: &TableDef, key: Vec<Value>, row: Option<Vec<Value>>) {
        self.expects.push(WriteOp::Expect {
            table: table.id,
            key,
            row,
        });
    }

    /// A write of the statement.
    pub(super) fn write(&mut self, op: WriteOp) {
        self.writes.push(op);
    }

    /// Writes them all or nothing; nothing to write when no row was read.
    pub(super) async fn submit(self, engine: &Core, lane: Lane) -> Result<()> {
        if self.expects.is_empty() && self.writes.is_empty() {
            return Ok(());
        }
        let mut ops = self.expects;
        ops.extend(self.writes);
        engine.write(lane, ops).await?;
        Ok(())
    }
}

/// Counts one statement's tries.
pub(super) struct Conflicts<'a> {
    engine: &'a Core,
    table: ObjectId,
    tries: u32,
}

impl<'a> Conflicts<'a> {
    pub(super) fn new(engine: &'a Core, table: ObjectId) -> Self {
        Conflicts {
            engine,
            table,
            tries: 0,
        }
    }

    /// After a try failed with `e`: `Ok` when the statement should run again (a row it
    /// read changed before its write applied; this replica has since caught up), else
    /// the error to answer with.
    pub(super) async fn again(&mut self, e: Error) -> Result<()> {
        let changed = matches!(e, Error::Storage(eddy_storage::Error::RowChanged { .. }));
        if !changed || self.tries >= ATTEMPTS {
            return Err(e);
        }
        self.tries += 1;
        tokio::time::sleep(backoff(self.tries)).await;
        self.engine.writer.read_barrier(&[self.table]).await?;
        Ok(())
    }
}

/// A random pause up to `min(2^tries, 50)` ms.
fn backoff(tries: u32) -> Duration {
    let bound = Duration::from_millis(1u64 << tries.min(16)).min(MAX_BACKOFF);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    bound.mul_f64((random % 1024) as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_bound() {
        for tries in 1..80 {
            let b = backoff(tries);
            assert!(b <= MAX_BACKOFF, "{tries}: {b:?}");
            assert!(
                b < Duration::from_millis(1u64 << tries.min(16)),
                "{tries}: {b:?}"
            );
        }
    }
}
