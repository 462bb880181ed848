//! n `eddy` processes on free loopback ports in one temp dir, forming one cluster as the
//! docs say: node 1 starts alone, the others `--join` it. Each node keeps its id, data
//! and addresses across `kill -9` and restart, and has a fault file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{connect, wait_for, EddyProcess, FaultFiles};

/// Where one node lives: its id, data, addresses and fault file, kept across restarts so
/// it comes back as the same node (a process here, a node in the test process in
/// eddy-tests).
pub struct NodeHome {
    /// Node id (1-based).
    pub id: u64,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Postgres address: port 0 until it first starts, then the one it got.
    pub pg_addr: SocketAddr,
    /// Cluster (internal RPC) address, likewise.
    pub cluster_addr: SocketAddr,
    /// Its `--fault-file`.
    pub fault_file: PathBuf,
}

impl NodeHome {
    /// The home of the next node in `dir` (the id after the last of `faults`' files),
    /// with its empty fault file made.
    pub fn next(dir: &Path, faults: &mut FaultFiles) -> anyhow::Result<NodeHome> {
        let fault_file = faults.add(dir)?;
        let id = faults.len() as u64;
        Ok(NodeHome {
            id,
            data_dir: dir.join(format!("node{id}")),
            pg_addr: "127.0.0.1:0".parse()?,
            cluster_addr: "127.0.0.1:0".parse()?,
            fault_file,
        })
    }
}

/// One process node.
struct Slot {
    home: NodeHome,
    /// Further flags, given on every start.
    extra: Vec<String>,
    /// `None` while stopped.
    process: Option<EddyProcess>,
}

/// n `eddy` processes forming one cluster; dropping it kills them all.
pub struct ProcessCluster {
    bin: PathBuf,
    slots: Vec<Slot>,
    faults: FaultFiles,
    /// Dropped after the processes (field order), so no node outlives its data.
    dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Starts `n` nodes of `bin` (ids 1..=n), node `i` with the further flags
    /// `flags(i)` (kept for its restarts), and waits until every node lists all of them
    /// in `eddy.nodes`.
    pub async fn start(
        bin: &Path,
        n: usize,
        flags: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<ProcessCluster> {
        let mut cluster = ProcessCluster {
            bin: bin.to_path_buf(),
            slots: Vec::new(),
            faults: FaultFiles::new(),
            dir: tempfile::tempdir()?,
        };
        for i in 1..=n {
            cluster.launch(i > 1, flags(i))?;
        }
        for i in 1..=n {
            cluster.wait_listed(i, n).await?;
        }
        Ok(cluster)
    }

    /// Starts one more node (the next id) on its own, without `--join`: the way
    /// `ALTER CLUSTER ADD NODE` expects it. Returns its id; it is not in the cluster yet.
    pub fn start_new_node(&mut self) -> anyhow::Result<usize> {
        self.launch(false, Vec::new())
    }

    /// Starts the node with the next id in its own data dir (joining node 1 if `join`).
    fn launch(&mut self, join: bool, extra: Vec<String>) -> anyhow::Result<usize> {
        let mut slot = Slot {
            home: NodeHome::next(self.dir.path(), &mut self.faults)?,
            extra,
            process: None,
        };
        let seed = join.then(|| self.slots[0].home.cluster_addr.to_string());
        slot.run(&self.bin, seed.as_deref())?;
        self.slots.push(slot);
        Ok(self.slots.len())
    }

    /// Waits until node `node` lists `n` nodes in `eddy.nodes`.
    async fn wait_listed(&self, node: usize, n: usize) -> anyhow::Result<()> {
        let client = connect(&self.conn(node)).await?;
        wait_for(
            &format!("{n} nodes in eddy.nodes on node {node}"),
            Duration::from_secs(60),
            || async {
                let row = client
                    .query_one("SELECT count(*) FROM eddy.nodes", &[])
                    .await
                    .ok()?;
                (row.get::<_, i64>(0) == n as i64).then_some(())
            },
        )
        .await
    }

    fn slot(&mut self, node: usize) -> anyhow::Result<&mut Slot> {
        let n = self.slots.len();
        self.slots
            .get_mut(node.wrapping_sub(1))
            .ok_or_else(|| anyhow::anyhow!("node {node} of {n}"))
    }

    /// How many nodes were started.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True before any node started.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Postgres address of node `node` (1-based).
    pub fn addr(&self, node: usize) -> SocketAddr {
        self.slots[node - 1].home.pg_addr
    }

    /// A libpq-style connection string for node `node`.
    pub fn conn(&self, node: usize) -> String {
        let a = self.addr(node);
        format!("host={} port={} user=eddy dbname=eddy", a.ip(), a.port())
    }

    /// Cluster (internal RPC) address of node `node`.
    pub fn cluster_addr(&self, node: usize) -> SocketAddr {
        self.slots[node - 1].home.cluster_addr
    }

    /// Where node `node` writes its log (every start appends).
    pub fn log(&self, node: usize) -> PathBuf {
        self.slots[node - 1].home.data_dir.with_extension("log")
    }

    /// True while node `node` runs.
    pub fn is_running(&self, node: usize) -> bool {
        self.slots[node - 1].process.is_some()
    }

    /// Process ids of the nodes running now.
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.process.as_ref().map(EddyProcess::pid))
            .collect()
    }

    /// The process id of node `node`, while it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.slots
            .get(node.checked_sub(1)?)?
            .process
            .as_ref()
            .map(EddyProcess::pid)
    }

    /// `kill -9` of node `node`: no shutdown code runs, as in a crash.
    pub fn kill9(&mut self, node: usize) -> anyhow::Result<()> {
        match self.slot(node)?.process.take() {
            Some(mut p) => p.kill9(),
            None => Ok(()),
        }
    }

    /// Starts a stopped node again with its id, addresses, data and flags. Returns once
    /// it serves clients (it may still be catching up).
    pub fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let slot = self.slot(node)?;
        anyhow::ensure!(slot.process.is_none(), "node {node} is running");
        slot.run(&bin, None)
    }

    /// The nodes' fault files.
    pub fn faults(&self) -> &FaultFiles {
        &self.faults
    }
}

impl Slot {
    /// Starts this node on its addresses (port 0 the first time, then the ones it got),
    /// joining through `seed` when given, and records where it listens.
    fn run(&mut self, bin: &Path, seed: Option<&str>) -> anyhow::Result<()> {
        let home = &mut self.home;
        let (id, cluster) = (home.id.to_string(), home.cluster_addr.to_string());
        let faults = home.fault_file.display().to_string();
        let mut args = vec![
            "--node-id",
            &id,
            "--cluster-addr",
            &cluster,
            "--fault-file",
            &faults,
        ];
        if let Some(seed) = seed {
            args.extend(["--join", seed]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let p = EddyProcess::start(bin, &home.data_dir, &home.pg_addr.to_string(), &args)?;
        home.pg_addr = p.addr();
        home.cluster_addr = p.cluster_addr()?;
        self.process = Some(p);
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(mut p) = s.process.take() {
                let _ = p.kill9();
            }
        }
    }
}
