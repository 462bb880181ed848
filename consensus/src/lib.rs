//! eddy-consensus: replication of eddy's topics and tables through openraft groups.
//!
//! - [`types`] — the openraft type configuration and what travels through Raft and
//!   between nodes.
//! - [`storage`] — openraft's log storage and state machine over eddy's store.
//! - [`network`] — the internal RPC: framed TCP between nodes, many groups per connection.
//! - [`cluster`] — a node's groups, the write path (batching, forwarding), joins.
//! - [`Error`] — what a cluster operation fails with, typed by what the caller may do.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod cluster;
mod config;
mod error;
pub mod gossip;
pub mod membership;
pub mod network;
pub mod storage;
pub mod types;

pub use auth::FrameAuth;
pub use cluster::{
    group_of, split_group, Balance, Cluster, ClusterConfig, GroupInfo, Holder, DEV_SECRET,
    METADATA_GROUP,
};
pub use config::{ClusterSection, GossipSection};
pub use error::{Error, Result};
pub use gossip::{GossipConfig, PeerStats};
pub use membership::{Liveness, Member, Membership, MembershipConfig, MembershipError};
pub use network::Faults;
pub use storage::{LogStore, StateMachine};
pub use types::{NodeId, NodeInfo, PartitionInfo, Request, Response, TypeConfig};

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod gossip_tests;
#[cfg(test)]
mod storage_tests;
