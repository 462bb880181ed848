//! The `[cluster]` and `[gossip]` sections of a node's configuration, with the one set of
//! defaults the crate has: [`ClusterConfig::new`] and [`GossipConfig::default`] are made
//! from them. The broker composes these sections into its TOML file and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;
use crate::gossip::GossipConfig;
use crate::types::NodeInfo;

/// The `[cluster]` section: this node's place in a cluster, and Raft's timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's id: nonzero and unique in the cluster, the same on every restart.
    pub node_id: u64,
    /// Listener for the internal RPC between nodes. Unset: the Postgres host with port
    /// + 2000 (5433 -> 7433), or port 0 when the Postgres port is 0.
    pub cluster_addr: Option<SocketAddr>,
    /// A member's cluster address to join through when this node starts empty. Unset: an
    /// empty node forms a new cluster of its own.
    pub join: Option<String>,
    /// Raft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Raft's election timeout: a follower that hears no leader for three to four times
    /// this (the old leader's lease, twice it, then a random timeout up to twice it)
    /// starts an election.
    pub election_timeout_ms: u64,
    /// Testing only: a file listing node ids (whitespace-separated) whose links to this
    /// node are cut, re-read every 100 ms. Calls to and from them are dropped, as if the
    /// network between were split; `eddy.nodes` shows them with `link = 'cut'`. A word
    /// `loss=N` loses N per mille of the gossip frames this node sends.
    pub fault_file: Option<PathBuf>,
    /// The cluster secret: every internal frame (Raft, gossip) carries an HMAC-SHA256 tag
    /// keyed by it, and frames without the right tag are refused. Every node of a cluster
    /// needs the same one. Unset: a built-in development secret (the node warns).
    pub secret: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: 1,
            cluster_addr: None,
            join: None,
            heartbeat_ms: 100,
            election_timeout_ms: 300,
            fault_file: None,
            secret: None,
        }
    }
}

impl ClusterSection {
    /// The cluster listener address for a node whose Postgres listener is `pg`.
    pub fn cluster_addr_for(&self, pg: SocketAddr) -> SocketAddr {
        self.cluster_addr.unwrap_or_else(|| {
            let port = match pg.port() {
                0 => 0,
                p => p.saturating_add(2000),
            };
            SocketAddr::new(pg.ip(), port)
        })
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("cluster.node_id must be at least 1".into());
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms {
            return Err(
                "cluster.election_timeout_ms must be longer than cluster.heartbeat_ms (> 0)".into(),
            );
        }
        Ok(())
    }
}

/// The `[gossip]` section: membership, failure detection and delta gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSection {
    /// How often a node gossips its membership state to a few peers (UDP, on the
    /// cluster address's port).
    pub interval_ms: u64,
    /// About how long after its last heartbeat a silent node is marked dead.
    pub dead_after_ms: u64,
    /// How often anti-entropy runs with one peer (in turn).
    pub anti_entropy_ms: u64,
    /// Most delta bytes one anti-entropy round sends each way.
    pub sync_bytes: usize,
    /// Deltas stamped further than this ahead of the local clock are refused (counted in
    /// `eddy.gossip_peers.refused`) until the clock catches up.
    pub max_clock_offset_ms: u64,
    /// Origins (node ids) whose deltas this node accepts; unset accepts every origin.
    pub trust_origins: Option<Vec<u64>>,
    /// This node's zone label, gossiped to the others (`eddy.nodes.zone`).
    pub zone: String,
    /// LAN discovery: announce this node's cluster address by UDP broadcast on this port
    /// and join the nodes heard there. Unset: off.
    pub discover_port: Option<u16>,
    /// Deltas and tombstones older than this are collected. A node away longer than this
    /// resyncs tables from a peer's full state (deleted rows stay deleted) and skips topic
    /// messages the peers no longer hold.
    pub tombstone_horizon_ms: u64,
}

impl Default for GossipSection {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            dead_after_ms: 3_000,
            anti_entropy_ms: 1_000,
            sync_bytes: 4 << 20,
            max_clock_offset_ms: 500,
            trust_origins: None,
            zone: String::new(),
            discover_port: None,
            tombstone_horizon_ms: 24 * 3600 * 1000,
        }
    }
}

impl GossipSection {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0
            || self.anti_entropy_ms == 0
            || self.sync_bytes == 0
            || self.tombstone_horizon_ms == 0
        {
            return Err(
                "gossip.interval_ms, anti_entropy_ms, sync_bytes and tombstone_horizon_ms must be at least 1"
                    .into(),
            );
        }
        if self.dead_after_ms < 2 * self.interval_ms {
            return Err("gossip.dead_after_ms must be at least twice gossip.interval_ms".into());
        }
        Ok(())
    }
}

impl From<&GossipSection> for GossipConfig {
    fn from(g: &GossipSection) -> Self {
        GossipConfig {
            anti_entropy: Duration::from_millis(g.anti_entropy_ms),
            push_bytes: 1 << 20,
            sync_bytes: g.sync_bytes,
            max_clock_offset: Duration::from_millis(g.max_clock_offset_ms),
            trust_origins: g
                .trust_origins
                .as_ref()
                .map(|t| t.iter().copied().collect()),
            interval: Duration::from_millis(g.interval_ms),
            dead_after: Duration::from_millis(g.dead_after_ms),
            zone: g.zone.clone(),
            discover: g.discover_port,
            horizon: Duration::from_millis(g.tombstone_horizon_ms),
        }
    }
}

impl ClusterConfig {
    /// The configuration of node `info` from its sections. `join` and `secret` are taken
    /// from `cluster` (the development secret when it has none).
    pub fn from_sections(cluster: &ClusterSection, gossip: &GossipSection, info: NodeInfo) -> Self {
        ClusterConfig {
            node_id: cluster.node_id,
            info,
            join: cluster.join.clone(),
            heartbeat: Duration::from_millis(cluster.heartbeat_ms),
            election_timeout: Duration::from_millis(cluster.election_timeout_ms),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            secret: cluster
                .secret
                .clone()
                .unwrap_or_else(|| crate::cluster::DEV_SECRET.into()),
            gossip: gossip.into(),
        }
    }
}
