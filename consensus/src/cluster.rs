//! One node's part of the cluster: its Raft groups, the RPC server, the write path.
//!
//! - Group 0 (metadata) holds the catalog, durable subscription state and, in its
//!   openraft membership, every node and its addresses.
//! - Every topic partition and every table replicated through Raft is a group
//!   (`object id << 32 | partition`) on the nodes its definition's `placement` names.
//!   After each change to the metadata, every node starts the groups placed on it; the
//!   first node of a placement initializes a new group, so leaders spread like placements.
//! - [`Cluster::write`] sends each op to its group: concurrent writes to one group are
//!   proposed as one Raft entry (the proposer drains its queue while an entry is in
//!   flight); a node that does not lead the group forwards the batch to the leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_storage::raft::{GroupId, KeyRange};
use eddy_storage::{Error, ObjectDef, Replication, Store, WriteOp, WriteResult};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::network::{serve, Call, CallError, Faults, GroupNetwork, Handler, Peers, Reply};
use crate::storage::{LogStore, StateMachine};
use crate::types::{NodeId, NodeInfo, Raft, Request, Response};

/// The metadata group's id.
pub const METADATA_GROUP: GroupId = 0;

/// Most voters of the metadata group; further nodes follow it as learners.
const METADATA_VOTERS: usize = 5;

/// How long a write waits for a leader before it fails with a retryable error.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// The group of a topic partition or a table (partition 0).
pub fn group_of(object: u32, partition: u32) -> GroupId {
    (u64::from(object) << 32) | u64::from(partition)
}

/// Settings of this node in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (nonzero, unique in the cluster).
    pub node_id: NodeId,
    /// Where other nodes reach this one, and where clients do.
    pub info: NodeInfo,
    /// A member's cluster address to join through; `None` starts (or restarts) alone.
    pub join: Option<String>,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the election timeout (the upper is twice it).
    pub election_timeout: Duration,
    /// A group builds a snapshot after this many log entries since the last one, and
    /// then purges its log up to it, keeping `keep_after_snapshot` entries.
    pub snapshot_every: u64,
    /// Log entries kept below a snapshot (followers a little behind catch up by log).
    pub keep_after_snapshot: u64,
}

impl ClusterConfig {
    /// Defaults for a node with this id and these addresses.
    pub fn new(node_id: NodeId, info: NodeInfo) -> Self {
        Self {
            node_id,
            info,
            join: None,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(600),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
        }
    }
}

/// One Raft group as this node sees it (for `eddy.raft_groups`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub group: GroupId,
    /// This replica's role: leader, follower, candidate, learner.
    pub state: String,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Index of the newest entry in this replica's log.
    pub last_log_index: Option<u64>,
    /// Index of the newest entry applied here.
    pub applied_index: Option<u64>,
    /// Voting replicas.
    pub voters: Vec<NodeId>,
    /// Non-voting replicas.
    pub learners: Vec<NodeId>,
}

/// A Raft group on this node and its proposer queue.
struct Group {
    raft: Raft,
    proposals: mpsc::Sender<Proposal>,
}

struct Proposal {
    units: Vec<Vec<WriteOp>>,
    reply: oneshot::Sender<Result<Response, CallError>>,
}

struct Inner {
    config: ClusterConfig,
    store: Store,
    peers: Arc<Peers>,
    raft_config: Arc<openraft::Config>,
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    /// Held while a group is created, so that one group never has two instances.
    starting: tokio::sync::Mutex<()>,
    /// Stops the RPC server and the background tasks.
    cancel: CancellationToken,
}

/// This node's side of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// Every openraft instance and task of a node stops when its `Cluster` is shut down.
impl Cluster {
    /// Starts the RPC server on `listener`, the metadata group, and the groups placed on
    /// this node; joins the cluster through `config.join` when given.
    pub async fn start(
        store: Store,
        config: ClusterConfig,
        listener: TcpListener,
        faults: Arc<Faults>,
    ) -> Result<Cluster, Error> {
        let election = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "eddy".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_after_snapshot,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::InvalidValue(format!("raft settings: {e}")))?;
        let peers = Peers::new(config.node_id, faults.clone());
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config,
                store,
                peers,
                raft_config: Arc::new(raft_config),
                groups: RwLock::new(HashMap::new()),
                starting: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
            }),
        };
        let handler_cluster = cluster.clone();
        let handler: Handler = Arc::new(move |call| {
            let c = handler_cluster.clone();
            Box::pin(async move { c.handle(call).await })
        });
        tokio::spawn(serve(
            listener,
            handler,
            faults,
            cluster.inner.cancel.clone(),
        ));

        let meta = cluster
            .start_group(METADATA_GROUP, KeyRange::metadata())
            .await?;
        let fresh = !meta
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::InvalidValue(e.to_string()))?;
        if fresh {
            match cluster.inner.config.join.clone() {
                None => {
                    let mut members = BTreeMap::new();
                    members.insert(cluster.id(), cluster.inner.config.info.clone());
                    meta.raft.initialize(members).await.map_err(|e| {
                        Error::InvalidValue(format!("cannot form the cluster: {e}"))
                    })?;
                }
                Some(seed) => cluster.join(&seed).await?,
            }
        }
        tokio::spawn(cluster.clone().reconcile_loop(meta.raft.clone()));
        Ok(cluster)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The storage this node replicates into.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The metadata group's Raft instance.
    pub fn metadata(&self) -> Option<Raft> {
        self.group(METADATA_GROUP).map(|g| g.raft.clone())
    }

    /// The Raft instance of a group on this node.
    pub fn raft(&self, group: GroupId) -> Option<Raft> {
        self.group(group).map(|g| g.raft.clone())
    }

    /// Ids of the groups running on this node.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self.inner.groups.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// What each group on this node looks like now, by group id.
    pub fn group_info(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = self
            .inner
            .groups
            .read()
            .iter()
            .map(|(id, g)| {
                let m = g.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                let learners: Vec<NodeId> = membership.learner_ids().collect();
                GroupInfo {
                    group: *id,
                    state: format!("{:?}", m.state).to_ascii_lowercase(),
                    leader: m.current_leader,
                    term: m.current_term,
                    last_log_index: m.last_log_index,
                    applied_index: m.last_applied.map(|l| l.index),
                    voters,
                    learners,
                }
            })
            .collect();
        out.sort_by_key(|g| g.group);
        out
    }

    fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.inner.groups.read().get(&id).cloned()
    }

    /// Every node of the cluster and its addresses (the metadata group's membership).
    pub fn nodes(&self) -> BTreeMap<NodeId, NodeInfo> {
        let Some(meta) = self.metadata() else {
            return BTreeMap::new();
        };
        let m = meta.metrics().borrow().membership_config.clone();
        m.nodes().map(|(id, n)| (*id, n.clone())).collect()
    }

    /// Stops the RPC server, the background tasks and every group.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        // No group starts after this (start_group checks the token under this lock).
        let _starting = self.inner.starting.lock().await;
        let groups: Vec<_> = self.inner.groups.write().drain().collect();
        for (_, g) in groups {
            let _ = g.raft.shutdown().await;
        }
    }

    async fn start_group(&self, id: GroupId, ranges: Vec<KeyRange>) -> Result<Arc<Group>, Error> {
        let _starting = self.inner.starting.lock().await;
        if self.inner.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let store = self.inner.store.clone();
        let raft = Raft::new(
            self.id(),
            self.inner.raft_config.clone(),
            GroupNetwork {
                group: id,
                peers: self.inner.peers.clone(),
            },
            LogStore::new(&store, id),
            StateMachine::new(&store, id, ranges),
        )
        .await
        .map_err(|e| Error::InvalidValue(format!("cannot start raft group {id}: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        let group = Arc::new(Group {
            raft: raft.clone(),
            proposals: tx,
        });
        self.inner.groups.write().insert(id, group.clone());
        tokio::spawn(self.clone().run_proposer(id, raft, rx));
        Ok(group)
    }

    /// Asks the node at `seed` to add this one, retrying until it is in.
    async fn join(&self, seed: &str) -> Result<(), Error> {
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
                Ok(Reply::Join(Ok(()))) => return Ok(()),
                Ok(Reply::Join(Err(CallError::Refused(why)))) => {
                    return Err(Error::InvalidValue(format!("join refused: {why}")))
                }
                other => {
                    if Instant::now() > deadline {
                        return Err(Error::InvalidValue(format!(
                            "cannot join the cluster through {seed}: {other:?}"
                        )));
                    }
                    tracing::info!(seed, "waiting to join the cluster: {other:?}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Answers a call from another node.
    async fn handle(&self, call: Call) -> Reply {
        let group_of_call = match &call {
            Call::Append(g, _) | Call::Vote(g, _) | Call::Snapshot(g, _) => Some(*g),
            _ => None,
        };
        if let Some(g) = group_of_call {
            if self.group(g).is_none() {
                // A new group's leader can be faster than this node's metadata: catch up.
                self.reconcile().await;
            }
        }
        match call {
            Call::Append(g, rpc) => match self.group(g) {
                Some(gr) => Reply::Append(gr.raft.append_entries(rpc).await),
                None => Reply::NoGroup,
            },
            Call::Vote(g, rpc) => match self.group(g) {
                Some(gr) => Reply::Vote(gr.raft.vote(rpc).await),
                None => Reply::NoGroup,
            },
            Call::Snapshot(g, rpc) => match self.group(g) {
                Some(gr) => Reply::Snapshot(gr.raft.install_snapshot(rpc).await),
                None => Reply::NoGroup,
            },
            Call::Forward(g, units) => Reply::Forward(self.propose(g, units).await),
            Call::ReadIndex(g) => Reply::ReadIndex(self.read_index_here(g).await),
            Call::Join(id, info) => Reply::Join(self.add_node(id, info).await),
        }
    }

    /// Adds a node to the metadata group (as a voter while there are fewer than five).
    async fn add_node(&self, id: NodeId, info: NodeInfo) -> Result<(), CallError> {
        let Some(meta) = self.metadata() else {
            return Err(CallError::NoGroup(METADATA_GROUP));
        };
        let leader = meta.current_leader().await;
        if leader != Some(self.id()) {
            let Some(l) = leader else {
                return Err(CallError::Unavailable("no metadata leader".into()));
            };
            let addr = self
                .nodes()
                .get(&l)
                .map(|n| n.cluster_addr.clone())
                .unwrap_or_default();
            return match self
                .inner
                .peers
                .call(l, &addr, Call::Join(id, info), Duration::from_secs(10))
                .await
            {
                Ok(Reply::Join(r)) => r,
                Ok(_) => Err(CallError::Unavailable("unexpected reply".into())),
                Err(e) => Err(CallError::Unavailable(e.to_string())),
            };
        }
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

    /// Starts the groups the catalog places on this node, whenever the metadata moves.
    async fn reconcile_loop(self, meta: Raft) {
        let mut metrics = meta.metrics();
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn reconcile(&self) {
        for def in self.inner.store.catalog().list() {
            for (group, placement, ranges) in groups_of(&def) {
                if !placement.contains(&self.id()) || self.group(group).is_some() {
                    continue;
                }
                match self.start_group(group, ranges).await {
                    Ok(g) => {
                        if placement.first() == Some(&self.id()) {
                            self.initialize(&g, &placement).await;
                        } else {
                            // The preferred leader initializes a new group; if it is down,
                            // another replica does, later. Every replica proposes the same
                            // first entry (same log id, same members), so this is safe.
                            let (me, placement) = (self.clone(), placement.clone());
                            let wait = me.inner.config.election_timeout * 4;
                            tokio::spawn(async move {
                                tokio::select! {
                                    _ = me.inner.cancel.cancelled() => {}
                                    _ = tokio::time::sleep(wait) => {
                                        me.initialize(&g, &placement).await;
                                    }
                                }
                            });
                        }
                    }
                    Err(e) => tracing::error!(group, error = %e, "cannot start a raft group"),
                }
            }
        }
        // Groups of dropped objects stop, and their Raft state goes. Decided under the
        // start lock from the catalog as it is now: a group another reconcile started
        // since the list above belongs to an object that list did not have yet.
        let _starting = self.inner.starting.lock().await;
        let current: BTreeSet<GroupId> = self
            .inner
            .store
            .catalog()
            .list()
            .iter()
            .flat_map(|def| groups_of(def))
            .filter(|(_, placement, _)| placement.contains(&self.id()))
            .map(|(g, _, _)| g)
            .collect();
        let gone: Vec<GroupId> = self
            .groups()
            .into_iter()
            .filter(|g| *g != METADATA_GROUP && !current.contains(g))
            .collect();
        for group in gone {
            let Some(g) = self.inner.groups.write().remove(&group) else {
                continue;
            };
            let _ = g.raft.shutdown().await;
            let dropped = self
                .inner
                .store
                .commit(eddy_storage::Commit {
                    raft: vec![eddy_storage::raft::RaftWrite::DropGroup { group }],
                    ..Default::default()
                })
                .await;
            if let Err(e) = dropped {
                tracing::warn!(group, error = %e, "cannot remove a dropped group's raft state");
            }
        }
    }

    async fn initialize(&self, g: &Group, placement: &[NodeId]) {
        if g.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let nodes = self.nodes();
        let members: BTreeMap<NodeId, NodeInfo> = placement
            .iter()
            .filter_map(|id| nodes.get(id).map(|n| (*id, n.clone())))
            .collect();
        if members.len() != placement.len() {
            // Every replica must propose the very same membership; wait until all are known.
            tracing::warn!(
                ?placement,
                "not initializing a group whose nodes are unknown here"
            );
            return;
        }
        if let Err(e) = g.raft.initialize(members).await {
            tracing::warn!(error = %e, "raft group initialization");
        }
    }

    /// Applies `ops` through Raft: each op goes to its object's group (catalog and
    /// subscription changes to the metadata group); objects replicated by gossip and
    /// trims are written locally. Ops for one group apply atomically.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, Error> {
        let mut by_group: BTreeMap<Option<GroupId>, Vec<(usize, WriteOp)>> = BTreeMap::new();
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            by_group.entry(self.route(&op)).or_default().push((i, op));
        }
        if by_group.len() == 1 {
            let (group, ops) = by_group.into_iter().next().unwrap_or((None, Vec::new()));
            let ops = ops.into_iter().map(|(_, op)| op).collect();
            return self.write_group(group, ops).await;
        }
        let writes = by_group.into_iter().map(|(group, ops)| {
            let (idx, ops): (Vec<usize>, Vec<WriteOp>) = ops.into_iter().unzip();
            async move { (idx, self.write_group(group, ops).await) }
        });
        let mut out: Vec<Option<WriteResult>> = vec![None; n];
        for (idx, results) in futures::future::join_all(writes).await {
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
        mut ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteResult>, Error> {
        let Some(group) = group else {
            return self.inner.store.write(ops).await;
        };
        if group == METADATA_GROUP {
            self.place(&mut ops);
        }
        let mut response = self.propose(group, vec![ops]).await.map_err(|e| match e {
            CallError::Refused(m) => Error::InvalidValue(m),
            other => Error::Unavailable(other.to_string()),
        })?;
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
            | WriteOp::Drop { .. }
            | WriteOp::SubState { .. } => Some(METADATA_GROUP),
            WriteOp::Append {
                topic, partition, ..
            } => placed(*topic, *partition).then(|| group_of(*topic, *partition)),
            WriteOp::Insert { table, .. } | WriteOp::Delete { table, .. } => {
                placed(*table, 0).then(|| group_of(*table, 0))
            }
            WriteOp::Trim { .. } => None,
        }
    }

    /// Decides where a new object's groups live: `replicas` nodes each (default up to
    /// three), the first one rotating over the nodes so leaders spread.
    fn place(&self, ops: &mut [WriteOp]) {
        let nodes: Vec<NodeId> = self.nodes().keys().copied().collect();
        if nodes.is_empty() {
            return;
        }
        let spread = |count: u32, replicas: Option<u32>, salt: usize| -> Vec<Vec<NodeId>> {
            let r = (replicas.unwrap_or(3) as usize).clamp(1, nodes.len());
            (0..count as usize)
                .map(|p| {
                    (0..r)
                        .map(|k| nodes[(salt + p + k) % nodes.len()])
                        .collect()
                })
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

    /// Queues units for `group`'s proposer and waits for their outcome.
    async fn propose(
        &self,
        group: GroupId,
        units: Vec<Vec<WriteOp>>,
    ) -> Result<Response, CallError> {
        let g = match self.group(group) {
            Some(g) => g,
            None => {
                self.reconcile().await;
                self.group(group).ok_or(CallError::NoGroup(group))?
            }
        };
        let (reply, rx) = oneshot::channel();
        g.proposals
            .send(Proposal { units, reply })
            .await
            .map_err(|_| CallError::Unavailable(format!("group {group} is shutting down")))?;
        rx.await
            .map_err(|_| CallError::Unavailable(format!("group {group} is shutting down")))?
    }

    /// Drains the queue into one Raft entry at a time (group commit one level up).
    async fn run_proposer(self, group: GroupId, raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
        while let Some(first) = rx.recv().await {
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
            let outcome = self.submit(group, &raft, all).await;
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
            let (leader, state, addr) = {
                let m = metrics.borrow_and_update();
                let addr = m.current_leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.cluster_addr.clone())
                });
                (m.current_leader, m.state, addr)
            };
            let last_error = match leader {
                Some(l) if l == self.id() && state == ServerState::Leader => {
                    let at = now_micros();
                    let write = raft.client_write(Request::Write {
                        units: units.clone(),
                        at,
                    });
                    // A leader cut off from its quorum never commits: give up at the
                    // deadline (the outcome is then unknown to the client).
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, write).await {
                        Ok(Ok(r)) => return Ok(r.data),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                            format!("leadership moved to {:?}", f.leader_id)
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no quorum acknowledged the write in time".to_owned(),
                    }
                }
                Some(l) if l != self.id() => {
                    let addr = addr.unwrap_or_default();
                    match self
                        .inner
                        .peers
                        .call(
                            l,
                            &addr,
                            Call::Forward(group, units.clone()),
                            WRITE_DEADLINE,
                        )
                        .await
                    {
                        Ok(Reply::Forward(Ok(r))) => return Ok(r),
                        Ok(Reply::Forward(Err(CallError::Refused(m)))) => {
                            return Err(CallError::Refused(m))
                        }
                        Ok(other) => format!("{other:?}"),
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

    /// [`Cluster::read_barrier`] for every group of these topics and tables (objects
    /// without groups, such as gossip ones, need no wait).
    pub async fn read_barrier_objects(&self, objects: &[u32]) -> Result<(), Error> {
        let catalog = self.inner.store.catalog();
        let mut waits = Vec::new();
        for id in objects {
            let Some(def) = catalog.by_id(*id) else {
                continue;
            };
            for (group, placement, _) in groups_of(&def) {
                if !placement.contains(&self.id()) {
                    return Err(Error::Unavailable(format!(
                        "this node holds no replica of \"{}\" for a strong read; connect to node {} or SET consistency = 'local'",
                        def.name(),
                        placement.first().copied().unwrap_or_default()
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
            let m = raft.metrics().borrow().clone();
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
            let (leader, addr) = {
                let m = raft.metrics().borrow().clone();
                let addr = m.current_leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.cluster_addr.clone())
                });
                (m.current_leader, addr)
            };
            let index = match leader {
                Some(l) if l == self.id() => self.read_index_here(group).await,
                Some(l) => match self
                    .inner
                    .peers
                    .call(
                        l,
                        &addr.unwrap_or_default(),
                        Call::ReadIndex(group),
                        WRITE_DEADLINE,
                    )
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
                    return Err(Error::Unavailable(format!(
                        "raft group {group} cannot serve a strong read ({e}); retry"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn read_index_here(
        &self,
        group: GroupId,
    ) -> Result<Option<crate::types::LogId>, CallError> {
        let raft = self.raft(group).ok_or(CallError::NoGroup(group))?;
        raft.ensure_linearizable()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))
    }
}

/// The Raft groups of an object: id, placement, and the keys its state machine owns.
fn groups_of(def: &ObjectDef) -> Vec<(GroupId, Vec<NodeId>, Vec<KeyRange>)> {
    match def {
        ObjectDef::Topic(t) if t.replication == Replication::Raft => t
            .placement
            .iter()
            .enumerate()
            .map(|(p, nodes)| {
                let p = p as u32;
                (
                    group_of(t.id, p),
                    nodes.clone(),
                    vec![KeyRange::partition(t.id, p)],
                )
            })
            .collect(),
        ObjectDef::Table(t) if t.replication == Replication::Raft => t
            .placement
            .first()
            .map(|nodes| (group_of(t.id, 0), nodes.clone(), KeyRange::table(t.id)))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
