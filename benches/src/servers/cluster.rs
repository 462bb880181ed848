//! Nodes the tool starts as child processes in one temp dir, each on fixed loopback ports
//! and with a fixed command line, so a node killed with SIGKILL starts again as the same
//! node on its own data: eddy nodes forming one cluster (node 1 forms it, the others
//! `--join` it), and NATS servers forming one JetStream cluster (routes to each other).
//!
//! Every eddy node also gets a fault file (`eddy start --fault-file`, re-read by the node
//! every 100 ms), empty unless a measurement cuts links or loses gossip frames through
//! [`Cluster::isolate`], [`Cluster::heal`] and [`Cluster::set_gossip_loss`]:
//!
//! ```text
//!   isolate(2) of 3 nodes:   node1.faults "3"   node2.faults "3"   node3.faults "1 2"
//!   heal():                  every file empty (or only "loss=N" after set_gossip_loss)
//! ```

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
    /// eddy: the nodes' fault files and what they say now; `None` for NATS.
    faults: Option<FaultFiles>,
    /// Dropped after the nodes (field order), so no node outlives its data.
    _dir: tempfile::TempDir,
}

/// eddy's fault injection: one `--fault-file` per node, listing the node ids its links are
/// cut to and a `loss=N` word (per mille of the gossip frames it sends that are lost).
/// Both ends of a cut list each other, so calls are dropped in both directions at once.
struct FaultFiles {
    /// Node `i`'s file (eddy id `i + 1`).
    paths: Vec<PathBuf>,
    /// The eddy ids each node's file lists now.
    cut: Vec<Vec<u64>>,
    /// Per mille of gossip frames every node loses.
    loss_permille: u64,
}

impl FaultFiles {
    /// Empty files for `n` nodes in `dir`, written before the nodes start so none of them
    /// reads a missing file.
    fn create(dir: &Path, n: usize) -> anyhow::Result<FaultFiles> {
        let paths: Vec<PathBuf> = (1..=n)
            .map(|id| dir.join(format!("node{id}.faults")))
            .collect();
        for p in &paths {
            std::fs::write(p, "")?;
        }
        Ok(FaultFiles {
            paths,
            cut: vec![Vec::new(); n],
            loss_permille: 0,
        })
    }

    /// Writes every node's file from `cut` and `loss_permille`. Each file is replaced
    /// whole (written beside it, then renamed over it): a node reading it half-written
    /// would see a heal that never happened.
    fn write(&self) -> anyhow::Result<()> {
        for (path, cut) in self.paths.iter().zip(&self.cut) {
            let tmp = path.with_extension("faults.tmp");
            std::fs::write(&tmp, fault_text(cut, self.loss_permille))?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    }
}

/// A fault file's contents: the eddy ids cut off, then `loss=N` if frames are lost.
fn fault_text(cut: &[u64], loss_permille: u64) -> String {
    let mut words: Vec<String> = cut.iter().map(u64::to_string).collect();
    if loss_permille > 0 {
        words.push(format!("loss={loss_permille}"));
    }
    let mut text = words.join(" ");
    text.push('\n');
    text
}

/// What each of `n` nodes' files lists to cut node `i` (0-based) off from the rest: node
/// `i` every other id, every other node id `i + 1`.
fn isolation(n: usize, i: usize) -> Vec<Vec<u64>> {
    let id = i as u64 + 1;
    (0..n)
        .map(|j| {
            if j == i {
                (1..=n as u64).filter(|other| *other != id).collect()
            } else {
                vec![id]
            }
        })
        .collect()
}

impl Cluster {
    /// `n` eddy nodes (ids 1..=n), node 1 forming the cluster and the others joining it
    /// through its cluster address, each also given the `extra` flags and an empty fault
    /// file (`--fault-file <dir>/nodeN.faults`, see [`Cluster::isolate`]); returns once
    /// every node lists all `n` in `eddy.nodes`.
    pub(crate) async fn start_eddy(n: usize, extra: &[String]) -> anyhow::Result<Cluster> {
        let bin = eddy_bin()?;
        let dir = tempfile::tempdir()?;
        let faults = FaultFiles::create(dir.path(), n)?;
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
            args.push("--fault-file".into());
            args.push(faults.paths[i].clone().into());
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
        let c = Cluster::spawn(nodes, urls, Some(faults), dir)?;
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
        Cluster::spawn(nodes, urls, None, dir)
    }

    /// Starts `nodes` one after another (dropping the ones started if one fails).
    fn spawn(
        nodes: Vec<Node>,
        urls: Vec<String>,
        faults: Option<FaultFiles>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            nodes,
            urls,
            faults,
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

    fn faults(&mut self) -> anyhow::Result<&mut FaultFiles> {
        self.faults
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("only eddy nodes have fault files"))
    }

    /// eddy: cuts node `i` (0-based, eddy id `i + 1`) off from every other node, both
    /// ways: its fault file lists every other id and theirs list it (a `loss=` setting
    /// stays). The nodes apply it within about 100 ms; `eddy.nodes` then shows the cut
    /// links with `link = 'cut'`.
    pub fn isolate(&mut self, i: usize) -> anyhow::Result<()> {
        let n = self.nodes.len();
        anyhow::ensure!(i < n, "node index {i} of {n}");
        let faults = self.faults()?;
        faults.cut = isolation(n, i);
        faults.write()
    }

    /// eddy: cuts no link any more (a `loss=` setting stays).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let faults = self.faults()?;
        faults.cut.iter_mut().for_each(Vec::clear);
        faults.write()
    }

    /// eddy: every node loses `permille` per mille of the gossip frames it sends (deltas
    /// pushed, anti-entropy digests and pushes); 0 loses none. Cuts stay as they are.
    pub fn set_gossip_loss(&mut self, permille: u64) -> anyhow::Result<()> {
        anyhow::ensure!(permille <= 1000, "a loss of {permille} per mille");
        let faults = self.faults()?;
        faults.loss_permille = permille;
        faults.write()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolating_a_node_cuts_it_from_every_other_both_ways() {
        assert_eq!(
            isolation(3, 2),
            vec![vec![3], vec![3], vec![1, 2]],
            "node 3 lists 1 and 2; they list 3"
        );
        assert_eq!(
            isolation(5, 0),
            vec![vec![2, 3, 4, 5], vec![1], vec![1], vec![1], vec![1]]
        );
    }

    #[test]
    fn fault_files_hold_ids_then_the_loss_word() {
        assert_eq!(fault_text(&[1, 2], 100), "1 2 loss=100\n");
        assert_eq!(fault_text(&[3], 0), "3\n");
        assert_eq!(fault_text(&[], 5), "loss=5\n");
        assert_eq!(fault_text(&[], 0), "\n", "healed, nothing lost");
    }

    #[test]
    fn fault_files_are_replaced_whole() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut f = FaultFiles::create(dir.path(), 3)?;
        assert_eq!(std::fs::read_to_string(&f.paths[2])?, "");
        f.cut = isolation(3, 2);
        f.loss_permille = 100;
        f.write()?;
        assert_eq!(std::fs::read_to_string(&f.paths[0])?, "3 loss=100\n");
        assert_eq!(std::fs::read_to_string(&f.paths[2])?, "1 2 loss=100\n");
        let names: Vec<String> = std::fs::read_dir(dir.path())?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<_>>()?;
        assert_eq!(names.len(), 3, "no temp file left behind: {names:?}");
        Ok(())
    }
}
