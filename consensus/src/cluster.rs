//! One node's part of the cluster: its Raft groups, the RPC server, membership; the write
//! path and strong reads are in [`write`].
//!
//! - Group 0 (metadata) holds the catalog, durable subscription state and, in its
//!   openraft membership, every node and its addresses.
//! - Every topic partition and every table replicated through Raft is a group
//!   (`object id << 32 | partition`) on the nodes its definition's `placement` names.
//!   After each change to the metadata, every node starts the groups placed on it; the
//!   first node of a placement initializes a new group, so leaders spread like placements.
//! - [`Cluster::write`] (in [`write`]) sends each op to its group: concurrent writes to one group are
//!   proposed as one Raft entry (the proposer drains its queue while an entry is in
//!   flight); a node that does not lead the group forwards the batch to the leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use eddy_storage::raft::{GroupId, KeyRange};
use eddy_storage::{ObjectDef, Replication, Store, WriteOp};
use openraft::ServerState;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::FrameAuth;
use crate::membership::{Liveness, Member, Membership, MembershipConfig};
use crate::network::{serve, Call, CallError, Faults, GroupNetwork, Handler, Peers, Reply};

mod balance;
mod gossip;
mod members;
mod write;

use crate::storage::{group_storage, Stubs};
use crate::types::{NodeId, NodeInfo, PartitionInfo, Raft, Response};
pub use balance::Balance;
pub use write::Holder;

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

/// The object and partition of a group ([`group_of`] undone).
pub fn split_group(group: GroupId) -> (u32, u32) {
    ((group >> 32) as u32, group as u32)
}

/// Who leads a group as one replica sees it, and where the leader is reached.
struct LeaderView {
    leader: Option<NodeId>,
    state: ServerState,
    addr: String,
}

impl LeaderView {
    fn of(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> LeaderView {
        let addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l))
            .map(|n| n.cluster_addr.clone())
            .unwrap_or_default();
        LeaderView {
            leader: m.current_leader,
            state: m.state,
            addr,
        }
    }
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
    /// The cluster secret: every internal frame is authenticated with it.
    pub secret: String,
    /// Delta gossip settings.
    pub gossip: crate::gossip::GossipConfig,
}

/// The secret used when none is configured: fine on one machine, never in production.
pub const DEV_SECRET: &str = "eddy-development-secret";

impl ClusterConfig {
    /// Defaults for a node with this id and these addresses.
    pub fn new(node_id: NodeId, info: NodeInfo) -> Self {
        let cluster = crate::ClusterSection {
            node_id,
            ..Default::default()
        };
        Self::from_sections(&cluster, &crate::GossipSection::default(), info)
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
    /// Index of the newest entry this replica knows committed (as last saved).
    pub commit_index: Option<u64>,
    /// Index of the newest entry applied here.
    pub applied_index: Option<u64>,
    /// Voting replicas.
    pub voters: Vec<NodeId>,
    /// Non-voting replicas.
    pub learners: Vec<NodeId>,
}

/// A Raft group on this node and its proposer queue.
pub(crate) struct Group {
    raft: Raft,
    proposals: mpsc::Sender<Proposal>,
    /// Sealed before another node joins the group.
    stubs: Stubs,
    /// Proposals queued for the proposer and not answered yet.
    queued: std::sync::atomic::AtomicUsize,
    /// Held (shared) by the proposer while it proposes a batch; taken (exclusive) while
    /// leadership is handed over, so that the leader's log stops growing and the new
    /// leader can catch up with it ([`Cluster::transfer_leader`]).
    gate: Arc<tokio::sync::RwLock<()>>,
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
    /// Every task the cluster starts (RPC connections and calls, proposers, gossip
    /// loops and exchanges, group starts); [`Cluster::shutdown`] waits for them all.
    tasks: TaskTracker,
    /// Delta gossip state.
    gossip: gossip::GossipState,
    /// Gossip membership and failure detection (`None` once shut down).
    membership: parking_lot::Mutex<Option<Membership>>,
    /// Cluster address -> node id, for the membership's fault injection.
    addrs: Arc<RwLock<HashMap<std::net::SocketAddr, NodeId>>>,
    /// This node is draining (`ALTER CLUSTER DRAIN NODE`): it takes no new work and
    /// hands its leaderships over.
    draining: std::sync::atomic::AtomicBool,
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
        .map_err(|e| Error::Refused(format!("raft settings: {e}")))?;
        let auth = Arc::new(FrameAuth::new(&config.secret));
        let peers = Peers::new(config.node_id, faults.clone(), auth.clone());
        store.set_origin(config.node_id)?;
        let gossip = gossip::GossipState::new(config.gossip.clone());
        let addrs: Arc<RwLock<HashMap<std::net::SocketAddr, NodeId>>> = Arc::default();
        let membership = Self::start_membership(&config, &listener, &auth, &faults, &addrs).await?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                config,
                gossip,
                membership: parking_lot::Mutex::new(Some(membership)),
                addrs,
                store,
                peers,
                raft_config: Arc::new(raft_config),
                groups: RwLock::new(HashMap::new()),
                starting: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let handler_cluster = cluster.clone();
        let handler: Handler = Arc::new(move |call| {
            let c = handler_cluster.clone();
            Box::pin(async move { c.handle(call).await })
        });
        let tasks = cluster.inner.tasks.clone();
        cluster.spawn(serve(
            listener,
            handler,
            faults,
            auth,
            cluster.inner.cancel.clone(),
            tasks,
        ));

        let meta = cluster
            .start_group(METADATA_GROUP, KeyRange::metadata())
            .await?;
        let fresh = !meta
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Refused(e.to_string()))?;
        if fresh {
            match cluster.inner.config.join.clone() {
                None => {
                    let mut members = BTreeMap::new();
                    members.insert(cluster.id(), cluster.inner.config.info.clone());
                    meta.raft
                        .initialize(members)
                        .await
                        .map_err(|e| Error::Refused(format!("cannot form the cluster: {e}")))?;
                }
                Some(seed) => cluster.join(&seed).await?,
            }
        }
        cluster.spawn(cluster.clone().reconcile_loop(meta.raft.clone()));
        cluster.spawn(cluster.clone().push_loop());
        cluster.spawn(cluster.clone().anti_entropy_loop());
        cluster.spawn(cluster.clone().collect_loop());
        Ok(cluster)
    }

    /// Starts `task` as one of the cluster's own, which shutdown waits for. It must end
    /// once the cluster's cancel token fires.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    /// Starts gossip membership on the cluster address (UDP), seeded by the join address.
    async fn start_membership(
        config: &ClusterConfig,
        listener: &TcpListener,
        auth: &Arc<FrameAuth>,
        faults: &Arc<Faults>,
        addrs: &Arc<RwLock<HashMap<std::net::SocketAddr, NodeId>>>,
    ) -> Result<Membership, Error> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Refused(format!("cluster listener: {e}")))?;
        let g = &config.gossip;
        let mut mc = MembershipConfig::new(config.node_id, addr, auth.clone());
        mc.pg_addr = config.info.pg_addr.clone();
        mc.zone = g.zone.clone();
        mc.seeds = config.join.iter().cloned().collect();
        mc.gossip_interval = g.interval;
        mc.dead_after = g.dead_after;
        mc.discover = g.discover;
        let (faults, addrs) = (faults.clone(), addrs.clone());
        mc.blocked = Arc::new(move |a: std::net::SocketAddr| {
            let id = addrs.read().get(&a).copied();
            id.is_some_and(|id| faults.is_cut(id))
        });
        Membership::start(mc)
            .await
            .map_err(|e| Error::Refused(format!("cannot start gossip on {addr}/udp: {e}")))
    }

    /// Every node gossip membership has heard of, this one included.
    pub fn members(&self) -> Vec<Member> {
        self.inner
            .membership
            .lock()
            .as_ref()
            .map(Membership::members)
            .unwrap_or_default()
    }

    /// Sets one of this node's load figures, gossiped to the others (`Member::load`).
    pub fn set_load(&self, key: &str, value: String) {
        if let Some(m) = self.inner.membership.lock().as_ref() {
            m.set_load(key, value);
        }
    }

    /// Tells membership about the cluster's nodes (seeds, and addresses for faults).
    fn seed_members(&self) {
        let nodes = self.nodes();
        let mut addrs = self.inner.addrs.write();
        let guard = self.inner.membership.lock();
        for (id, info) in nodes {
            let Ok(a) = info.cluster_addr.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if addrs.insert(a, id).is_none() && id != self.id() {
                if let Some(m) = guard.as_ref() {
                    m.add_seed(&info.cluster_addr);
                }
            }
        }
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

    /// Seals a group's stubs, as before a node joins it (tests).
    #[cfg(test)]
    pub(crate) async fn seal(&self, group: GroupId) -> Result<(), String> {
        let g = self.group(group).ok_or("no such group")?;
        g.stubs.seal(&g.raft, Duration::from_secs(10)).await
    }

    /// Ids of the groups running on this node.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self.inner.groups.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The nodes the catalog places `group` on, in placement order (empty for a group
    /// it does not know).
    fn placement_of(&self, group: GroupId) -> Vec<NodeId> {
        self.inner
            .store
            .catalog()
            .by_id(split_group(group).0)
            .and_then(|def| {
                groups_of(&def)
                    .find(|(g, _)| *g == group)
                    .map(|(_, nodes)| nodes.to_vec())
            })
            .unwrap_or_default()
    }

    /// Leader and offsets of the topic partitions among `groups` held here.
    fn partitions_here(&self, groups: Vec<GroupId>) -> Vec<PartitionInfo> {
        let catalog = self.inner.store.catalog();
        groups
            .into_iter()
            .filter_map(|group| {
                let raft = self.raft(group)?;
                let (object, partition) = split_group(group);
                let def = catalog.by_id(object)?;
                let ObjectDef::Topic(t) = &*def else {
                    return None;
                };
                let state = self.inner.store.partition(t, partition).ok()?;
                let leader = raft.metrics().borrow().current_leader;
                Some(PartitionInfo {
                    group,
                    leader,
                    start_offset: state.start_offset(),
                    next_offset: state.next_offset(),
                })
            })
            .collect()
    }

    /// Leader and offsets of topic partitions whose groups have no replica here, asked
    /// of their replicas: one call per node, its first replica in placement order, then
    /// the next for those not answered. A partition no replica answered for is missing.
    pub async fn remote_partitions(&self, groups: Vec<GroupId>) -> Vec<PartitionInfo> {
        const DEADLINE: Duration = Duration::from_secs(2);
        let nodes = self.nodes();
        let me = self.id();
        let mut left: Vec<(GroupId, Vec<NodeId>)> = groups
            .into_iter()
            .map(|g| {
                let mut replicas = self.placement_of(g);
                replicas.retain(|n| *n != me);
                (g, replicas)
            })
            .collect();
        let mut out = Vec::new();
        for attempt in 0..3 {
            let mut by_node: BTreeMap<NodeId, Vec<GroupId>> = BTreeMap::new();
            for (g, r) in &left {
                if let Some(n) = r.get(attempt) {
                    by_node.entry(*n).or_default().push(*g);
                }
            }
            if by_node.is_empty() {
                break;
            }
            let calls = by_node.into_iter().filter_map(|(id, gs)| {
                let addr = nodes.get(&id)?.cluster_addr.clone();
                let peers = self.inner.peers.clone();
                Some(async move { peers.call(id, &addr, Call::Partitions(gs), DEADLINE).await })
            });
            for reply in futures::future::join_all(calls).await {
                if let Ok(Reply::Partitions(found)) = reply {
                    out.extend(found);
                }
            }
            left.retain(|(g, _)| !out.iter().any(|p| p.group == *g));
        }
        out
    }

    /// What each group on this node looks like now, by group id.
    pub fn group_info(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = self
            .inner
            .groups
            .read()
            .iter()
            .map(|(id, g)| {
                let m = g.raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                let learners: Vec<NodeId> = membership.learner_ids().collect();
                GroupInfo {
                    group: *id,
                    state: format!("{:?}", m.state).to_ascii_lowercase(),
                    leader: m.current_leader,
                    term: m.current_term,
                    last_log_index: m.last_log_index,
                    // What openraft last saved, or the applied index if that is newer:
                    // entries applied at append skip the save, and a snapshot just
                    // installed was committed before it was sent.
                    commit_index: crate::storage::committed_index(&self.inner.store, *id)
                        .max(m.last_applied.map(|l| l.index)),
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

    /// How many nodes the cluster has (as [`Cluster::nodes`] lists them), without copying
    /// their addresses.
    pub fn node_count(&self) -> usize {
        self.metadata().map_or(0, |meta| {
            meta.metrics().borrow().membership_config.nodes().count()
        })
    }

    /// Stops the RPC server, the background tasks and every group.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let membership = self.inner.membership.lock().take();
        if let Some(m) = membership {
            m.shutdown().await;
        }
        // No group starts after this (start_group checks the token under this lock).
        let _starting = self.inner.starting.lock().await;
        let groups: Vec<_> = self.inner.groups.write().drain().collect();
        for (_, g) in groups {
            let _ = g.raft.shutdown().await;
        }
        drop(_starting);
        // Calls in flight fail; then every task of the cluster has ended.
        self.inner.peers.close().await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    async fn start_group(&self, id: GroupId, ranges: Vec<KeyRange>) -> Result<Arc<Group>, Error> {
        let _starting = self.inner.starting.lock().await;
        if self.inner.cancel.is_cancelled() {
            return Err(eddy_storage::Error::ShuttingDown.into());
        }
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        // The metadata group's log is how joining nodes catch up: no stubs in it.
        let stubs = id != METADATA_GROUP;
        let (log, sm, stubs) = group_storage(&self.inner.store, id, ranges, Some(self.id()), stubs);
        let raft = Raft::new(
            self.id(),
            self.inner.raft_config.clone(),
            GroupNetwork {
                group: id,
                peers: self.inner.peers.clone(),
            },
            log,
            sm,
        )
        .await
        .map_err(|e| Error::Refused(format!("cannot start raft group {id}: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let group = Arc::new(Group {
            raft: raft.clone(),
            proposals: tx,
            stubs: stubs.clone(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            gate: gate.clone(),
        });
        self.inner.groups.write().insert(id, group.clone());
        self.spawn(self.clone().run_proposer(id, raft, stubs, rx, gate));
        Ok(group)
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
            Call::Forward(g, units) => match self.inner.peers.faults.forward_failure() {
                Some(text) => Reply::Forward(Ok(Response {
                    units: units
                        .iter()
                        .map(|_| Err(crate::types::WireError::Other(text.clone())))
                        .collect(),
                })),
                None => Reply::Forward(self.propose_here(g, units).await),
            },
            Call::ReadIndex(g) => Reply::ReadIndex(self.read_index_here(g).await),
            Call::Join(id, info) => Reply::Done(self.add_node(id, info).await),
            Call::Adopt(seed) => Reply::Adopted(self.adopt(seed).await),
            Call::Removed => {
                self.removed();
                Reply::Done(Ok(()))
            }
            Call::Reconfigure { group, gone, add } => {
                Reply::Done(self.reconfigure_here(group, gone, add).await)
            }
            Call::Deltas(from, batches) => Reply::Deltas(self.receive_deltas(from, batches).await),
            // Both read RocksDB at length: on the blocking pool, not the executor.
            Call::Digest(_, theirs) => {
                let c = self.clone();
                match tokio::task::spawn_blocking(move || c.answer_digest(theirs)).await {
                    Ok(reply) => Reply::Digest(reply),
                    // Not a digest: the caller counts a failed round and tries again.
                    Err(_) => Reply::NoGroup,
                }
            }
            Call::Resync(table) => {
                let c = self.clone();
                Reply::Resync(
                    tokio::task::spawn_blocking(move || c.gossip_table_state(table))
                        .await
                        .unwrap_or_else(|e| Err(CallError::Unavailable(e.to_string()))),
                )
            }
            Call::Partitions(groups) => Reply::Partitions(self.partitions_here(groups)),
            Call::Drain(on) => {
                self.drain_here(on);
                Reply::Done(Ok(()))
            }
            Call::Elect(group) => Reply::Done(self.elect_here(group).await),
        }
    }

    /// Frames refused by membership gossip (UDP) and the internal RPC (TCP) because
    /// they did not carry this cluster's secret.
    pub fn frames_refused(&self) -> u64 {
        let udp = self
            .inner
            .membership
            .lock()
            .as_ref()
            .map_or(0, Membership::rejected);
        udp + self.inner.peers.auth.rejected()
    }

    /// Gossip failure detection's view of `node` (`None`: never heard of).
    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.inner
            .membership
            .lock()
            .as_ref()
            .and_then(|m| m.liveness(node))
    }

    /// Whether gossip failure detection thinks `node` is dead.
    pub fn is_dead(&self, node: NodeId) -> bool {
        self.liveness(node) == Some(Liveness::Dead)
    }

    /// Starts the groups the catalog places on this node, whenever the metadata moves.
    async fn reconcile_loop(self, meta: Raft) {
        let mut metrics = meta.metrics();
        loop {
            self.seed_members();
            self.reconcile().await;
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn reconcile(&self) {
        for def in self.inner.store.catalog().list() {
            for (group, placement) in groups_of(&def) {
                if !placement.contains(&self.id()) || self.group(group).is_some() {
                    continue;
                }
                let ranges = ranges_of(&def, split_group(group).1);
                match self.start_group(group, ranges).await {
                    // A replica moved here joins a running group: its leader adds it.
                    Ok(_) if def.reassigned() => {}
                    Ok(g) => {
                        if placement.first() == Some(&self.id()) {
                            self.initialize(&g, placement).await;
                        } else {
                            // The preferred leader initializes a new group; if it is down,
                            // another replica does, later. Every replica proposes the same
                            // first entry (same log id, same members), so this is safe.
                            let (me, placement) = (self.clone(), placement.to_vec());
                            let wait = me.inner.config.election_timeout * 4;
                            self.spawn(async move {
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
            .flat_map(|def| {
                groups_of(def)
                    .filter(|(_, placement)| placement.contains(&self.id()))
                    .map(|(g, _)| g)
                    .collect::<Vec<_>>()
            })
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
}

/// The Raft groups of an object and the nodes each is placed on.
fn groups_of(def: &ObjectDef) -> impl Iterator<Item = (GroupId, &[NodeId])> {
    let placement = match def {
        ObjectDef::Topic(t) if t.replication == Replication::Raft => &t.placement[..],
        // A table is one group, like a one-partition topic.
        ObjectDef::Table(t) if t.replication == Replication::Raft => {
            &t.placement[..t.placement.len().min(1)]
        }
        _ => &[],
    };
    placement
        .iter()
        .enumerate()
        .map(|(p, nodes)| (group_of(def.id(), p as u32), &nodes[..]))
}

/// The keys the state machine of `def`'s group for `partition` owns.
fn ranges_of(def: &ObjectDef, partition: u32) -> Vec<KeyRange> {
    match def {
        ObjectDef::Table(t) => KeyRange::table(t.id),
        _ => vec![KeyRange::partition(def.id(), partition)],
    }
}
