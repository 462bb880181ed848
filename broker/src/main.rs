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
#[command(name = "eddy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a node. With no flags: data in ./eddy-data, Postgres port 127.0.0.1:5433.
    Start(StartArgs),
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
    /// Largest message or row accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "eddy_broker=debug".
    #[arg(long, env = "EDDY_LOG", default_value = "info")]
    log: String,
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
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
    if let Some(m) = args.max_message_bytes {
        config.query.max_message_bytes = m;
    }
    let node = spawn_node(config).await?;
    // Printed on stdout for scripts and tests: the address actually bound.
    println!("eddy listening on {}", node.pg_addr());
    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down");
    node.shutdown().await
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Start(args) = cli.command;
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
