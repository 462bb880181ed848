//! The committer's part of gossip replication: local writes to gossip objects become
//! deltas in the delta log, and deltas from other nodes merge in, last-writer-wins for
//! table rows, appended for topic messages (see `crate::gossip` for the keys).

use crate::catalog::{ObjectDef, ObjectId, TableDef, TopicDef};
use crate::error::{Error, Result};
use crate::gossip::{
    delta_key, encode_delta, version_key, vv_key, Delta, DeltaBatch, DeltaBody, Origin, RowChange,
    RowVersion, VvEntry,
};
use crate::layout::{table_prefix, Records, CF_GOSSIP, CF_ROWS};
use crate::value::decode_row;

use super::{
    Committer, Staged, StagedBatch, WriteResult, CHANGE_DELETE, CHANGE_INSERT, CHANGE_UPDATE,
};

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
        batch.put(
            CF_GOSSIP,
            vv_key(object, origin).to_vec(),
            e.encode().to_vec(),
        );
        staged.vv.insert((object, origin), e);
        Ok(())
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
        let def = self.object(deltas.object)?;
        if !def.is_gossip() {
            return Err(Error::InvalidValue(format!(
                "\"{}\" is not replicated by gossip",
                def.name()
            )));
        }
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
            if let Some(current) = self.version(&key, staged, group)? {
                if !current.loses_to(delta.hlc, origin) {
                    continue;
                }
            }
            let existing = self.current_row(&key, staged, group)?;
            match &r.row {
                Some(row) => {
                    decode_row(&types, row)?;
                    batch.put(CF_ROWS, key.clone(), row.to_vec());
                    let kind = if existing.is_some() {
                        CHANGE_UPDATE
                    } else {
                        CHANGE_INSERT
                    };
                    changes.push_encoded(Some(kind), row);
                    staged.rows.insert(key.clone(), Some(row.to_vec()));
                }
                None => {
                    if let Some(old) = existing {
                        batch.delete(CF_ROWS, key.clone());
                        changes.push_encoded(Some(CHANGE_DELETE), &old);
                        staged.rows.insert(key.clone(), None);
                    }
                }
            }
            self.put_version(key, delta.version(origin, r), batch, staged);
        }
        self.append_entries(table.id, 0, changes, batch, staged, group)?;
        Ok(())
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
