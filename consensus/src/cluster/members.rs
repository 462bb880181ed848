//! Who is in the cluster: joining (`--join`, `ALTER CLUSTER ADD NODE`) and leaving
//! (`ALTER CLUSTER REMOVE NODE`, which first moves the node's replicas elsewhere).
//!
//! Removing node `gone`, driven by the node that runs the statement:
//! 1. every group placed on `gone` gets a new placement: the other replicas, topped up
//!    to the object's replica count from the nodes holding the fewest replicas (the
//!    same nodes for every group of one object, so they keep sharing one set);
//! 2. the metadata records the new placement with `gone` still in it (so the new
//!    replicas start their side of the group) and marks the object reassigned (so they
//!    wait for the leader instead of initializing the group);
//! 3. each group's leader adds the new replicas as learners, waits until they caught
//!    up, and replaces its voters (openraft goes through a joint configuration);
//! 4. the metadata records the final placement (`gone` drops its replicas), and
//!    finally the metadata group lets `gone` go, promoting a learner if it voted.
//!
//! Every step can be repeated: a statement that failed half way is finished by running
//! it again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::Error;
use eddy_storage::raft::{GroupId, KeyRange};
use eddy_storage::{ObjectDef, Replication, WriteOp};
use openraft::{ChangeMembers, ServerState};

use super::{split_group, Cluster, LeaderView, METADATA_GROUP, METADATA_VOTERS};
use crate::network::{Call, CallError, Reply};
use crate::types::{NodeId, NodeInfo};

/// How long one group may take to bring a new replica up to date (a snapshot of a big
/// partition takes a while).
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

/// One group placed on the node being removed, and where it goes.
struct Move {
    object: u32,
    partition: u32,
    /// The group's nodes once the move is done.
    to: Vec<NodeId>,
    /// Nodes new to the group.
    added: Vec<NodeId>,
}

impl Cluster {
    /// Asks the node at `seed` to add this one, retrying until it is in.
    pub(super) async fn join(&self, seed: &str) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let call = Call::Join(self.id(), self.inner.config.info.clone());
            // The seed's id is unknown; calls are keyed by node, so use a reserved one.
            match self
                .inner
                .peers
                .call(0, seed, call, Duration::from_secs(10))
                .await
            {
                Ok(Reply::Done(Ok(()))) => return Ok(()),
                Ok(Reply::Done(Err(CallError::Refused(why)))) => {
                    return Err(Error::Refused(format!("join refused: {why}")))
                }
                other => {
                    if Instant::now() > deadline {
                        return Err(Error::Refused(format!(
                            "cannot join the cluster through {seed}: {other:?}"
                        )));
                    }
                    tracing::info!(seed, "waiting to join the cluster: {other:?}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Sends `call` to the leader of `group` when this node is not it; `None` when this
    /// node leads (the caller then does the work).
    async fn on_leader(&self, group: GroupId, call: Call) -> Option<Result<(), CallError>> {
        let Some(raft) = self.raft(group) else {
            return Some(Err(CallError::NoGroup(group)));
        };
        let view = LeaderView::of(&raft.metrics().borrow());
        match view.leader {
            Some(l) if l == self.id() && view.state == ServerState::Leader => None,
            Some(l) if l != self.id() => Some(self.call_done(l, &view.addr, call).await),
            _ => Some(Err(CallError::Unavailable(format!(
                "raft group {group} has no leader; retry"
            )))),
        }
    }

    /// Sends a membership call answered by [`Reply::Done`].
    async fn call_done(&self, node: NodeId, addr: &str, call: Call) -> Result<(), CallError> {
        match self
            .inner
            .peers
            .call(node, addr, call, CATCH_UP_DEADLINE)
            .await
        {
            Ok(Reply::Done(r)) => r,
            Ok(other) => Err(CallError::Unavailable(format!("{other:?}"))),
            Err(e) => Err(CallError::Unavailable(e.to_string())),
        }
    }

    /// Adds a node to the metadata group (as a voter while there are fewer than five).
    pub(super) async fn add_node(&self, id: NodeId, info: NodeInfo) -> Result<(), CallError> {
        if let Some(forwarded) = self
            .on_leader(METADATA_GROUP, Call::Join(id, info.clone()))
            .await
        {
            return forwarded;
        }
        let Some(meta) = self.metadata() else {
            return Err(CallError::NoGroup(METADATA_GROUP));
        };
        if id == 0 {
            return Err(CallError::Refused("node id 0 is reserved".into()));
        }
        if let Some(existing) = self.nodes().get(&id) {
            if existing != &info {
                return Err(CallError::Refused(format!(
                    "node id {id} is already taken by {existing}"
                )));
            }
        }
        meta.add_learner(id, info, true)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let voters: BTreeSet<NodeId> = meta
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.len() < METADATA_VOTERS && !voters.contains(&id) {
            meta.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| CallError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }

    /// `ALTER CLUSTER ADD NODE`: asks the node whose cluster address is `addr` to join
    /// this cluster. That node must be new: started without `--join`, it formed a
    /// cluster of its own, which must hold nothing yet. Returns the node's id.
    pub async fn add_node_at(&self, addr: &str) -> Result<NodeId, Error> {
        if let Some((id, _)) = self.nodes().iter().find(|(_, n)| n.cluster_addr == addr) {
            return Ok(*id);
        }
        let seed = self.inner.config.info.cluster_addr.clone();
        let deadline = CATCH_UP_DEADLINE + Duration::from_secs(60);
        match self
            .inner
            .peers
            .call(0, addr, Call::Adopt(seed), deadline)
            .await
        {
            Ok(Reply::Adopted(Ok(id))) => Ok(id),
            Ok(Reply::Adopted(Err(CallError::Refused(why)))) => Err(Error::Refused(why)),
            Ok(Reply::Adopted(Err(e))) => Err(Error::Unavailable(e.to_string())),
            Ok(other) => Err(Error::Unavailable(format!("{addr}: {other:?}"))),
            Err(e) => Err(Error::Unavailable(format!(
                "cannot reach a node at {addr}: {e}"
            ))),
        }
    }

    /// The node side of `ALTER CLUSTER ADD NODE`: leaves its own empty cluster of one and
    /// joins the one at `seed`.
    pub(super) async fn adopt(&self, seed: String) -> Result<NodeId, CallError> {
        if seed == self.inner.config.info.cluster_addr {
            return Err(CallError::Refused("a node cannot add itself".into()));
        }
        let members = self.nodes();
        if members.keys().any(|id| *id != self.id()) {
            return Err(CallError::Refused(format!(
                "node {} is already in a cluster of {} nodes",
                self.id(),
                members.len()
            )));
        }
        if !self.inner.store.catalog().list().is_empty() {
            return Err(CallError::Refused(format!(
                "node {} has topics or tables of its own; only an empty node can be added",
                self.id()
            )));
        }
        // Forget the cluster of one (its metadata log holds only its own membership),
        // then join like `--join` does.
        {
            let _starting = self.inner.starting.lock().await;
            let old = self.inner.groups.write().remove(&METADATA_GROUP);
            if let Some(g) = old {
                let _ = g.raft.shutdown().await;
            }
            self.inner
                .store
                .commit(eddy_storage::Commit {
                    raft: vec![eddy_storage::raft::RaftWrite::DropGroup {
                        group: METADATA_GROUP,
                    }],
                    ..Default::default()
                })
                .await
                .map_err(|e| CallError::Unavailable(e.to_string()))?;
        }
        let meta = self
            .start_group(METADATA_GROUP, KeyRange::metadata())
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        self.spawn(self.clone().reconcile_loop(meta.raft.clone()));
        tracing::info!(seed, "joining the cluster that added this node");
        self.join(&seed)
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        Ok(self.id())
    }

    /// `ALTER CLUSTER REMOVE NODE`: moves every replica off `gone`, then removes it from
    /// the cluster (see the module docs for the steps).
    pub async fn remove_node(&self, gone: NodeId) -> Result<(), Error> {
        self.read_barrier(METADATA_GROUP).await?;
        let nodes = self.nodes();
        let moves = self.plan_moves(gone, &nodes)?;
        if !nodes.contains_key(&gone) && moves.is_empty() {
            return Err(Error::Refused(format!("node {gone} is not in the cluster")));
        }
        if nodes.keys().all(|id| *id == gone) {
            return Err(Error::Refused(format!(
                "node {gone} is the cluster's only node"
            )));
        }
        // The new replicas start (and wait for their leaders) while `gone` still serves.
        let transitional = moves
            .iter()
            .filter(|m| !m.added.is_empty())
            .map(|m| place(m, m.to.iter().copied().chain([gone]).collect()))
            .collect::<Vec<_>>();
        if !transitional.is_empty() {
            self.write(transitional).await?;
        }
        let changes = moves
            .iter()
            .map(|m| self.reconfigure(m.object, m.partition, gone, m.added.clone()));
        for r in futures::future::join_all(changes).await {
            r?;
        }
        if !moves.is_empty() {
            self.write(moves.iter().map(|m| place(m, m.to.clone())).collect())
                .await?;
        }
        if let Some(info) = nodes.get(&gone) {
            self.reconfigure_here(METADATA_GROUP, gone, Vec::new())
                .await
                .map_err(Error::from)?;
            // A removed node no longer hears from the metadata leader, so it would stand
            // for election forever: tell it (if it runs) to stop its groups.
            if gone == self.id() {
                self.removed();
            } else {
                let told = self
                    .inner
                    .peers
                    .call(
                        gone,
                        &info.cluster_addr,
                        Call::Removed,
                        Duration::from_secs(2),
                    )
                    .await;
                tracing::info!(node = gone, ?told, "told the removed node");
            }
        }
        tracing::info!(node = gone, groups = moves.len(), "node removed");
        Ok(())
    }

    /// This node was removed from the cluster: stops every group and the RPC server
    /// (after the reply to the call that said so has gone out).
    pub(super) fn removed(&self) {
        tracing::error!(
            "this node was removed from the cluster (ALTER CLUSTER REMOVE NODE); it serves nothing now: stop it"
        );
        let me = self.clone();
        // Not one of the cluster's tasks: it is the shutdown's caller, and shutdown waits
        // for those.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            me.shutdown().await;
        });
    }

    /// Where each group placed on `gone` goes.
    fn plan_moves(
        &self,
        gone: NodeId,
        nodes: &BTreeMap<NodeId, NodeInfo>,
    ) -> Result<Vec<Move>, Error> {
        let catalog = self.inner.store.catalog().list();
        let remaining: Vec<NodeId> = nodes.keys().copied().filter(|n| *n != gone).collect();
        // Replicas per node, to fill from the least loaded.
        let mut load: BTreeMap<NodeId, usize> = remaining.iter().map(|n| (*n, 0)).collect();
        for def in &catalog {
            for (_, placement) in super::groups_of(def) {
                for n in placement {
                    if let Some(c) = load.get_mut(n) {
                        *c += 1;
                    }
                }
            }
        }
        let mut moves = Vec::new();
        for def in &catalog {
            let wanted = match &**def {
                ObjectDef::Topic(t) if t.replication == Replication::Raft => {
                    t.replicas.unwrap_or(3)
                }
                ObjectDef::Table(t) if t.replication == Replication::Raft => 3,
                _ => continue,
            } as usize;
            let wanted = wanted.clamp(1, remaining.len().max(1));
            // The nodes taking this object's groups in: the same for each of its groups,
            // so its groups keep sharing one set of nodes.
            let mut taking: Vec<NodeId> = Vec::new();
            for (group, placement) in super::groups_of(def) {
                if !placement.contains(&gone) {
                    continue;
                }
                let mut to: Vec<NodeId> =
                    placement.iter().copied().filter(|n| *n != gone).collect();
                let mut added = Vec::new();
                while to.len() < wanted {
                    let again = taking.iter().copied().find(|n| !to.contains(n));
                    let least = || {
                        load.iter()
                            .filter(|(n, _)| !to.contains(n))
                            .min_by_key(|(n, c)| (**c, **n))
                            .map(|(n, _)| *n)
                    };
                    let Some(pick) = again.or_else(least) else {
                        break;
                    };
                    if !taking.contains(&pick) {
                        taking.push(pick);
                    }
                    *load.entry(pick).or_default() += 1;
                    to.push(pick);
                    added.push(pick);
                }
                if to.is_empty() {
                    return Err(Error::Refused(format!(
                        "\"{}\" has its only replica on node {gone} and no other node can take it",
                        def.name()
                    )));
                }
                let (object, partition) = split_group(group);
                moves.push(Move {
                    object,
                    partition,
                    to,
                    added,
                });
            }
        }
        Ok(moves)
    }

    /// Has the leader of an object's group take `add` in and let `gone` go, asking any
    /// replica that can be reached (each forwards to its leader).
    async fn reconfigure(
        &self,
        object: u32,
        partition: u32,
        gone: NodeId,
        add: Vec<NodeId>,
    ) -> Result<(), Error> {
        let group = super::group_of(object, partition);
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            let placement = self
                .inner
                .store
                .catalog()
                .by_id(object)
                .and_then(|d| d.placement().get(partition as usize).cloned())
                .unwrap_or_default();
            let nodes = self.nodes();
            // The replicas staying first; `gone` may be down.
            let mut asked = placement.clone();
            asked.sort_by_key(|n| (*n == gone || add.contains(n), *n));
            let mut last = CallError::Unavailable(format!("raft group {group} has no replica"));
            for n in asked {
                let r = if n == self.id() {
                    self.reconfigure_here(group, gone, add.clone()).await
                } else if let Some(info) = nodes.get(&n) {
                    let call = Call::Reconfigure {
                        group,
                        gone,
                        add: add.clone(),
                    };
                    self.call_done(n, &info.cluster_addr, call).await
                } else {
                    continue;
                };
                match r {
                    Ok(()) => return Ok(()),
                    Err(CallError::Refused(why)) => return Err(Error::Refused(why)),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::from(last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// On the group's leader (forwarded there otherwise): adds `add` as learners, waits
    /// until they have caught up, makes them voters in place of `gone`, and removes
    /// `gone` from the group. The metadata group promotes a learner for a gone voter.
    pub(super) async fn reconfigure_here(
        &self,
        group: GroupId,
        gone: NodeId,
        mut add: Vec<NodeId>,
    ) -> Result<(), CallError> {
        let call = Call::Reconfigure {
            group,
            gone,
            add: add.clone(),
        };
        if let Some(forwarded) = self.on_leader(group, call).await {
            return forwarded;
        }
        let raft = self.raft(group).ok_or(CallError::NoGroup(group))?;
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let was_voter = voters.remove(&gone);
        if group == METADATA_GROUP && was_voter {
            add.extend(membership.learner_ids().filter(|l| *l != gone).take(1));
        }
        let nodes = self.nodes();
        if add.iter().any(|id| membership.get_node(id).is_none()) {
            // The log may hold stubs of writes applied at append: past them first.
            let g = self.group(group).ok_or(CallError::NoGroup(group))?;
            g.stubs
                .seal(&raft, CATCH_UP_DEADLINE)
                .await
                .map_err(CallError::Unavailable)?;
        }
        for id in add {
            if membership.get_node(&id).is_none() {
                let info = nodes.get(&id).cloned().ok_or_else(|| {
                    CallError::Refused(format!("node {id} is not in the cluster"))
                })?;
                let caught_up =
                    tokio::time::timeout(CATCH_UP_DEADLINE, raft.add_learner(id, info, true))
                        .await
                        .map_err(|_| {
                            CallError::Unavailable(format!(
                                "node {id} did not catch up with raft group {group} in time; retry"
                            ))
                        })?;
                caught_up.map_err(|e| CallError::Unavailable(e.to_string()))?;
            }
            voters.insert(id);
        }
        if voters.is_empty() {
            return Err(CallError::Refused(format!(
                "raft group {group} would have no replica left"
            )));
        }
        let current: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters != current {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
                .await
                .map_err(|e| CallError::Unavailable(e.to_string()))?;
        }
        let still_there = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&gone)
            .is_some();
        if still_there {
            raft.change_membership(ChangeMembers::RemoveNodes([gone].into()), false)
                .await
                .map_err(|e| CallError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

fn place(m: &Move, nodes: Vec<NodeId>) -> WriteOp {
    WriteOp::Place {
        object: m.object,
        partition: m.partition,
        nodes,
    }
}
