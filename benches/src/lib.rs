//! eddy-bench: load scenarios run against eddy and, in the same run, against the systems
//! people would otherwise pick (issue 4; this is its first part).
//!
//! # Layout
//! - [`Scenario`] — what a run does: `point-select` (prepared primary-key SELECTs) and
//!   `publish-durable` (one publish in flight per connection, acknowledged after fsync).
//! - [`Target`] — where it runs: eddy, or PostgreSQL (the SQL differs only in setup).
//! - [`peer::PostgresPeer`] — a PostgreSQL of the tool's own, in a temp dir.
//! - [`run`] — N connections for a duration, each recording every operation's latency in
//!   its own HDR histogram, merged into one [`Summary`].
//!
//! Tests check counting (every acknowledged publish is stored exactly once), never timings.

pub mod peer;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Prepared `SELECT ... WHERE id = $1` over a 10,000-row table.
    PointSelect,
    /// Single-row publishes, one in flight per connection, each durable before its ack.
    PublishDurable,
}

/// The kind of server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// eddy.
    Eddy,
    /// PostgreSQL.
    Postgres,
}

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrent connections, each with one operation in flight.
    pub connections: usize,
    /// How long operations are issued.
    pub duration: Duration,
    /// Payload bytes per published message.
    pub size: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Operations completed (acknowledged).
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
}

/// Rows of the point-select table.
const POINT_ROWS: i64 = 10_000;

/// Creates what the scenario needs (idempotent).
pub async fn setup(c: &Client, scenario: Scenario, target: Target) -> anyhow::Result<()> {
    match (scenario, target) {
        (Scenario::PointSelect, _) => {
            c.batch_execute("DROP TABLE IF EXISTS bench_points").await?;
            c.batch_execute("CREATE TABLE bench_points (id BIGINT PRIMARY KEY, name TEXT)").await?;
            for chunk in (0..POINT_ROWS).collect::<Vec<_>>().chunks(1000) {
                let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'name {i}')")).collect();
                c.batch_execute(&format!("INSERT INTO bench_points VALUES {}", values.join(","))).await?;
            }
        }
        (Scenario::PublishDurable, Target::Eddy) => {
            c.batch_execute("CREATE TOPIC IF NOT EXISTS bench_publish (payload TEXT) WITH (partitions = 4)").await?;
        }
        (Scenario::PublishDurable, Target::Postgres) => {
            c.batch_execute("DROP TABLE IF EXISTS bench_publish").await?;
            c.batch_execute("CREATE TABLE bench_publish (id BIGSERIAL PRIMARY KEY, payload TEXT)").await?;
        }
    }
    Ok(())
}

/// The statement each operation runs.
fn operation(scenario: Scenario, target: Target) -> &'static str {
    match (scenario, target) {
        (Scenario::PointSelect, _) => "SELECT name FROM bench_points WHERE id = $1",
        (Scenario::PublishDurable, Target::Eddy) => "INSERT INTO bench_publish (payload) VALUES ($1) RETURNING _offset",
        (Scenario::PublishDurable, Target::Postgres) => "INSERT INTO bench_publish (payload) VALUES ($1) RETURNING id",
    }
}

/// An eddy node of the tool's own, in a temporary directory (kept while the node runs).
pub struct OwnNode {
    /// The running node.
    pub node: eddy_broker::NodeHandle,
    /// tokio-postgres connection string.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OwnNode {
    /// Starts a node with default settings on a free loopback port.
    pub async fn start() -> anyhow::Result<OwnNode> {
        let dir = tempfile::tempdir()?;
        let mut config = eddy_broker::Config::default();
        config.node.data_dir = dir.path().to_path_buf();
        config.node.pg_addr = "127.0.0.1:0".parse()?;
        let node = eddy_broker::spawn_node(config).await?;
        let url = format!("host=127.0.0.1 port={} user=eddy dbname=eddy", node.pg_addr().port());
        Ok(OwnNode { node, url, _dir: dir })
    }
}

/// Connects tokio-postgres and drives the connection in the background.
pub async fn connect(conn: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs `scenario` against the server at `conn` (already set up) and measures it.
pub async fn run(conn: &str, scenario: Scenario, target: Target, opts: &Options) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = Vec::with_capacity(opts.connections);
    for worker in 0..opts.connections {
        let c = connect(conn).await?;
        let payload = "x".repeat(opts.size);
        tasks.push(tokio::spawn(async move {
            let stmt = c.prepare(operation(scenario, target)).await?;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            // A cheap generator of ids spread over the table (no RNG crate needed).
            let mut id = (worker as i64 * 7919) % POINT_ROWS;
            while Instant::now() < deadline {
                let t = Instant::now();
                match scenario {
                    Scenario::PointSelect => {
                        id = (id * 31 + 17) % POINT_ROWS;
                        let rows = c.query(&stmt, &[&id]).await?;
                        anyhow::ensure!(rows.len() == 1, "id {id} not found");
                    }
                    Scenario::PublishDurable => {
                        c.query_one(&stmt, &[&payload]).await?;
                    }
                }
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        total.add(t.await??)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = total.len();
    Ok(Summary {
        ops,
        seconds,
        throughput: ops as f64 / seconds,
        p50_us: total.value_at_quantile(0.50),
        p90_us: total.value_at_quantile(0.90),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
    })
}
