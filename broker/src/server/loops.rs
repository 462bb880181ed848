//! The node's periodic tasks: its load figures (measured and gossiped every second),
//! leader balancing, the fault file (testing) and retention. Each ends when its
//! `cancel` fires; the node's task tracker waits for them at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_consensus::{Cluster, Faults, METADATA_GROUP};
use eddy_query::NodeFigures;
use eddy_storage::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::load;
use crate::routing::Routing;

/// How often the load figures are measured and gossiped.
pub(super) const LOAD_EVERY: Duration = Duration::from_secs(1);
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
pub(super) async fn load_loop(
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
    // Per group led: its last log index at the previous sample.
    let mut last_index: HashMap<u64, u64> = HashMap::new();
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
        // Entries appended since the last sample by the groups led then and now (a
        // group just taken over brings its whole log, not writes of this second).
        let index: HashMap<u64, u64> = led
            .iter()
            .filter_map(|g| Some((g.group, g.last_log_index?)))
            .collect();
        let appended: u64 = index
            .iter()
            .filter_map(|(g, i)| Some(i.saturating_sub(*last_index.get(g)?)))
            .sum();
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
            writes_per_s: per_s(appended),
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
        (last, last_cpu, last_finished, last_bytes, last_index) =
            (now, cpu, finished, bytes, index);
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
pub(super) async fn balance_loop(
    cluster: Cluster,
    routing: Arc<Routing>,
    cancel: CancellationToken,
) {
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
            match load::fresh(&m) {
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
        .filter_map(|m| load::fresh(&m))
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

/// Testing only: applies the node ids listed in `file` as cut links, `loss=N` as the
/// per-mille share of gossip frames lost, `fail-forwards` (writes forwarded here
/// answered with an internal failure) and `slow=N` (every statement run here waits N ms
/// first: a slow node), until cancelled.
pub(super) async fn fault_loop(
    file: std::path::PathBuf,
    faults: Arc<Faults>,
    cancel: CancellationToken,
) {
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

pub(super) async fn retention_loop(store: Store, every: Duration, cancel: CancellationToken) {
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
