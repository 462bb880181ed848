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
    /// Address of the HTTP listener serving `/metrics` (Prometheus text), `/healthz`
    /// and `/readyz`; none by default.
    pub http_addr: Option<SocketAddr>,
    /// On SIGTERM, drain first (as `ALTER CLUSTER DRAIN NODE`: hand leaders over, let
    /// statements finish), then stop.
    pub drain_on_shutdown: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("eddy-data"),
            pg_addr: SocketAddr::from(([127, 0, 0, 1], 5433)),
            shutdown_grace_ms: 5_000,
            max_connections: 100,
            http_addr: None,
            drain_on_shutdown: false,
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

/// The `[routing]` section: how statements and subscriptions are spread over the
/// cluster (docs/operations.md, "Routing").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The strategy of a session that sets none (`SET routing`): `adaptive`,
    /// `round_robin`, `least_connections`, `locality` or `local`.
    pub strategy: String,
    /// The weights of `adaptive`'s cost, in percent: statements in flight and queued,
    /// latency, CPU use, another zone.
    pub weight_load: u32,
    /// See `weight_load`.
    pub weight_latency: u32,
    /// See `weight_load`.
    pub weight_resources: u32,
    /// See `weight_load`.
    pub weight_locality: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: "adaptive".into(),
            weight_load: 30,
            weight_latency: 30,
            weight_resources: 20,
            weight_locality: 20,
        }
    }
}

impl RoutingConfig {
    fn validate(&self) -> Result<(), String> {
        if crate::router::Strategy::parse(&self.strategy).is_none() {
            return Err(format!(
                "routing.strategy must be one of {}, not '{}'",
                eddy_query::ROUTING_STRATEGIES.join(", "),
                self.strategy
            ));
        }
        let sum =
            self.weight_load + self.weight_latency + self.weight_resources + self.weight_locality;
        if sum == 0 || sum > 1000 {
            return Err(format!(
                "the routing.weight_* must sum to between 1 and 1000, not {sum}"
            ));
        }
        Ok(())
    }

    /// The strategy and the weights, as the router takes them.
    pub(crate) fn router(&self) -> (crate::router::Strategy, crate::router::Weights) {
        let w = |p: u32| f64::from(p) / 100.0;
        (
            crate::router::Strategy::parse(&self.strategy).unwrap_or_default(),
            crate::router::Weights {
                load: w(self.weight_load),
                latency: w(self.weight_latency),
                resources: w(self.weight_resources),
                locality: w(self.weight_locality),
            },
        )
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
    /// Routing of statements and subscriptions.
    pub routing: RoutingConfig,
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
        self.routing.validate().map_err(anyhow::Error::msg)?;
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
        assert_eq!(cfg.routing, RoutingConfig::default());
        let (strategy, weights) = cfg.routing.router();
        assert_eq!(strategy, crate::router::Strategy::Adaptive);
        assert_eq!(weights, crate::router::Weights::default());
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
        assert!(Config::from_toml("[routing]\nstrategy = \"fastest\"\n")
            .expect("parses")
            .validate()
            .is_err());
    }
}
