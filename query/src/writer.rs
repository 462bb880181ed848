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

    /// Where a statement reading `objects` can run: `None` on this node, which holds a
    /// replica of every group of them; otherwise the Postgres addresses of the nodes
    /// that do, in the order to try them (empty: no node holds them all).
    fn serving_nodes(&self, objects: &[eddy_storage::ObjectId]) -> Option<Vec<String>> {
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
    /// The node's load figures, as gossiped (`connections=3 leaders=2`).
    pub load: Option<String>,
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
