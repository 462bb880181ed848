//! Nodes the tool starts as child processes in one temp dir, each keeping its ports,
//! data and command line across SIGKILL and restart: eddy nodes forming one cluster
//! (eddy-kit's [`ProcessCluster`], the harness the end-to-end tests use too: node 1 forms
//! the cluster, the others `--join` it, each with a fault file for
//! [`Cluster::isolate`], [`Cluster::heal`] and [`Cluster::set_gossip_loss`]), and NATS
//! servers forming one JetStream cluster (routes to each other).
//!
//! Node indexes here are 0-based (eddy's node id is `i + 1`, NATS's name `n{i+1}`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use eddy_kit::ProcessCluster;

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
    /// Something accepts connections on this port once it is up.
    port: u16,
    /// NATS: the HTTP monitoring port (`/jsz` shows the server's own view of each
    /// stream's leader).
    monitor: Option<u16>,
    /// `None` while killed.
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()?;
        if let Err(e) = wait_listening(&mut child, self.port, &self.name, &self.log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
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
pub enum Cluster {
    /// eddy nodes.
    Eddy(ProcessCluster),
    /// NATS servers.
    Nats(Nats),
}

/// NATS servers started by the tool.
pub struct Nats {
    nodes: Vec<Node>,
    urls: Vec<String>,
    /// Dropped after the nodes (field order), so no node outlives its data.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` eddy nodes (ids 1..=n), node 1 forming the cluster and the others joining it,
    /// each also given the `extra` flags and an empty fault file (see
    /// [`Cluster::isolate`]); returns once every node lists all `n` in `eddy.nodes`.
    pub(crate) async fn start_eddy(n: usize, extra: &[String]) -> anyhow::Result<Cluster> {
        let flags = |_| {
            let mut f = vec!["--log".to_owned(), "warn".to_owned()];
            f.extend(extra.iter().cloned());
            f
        };
        Ok(Cluster::Eddy(
            ProcessCluster::start(&eddy_bin()?, n, flags).await?,
        ))
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
                port: client[i],
                monitor: Some(monitor[i]),
                child: None,
            });
        }
        let urls = client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut nats = Nats {
            nodes,
            urls,
            _dir: dir,
        };
        // One at a time, in order (dropping the ones started if one fails).
        for node in &mut nats.nodes {
            node.spawn()?;
        }
        Ok(Cluster::Nats(nats))
    }

    /// One connection string per node, in node order.
    pub(crate) fn urls(&self) -> Vec<String> {
        match self {
            Cluster::Eddy(c) => (1..=c.len()).map(|i| c.conn(i)).collect(),
            Cluster::Nats(n) => n.urls.clone(),
        }
    }

    /// Process ids of the nodes running now.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            Cluster::Eddy(c) => c.pids(),
            Cluster::Nats(n) => n
                .nodes
                .iter()
                .filter_map(|n| n.child.as_ref().map(Child::id))
                .collect(),
        }
    }

    fn nats_node(n: &mut Nats, i: usize) -> anyhow::Result<&mut Node> {
        let len = n.nodes.len();
        n.nodes
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("node index {i} of {len}"))
    }

    /// `kill -9` of node `i`.
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Cluster::Eddy(c) => c.kill9(i + 1),
            Cluster::Nats(n) => Self::nats_node(n, i)?.kill9(),
        }
    }

    /// Starts killed node `i` again with its command line: the same id, addresses and
    /// data. Returns once it serves clients (it may still be catching up).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Cluster::Eddy(c) => c.restart(i + 1),
            Cluster::Nats(n) => Self::nats_node(n, i)?.spawn(),
        }
    }

    fn eddy(&self) -> anyhow::Result<&ProcessCluster> {
        match self {
            Cluster::Eddy(c) => Ok(c),
            Cluster::Nats(_) => anyhow::bail!("only eddy nodes have fault files"),
        }
    }

    /// eddy: cuts node `i` off from every other node, both ways (a `loss=` setting
    /// stays). The nodes apply it within about 100 ms; `eddy.nodes` then shows the cut
    /// links with `link = 'cut'`.
    pub fn isolate(&mut self, i: usize) -> anyhow::Result<()> {
        self.eddy()?.faults().isolate(i as u64 + 1)
    }

    /// eddy: cuts no link any more (a `loss=` setting stays).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.eddy()?.faults().heal_links()
    }

    /// eddy: every node loses `permille` per mille of the gossip frames it sends (deltas
    /// pushed, anti-entropy digests and pushes); 0 loses none. Cuts stay as they are.
    pub fn set_gossip_loss(&mut self, permille: u64) -> anyhow::Result<()> {
        self.eddy()?.faults().lose_gossip(permille)
    }

    /// eddy: every statement run on node `i` waits `ms` milliseconds first (0: none).
    pub fn slow(&mut self, i: usize, ms: u64) -> anyhow::Result<()> {
        self.eddy()?.faults().slow(i as u64 + 1, ms)
    }

    /// eddy: the process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.eddy().ok()?.pid(i + 1)
    }

    /// NATS: node `i`'s HTTP monitoring port.
    pub fn monitor_port(&self, i: usize) -> Option<u16> {
        match self {
            Cluster::Eddy(_) => None,
            Cluster::Nats(n) => n.nodes.get(i)?.monitor,
        }
    }

    /// Where node `i` writes its log.
    pub fn log(&self, i: usize) -> Option<PathBuf> {
        match self {
            Cluster::Eddy(c) => (i < c.len()).then(|| c.log(i + 1)),
            Cluster::Nats(n) => n.nodes.get(i).map(|n| n.log.clone()),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill9();
        }
    }
}
