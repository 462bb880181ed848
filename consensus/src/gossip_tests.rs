//! Delta gossip between in-process nodes (real stores, real TCP on loopback): writes on
//! every node during a partition converge after it heals, lost frames are repaired by
//! anti-entropy, and untrusted origins and frames without the cluster secret are refused.

use std::sync::Arc;
use std::time::Duration;

use eddy_storage::{
    ColumnDef, ColumnType, ObjectDef, ObjectId, OnConflict, Replication, TableDef, TopicDef, Value,
    WriteOp,
};

use crate::cluster_tests::{start_node_with, three_nodes_with, wait_for, TestNode};
use crate::network::{Call, Faults, Peers, Reply};
use crate::{ClusterConfig, FrameAuth};

fn fast(c: &mut ClusterConfig) {
    c.gossip.anti_entropy = Duration::from_millis(100);
}

fn kv_def() -> ObjectDef {
    let columns = vec![
        ColumnDef::new("id", ColumnType::Int64, false),
        ColumnDef::new("v", ColumnType::Text, true),
    ];
    ObjectDef::Table(TableDef {
        replication: Replication::Gossip,
        ..TableDef::new("kv", columns, vec![0])
    })
}

/// Creates `def` through the metadata group; waits until every node has it.
async fn create(nodes: &[TestNode], def: ObjectDef) -> Arc<ObjectDef> {
    let name = def.name().to_owned();
    nodes[0]
        .cluster
        .write(vec![WriteOp::Create(def)])
        .await
        .unwrap();
    wait_for("the object on every node", || {
        nodes
            .iter()
            .all(|n| n.cluster.store().catalog().get(&name).is_some())
    })
    .await;
    nodes[0].cluster.store().catalog().get(&name).unwrap()
}

/// Creates the gossip table `kv`; returns its id.
async fn kv(nodes: &[TestNode]) -> ObjectId {
    create(nodes, kv_def()).await.id()
}

async fn put(node: &TestNode, table: ObjectId, id: i64, v: &str) {
    node.cluster
        .write(vec![WriteOp::Insert {
            table,
            rows: vec![vec![Value::Int64(id), Value::Text(v.into())]],
            on_conflict: OnConflict::Replace,
        }])
        .await
        .unwrap();
}

async fn delete(node: &TestNode, table: ObjectId, id: i64) {
    node.cluster
        .write(vec![WriteOp::Delete {
            table,
            keys: vec![vec![Value::Int64(id)]],
        }])
        .await
        .unwrap();
}

fn rows(node: &TestNode) -> Vec<Vec<Value>> {
    let store = node.cluster.store();
    let def = store.catalog().table("kv").unwrap();
    let ObjectDef::Table(t) = &*def else { panic!() };
    store.scan_rows(t, None, usize::MAX).unwrap().0
}

/// Rows and row versions (tombstones included) of a node: equal digests mean equal state.
fn digest(node: &TestNode, table: ObjectId) -> String {
    format!(
        "{:?} {:?}",
        rows(node),
        node.cluster.store().table_state(table).unwrap()
    )
}

async fn converged(nodes: &[TestNode], table: ObjectId) {
    wait_for("every node to hold the same rows", || {
        let d = digest(&nodes[0], table);
        nodes.iter().all(|n| digest(n, table) == d)
    })
    .await;
}

/// Cuts (or heals) the links between node `i` and every other node, both ways.
fn isolate(nodes: &[TestNode], i: usize, on: bool) {
    let id = nodes[i].cluster.id();
    for other in nodes.iter().filter(|n| n.cluster.id() != id) {
        other.faults.set_cut(id, on);
        nodes[i].faults.set_cut(other.cluster.id(), on);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_both_sides_of_a_partition_converge_after_it_heals() {
    let nodes = three_nodes_with(fast).await;
    let table = kv(&nodes).await;
    put(&nodes[0], table, 1, "one").await;
    put(&nodes[0], table, 2, "two").await;
    converged(&nodes, table).await;

    // Node 3 alone on one side.
    isolate(&nodes, 2, true);
    put(&nodes[0], table, 10, "from 1").await;
    put(&nodes[1], table, 20, "from 2").await;
    put(&nodes[2], table, 30, "from 3").await;
    delete(&nodes[2], table, 1).await; // deleted on the minority side
    put(&nodes[0], table, 7, "majority").await;
    // Same key, a later millisecond on another node: the later write wins.
    tokio::time::sleep(Duration::from_millis(5)).await;
    put(&nodes[2], table, 7, "minority, later").await;
    delete(&nodes[0], table, 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !rows(&nodes[0]).iter().any(|r| r[0] == Value::Int64(30)),
        "the partition kept node 3's write away"
    );
    assert!(
        nodes[2]
            .faults
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    isolate(&nodes, 2, false);
    converged(&nodes, table).await;
    let got = rows(&nodes[1]);
    let want: Vec<Vec<Value>> = [
        (7, "minority, later"),
        (10, "from 1"),
        (20, "from 2"),
        (30, "from 3"),
    ]
    .iter()
    .map(|(k, v)| vec![Value::Int64(*k), Value::Text((*v).into())])
    .collect();
    assert_eq!(got, want, "deleted rows stay deleted; the last writer wins");
    // Node 1 received deltas by gossip (node 3's may have come relayed through node 2,
    // counted under node 2), and exchanges with node 3 again.
    wait_for("node 1 to exchange with node 3 again", || {
        let peers = nodes[0].cluster.gossip_peers();
        peers[&3].last_sync.is_some()
    })
    .await;
    let peers = nodes[0].cluster.gossip_peers();
    assert!(
        peers.values().map(|p| p.pulled).sum::<u64>() > 0,
        "{peers:?}"
    );
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_frames_are_repaired_by_anti_entropy() {
    let nodes = three_nodes_with(fast).await;
    let table = kv(&nodes).await;
    for n in &nodes {
        n.faults.set_gossip_loss(400);
    }
    for i in 0..60i64 {
        let n = &nodes[(i % 3) as usize];
        put(n, table, i, &format!("v{i}")).await;
        if i % 5 == 0 {
            // On the node that wrote the key, so the delete is the later write.
            delete(&nodes[((i / 2) % 3) as usize], table, i / 2).await;
        }
    }
    converged(&nodes, table).await;
    let lost: u64 = nodes
        .iter()
        .map(|n| {
            n.faults
                .gossip_lost
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(lost > 0, "frames were lost on the way");
    let got = rows(&nodes[2]);
    assert_eq!(got.len(), 60 - 12, "{got:?}");
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gossip_topic_messages_reach_every_node_once() {
    let nodes = three_nodes_with(fast).await;
    let def = ObjectDef::Topic(TopicDef {
        partitions: 2,
        replication: Replication::Gossip,
        ..TopicDef::new("ev", vec![ColumnDef::new("p", ColumnType::Text, true)])
    });
    let topic = create(&nodes, def).await;
    let ObjectDef::Topic(t) = &*topic else {
        panic!()
    };
    let columns = [ColumnDef::new("p", ColumnType::Text, true)];
    for i in 0..30u32 {
        let mut r = eddy_storage::Records::new();
        let n = (i % 3) as usize;
        r.push(&columns, None, &[Value::Text(format!("{}-{i}", n + 1))])
            .unwrap();
        nodes[n]
            .cluster
            .write(vec![WriteOp::Append {
                topic: t.id,
                partition: i % 2,
                records: r,
            }])
            .await
            .unwrap();
    }
    let all = |node: &TestNode| -> Vec<String> {
        let mut v = Vec::new();
        for p in 0..2 {
            for (_, rec) in node
                .cluster
                .store()
                .read_log(t, p, 0, u64::MAX, usize::MAX)
                .unwrap()
            {
                let Value::Text(s) = &rec.values[0] else {
                    panic!()
                };
                v.push(s.clone());
            }
        }
        v
    };
    wait_for("every message on every node", || {
        nodes.iter().all(|n| all(n).len() >= 30)
    })
    .await;
    for n in &nodes {
        let mut got = all(n);
        assert_eq!(got.len(), 30, "exactly once");
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 30);
    }
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn untrusted_origins_and_frames_without_the_secret_are_refused_and_counted() {
    let n1 = start_node_with(1, None, fast).await;
    let seed = n1.addr.clone();
    let n2 = start_node_with(2, Some(&seed), |c| {
        fast(c);
        c.gossip.trust_origins = Some([2].into_iter().collect());
    })
    .await;
    let nodes = vec![n1, n2];
    wait_for("two members", || {
        nodes.iter().all(|n| n.cluster.nodes().len() == 2)
    })
    .await;
    let table = kv(&nodes).await;
    put(&nodes[1], table, 2, "from 2").await;
    put(&nodes[0], table, 1, "from 1").await;
    wait_for("node 2 to refuse node 1's deltas", || {
        nodes[1].cluster.gossip_peers()[&1].refused > 0
    })
    .await;
    wait_for("node 1 to take node 2's row", || rows(&nodes[0]).len() == 2).await;
    assert_eq!(
        rows(&nodes[1]),
        vec![vec![Value::Int64(2), Value::Text("from 2".into())]],
        "a refused delta is never applied"
    );

    // A caller with another secret: refused, counted, nothing applied.
    let before = nodes[0].cluster.frames_refused();
    let stranger = Peers::new(
        9,
        Arc::new(Faults::default()),
        Arc::new(FrameAuth::new("not the secret")),
    );
    let deltas = nodes[0]
        .cluster
        .store()
        .read_deltas(table, 1, 1, usize::MAX)
        .unwrap();
    let forged = eddy_storage::gossip::DeltaBatch {
        object: table,
        origin: 7,
        deltas,
    };
    let reply = stranger
        .call(
            1,
            &nodes[0].addr,
            Call::Deltas(7, vec![forged]),
            Duration::from_secs(2),
        )
        .await;
    assert!(!matches!(reply, Ok(Reply::Deltas(_))), "{reply:?}");
    assert!(nodes[0].cluster.frames_refused() > before);
    assert!(!nodes[0]
        .cluster
        .store()
        .version_vector(table)
        .unwrap()
        .contains_key(&7));
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_away_longer_than_the_horizon_resyncs_and_deleted_rows_stay_deleted() {
    let nodes = three_nodes_with(|c| {
        fast(c);
        c.gossip.horizon = Duration::from_millis(300);
    })
    .await;
    let table = kv(&nodes).await;
    put(&nodes[0], table, 1, "one").await;
    put(&nodes[0], table, 2, "two").await;
    converged(&nodes, table).await;

    isolate(&nodes, 2, true);
    delete(&nodes[0], table, 1).await;
    put(&nodes[0], table, 3, "three").await;
    put(&nodes[2], table, 4, "made while away").await;
    wait_for("node 1 to collect its deltas and the tombstone", || {
        let store = nodes[0].cluster.store();
        let vv = store.version_vector(table).unwrap();
        vv[&1].floor > vv[&1].applied
            && store
                .table_state(table)
                .unwrap()
                .iter()
                .all(|s| !s.1.tombstone)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    isolate(&nodes, 2, false);
    converged(&nodes, table).await;
    let text = |k: i64, v: &str| vec![Value::Int64(k), Value::Text(v.into())];
    assert_eq!(
        rows(&nodes[0]),
        vec![text(2, "two"), text(3, "three"), text(4, "made while away")],
        "row 1 deleted while node 3 was away never comes back"
    );
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deltas_stamped_too_far_ahead_are_refused_until_they_are_not() {
    use eddy_storage::gossip::{Delta, DeltaBatch, DeltaBody, RowChange};
    use eddy_storage::hlc::{hlc_from_millis, hlc_millis};

    let n1 = start_node_with(1, None, fast).await;
    let nodes = vec![n1];
    let table = kv(&nodes).await;
    let key = eddy_storage::layout::row_key(table, &[&Value::Int64(99)]).unwrap();
    let mut row = Vec::new();
    eddy_storage::encode_row(&[Value::Int64(99), Value::Text("x".into())], &mut row);
    let delta = |hlc: u64| DeltaBatch {
        object: table,
        origin: 7,
        deltas: vec![Delta {
            seq: 1,
            hlc,
            body: DeltaBody::Rows(vec![RowChange {
                key: key[4..].to_vec(),
                row: Some(serde_bytes::ByteBuf::from(row.clone())),
            }]),
        }],
    };
    let peer = Peers::new(
        7,
        Arc::new(Faults::default()),
        Arc::new(FrameAuth::new(crate::DEV_SECRET)),
    );
    let now = hlc_millis(nodes[0].cluster.store().hlc().now());
    let send = |b: DeltaBatch| {
        let peer = peer.clone();
        let addr = nodes[0].addr.clone();
        async move {
            peer.call(1, &addr, Call::Deltas(7, vec![b]), Duration::from_secs(2))
                .await
                .unwrap()
        }
    };
    // A minute ahead of the node's clock: refused, counted, not applied.
    let Reply::Deltas(applied) = send(delta(hlc_from_millis(now + 60_000))).await else {
        panic!("unexpected reply")
    };
    assert_eq!(applied[0].applied, 0);
    assert_eq!(nodes[0].cluster.gossip_peers()[&7].refused, 1);
    assert!(rows(&nodes[0]).is_empty());
    // Within the allowed offset: applied.
    let Reply::Deltas(applied) = send(delta(hlc_from_millis(now + 100))).await else {
        panic!("unexpected reply")
    };
    assert_eq!(applied[0].applied, 1);
    assert_eq!(
        rows(&nodes[0]),
        vec![vec![Value::Int64(99), Value::Text("x".into())]]
    );
    assert!(
        nodes[0].cluster.store().hlc().last() >= hlc_from_millis(now + 100),
        "the clock moved past the merged write"
    );
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anti_entropy_answers_are_bounded_in_bytes_and_the_rest_comes_next_round() {
    let n1 = start_node_with(1, None, |c| {
        fast(c);
        c.gossip.sync_bytes = 2_000;
    })
    .await;
    let nodes = vec![n1];
    let table = kv(&nodes).await;
    for i in 0..100 {
        put(&nodes[0], table, i, &"x".repeat(100)).await;
    }
    let mut theirs = crate::gossip::ObjectVv {
        object: table,
        applied: vec![(1, 0)],
    };
    let mut rounds = 0;
    let mut got = 0;
    while got < 100 {
        let reply = nodes[0].cluster.answer_digest(vec![theirs.clone()]);
        let deltas: Vec<_> = reply.missing.iter().flat_map(|b| &b.deltas).collect();
        let bytes: usize = deltas.iter().map(|d| d.size()).sum();
        let largest = deltas.iter().map(|d| d.size()).max().unwrap_or(0);
        assert!(!deltas.is_empty(), "every round makes progress");
        assert!(bytes <= 2_000 + largest, "{bytes} bytes in one answer");
        assert_eq!(
            deltas[0].seq,
            got + 1,
            "it goes on where the last answer stopped"
        );
        got = deltas.last().unwrap().seq;
        theirs.applied = vec![(1, got)];
        rounds += 1;
    }
    assert!(
        rounds > 5,
        "100 deltas of ~140 bytes need several 2 kB answers"
    );
    for n in nodes {
        n.cluster.shutdown().await;
    }
}
