//! eddy-consensus: replication of eddy's topics and tables through openraft groups.
//!
//! - [`types`] — the openraft type configuration and what travels through Raft.
//! - [`storage`] — openraft's log storage and state machine over eddy's store.

pub mod storage;
pub mod types;

pub use storage::{LogStore, StateMachine};
pub use types::{NodeId, NodeInfo, Request, Response, TypeConfig};

#[cfg(test)]
mod storage_tests;
