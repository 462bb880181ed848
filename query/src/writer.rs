//! Where the query layer's writes go (and what its strong reads wait for): straight into
//! the local store, or through the cluster's Raft groups (the broker plugs `eddy-consensus` in; this crate does not
//! depend on it).

use std::sync::Arc;

use async_trait::async_trait;
use eddy_storage::{Lane, Store, WriteOp, WriteResult};

/// Applies writes, and tells what the cluster looks like.
#[async_trait]
pub trait Writer: Send + Sync + 'static {
    /// Applies `ops`; ops for one object apply atomically. `lane` says whether the
    /// caller is a writer alone or makes more writes without waiting.
    async fn write(&self, lane: Lane, ops: Vec<WriteOp>) -> crate::Result<Vec<WriteResult>>;

    /// Waits until this node's replicas of `objects` have applied every write
    /// acknowledged before the call, so that a read of them is linearizable
    /// (`SET consistency = 'strong'`). Local writes need no wait.
    async fn read_barrier(&self, objects: &[eddy_storage::ObjectId]) -> crate::Result<()> {
        let _ = objects;
        Ok(())
    }

    /// True when this node holds no replica of some object's Raft group (a cluster with
    /// more nodes than the object's `replicas`).
    fn lacks_replicas(&self) -> bool {
        false
    }

    /// The nodes that can run a statement reading `objects`: those holding a replica of
    /// every Raft group of them, this node included, in placement order (empty: no node
    /// holds them all). `None` when the objects have no Raft groups (gossip and local
    /// ones, or no cluster): the statement runs here.
    fn holders(&self, objects: &[eddy_storage::ObjectId]) -> Option<Vec<Holder>> {
        let _ = objects;
        None
    }

    /// The partitions of a Raft topic whose group this node leads now, when it leads
    /// some but not all of its `partitions`; `None` otherwise. Keyless messages go to
    /// these, so that their writes are proposed here.
    fn led_partitions(&self, topic: eddy_storage::ObjectId, partitions: u32) -> Option<Vec<u32>> {
        let _ = (topic, partitions);
        None
    }

    /// Leader and offsets of these topic partitions (`(topic, partition)`), which have
    /// no replica on this node, as nodes holding one report them (`eddy.partitions`);
    /// a partition no replica answered for is left out.
    async fn remote_partitions(
        &self,
        wanted: &[(eddy_storage::ObjectId, u32)],
    ) -> Vec<PartitionRow> {
        let _ = wanted;
        Vec::new()
    }

    /// Waits until this node's catalog has every change acknowledged before the call.
    async fn metadata_barrier(&self) -> crate::Result<()> {
        Ok(())
    }

    /// `ALTER CLUSTER ADD NODE`: the empty node at this cluster address joins the
    /// cluster; returns its id.
    async fn add_node(&self, cluster_addr: &str) -> crate::Result<u64> {
        let _ = cluster_addr;
        Err(no_cluster())
    }

    /// `ALTER CLUSTER REMOVE NODE`: moves the node's replicas elsewhere, then removes it.
    async fn remove_node(&self, node: u64) -> crate::Result<()> {
        let _ = node;
        Err(no_cluster())
    }

    /// `ALTER CLUSTER DRAIN NODE` (`drain`) or `RESUME NODE`: the node stops taking new
    /// work and hands its leaders and subscriptions over, or takes work again.
    async fn drain_node(&self, node: u64, drain: bool) -> crate::Result<()> {
        let _ = (node, drain);
        Err(no_cluster())
    }

    /// `EXPLAIN ROUTE`: the candidates the router weighs for a statement described by
    /// `description` (which [`Writer::holders`] can run: `holders`), with the session's
    /// `routing` strategy; the chosen one marked.
    fn explain_route(
        &self,
        description: &crate::Description,
        holders: Option<Vec<Holder>>,
        strategy: &str,
    ) -> Vec<RouteRow> {
        let _ = (description, holders, strategy);
        Vec::new()
    }

    /// The cluster's nodes (`eddy.nodes`); empty without a cluster.
    fn nodes(&self) -> Vec<NodeRow> {
        Vec::new()
    }

    /// The Raft groups on this node (`eddy.raft_groups`); empty without a cluster.
    fn raft_groups(&self) -> Vec<GroupRow> {
        Vec::new()
    }

    /// What this node exchanged with each gossip peer (`eddy.gossip_peers`).
    fn gossip_peers(&self) -> Vec<GossipPeerRow> {
        Vec::new()
    }

    /// This node's id in its cluster (`None` without one).
    fn node_id(&self) -> Option<u64> {
        None
    }

    /// What this node's router decided (`eddy.routing`), one counter a row.
    fn routing(&self) -> Vec<CounterRow> {
        Vec::new()
    }

    /// Latency percentiles of what this node served (`eddy.metrics`).
    fn metrics(&self) -> Vec<MetricRow> {
        Vec::new()
    }
}

/// A node able to run a statement ([`Writer::holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Node id.
    pub node: u64,
    /// Its Postgres address.
    pub pg_addr: String,
    /// It leads every Raft group of what the statement reads, as this node knows.
    pub leader: bool,
    /// It is the node answering.
    pub this_node: bool,
}

/// A node's load figures, as it gossips them about once a second (`eddy.nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// `ALTER CLUSTER DRAIN NODE` ran for it: it takes no new work.
    pub draining: bool,
    /// Flagged as a hotspot (statements/s or CPU well above the cluster's mean).
    pub hot: bool,
    /// Open Postgres connections.
    pub connections: u32,
    /// Statements running.
    pub in_flight: u32,
    /// Tasks waiting for a thread (the runtime's queue): work it has no CPU for yet.
    pub queued: u32,
    /// Decayed service time of its statements, in microseconds.
    pub service_us: u64,
    /// Statements finished per second.
    pub statements_per_s: u64,
    /// CPU use of the process over the last interval, in thousandths of all cores.
    pub cpu_permille: u32,
    /// Live subscriptions streaming from it.
    pub subscriptions: u32,
    /// Bytes per second sent to those subscriptions.
    pub subscription_bytes_per_s: u64,
    /// Raft groups it leads.
    pub leaders: u32,
    /// Raft entries per second appended by the groups it leads.
    pub writes_per_s: u64,
}

/// One candidate of `EXPLAIN ROUTE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRow {
    /// Node id.
    pub node: u64,
    /// Its Postgres address.
    pub pg_addr: String,
    /// `serving`, `draining` or `dead`.
    pub state: String,
    /// It leads the Raft group(s) read.
    pub leader: bool,
    /// Statements running or waiting there as this node counts them (fresh gossip plus
    /// what this node sent there).
    pub load: u64,
    /// The latency the router weighs (`None`: none measured).
    pub latency_ms: Option<f64>,
    /// CPU use, 0 to 1, from fresh gossip.
    pub cpu: Option<f64>,
    /// Age of its gossiped figures.
    pub figures_age_ms: Option<u64>,
    /// The router's cost (lower is better; `None` where the strategy uses none).
    pub cost: Option<f64>,
    /// The statement runs here.
    pub chosen: bool,
    /// Why (on the chosen row), or why not.
    pub reason: String,
}

/// One counter of `eddy.routing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRow {
    /// What is counted (`routed`, `relayed`, `pinned`, ...).
    pub counter: String,
    /// Its detail (the strategy, the pin's reason), or "".
    pub detail: String,
    /// The count since the node started.
    pub value: u64,
}

/// One row of `eddy.metrics`: latency percentiles of one kind of work.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    /// `publish`, `query`, `relay` or `subscription` (end to end: publish to delivery).
    pub metric: String,
    /// Samples since the node started.
    pub count: u64,
    /// Percentiles, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

fn no_cluster() -> crate::Error {
    crate::Error::InvalidParameter("this node is not part of a cluster".into())
}

/// A topic partition held elsewhere, as a replica reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    /// The topic.
    pub topic: eddy_storage::ObjectId,
    /// The partition.
    pub partition: u32,
    /// The leader that replica knows of.
    pub leader: Option<u64>,
    /// The oldest offset retained.
    pub start_offset: u64,
    /// The next offset (high watermark).
    pub next_offset: u64,
}

/// One row of `eddy.nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node id.
    pub id: u64,
    /// Postgres address.
    pub pg_addr: String,
    /// Internal RPC address.
    pub cluster_addr: String,
    /// `voter` or `learner` in the metadata group.
    pub role: String,
    /// The node answering the query.
    pub this_node: bool,
    /// `ok`, or `cut` when fault injection (testing) cut this node's link to it.
    pub link: String,
    /// Gossip failure detection's view: `live`, `suspect` or `dead` (`None`: not heard of).
    pub gossip: Option<String>,
    /// The node's zone label, as gossiped.
    pub zone: Option<String>,
    /// The node's load figures, as last gossiped (`None`: none heard).
    pub figures: Option<NodeFigures>,
    /// How long ago those figures last changed, as seen here (a node gossips new ones
    /// about once a second; older than a few seconds, the router ignores them).
    pub figures_age_ms: Option<u64>,
    /// On the answering node's row: internal frames it refused because they did not
    /// carry the cluster secret.
    pub frames_refused: Option<u64>,
    /// On the answering node's row: what faults injected through its fault file
    /// (testing) did there, so a test can prove a fault took effect.
    pub faults: Option<FaultCounts>,
    /// On the answering node's row: its hybrid logical clock now, a timestamp greater
    /// than every one it has given its writes or seen from another node.
    pub hlc: Option<u64>,
}

/// What injected faults did on a node (`eddy.nodes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Internal calls dropped on links cut.
    pub calls_dropped: u64,
    /// Gossip frames lost to the configured loss.
    pub gossip_lost: u64,
    /// Writes forwarded here answered with an injected failure.
    pub forwards_failed: u64,
    /// Statements run here slowed by an injected delay.
    pub statements_slowed: u64,
}

/// One row of `eddy.gossip_peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipPeerRow {
    /// The peer's node id.
    pub peer: u64,
    /// Its liveness as gossip sees it.
    pub status: String,
    /// Deltas sent to it.
    pub pushed: u64,
    /// Bytes of those deltas.
    pub pushed_bytes: u64,
    /// Deltas received from it that were new here.
    pub pulled: u64,
    /// Bytes received from it.
    pub pulled_bytes: u64,
    /// Deltas from it refused (untrusted origin, clock too far ahead).
    pub refused: u64,
    /// Exchanges with it that failed.
    pub failures: u64,
    /// Last successful exchange, microseconds since the epoch.
    pub last_sync_micros: Option<i64>,
}

/// One row of `eddy.raft_groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// Group id (`object id << 32 | partition`; 0 is the metadata group).
    pub group: u64,
    /// Topic or table name (`None` for the metadata group).
    pub object: Option<String>,
    /// Partition (0 for tables and the metadata group).
    pub partition: u32,
    /// This replica's role.
    pub state: String,
    /// The leader known here.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Newest log index here.
    pub last_log_index: Option<u64>,
    /// Newest index this replica knows committed.
    pub commit_index: Option<u64>,
    /// Newest applied index here.
    pub applied_index: Option<u64>,
    /// Replicas, voters first (`1 2 3`, learners marked `4(l)`).
    pub replicas: String,
}

/// Writes into the local store only (a node without replication, and unit tests).
#[async_trait]
impl Writer for Store {
    async fn write(&self, lane: Lane, ops: Vec<WriteOp>) -> crate::Result<Vec<WriteResult>> {
        Ok(self.write_in(lane, ops).await?)
    }
}

/// The local writer of `store`.
pub fn local(store: &Store) -> Arc<dyn Writer> {
    Arc::new(store.clone())
}
