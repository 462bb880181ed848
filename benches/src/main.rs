//! `eddy-bench <scenario>`: runs a load scenario against eddy (nodes of its own, started
//! as child processes in a temp dir, or `--url`) and, interleaved in the same run, against
//! the peers asked for; prints a table and optionally writes JSON and an SVG chart.
//! `replicated` then kills leaders (`--kills`) and reports write unavailability.
//! `gossip-converge` has no peer and no timed run: it partitions its own nodes, heals
//! them and reports how long their gossip table takes to converge (`--rounds` times).

use std::time::{Duration, Instant};

use clap::Parser;
use eddy_bench::report::{DiskSync, Entry, Report};
use eddy_bench::{gossip_converge, run, Meter, Options, Scenario, Server, System, Via};
use indicatif::{ProgressBar, ProgressStyle};

/// A peer to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// PostgreSQL (`apt-get install postgresql`; found in /usr/lib/postgresql/*/bin or $PG_BIN).
    Postgres,
    /// Redis (`apt-get install redis-server`), with appendfsync always.
    Redis,
    /// NATS (`apt-get install nats-server`), with JetStream on file storage (for
    /// `replicated`: 3 servers clustered on loopback, a stream with 3 replicas).
    Nats,
    /// The floor: a Postgres-protocol server of this tool's own that only writes each
    /// INSERT's message to a file, with one fdatasync for all that wait, answers, and
    /// sends it to COPY subscribers (publish-durable, replicated, latency). Every real
    /// server does more.
    Floor,
    /// Every peer the scenario (but the floor) has a workload for.
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
    /// user=eddy"), repeated for each node of a cluster; without it, the tool starts its
    /// own nodes in a temp dir.
    #[arg(long)]
    url: Vec<String>,
    /// Nodes of the tool's own eddy, one `eddy start` process each, forming one cluster
    /// [default: replicated and gossip-converge 3, others 1].
    #[arg(long)]
    nodes: Option<usize>,
    /// An extra flag for every `eddy start` of the tool's own nodes (repeatable), e.g.
    /// `--eddy-arg=--config=eddy.toml`.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    eddy_arg: Vec<String>,
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
    /// Connections (publishers), spread over the nodes [default: point-select 4,
    /// publish-bulk 4, publish-durable 50, fanout and latency 1, replicated 256].
    #[arg(long)]
    connections: Option<usize>,
    /// replicated: publishes awaiting their acknowledgement at once, over all connections.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// replicated: leaders to kill with SIGKILL after the rounds, one at a time, each
    /// restarted before the next (0: no failover measurement).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// With `--peer floor`: the floor skips its fdatasync, showing what the protocol,
    /// loopback and this client alone allow.
    #[arg(long)]
    floor_no_sync: bool,
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
    /// Rounds; each runs eddy then every peer, and the median round is reported
    /// (gossip-converge: partition and heal rounds, percentiles over them) [default: 3,
    /// gossip-converge 20].
    #[arg(long)]
    rounds: Option<usize>,
    /// gossip-converge: updates per round over all nodes (upserts and one in five a
    /// delete, of keys drawn from half as many).
    #[arg(long, default_value_t = 200)]
    updates: usize,
    /// gossip-converge: percent of the gossip frames (delta pushes, anti-entropy) every
    /// node loses, 0 to 100 (one decimal: the nodes take per mille).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// route: how node 3 is slowed in the middle window.
    #[arg(long, value_enum, default_value = "fault")]
    slowdown: eddy_bench::Slowdown,
    /// route, `--slowdown fault`: milliseconds every statement run on node 3 waits.
    #[arg(long, default_value_t = 30)]
    slow_ms: u64,
    /// route, `--slowdown cpu`: node 3's CPU quota, in percent of one CPU.
    #[arg(long, default_value_t = 10)]
    cpu_percent: u64,
    /// route: a variant to run (repeatable; local, round_robin, adaptive,
    /// adaptive+client) [default: all four].
    #[arg(long)]
    variant: Vec<String>,
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
            // The floor is no system people pick: asked for by name only.
            Peer::All => scenario
                .peers()
                .iter()
                .copied()
                .filter(|s| *s != System::Floor)
                .collect(),
            Peer::Postgres => vec![System::Postgres],
            Peer::Redis => vec![System::Redis],
            Peer::Nats => vec![System::Nats],
            Peer::Floor => vec![System::Floor],
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

fn main() -> anyhow::Result<()> {
    // A child started as the floor server serves it and never returns.
    eddy_bench::floor::serve_if_asked()?;
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let scenario = args.scenario;
    let rounds = args.rounds.unwrap_or(scenario.default_rounds());
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let nodes = args.nodes.unwrap_or(scenario.default_nodes());
    anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(
        scenario != Scenario::Replicated || nodes >= 3,
        "replicated measures a 3-node cluster (topics with 3 replicas); it needs --nodes 3 \
         or more, not {nodes}"
    );
    anyhow::ensure!(
        scenario != Scenario::Replicated || args.url.is_empty() || args.url.len() >= 3,
        "replicated needs a --url for each of at least 3 nodes"
    );
    if scenario == Scenario::GossipConverge && args.replot.is_none() {
        // Before any node starts: these are mistakes, not things to find out later.
        anyhow::ensure!(
            args.peer.is_empty(),
            "gossip-converge measures eddy's own gossip and has no peer workload: drop --peer"
        );
        anyhow::ensure!(
            args.url.is_empty(),
            "gossip-converge cuts and heals links through the fault files of nodes it \
             starts itself: drop --url"
        );
        anyhow::ensure!(
            nodes >= 2,
            "gossip-converge needs --nodes 2 or more, not {nodes}"
        );
        anyhow::ensure!(
            args.chart.is_none(),
            "gossip-converge has no throughput or latency to chart: use --json"
        );
        anyhow::ensure!(args.updates >= 1, "--updates must be at least 1");
        anyhow::ensure!(
            (0.0..=100.0).contains(&args.loss),
            "--loss is a percentage from 0 to 100, not {}",
            args.loss
        );
    }
    if scenario == Scenario::Route {
        anyhow::ensure!(
            args.peer.is_empty(),
            "route compares routing strategies and has no peer: drop --peer"
        );
        anyhow::ensure!(
            args.url.is_empty(),
            "route slows a node through nodes it starts itself: drop --url"
        );
        anyhow::ensure!(nodes == 3, "route runs on 3 nodes, not {nodes}");
        anyhow::ensure!(
            args.replot.is_none(),
            "route has no --replot: its --json is the record"
        );
        for v in &args.variant {
            anyhow::ensure!(
                eddy_bench::scenarios::ROUTE_VARIANTS.contains(&v.as_str()),
                "no route variant {v}: one of {}",
                eddy_bench::scenarios::ROUTE_VARIANTS.join(", ")
            );
        }
    }
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
    if scenario == Scenario::GossipConverge {
        return converge(&args, nodes, rounds).await;
    }
    if scenario == Scenario::Route {
        return route(&args, nodes).await;
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
    opts.in_flight = args.in_flight.max(1);
    opts.kills = if scenario == Scenario::Replicated {
        args.kills
    } else {
        0
    };
    anyhow::ensure!(
        args.url.is_empty() || opts.kills == 0,
        "--kills needs nodes the tool started (it kills and restarts them); with --url, \
         pass --kills 0"
    );

    let eddy = if args.url.is_empty() {
        Server::start_eddy(nodes, &args.eddy_arg).await?
    } else {
        Server::external(System::Eddy, args.url.clone())?
    };
    let mut servers = Vec::new();
    for s in &peer_systems {
        // replicated compares clusters of the same size; other scenarios one node each.
        let n = if scenario == Scenario::Replicated {
            nodes
        } else {
            1
        };
        servers.push(if *s == System::Floor {
            Server::start_floor(!args.floor_no_sync)?
        } else {
            Server::start(*s, n).await?
        });
    }
    // eddy's variants: publish-bulk and replicated measure statements (COPY, or one INSERT
    // per message) and the client's producer.
    let variants: Vec<(String, Via)> =
        if matches!(scenario, Scenario::PublishBulk | Scenario::Replicated) {
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
    for round in 0..rounds {
        for (i, (label, via)) in variants.iter().enumerate() {
            let o = Options {
                via: *via,
                ..opts.clone()
            };
            eddy_rounds[i].push(measured(label, scenario, &eddy, &o, round, rounds).await?);
        }
        for (i, server) in servers.iter().enumerate() {
            peer_rounds[i].push(
                measured(server.system.name(), scenario, server, &opts, round, rounds).await?,
            );
        }
    }
    // replicated: the leader kills, after every throughput round (they restart nodes).
    let mut failover = Vec::new();
    if opts.kills > 0 {
        for server in std::iter::once(&eddy).chain(&servers) {
            eprintln!(
                "{}: {} leader kills (kill -9, restart, catch up)",
                server.system.name(),
                opts.kills
            );
            let f = eddy_bench::failover(server, &opts)
                .await
                .map_err(|e| e.context(format!("{} failover", server.system.name())))?;
            failover.push(f);
        }
    }
    // latency: the disk's own floor under a durable publish, in the same run: writes one
    // after another, and paced as the publisher is.
    let disk = if scenario == Scenario::Latency {
        let dir = std::env::temp_dir();
        let gap = opts
            .rate
            .filter(|r| *r > 0)
            .map(|r| std::time::Duration::from_secs_f64(1.0 / r as f64));
        tokio::task::spawn_blocking(move || {
            let mut disk = vec![DiskSync::measure(&dir, 2000, None)?];
            if gap.is_some() {
                disk.push(DiskSync::measure(&dir, 2000, gap)?);
            }
            anyhow::Ok(disk)
        })
        .await??
    } else {
        Vec::new()
    };
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
        Scenario::Replicated => format!(
            "{nodes} nodes, 3 replicas; {} in flight over {} connections, {} B, {:?}",
            opts.in_flight,
            opts.connections.min(opts.in_flight),
            opts.size,
            opts.duration
        ),
        _ => format!(
            "{} connections, {} B, {:?}",
            opts.connections, opts.size, opts.duration
        ),
    } + &format!("; median of {} rounds", rounds);
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
            .map(|(s, r)| {
                let label = if s.system == System::Floor && args.floor_no_sync {
                    "floor (no fsync)"
                } else {
                    s.system.name()
                };
                Entry::median(label.into(), s.system, scenario, r)
            })
            .collect(),
        failover,
        gossip: None,
        disk,
    };
    output(&report, &args)
}

/// gossip-converge: starts `nodes` eddy nodes, runs `rounds` partition and heal rounds
/// under a progress bar, and reports them.
async fn converge(args: &Args, nodes: usize, rounds: usize) -> anyhow::Result<()> {
    let mut opts = Options::defaults(Scenario::GossipConverge);
    opts.updates = args.updates;
    opts.loss_permille = (args.loss * 10.0).round() as u64;
    let loss = opts.loss_permille as f64 / 10.0;
    eprintln!(
        "eddy: {rounds} rounds of {nodes} nodes, node {nodes} cut off, {} updates, heal; \
         {loss}% of gossip frames lost",
        opts.updates
    );
    let eddy = Server::start_eddy(nodes, &args.eddy_arg).await?;
    let meter = Meter::default();
    let bar = ProgressBar::new(rounds as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} rounds")?
            .progress_chars("=> "),
    );
    bar.set_prefix("eddy gossip-converge");
    let ticker = {
        let (bar, meter) = (bar.clone(), meter.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(meter.get());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = gossip_converge(&eddy, &opts, rounds, &meter).await;
    ticker.abort();
    bar.finish_and_clear();
    let g = result?;
    let report = Report {
        scenario: Scenario::GossipConverge,
        shape: format!(
            "{nodes} nodes, node {nodes} cut off then healed; {} updates per round over {} keys \
             on every node; {loss}% of gossip frames lost; {rounds} rounds",
            g.updates, g.keys
        ),
        eddy: Vec::new(),
        peers: Vec::new(),
        failover: Vec::new(),
        gossip: Some(g),
        disk: Vec::new(),
    };
    output(&report, args)
}

/// route: starts 3 eddy nodes and runs the variants asked for.
async fn route(args: &Args, nodes: usize) -> anyhow::Result<()> {
    let eddy = Server::start_eddy(nodes, &args.eddy_arg).await?;
    let o = eddy_bench::RouteOptions {
        rate: args.rate.unwrap_or(150).max(1),
        per_node: args
            .connections
            .unwrap_or(Scenario::Route.default_connections())
            .max(1),
        slow_for: args.duration,
        slowdown: args.slowdown,
        slow_ms: args.slow_ms,
        cpu_percent: args.cpu_percent.clamp(1, 100),
        variants: if args.variant.is_empty() {
            eddy_bench::scenarios::ROUTE_VARIANTS
                .iter()
                .map(|v| (*v).to_owned())
                .collect()
        } else {
            args.variant.clone()
        },
    };
    let report = eddy_bench::route(&eddy, &o).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, report.chart())?;
    }
    Ok(())
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
        assert_eq!(
            peers(Scenario::Replicated, &[Peer::All]).ok(),
            Some(vec![System::Nats])
        );
        assert!(peers(Scenario::Replicated, &[Peer::Postgres]).is_err());
        assert_eq!(
            peers(Scenario::PublishDurable, &[Peer::Floor]).ok(),
            Some(vec![System::Floor])
        );
        assert!(peers(Scenario::Fanout, &[Peer::Floor]).is_err());
    }
}
