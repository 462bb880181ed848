//! `eddy-bench <scenario>`: runs a load scenario against eddy (its own node in a temp dir,
//! or `--url`) and prints throughput and latency percentiles.

use std::time::Duration;

use clap::Parser;
use eddy_bench::{peer::PostgresPeer, run, setup, Options, OwnNode, Scenario, Target};

/// Peers the tool can start itself.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Peer {
    /// PostgreSQL (initdb + pg_ctl; `apt-get install postgresql`).
    Postgres,
}

/// Load benchmarks for eddy.
#[derive(Debug, Parser)]
#[command(name = "eddy-bench", version)]
struct Args {
    /// The workload.
    #[arg(value_enum)]
    scenario: Scenario,
    /// A running eddy (a tokio-postgres connection string); without it, a node is started
    /// in a temporary directory.
    #[arg(long)]
    url: Option<String>,
    /// Also run against this PostgreSQL (a connection string).
    #[arg(long, conflicts_with = "peer")]
    postgres: Option<String>,
    /// Start a peer of the tool's own (a temp dir on loopback) and run against it too.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// Seconds each run issues operations.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections, one operation in flight each.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Payload bytes per published message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = Options { connections: args.connections, duration: Duration::from_secs(args.duration), size: args.size };
    // Our own node unless given one; kept alive for the whole run.
    let (_own, url) = match &args.url {
        Some(u) => (None, u.clone()),
        None => {
            let own = OwnNode::start().await?;
            let url = own.url.clone();
            (Some(own), url)
        }
    };
    setup(&eddy_bench::connect(&url).await?, args.scenario, Target::Eddy).await?;
    let eddy = run(&url, args.scenario, Target::Eddy, &opts).await?;
    let own_peer = match args.peer {
        Some(Peer::Postgres) => Some(PostgresPeer::start()?),
        None => None,
    };
    let peer_url = args.postgres.clone().or_else(|| own_peer.as_ref().map(|p| p.url.clone()));
    let peer = match &peer_url {
        Some(pg) => {
            setup(&eddy_bench::connect(pg).await?, args.scenario, Target::Postgres).await?;
            Some(run(pg, args.scenario, Target::Postgres, &opts).await?)
        }
        None => None,
    };
    println!("{:<10} {:>12} {:>10} {:>10} {:>10} {:>10}", "target", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs");
    for (name, s) in std::iter::once(("eddy", &eddy)).chain(peer.as_ref().map(|p| ("postgres", p))) {
        println!("{:<10} {:>12.0} {:>10} {:>10} {:>10} {:>10}", name, s.throughput, s.p50_us, s.p90_us, s.p99_us, s.p999_us);
    }
    let ratio = peer.as_ref().map(|p| eddy.throughput / p.throughput);
    if let Some(r) = ratio {
        println!("throughput ratio eddy/postgres: {r:.2}");
    }
    if let Some(path) = &args.json {
        let out = serde_json::json!({ "scenario": args.scenario, "eddy": eddy, "peer": peer, "ratio": ratio });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
