//! A running node: storage, engine, the Postgres listener and background tasks.
//!
//! Shutdown order (see STYLE.md): stop accepting; tell idle connections 57P01
//! admin_shutdown and close them; give in-flight statements `shutdown_grace_ms`, each
//! connection closing (57P01) as its statement ends; close the rest (57P01) when the grace
//! is over; stop retention, then the Raft groups, then let the committer drain its queue
//! and sync the WAL.
//!
//! Every node is a cluster node: a node started without `join` forms a cluster of one
//! (its metadata group has one voter), which others can join later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eddy_consensus::{
    group_of, split_group, Cluster, ClusterConfig, Faults, NodeInfo, METADATA_GROUP,
};
use eddy_query::{
    CounterRow, Description, Engine, GossipPeerRow, GroupRow, Holder, MetricRow, NodeRow,
    PartitionRow, RouteRow, Writer,
};
use eddy_storage::{Lane, Store, WriteOp, WriteResult};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

mod loops;
use crate::http;
use crate::load::{self, Meter};
use crate::pg::conn::{serve, Admission, Shutdown, GOODBYE_TIMEOUT};
use crate::pg::{Backend, Handlers};
use crate::routing::Routing;
use loops::{balance_loop, fault_loop, load_loop, retention_loop, LOAD_EVERY};

/// Handle to a running node.
pub struct NodeHandle {
    pg_addr: SocketAddr,
    cancel: CancellationToken,
    /// The node's own tasks (accepting and serving connections, load figures, the fault
    /// file, retention); each ends once `cancel` fires, and shutdown waits for them.
    tasks: TaskTracker,
    store: Store,
    engine: Arc<Engine>,
    cluster: Cluster,
    cluster_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
}

/// Binds the cluster (internal RPC) listener. Gossip uses the same port over UDP, so with
/// port 0 the port the system picks must be free for UDP too: it is probed, and another
/// one picked while it is not. The probe socket is returned and held until gossip binds.
async fn bind_cluster(
    want: SocketAddr,
) -> anyhow::Result<(TcpListener, Option<std::net::UdpSocket>)> {
    let mut tries = 0;
    loop {
        let listener = TcpListener::bind(want)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for the cluster on {want}: {e}"))?;
        if want.port() != 0 {
            return Ok((listener, None));
        }
        match std::net::UdpSocket::bind(listener.local_addr()?) {
            Ok(probe) => return Ok((listener, Some(probe))),
            Err(e) if tries < 20 => {
                tracing::debug!(error = %e, "cluster port taken for UDP; picking another");
                tries += 1;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot find a cluster port free for TCP and UDP on {want}: {e}"
                ))
            }
        }
    }
}

/// A cluster error as the query layer carries it: storage outcomes stay themselves,
/// the rest keep their class (retry, outcome unknown, refused, internal).
fn from_cluster(e: eddy_consensus::Error) -> eddy_query::Error {
    use eddy_consensus::Error as E;
    use eddy_query::Error as Q;
    match e {
        E::Storage(s) => Q::Storage(s),
        E::NotLeader { .. } | E::Unavailable(_) => Q::Unavailable(e.to_string()),
        E::OutcomeUnknown(m) => Q::OutcomeUnknown(m),
        E::Refused(m) => Q::InvalidParameter(m),
        E::Internal(m) => Q::Internal(m),
    }
}

/// The query layer's writes go through the cluster's Raft groups; what it asks of the
/// cluster and the router is answered here too.
struct Replicated(Cluster, Arc<Faults>, Arc<Routing>);

#[async_trait]
impl Writer for Replicated {
    async fn write(&self, lane: Lane, ops: Vec<WriteOp>) -> eddy_query::Result<Vec<WriteResult>> {
        self.0.write_in(lane, ops).await.map_err(from_cluster)
    }

    async fn read_barrier(&self, objects: &[u32]) -> eddy_query::Result<()> {
        self.0
            .read_barrier_objects(objects)
            .await
            .map_err(from_cluster)
    }

    fn lacks_replicas(&self) -> bool {
        self.0.lacks_replicas()
    }

    fn holders(&self, objects: &[u32]) -> Option<Vec<Holder>> {
        let holders = self.0.holders(objects)?;
        Some(
            holders
                .into_iter()
                .map(|h| Holder {
                    node: h.node,
                    pg_addr: h.pg_addr,
                    leader: h.leader,
                    this_node: h.this_node,
                })
                .collect(),
        )
    }

    fn node_id(&self) -> Option<u64> {
        Some(self.0.id())
    }

    fn routing(&self) -> Vec<CounterRow> {
        self.2.meter().counters()
    }

    fn metrics(&self) -> Vec<MetricRow> {
        self.2.meter().metrics()
    }

    fn explain_route(
        &self,
        description: &Description,
        holders: Option<Vec<Holder>>,
        strategy: &str,
    ) -> Vec<RouteRow> {
        self.2.explain(description, holders, strategy)
    }

    async fn drain_node(&self, node: u64, drain: bool) -> eddy_query::Result<()> {
        self.0.drain_node(node, drain).await.map_err(from_cluster)
    }

    fn led_partitions(&self, topic: u32, partitions: u32) -> Option<Vec<u32>> {
        self.0.led_partitions(topic, partitions)
    }

    async fn remote_partitions(&self, wanted: &[(u32, u32)]) -> Vec<PartitionRow> {
        let groups = wanted.iter().map(|(t, p)| group_of(*t, *p)).collect();
        self.0
            .remote_partitions(groups)
            .await
            .into_iter()
            .map(|p| {
                let (topic, partition) = split_group(p.group);
                PartitionRow {
                    topic,
                    partition,
                    leader: p.leader,
                    start_offset: p.start_offset,
                    next_offset: p.next_offset,
                }
            })
            .collect()
    }

    async fn metadata_barrier(&self) -> eddy_query::Result<()> {
        self.0
            .read_barrier(METADATA_GROUP)
            .await
            .map_err(from_cluster)
    }

    async fn add_node(&self, cluster_addr: &str) -> eddy_query::Result<u64> {
        self.0.add_node_at(cluster_addr).await.map_err(from_cluster)
    }

    async fn remove_node(&self, node: u64) -> eddy_query::Result<()> {
        self.0.remove_node(node).await.map_err(from_cluster)
    }

    fn nodes(&self) -> Vec<NodeRow> {
        let voters = self
            .0
            .metadata()
            .map(|m| {
                m.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let cut = self.1.cut();
        let members = self.0.members();
        self.0
            .nodes()
            .into_iter()
            .map(|(id, info)| {
                let member = members.iter().find(|m| m.node_id == id);
                let this_node = id == self.0.id();
                NodeRow {
                    id,
                    pg_addr: info.pg_addr,
                    cluster_addr: info.cluster_addr,
                    role: if voters.contains(&id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    this_node,
                    link: if cut.contains(&id) { "cut" } else { "ok" }.into(),
                    gossip: member.map(|m| m.liveness.to_string()),
                    zone: member.map(|m| m.zone.clone()),
                    figures: member.and_then(|m| load::decode(&m.load)),
                    figures_age_ms: member
                        .and_then(|m| m.load_since)
                        .map(|t| t.elapsed().as_millis() as u64),
                    frames_refused: this_node.then(|| self.0.frames_refused()),
                    faults: this_node.then(|| fault_counts(&self.1)),
                    hlc: this_node.then(|| self.0.store().hlc().now()),
                }
            })
            .collect()
    }

    fn gossip_peers(&self) -> Vec<GossipPeerRow> {
        self.0
            .gossip_peers()
            .into_iter()
            .map(|(peer, s)| GossipPeerRow {
                peer,
                status: self
                    .0
                    .liveness(peer)
                    .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
                pushed: s.pushed,
                pushed_bytes: s.pushed_bytes,
                pulled: s.pulled,
                pulled_bytes: s.pulled_bytes,
                refused: s.refused,
                failures: s.failures,
                last_sync_micros: s.last_sync.and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_micros() as i64)
                }),
            })
            .collect()
    }

    fn raft_groups(&self) -> Vec<GroupRow> {
        let catalog = self.0.store().catalog();
        self.0
            .group_info()
            .into_iter()
            .map(|g| {
                let object = (g.group != METADATA_GROUP)
                    .then(|| catalog.by_id(split_group(g.group).0))
                    .flatten()
                    .map(|d| d.name().to_owned());
                let mut replicas: Vec<String> = g.voters.iter().map(u64::to_string).collect();
                replicas.extend(g.learners.iter().map(|l| format!("{l}(l)")));
                GroupRow {
                    group: g.group,
                    object,
                    partition: split_group(g.group).1,
                    state: g.state,
                    leader: g.leader,
                    term: g.term,
                    last_log_index: g.last_log_index,
                    commit_index: g.commit_index,
                    applied_index: g.applied_index,
                    replicas: replicas.join(" "),
                }
            })
            .collect()
    }
}

impl NodeHandle {
    /// The address the Postgres listener is bound to (useful with port 0).
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    /// The address the cluster (internal RPC) listener is bound to.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// The address the HTTP endpoint is bound to (`--http-addr`), if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Drains this node (as `ALTER CLUSTER DRAIN NODE` on it) and waits until the other
    /// nodes' routers have seen it: then nothing new is sent here, and a shutdown only
    /// waits for what runs.
    pub async fn drain(&self) {
        self.cluster.drain_here_now();
        // Figures go out every LOAD_EVERY; two rounds and their gossip.
        tokio::time::sleep(LOAD_EVERY * 2 + Duration::from_millis(500)).await;
    }

    /// This node's part of the cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node's query engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops the node in order and waits for it: connections (drained within the grace
    /// period) and the node's tasks, then gossip and Raft (the cluster waits for its own
    /// tasks), then the store, which is closed when this returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.engine.close();
        self.cluster.shutdown().await;
        drop(self.cluster);
        drop(self.engine);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.shutdown()).await??;
        // What still holds the store is a statement finishing its last read or write
        // (a blocking read in flight, a durable subscription's commit): the database
        // closes as the last of them lets go.
        if tokio::time::timeout(Duration::from_secs(5), self.store.close())
            .await
            .is_err()
        {
            tracing::warn!(
                "the store is still held 5 s after shutdown; it closes when its last holder ends"
            );
        }
        tracing::info!("node stopped");
        Ok(())
    }
}

/// Opens storage, binds the listener and starts serving.
pub async fn spawn_node(config: Config) -> anyhow::Result<NodeHandle> {
    config.validate()?;
    std::fs::create_dir_all(&config.node.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data dir {}: {e}",
            config.node.data_dir.display()
        )
    })?;
    claim_node_id(&config.node.data_dir, config.cluster.node_id)?;
    let dir = config.node.data_dir.clone();
    let storage_cfg = config.storage.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, storage_cfg))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open data dir {}: {e}",
                config.node.data_dir.display()
            )
        })?;
    let listener = TcpListener::bind(config.node.pg_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.node.pg_addr))?;
    let pg_addr = listener.local_addr()?;
    if !pg_addr.ip().is_loopback() {
        tracing::warn!(%pg_addr, "listening beyond loopback with trust authentication: anyone who can reach this port can connect");
    }
    let want = config.cluster.cluster_addr_for(config.node.pg_addr);
    let (cluster_listener, udp_probe) = bind_cluster(want).await?;
    let cluster_addr = cluster_listener.local_addr()?;
    let cc = ClusterConfig::from_sections(
        &config.cluster,
        &config.gossip,
        NodeInfo {
            pg_addr: pg_addr.to_string(),
            cluster_addr: cluster_addr.to_string(),
        },
    );
    if config.cluster.secret.is_none() {
        tracing::warn!("no cluster secret set (--cluster-secret, EDDY_CLUSTER_SECRET): internal frames are authenticated with the built-in development secret; set one before running a cluster across machines");
    }
    let faults = Arc::new(Faults::default());
    // Released just before gossip binds the same port.
    drop(udp_probe);
    let cluster = Cluster::start(store.clone(), cc, cluster_listener, faults.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the cluster: {e}"))?;
    let meter = Arc::new(Meter::default());
    let (strategy, weights) = config.routing.router();
    let routing = Arc::new(Routing::new(cluster.clone(), meter, strategy, weights));
    let engine = Engine::with_writer(
        store.clone(),
        Arc::new(Replicated(cluster.clone(), faults.clone(), routing.clone())),
        config.query.clone(),
    )?;
    tracing::info!(%pg_addr, %cluster_addr, node_id = config.cluster.node_id, data_dir = %config.node.data_dir.display(), "eddy node started");
    let cancel = CancellationToken::new();
    let handlers = Handlers(Backend::new(
        engine.clone(),
        routing.clone(),
        faults.clone(),
    ));
    let grace = Duration::from_millis(config.node.shutdown_grace_ms);
    let max_connections = config.node.max_connections;
    let places = Arc::new(Semaphore::new(max_connections));
    let shutdown = Shutdown {
        begun: cancel.clone(),
        grace_over: CancellationToken::new(),
    };
    let tasks = TaskTracker::new();
    let http_addr = match config.node.http_addr {
        Some(want) => {
            let listener = TcpListener::bind(want)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {want}: {e}"))?;
            let bound = listener.local_addr()?;
            let endpoint = http::Endpoint {
                cluster: cluster.clone(),
                routing: routing.clone(),
                stopping: cancel.clone(),
            };
            tasks.spawn(http::serve(listener, endpoint, tasks.clone()));
            tracing::info!(%bound, "HTTP endpoint: /metrics, /healthz, /readyz");
            Some(bound)
        }
        None => None,
    };
    tasks.spawn(accept_loop(
        listener,
        handlers,
        places.clone(),
        shutdown,
        grace,
    ));
    tasks.spawn(balance_loop(
        cluster.clone(),
        routing.clone(),
        cancel.clone(),
    ));
    tasks.spawn(load_loop(
        cluster.clone(),
        routing,
        places,
        max_connections,
        cancel.clone(),
    ));
    if let Some(file) = config.cluster.fault_file.clone() {
        tasks.spawn(fault_loop(file, faults.clone(), cancel.clone()));
    }
    tasks.spawn(retention_loop(
        store.clone(),
        Duration::from_millis(config.storage.retention_check_ms),
        cancel.clone(),
    ));
    Ok(NodeHandle {
        pg_addr,
        cancel,
        tasks,
        store,
        engine,
        cluster,
        cluster_addr,
        http_addr,
    })
}

/// Connections being turned away at once (over `max_connections`, waiting for their
/// startup message to be refused with 53300). Past this many a connection is closed
/// without a word: whoever opens that many at once is not waiting for an answer.
const REFUSING_MAX: usize = 64;

/// Accepts connections until `shutdown.begun`, each served on its own task holding one of
/// `places`; then lets them end as described in `pg/conn.rs`, within `grace`.
async fn accept_loop(
    listener: TcpListener,
    handlers: Handlers,
    places: Arc<Semaphore>,
    shutdown: Shutdown,
    grace: Duration,
) {
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.begun.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let admission = match places.clone().try_acquire_owned() {
                        Ok(place) => Admission::admitted(place),
                        Err(_) => match refusing.clone().try_acquire_owned() {
                            Ok(place) => Admission::refused(place),
                            Err(_) => {
                                tracing::debug!(
                                    %peer,
                                    "too many connections being refused; closing this one at once"
                                );
                                continue;
                            }
                        },
                    };
                    let h = handlers.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve(socket, h, admission, shutdown).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => report(ended),
        }
    }
    // Stop accepting: new connections are refused by the system from here on.
    drop(listener);
    // Idle connections close at once (they saw `begun`); busy ones when their statement ends.
    let drained = tokio::time::timeout(grace, async {
        while let Some(ended) = connections.join_next().await {
            report(ended);
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing the connections still busy after the grace period"
        );
        shutdown.grace_over.cancel();
        // Each says goodbye within GOODBYE_TIMEOUT; one that has not by then is aborted.
        let said = tokio::time::timeout(2 * GOODBYE_TIMEOUT, async {
            while let Some(ended) = connections.join_next().await {
                report(ended);
            }
        })
        .await;
        if said.is_err() {
            connections.shutdown().await;
        }
    }
}

/// Logs a connection task that panicked (the connection's own code catches its panics,
/// so this is one in its setup or goodbye). Its place was given back as its task unwound.
fn report(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            tracing::error!(error = %e, "a connection task panicked");
        }
    }
}

/// A data directory belongs to one node id for good: its Raft state (votes, logs) was
/// written as that node, and reusing it under another id would corrupt the cluster.
fn claim_node_id(dir: &std::path::Path, id: u64) -> anyhow::Result<()> {
    let file = dir.join("NODE_ID");
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let owner: u64 = text
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{} is damaged: {text:?}", file.display()))?;
            anyhow::ensure!(
                owner == id,
                "data dir {} belongs to node {owner}; start it with --node-id {owner} (this start asked for {id})",
                dir.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&file, format!("{id}\n"))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", file.display())),
    }
}

/// What the faults injected through the fault file did on this node (`eddy.nodes`).
fn fault_counts(faults: &Faults) -> eddy_query::FaultCounts {
    use std::sync::atomic::Ordering::Relaxed;
    eddy_query::FaultCounts {
        calls_dropped: faults.dropped.load(Relaxed),
        gossip_lost: faults.gossip_lost.load(Relaxed),
        forwards_failed: faults.failed_forwards.load(Relaxed),
        statements_slowed: faults.statements_slowed.load(Relaxed),
    }
}
