//! The servers a run talks to, each started by the tool as processes of its own on loopback
//! in a temporary directory (so their CPU seconds can be read from `/proc`), or given by
//! URL. eddy and NATS run as [`Cluster`]s of one or more nodes, which the failover
//! measurement kills and restarts.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::System;

mod cluster;

pub use cluster::Cluster;

/// A running server: where to connect, and (when the tool started it) its processes.
pub struct Server {
    /// Which system it is.
    pub system: System,
    /// One connection string per node for the system's client (tokio-postgres, redis://,
    /// nats://); never empty. Clients spread over them with [`Server::url_for`].
    pub urls: Vec<String>,
    processes: Processes,
}

/// What the tool knows of a server's processes.
enum Processes {
    /// Started elsewhere: no CPU accounting, nothing to kill.
    External,
    /// One process tree (PostgreSQL's postmaster and its backends, Redis). The guard
    /// stops the server and removes its directory when dropped.
    Tree {
        pid: Option<u32>,
        _guard: Box<dyn Send + Sync>,
    },
    /// Nodes started by the tool (eddy, NATS), each of which can be killed and started
    /// again (the failover measurement). Locked only for process operations, never
    /// across an await.
    Cluster(Mutex<Cluster>),
}

impl Server {
    /// A server started elsewhere, one connection string per node: no CPU accounting.
    pub fn external(system: System, urls: Vec<String>) -> anyhow::Result<Server> {
        anyhow::ensure!(!urls.is_empty(), "no address given for {}", system.name());
        Ok(Server {
            system,
            urls,
            processes: Processes::External,
        })
    }

    /// Starts `system` with `nodes` nodes on free loopback ports in a temp dir (eddy: a
    /// cluster of `nodes`; NATS: JetStream servers clustered on loopback; PostgreSQL and
    /// Redis: one node only). Fails with install advice when a server binary is missing.
    pub async fn start(system: System, nodes: usize) -> anyhow::Result<Server> {
        anyhow::ensure!(nodes >= 1, "a server has at least one node");
        match system {
            System::Eddy => Server::start_eddy(nodes, &[]).await,
            System::Nats => Ok(Server::cluster_of(
                System::Nats,
                Cluster::start_nats(nodes)?,
            )),
            // One process whatever `nodes` says: it stands for any server, replicated or not.
            System::Floor => Server::start_floor(true),
            System::Postgres | System::Redis => {
                anyhow::ensure!(
                    nodes == 1,
                    "the tool starts {} as a single node only",
                    system.name()
                );
                if system == System::Postgres {
                    start_postgres()
                } else {
                    start_redis()
                }
            }
        }
    }

    /// eddy with `nodes` nodes, each `eddy start` given `extra` flags too (a `--config`
    /// file, say).
    pub async fn start_eddy(nodes: usize, extra: &[String]) -> anyhow::Result<Server> {
        anyhow::ensure!(nodes >= 1, "a server has at least one node");
        let cluster = Cluster::start_eddy(nodes, extra).await?;
        Ok(Server::cluster_of(System::Eddy, cluster))
    }

    /// The floor ([`crate::floor`]): this executable started again to serve it, its file in
    /// a temp dir; `sync: false` skips its fdatasync.
    pub fn start_floor(sync: bool) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = dir.path().join("floor.log");
        let spec = format!(
            "127.0.0.1:{port} {} {}",
            dir.path().join("floor.dat").display(),
            if sync { "sync" } else { "nosync" }
        );
        let mut child = Command::new(std::env::current_exe()?)
            .env(crate::floor::SERVE_ENV, spec)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        wait_listening(&mut child, port, "the floor server", &log)?;
        Ok(Server {
            system: System::Floor,
            urls: vec![format!(
                "host=127.0.0.1 port={port} user=floor dbname=floor"
            )],
            processes: Processes::Tree {
                pid: Some(child.id()),
                _guard: Box::new(ChildGuard { child, _dir: dir }),
            },
        })
    }

    fn cluster_of(system: System, cluster: Cluster) -> Server {
        Server {
            system,
            urls: cluster.urls(),
            processes: Processes::Cluster(Mutex::new(cluster)),
        }
    }

    /// The first node's connection string.
    pub fn url(&self) -> &str {
        // `urls` is never empty (both constructors make sure).
        &self.urls[0]
    }

    /// The connection string of the node client `i` uses: clients go round the nodes.
    pub fn url_for(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// Nodes (connection strings) of the server.
    pub fn nodes(&self) -> usize {
        self.urls.len()
    }

    /// CPU seconds (user + system) used so far by the server's process trees (every node
    /// running now), counting exited children they reaped (PostgreSQL's backends). `None`
    /// for external servers.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match &self.processes {
            Processes::External => None,
            Processes::Tree { pid, .. } => pid.map(|p| tree_cpu_seconds(&[p])),
            Processes::Cluster(c) => Some(tree_cpu_seconds(&lock(c).pids())),
        }
    }

    /// The nodes the tool started, to kill and restart; an error for other servers.
    pub fn cluster(&self) -> anyhow::Result<MutexGuard<'_, Cluster>> {
        match &self.processes {
            Processes::Cluster(c) => Ok(lock(c)),
            _ => anyhow::bail!(
                "{} was not started by the tool as nodes it can kill and restart",
                self.system.name()
            ),
        }
    }
}

/// Locks the cluster even if a thread panicked holding it (its processes are still
/// what they were).
fn lock(c: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A child process killed (and reaped) on drop, with its temp dir removed after.
struct ChildGuard {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports (all bound at once, so none is handed out twice).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `port`, or the child exits.
fn wait_listening(child: &mut Child, port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        let exited = child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let logs = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("{what} did not start ({exited:?}):\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds a server binary on `PATH` (or in `extra` directories).
fn find_on_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `eddy` binary: `$EDDY_BIN`, else next to this executable (target/release/eddy for
/// target/release/eddy-bench; target/debug/eddy for a test in target/debug/deps).
pub use eddy_kit::eddy_bin;

fn start_redis() -> anyhow::Result<Server> {
    let bin = find_on_path("redis-server", &[])
        .ok_or_else(|| anyhow::anyhow!("redis-server not found: apt-get install redis-server"))?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let log = dir.path().join("redis.log");
    // Durable like eddy: the append-only file is fsynced before a write is acknowledged.
    let mut child = Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(&mut child, port, "redis-server", &log)?;
    Ok(Server {
        system: System::Redis,
        urls: vec![format!("redis://127.0.0.1:{port}/")],
        processes: Processes::Tree {
            pid: Some(child.id()),
            _guard: Box::new(ChildGuard { child, _dir: dir }),
        },
    })
}

/// PostgreSQL's server binaries: `$PG_BIN`, then Debian's layout, then `PATH`.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|b| b.join("postgres").exists())
        .or_else(|| find_on_path("postgres", &[]).and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of our own: initdb into a temp dir, trust auth on 127.0.0.1,
/// `pg_ctl stop` on drop. As root its tools run as `postgres` (PostgreSQL refuses root).
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<String>,
}

impl Postgres {
    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).current_dir("/").output()?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

fn start_postgres() -> anyhow::Result<Server> {
    let bin = postgres_bin().ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL server binaries not found: apt-get install postgresql (or set PG_BIN)"
        )
    })?;
    let dir = tempfile::tempdir()?;
    let user = is_root().then(|| "postgres".to_owned());
    if let Some(u) = &user {
        let ok = Command::new("chown")
            .args(["-R", u])
            .arg(dir.path())
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot hand {} to {u}", dir.path().display());
    }
    let port = free_port()?;
    let pg = Postgres { dir, bin, user };
    pg.tool(
        "initdb",
        &["-A", "trust", "-U", "postgres", "-D", &pg.data()],
    )?;
    // Durable like eddy: fsync and synchronous_commit stay on (the defaults).
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c max_connections=200 -k {}",
        pg.dir.path().display()
    );
    let log = pg
        .dir
        .path()
        .join("postgres.log")
        .to_string_lossy()
        .into_owned();
    pg.tool(
        "pg_ctl",
        &["-D", &pg.data(), "-o", &opts, "-l", &log, "-w", "start"],
    )?;
    let pidfile = std::fs::read_to_string(Path::new(&pg.data()).join("postmaster.pid"))?;
    let pid = pidfile.lines().next().and_then(|l| l.trim().parse().ok());
    Ok(Server {
        system: System::Postgres,
        urls: vec![format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres"
        )],
        processes: Processes::Tree {
            pid,
            _guard: Box::new(pg),
        },
    })
}

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of a `/proc/<pid>/stat` line from field 3 (state) on: index 1 is ppid, 11
/// and 12 utime and stime, 13 and 14 cutime and cstime.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().collect())
}

/// The sum of `stat`'s fields in `range` (see [`stat_fields`]), in clock ticks.
fn stat_ticks(fields: &[&str], range: std::ops::Range<usize>) -> Option<u64> {
    Some(
        fields
            .get(range)?
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum(),
    )
}

/// (ppid, utime + stime + cutime + cstime) from a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let f = stat_fields(stat)?;
    Some((f.get(1)?.parse().ok()?, stat_ticks(&f, 11..15)?))
}

/// CPU seconds this process (the load generator, all its threads) has used so far; its
/// servers are other processes and do not count.
pub fn own_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_ticks(&stat_fields(&stat)?, 11..13))
        .unwrap_or(0);
    ticks as f64 / clock_ticks()
}

/// CPU seconds of the `roots` and every live descendant of theirs (reaped children count
/// through cutime/cstime, so nothing is counted twice).
pub fn tree_cpu_seconds(roots: &[u32]) -> f64 {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(s) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            procs.insert(pid, s);
        }
    }
    let mut total = 0u64;
    let mut frontier = roots.to_vec();
    while let Some(p) = frontier.pop() {
        if let Some((_, t)) = procs.get(&p) {
            total += t;
        }
        frontier.extend(
            procs
                .iter()
                .filter(|(_, (ppid, _))| *ppid == p)
                .map(|(pid, _)| *pid),
        );
    }
    total as f64 / clock_ticks()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "4242 (my proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 5 1 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some((1, 16)));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(tree_cpu_seconds(&[std::process::id()]) > 0.0);
        assert!(own_cpu_seconds() > 0.0);
    }
}
