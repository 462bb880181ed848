//! Node configuration: TOML file (`--config eddy.toml`) overridden by command-line flags.
//! Each crate owns its section; this file composes them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use eddy_consensus::{ClusterSection, GossipSection};

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
    /// Cluster membership and Raft timing (the consensus crate's section).
    pub cluster: ClusterSection,
    /// Gossip membership, failure detection and delta gossip (the consensus crate's).
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
