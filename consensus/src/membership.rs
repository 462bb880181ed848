//! Gossip membership and failure detection: which nodes exist, their addresses and load,
//! and whether each is live, suspect or dead. Built on chitchat (scuttlebutt gossip with
//! a phi-accrual failure detector) over UDP on the node's cluster address: the same ip
//! and port as the internal RPC, UDP instead of TCP.
//!
//! ```text
//!        set_load / add_seed            members() / liveness()
//!              │                              ▲
//!              ▼                              │ (sampled every gossip_interval)
//!   driver task ── lock, sample ──► chitchat ──► view::View (pure: suspect, generations)
//!              │                      ▲   │
//!              └── gossip(seed) ──────┘   ▼
//!                          transport: seal/open (FrameAuth), `blocked` ◄──► UDP peers
//!   discovery task (optional): broadcast announcements ─► add_seed
//! ```
//!
//! - **Identity.** chitchat's node id is the eddy node id as text, its generation the
//!   start time in milliseconds: a restarted node is a new generation, reported in place
//!   of the old one (one row per node id). The cluster id is [`CLUSTER_ID`].
//! - **Liveness.** chitchat decides live or dead; `dead_after` is mapped onto its
//!   detector as described on [`MembershipConfig::dead_after`]. Suspect is ours: still
//!   live for chitchat, but no heartbeat advance seen for `max(3 × gossip_interval,
//!   dead_after / 3)`.
//! - **Authentication.** Every datagram is sealed with the cluster secret; others are
//!   dropped and counted ([`Membership::rejected`]).
//! - Membership here never changes Raft membership; it is information (for `eddy.nodes`,
//!   routing, and gossip replication's choice of peers).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, ProtocolVersion,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::FrameAuth;

mod discovery;
mod transport;
mod view;

#[cfg(test)]
mod tests;

use transport::{Counters, SealedSocket, SealedTransport};
use view::{Observation, View, KEY_PG_ADDR, KEY_ZONE, LOAD_PREFIX};

/// chitchat's cluster id: a node of another cluster id is answered "bad cluster".
pub const CLUSTER_ID: &str = "eddy";

/// How long a resolution of a seed host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long tombstones of deleted keys are kept (no key is deleted today; chitchat
/// requires a value).
const KEY_TOMBSTONE_GRACE: Duration = Duration::from_secs(60 * 60);

/// Fault injection: datagrams to or from the addresses it returns true for are dropped.
pub type Blocked = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Errors starting membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is inconsistent.
    #[error("invalid membership config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The gossip socket could not be bound (the cluster address, over UDP).
    #[error("cannot bind the gossip socket to {addr}/udp: {source}")]
    Bind {
        /// The cluster address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The discovery socket could not be bound.
    #[error("cannot bind the discovery socket to port {port}/udp: {source}")]
    Discovery {
        /// The discovery port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// chitchat or its transport could not start.
    #[error("cannot start gossip: {source}")]
    Gossip {
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Configuration of a node's membership.
#[derive(Clone)]
pub struct MembershipConfig {
    /// This node's eddy node id.
    pub node_id: u64,
    /// The node's cluster address: the gossip UDP socket binds it (port 0 picks a free
    /// port, see [`Membership::gossip_addr`]) and other nodes gossip to it.
    pub cluster_addr: SocketAddr,
    /// The Postgres address clients use, gossiped as a key.
    pub pg_addr: String,
    /// The node's zone, gossiped as a key ("" when unset).
    pub zone: String,
    /// Cluster addresses ("host:port") of other nodes to gossip with first. Host names
    /// are resolved again every minute.
    pub seeds: Vec<String>,
    /// How often the node gossips with (up to three) others. Default 200 ms.
    pub gossip_interval: Duration,
    /// Roughly how long after its last heartbeat a node is marked dead. Default 3 s.
    ///
    /// chitchat declares a node dead after `phi_threshold × mean heartbeat interval`
    /// without a heartbeat. eddy sets `initial_interval = gossip_interval`,
    /// `phi_threshold = dead_after / gossip_interval`, a sampling window of 5 intervals
    /// (the prior weighs as much as the samples) and `max_interval = dead_after`, so a
    /// node that stops (`kill -9`) is marked dead between `dead_after / 2` and
    /// `dead_after` after its last heartbeat, plus up to two gossip intervals; a slow,
    /// jittery network stretches it. Dead nodes stay in chitchat for an hour
    /// (`dead_node_grace_period`), and in [`Membership::members`] for good.
    pub dead_after: Duration,
    /// Seals and opens every datagram; refused ones are dropped and counted.
    pub auth: Arc<FrameAuth>,
    /// Testing fault injection: datagrams to or from these addresses are dropped, in both
    /// directions. Never blocks by default.
    pub blocked: Blocked,
    /// LAN discovery UDP port: when set, the node announces its cluster address by
    /// broadcast on it every second and seeds gossip with the addresses it hears. Off by
    /// default.
    pub discover: Option<u16>,
}

impl MembershipConfig {
    /// A configuration with the defaults: no seeds, gossip every 200 ms, dead after 3 s,
    /// nothing blocked, no discovery.
    pub fn new(node_id: u64, cluster_addr: SocketAddr, auth: Arc<FrameAuth>) -> MembershipConfig {
        MembershipConfig {
            node_id,
            cluster_addr,
            pg_addr: String::new(),
            zone: String::new(),
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            dead_after: Duration::from_secs(3),
            auth,
            blocked: Arc::new(|_| false),
            discover: None,
        }
    }

    /// Checks the intervals: a `gossip_interval` of at least 1 ms, and a `dead_after` of
    /// at least two gossip intervals (the failure detector needs a few heartbeats).
    pub fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |reason: String| Err(MembershipError::InvalidConfig { reason });
        if self.gossip_interval < Duration::from_millis(1) {
            return invalid(format!(
                "gossip_interval {:?} is below 1 ms",
                self.gossip_interval
            ));
        }
        if self.dead_after < self.gossip_interval * 2 {
            return invalid(format!(
                "dead_after {:?} is less than two gossip intervals ({:?})",
                self.dead_after, self.gossip_interval
            ));
        }
        if self.discover == Some(0) {
            return invalid("discovery port 0".to_string());
        }
        Ok(())
    }
}

impl fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("node_id", &self.node_id)
            .field("cluster_addr", &self.cluster_addr)
            .field("pg_addr", &self.pg_addr)
            .field("zone", &self.zone)
            .field("seeds", &self.seeds)
            .field("gossip_interval", &self.gossip_interval)
            .field("dead_after", &self.dead_after)
            .field("discover", &self.discover)
            .finish_non_exhaustive()
    }
}

/// A node's liveness as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// Heartbeats arrive.
    Live,
    /// Still live for the failure detector, but no heartbeat advance for a while
    /// (`max(3 × gossip_interval, dead_after / 3)`).
    Suspect,
    /// The failure detector gave up on it (or never heard enough of it yet).
    Dead,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Live => "live",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
        })
    }
}

/// A node as membership knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its eddy node id.
    pub node_id: u64,
    /// Its Postgres address ("" if it did not gossip one).
    pub pg_addr: String,
    /// Its cluster (and gossip) address.
    pub cluster_addr: String,
    /// Its zone ("" when unset).
    pub zone: String,
    /// Live, suspect or dead.
    pub liveness: Liveness,
    /// This is the node asking.
    pub this_node: bool,
    /// Its load figures ([`Membership::set_load`]).
    pub load: BTreeMap<String, String>,
    /// When its load figures last changed as seen here (`None`: it has none): a node
    /// gossips them about once a second, so figures that stood still for longer are
    /// stale, whatever clock the node keeps.
    pub load_since: Option<std::time::Instant>,
}

/// State shared by the handle and its tasks.
struct Shared {
    /// The members as last sampled.
    view: RwLock<View>,
    /// What the transport and discovery dropped.
    counters: Arc<Counters>,
    /// Work for the driver task, taken whole at each wake-up (so it cannot pile up: loads
    /// coalesce by key, seeds by address).
    pending: Mutex<Pending>,
    /// Wakes the driver task for `pending`.
    wake: Notify,
    /// Own gossip address (never a seed).
    gossip_addr: SocketAddr,
}

#[derive(Default)]
struct Pending {
    seeds: Vec<SocketAddr>,
    loads: BTreeMap<String, String>,
}

impl Shared {
    fn add_seed_addr(&self, addr: SocketAddr) {
        if addr != self.gossip_addr {
            let mut pending = self.pending.lock();
            if !pending.seeds.contains(&addr) {
                pending.seeds.push(addr);
            }
        }
        self.wake.notify_one();
    }
}

/// A node's membership: gossip, failure detection, the member list.
///
/// Dropping it stops gossip too, without waiting; [`Membership::shutdown`] waits.
pub struct Membership {
    /// The chitchat server, shared with the driver task; taken back at shutdown.
    chitchat: Option<Arc<ChitchatHandle>>,
    shared: Arc<Shared>,
    /// Stops the driver, pump and discovery tasks.
    cancel: CancellationToken,
    /// The driver, pump and discovery tasks, and seed resolutions.
    tasks: TaskTracker,
}

impl Membership {
    /// Binds the gossip socket to the cluster address (UDP) and starts gossiping.
    pub async fn start(cfg: MembershipConfig) -> Result<Membership, MembershipError> {
        cfg.validate()?;
        let cancel = CancellationToken::new();
        // Whatever was started is stopped again if a later step fails.
        let guard = cancel.clone().drop_guard();
        let tasks = TaskTracker::new();
        let counters = Arc::new(Counters::default());

        let socket = SealedSocket::bind(
            cfg.cluster_addr,
            cfg.auth.clone(),
            cfg.blocked.clone(),
            counters.clone(),
            cancel.clone(),
            &tasks,
        )
        .await?;
        let gossip_addr = socket.local_addr();
        let discovery = cfg.discover.map(discovery::bind).transpose()?;

        // A restarted node must be a newer generation: wall-clock milliseconds.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let chitchat_id = ChitchatId::new(cfg.node_id.to_string(), generation, gossip_addr);
        let keys = vec![
            (KEY_PG_ADDR.to_string(), cfg.pg_addr.clone()),
            (KEY_ZONE.to_string(), cfg.zone.clone()),
        ];
        let config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: CLUSTER_ID.to_string(),
            gossip_interval: cfg.gossip_interval,
            listen_addr: gossip_addr,
            seed_nodes: cfg
                .seeds
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            failure_detector_config: view::failure_detector_config(
                cfg.gossip_interval,
                cfg.dead_after,
            ),
            marked_for_deletion_grace_period: KEY_TOMBSTONE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // The compressed digest: every eddy node speaks it, and it leaves more of a
            // datagram for deltas.
            protocol_version: ProtocolVersion::V1,
        };
        let suspect_after = view::suspect_after(cfg.gossip_interval, cfg.dead_after);
        let shared = Arc::new(Shared {
            view: RwLock::new(View::new(chitchat_id, suspect_after, &keys)),
            counters: counters.clone(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            gossip_addr,
        });
        let handle = spawn_chitchat(config, keys, &SealedTransport::new(socket))
            .await
            .map(Arc::new)
            .map_err(|err| MembershipError::Gossip { source: err.into() })?;

        tasks.spawn(drive(
            handle.clone(),
            shared.clone(),
            cfg.gossip_interval,
            cancel.clone(),
        ));
        if let (Some(socket), Some(port)) = (discovery, cfg.discover) {
            let me = discovery::Announcement {
                node_id: cfg.node_id,
                cluster_addr: gossip_addr,
            };
            let heard = {
                let shared = shared.clone();
                move |addr| shared.add_seed_addr(addr)
            };
            let discovery = discovery::Discovery {
                socket,
                port,
                me,
                auth: cfg.auth.clone(),
                blocked: cfg.blocked.clone(),
                counters,
            };
            tasks.spawn(discovery.run(heard, cancel.clone()));
        }
        guard.disarm();
        info!(node_id = cfg.node_id, %gossip_addr, discover = ?cfg.discover, "gossip membership started");
        Ok(Membership {
            chitchat: Some(handle),
            shared,
            cancel,
            tasks,
        })
    }

    /// The bound gossip address (the cluster address, with the port chosen if it was 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.gossip_addr
    }

    /// Every node ever heard of, this one included, sorted by id: one row per node id (its
    /// newest generation). Sampled every gossip interval.
    pub fn members(&self) -> Vec<Member> {
        self.shared.view.read().members()
    }

    /// The liveness of a node, `None` if it was never heard of.
    pub fn liveness(&self, node_id: u64) -> Option<Liveness> {
        self.members()
            .into_iter()
            .find(|m| m.node_id == node_id)
            .map(|m| m.liveness)
    }

    /// Sets a load figure of this node, gossiped as the key `load:<key>` (for a router).
    pub fn set_load(&self, key: &str, value: String) {
        self.shared
            .view
            .write()
            .set_own_load(key, &value, std::time::Instant::now());
        self.shared
            .pending
            .lock()
            .loads
            .insert(key.to_string(), value);
        self.shared.wake.notify_one();
    }

    /// Gossips with the node at this cluster address ("host:port") at once and keeps it
    /// as a seed (e.g. when Raft membership learns of a new node). A host name is
    /// resolved in the background; one that does not resolve is logged and dropped.
    pub fn add_seed(&self, addr: &str) {
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            self.shared.add_seed_addr(addr);
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            warn!(
                seed = addr,
                "add_seed outside a Tokio runtime: host name not resolved"
            );
            return;
        }
        let (shared, host) = (self.shared.clone(), addr.to_string());
        self.tasks.spawn(async move {
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(&host)).await {
                Ok(Ok(addrs)) => addrs.for_each(|addr| shared.add_seed_addr(addr)),
                Ok(Err(err)) => warn!(%err, seed = host, "cannot resolve gossip seed"),
                Err(_) => warn!(seed = host, "resolving gossip seed timed out"),
            }
        });
    }

    /// Datagrams refused by authentication (gossip and discovery), counted by this
    /// membership only (the [`FrameAuth`] may be shared with other users).
    pub fn rejected(&self) -> u64 {
        self.shared.counters.rejected.load(Ordering::Relaxed)
    }

    /// Datagrams dropped by the `blocked` fault injector, sent or received.
    pub fn blocked_datagrams(&self) -> u64 {
        self.shared.counters.blocked.load(Ordering::Relaxed)
    }

    /// Stops gossiping and waits for every task; the UDP ports are free afterwards. Other
    /// nodes see this node go dead after `dead_after` (chitchat has no leave message).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let Some(handle) = self.chitchat.take() else {
            return;
        };
        // The driver held the only other reference, and it has stopped.
        match Arc::try_unwrap(handle) {
            Ok(handle) => {
                if let Err(err) = handle.shutdown().await {
                    warn!(%err, "gossip server stopped with an error");
                }
            }
            Err(handle) => {
                let _ = handle.initiate_shutdown();
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = &self.chitchat {
            let _ = handle.initiate_shutdown();
        }
    }
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("gossip_addr", &self.shared.gossip_addr)
            .finish_non_exhaustive()
    }
}

/// The driver task: every gossip interval, or when woken, applies pending loads and seeds
/// and samples chitchat into the view.
async fn drive(
    handle: Arc<ChitchatHandle>,
    shared: Arc<Shared>,
    gossip_interval: Duration,
    cancel: CancellationToken,
) {
    let chitchat = handle.chitchat();
    // Seeds from add_seed and discovery; chitchat's own seed list is fixed at start.
    let mut seeds: Vec<SocketAddr> = Vec::new();
    let mut tick = tokio::time::interval(gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => true,
            _ = shared.wake.notified() => false,
        };
        let pending = std::mem::take(&mut *shared.pending.lock());
        for addr in pending.seeds {
            if !seeds.contains(&addr) {
                seeds.push(addr);
                info!(%addr, "gossip seed added");
            }
            // At once, as asked; a lost datagram is retried below every interval.
            let _ = handle.gossip(addr);
        }
        let observations = {
            let mut chitchat = chitchat.lock().await;
            for (key, value) in pending.loads {
                chitchat
                    .self_node_state()
                    .set(format!("{LOAD_PREFIX}{key}"), value);
            }
            observe(&chitchat)
        };
        // Addresses of the nodes not dead, to know which seeds still need a nudge.
        let reachable: Vec<String> = {
            let mut view = shared.view.write();
            view.update(&observations, std::time::Instant::now());
            view.members()
                .into_iter()
                .filter(|m| m.liveness != Liveness::Dead)
                .map(|m| m.cluster_addr)
                .collect()
        };
        if ticked {
            // chitchat gossips with its own seeds while it knows no live node; do the
            // same for ours while the node at the seed is not live.
            for addr in &seeds {
                if !reachable.contains(&addr.to_string()) {
                    let _ = handle.gossip(*addr);
                }
            }
        }
    }
}

/// Samples chitchat's node states (under its lock: no await in here).
fn observe(chitchat: &Chitchat) -> Vec<Observation> {
    let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    chitchat
        .node_states()
        .iter()
        .map(|(id, state)| Observation {
            id: id.clone(),
            live: live.contains(id),
            heartbeat: state.heartbeat(),
            keys: state
                .key_values()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .collect()
}
