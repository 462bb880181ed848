//! The committer's part of idempotent publishes: message ids (`_msg_id`) a partition
//! took, checked and remembered in the batch that appends their messages, and forgotten
//! once they fall out of the topic's dedup window (see "Message ids" in
//! docs/architecture.md; the keys are in `crate::layout`).

use std::collections::HashMap;

use crate::catalog::ObjectId;
use crate::error::{Error, Result};
use crate::layout::{
    msg_id_expiry_key, msg_id_expiry_parts, msg_id_expiry_start, msg_id_key, msg_id_value,
    parse_msg_id_value, Records, CF_LOG,
};

use super::{Committer, Staged, StagedBatch, WriteResult};

/// Message ids an append may forget for each id it takes (and as many more once): more
/// than one, so the index shrinks back after a burst, whatever the size of the appends.
const FORGET_PER_ID: usize = 2;

impl Committer {
    /// [`WriteOp::AppendOnce`]: each message whose id the partition took within `window`
    /// µs of this append's time, or that repeats an id earlier in `ids`, is left out and
    /// answered with the first copy's position; the others are appended, their ids
    /// remembered, and a few ids that fell out of the window forgotten. Only stored state
    /// and the append time decide, so every replica answers alike.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append_once(
        &self,
        topic: ObjectId,
        partition: u32,
        ids: &[Option<String>],
        window: i64,
        records: Records,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<WriteResult> {
        if ids.len() as u64 != records.len() {
            return Err(Error::InvalidValue(format!(
                "{} message ids for {} messages",
                ids.len(),
                records.len()
            )));
        }
        let (_, now) = self.next_position(topic, partition, staged, group)?;
        let mut each: Vec<Option<(u64, i64)>> = vec![None; ids.len()];
        // Index of the message an id repeats, for those left out as repeats in this op.
        let mut repeats: Vec<Option<usize>> = vec![None; ids.len()];
        let mut firsts: HashMap<&str, usize> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = id.as_deref() else { continue };
            if let Some(&j) = firsts.get(id) {
                repeats[i] = Some(j);
                continue;
            }
            if let Some(v) =
                self.msg_id(&msg_id_key(topic, partition, id.as_bytes()), staged, group)?
            {
                let (ts, offset) = parse_msg_id_value(&v)?;
                if ts.saturating_add(window) >= now {
                    each[i] = Some((offset, ts));
                    continue;
                }
            }
            firsts.insert(id, i);
        }
        let keep: Vec<bool> = (0..ids.len())
            .map(|i| each[i].is_none() && repeats[i].is_none())
            .collect();
        // Ids taken now: firsts. Forgetting a little more than that keeps the index at
        // about one window's worth.
        self.forget_msg_ids(
            topic,
            partition,
            FORGET_PER_ID * (firsts.len() + 1),
            now.saturating_sub(window),
            batch,
            staged,
            group,
        )?;
        let records = if keep.iter().all(|&k| k) {
            records
        } else {
            records.retain(&keep)?
        };
        let (mut next, ts) =
            self.append_entries(topic, partition, records, batch, staged, group)?;
        for (i, id) in ids.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            each[i] = Some((next, ts));
            if let Some(id) = id {
                let key = msg_id_key(topic, partition, id.as_bytes());
                let value = msg_id_value(ts, next);
                let expiry = msg_id_expiry_key(topic, partition, ts, id.as_bytes());
                batch.put(CF_LOG, key.clone(), value.clone());
                batch.put(CF_LOG, expiry.clone(), Vec::new());
                staged.msg_ids.insert(key, Some(value));
                staged.msg_ids.insert(expiry, Some(Vec::new()));
            }
            next += 1;
        }
        for (i, j) in repeats.iter().enumerate() {
            if let Some(j) = j {
                each[i] = each[*j];
            }
        }
        Ok(WriteResult::Positions {
            partition,
            each: each.into_iter().map(Option::unwrap_or_default).collect(),
        })
    }

    /// The stored value of a message id key (or expiry key), as this batch left it.
    fn msg_id(&self, key: &[u8], staged: &Staged, group: &Staged) -> Result<Option<Vec<u8>>> {
        self.as_staged(CF_LOG, key, |s| &s.msg_ids, staged, group)
    }

    /// Forgets up to `most` of the partition's message ids taken before `before` (append
    /// time), oldest first: their expiry keys go, and each id's key too unless the id was
    /// taken again since.
    #[allow(clippy::too_many_arguments)]
    fn forget_msg_ids(
        &self,
        topic: ObjectId,
        partition: u32,
        most: usize,
        before: i64,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(msg_id_expiry_key(topic, partition, before, b""));
        let mut it = self.inner.db.raw_iterator_cf_opt(self.inner.cf(CF_LOG), ro);
        it.seek(msg_id_expiry_start(topic, partition));
        let mut forgotten = 0;
        while forgotten < most {
            let Some(expiry) = it.key().map(<[u8]>::to_vec) else {
                break;
            };
            it.next();
            // Already forgotten by an earlier append of this batch (the iterator read
            // the database: only the staged changes can say so).
            let staged_now = staged
                .msg_ids
                .get(&expiry)
                .or_else(|| group.msg_ids.get(&expiry));
            if matches!(staged_now, Some(None)) {
                continue;
            }
            let Some((ts, id)) = msg_id_expiry_parts(&expiry) else {
                return Err(Error::corrupt("message id expiry key"));
            };
            let key = msg_id_key(topic, partition, id);
            if let Some(v) = self.msg_id(&key, staged, group)? {
                if parse_msg_id_value(&v)?.0 == ts {
                    batch.delete(CF_LOG, key.clone());
                    staged.msg_ids.insert(key, None);
                }
            }
            batch.delete(CF_LOG, expiry.clone());
            staged.msg_ids.insert(expiry, None);
            forgotten += 1;
        }
        it.status()?;
        Ok(())
    }
}
