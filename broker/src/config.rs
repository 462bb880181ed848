//! Node configuration: TOML file (`--config eddy.toml`) overridden by command-line flags.
//! Each crate owns its section; this file composes them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use eddy_query::QueryConfig;
use eddy_storage::StorageConfig;
use serde::{Deserialize, Serialize};

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// RocksDB data directory.
    pub data_dir: PathBuf,
    /// Address of the Postgres wire protocol listener.
    pub pg_addr: SocketAddr,
    /// On shutdown, how long in-flight statements may finish before their connections are
    /// closed (idle connections close at once; every one is told 57P01 admin_shutdown).
    pub shutdown_grace_ms: u64,
    /// Most client connections open at once; a startup past it is refused with SQLSTATE
    /// 53300 too_many_connections. A CancelRequest is served regardless.
    pub max_connections: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("eddy-data"),
            pg_addr: SocketAddr::from(([127, 0, 0, 1], 5433)),
            shutdown_grace_ms: 5_000,
            max_connections: 100,
        }
    }
}

impl NodeConfig {
    /// Largest `max_connections` accepted: far above what one node can serve, and well
    /// inside what a semaphore counts.
    const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

    fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_CONNECTIONS_LIMIT).contains(&self.max_connections) {
            return Err(format!(
                "node.max_connections must be between 1 and {}",
                Self::MAX_CONNECTIONS_LIMIT
            ));
        }
        Ok(())
    }
}

/// The `[cluster]` section: this node's place in a cluster.
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
    pub fault_file: Option<std::path::PathBuf>,
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

    fn validate(&self) -> Result<(), String> {
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
    fn validate(&self) -> Result<(), String> {
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

/// Everything a node is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Node identity and listeners.
    pub node: NodeConfig,
    /// Storage (RocksDB, group commit, retention).
    pub storage: StorageConfig,
    /// SQL layer (message size limit, defaults).
    pub query: QueryConfig,
    /// Cluster membership and Raft timing.
    pub cluster: ClusterSection,
    /// Gossip membership, failure detection and delta gossip.
    pub gossip: GossipSection,
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.node.validate().map_err(anyhow::Error::msg)?;
        self.storage.validate().map_err(anyhow::Error::msg)?;
        self.query.validate().map_err(anyhow::Error::msg)?;
        self.cluster.validate().map_err(anyhow::Error::msg)?;
        self.gossip.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults_where_unchanged() {
        let text = include_str!("../../eddy.example.toml");
        let cfg = Config::from_toml(text).expect("example config parses");
        cfg.validate().expect("the example config is valid");
        assert_eq!(cfg.node, NodeConfig::default());
        assert_eq!(cfg.storage, StorageConfig::default());
        assert_eq!(cfg.query, QueryConfig::default());
        assert_eq!(cfg.cluster, ClusterSection::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Config::from_toml("[node]\nbogus = 1\n").is_err());
        assert!(Config::from_toml("[query]\nmax_message_bytes = 0\n")
            .expect("parses")
            .validate()
            .is_err());
        assert!(Config::from_toml("[node]\nmax_connections = 0\n")
            .expect("parses")
            .validate()
            .is_err());
    }
}
