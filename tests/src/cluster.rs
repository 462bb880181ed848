//! A cluster on free ports in one temp dir, formed as the docs say: node 1 starts alone,
//! the others join it. Its nodes are real `eddy` processes ([`TestCluster::start`]:
//! `kill -9`, exit codes, the CLI; eddy-kit's [`ProcessCluster`], which `eddy-bench`
//! uses too), or nodes inside the test process ([`TestCluster::in_process`]: the same
//! server code, started and stopped without a process each, for tests that need
//! neither). Faults work the same on both: each node polls its own fault file
//! ([`FaultFiles`]), and every fault is shown to act through `eddy.nodes`.

use std::net::SocketAddr;
use std::time::Duration;

use eddy_broker::{spawn_node, Config, NodeHandle};
use eddy_kit::{FaultFiles, NodeHome, ProcessCluster};
use tokio_postgres::Client;

use crate::{connect, eddy_bin, wait_for};

/// n nodes forming one cluster.
pub struct TestCluster {
    nodes: Nodes,
}

enum Nodes {
    Processes(ProcessCluster),
    InProcess(InProcess),
}

/// Nodes inside the test process, each kept across stop and restart.
struct InProcess {
    slots: Vec<InSlot>,
    faults: FaultFiles,
    dir: tempfile::TempDir,
}

struct InSlot {
    home: NodeHome,
    /// `None` while stopped.
    handle: Option<NodeHandle>,
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) as processes and waits until every node lists all of
    /// them.
    pub async fn start(n: usize) -> anyhow::Result<TestCluster> {
        Self::start_with(n, |_| Vec::new()).await
    }

    /// [`TestCluster::start`] with further flags for each node (`flags(node)`, 1-based),
    /// kept for its restarts.
    pub async fn start_with(
        n: usize,
        flags: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<TestCluster> {
        let nodes = ProcessCluster::start(&eddy_bin()?, n, flags).await?;
        Ok(TestCluster {
            nodes: Nodes::Processes(nodes),
        })
    }

    /// [`TestCluster::start`] with the nodes inside the test process: the same server
    /// code on the same sockets and fault files, without a process per node. It has no
    /// [`TestCluster::kill9`]; [`TestCluster::stop`] shuts a node down in order.
    pub async fn in_process(n: usize) -> anyhow::Result<TestCluster> {
        let mut nodes = InProcess {
            slots: Vec::new(),
            faults: FaultFiles::new(),
            dir: tempfile::tempdir()?,
        };
        for _ in 0..n {
            nodes.launch().await?;
        }
        let cluster = TestCluster {
            nodes: Nodes::InProcess(nodes),
        };
        for i in 1..=n {
            cluster
                .wait_rows(i, "SELECT node_id FROM eddy.nodes", n)
                .await?;
        }
        Ok(cluster)
    }

    /// Starts one more node (the next id) the way `ALTER CLUSTER ADD NODE` expects it:
    /// on its own, without `--join`. Returns its number; it is not in the cluster yet.
    pub fn start_new_node(&mut self) -> anyhow::Result<usize> {
        match &mut self.nodes {
            Nodes::Processes(p) => p.start_new_node(),
            Nodes::InProcess(_) => anyhow::bail!("start_new_node runs processes only"),
        }
    }

    fn len(&self) -> usize {
        match &self.nodes {
            Nodes::Processes(p) => p.len(),
            Nodes::InProcess(n) => n.slots.len(),
        }
    }

    fn is_running(&self, node: usize) -> bool {
        match &self.nodes {
            Nodes::Processes(p) => p.is_running(node),
            Nodes::InProcess(n) => n.slots[node - 1].handle.is_some(),
        }
    }

    fn faults(&self) -> &FaultFiles {
        match &self.nodes {
            Nodes::Processes(p) => p.faults(),
            Nodes::InProcess(n) => &n.faults,
        }
    }

    /// Cluster (internal RPC) address of node `node`.
    pub fn cluster_addr(&self, node: usize) -> SocketAddr {
        match &self.nodes {
            Nodes::Processes(p) => p.cluster_addr(node),
            Nodes::InProcess(n) => n.slots[node - 1].home.cluster_addr,
        }
    }

    /// Postgres address of node `node` (1-based).
    pub fn addr(&self, node: usize) -> SocketAddr {
        match &self.nodes {
            Nodes::Processes(p) => p.addr(node),
            Nodes::InProcess(n) => n.slots[node - 1].home.pg_addr,
        }
    }

    /// A client connected to node `node`.
    pub async fn client(&self, node: usize) -> anyhow::Result<Client> {
        connect(self.addr(node)).await
    }

    /// `kill -9` of node `node` (a process; an in-process node cannot be killed, only
    /// [stopped](TestCluster::stop)).
    pub fn kill9(&mut self, node: usize) -> anyhow::Result<()> {
        match &mut self.nodes {
            Nodes::Processes(p) => p.kill9(node),
            Nodes::InProcess(_) => {
                anyhow::bail!("node {node} runs in process: it cannot be killed, only stopped")
            }
        }
    }

    /// Stops node `node`: `kill -9` of a process, an orderly shutdown in process.
    pub async fn stop(&mut self, node: usize) -> anyhow::Result<()> {
        match &mut self.nodes {
            Nodes::Processes(p) => p.kill9(node),
            Nodes::InProcess(n) => match n.slots[node - 1].handle.take() {
                Some(h) => h.shutdown().await,
                None => Ok(()),
            },
        }
    }

    /// Starts a stopped node again on its old addresses and data.
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        match &mut self.nodes {
            Nodes::Processes(p) => p.restart(node),
            Nodes::InProcess(n) => {
                let slot = &mut n.slots[node - 1];
                anyhow::ensure!(slot.handle.is_none(), "node {node} is running");
                slot.run(None).await
            }
        }
    }

    /// Cuts node `node` off from every other node, in both directions (each node reads
    /// its fault file every 100 ms; `eddy.nodes` shows `link = 'cut'` once it has).
    pub fn isolate(&self, node: usize) -> anyhow::Result<()> {
        self.faults().isolate(node as u64)
    }

    /// [`TestCluster::isolate`], then waits until the node shows every link cut in
    /// `eddy.nodes` and has dropped a call on them (the fault took effect).
    pub async fn cut_off(&self, node: usize) -> anyhow::Result<()> {
        self.isolate(node)?;
        self.wait_rows(
            node,
            "SELECT node_id FROM eddy.nodes WHERE link = 'cut'",
            self.len() - 1,
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
        self.faults().lose_gossip(u64::from(permille))
    }

    /// Node `node` answers every write forwarded to it with an internal failure
    /// (until `heal`).
    pub fn fail_forwards(&self, node: usize) -> anyhow::Result<()> {
        self.faults().fail_forwards(node as u64)
    }

    /// Every statement run on node `node` waits `ms` milliseconds first (0: none).
    pub fn slow(&self, node: usize, ms: u64) -> anyhow::Result<()> {
        self.faults().slow(node as u64, ms)
    }

    /// Takes every fault away.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.faults().clear()
    }

    /// The running nodes holding replicas of `object`'s Raft groups, each with how many
    /// (as its `eddy.raft_groups` shows), once they hold `replicas` between them.
    pub async fn replicas_of(
        &self,
        object: &str,
        replicas: usize,
    ) -> anyhow::Result<Vec<(usize, usize)>> {
        let running: Vec<usize> = (1..=self.len()).filter(|n| self.is_running(*n)).collect();
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

impl InProcess {
    /// Starts the node with the next id, joining node 1 unless it is node 1.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let mut slot = InSlot {
            home: NodeHome::next(self.dir.path(), &mut self.faults)?,
            handle: None,
        };
        let seed = self.slots.first().map(|s| s.home.cluster_addr.to_string());
        slot.run(seed).await?;
        self.slots.push(slot);
        Ok(())
    }
}

impl InSlot {
    /// Starts this node on its addresses (port 0 the first time, then the ones it got),
    /// joining through `seed` when given, and records where it listens.
    async fn run(&mut self, seed: Option<String>) -> anyhow::Result<()> {
        let home = &mut self.home;
        let mut config = Config::default();
        config.node.data_dir = home.data_dir.clone();
        config.node.pg_addr = home.pg_addr;
        config.cluster.node_id = home.id;
        config.cluster.cluster_addr = Some(home.cluster_addr);
        config.cluster.join = seed;
        config.cluster.fault_file = Some(home.fault_file.clone());
        let h = spawn_node(config).await?;
        home.pg_addr = h.pg_addr();
        home.cluster_addr = h.cluster_addr();
        self.handle = Some(h);
        Ok(())
    }
}
