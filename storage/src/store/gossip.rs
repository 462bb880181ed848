//! [`Store`]'s reads of gossip state, for anti-entropy and resyncs: version vectors,
//! deltas, row versions, a table's full state; and the node's gossip origin and clock.
//! What they read is laid out in [`crate::gossip`]; the committer writes it.

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::Store;
use crate::catalog::ObjectId;
use crate::error::Result;
use crate::gossip::{
    decode_delta, delta_key, row_key_of_version, stored_versions, stored_vv, version_key, Delta,
    Origin, RowState, RowVersion, VersionVector,
};
use crate::hlc::Hlc;
use crate::layout::{CF_GOSSIP, CF_ROWS};

impl Store {
    /// This node's id as the origin of its gossip writes.
    pub fn origin(&self) -> Origin {
        self.inner.origin.load(Ordering::Acquire)
    }

    /// Sets this node's id as the origin of its gossip writes (at start, before writing),
    /// and moves the clock past every timestamp this origin stored, so a write after a
    /// restart wins over the writes before it even if the wall clock went back.
    pub fn set_origin(&self, origin: Origin) -> Result<()> {
        self.inner.origin.store(origin, Ordering::Release);
        for object in self.gossip_objects() {
            let Some(e) = self.version_vector(object)?.get(&origin).copied() else {
                continue;
            };
            if e.applied == 0 {
                continue;
            }
            if let Some(last) = self.read_deltas(object, origin, e.applied, 0)?.first() {
                self.inner.hlc.observe(last.hlc);
            }
        }
        Ok(())
    }

    /// The node's hybrid logical clock.
    pub fn hlc(&self) -> &Hlc {
        &self.inner.hlc
    }

    /// Changes whenever a local write to a gossip object has become durable.
    pub fn gossip_changes(&self) -> watch::Receiver<u64> {
        self.inner.gossip_changes.subscribe()
    }

    /// The ids of every topic and table replicated by gossip.
    pub fn gossip_objects(&self) -> Vec<ObjectId> {
        self.inner
            .catalog
            .list()
            .iter()
            .filter(|d| d.is_gossip())
            .map(|d| d.id())
            .collect()
    }

    /// An object's version vector, as durable here.
    pub fn version_vector(&self, object: ObjectId) -> Result<VersionVector> {
        stored_vv(&self.inner, object)
    }

    /// Deltas of `origin` for `object` from seq `from` on, in order, until about
    /// `max_bytes` (at least one if any).
    pub fn read_deltas(
        &self,
        object: ObjectId,
        origin: Origin,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<Delta>> {
        let mut out = Vec::new();
        let end = delta_key(object, origin, u64::MAX);
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_GOSSIP));
        it.seek(delta_key(object, origin, from));
        let mut bytes = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != 21 || k[..13] != end[..13] {
                break;
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&k[13..]);
            let delta = decode_delta(u64::from_be_bytes(s), v)?;
            bytes += delta.size();
            out.push(delta);
            if bytes >= max_bytes {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// A row's stored version (or tombstone), by row key.
    pub fn row_version(&self, row_key: &[u8]) -> Result<Option<RowVersion>> {
        self.inner
            .db
            .get_pinned_cf(self.inner.cf(CF_GOSSIP), version_key(row_key))?
            .map(|v| RowVersion::decode(v.as_ref()))
            .transpose()
    }

    /// Every row version of a gossip table (tombstones included) with the row, by key.
    pub fn table_state(&self, table: ObjectId) -> Result<Vec<RowState>> {
        let mut out = Vec::new();
        for (k, version) in stored_versions(&self.inner, table)? {
            let row_key = row_key_of_version(&k);
            let row = if version.tombstone {
                None
            } else {
                self.inner
                    .db
                    .get_pinned_cf(self.inner.cf(CF_ROWS), &row_key)?
                    .map(|r| r.to_vec())
            };
            out.push((row_key, version, row));
        }
        Ok(out)
    }
}
