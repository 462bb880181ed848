//! eddy-bench: load scenarios run against eddy and, in the same run, against the systems
//! people would otherwise pick (PostgreSQL, Redis, NATS).
//!
//! # Layout
//! - [`Scenario`] — what a run does; [`System`] — what it runs against.
//! - [`servers`] — eddy and its peers started as processes of their own on loopback, in
//!   temp dirs, with their CPU seconds read from `/proc`; eddy and NATS as [`Cluster`]s of
//!   one or more nodes that can be killed and restarted.
//! - [`scenarios`] — the workloads, one module each, written against each system's own
//!   Rust client (tokio-postgres, eddy-client, redis, async-nats).
//! - [`run`] — one measured run: setup, workload, CPU accounting, [`Summary`].
//! - [`failover`] — `replicated`'s leader kills: write unavailability and a loss check,
//!   [`Failover`].
//! - [`gossip_converge`] — `gossip-converge`: a gossip table written on both sides of a
//!   partition (cut through the nodes' fault files), the time every node takes to hold
//!   the same rows after the heal, and gossip's delta bytes per update, [`Convergence`].
//! - [`route`] — `route`: one node of three slowed, four routing variants, latency
//!   before, during and after, [`RouteReport`].
//! - [`floor`] — the floor peer: the least a Postgres-protocol server does for a durable
//!   INSERT (a group fdatasync and canned replies), showing what this machine allows.
//! - [`report`] — the table, JSON (ratio above 1 means eddy wins) and SVG chart.
//!
//! Tests check counting (every acknowledged message is stored or received exactly once),
//! never timings.

pub mod floor;
pub mod report;
pub mod scenarios;
pub mod servers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use scenarios::{failover, gossip_converge, route, RouteOptions, RouteReport, Slowdown};
pub use servers::{Cluster, Server};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Prepared `SELECT ... WHERE id = $1` over a 10,000-row table (peer: PostgreSQL).
    PointSelect,
    /// A fixed number of rows written in bulk: COPY and the client's batching producer
    /// (peers: PostgreSQL COPY, Redis pipelined XADD).
    PublishBulk,
    /// Single-row publishes, one in flight per connection, each durable before its ack
    /// (peers: PostgreSQL INSERT, Redis XADD with appendfsync always, NATS JetStream).
    PublishDurable,
    /// One publisher, many subscribers; deliveries per second (peers: Redis pub/sub, NATS).
    Fanout,
    /// Publish to receive latency at a fixed rate (peers: Redis pub/sub, NATS,
    /// PostgreSQL LISTEN/NOTIFY).
    Latency,
    /// Single-row publishes to a 3-node cluster, many in flight, each acknowledged once a
    /// majority of its replicas has it, as one INSERT each and through eddy-client's
    /// producer; then leader kills (peer: NATS JetStream R3 on 3 servers).
    Replicated,
    /// A gossip table written on every node while the last node is cut off; time from the
    /// heal until every node holds the same rows (p50/p99/max over --rounds), and gossip's
    /// delta bytes per update; --loss loses a share of gossip frames (no peer; nodes of
    /// the tool's own only, default 3).
    GossipConverge,
    /// Prepared primary-key SELECTs on a 3-node cluster, open loop, node 3 slowed for the
    /// middle window (its fault file's `slow=`, or `--slowdown cpu`: a cgroup CPU quota);
    /// variants `local`, `round_robin`, `adaptive` and `adaptive` with a cluster-aware
    /// client, one after the other: latency before, during and after, and how fast
    /// reads move off the slow node and back (no peer; nodes of the tool's own only).
    Route,
}

impl Scenario {
    /// The peers this scenario has an equivalent workload for.
    pub fn peers(self) -> &'static [System] {
        match self {
            Scenario::PointSelect => &[System::Postgres],
            Scenario::PublishBulk => &[System::Postgres, System::Redis],
            Scenario::PublishDurable => {
                &[System::Postgres, System::Redis, System::Nats, System::Floor]
            }
            Scenario::Fanout => &[System::Redis, System::Nats],
            Scenario::Latency => &[System::Redis, System::Nats, System::Postgres, System::Floor],
            Scenario::Replicated => &[System::Nats, System::Floor],
            Scenario::GossipConverge | Scenario::Route => &[],
        }
    }

    /// Nodes of the tool's own eddy (and of a NATS peer) unless `--nodes` says otherwise.
    pub fn default_nodes(self) -> usize {
        match self {
            Scenario::Replicated | Scenario::GossipConverge | Scenario::Route => 3,
            _ => 1,
        }
    }

    /// Rounds unless `--rounds` says otherwise: `gossip-converge` reports percentiles
    /// over its rounds, the others the median round.
    pub fn default_rounds(self) -> usize {
        match self {
            Scenario::GossipConverge => 20,
            Scenario::Route => 1,
            _ => 3,
        }
    }

    /// Connections (publishers) used unless `--connections` says otherwise.
    pub fn default_connections(self) -> usize {
        match self {
            Scenario::PointSelect | Scenario::PublishBulk => 4,
            Scenario::PublishDurable => 50,
            // gossip-converge: one connection per node, whatever this says.
            Scenario::Fanout | Scenario::Latency | Scenario::GossipConverge => 1,
            // route: per node.
            Scenario::Route => 8,
            // One publish in flight per connection: eddy serves a connection's statements
            // one after another, so pipelining on fewer connections would only queue.
            Scenario::Replicated => 256,
        }
    }

    /// True when latency (p99) rather than throughput decides the ratio.
    pub fn latency_bound(self) -> bool {
        self == Scenario::Latency
    }
}

/// A server kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// eddy.
    Eddy,
    /// PostgreSQL.
    Postgres,
    /// Redis.
    Redis,
    /// NATS (core, and JetStream for durable publishing).
    Nats,
    /// The floor ([`floor`]): the least a Postgres-protocol server does for a durable
    /// INSERT.
    Floor,
}

impl System {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            System::Eddy => "eddy",
            System::Postgres => "postgres",
            System::Redis => "redis",
            System::Nats => "nats",
            System::Floor => "floor",
        }
    }
}

/// How eddy is written to in `publish-bulk` and `replicated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Statements: `COPY ... FROM STDIN` in publish-bulk (and COPY for PostgreSQL, pipelined
    /// XADD for Redis), one INSERT per message in replicated.
    Copy,
    /// eddy-client's batching `Producer`.
    Producer,
}

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrent connections (publishers), each with its own client.
    pub connections: usize,
    /// How long operations are issued (all scenarios but `publish-bulk`).
    pub duration: Duration,
    /// Payload bytes per published message.
    pub size: usize,
    /// Operations per second over all connections; `None` issues as fast as acks allow.
    pub rate: Option<u64>,
    /// Rows written by `publish-bulk`, over all connections.
    pub messages: u64,
    /// Rows per COPY statement or Redis pipeline in `publish-bulk`.
    pub batch: usize,
    /// Subscribers in `fanout` (`latency` has one).
    pub subscribers: usize,
    /// `publish-bulk` on eddy: COPY or the producer.
    pub via: Via,
    /// `replicated`: publishes awaiting their acknowledgement at once, over all
    /// connections (spread evenly over them).
    pub in_flight: usize,
    /// `replicated`: leader kills of the failover measurement (0: none).
    pub kills: usize,
    /// `gossip-converge`: updates per round over all nodes.
    pub updates: usize,
    /// `gossip-converge`: per mille of the gossip frames each node loses.
    pub loss_permille: u64,
}

impl Options {
    /// The scenario's defaults: 10 s, 100-byte messages, 1M bulk rows in COPYs of 10,000,
    /// 10 fanout subscribers, latency at 1,000 msg/s, 256 replicated publishes in flight,
    /// 5 leader kills, and 200 gossip-converge updates per round with no frame lost.
    pub fn defaults(scenario: Scenario) -> Options {
        Options {
            connections: scenario.default_connections(),
            duration: Duration::from_secs(10),
            size: 100,
            rate: scenario.latency_bound().then_some(1000),
            messages: 1_000_000,
            batch: 10_000,
            subscribers: 10,
            via: Via::Copy,
            in_flight: 256,
            kills: 5,
            updates: 200,
            loss_permille: 0,
        }
    }
}

/// Operations completed so far in the current run, for the progress bar.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    /// Counts `n` more operations.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Operations so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Starts from zero.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Records `since.elapsed()` into `hist` (saturating at its upper bound).
pub fn record(hist: &mut Histogram<u64>, since: Instant) {
    hist.saturating_record(since.elapsed().as_micros().max(1) as u64);
}

/// What a workload measured before CPU accounting.
pub struct Measured {
    /// Operations completed (acknowledged, or deliveries received).
    pub ops: u64,
    /// Wall-clock duration of the measured part.
    pub elapsed: Duration,
    /// Per-operation latency.
    pub latency: Histogram<u64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Operations completed (acknowledged, or deliveries received).
    pub ops: u64,
    /// Wall-clock seconds of the measured part.
    pub seconds: f64,
    /// Operations per second.
    pub throughput: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// CPU seconds the server's processes used during the run (own servers only).
    pub cpu_seconds: Option<f64>,
    /// Operations per server CPU second.
    pub ops_per_cpu_second: Option<f64>,
    /// CPU seconds the load generator itself (this process: the clients) used during the
    /// run. On a box shared with the servers, what the clients use the servers cannot.
    #[serde(default)]
    pub client_cpu_seconds: f64,
}

/// What the failover measurement found: how long writes stalled after each leader kill,
/// and whether every acknowledged message survived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failover {
    /// The system measured.
    pub system: System,
    /// Leaders killed (`kill -9`), each restarted before the next kill.
    pub kills: usize,
    /// Per kill: the longest gap in milliseconds between two acknowledgements, from the
    /// last one before the kill until writes flow again (one message in flight).
    pub unavailable_ms: Vec<f64>,
    /// Median of `unavailable_ms` (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile (nearest rank: the largest with fewer than 100 kills).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Messages acknowledged (each retried until it was).
    pub acked: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Distinct acknowledged messages stored, on the replica holding the fewest (eddy:
    /// every node's own replica; NATS: the stream leader's count).
    pub stored: u64,
    /// Acknowledged messages missing: `acked - stored`. Must be 0.
    pub lost: u64,
    /// Extra copies stored (a retried attempt whose first try was committed after all);
    /// allowed, and counted.
    pub duplicates: u64,
}

/// What `gossip-converge` found: how long after a partition healed every node held the
/// same rows of a gossip table written on both sides, and the delta bytes gossip sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Convergence {
    /// Nodes; the last one is cut off in every round.
    pub nodes: usize,
    /// Share of the gossip frames every node loses, in percent.
    pub loss_percent: f64,
    /// Updates per round, over all nodes (upserts and deletes).
    pub updates: usize,
    /// The key space the updates are drawn from.
    pub keys: u64,
    /// Rounds (partition, updates, heal, convergence).
    pub rounds: usize,
    /// Per round: milliseconds from the heal (fault files rewritten) until every node
    /// returned the same rows, and the rows the updates leave.
    pub converge_ms: Vec<f64>,
    /// Per round: how long the partition lasted (fault files written, the cut seen on
    /// every node, the updates, a random pause of up to 1 s), in milliseconds.
    pub partition_ms: Vec<f64>,
    /// Per round: milliseconds from the heal until every node's `eddy.nodes` was seen to
    /// show no cut (the nodes re-read their fault files every 100 ms); the rest of
    /// `converge_ms` is gossip's own.
    #[serde(default)]
    pub heal_seen_ms: Vec<f64>,
    /// Median of `converge_ms` (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile (nearest rank: the largest with fewer than 100 rounds).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Delta bytes pushed, over all rounds, nodes and peers (`eddy.gossip_peers.pushed_bytes`:
    /// one update pushed to N-1 peers counts N-1 times).
    pub pushed_bytes: u64,
    /// Delta bytes received, pushes and anti-entropy answers, over all rounds, nodes and
    /// peers (`eddy.gossip_peers.pulled_bytes`).
    pub delivered_bytes: u64,
    /// `pushed_bytes` per update.
    pub pushed_per_update: f64,
    /// `pushed_per_update` / (nodes - 1): per update and peer.
    pub pushed_per_update_per_peer: f64,
    /// `delivered_bytes` per update.
    pub delivered_per_update: f64,
    /// Rows after the last round, the same on every node.
    pub rows: u64,
    /// Keys written by one node in a round (their final value known and checked), summed
    /// over the rounds.
    pub single_writer_keys: u64,
    /// Keys written by several nodes in a round (the final value one of theirs).
    pub conflicting_keys: u64,
    /// Of those, keys written on both sides of the partition.
    pub cross_partition_keys: u64,
    /// Upserts that failed with `23505` (a gossip delta for the same key merged while the
    /// upsert read the key and wrote) and were tried again.
    #[serde(default)]
    pub upsert_retries: u64,
}

impl Failover {
    /// Percentile `q` (0..=1) of `ms` by nearest rank; 0 when empty.
    pub fn percentile(ms: &[f64], q: f64) -> f64 {
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted.get(rank - 1).copied().unwrap_or(0.0)
    }
}

/// Paces a loop at `rate` operations per second. Slots are fixed from the start, so a
/// slow operation is followed by catch-up ones rather than lowering the rate. Latency is
/// measured from when an operation actually starts: the timer's own lateness (tokio's
/// timer has millisecond granularity) is not charged to the system under test.
pub struct Pacer {
    start: Instant,
    interval: Option<Duration>,
    n: u32,
}

impl Pacer {
    /// A pacer for `rate` per second (`None`: no waiting).
    pub fn new(rate: Option<f64>) -> Pacer {
        let interval = rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        Pacer {
            start: Instant::now(),
            interval,
            n: 0,
        }
    }

    /// Waits for the next slot; returns the instant the operation starts.
    pub async fn next(&mut self) -> Instant {
        if let Some(interval) = self.interval {
            let due = self.start + interval * self.n;
            self.n += 1;
            tokio::time::sleep_until(due.into()).await;
        }
        Instant::now()
    }
}

/// Runs `scenario` against `server` once: sets up (dropping what an earlier run left),
/// runs the workload and reads the server's CPU seconds around it.
pub async fn run(
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Summary> {
    meter.reset();
    scenarios::setup(scenario, server, opts).await?;
    let cpu_before = server.cpu_seconds();
    let client_before = servers::own_cpu_seconds();
    let m = scenarios::run(scenario, server, opts, meter).await?;
    let client_cpu_seconds = servers::own_cpu_seconds() - client_before;
    let cpu = server
        .cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let seconds = m.elapsed.as_secs_f64();
    Ok(Summary {
        ops: m.ops,
        seconds,
        throughput: m.ops as f64 / seconds,
        p50_us: m.latency.value_at_quantile(0.50),
        p90_us: m.latency.value_at_quantile(0.90),
        p99_us: m.latency.value_at_quantile(0.99),
        p999_us: m.latency.value_at_quantile(0.999),
        cpu_seconds: cpu,
        ops_per_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| m.ops as f64 / c),
        client_cpu_seconds,
    })
}

pub use eddy_kit::{connect, wait_for};
