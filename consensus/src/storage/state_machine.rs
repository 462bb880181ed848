//! The state machine of one group: applies entries through the store's committer,
//! builds and installs snapshots of the group's keys.

use super::*;

/// A snapshot's bytes: the group's keys and values.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    items: Vec<(u8, ByteBuf, ByteBuf)>,
}

/// The state machine of one group: the keys in `ranges` of the store.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub(super) store: WeakStore,
    pub(super) group: GroupId,
    pub(super) ranges: Vec<KeyRange>,
    pub(super) early: Arc<Early>,
}

impl StateMachine {
    fn store(&self) -> Result<Store, StorageError> {
        upgrade(&self.store)
    }

    /// The group's state now, as a snapshot (one consistent read of data and marker).
    fn snapshot_now(&self) -> Result<Option<Snapshot>, StorageError> {
        let mut ranges = self.ranges.clone();
        ranges.push(KeyRange::raft_slot(self.group, SLOT_APPLIED));
        let items = self
            .store()?
            .read_ranges(&ranges)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let mut applied = Applied::default();
        let mut data = SnapshotData { items: Vec::new() };
        for (space, k, v) in items {
            if space == Space::Raft {
                applied = decode(&v, ErrorSubject::StateMachine)?;
            } else {
                data.items
                    .push((space.code(), ByteBuf::from(k), ByteBuf::from(v)));
            }
        }
        let Some(last) = applied.log_id else {
            return Ok(None);
        };
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: applied.membership,
            snapshot_id: format!("{}-{}-{}", self.group, last.leader_id, last.index),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(encode(&data)?)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snap = self.snapshot_now()?;
        let snap = match snap {
            Some(s) => s,
            None => Snapshot {
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: format!("{}-empty", self.group),
                },
                snapshot: Box::new(Cursor::new(encode(&SnapshotData { items: Vec::new() })?)),
            },
        };
        write_raft(
            &self.store()?,
            vec![RaftWrite::Put {
                group: self.group,
                slot: SLOT_SNAPSHOT,
                value: vec![1],
            }],
            ErrorSubject::Snapshot(Some(snap.meta.signature())),
        )
        .await?;
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = read_applied(&self.store()?, self.group)?;
        Ok((applied.log_id, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = self.store()?;
        let mut membership = read_applied(&store, self.group)?.membership;
        // Entries applied at append only hand over their responses; the others are one
        // commit each, with its applied marker, queued back to back.
        enum Applying {
            Done(Response),
            Queued(LogId, Pending),
        }
        let entries: Vec<Entry> = entries.into_iter().collect();
        let lane = lane_for(WriterId::RaftApply(self.group), entries.len());
        let mut applying = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id;
            let early = self.early.state.lock().responses.remove(&log_id.index);
            applying.push(match early {
                Some(response) => Applying::Done(response),
                None => {
                    let commit = entry_commit(self.group, entry, &mut membership)?;
                    let pending = store
                        .submit(commit.in_lane(lane))
                        .await
                        .map_err(|e| io_err(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?;
                    Applying::Queued(log_id, pending)
                }
            });
        }
        let mut responses = Vec::with_capacity(applying.len());
        for a in applying {
            responses.push(match a {
                Applying::Done(response) => response,
                Applying::Queued(log_id, rx) => response_of(
                    rx.wait()
                        .await
                        .map_err(|e| io_err(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?,
                ),
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data: SnapshotData = decode(snapshot.get_ref(), subject())?;
        let mut items = Vec::with_capacity(data.items.len());
        for (code, k, v) in data.items {
            let space =
                Space::from_code(code).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
            items.push((space, k.into_vec(), v.into_vec()));
        }
        let applied = Applied {
            log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // Data, marker and snapshot flag in one durable batch: a crash leaves the old
        // state or the new one.
        write_raft(
            &self.store()?,
            vec![
                RaftWrite::Replace {
                    ranges: self.ranges.clone(),
                    items,
                },
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_APPLIED,
                    value: encode(&applied)?,
                },
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_SNAPSHOT,
                    value: vec![1],
                },
            ],
            subject(),
        )
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if self
            .store()?
            .raft_slot(self.group, SLOT_SNAPSHOT)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
            .is_none()
        {
            return Ok(None);
        }
        self.snapshot_now()
    }
}
