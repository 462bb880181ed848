//! The Raft log of one group: entries, vote, committed and purged markers, and the
//! folding of appends this node alone commits into one commit with their apply.

use super::*;

/// The Raft log of one group.
#[derive(Debug, Clone)]
pub struct LogStore {
    pub(super) store: WeakStore,
    pub(super) group: GroupId,
    pub(super) early: Arc<Early>,
}

impl LogStore {
    fn store(&self) -> Result<Store, StorageError> {
        upgrade(&self.store)
    }

    /// Whether `entries` are committed as soon as they are durable here, so that they
    /// can be applied in their append: this node proposed them, it alone votes in the
    /// membership each falls under (the applied one, as changed by membership entries
    /// among them), and every entry before them is applied (so the applied membership
    /// is the log's latest). Returns the membership before them, and whether this node
    /// is the group's only member after them (no learner either).
    fn foldable(
        &self,
        store: &Store,
        entries: &[Entry],
    ) -> Result<Option<(StoredMembership, bool)>, StorageError> {
        let (Some(me), Some(first)) = (self.early.me, entries.first()) else {
            return Ok(None);
        };
        let applied = read_applied(store, self.group)?;
        if applied.log_id.map(|l| l.index + 1) != Some(first.log_id.index) {
            return Ok(None);
        }
        let mut last = applied.membership.membership();
        for entry in entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                last = m;
            }
            if !sole_voter(last, me) || entry.log_id.leader_id.node_id != me {
                return Ok(None);
            }
        }
        // Learners would read the log: only a group of this node alone logs stubs.
        let alone = only_member(last, me);
        Ok(Some((applied.membership, alone)))
    }
}

/// The commits that append and apply `entries` at once: each entry (or, with `stubs`,
/// a write's stub: its log id and no data) with its data and its applied marker, fsync'd.
fn folded_commits(
    group: GroupId,
    entries: Vec<Entry>,
    mut membership: StoredMembership,
    stubs: bool,
) -> Result<Vec<Commit>, StorageError> {
    let mut commits = Vec::with_capacity(entries.len());
    for entry in entries {
        let bytes = match &entry.payload {
            EntryPayload::Normal(_) if stubs => encode(&Entry {
                log_id: entry.log_id,
                payload: EntryPayload::Blank,
            })?,
            _ => encode(&entry)?,
        };
        let logged = RaftWrite::Entries {
            group,
            entries: vec![(entry.log_id.index, bytes)],
        };
        let mut commit = entry_commit(group, entry, &mut membership)?;
        commit.raft.insert(0, logged);
        commit.sync = true;
        commits.push(commit);
    }
    Ok(commits)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self
            .store()?
            .raft_entries(self.group, from, to)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        raw.iter()
            .map(|(_, b)| decode(b, ErrorSubject::Logs))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> =
            read_slot(&self.store()?, self.group, SLOT_PURGED, ErrorSubject::Logs)?;
        let last = match self.store()?.raft_last_entry(self.group) {
            Ok(Some((_, b))) => Some(decode::<Entry>(&b, ErrorSubject::Logs)?.log_id),
            Ok(None) => None,
            Err(e) => return Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = encode(vote)?;
        write_raft(
            &self.store()?,
            vec![RaftWrite::Put {
                group: self.group,
                slot: SLOT_VOTE,
                value,
            }],
            ErrorSubject::Vote,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        read_slot(&self.store()?, self.group, SLOT_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Entries applied at append are durable with their marker, which restarts from
        // there (openraft takes the greater of the two): nothing to save for them.
        let applied_early = self.early.state.lock().applied;
        if committed.is_some_and(|c| Some(c.index) <= applied_early) {
            return Ok(());
        }
        let value = encode(&committed)?;
        // The log's own writer: its appends and this marker alternate, one at a time.
        self.store()?
            .commit(Commit {
                raft: vec![RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_COMMITTED,
                    value,
                }],
                lane: Lane::Alone(WriterId::RaftLog(self.group)),
                ..Commit::default()
            })
            .await
            .map(drop)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_slot::<Option<LogId>>(
            &self.store()?,
            self.group,
            SLOT_COMMITTED,
            ErrorSubject::Store,
        )?
        .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.store()?;
        if let Some((membership, alone)) = self.foldable(&store, &entries)? {
            // Shared with other appends; `seal` waits for it to close the stubs.
            let _open = self.early.gate.read().await;
            let stubs = alone && self.early.stubs.load(Ordering::SeqCst);
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            let commits = folded_commits(self.group, entries, membership, stubs)?;
            let written = match submit_all(&store, WriterId::RaftLog(self.group), commits).await {
                Ok(pending) => wait_all(pending).await,
                Err(e) => Err(e),
            };
            return match written {
                Ok(responses) => {
                    let mut early = self.early.state.lock();
                    early.applied = indexes.last().copied();
                    early.responses.extend(indexes.into_iter().zip(responses));
                    drop(early);
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    callback.log_io_completed(Err(io::Error::other(e.to_string())));
                    Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
                }
            };
        }
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push((e.log_id.index, encode(e)?));
        }
        // The committer's batch is readable and durable at the same moment: once it
        // answers, both halves of the contract hold.
        // All of them in one commit, and the log waits for it: its writer alone.
        let lane = Lane::Alone(WriterId::RaftLog(self.group));
        let written = store
            .commit(Commit {
                raft: vec![RaftWrite::Entries {
                    group: self.group,
                    entries: encoded,
                }],
                sync: true,
                lane,
                ..Commit::default()
            })
            .await;
        match written {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        write_raft(
            &self.store()?,
            vec![RaftWrite::TruncateFrom {
                group: self.group,
                index: log_id.index,
            }],
            ErrorSubject::Logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let value = encode(&log_id)?;
        write_raft(
            &self.store()?,
            vec![
                RaftWrite::Put {
                    group: self.group,
                    slot: SLOT_PURGED,
                    value,
                },
                RaftWrite::PurgeTo {
                    group: self.group,
                    index: log_id.index,
                },
            ],
            ErrorSubject::Logs,
        )
        .await
    }
}
