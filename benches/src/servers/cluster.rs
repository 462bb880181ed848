//! Nodes the tool starts as child processes in one temp dir, each on fixed loopback ports
//! and with a fixed command line, so a node killed with SIGKILL starts again as the same
//! node on its own data: eddy nodes forming one cluster (node 1 forms it, the others
//! `--join` it), and NATS servers forming one JetStream cluster (routes to each other).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eddy_bin, find_on_path, free_ports, wait_listening};

/// A node's process, how to start it again, and how to tell it is up.
struct Node {
    /// What the node is called in logs and errors ("eddy node 2", "nats n2").
    name: String,
    program: PathBuf,
    /// The whole command line, the same on every start.
    args: Vec<OsString>,
    /// stderr of every start, appended.
    log: PathBuf,
    ready: Ready,
    /// NATS: the HTTP monitoring port (`/jsz` shows the server's own view of each
    /// stream's leader).
    monitor: Option<u16>,
    /// `None` while killed.
    child: Option<Child>,
}

/// When a started node counts as up.
#[derive(Clone, Copy)]
enum Ready {
    /// eddy prints `eddy listening on ADDR` once it serves Postgres connections.
    EddyStdout,
    /// Something accepts connections on this port.
    Port(u16),
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stderr(log);
        match self.ready {
            Ready::EddyStdout => {
                let mut child = cmd.stdout(Stdio::piped()).spawn()?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("{}: no stdout", self.name))?;
                let mut out = BufReader::new(stdout);
                let mut line = String::new();
                out.read_line(&mut line)?;
                if !line.starts_with("eddy listening on ") {
                    let _ = child.kill();
                    let _ = child.wait();
                    let logs = std::fs::read_to_string(&self.log).unwrap_or_default();
                    anyhow::bail!("{} did not start: {line:?}\n{logs}", self.name);
                }
                // Whatever eddy prints later must not meet a closed pipe.
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                self.child = Some(child);
            }
            Ready::Port(port) => {
                let mut child = cmd.stdout(Stdio::null()).spawn()?;
                if let Err(e) = wait_listening(&mut child, port, &self.name, &self.log) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
                self.child = Some(child);
            }
        }
        Ok(())
    }

    fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix: no clean shutdown, as in a crash.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// Nodes of one system started by the tool; dropping it kills them all and removes their
/// directory.
pub struct Cluster {
    nodes: Vec<Node>,
    urls: Vec<String>,
    /// Dropped after the nodes (field order), so no node outlives its data.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` eddy nodes (ids 1..=n), node 1 forming the cluster and the others joining it
    /// through its cluster address, each also given the `extra` flags; returns once every
    /// node lists all `n` in `eddy.nodes`.
    pub(crate) async fn start_eddy(n: usize, extra: &[String]) -> anyhow::Result<Cluster> {
        let bin = eddy_bin()?;
        let dir = tempfile::tempdir()?;
        let ports = free_ports(2 * n)?;
        let (pg, cluster) = ports.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        let mut urls = Vec::with_capacity(n);
        for i in 0..n {
            let mut args: Vec<OsString> = vec!["start".into(), "--node-id".into()];
            args.push((i + 1).to_string().into());
            args.push("--data-dir".into());
            args.push(dir.path().join(format!("node{}", i + 1)).into());
            args.push("--pg-addr".into());
            args.push(format!("127.0.0.1:{}", pg[i]).into());
            args.push("--cluster-addr".into());
            args.push(format!("127.0.0.1:{}", cluster[i]).into());
            if i > 0 {
                // Only read the first time a node starts (on an empty data directory).
                args.push("--join".into());
                args.push(format!("127.0.0.1:{}", cluster[0]).into());
            }
            args.extend(["--log".into(), "warn".into()]);
            args.extend(extra.iter().map(OsString::from));
            nodes.push(Node {
                name: format!("eddy node {}", i + 1),
                program: bin.clone(),
                args,
                log: dir.path().join(format!("node{}.log", i + 1)),
                ready: Ready::EddyStdout,
                monitor: None,
                child: None,
            });
            urls.push(format!(
                "host=127.0.0.1 port={} user=eddy dbname=eddy",
                pg[i]
            ));
        }
        // One at a time, in order: a node joins through node 1, which must be up first.
        let c = Cluster::spawn(nodes, urls, dir)?;
        for url in &c.urls {
            let client = crate::connect(url).await?;
            crate::wait_for(
                &format!("{n} nodes in eddy.nodes on {url}"),
                Duration::from_secs(60),
                || async {
                    let row = client
                        .query_one("SELECT count(*) FROM eddy.nodes", &[])
                        .await
                        .ok()?;
                    (row.get::<_, i64>(0) == n as i64).then_some(())
                },
            )
            .await?;
        }
        Ok(c)
    }

    /// `n` nats-server processes with JetStream on file storage (server names n1..nN);
    /// with more than one, clustered through routes to each other. JetStream elects its
    /// meta leader after this returns: create streams with retries.
    pub(crate) fn start_nats(n: usize) -> anyhow::Result<Cluster> {
        let bin = find_on_path("nats-server", &["/usr/sbin"])
            .ok_or_else(|| anyhow::anyhow!("nats-server not found: apt-get install nats-server"))?;
        let dir = tempfile::tempdir()?;
        let ports = free_ports(3 * n)?;
        let (client, rest) = ports.split_at(n);
        let (route, monitor) = rest.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut args: Vec<OsString> = vec!["-a".into(), "127.0.0.1".into(), "-p".into()];
            args.push(client[i].to_string().into());
            args.push("-m".into());
            args.push(monitor[i].to_string().into());
            args.extend(["-js".into(), "-sd".into()]);
            args.push(dir.path().join(format!("n{}", i + 1)).into());
            args.push("--server_name".into());
            args.push(format!("n{}", i + 1).into());
            if n > 1 {
                let routes: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", route[j]))
                    .collect();
                args.extend(["--cluster_name".into(), "bench".into()]);
                args.push("--cluster".into());
                args.push(format!("nats://127.0.0.1:{}", route[i]).into());
                args.push("--routes".into());
                args.push(routes.join(",").into());
            }
            nodes.push(Node {
                name: format!("nats n{}", i + 1),
                program: bin.clone(),
                args,
                log: dir.path().join(format!("n{}.log", i + 1)),
                ready: Ready::Port(client[i]),
                monitor: Some(monitor[i]),
                child: None,
            });
        }
        let urls = client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        Cluster::spawn(nodes, urls, dir)
    }

    /// Starts `nodes` one after another (dropping the ones started if one fails).
    fn spawn(
        nodes: Vec<Node>,
        urls: Vec<String>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            nodes,
            urls,
            _dir: dir,
        };
        for node in &mut c.nodes {
            node.spawn()?;
        }
        Ok(c)
    }

    /// One connection string per node, in node order.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// Process ids of the nodes running now.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    fn node(&mut self, i: usize) -> anyhow::Result<&mut Node> {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("node index {i} of {n}"))
    }

    /// `kill -9` of node `i` (0-based; eddy's node id is `i + 1`, NATS's name `n{i+1}`).
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        self.node(i)?.kill9()
    }

    /// Starts killed node `i` again with its command line: the same id, addresses and
    /// data. Returns once it serves clients (it may still be catching up).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.node(i)?.spawn()
    }

    /// NATS: node `i`'s HTTP monitoring port.
    pub fn monitor_port(&self, i: usize) -> Option<u16> {
        self.nodes.get(i)?.monitor
    }

    /// Where node `i` writes its log.
    pub fn log(&self, i: usize) -> Option<&Path> {
        self.nodes.get(i).map(|n| n.log.as_path())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill9();
        }
    }
}
