//! In-process clusters: real stores, real TCP between nodes on loopback.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_storage::{
    ColumnDef, ColumnType, ObjectDef, Records, StorageConfig, Store, TopicDef, Value, WriteOp,
    WriteResult,
};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::{group_of, Cluster, ClusterConfig, Faults, NodeInfo};

pub(crate) struct TestNode {
    pub(crate) cluster: Cluster,
    pub(crate) faults: Arc<Faults>,
    pub(crate) addr: String,
    _dir: TempDir,
}

async fn start_node(id: u64, join: Option<&str>) -> TestNode {
    start_node_with(id, join, |_| {}).await
}

pub(crate) async fn start_node_with(
    id: u64,
    join: Option<&str>,
    tune: impl FnOnce(&mut ClusterConfig),
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = ClusterConfig::new(
        id,
        NodeInfo {
            pg_addr: format!("pg-{id}"),
            cluster_addr: addr.clone(),
        },
    );
    config.join = join.map(str::to_owned);
    tune(&mut config);
    let faults = Arc::new(Faults::default());
    let cluster = Cluster::start(store, config, listener, faults.clone())
        .await
        .unwrap();
    TestNode {
        cluster,
        faults,
        addr,
        _dir: dir,
    }
}

/// Polls `cond` until it holds; panics with `what` after 20 s.
pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn three_nodes() -> Vec<TestNode> {
    three_nodes_with(|_| {}).await
}

pub(crate) async fn three_nodes_with(tune: impl Fn(&mut ClusterConfig)) -> Vec<TestNode> {
    let n1 = start_node_with(1, None, &tune).await;
    let seed = n1.addr.clone();
    let n2 = start_node_with(2, Some(&seed), &tune).await;
    let n3 = start_node_with(3, Some(&seed), &tune).await;
    let nodes = vec![n1, n2, n3];
    wait_for("every node to see three members", || {
        nodes.iter().all(|n| n.cluster.nodes().len() == 3)
    })
    .await;
    nodes
}

pub(crate) fn topic_def(name: &str, partitions: u32) -> ObjectDef {
    let columns = vec![ColumnDef::new("payload", ColumnType::Text, true)];
    ObjectDef::Topic(TopicDef {
        partitions,
        ..TopicDef::new(name, columns)
    })
}

pub(crate) fn texts(payloads: &[String]) -> Records {
    let columns = [ColumnDef::new("payload", ColumnType::Text, true)];
    let mut r = Records::new();
    for p in payloads {
        r.push(&columns, None, &[Value::Text(p.clone())]).unwrap();
    }
    r
}

/// Creates a one-partition topic through node 1 and waits until every node knows the
/// leader of its group.
async fn one_partition_topic(nodes: &[TestNode], name: &str) -> (Arc<ObjectDef>, u64) {
    nodes[0]
        .cluster
        .write(vec![WriteOp::Create(topic_def(name, 1))])
        .await
        .unwrap();
    let def = nodes[0].cluster.store().catalog().topic(name).unwrap();
    let group = group_of(def.id(), 0);
    wait_for("a leader known on every node", || {
        nodes.iter().all(|n| leader(n, group).is_some())
    })
    .await;
    (def, group)
}

fn leader(node: &TestNode, group: u64) -> Option<u64> {
    leader_of(&node.cluster, group)
}

fn leader_of(cluster: &Cluster, group: u64) -> Option<u64> {
    cluster
        .raft(group)
        .and_then(|r| r.metrics().borrow().current_leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_partitions_with_spread_leaders_and_forwarded_writes() {
    let nodes = three_nodes().await;
    // DDL on node 3 goes through the metadata leader, wherever it is.
    let created = nodes[2]
        .cluster
        .write(vec![WriteOp::Create(topic_def("orders", 3))])
        .await
        .unwrap();
    let WriteResult::Created(def) = &created[0] else {
        panic!("unexpected {created:?}")
    };
    let ObjectDef::Topic(topic) = &**def else {
        panic!("not a topic")
    };
    assert_eq!(topic.placement.len(), 3);
    let id = topic.id;
    let groups: Vec<u64> = (0..3).map(|p| group_of(id, p)).collect();
    wait_for(
        "every partition group to have a leader on every node",
        || {
            nodes
                .iter()
                .all(|n| groups.iter().all(|g| leader(n, *g).is_some()))
        },
    )
    .await;
    let leaders: BTreeSet<u64> = groups
        .iter()
        .filter_map(|g| leader(&nodes[0], *g))
        .collect();
    assert_eq!(
        leaders.len(),
        3,
        "each node leads one partition: {leaders:?}"
    );

    // Writes from every node, to every partition: forwarded to each partition's leader.
    for (i, n) in nodes.iter().enumerate() {
        for p in 0..3u32 {
            let payloads = vec![format!("n{i}-p{p}-a"), format!("n{i}-p{p}-b")];
            let r = n
                .cluster
                .write(vec![WriteOp::Append {
                    topic: id,
                    partition: p,
                    records: texts(&payloads),
                }])
                .await
                .unwrap();
            let WriteResult::Appended { first_offset, .. } = r[0] else {
                panic!("unexpected {r:?}")
            };
            assert_eq!(
                first_offset,
                2 * i as u64,
                "offsets follow the order of commits"
            );
        }
    }
    // A strong read on each node sees all six messages of each partition, in the same order.
    let mut seen = Vec::new();
    for n in &nodes {
        let store = n.cluster.store();
        let Some(def) = store.catalog().topic("orders") else {
            panic!("catalog replicated")
        };
        let ObjectDef::Topic(t) = &*def else { panic!() };
        let mut per_node = Vec::new();
        for p in 0..3u32 {
            n.cluster.read_barrier(group_of(id, p)).await.unwrap();
            let rows = store.read_log(t, p, 0, u64::MAX, 100).unwrap();
            per_node.push(
                rows.iter()
                    .map(|(o, r)| (*o, r.ts_micros, r.values[0].clone()))
                    .collect::<Vec<_>>(),
            );
        }
        assert!(per_node.iter().all(|rows| rows.len() == 6), "{per_node:?}");
        seen.push(per_node);
    }
    assert_eq!(seen[0], seen[1], "replicas agree, append times included");
    assert_eq!(seen[0], seen[2]);
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_refuses_writes_with_a_retryable_error_and_the_majority_goes_on() {
    let nodes = three_nodes().await;
    let (def, group) = one_partition_topic(&nodes, "events").await;
    // Cut node 3 off in both directions.
    for n in &nodes[..2] {
        n.faults.set_cut(3, true);
    }
    nodes[2].faults.set_cut(1, true);
    nodes[2].faults.set_cut(2, true);
    let append = |n: &TestNode, what: &str| {
        let op = WriteOp::Append {
            topic: def.id(),
            partition: 0,
            records: texts(&[what.to_owned()]),
        };
        let c = n.cluster.clone();
        async move { c.write(vec![op]).await }
    };
    let refused = append(&nodes[2], "minority").await;
    match refused {
        // Refused before it reached a log: safe to run again, typed as such.
        Err(e) if e.class() == eddy_storage::ErrorClass::Retry => {}
        other => panic!("the minority accepted a write: {other:?}"),
    }
    assert!(
        nodes[2]
            .faults
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the cut dropped calls"
    );
    // The majority elects a leader among itself if needed and keeps writing.
    append(&nodes[0], "majority").await.unwrap();
    // Healed, node 3 catches up with what the majority wrote.
    for n in &nodes {
        for peer in 1..=3 {
            n.faults.set_cut(peer, false);
        }
    }
    nodes[2].cluster.read_barrier(group).await.unwrap();
    let ObjectDef::Topic(t) = &*def else { panic!() };
    let rows = nodes[2]
        .cluster
        .store()
        .read_log(t, 0, 0, u64::MAX, 10)
        .unwrap();
    let values: Vec<_> = rows.iter().map(|(_, r)| r.values[0].clone()).collect();
    assert_eq!(values, vec![Value::Text("majority".into())]);
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_node_lets_go_of_its_store() {
    let node = start_node(1, None).await;
    node.cluster
        .write(vec![WriteOp::Create(topic_def("t", 2))])
        .await
        .unwrap();
    let def = node.cluster.store().catalog().topic("t").unwrap();
    node.cluster
        .write(vec![WriteOp::Append {
            topic: def.id(),
            partition: 1,
            records: texts(&["x".to_owned()]),
        }])
        .await
        .unwrap();
    let store = node.cluster.store().clone();
    node.cluster.shutdown().await;
    drop(node.cluster);
    // Shutdown waited for every task of the cluster, and openraft's hold weak handles
    // only: nothing else holds the store now.
    assert_eq!(
        store.handle_count(),
        1,
        "other handles still hold the store after shutdown"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_a_purged_log_catches_up_by_snapshot() {
    let nodes = three_nodes_with(|c| {
        c.snapshot_every = 20;
        c.keep_after_snapshot = 0;
    })
    .await;
    let (def, group) = one_partition_topic(&nodes, "snap").await;
    let lead = leader(&nodes[0], group).unwrap();
    let behind = nodes.iter().position(|n| n.cluster.id() != lead).unwrap();
    // Cut one follower off, then write enough for the others to snapshot and purge.
    for (i, n) in nodes.iter().enumerate() {
        if i == behind {
            for peer in 1..=3 {
                n.faults.set_cut(peer, true);
            }
        } else {
            n.faults.set_cut(nodes[behind].cluster.id(), true);
        }
    }
    let writer = nodes.iter().find(|n| n.cluster.id() == lead).unwrap();
    for i in 0..60 {
        writer
            .cluster
            .write(vec![WriteOp::Append {
                topic: def.id(),
                partition: 0,
                records: texts(&[format!("m{i}")]),
            }])
            .await
            .unwrap();
    }
    let had = nodes[behind]
        .cluster
        .raft(group)
        .and_then(|r| r.metrics().borrow().last_log_index)
        .unwrap_or(0);
    // Snapshots are built and the log purged in the background, after the writes.
    wait_for("the leader to purge entries the follower lacks", || {
        writer
            .cluster
            .raft(group)
            .and_then(|r| r.metrics().borrow().purged.map(|p| p.index))
            .is_some_and(|purged| purged > had)
    })
    .await;
    for n in &nodes {
        for peer in 1..=3 {
            n.faults.set_cut(peer, false);
        }
    }
    nodes[behind].cluster.read_barrier(group).await.unwrap();
    let ObjectDef::Topic(t) = &*def else { panic!() };
    let rows = nodes[behind]
        .cluster
        .store()
        .read_log(t, 0, 0, u64::MAX, 100)
        .unwrap();
    let values: Vec<_> = rows.iter().map(|(_, r)| r.values[0].clone()).collect();
    let want: Vec<_> = (0..60).map(|i| Value::Text(format!("m{i}"))).collect();
    assert_eq!(values, want, "the snapshot brought every message, in order");
    let snap = nodes[behind]
        .cluster
        .raft(group)
        .and_then(|r| r.metrics().borrow().snapshot.map(|s| s.index));
    assert!(snap.is_some(), "the follower installed a snapshot");
    // And it keeps replicating by log afterwards.
    writer
        .cluster
        .write(vec![WriteOp::Append {
            topic: def.id(),
            partition: 0,
            records: texts(&["after".to_owned()]),
        }])
        .await
        .unwrap();
    nodes[behind].cluster.read_barrier(group).await.unwrap();
    assert_eq!(
        nodes[behind]
            .cluster
            .store()
            .read_log(t, 0, 60, u64::MAX, 10)
            .unwrap()
            .len(),
        1
    );
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

/// Starts a node of its own cluster on the store in `dir`.
pub(crate) async fn start_solo_in(dir: &std::path::Path) -> Cluster {
    let store = Store::open(dir, StorageConfig::default()).unwrap();
    // Gossip binds UDP on the port the system gave for TCP, where another socket may
    // already be: then another port.
    let mut attempts = 0;
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = ClusterConfig::new(
            1,
            NodeInfo {
                pg_addr: "pg-1".into(),
                cluster_addr: addr,
            },
        );
        let faults = Arc::new(Faults::default());
        match Cluster::start(store.clone(), config, listener, faults).await {
            Ok(cluster) => return cluster,
            Err(e) if attempts < 5 => {
                attempts += 1;
                eprintln!("a solo node did not start ({e}); trying another port");
            }
            Err(e) => panic!("a solo node did not start: {e}"),
        }
    }
}

/// Stops a node and closes its store (so that it can be opened again, and no RocksDB
/// work outlives the test).
pub(crate) async fn stop_solo(cluster: Cluster) {
    let store = cluster.store().clone();
    cluster.shutdown().await;
    drop(cluster);
    store.shutdown().unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solo_group_writes_around_its_log_then_applies_at_append_once_sealed_and_restarts_without_reapplying(
) {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_solo_in(dir.path()).await;
    cluster
        .write(vec![WriteOp::Create(topic_def("solo", 1))])
        .await
        .unwrap();
    let id = cluster.store().catalog().topic("solo").unwrap().id();
    let group = group_of(id, 0);
    let append = |i: usize| WriteOp::Append {
        topic: id,
        partition: 0,
        records: texts(&[format!("m{i}")]),
    };
    // Warm up: the group's first entries (its membership, the leader's blank) apply apart.
    for i in 0..3 {
        cluster.write(vec![append(i)]).await.unwrap();
    }
    let stats = cluster.store().stats();
    let requests = || stats.write_requests.load(Ordering::Relaxed);
    let last_log = || {
        let raft = cluster.raft(group).unwrap();
        let m = raft.metrics().borrow().clone();
        (m.last_log_index, m.last_applied.map(|l| l.index))
    };
    let write_in_turn = |from: usize, to: usize| {
        let cluster = &cluster;
        async move {
            for i in from..to {
                let r = cluster.write(vec![append(i)]).await.unwrap();
                let WriteResult::Appended { first_offset, .. } = r[0] else {
                    panic!("unexpected {r:?}")
                };
                assert_eq!(first_offset, i as u64);
            }
        }
    };

    // A group of this node alone, which it leads: each write is one committer request
    // and no Raft entry.
    let (before, log_before) = (requests(), last_log());
    write_in_turn(3, 23).await;
    assert_eq!(requests() - before, 20, "committer requests for 20 writes");
    assert_eq!(last_log(), log_before, "the writes went around the log");

    // Sealed (as before another node joins): the writes so far are under the applied
    // index of a snapshot, and from now on each write is a Raft entry applied in its own
    // append: still one committer request (entry, data and applied marker together;
    // appending and applying apart, with the committed index saved between, took three).
    cluster.seal(group).await.unwrap();
    let raft = cluster.raft(group).unwrap();
    let m = raft.metrics().borrow().clone();
    let sealed_at = m.last_applied.unwrap().index;
    assert!(
        sealed_at > log_before.1.unwrap(),
        "the seal's own entry is applied"
    );
    assert!(
        m.snapshot.is_some_and(|s| s.index >= sealed_at),
        "{:?}",
        m.snapshot
    );
    let before = requests();
    write_in_turn(23, 28).await;
    assert_eq!(requests() - before, 5, "committer requests for 5 writes");
    // openraft answers a write from its apply and publishes its metrics after: wait for
    // them to show the last apply.
    raft.wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.last_applied.map(|l| l.index) == m.last_log_index,
            "every entry in the log is applied",
        )
        .await
        .unwrap();
    let (last, applied) = last_log();
    assert_eq!(last, Some(sealed_at + 5), "one entry per write");
    assert_eq!(applied, last, "every entry in the log is applied");
    // eddy.raft_groups: the saves skipped, the committed index shown is still current.
    let info = cluster.group_info();
    let shown = info.iter().find(|g| g.group == group).unwrap();
    assert_eq!(shown.commit_index, last);
    assert_eq!(shown.applied_index, last);
    stop_solo(cluster).await;

    // After a restart nothing is lost or applied twice: 28 messages, the next offset 28.
    let cluster = start_solo_in(dir.path()).await;
    let r = cluster.write(vec![append(28)]).await.unwrap();
    let WriteResult::Appended { first_offset, .. } = r[0] else {
        panic!("unexpected {r:?}")
    };
    assert_eq!(first_offset, 28);
    let def = cluster.store().catalog().topic("solo").unwrap();
    let ObjectDef::Topic(t) = &*def else { panic!() };
    let rows = cluster.store().read_log(t, 0, 0, u64::MAX, 100).unwrap();
    let payloads: Vec<Value> = rows.iter().map(|(_, r)| r.values[0].clone()).collect();
    let expected: Vec<Value> = (0..29).map(|i| Value::Text(format!("m{i}"))).collect();
    assert_eq!(payloads, expected);
    stop_solo(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_group_takes_writes_from_every_node_logs_stubs_and_moves_with_every_write()
{
    use crate::types::Entry;
    use openraft::EntryPayload;
    let nodes = three_nodes().await;
    let ObjectDef::Topic(mut def) = topic_def("one", 1) else {
        unreachable!()
    };
    def.replicas = Some(1);
    nodes[0]
        .cluster
        .write(vec![WriteOp::Create(ObjectDef::Topic(def))])
        .await
        .unwrap();
    let def = nodes[0].cluster.store().catalog().topic("one").unwrap();
    let holder = def.placement()[0].clone();
    assert_eq!(holder.len(), 1, "one replica: {holder:?}");
    let holder = holder[0];
    let id = def.id();
    let group = group_of(id, 0);
    let append = |i: usize| WriteOp::Append {
        topic: id,
        partition: 0,
        records: texts(&[format!("m{i}")]),
    };
    let on = |id: u64| &nodes[(id - 1) as usize];
    wait_for("the topic on every node", || {
        nodes
            .iter()
            .all(|n| n.cluster.store().catalog().topic("one").is_some())
    })
    .await;
    // The group's first write may come before its leader's blank entry is applied,
    // and then is logged whole; from the next on, none is.
    on(holder).cluster.write(vec![append(0)]).await.unwrap();
    let warmed = on(holder)
        .cluster
        .raft(group)
        .unwrap()
        .metrics()
        .borrow()
        .last_log_index;
    for i in 1..30 {
        // Through every node: the two without a replica hand the write to the holder.
        let r = nodes[i % 3].cluster.write(vec![append(i)]).await.unwrap();
        let WriteResult::Appended { first_offset, .. } = r[0] else {
            panic!("unexpected {r:?}")
        };
        assert_eq!(first_offset, i as u64);
    }
    // The writes went around the holder's log (a group of one node, which it leads),
    // and no entry that did reach it carries a write's data.
    let logged = on(holder)
        .cluster
        .store()
        .raft_entries(group, warmed.unwrap() + 1, u64::MAX)
        .unwrap();
    let entries: Vec<Entry> = logged
        .iter()
        .map(|(_, b)| postcard::from_bytes(b).unwrap())
        .collect();
    assert!(
        entries.len() < 29,
        "an entry per write: {} entries",
        entries.len()
    );
    assert!(
        entries
            .iter()
            .all(|e| !matches!(e.payload, EntryPayload::Normal(_))),
        "a write's data is in the log: {:?}",
        entries
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(|e| e.log_id)
            .collect::<Vec<_>>()
    );

    // A node without a replica cannot read it, and says where to.
    let other = if holder == 3 { 2 } else { 3 };
    let refused = on(other)
        .cluster
        .read_barrier_objects(&[id])
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(&format!("node {holder} (pg-{holder})")),
        "{refused}"
    );

    // Move the replica: the holder leaves the cluster, another node takes the group over.
    let driver = if holder == 1 { 2 } else { 1 };
    on(driver).cluster.remove_node(holder).await.unwrap();
    let def = on(driver).cluster.store().catalog().topic("one").unwrap();
    let new_holder = def.placement()[0][0];
    assert_ne!(new_holder, holder);
    let n = on(new_holder);
    n.cluster.write(vec![append(30)]).await.unwrap();
    n.cluster.read_barrier(group).await.unwrap();
    let ObjectDef::Topic(t) = &*def else { panic!() };
    let rows = n.cluster.store().read_log(t, 0, 0, u64::MAX, 100).unwrap();
    let got: Vec<(u64, Value)> = rows
        .iter()
        .map(|(o, r)| (*o, r.values[0].clone()))
        .collect();
    let want: Vec<(u64, Value)> = (0..31)
        .map(|i| (i as u64, Value::Text(format!("m{i}"))))
        .collect();
    assert_eq!(got, want, "every write on the new replica, in order");
    for n in nodes {
        let TestNode { cluster, _dir, .. } = n;
        stop_solo(cluster).await;
    }
}
