//! eddy-kit: the one harness for eddy nodes as real processes, shared by the end-to-end
//! tests (`eddy-tests`, which adds nodes inside the test process) and the load
//! benchmarks (`eddy-bench`).
//!
//! - [`EddyProcess`]: `eddy start` as a child process (kill -9, SIGTERM, restart).
//! - [`ProcessCluster`]: n of them forming one cluster as the docs say (node 1 forms it,
//!   the others `--join` it), each with a fault file.
//! - [`FaultFiles`]: the nodes' `--fault-file`s (cut links, lost gossip frames, failing
//!   forwards), each replaced whole.
//! - [`wait_for`]: the one way to wait for an observable state.

mod cluster;
mod faults;
mod process;

pub use cluster::{NodeHome, ProcessCluster};
pub use faults::FaultFiles;
pub use process::EddyProcess;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it gives `Some`; fails naming `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects tokio-postgres with a libpq-style string and drives the connection in the
/// background.
pub async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The `eddy` binary: `$EDDY_BIN`, else next to the running executable or one directory
/// up (a test in `target/debug/deps` finds `target/debug/eddy`).
pub fn eddy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDDY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let candidates = exe.ancestors().skip(1).take(2).map(|d| d.join("eddy"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "the eddy binary is not built next to {}: run `cargo build --bin eddy` (or set EDDY_BIN)",
            exe.display()
        )
    })
}
