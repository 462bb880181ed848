//! Catalog changes (`CREATE`, `ALTER`, placement, `DROP`): each commits on its own, in a
//! batch of its own, and memory (the catalog, next object id, partitions) changes only
//! once the batch is written.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;

use super::{Answers, CommitRequest, Committer, Staged, UnitResults, WriteOp, WriteResult};
use crate::catalog::{ObjectDef, ObjectId};
use crate::error::{Error, Result};
use crate::layout::{
    catalog_key, table_prefix, CF_CATALOG, CF_GOSSIP, CF_LOG, CF_META, CF_ROWS, CF_SUBS,
    META_NEXT_OBJECT_ID,
};
use crate::raft::RaftWrite;

impl Committer {
    /// Commits a catalog change, alone in its batch, and answers it.
    pub(super) fn commit_catalog(&self, req: CommitRequest, answers: &mut Answers) {
        let c = &req.commit;
        let outcome = match c.units.as_slice() {
            [unit] => self.apply_catalog(unit, &c.raft, c.sync),
            _ => Err(Error::InvalidValue(
                "a catalog change must be its request's only unit".into(),
            )),
        };
        answers.push((req.reply, outcome));
    }

    fn apply_catalog(
        &self,
        ops: &[WriteOp],
        raft: &[RaftWrite],
        sync: bool,
    ) -> Result<UnitResults> {
        let mut batch = WriteBatch::default();
        let staged = self.stage_catalog(ops, &mut batch);
        if staged.is_err() {
            batch = WriteBatch::default();
        }
        let mut replaced = Staged::default();
        self.apply_raft(raft, &mut batch, &mut replaced);
        if !batch.is_empty() {
            self.inner.db.write_opt(batch, &self.write_options(sync))?;
        }
        self.inner
            .stats
            .write_requests
            .fetch_add(1, Ordering::Relaxed);
        self.inner.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.publish(&replaced);
        let staged = match staged {
            Ok(s) => s,
            Err(e) => return Ok(vec![Err(e)]),
        };
        self.inner
            .next_object_id
            .store(u64::from(staged.next_id), Ordering::Release);
        for (name, id) in staged.dropped {
            self.inner.catalog.remove(&name);
            self.inner.partitions.write().retain(|(t, _), _| *t != id);
        }
        for def in staged.created {
            self.inner.catalog.insert(def);
        }
        Ok(vec![Ok(staged.results)])
    }

    /// Stages a definition's catalog entry into `batch`.
    fn put_def(&self, batch: &mut WriteBatch, def: &ObjectDef) -> Result<()> {
        batch.put_cf(
            self.inner.cf(CF_CATALOG),
            catalog_key(def.id()),
            to_json(def)?,
        );
        Ok(())
    }

    /// Stages catalog changes into `batch`; memory changes once the batch is written.
    fn stage_catalog(&self, ops: &[WriteOp], batch: &mut WriteBatch) -> Result<CatalogChange> {
        let mut results = Vec::new();
        let mut created = Vec::new();
        let mut dropped = Vec::new();
        let mut next_id = self.inner.next_object_id.load(Ordering::Acquire) as u32;
        for op in ops {
            match op {
                WriteOp::Create(def) => {
                    if self.inner.catalog.get(def.name()).is_some()
                        || created.iter().any(|d: &ObjectDef| d.name() == def.name())
                    {
                        return Err(Error::ObjectExists {
                            name: def.name().to_owned(),
                        });
                    }
                    let mut def = def.clone();
                    def.set_id(next_id);
                    next_id += 1;
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Created(Arc::new(def.clone())));
                    created.push(def);
                }
                WriteOp::Alter(def) => {
                    let current = self.inner.catalog.get(def.name()).ok_or_else(|| {
                        Error::ObjectNotFound {
                            name: def.name().to_owned(),
                        }
                    })?;
                    if current.id() != def.id() {
                        return Err(Error::ObjectNotFound {
                            name: def.name().to_owned(),
                        });
                    }
                    // Placement changes only through Place.
                    let mut def = def.clone();
                    let current = staged(&created, &current);
                    def.set_placement(current.placement().to_vec(), current.reassigned());
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Done);
                    created.push(def);
                }
                WriteOp::Place {
                    object,
                    partition,
                    nodes,
                } => {
                    let mut def = staged(&created, &*self.object(*object)?);
                    let mut placement = def.placement().to_vec();
                    let Some(slot) = placement.get_mut(*partition as usize) else {
                        return Err(Error::InvalidValue(format!(
                            "\"{}\" has no raft group {partition}",
                            def.name()
                        )));
                    };
                    *slot = nodes.clone();
                    def.set_placement(placement, true);
                    self.put_def(batch, &def)?;
                    results.push(WriteResult::Done);
                    created.push(def);
                }
                WriteOp::Drop { name } => {
                    let def = self
                        .inner
                        .catalog
                        .get(name)
                        .ok_or_else(|| Error::ObjectNotFound { name: name.clone() })?;
                    let id = def.id();
                    let dropping = |n: &str| {
                        ops.iter()
                            .any(|o| matches!(o, WriteOp::Drop { name } if name == n))
                    };
                    if let Some(user) = self
                        .inner
                        .catalog
                        .subscriptions_of(id)
                        .iter()
                        .find(|s| !dropping(s.name()))
                    {
                        return Err(Error::DependentObjects {
                            name: name.clone(),
                            dependent: user.name().to_owned(),
                        });
                    }
                    batch.delete_cf(self.inner.cf(CF_CATALOG), catalog_key(id));
                    // Topics: the log. Tables: the rows and the change log. Subscriptions: their state.
                    let cfs: &[&str] = match &*def {
                        ObjectDef::Topic(_) => &[CF_LOG, CF_GOSSIP],
                        ObjectDef::Table(_) => &[CF_ROWS, CF_LOG, CF_GOSSIP],
                        ObjectDef::Subscription(_) => &[CF_SUBS],
                    };
                    for cf in cfs {
                        batch.delete_range_cf(
                            self.inner.cf(cf),
                            table_prefix(id),
                            table_prefix(id + 1),
                        );
                    }
                    results.push(WriteResult::Done);
                    dropped.push((name.clone(), id));
                }
                _ => {
                    return Err(Error::InvalidValue(
                        "data change mixed with catalog changes".into(),
                    ))
                }
            }
        }
        batch.put_cf(
            self.inner.cf(CF_META),
            META_NEXT_OBJECT_ID,
            next_id.to_be_bytes(),
        );
        Ok(CatalogChange {
            results,
            created,
            dropped,
            next_id,
        })
    }
}

/// A staged catalog change: results, and what memory learns once it is durable.
struct CatalogChange {
    results: Vec<WriteResult>,
    created: Vec<ObjectDef>,
    dropped: Vec<(String, ObjectId)>,
    next_id: u32,
}

fn to_json(def: &ObjectDef) -> Result<Vec<u8>> {
    serde_json::to_vec(def)
        .map_err(|e| Error::InvalidValue(format!("cannot encode catalog entry: {e}")))
}

/// The definition of `current` as the changes staged so far in one batch left it.
fn staged(created: &[ObjectDef], current: &ObjectDef) -> ObjectDef {
    created
        .iter()
        .rev()
        .find(|d| d.id() == current.id())
        .unwrap_or(current)
        .clone()
}
