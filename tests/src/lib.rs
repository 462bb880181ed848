//! eddy-tests: the shared harness for end-to-end tests.
//!
//! # Layout
//! - [`TestNode`] — an in-process node on port 0 in a temp dir.
//! - [`ProcessNode`] — the real `eddy` binary as a child process (kill -9, restart).
//! - [`cluster::TestCluster`] — n nodes forming a cluster: real processes (eddy-kit's
//!   `ProcessCluster`, shared with eddy-bench) or nodes in the test process; cut links,
//!   lost frames, failing forwards.
//! - [`psql`] — runs the real `psql` client.
//! - [`slt`] — a small sqllogictest-style runner over the wire protocol.
//! - [`wait_for`] — condition waits instead of sleeps (eddy-kit's, shared with eddy-bench).
//! - [`proxy::TcpProxy`] — a TCP proxy that cuts connections (client reconnect tests).
//!
//! Test binaries: `tests/sql` (golden files, drivers, psql, psycopg),
//! `tests/process` (real processes: durability, malformed frames, CLI) and `tests/client`
//! (the `eddy-client` crate against a real node).

pub mod cluster;
pub mod proxy;
pub mod slt;
pub mod wire;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use eddy_broker::{spawn_node, Config, NodeHandle};
use eddy_kit::EddyProcess;
use tokio_postgres::{Client, NoTls};

/// Connects tokio-postgres to a node and drives the connection in the background.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    eddy_kit::connect(&format!(
        "host={} port={} user=eddy dbname=eddy",
        addr.ip(),
        addr.port()
    ))
    .await
}

/// A node running inside the test process.
pub struct TestNode {
    handle: Option<NodeHandle>,
    addr: SocketAddr,
    config: Config,
    /// Kept so the data directory lives as long as the node.
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node with default settings.
    pub async fn start() -> anyhow::Result<TestNode> {
        Self::start_with(|_| {}).await
    }

    /// Starts a node after letting `f` adjust the config.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::default();
        config.node.data_dir = dir.path().to_path_buf();
        config.node.pg_addr = "127.0.0.1:0".parse()?;
        f(&mut config);
        let handle = spawn_node(config.clone()).await?;
        let addr = handle.pg_addr();
        Ok(TestNode {
            handle: Some(handle),
            addr,
            config,
            dir,
        })
    }

    /// Stops the node cleanly and starts it again on the same data directory (new port).
    pub async fn restart(mut self) -> anyhow::Result<TestNode> {
        if let Some(h) = self.handle.take() {
            h.shutdown().await?;
        }
        // The old node released the data directory (its lock) when shutdown returned.
        let handle = spawn_node(self.config.clone()).await?;
        self.addr = handle.pg_addr();
        self.handle = Some(handle);
        Ok(self)
    }

    /// The Postgres address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP endpoint's address, when the config asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.handle.as_ref().and_then(NodeHandle::http_addr)
    }

    /// The node's storage (for read counters).
    pub fn store(&self) -> &eddy_storage::Store {
        // The handle is only taken by `shutdown`, which consumes the node.
        #[allow(clippy::expect_used)]
        self.handle
            .as_ref()
            .expect("node is running")
            .engine()
            .store()
    }

    /// A new tokio-postgres connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(self.addr).await
    }

    /// Stops the node cleanly.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(h) = self.handle.take() {
            h.shutdown().await?;
        }
        Ok(())
    }
}

/// Path of the `eddy` binary next to the test executable (built by `scripts/test.sh`);
/// builds it if it is missing.
pub fn eddy_bin() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = eddy_kit::eddy_bin() {
        return Ok(bin);
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--bin", "eddy"])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --bin eddy failed");
    eddy_kit::eddy_bin()
}

/// The real `eddy` binary running as a child process (eddy-kit's [`EddyProcess`], which
/// it derefs to: `addr`, `cluster_addr`, `kill9`, `terminate`, `is_running`, `log`).
pub struct ProcessNode(EddyProcess);

impl ProcessNode {
    /// Starts `eddy start` on `data_dir` with a free port, plus `extra` flags, and waits
    /// until it prints the address it listens on.
    pub fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<ProcessNode> {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// [`ProcessNode::start`] with the Postgres listener on `pg_addr`. Its stderr is
    /// appended to `<data_dir>.log`, so a restarted node's log follows the first run's.
    pub fn start_at(data_dir: &Path, pg_addr: &str, extra: &[&str]) -> anyhow::Result<ProcessNode> {
        Ok(ProcessNode(EddyProcess::start(
            &eddy_bin()?,
            data_dir,
            pg_addr,
            extra,
        )?))
    }
}

impl std::ops::Deref for ProcessNode {
    type Target = EddyProcess;
    fn deref(&self) -> &EddyProcess {
        &self.0
    }
}

impl std::ops::DerefMut for ProcessNode {
    fn deref_mut(&mut self) -> &mut EddyProcess {
        &mut self.0
    }
}

/// Output of a psql run.
pub struct PsqlOutput {
    /// Exit status success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `psql` against `addr` with `args` (e.g. `["-c", "SELECT 1"]`), feeding `stdin`.
/// The subprocess runs on the blocking pool, so an in-process node keeps serving.
pub async fn psql(addr: SocketAddr, args: &[&str], stdin: &str) -> anyhow::Result<PsqlOutput> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || psql_blocking(addr, &args, &stdin)).await?
}

fn psql_blocking(addr: SocketAddr, args: &[String], stdin: &str) -> anyhow::Result<PsqlOutput> {
    let mut child = Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["-U", "eddy", "-d", "eddy"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run psql (install postgresql-client): {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(PsqlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Connects tokio-postgres and forwards the connection's asynchronous messages:
/// notifications (LISTEN) and notices.
pub async fn connect_async(
    addr: SocketAddr,
) -> anyhow::Result<(
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
)> {
    let conn_str = format!(
        "host={} port={} user=eddy dbname=eddy",
        addr.ip(),
        addr.port()
    );
    let (client, mut conn) = tokio_postgres::connect(&conn_str, NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
            let _ = tx.send(msg);
        }
    });
    Ok((client, rx))
}

/// The next notice among a [`connect_async`] connection's messages (notifications are
/// skipped); fails after `timeout` or when the connection ends first.
pub async fn next_notice(
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
    timeout: Duration,
) -> anyhow::Result<tokio_postgres::error::DbError> {
    tokio::time::timeout(timeout, async {
        loop {
            match messages.recv().await {
                Some(tokio_postgres::AsyncMessage::Notice(n)) => return Some(n),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("the connection ended without a notice"))
}

/// [`connect_async`], keeping the notifications (LISTEN) as (channel, payload) pairs.
pub async fn connect_listening(
    addr: SocketAddr,
) -> anyhow::Result<(
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
)> {
    let (client, mut all) = connect_async(addr).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = all.recv().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    Ok((client, rx))
}

pub use eddy_kit::wait_for;

/// Waits up to `deadline` until `eddy.nodes` on the node `c` is connected to shows node
/// `node` in `state` (`serving` or `draining`).
pub async fn wait_node_state(
    c: &Client,
    node: i64,
    state: &str,
    deadline: std::time::Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("node {node} {state}"), deadline, || async {
        let r = c
            .query_one("SELECT state FROM eddy.nodes WHERE node_id = $1", &[&node])
            .await
            .ok()?;
        (r.get::<_, Option<String>>(0)?.as_str() == state).then_some(())
    })
    .await
}

/// Waits until `count` FETCHes wait for rows on the subscriptions of `eddy.subscriptions`
/// matching `condition` (SQL, e.g. `name = 's'` or `kind = 'cursor'`), as the node
/// counts them: a test publishes "while a FETCH waits" only once one does.
pub async fn until_fetches_wait(c: &Client, condition: &str, count: i64) -> anyhow::Result<()> {
    let sql = format!("SELECT sum(waiting)::bigint FROM eddy.subscriptions WHERE {condition}");
    let what = format!("{count} FETCH(es) waiting on the subscriptions where {condition}");
    wait_for(&what, Duration::from_secs(20), || async {
        let n: Option<i64> = c.query_one(&sql, &[]).await.ok()?.get(0);
        (n == Some(count)).then_some(())
    })
    .await
}

/// Directory of the SQL golden files.
pub fn slt_dir() -> PathBuf {
    // cargo sets the variable for the test process as well: preferring it, a test binary
    // built from another checkout of the tree (a shared target dir) reads this one's files.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("slt")
}
