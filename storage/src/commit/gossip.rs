//! The committer's part of gossip replication: local writes to gossip objects become
//! deltas in the delta log, and deltas from other nodes merge in, last-writer-wins for
//! table rows, appended for topic messages (see `crate::gossip` for the keys); old
//! deltas and tombstones are collected, and a node behind a peer's horizon resyncs.

use crate::catalog::{ObjectDef, ObjectId, TableDef, TopicDef};
use crate::error::{Error, Result};
use crate::gossip::{
    delta_key, encode_delta, row_key_of_version, stored_delta_stamps, stored_versions, stored_vv,
    version_key, vv_key, Delta, DeltaBatch, DeltaBody, Origin, RowChange, RowState, RowVersion,
    VvEntry,
};
use crate::layout::{table_prefix, Records, CF_GOSSIP};
use crate::value::{decode_row, ColumnType};

use super::{put_row, remove_row, Committer, Staged, StagedBatch, WriteResult};

impl Committer {
    /// The version vector entry of `origin` for `object`, as this batch has left it.
    fn vv_entry(
        &self,
        object: ObjectId,
        origin: Origin,
        staged: &Staged,
        group: &Staged,
    ) -> Result<VvEntry> {
        let k = (object, origin);
        if let Some(e) = staged.vv.get(&k).or_else(|| group.vv.get(&k)) {
            return Ok(*e);
        }
        self.inner
            .db
            .get_pinned_cf(self.inner.cf(CF_GOSSIP), vv_key(object, origin))?
            .map_or(Ok(VvEntry::default()), |v| VvEntry::decode(&v))
    }

    /// A row's gossip version, as this batch has left it.
    fn version(
        &self,
        row_key: &[u8],
        staged: &Staged,
        group: &Staged,
    ) -> Result<Option<RowVersion>> {
        if let Some(v) = staged
            .versions
            .get(row_key)
            .or_else(|| group.versions.get(row_key))
        {
            return Ok(Some(*v));
        }
        self.inner
            .db
            .get_pinned_cf(self.inner.cf(CF_GOSSIP), version_key(row_key))?
            .map(|v| RowVersion::decode(v.as_ref()))
            .transpose()
    }

    fn put_version(
        &self,
        row_key: Vec<u8>,
        v: RowVersion,
        batch: &mut StagedBatch,
        staged: &mut Staged,
    ) {
        batch.put(CF_GOSSIP, version_key(&row_key), v.encode().to_vec());
        staged.versions.insert(row_key, v);
    }

    /// Stores a delta at the origin's next seq (which must be `seq`) and advances its
    /// version vector entry.
    fn put_delta(
        &self,
        object: ObjectId,
        origin: Origin,
        delta: &Delta,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        let mut e = self.vv_entry(object, origin, staged, group)?;
        debug_assert_eq!(delta.seq, e.applied + 1);
        e.applied = delta.seq;
        batch.put(
            CF_GOSSIP,
            delta_key(object, origin, delta.seq).to_vec(),
            encode_delta(delta.hlc, &delta.body)?,
        );
        self.put_vv(object, origin, e, batch, staged);
        Ok(())
    }

    /// Stages an origin's version vector entry.
    fn put_vv(
        &self,
        object: ObjectId,
        origin: Origin,
        e: VvEntry,
        batch: &mut StagedBatch,
        staged: &mut Staged,
    ) {
        batch.put(
            CF_GOSSIP,
            vv_key(object, origin).to_vec(),
            e.encode().to_vec(),
        );
        staged.vv.insert((object, origin), e);
    }

    /// A local write's delta: this node's next seq and a new timestamp.
    fn local_delta(
        &self,
        object: ObjectId,
        body: DeltaBody,
        staged: &Staged,
        group: &Staged,
    ) -> Result<Delta> {
        let origin = self.origin();
        let seq = self.vv_entry(object, origin, staged, group)?.applied + 1;
        Ok(Delta {
            seq,
            hlc: self.inner.hlc.now(),
            body,
        })
    }

    fn origin(&self) -> Origin {
        self.inner.origin.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A local append to a gossip topic: stored like any append, and each of its log
    /// entries becomes a delta.
    pub(super) fn append_local_gossip(
        &self,
        topic: ObjectId,
        partition: u32,
        records: Records,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<(u64, i64)> {
        let before = staged.appended.get(&(topic, partition)).map_or(0, Vec::len);
        let out = self.append_entries(topic, partition, records, batch, staged, group)?;
        let entries: Vec<Vec<u8>> = staged
            .appended
            .get(&(topic, partition))
            .map(|v| v[before..].iter().map(|e| e.data.to_vec()).collect())
            .unwrap_or_default();
        for entry in entries {
            let body = DeltaBody::Entry { partition, entry };
            let delta = self.local_delta(topic, body, staged, group)?;
            self.put_delta(topic, self.origin(), &delta, batch, staged, group)?;
        }
        staged.local_deltas = true;
        Ok(out)
    }

    /// A local change to gossip table rows (already applied to the rows): one delta, and
    /// the rows' versions.
    pub(super) fn record_local_rows(
        &self,
        table: ObjectId,
        rows: Vec<RowChange>,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        let delta = self.local_delta(table, DeltaBody::Rows(rows), staged, group)?;
        let origin = self.origin();
        if let DeltaBody::Rows(rows) = &delta.body {
            for r in rows {
                let key = full_key(table, &r.key);
                self.put_version(key, delta.version(origin, r), batch, staged);
            }
        }
        self.put_delta(table, origin, &delta, batch, staged, group)?;
        staged.local_deltas = true;
        Ok(())
    }

    /// Applies another node's deltas in sequence: already applied ones are skipped, and
    /// a gap stops the batch (anti-entropy brings the missing ones).
    pub(super) fn merge(
        &self,
        deltas: &mut DeltaBatch,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<WriteResult> {
        let def = self.gossip_object(deltas.object)?;
        let origin = deltas.origin;
        let mut applied = self.vv_entry(deltas.object, origin, staged, group)?.applied;
        for delta in std::mem::take(&mut deltas.deltas) {
            if delta.seq <= applied {
                continue;
            }
            if delta.seq != applied + 1 {
                break;
            }
            self.inner.hlc.observe(delta.hlc);
            match (&*def, &delta.body) {
                (ObjectDef::Table(t), DeltaBody::Rows(rows)) => {
                    self.merge_rows(t, origin, &delta, rows, batch, staged, group)?
                }
                (ObjectDef::Topic(t), DeltaBody::Entry { partition, entry }) => {
                    self.merge_entry(t, *partition, entry.clone(), batch, staged, group)?
                }
                _ => {
                    return Err(Error::InvalidValue(format!(
                        "a delta of the wrong kind for \"{}\"",
                        def.name()
                    )))
                }
            }
            self.put_delta(deltas.object, origin, &delta, batch, staged, group)?;
            applied = delta.seq;
        }
        Ok(WriteResult::Merged { applied })
    }

    /// Last-writer-wins per row; the change log records what changed here.
    #[allow(clippy::too_many_arguments)]
    fn merge_rows(
        &self,
        table: &TableDef,
        origin: Origin,
        delta: &Delta,
        rows: &[RowChange],
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        let types = table.column_types();
        let mut changes = Records::new();
        for r in rows {
            let key = full_key(table.id, &r.key);
            let row = r.row.as_ref().map(|b| b.as_slice());
            let version = delta.version(origin, r);
            self.merge_row(
                key,
                version,
                row,
                &types,
                &mut changes,
                batch,
                staged,
                group,
            )?;
        }
        self.append_entries(table.id, 0, changes, batch, staged, group)?;
        Ok(())
    }

    /// One row version from elsewhere: it replaces the row here if it is newer
    /// (last-writer-wins), and the change is recorded in `changes`.
    #[allow(clippy::too_many_arguments)]
    fn merge_row(
        &self,
        key: Vec<u8>,
        version: RowVersion,
        row: Option<&[u8]>,
        types: &[ColumnType],
        changes: &mut Records,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        if let Some(current) = self.version(&key, staged, group)? {
            if !current.loses_to(version.hlc, version.origin) {
                return Ok(());
            }
        }
        let existing = self.current_row(&key, staged, group)?;
        match (row, existing) {
            (Some(row), existing) => {
                decode_row(types, row)?;
                let existed = existing.is_some();
                put_row(key.clone(), row.to_vec(), existed, changes, batch, staged);
            }
            (None, Some(old)) => remove_row(key.clone(), &old, changes, batch, staged),
            (None, None) => {}
        }
        self.put_version(key, version, batch, staged);
        Ok(())
    }

    /// Drops `origin`'s deltas below `floor` and records the floor (and `applied`).
    fn set_floor(
        &self,
        object: ObjectId,
        origin: Origin,
        mut e: VvEntry,
        floor: u64,
        batch: &mut StagedBatch,
        staged: &mut Staged,
    ) {
        batch.delete_range(
            CF_GOSSIP,
            delta_key(object, origin, 0).to_vec(),
            delta_key(object, origin, floor).to_vec(),
        );
        e.floor = floor;
        self.put_vv(object, origin, e, batch, staged);
    }

    /// Collects deltas and tombstones stamped before `before`.
    pub(super) fn collect(
        &self,
        object: ObjectId,
        before: u64,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<WriteResult> {
        let def = self.gossip_object(object)?;
        for origin in stored_vv(&self.inner, object)?.into_keys() {
            let e = self.vv_entry(object, origin, staged, group)?;
            let stamps = stored_delta_stamps(&self.inner, object, origin, e.floor, e.applied)?;
            // An origin's timestamps grow with its seq: collect the prefix before the horizon.
            let last = stamps
                .iter()
                .take_while(|(_, hlc)| *hlc < before)
                .last()
                .map(|(seq, _)| *seq);
            if let Some(last) = last {
                self.set_floor(object, origin, e, last + 1, batch, staged);
            }
        }
        if matches!(&*def, ObjectDef::Table(_)) {
            for (k, v) in stored_versions(&self.inner, object)? {
                let row_key = row_key_of_version(&k);
                let newer =
                    staged.versions.contains_key(&row_key) || group.versions.contains_key(&row_key);
                if v.tombstone && v.hlc < before && !newer {
                    batch.delete(CF_GOSSIP, k);
                }
            }
        }
        Ok(WriteResult::Done)
    }

    /// Merges a peer's full table state (see [`WriteOp::Resync`]).
    pub(super) fn resync(
        &self,
        table: ObjectId,
        rows: Vec<RowState>,
        vv: &[(Origin, VvEntry)],
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<WriteResult> {
        let def = self.gossip_object(table)?;
        let ObjectDef::Table(def) = &*def else {
            return Err(Error::InvalidValue(format!(
                "\"{}\" is not a table",
                def.name()
            )));
        };
        let types = def.column_types();
        let prefix = table_prefix(table);
        let mut changes = Records::new();
        let mut theirs = std::collections::HashSet::new();
        for (key, version, row) in rows {
            if !key.starts_with(&prefix) {
                return Err(Error::InvalidValue("a resync row of another table".into()));
            }
            self.inner.hlc.observe(version.hlc);
            theirs.insert(key.clone());
            // A write this node applied whose key it no longer holds was deleted here
            // and the tombstone collected: it must not come back.
            let applied = self.vv_entry(table, version.origin, staged, group)?.applied;
            if version.seq <= applied && self.version(&key, staged, group)?.is_none() {
                continue;
            }
            self.merge_row(
                key,
                version,
                row.as_deref(),
                &types,
                &mut changes,
                batch,
                staged,
                group,
            )?;
        }
        // Rows the peer has seen written but no longer holds were deleted there, and the
        // tombstone collected: they go here too.
        let seen = |v: &RowVersion| vv.iter().any(|(o, e)| *o == v.origin && v.seq <= e.applied);
        let mut removed = 0;
        for (k, v) in stored_versions(&self.inner, table)? {
            let row_key = row_key_of_version(&k);
            if theirs.contains(&row_key)
                || staged.versions.contains_key(&row_key)
                || group.versions.contains_key(&row_key)
                || !seen(&v)
            {
                continue;
            }
            if let Some(old) = self.current_row(&row_key, staged, group)? {
                remove_row(row_key, &old, &mut changes, batch, staged);
            }
            batch.delete(CF_GOSSIP, k);
            removed += 1;
        }
        self.append_entries(table, 0, changes, batch, staged, group)?;
        // Where the peer is ahead, this node now holds the effect of deltas it never
        // stored: it can serve that origin only from past them.
        for (origin, theirs) in vv {
            let mut e = self.vv_entry(table, *origin, staged, group)?;
            if theirs.applied > e.applied {
                e.applied = theirs.applied;
                self.set_floor(table, *origin, e, theirs.applied + 1, batch, staged);
            }
        }
        Ok(WriteResult::Rows(removed))
    }

    /// Skips a topic origin's deltas up to `to` (see [`WriteOp::Skip`]).
    pub(super) fn skip(
        &self,
        object: ObjectId,
        origin: Origin,
        to: u64,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<WriteResult> {
        self.gossip_object(object)?;
        let mut e = self.vv_entry(object, origin, staged, group)?;
        if to > e.applied {
            e.applied = to;
            self.set_floor(object, origin, e, to + 1, batch, staged);
        }
        Ok(WriteResult::Done)
    }

    /// The definition of a gossip object.
    fn gossip_object(&self, id: ObjectId) -> Result<std::sync::Arc<ObjectDef>> {
        let def = self.object(id)?;
        if !def.is_gossip() {
            return Err(Error::InvalidValue(format!(
                "\"{}\" is not replicated by gossip",
                def.name()
            )));
        }
        Ok(def)
    }

    /// Another node's log entry, appended here at the partition's next offsets.
    fn merge_entry(
        &self,
        topic: &TopicDef,
        partition: u32,
        entry: Vec<u8>,
        batch: &mut StagedBatch,
        staged: &mut Staged,
        group: &Staged,
    ) -> Result<()> {
        if partition >= topic.partitions {
            return Err(Error::NoSuchPartition {
                topic: topic.name.clone(),
                partition,
            });
        }
        let records = Records::from_entry(entry, &topic.column_types())?;
        self.append_entries(topic.id, partition, records, batch, staged, group)?;
        Ok(())
    }
}

/// A row key from a table id and a memcomparable primary key.
fn full_key(table: ObjectId, pk: &[u8]) -> Vec<u8> {
    let mut k = table_prefix(table).to_vec();
    k.extend_from_slice(pk);
    k
}
