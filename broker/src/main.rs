//! The `eddy` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use eddy_broker::{spawn_node, Config};

/// mimalloc: small, short-lived allocations (messages, rows, batches) are the broker's
/// common case, and glibc malloc showed up at ~10% of a publish profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// eddy: a message broker you talk to in SQL over the Postgres wire protocol.
#[derive(Parser, Debug)]
#[command(
    name = "eddy",
    version,
    about = "eddy: a message broker you talk to in SQL over the Postgres wire protocol",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a node. With no flags: data in ./eddy-data, Postgres port 127.0.0.1:5433.
    Start(Box<StartArgs>),
    /// Start a local cluster for trying things out: one `eddy start` process per node,
    /// node 1 forming the cluster and the others joining it. Ctrl-C stops them all.
    Dev(DevArgs),
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Directory holding each node's data directory and log (node1/, node1.log, ...).
    #[arg(long, value_name = "DIR", default_value = "eddy-dev")]
    dir: PathBuf,
    /// Postgres port of node 1; node N listens on this + N - 1, and its cluster address
    /// on that + 2000.
    #[arg(long, value_name = "PORT", default_value_t = 5433)]
    base_port: u16,
}

#[derive(clap::Args, Debug)]
struct StartArgs {
    /// TOML config file (see eddy.example.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// RocksDB data directory [default: eddy-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Postgres wire protocol listen address [default: 127.0.0.1:5433].
    #[arg(long, value_name = "HOST:PORT")]
    pg_addr: Option<SocketAddr>,
    /// This node's id: nonzero, unique in the cluster, the same on every restart [default: 1].
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Internal RPC listen address for other nodes [default: the Postgres host, port + 2000].
    #[arg(long, value_name = "HOST:PORT")]
    cluster_addr: Option<SocketAddr>,
    /// Join the cluster of the node at this cluster address (when this node's data is new).
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// Testing only: cut this node's links to the node ids listed in FILE (re-read
    /// every 100 ms), to simulate a network partition.
    #[arg(long, value_name = "FILE", hide = true)]
    fault_file: Option<PathBuf>,
    /// The cluster secret: every internal frame carries an HMAC-SHA256 tag keyed by it;
    /// every node of a cluster needs the same one [default: a built-in development secret].
    #[arg(
        long,
        value_name = "SECRET",
        env = "EDDY_CLUSTER_SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,
    /// Accept gossip deltas only from these origins (node ids, comma-separated)
    /// [default: every origin].
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    trust_origins: Option<Vec<u64>>,
    /// This node's zone label, gossiped to the other nodes.
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
    /// LAN discovery: announce this node by UDP broadcast on PORT and join the nodes
    /// heard there [default: off].
    #[arg(long, value_name = "PORT")]
    discover: Option<u16>,
    /// Most client connections open at once; more are refused with SQLSTATE 53300
    /// [default: 100].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Serve /metrics (Prometheus text), /healthz and /readyz over HTTP on this address
    /// [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<SocketAddr>,
    /// On SIGTERM, drain first (no new work comes here; the other nodes' routers see it),
    /// then stop.
    #[arg(long)]
    drain_on_shutdown: bool,
    /// Adaptive routing's default strategy for sessions that set none (SET routing):
    /// adaptive, round_robin, least_connections, locality or local [default: adaptive].
    #[arg(long, value_name = "STRATEGY")]
    routing: Option<String>,
    /// Largest message or row accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "eddy_broker=debug".
    #[arg(long, env = "EDDY_LOG", default_value = "info,openraft=warn")]
    log: String,
}

/// Installs the SIGTERM/SIGINT handlers now (so a signal that comes early is not lost to
/// the default action) and returns a future that resolves with the first one.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.node.data_dir = d;
    }
    if let Some(a) = args.pg_addr {
        config.node.pg_addr = a;
    }
    if let Some(n) = args.node_id {
        config.cluster.node_id = n;
    }
    if let Some(a) = args.cluster_addr {
        config.cluster.cluster_addr = Some(a);
    }
    if let Some(j) = args.join {
        config.cluster.join = Some(j);
    }
    if let Some(f) = args.fault_file {
        config.cluster.fault_file = Some(f);
    }
    if let Some(s) = args.cluster_secret {
        config.cluster.secret = Some(s);
    }
    if let Some(t) = args.trust_origins {
        config.gossip.trust_origins = Some(t);
    }
    if let Some(z) = args.zone {
        config.gossip.zone = z;
    }
    if let Some(p) = args.discover {
        config.gossip.discover_port = Some(p);
    }
    if let Some(n) = args.max_connections {
        config.node.max_connections = n;
    }
    if let Some(m) = args.max_message_bytes {
        config.query.max_message_bytes = m;
    }
    if let Some(a) = args.http_addr {
        config.node.http_addr = Some(a);
    }
    if args.drain_on_shutdown {
        config.node.drain_on_shutdown = true;
    }
    if let Some(r) = args.routing {
        config.routing.strategy = r;
    }
    let drain_first = config.node.drain_on_shutdown;
    let signal = shutdown_signal()?;
    let node = spawn_node(config).await?;
    // Printed on stdout for scripts and tests. Whoever started us may read the first line
    // only and close the pipe, so later lines must not fail (println! would panic).
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "eddy listening on {}", node.pg_addr());
        let _ = writeln!(
            out,
            "eddy node {} cluster address {}",
            node.cluster().id(),
            node.cluster_addr()
        );
        if let Some(http) = node.http_addr() {
            let _ = writeln!(out, "eddy http on {http}");
        }
        let _ = out.flush();
    }
    let signal = signal.await;
    if drain_first && signal == "SIGTERM" {
        tracing::info!(signal, "draining before shutting down");
        node.drain().await;
    }
    tracing::info!(signal, "shutting down");
    node.shutdown().await
}

/// Runs `eddy dev`: starts the nodes as child processes and stops them on a signal.
fn dev(args: DevArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command as Process, Stdio};
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let cluster_port = |n: u16| args.base_port.saturating_add(2000 + n - 1);
    let seed = format!("127.0.0.1:{}", cluster_port(1));
    let mut children: Vec<std::process::Child> = Vec::new();
    println!("node  postgres          cluster           data dir");
    for n in 1..=args.nodes {
        let data = args.dir.join(format!("node{n}"));
        let log = std::fs::File::create(args.dir.join(format!("node{n}.log")))?;
        let pg = format!("127.0.0.1:{}", args.base_port.saturating_add(n - 1));
        let cluster = format!("127.0.0.1:{}", cluster_port(n));
        let mut cmd = Process::new(&exe);
        cmd.arg("start")
            .args(["--node-id", &n.to_string(), "--pg-addr", &pg])
            .args(["--cluster-addr", &cluster])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(log);
        if n > 1 {
            cmd.args(["--join", &seed]);
        }
        let mut child = cmd.spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if !line.starts_with("eddy listening on") {
            let _ = child.kill();
            for c in &mut children {
                let _ = Process::new("kill").arg(c.id().to_string()).status();
            }
            anyhow::bail!(
                "node {n} did not start; see {}",
                args.dir.join(format!("node{n}.log")).display()
            );
        }
        println!("{n:<5} {pg:<17} {cluster:<17} {}", data.display());
        children.push(child);
    }
    println!();
    println!(
        "connect: psql -h 127.0.0.1 -p {} -U eddy eddy",
        args.base_port
    );
    println!("logs in {}; Ctrl-C stops the cluster", args.dir.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal = rt.block_on(async { anyhow::Ok(shutdown_signal()?.await) })?;
    eprintln!("{signal}: stopping {} nodes", children.len());
    for c in &children {
        let _ = Process::new("kill").arg(c.id().to_string()).status();
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Start(args) => *args,
        Command::Dev(args) => return dev(args),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(start(args))
}
