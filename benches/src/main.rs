//! `eddy-bench <scenario>`: runs a load scenario against eddy (a node of its own, started
//! as a child process in a temp dir, or `--url`) and, interleaved in the same run, against
//! the peers asked for; prints a table and optionally writes JSON and an SVG chart.

use std::time::{Duration, Instant};

use clap::Parser;
use eddy_bench::report::{Entry, Report};
use eddy_bench::{run, Meter, Options, Scenario, Server, System, Via};
use indicatif::{ProgressBar, ProgressStyle};

/// A peer to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// PostgreSQL (`apt-get install postgresql`; found in /usr/lib/postgresql/*/bin or $PG_BIN).
    Postgres,
    /// Redis (`apt-get install redis-server`), with appendfsync always.
    Redis,
    /// NATS (`apt-get install nats-server`), with JetStream on file storage.
    Nats,
    /// Every peer the scenario has a workload for.
    All,
}

/// Load benchmarks for eddy, side by side with PostgreSQL, Redis and NATS.
///
/// eddy and this tool should be release builds: scripts/bench.sh builds both and runs it
/// (`./scripts/bench.sh <scenario> --peer all`). The eddy binary is looked for next to
/// this one, or at $EDDY_BIN.
#[derive(Debug, Parser)]
#[command(name = "eddy-bench", version)]
struct Args {
    /// The workload.
    #[arg(value_enum)]
    scenario: Scenario,
    /// A running eddy (a libpq-style connection string, e.g. "host=127.0.0.1 port=5433
    /// user=eddy"); without it, the tool starts its own node in a temp dir.
    #[arg(long)]
    url: Option<String>,
    /// Nodes of the tool's own eddy (1; clusters are not implemented yet).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Also run the scenario against this peer, started on loopback in a temp dir
    /// (repeatable).
    #[arg(long, value_enum)]
    peer: Vec<Peer>,
    /// How long each run issues operations: "10s", "500ms", "2m" or seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Operations per second over all connections (latency defaults to 1000; others
    /// issue as fast as acknowledgements come back).
    #[arg(long)]
    rate: Option<u64>,
    /// Connections (publishers) [default: point-select 4, publish-bulk 4,
    /// publish-durable 50, fanout and latency 1].
    #[arg(long)]
    connections: Option<usize>,
    /// Payload bytes per published message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// publish-bulk: rows written per run, over all connections.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// publish-bulk: rows per COPY statement (and per Redis pipeline).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// fanout: subscribers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Rounds; each runs eddy then every peer, and the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write the results as JSON to this file (ratio above 1 means eddy wins).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Draw throughput and latency percentiles as an SVG chart to this file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Run nothing: read results written earlier by --json, print their table and draw
    /// --chart from them.
    #[arg(long, value_name = "JSON")]
    replot: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s or 500ms)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// The peers asked for, checked against what the scenario has workloads for.
fn peers(scenario: Scenario, asked: &[Peer]) -> anyhow::Result<Vec<System>> {
    let mut out = Vec::new();
    for p in asked {
        let systems = match p {
            Peer::All => scenario.peers().to_vec(),
            Peer::Postgres => vec![System::Postgres],
            Peer::Redis => vec![System::Redis],
            Peer::Nats => vec![System::Nats],
        };
        for s in systems {
            if !scenario.peers().contains(&s) {
                let known: Vec<&str> = scenario.peers().iter().map(|p| p.name()).collect();
                anyhow::bail!(
                    "{scenario:?} has no {} workload; its peers are: {}",
                    s.name(),
                    known.join(", ")
                );
            }
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Runs one measured run under a progress bar (hidden when stderr is not a terminal).
async fn measured(
    label: &str,
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    round: usize,
    rounds: usize,
) -> anyhow::Result<eddy_bench::Summary> {
    let meter = Meter::default();
    let bulk = scenario == Scenario::PublishBulk;
    let bar = ProgressBar::new(if bulk {
        opts.messages
    } else {
        opts.duration.as_millis() as u64
    });
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {msg}")?.progress_chars("=> "),
    );
    bar.set_prefix(format!("{label} ({}/{rounds})", round + 1));
    let started = Instant::now();
    let ticker = {
        let (bar, meter) = (bar.clone(), meter.clone());
        tokio::spawn(async move {
            loop {
                let done = meter.get();
                bar.set_position(if bulk {
                    done
                } else {
                    started.elapsed().as_millis() as u64
                });
                bar.set_message(format!("{done} ops"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = run(scenario, server, opts, &meter).await;
    ticker.abort();
    bar.finish_and_clear();
    result.map_err(|e| e.context(format!("{label}, round {}", round + 1)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.nodes == 1,
        "--nodes {}: multi-node clusters are not implemented yet; use --nodes 1",
        args.nodes
    );
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let scenario = args.scenario;
    if let Some(path) = &args.replot {
        let report = Report::from_json(&serde_json::from_slice(&std::fs::read(path)?)?)?;
        anyhow::ensure!(
            report.scenario == scenario,
            "{} holds {:?} results, not {scenario:?}",
            path.display(),
            report.scenario
        );
        return output(&report, &args);
    }
    let peer_systems = peers(scenario, &args.peer)?;
    let mut opts = Options::defaults(scenario);
    opts.connections = args.connections.unwrap_or(opts.connections).max(1);
    opts.duration = args.duration;
    opts.size = args.size;
    opts.rate = args.rate.or(opts.rate);
    opts.messages = args.messages;
    opts.batch = args.batch;
    opts.subscribers = args.subscribers;

    let eddy = match &args.url {
        Some(u) => Server::external(System::Eddy, u.clone()),
        None => Server::start(System::Eddy)?,
    };
    let mut servers = Vec::new();
    for s in &peer_systems {
        servers.push(Server::start(*s)?);
    }
    // eddy's variants: publish-bulk measures COPY and the client's producer.
    let variants: Vec<(String, Via)> = if scenario == Scenario::PublishBulk {
        vec![
            ("eddy".into(), Via::Copy),
            ("eddy (producer)".into(), Via::Producer),
        ]
    } else {
        vec![("eddy".into(), Via::Copy)]
    };
    let mut eddy_rounds = vec![Vec::new(); variants.len()];
    let mut peer_rounds = vec![Vec::new(); servers.len()];
    // Interleaved: every round runs eddy then each peer, so drift hits all alike.
    for round in 0..args.rounds {
        for (i, (label, via)) in variants.iter().enumerate() {
            let o = Options {
                via: *via,
                ..opts.clone()
            };
            eddy_rounds[i].push(measured(label, scenario, &eddy, &o, round, args.rounds).await?);
        }
        for (i, server) in servers.iter().enumerate() {
            peer_rounds[i].push(
                measured(
                    server.system.name(),
                    scenario,
                    server,
                    &opts,
                    round,
                    args.rounds,
                )
                .await?,
            );
        }
    }
    let shape = match scenario {
        Scenario::PublishBulk => format!(
            "{} x {} B rows, {} connections, COPY batches of {}",
            opts.messages, opts.size, opts.connections, opts.batch
        ),
        Scenario::Fanout => format!(
            "1 publisher, {} subscribers, {} B, {:?}",
            opts.subscribers, opts.size, opts.duration
        ),
        Scenario::Latency => format!(
            "{} msg/s, {} B, {:?}",
            opts.rate.unwrap_or(0),
            opts.size,
            opts.duration
        ),
        _ => format!(
            "{} connections, {} B, {:?}",
            opts.connections, opts.size, opts.duration
        ),
    } + &format!("; median of {} rounds", args.rounds);
    let report = Report {
        scenario,
        shape,
        eddy: variants
            .into_iter()
            .zip(eddy_rounds)
            .map(|((label, _), r)| Entry::median(label, System::Eddy, scenario, r))
            .collect(),
        peers: servers
            .iter()
            .zip(peer_rounds)
            .map(|(s, r)| Entry::median(s.system.name().into(), s.system, scenario, r))
            .collect(),
    };
    output(&report, &args)
}

/// Prints the table and writes the JSON and chart files asked for.
fn output(report: &Report, args: &Args) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)?;
    }
    if let Some(path) = &args.chart {
        report.chart(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn peers_are_checked_against_the_scenario() {
        assert_eq!(
            peers(Scenario::Latency, &[Peer::All]).ok(),
            Some(vec![System::Redis, System::Nats, System::Postgres])
        );
        assert!(peers(Scenario::PointSelect, &[Peer::Redis]).is_err());
        assert_eq!(
            peers(Scenario::Fanout, &[Peer::Nats, Peer::Nats]).ok(),
            Some(vec![System::Nats])
        );
    }
}
