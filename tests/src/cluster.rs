//! A cluster on free ports in one temp dir, formed as the docs say: node 1 starts alone,
//! the others join it. Its nodes are real `eddy` processes ([`TestCluster::start`]:
//! `kill -9`, exit codes, the CLI), or nodes inside the test process
//! ([`TestCluster::in_process`]: the same server code, started and stopped without a
//! process each, for tests that need neither). Faults work the same on both: each node
//! polls its own fault file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use eddy_broker::{spawn_node, Config, NodeHandle};
use tokio_postgres::Client;

use crate::{connect, wait_for, ProcessNode};

/// A running node: a child process, or a node inside the test process.
enum Running {
    Process(ProcessNode),
    InProcess(NodeHandle),
}

/// One node's identity: kept across restarts so it comes back on the same addresses.
struct Slot {
    id: u64,
    data_dir: PathBuf,
    pg_addr: SocketAddr,
    cluster_addr: SocketAddr,
    running: Option<Running>,
    /// The node's `--fault-file`: the node ids its links are cut to.
    faults: PathBuf,
    /// Further flags, given on every start.
    extra: Vec<String>,
}

/// n nodes forming one cluster.
pub struct TestCluster {
    slots: Vec<Slot>,
    /// Nodes run inside the test process.
    in_process: bool,
    dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) and waits until every node lists all of them.
    pub async fn start(n: usize) -> anyhow::Result<TestCluster> {
        Self::start_with(n, |_| Vec::new()).await
    }

    /// [`TestCluster::start`] with further flags for each node (`flags(node)`, 1-based),
    /// kept for its restarts.
    pub async fn start_with(
        n: usize,
        flags: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<TestCluster> {
        Self::form(n, false, flags).await
    }

    /// [`TestCluster::start`] with the nodes inside the test process: the same server
    /// code on the same sockets and fault files, without a process per node. It has no
    /// [`TestCluster::kill9`]; [`TestCluster::stop`] shuts a node down in order.
    pub async fn in_process(n: usize) -> anyhow::Result<TestCluster> {
        Self::form(n, true, |_| Vec::new()).await
    }

    async fn form(
        n: usize,
        in_process: bool,
        flags: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<TestCluster> {
        let mut cluster = TestCluster {
            slots: Vec::new(),
            in_process,
            dir: tempfile::tempdir()?,
        };
        for i in 1..=n {
            let seed = cluster.slots.first().map(|s| s.cluster_addr.to_string());
            cluster.launch(seed.as_deref(), flags(i)).await?;
        }
        for i in 1..=n {
            cluster
                .wait_rows(i, "SELECT node_id FROM eddy.nodes", n)
                .await?;
        }
        Ok(cluster)
    }

    /// Starts one more node (the next id) the way `ALTER CLUSTER ADD NODE` expects it:
    /// on its own, without `--join`. Returns its number; it is not in the cluster yet.
    pub async fn start_new_node(&mut self) -> anyhow::Result<usize> {
        self.launch(None, Vec::new()).await
    }

    /// Starts the node with the next id in its own data dir, joining through `seed`
    /// when given; returns its number.
    async fn launch(&mut self, seed: Option<&str>, flags: Vec<String>) -> anyhow::Result<usize> {
        let n = self.slots.len() + 1;
        let faults = self.dir.path().join(format!("node{n}.faults"));
        std::fs::write(&faults, "")?;
        let mut slot = Slot {
            id: n as u64,
            data_dir: self.dir.path().join(format!("node{n}")),
            pg_addr: "127.0.0.1:0".parse()?,
            cluster_addr: "127.0.0.1:0".parse()?,
            running: None,
            faults,
            extra: flags,
        };
        let running = slot.run(self.in_process, seed).await?;
        slot.running = Some(running);
        self.slots.push(slot);
        Ok(n)
    }

    /// Cluster (internal RPC) address of node `node`.
    pub fn cluster_addr(&self, node: usize) -> SocketAddr {
        self.slots[node - 1].cluster_addr
    }

    fn slot(&mut self, node: usize) -> &mut Slot {
        &mut self.slots[node - 1]
    }

    /// Postgres address of node `node` (1-based).
    pub fn addr(&self, node: usize) -> SocketAddr {
        self.slots[node - 1].pg_addr
    }

    /// A client connected to node `node`.
    pub async fn client(&self, node: usize) -> anyhow::Result<Client> {
        connect(self.addr(node)).await
    }

    /// `kill -9` of node `node` (a process; an in-process node cannot be killed, only
    /// [stopped](TestCluster::stop)).
    pub fn kill9(&mut self, node: usize) -> anyhow::Result<()> {
        match self.slot(node).running.take() {
            Some(Running::Process(mut p)) => p.kill9(),
            Some(Running::InProcess(h)) => {
                self.slot(node).running = Some(Running::InProcess(h));
                anyhow::bail!("node {node} runs in process: it cannot be killed, only stopped")
            }
            None => Ok(()),
        }
    }

    /// Stops node `node`: `kill -9` of a process, an orderly shutdown in process.
    pub async fn stop(&mut self, node: usize) -> anyhow::Result<()> {
        match self.slot(node).running.take() {
            Some(Running::Process(mut p)) => p.kill9(),
            Some(Running::InProcess(h)) => h.shutdown().await,
            None => Ok(()),
        }
    }

    /// Starts a stopped node again on its old addresses and data.
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let in_process = self.in_process;
        let slot = self.slot(node);
        anyhow::ensure!(slot.running.is_none(), "node {node} is running");
        let running = slot.run(in_process, None).await?;
        slot.running = Some(running);
        Ok(())
    }

    /// Cuts node `node` off from every other node, in both directions (each node reads
    /// its fault file every 100 ms; `eddy.nodes` shows `link = 'cut'` once it has).
    pub fn isolate(&self, node: usize) -> anyhow::Result<()> {
        for s in &self.slots {
            let cut = if s.id == node as u64 {
                self.slots
                    .iter()
                    .filter(|o| o.id != s.id)
                    .map(|o| o.id.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                node.to_string()
            };
            write_atomic(&s.faults, &cut)?;
        }
        Ok(())
    }

    /// [`TestCluster::isolate`], then waits until the node shows every link cut in
    /// `eddy.nodes` and has dropped a call on them (the fault took effect).
    pub async fn cut_off(&self, node: usize) -> anyhow::Result<()> {
        self.isolate(node)?;
        self.wait_rows(
            node,
            "SELECT node_id FROM eddy.nodes WHERE link = 'cut'",
            self.slots.len() - 1,
        )
        .await?;
        self.wait_fault(node, "calls_dropped").await
    }

    /// Waits until `node`'s own row of `eddy.nodes` counts at least one `counter`
    /// (`calls_dropped`, `gossip_lost`, `forwards_failed`): the injected fault acted.
    pub async fn wait_fault(&self, node: usize, counter: &str) -> anyhow::Result<()> {
        self.wait_rows(
            node,
            &format!("SELECT node_id FROM eddy.nodes WHERE this_node AND {counter} > 0"),
            1,
        )
        .await
    }

    /// Every node loses `permille` per mille of the gossip frames it sends (until `heal`).
    pub fn lose_gossip(&self, permille: u32) -> anyhow::Result<()> {
        for s in &self.slots {
            write_atomic(&s.faults, &format!("loss={permille}"))?;
        }
        Ok(())
    }

    /// Node `node` answers every write forwarded to it with an internal failure
    /// (until `heal`).
    pub fn fail_forwards(&self, node: usize) -> anyhow::Result<()> {
        write_atomic(&self.slots[node - 1].faults, "fail-forwards")
    }

    /// Restores every link.
    pub fn heal(&self) -> anyhow::Result<()> {
        for s in &self.slots {
            write_atomic(&s.faults, "")?;
        }
        Ok(())
    }

    /// The running nodes holding replicas of `object`'s Raft groups, each with how many
    /// (as its `eddy.raft_groups` shows), once they hold `replicas` between them.
    pub async fn replicas_of(
        &self,
        object: &str,
        replicas: usize,
    ) -> anyhow::Result<Vec<(usize, usize)>> {
        let running: Vec<usize> = (1..=self.slots.len())
            .filter(|n| self.slots[n - 1].running.is_some())
            .collect();
        wait_for(
            &format!("{replicas} replicas of {object}"),
            Duration::from_secs(30),
            || {
                let running = &running;
                async move {
                    let mut holders = Vec::new();
                    for &node in running {
                        let groups = self
                            .client(node)
                            .await
                            .ok()?
                            .query(
                                "SELECT 1 FROM eddy.raft_groups WHERE object = $1",
                                &[&object],
                            )
                            .await
                            .ok()?;
                        if !groups.is_empty() {
                            holders.push((node, groups.len()));
                        }
                    }
                    (holders.iter().map(|h| h.1).sum::<usize>() == replicas).then_some(holders)
                }
            },
        )
        .await
    }

    /// The node id (1-based index) leading `object`'s partition, as node `ask` sees it.
    pub async fn leader_of(
        &self,
        ask: usize,
        object: &str,
        partition: i32,
    ) -> anyhow::Result<usize> {
        let c = self.client(ask).await?;
        let object = object.to_owned();
        wait_for("a leader", Duration::from_secs(20), || {
            let (c, object) = (&c, object.clone());
            async move {
                let row = c
                    .query_opt(
                        "SELECT leader FROM eddy.raft_groups WHERE object = $1 AND partition = $2",
                        &[&object, &partition],
                    )
                    .await
                    .ok()??;
                row.get::<_, Option<i64>>(0).map(|l| l as usize)
            }
        })
        .await
    }

    /// Waits until `sql` run on node `node` returns `rows` rows.
    pub async fn wait_rows(&self, node: usize, sql: &str, rows: usize) -> anyhow::Result<()> {
        let c = self.client(node).await?;
        wait_for(
            &format!("{rows} rows from {sql:?} on node {node}"),
            Duration::from_secs(30),
            || {
                let c = &c;
                async move {
                    let got = c.query(sql, &[]).await.ok()?;
                    (got.len() == rows).then_some(())
                }
            },
        )
        .await
    }
}

/// Replaces `path`'s contents at once (a node polling it never reads half a write).
fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Slot {
    /// Starts this node on its addresses (port 0 the first time, then the ones it got),
    /// joining through `seed` when given, and records the addresses it listens on.
    async fn run(&mut self, in_process: bool, seed: Option<&str>) -> anyhow::Result<Running> {
        let running = if in_process {
            let mut config = Config::default();
            config.node.data_dir = self.data_dir.clone();
            config.node.pg_addr = self.pg_addr;
            config.cluster.node_id = self.id;
            config.cluster.cluster_addr = Some(self.cluster_addr);
            config.cluster.join = seed.map(str::to_owned);
            config.cluster.fault_file = Some(self.faults.clone());
            let h = spawn_node(config).await?;
            self.pg_addr = h.pg_addr();
            self.cluster_addr = h.cluster_addr();
            Running::InProcess(h)
        } else {
            let (id, cluster) = (self.id.to_string(), self.cluster_addr.to_string());
            let faults = self.faults.display().to_string();
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
            let p = ProcessNode::start_at(&self.data_dir, &self.pg_addr.to_string(), &args)?;
            self.pg_addr = p.addr();
            self.cluster_addr = p.cluster_addr()?;
            Running::Process(p)
        };
        Ok(running)
    }
}

impl Drop for TestCluster {
    /// Processes are killed; nodes in process are left to the test's runtime, which
    /// stops their tasks as it ends.
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(Running::Process(mut p)) = s.running.take() {
                let _ = p.kill9();
            }
        }
    }
}
