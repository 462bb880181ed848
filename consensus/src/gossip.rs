//! Delta gossip for objects created `WITH (replication = 'gossip')`: what travels between
//! nodes, the settings, and the per-peer counters of `eddy.gossip_peers`. The loops that
//! push deltas and run anti-entropy are in `cluster/gossip.rs`; the delta log and merge
//! are in `eddy_storage::gossip`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use eddy_storage::gossip::{DeltaBatch, Origin};
use eddy_storage::ObjectId;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Settings of delta gossip.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// How often anti-entropy runs (with one peer per round, in turn).
    pub anti_entropy: Duration,
    /// Most delta bytes in one push frame.
    pub push_bytes: usize,
    /// Most delta bytes one anti-entropy round sends each way (bounded bandwidth).
    pub sync_bytes: usize,
    /// Deltas stamped further ahead of the local clock than this are refused.
    pub max_clock_offset: Duration,
    /// Origins whose deltas are accepted; `None` accepts every origin.
    pub trust_origins: Option<BTreeSet<NodeId>>,
    /// How often membership gossip runs (UDP, on the cluster address).
    pub interval: Duration,
    /// About how long after its last heartbeat a silent node is marked dead.
    pub dead_after: Duration,
    /// This node's zone label.
    pub zone: String,
    /// LAN discovery port (UDP broadcast); `None`: off.
    pub discover: Option<u16>,
    /// Deltas and tombstones older than this are collected; a node away longer resyncs.
    pub horizon: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        (&crate::GossipSection::default()).into()
    }
}

/// An object's version vector on the wire: the applied seq per origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVv {
    /// The topic or table.
    pub object: ObjectId,
    /// (origin, applied seq), by origin.
    pub applied: Vec<(Origin, u64)>,
}

/// After a push: the receiver's applied seq for one object and origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The topic or table.
    pub object: ObjectId,
    /// The origin.
    pub origin: Origin,
    /// Every delta of the origin up to this seq is applied on the receiver.
    pub applied: u64,
}

/// The answer to an anti-entropy digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReply {
    /// Deltas the caller lacks (bounded in bytes; the rest comes next round).
    pub missing: Vec<DeltaBatch>,
    /// (object, origin, first retained seq): the caller is behind what is still kept.
    pub behind: Vec<(ObjectId, Origin, u64)>,
    /// The answering node's version vectors of every gossip object.
    pub mine: Vec<ObjectVv>,
}

/// A gossip table's full state: its version vector (read first) and every row version
/// with its row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    /// (origin, entry), by origin.
    pub vv: Vec<(Origin, eddy_storage::gossip::VvEntry)>,
    /// Row key, version, row (`None` for a tombstone).
    pub rows: Vec<eddy_storage::gossip::RowState>,
}

/// What this node exchanged with one peer (`eddy.gossip_peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Deltas sent to the peer (pushes and anti-entropy).
    pub pushed: u64,
    /// Bytes of those deltas.
    pub pushed_bytes: u64,
    /// Deltas received from the peer that were new here (applied).
    pub pulled: u64,
    /// Bytes of the deltas received from the peer.
    pub pulled_bytes: u64,
    /// Deltas from the peer refused (untrusted origin, timestamp too far ahead).
    pub refused: u64,
    /// Last exchange with the peer that succeeded.
    pub last_sync: Option<SystemTime>,
    /// Exchanges that failed (unreachable, timed out).
    pub failures: u64,
}
