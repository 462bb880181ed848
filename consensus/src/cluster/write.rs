//! The write path and strong reads of a [`Cluster`]: ops routed to their groups,
//! batched by each group's proposer into one Raft entry, forwarded to the leader when
//! this node does not lead; read barriers for linearizable reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::Error;
use eddy_storage::raft::GroupId;
use eddy_storage::{now_micros, Lane, ObjectDef, Replication, WriteOp, WriteResult, WriterId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot};

use super::{group_of, groups_of, Cluster, LeaderView, Proposal, METADATA_GROUP, WRITE_DEADLINE};
use crate::network::{Call, CallError, Reply, TransportError};
use crate::types::{NodeId, Raft, Request, Response};

/// A node holding a replica of every group a statement reads ([`Cluster::holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Node id.
    pub node: NodeId,
    /// Its Postgres address.
    pub pg_addr: String,
    /// It leads every one of those groups, as this node knows.
    pub leader: bool,
    /// It is this node.
    pub this_node: bool,
}

impl Cluster {
    /// Applies `ops` through Raft: each op goes to its object's group (catalog and
    /// subscription changes to the metadata group); objects replicated by gossip and
    /// trims are written locally. Ops for one group apply atomically. What is written
    /// locally is queued for a group commit; [`Cluster::write_in`] names a writer alone.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, Error> {
        self.write_in(Lane::Queued, ops).await
    }

    /// [`Cluster::write`] with the caller's `lane` for what it writes locally (a Raft
    /// group's log names its own).
    pub async fn write_in(&self, lane: Lane, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, Error> {
        let mut by_group: BTreeMap<Option<GroupId>, Vec<(usize, WriteOp)>> = BTreeMap::new();
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            by_group.entry(self.route(&op)).or_default().push((i, op));
        }
        if by_group.len() == 1 {
            let (group, ops) = by_group.into_iter().next().unwrap_or((None, Vec::new()));
            let ops = ops.into_iter().map(|(_, op)| op).collect();
            return self.write_group(group, lane, ops).await;
        }
        // Several groups' writes at once: they share a group commit where they can.
        let writes = by_group.into_iter().map(|(group, ops)| {
            let (idx, ops): (Vec<usize>, Vec<WriteOp>) = ops.into_iter().unzip();
            async move { (idx, self.write_group(group, Lane::Queued, ops).await) }
        });
        let mut out: Vec<Option<WriteResult>> = vec![None; n];
        let written = futures::future::join_all(writes).await;
        for (idx, results) in written {
            for (i, r) in idx.into_iter().zip(results?) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(WriteResult::Done))
            .collect())
    }

    async fn write_group(
        &self,
        group: Option<GroupId>,
        lane: Lane,
        mut ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteResult>, Error> {
        let Some(group) = group else {
            return Ok(self.inner.store.write_in(lane, ops).await?);
        };
        if group == METADATA_GROUP {
            self.place(&mut ops);
        }
        let mut response = self.propose(group, lane, vec![ops]).await?;
        match response.units.pop() {
            Some(Ok(results)) => Ok(results.into_iter().map(Into::into).collect()),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Unavailable(format!("group {group}: empty response"))),
        }
    }

    /// The group an op belongs to; `None` for local writes.
    fn route(&self, op: &WriteOp) -> Option<GroupId> {
        // Only objects with a placement have groups; older or gossip ones are local.
        let placed = |id: u32, partition: u32| {
            self.inner
                .store
                .catalog()
                .by_id(id)
                .is_some_and(|d| match &*d {
                    ObjectDef::Topic(t) => {
                        t.replication == Replication::Raft
                            && (partition as usize) < t.placement.len()
                    }
                    ObjectDef::Table(t) => {
                        t.replication == Replication::Raft && !t.placement.is_empty()
                    }
                    ObjectDef::Subscription(_) => false,
                })
        };
        match op {
            WriteOp::Create(_)
            | WriteOp::Alter(_)
            | WriteOp::Place { .. }
            | WriteOp::Drop { .. }
            | WriteOp::SubState { .. } => Some(METADATA_GROUP),
            WriteOp::Append {
                topic, partition, ..
            }
            | WriteOp::AppendOnce {
                topic, partition, ..
            } => placed(*topic, *partition).then(|| group_of(*topic, *partition)),
            WriteOp::Insert { table, .. }
            | WriteOp::Delete { table, .. }
            | WriteOp::Expect { table, .. } => placed(*table, 0).then(|| group_of(*table, 0)),
            WriteOp::Trim { .. }
            | WriteOp::Merge(_)
            | WriteOp::Collect { .. }
            | WriteOp::Resync { .. }
            | WriteOp::Skip { .. } => None,
        }
    }

    /// Decides where a new object's groups live: one set of `replicas` nodes (default up
    /// to three) for all of them, picked by rotating over the nodes by the object's name,
    /// and the first of each group (its preferred leader) rotating within the set so
    /// leaders spread. One node thus holds everything of an object, and a statement
    /// reading it from a node outside the set can run there (docs/architecture.md,
    /// "Statements relayed to a replica").
    fn place(&self, ops: &mut [WriteOp]) {
        let mut nodes: Vec<NodeId> = self.nodes().keys().copied().collect();
        if nodes.is_empty() {
            // Just started: the metadata group has not shown this node's membership yet,
            // but a node is always a member of its own cluster.
            nodes.push(self.id());
        }
        let spread = |count: u32, replicas: Option<u32>, salt: usize| -> Vec<Vec<NodeId>> {
            let r = (replicas.unwrap_or(3) as usize).clamp(1, nodes.len());
            let set: Vec<NodeId> = (0..r).map(|k| nodes[(salt + k) % nodes.len()]).collect();
            (0..count as usize)
                .map(|p| (0..r).map(|k| set[(p + k) % r]).collect())
                .collect()
        };
        for op in ops {
            if let WriteOp::Create(def) = op {
                let salt = def.name().bytes().map(usize::from).sum::<usize>();
                match def {
                    ObjectDef::Topic(t) if t.replication == Replication::Raft => {
                        t.placement = spread(t.partitions, t.replicas, salt);
                    }
                    ObjectDef::Table(t) if t.replication == Replication::Raft => {
                        t.placement = spread(1, None, salt);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Queues units for `group`'s proposer and waits for their outcome. A node that holds
    /// no replica of the group (more nodes than replicas) hands them to one that does.
    /// `lane` is the caller's, for a write this node makes straight to its store.
    pub(super) async fn propose(
        &self,
        group: GroupId,
        lane: Lane,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Response, CallError> {
        match self.local_group(group).await {
            Some(g) => direct_or_queue(&g, group, lane, units).await,
            None => self.propose_via_replica(group, units).await,
        }
    }

    /// [`Cluster::propose`] on this node's replica only: what a forwarded write gets, so
    /// that a stale placement cannot bounce it between nodes. Forwarded writes arrive
    /// from many callers at once: they queue.
    pub(super) async fn propose_here(
        &self,
        group: GroupId,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Response, CallError> {
        let g = self
            .local_group(group)
            .await
            .ok_or(CallError::NoGroup(group))?;
        direct_or_queue(&g, group, Lane::Queued, units).await
    }

    /// This node's replica of `group`, started first if the catalog just placed it here.
    async fn local_group(&self, group: GroupId) -> Option<std::sync::Arc<super::Group>> {
        if let Some(g) = self.group(group) {
            return Some(g);
        }
        self.reconcile().await;
        self.group(group)
    }

    /// Sends units to the replicas of `group` in placement order until one takes them
    /// (its proposer forwards them to the leader if it does not lead).
    async fn propose_via_replica(
        &self,
        group: GroupId,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Response, CallError> {
        let nodes = self.nodes();
        let mut last = CallError::NoGroup(group);
        for id in self.placement_of(group) {
            let Some(info) = nodes.get(&id) else { continue };
            let call = Call::Forward(group, units.clone());
            match self
                .inner
                .peers
                .call(id, &info.cluster_addr, call, WRITE_DEADLINE)
                .await
            {
                Ok(Reply::Forward(Err(e @ CallError::NoGroup(_)))) => last = e,
                Ok(Reply::Forward(r)) => return r,
                Ok(other) => last = CallError::Unavailable(format!("node {id}: {other:?}")),
                Err(e @ TransportError::Network(..)) => return Err(unknown(group, e.to_string())),
                Err(e) => last = CallError::Unavailable(format!("node {id}: {e}")),
            }
        }
        Err(last)
    }

    /// Drains the queue into one Raft entry at a time (group commit one level up).
    pub(super) async fn run_proposer(
        self,
        group: GroupId,
        raft: Raft,
        stubs: crate::storage::Stubs,
        mut rx: mpsc::Receiver<Proposal>,
        gate: std::sync::Arc<tokio::sync::RwLock<()>>,
    ) {
        loop {
            // Proposals still queued at shutdown are dropped: their callers hear that
            // the group is shutting down.
            let first = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            // While leadership is handed over, the batch waits (then finds the new leader).
            let _proposing = gate.read().await;
            let mut batch = vec![first];
            let mut units: usize = batch[0].units.len();
            while units < 4096 {
                match rx.try_recv() {
                    Ok(p) => {
                        units += p.units.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let sizes: Vec<usize> = batch.iter().map(|p| p.units.len()).collect();
            let all: Vec<Vec<WriteOp>> = batch
                .iter_mut()
                .flat_map(|p| std::mem::take(&mut p.units))
                .collect();
            // The proposer waits for each batch: alone for one proposal, and the
            // proposals of a batch share a group commit.
            let lane = if batch.len() == 1 {
                Lane::Alone(WriterId::RaftLog(group))
            } else {
                Lane::Queued
            };
            let outcome = match stubs.write_alone(&raft, lane, all).await {
                Ok(written) => written.map_err(|e| unknown(group, e.to_string())),
                Err(all) => self.submit(group, &raft, all).await,
            };
            // Hand each proposal its own units' outcomes, in order.
            match outcome {
                Ok(r) => {
                    let mut it = r.units.into_iter();
                    for (p, n) in batch.into_iter().zip(sizes) {
                        let units = it.by_ref().take(n).collect();
                        let _ = p.reply.send(Ok(Response { units }));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Proposes `units` as one entry on the leader, wherever it is.
    async fn submit(
        &self,
        group: GroupId,
        raft: &Raft,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Response, CallError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut metrics = raft.metrics();
        loop {
            let view = LeaderView::of(&metrics.borrow_and_update());
            // Failures before the write reached a log are retried here until the
            // deadline; after, the outcome is unknown and the client decides.
            let unknown = |why: String| unknown(group, why);
            let last_error = match view.leader {
                Some(l) if l == self.id() && view.state == ServerState::Leader => {
                    let at = now_micros();
                    let write = raft.client_write(Request::Write {
                        units: units.clone(),
                        at,
                    });
                    // A leader cut off from its quorum never commits: give up at the
                    // deadline.
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, write).await {
                        Ok(Ok(r)) => return Ok(r.data),
                        // Not in the log (never appended, or truncated away).
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                            format!("leadership moved to {:?}", f.leader_id)
                        }
                        Ok(Err(e)) => return Err(unknown(e.to_string())),
                        Err(_) => {
                            return Err(unknown("no quorum acknowledged the write in time".into()))
                        }
                    }
                }
                Some(l) if l != self.id() => {
                    match self
                        .inner
                        .peers
                        .call(
                            l,
                            &view.addr,
                            Call::Forward(group, units.clone()),
                            WRITE_DEADLINE,
                        )
                        .await
                    {
                        Ok(Reply::Forward(Ok(r))) => return Ok(r),
                        Ok(Reply::Forward(Err(
                            e @ (CallError::Refused(_) | CallError::Unknown(_)),
                        ))) => return Err(e),
                        Ok(other) => format!("{other:?}"),
                        Err(e @ TransportError::Network(..)) => return Err(unknown(e.to_string())),
                        Err(e) => e.to_string(),
                    }
                }
                _ => "no leader".to_owned(),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(CallError::Unavailable(format!(
                    "raft group {group} has no reachable leader ({last_error}); retry"
                )));
            }
            // Wait for the group's view to change (an election), or retry shortly.
            let _ = tokio::time::timeout(
                Duration::from_millis(100).min(deadline - now),
                metrics.changed(),
            )
            .await;
        }
    }

    /// True when this node holds no replica of some Raft object's group.
    pub fn lacks_replicas(&self) -> bool {
        let me = self.id();
        self.inner
            .store
            .catalog()
            .any(|def| groups_of(def).any(|(_, p)| !p.contains(&me)))
    }

    /// The partitions of `topic` whose group this node leads now, when that is some
    /// but not all of its `partitions` (see `Writer::led_partitions`).
    pub fn led_partitions(&self, topic: u32, partitions: u32) -> Option<Vec<u32>> {
        let groups = self.inner.groups.read();
        let led: Vec<u32> = (0..partitions)
            .filter(|p| {
                groups.get(&group_of(topic, *p)).is_some_and(|g| {
                    let m = g.raft.metrics();
                    let m = m.borrow();
                    m.state == ServerState::Leader && m.current_leader == Some(self.id())
                })
            })
            .collect();
        (!led.is_empty() && led.len() < partitions as usize).then_some(led)
    }

    /// The nodes holding a replica of every Raft group of these topics and tables, in
    /// the first group's placement order, each with whether it leads every one of those
    /// groups as this node knows (it knows only for groups it holds a replica of).
    /// `None` when they have no groups (gossip ones); empty when no node holds them all.
    pub fn holders(&self, objects: &[u32]) -> Option<Vec<Holder>> {
        let catalog = self.inner.store.catalog();
        let mut common: Option<Vec<NodeId>> = None;
        let mut leaders: Option<Vec<Option<NodeId>>> = Some(Vec::new());
        for def in objects.iter().filter_map(|id| catalog.by_id(*id)) {
            for (group, placement) in groups_of(&def) {
                common = Some(match common {
                    None => placement.to_vec(),
                    Some(c) => c.into_iter().filter(|n| placement.contains(n)).collect(),
                });
                if let Some(l) = leaders.as_mut() {
                    l.push(
                        self.raft(group)
                            .and_then(|r| r.metrics().borrow().current_leader),
                    );
                }
            }
        }
        let common = common?;
        let leader = leaders.and_then(|l| {
            let first = *l.first()?;
            l.iter().all(|x| *x == first).then_some(first).flatten()
        });
        let nodes = self.nodes();
        let me = self.id();
        Some(
            common
                .iter()
                .filter_map(|n| {
                    nodes.get(n).map(|info| Holder {
                        node: *n,
                        pg_addr: info.pg_addr.clone(),
                        leader: leader == Some(*n),
                        this_node: *n == me,
                    })
                })
                .collect(),
        )
    }

    /// [`Cluster::read_barrier`] for every group of these topics and tables (objects
    /// without groups, such as gossip ones, need no wait).
    pub async fn read_barrier_objects(&self, objects: &[u32]) -> Result<(), Error> {
        let catalog = self.inner.store.catalog();
        let mut waits = Vec::new();
        for id in objects {
            let Some(def) = catalog.by_id(*id) else {
                continue;
            };
            for (group, placement) in groups_of(&def) {
                if !placement.contains(&self.id()) {
                    // Not even a `local` read helps: this node has none of its rows.
                    let replica = placement.first().copied().unwrap_or_default();
                    let at = self
                        .nodes()
                        .get(&replica)
                        .map(|n| format!(" ({})", n.pg_addr))
                        .unwrap_or_default();
                    return Err(Error::Unavailable(format!(
                        "this node holds no replica of \"{}\"; read it on node {replica}{at}, one of its replicas",
                        def.name(),
                    )));
                }
                waits.push(self.read_barrier(group));
            }
        }
        for r in futures::future::join_all(waits).await {
            r?;
        }
        Ok(())
    }

    /// Waits until this node's replica of `group` has applied everything committed
    /// before the call (a linearizable read can then read the local replica).
    pub async fn read_barrier(&self, group: GroupId) -> Result<(), Error> {
        let raft = self
            .raft(group)
            .ok_or_else(|| Error::Unavailable(format!("raft group {group} is not on this node")))?;
        {
            // The only voter is its own leader: whatever it acknowledged is applied here.
            let m = raft.metrics();
            let m = m.borrow();
            let mut voters = m.membership_config.membership().voter_ids();
            if m.state == ServerState::Leader
                && voters.next() == Some(self.id())
                && voters.next().is_none()
            {
                return Ok(());
            }
        }
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let view = LeaderView::of(&raft.metrics().borrow());
            let index = match view.leader {
                Some(l) if l == self.id() => self.read_index_here(group).await,
                Some(l) => match self
                    .inner
                    .peers
                    .call(l, &view.addr, Call::ReadIndex(group), WRITE_DEADLINE)
                    .await
                {
                    Ok(Reply::ReadIndex(r)) => r,
                    Ok(other) => Err(CallError::Unavailable(format!("{other:?}"))),
                    Err(e) => Err(CallError::Unavailable(e.to_string())),
                },
                None => Err(CallError::Unavailable("no leader".into())),
            };
            match index {
                Ok(index) => {
                    let Some(index) = index else { return Ok(()) };
                    let left = deadline.saturating_duration_since(Instant::now());
                    return raft
                        .wait(Some(left))
                        .applied_index_at_least(Some(index.index), "read barrier")
                        .await
                        .map(drop)
                        .map_err(|e| {
                            Error::Unavailable(format!("raft group {group}: {e}; retry"))
                        });
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::debug!(group, error = %e, "strong read: no leader answered in time");
                    return Err(Error::NotLeader {
                        group,
                        leader: view.leader,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub(super) async fn read_index_here(
        &self,
        group: GroupId,
    ) -> Result<Option<crate::types::LogId>, CallError> {
        let raft = self.raft(group).ok_or(CallError::NoGroup(group))?;
        raft.ensure_linearizable()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }
}

/// Writes `units` to this node's replica of `group`: straight to the store when the
/// group is this node's alone and nothing is queued for its proposer (see
/// `Stubs::write_alone`; so the committer's group commit batches them, and a
/// connection's writes keep their order, since none overtakes one that is queued);
/// else through the proposer.
async fn direct_or_queue(
    g: &super::Group,
    group: GroupId,
    lane: Lane,
    units: Vec<Vec<WriteOp>>,
) -> Result<Response, CallError> {
    let units = if g.queued.load(Ordering::SeqCst) == 0 {
        match g.stubs.write_alone(&g.raft, lane, units).await {
            Ok(written) => return written.map_err(|e| unknown(group, e.to_string())),
            Err(units) => units,
        }
    } else {
        units
    };
    // Counted from before it is queued until it is answered (or given up).
    g.queued.fetch_add(1, Ordering::SeqCst);
    let _done = Queued(&g.queued);
    let (reply, rx) = oneshot::channel();
    g.proposals
        .send(Proposal { units, reply })
        .await
        .map_err(|_| CallError::Unavailable(format!("group {group} is shutting down")))?;
    rx.await
        .map_err(|_| CallError::Unavailable(format!("group {group} is shutting down")))?
}

/// Counts a proposal out of its group's queue when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A write whose outcome is not known: it may be in a leader's log.
fn unknown(group: GroupId, why: String) -> CallError {
    CallError::Unknown(format!(
        "raft group {group}: {why}; the write may or may not have been applied (a retry may write it twice)"
    ))
}
