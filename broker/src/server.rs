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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eddy_consensus::{
    group_of, split_group, Cluster, ClusterConfig, Faults, NodeInfo, METADATA_GROUP,
};
use eddy_query::{
    CounterRow, Description, Engine, GossipPeerRow, GroupRow, Holder, MetricRow, NodeFigures,
    NodeRow, PartitionRow, RouteRow, Writer,
};
use eddy_storage::{Lane, Store, WriteOp, WriteResult};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http;
use crate::load::{self, Meter};
use crate::pg::conn::{serve, Admission, Shutdown, GOODBYE_TIMEOUT};
use crate::pg::{Backend, Handlers};
use crate::routing::{Purpose, Routing};

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
        let strategy = self.2.strategy(Some(strategy));
        let decision = self
            .2
            .decide(description, holders, strategy, None, Purpose::Explain);
        if decision.rows.is_empty() {
            // Nothing to weigh: it runs here, for the reason given.
            let me = self.0.id();
            let addr = self
                .0
                .nodes()
                .get(&me)
                .map(|n| n.pg_addr.clone())
                .unwrap_or_default();
            return vec![RouteRow {
                node: me,
                pg_addr: addr,
                state: if self.2.draining() {
                    "draining"
                } else {
                    "serving"
                }
                .into(),
                leader: false,
                load: u64::from(self.2.meter().in_flight()),
                latency_ms: self
                    .2
                    .meter()
                    .service_time()
                    .map(|l| l.as_secs_f64() * 1000.0),
                cpu: None,
                figures_age_ms: None,
                cost: None,
                chosen: true,
                reason: decision.reason.to_owned(),
            }];
        }
        decision.rows
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

/// How often the load figures are measured and gossiped.
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// A node is hot when its statements/s or CPU exceeds the cluster's mean by this factor
/// (and the floors below) for [`HOT_SAMPLES`] samples in a row.
const HOT_FACTOR: f64 = 1.5;
const HOT_FLOOR_STATEMENTS: u64 = 200;
const HOT_FLOOR_CPU_PERMILLE: u32 = 500;
const HOT_SAMPLES: u32 = 3;

/// Measures this node's load figures every [`LOAD_EVERY`] and gossips them (for the
/// routers of every node, docs/architecture.md "Routing"): connections (the places
/// taken of `max_connections`), statements in flight, tasks queued for a thread, the
/// decayed service time, statements/s, CPU use, subscriptions and their bytes/s, Raft
/// groups led and the entries/s they append, the state, and whether it is hot. A `seq`
/// figure changes every time, so the others know the figures are fresh.
async fn load_loop(
    cluster: Cluster,
    routing: Arc<Routing>,
    places: Arc<Semaphore>,
    max_connections: usize,
    cancel: CancellationToken,
) {
    let meter = routing.meter().clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let runtime = tokio::runtime::Handle::current().metrics();
    let mut last = Instant::now();
    let mut last_cpu = load::process_cpu();
    let (mut last_finished, mut last_bytes, _) = meter.totals();
    let mut last_appended: u64 = 0;
    let mut hot_samples = 0u32;
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        let secs = (now - last).as_secs_f64().max(1e-3);
        let cpu = load::process_cpu();
        let cpu_permille = match (cpu, last_cpu) {
            (Some(a), Some(b)) => {
                ((a.saturating_sub(b)).as_secs_f64() / secs / cores * 1000.0) as u32
            }
            _ => 0,
        };
        let (finished, bytes, subscriptions) = meter.totals();
        let groups = cluster.group_info();
        let led: Vec<_> = groups.iter().filter(|g| g.state == "leader").collect();
        let appended: u64 = led.iter().filter_map(|g| g.last_log_index).sum();
        let per_s = |d: u64| (d as f64 / secs).round() as u64;
        let figures = NodeFigures {
            draining: routing.draining(),
            hot: routing.hot(),
            connections: max_connections.saturating_sub(places.available_permits()) as u32,
            in_flight: meter.in_flight(),
            queued: runtime.global_queue_depth() as u32,
            service_us: meter.service_time().map_or(0, |d| d.as_micros() as u64),
            statements_per_s: per_s(finished.saturating_sub(last_finished)),
            cpu_permille: cpu_permille.min(1000),
            subscriptions,
            subscription_bytes_per_s: per_s(bytes.saturating_sub(last_bytes)),
            leaders: led.len() as u32,
            writes_per_s: per_s(appended.saturating_sub(last_appended)),
        };
        let hot = is_hot(&figures, &others(&cluster));
        hot_samples = if hot { hot_samples + 1 } else { 0 };
        if (hot_samples >= HOT_SAMPLES) != routing.hot() {
            let on = hot_samples >= HOT_SAMPLES;
            routing.set_hot(on);
            if on {
                meter.count("hotspots", "detected");
                tracing::info!(
                    statements_per_s = figures.statements_per_s,
                    cpu_permille,
                    "this node is a hotspot: shedding reads"
                );
            }
        }
        seq += 1;
        for (key, value) in load::encode(&NodeFigures {
            hot: routing.hot(),
            ..figures
        }) {
            cluster.set_load(key, value);
        }
        cluster.set_load("seq", seq.to_string());
        (last, last_cpu, last_finished, last_bytes, last_appended) =
            (now, cpu, finished, bytes, appended);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOAD_EVERY) => {}
        }
    }
}

/// How often a node looks at the leaderships it holds (see `balance_loop`).
const BALANCE_EVERY: Duration = Duration::from_secs(2);

/// Leader balancing: every [`BALANCE_EVERY`], this node hands leaderships over when it
/// drains (all), is hot (one), or leads more groups than its share of the live nodes'
/// (one, to the voter leading fewest); never to a node draining, hot or dead. The
/// metadata group (five voters) is left where it is and not counted.
async fn balance_loop(cluster: Cluster, routing: Arc<Routing>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BALANCE_EVERY) => {}
        }
        let me = cluster.id();
        let metadata_leader = cluster
            .group_info()
            .into_iter()
            .find(|g| g.group == METADATA_GROUP)
            .and_then(|g| g.leader);
        let mut plan = eddy_consensus::Balance {
            shed_all: routing.draining(),
            shed_one: routing.hot(),
            ..Default::default()
        };
        for m in cluster.members() {
            let fresh = m.this_node
                || m.load_since
                    .is_some_and(|t| t.elapsed() <= crate::router::STALE_AFTER);
            let figures = load::decode(&m.load).filter(|_| fresh);
            match figures {
                Some(f)
                    if m.liveness != eddy_consensus::Liveness::Dead && !f.draining && !f.hot =>
                {
                    let metadata = u32::from(metadata_leader == Some(m.node_id));
                    plan.leaders
                        .insert(m.node_id, f.leaders.saturating_sub(metadata));
                }
                _ if m.node_id == me => {}
                _ => plan.avoid.push(m.node_id),
            }
        }
        let reason = if plan.shed_all {
            "drain"
        } else if plan.shed_one {
            "hot"
        } else {
            "balance"
        };
        let moved = tokio::select! {
            _ = cancel.cancelled() => return,
            moved = cluster.balance_leaders(&plan) => moved,
        };
        for _ in 0..moved {
            routing.meter().count("leader_moves", reason);
        }
    }
}

/// The fresh figures of the other live nodes.
fn others(cluster: &Cluster) -> Vec<NodeFigures> {
    cluster
        .members()
        .into_iter()
        .filter(|m| !m.this_node && m.liveness != eddy_consensus::Liveness::Dead)
        .filter(|m| {
            m.load_since
                .is_some_and(|t| t.elapsed() <= crate::router::STALE_AFTER)
        })
        .filter_map(|m| load::decode(&m.load))
        .collect()
}

/// True when `mine` stands well above the cluster's mean (this node included) in
/// statements/s or CPU, and above an absolute floor: a node alone is never hot.
fn is_hot(mine: &NodeFigures, others: &[NodeFigures]) -> bool {
    if others.is_empty() {
        return false;
    }
    let n = (others.len() + 1) as f64;
    let mean_stmts =
        (others.iter().map(|f| f.statements_per_s).sum::<u64>() + mine.statements_per_s) as f64 / n;
    let mean_cpu = (others
        .iter()
        .map(|f| u64::from(f.cpu_permille))
        .sum::<u64>()
        + u64::from(mine.cpu_permille)) as f64
        / n;
    (mine.statements_per_s >= HOT_FLOOR_STATEMENTS
        && mine.statements_per_s as f64 > HOT_FACTOR * mean_stmts)
        || (mine.cpu_permille >= HOT_FLOOR_CPU_PERMILLE
            && f64::from(mine.cpu_permille) > HOT_FACTOR * mean_cpu)
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

/// Testing only: applies the node ids listed in `file` as cut links, `loss=N` as the
/// per-mille share of gossip frames lost, `fail-forwards` (writes forwarded here
/// answered with an internal failure) and `slow=N` (every statement run here waits N ms
/// first: a slow node), until cancelled.
async fn fault_loop(file: std::path::PathBuf, faults: Arc<Faults>, cancel: CancellationToken) {
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let listed: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let loss = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("loss=")?.parse().ok())
            .unwrap_or(0);
        faults.set_gossip_loss(loss);
        faults.set_fail_forwards(text.split_whitespace().any(|w| w == "fail-forwards"));
        faults.set_slow_ms(
            text.split_whitespace()
                .find_map(|w| w.strip_prefix("slow=")?.parse().ok())
                .unwrap_or(0),
        );
        for id in faults.cut() {
            if !listed.contains(&id) {
                faults.set_cut(id, false);
            }
        }
        for id in listed {
            faults.set_cut(id, true);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn retention_loop(store: Store, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        let now = chrono::Utc::now().timestamp_micros();
        match tokio::task::spawn_blocking(move || s.enforce_retention(now)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(partitions = n, "retention trimmed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            _ => {}
        }
    }
}
