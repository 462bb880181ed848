//! 3-node clusters formed with the documented commands (`--node-id`, `--cluster-addr`,
//! `--join`), or their settings for nodes in the test process where no process must be
//! killed: replication, forwarding, leader failure.

use std::collections::HashMap;
use std::time::Duration;

use eddy_tests::cluster::TestCluster;
use eddy_tests::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_replicates_writes_sent_to_any_node() -> anyhow::Result<()> {
    let mut cluster = TestCluster::in_process(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute(
        "CREATE TOPIC orders (item TEXT) WITH (partitions = 3);
         CREATE TABLE stock (item TEXT PRIMARY KEY, n INT);
         INSERT INTO orders (item) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f');
         INSERT INTO stock VALUES ('a', 1)",
    )
    .await?;
    // Written through node 1, read on node 3 at once: reads are strong by default, so
    // node 3 catches up with the catalog and the data before it answers.
    let c3 = cluster.client(3).await?;
    let n: i64 = c3
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert_eq!(
        n, 6,
        "a strong read on node 3 sees what node 1 acknowledged"
    );
    let stock: i32 = c3
        .query_one("SELECT n FROM stock WHERE item = $1", &[&"a"])
        .await?
        .get(0);
    assert_eq!(stock, 1, "point reads are strong too");
    c3.batch_execute("SET consistency = 'local'").await?;
    let local: i64 = c3
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert!(local <= 6, "a local read serves the replica as it is");
    c3.batch_execute("SET consistency = 'strong'").await?;
    // A duplicate key sent to node 2 is refused by the table's leader, wherever it is.
    let c2 = cluster.client(2).await?;
    let err = c2
        .execute("INSERT INTO stock VALUES ('a', 2)", &[])
        .await
        .expect_err("duplicate");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));

    // Every node knows every node; each node leads one of the three partitions.
    let nodes = c3
        .query("SELECT node_id, role FROM eddy.nodes ORDER BY node_id", &[])
        .await?;
    let nodes: Vec<(i64, String)> = nodes.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        nodes,
        vec![
            (1, "voter".into()),
            (2, "voter".into()),
            (3, "voter".into())
        ]
    );
    let shown = c3.simple_query("SHOW CLUSTER").await?;
    let rows = shown
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 3, "SHOW CLUSTER lists the nodes");
    let mut leaders = Vec::new();
    for p in 0..3 {
        leaders.push(cluster.leader_of(3, "orders", p).await?);
    }
    let leaders_by_partition = leaders.clone();
    leaders.sort_unstable();
    assert_eq!(leaders, vec![1, 2, 3], "leaders spread over the nodes");
    let replicas: Vec<String> = c3
        .query(
            "SELECT replicas FROM eddy.raft_groups WHERE object = 'orders'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(replicas.len(), 3);
    assert!(
        replicas.iter().all(|r| r.split(' ').count() == 3),
        "{replicas:?}"
    );
    // eddy.partitions on node 2: each partition's leader, replicas and high watermark.
    let parts = c2
        .query(
            "SELECT leader, replicas, next_offset FROM eddy.partitions
             WHERE topic = 'orders' ORDER BY partition",
            &[],
        )
        .await?;
    let mut part_leaders: Vec<i64> = parts.iter().map(|r| r.get(0)).collect();
    part_leaders.sort_unstable();
    assert_eq!(part_leaders, vec![1, 2, 3]);
    assert!(parts
        .iter()
        .all(|r| r.get::<_, String>(1).split(' ').count() == 3));
    let messages: i64 = parts.iter().map(|r| r.get::<_, i64>(2)).sum();
    assert!(
        messages <= 6,
        "high watermarks count the six messages at most"
    );
    // Keyless rows go to the partitions led by the node they arrive at, so that no
    // write is forwarded; keyed rows still go by their key's hash.
    let by_hash: Vec<i32> = ["k1", "k2", "k3", "k4"]
        .iter()
        .map(|k| eddy_storage::partition_for_key(k, 3) as i32)
        .collect();
    for node in 1..=3usize {
        let led: Vec<i32> = (0..3)
            .filter(|p| leaders_by_partition[*p as usize] == node)
            .collect();
        let c = cluster.client(node).await?;
        let rows = c
            .query(
                "INSERT INTO orders (item) VALUES ('x'), ('y'), ('z'), ('w') RETURNING _partition",
                &[],
            )
            .await?;
        let went: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert!(
            went.iter().all(|p| led.contains(p)),
            "keyless rows through node {node} (leading {led:?}) went to {went:?}"
        );
        let keyed: Vec<i32> = c
            .query(
                "INSERT INTO orders (_key, item) VALUES ('k1', 'x'), ('k2', 'y'), ('k3', 'z'), ('k4', 'w') RETURNING _partition",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(keyed, by_hash, "keyed rows through node {node}");
    }

    // Node 3 shut down in order and started again in this process: its shutdown closed
    // its store (the directory opens again), and it catches up with what it missed.
    cluster.stop(3).await?;
    c1.execute("INSERT INTO orders (item) VALUES ('late')", &[])
        .await?;
    cluster.restart(3).await?;
    let c3 = cluster.client(3).await?;
    let n: i64 = wait_for("node 3 to catch up", Duration::from_secs(30), || async {
        let n: i64 = c3
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .ok()?
            .get(0);
        (n == 31).then_some(n)
    })
    .await?;
    assert_eq!(
        n, 31,
        "6, 8 through each node, and one while node 3 was down"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_partition_leader_while_publishing_loses_no_acknowledged_row(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    cluster
        .client(1)
        .await?
        .batch_execute("CREATE TOPIC events (id BIGINT)")
        .await?;
    let leader = cluster.leader_of(1, "events", 0).await?;
    let via = if leader == 1 { 2 } else { 1 };
    let mut client = cluster.client(via).await?;
    let mut acked: Vec<i64> = Vec::new();
    let mut errors = 0;
    let mut id = 0i64;
    let mut killed = false;
    while acked.len() < 200 {
        if acked.len() == 60 && !killed {
            cluster.kill9(leader)?;
            killed = true;
        }
        // Each row carries its id as _msg_id: a retry after an unknown outcome (the
        // first attempt may have committed after all) is not stored twice.
        match client
            .execute(
                "INSERT INTO events (_msg_id, id) VALUES ($1, $2)",
                &[&id.to_string(), &id],
            )
            .await
        {
            Ok(1) => {
                acked.push(id);
                id += 1;
            }
            Ok(n) => anyhow::bail!("insert reported {n} rows"),
            Err(e) => {
                errors += 1;
                anyhow::ensure!(errors < 200, "writes never resumed: {e}");
                if client.is_closed() {
                    client = cluster.client(via).await?;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let new_leader = cluster.leader_of(via, "events", 0).await?;
    assert_ne!(new_leader, leader, "a new leader took over after the kill");
    cluster.restart(leader).await?;
    let want = acked.len();
    for node in 1..=3 {
        let c = cluster.client(node).await?;
        let rows = wait_for(
            &format!("node {node} to hold every acknowledged row"),
            Duration::from_secs(30),
            || {
                let c = &c;
                async move {
                    let rows = c
                        .query("SELECT id FROM events ORDER BY _offset", &[])
                        .await
                        .ok()?;
                    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    (ids.len() >= want).then_some(ids)
                }
            },
        )
        .await?;
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for i in &rows {
            *seen.entry(*i).or_default() += 1;
        }
        for a in &acked {
            let n = seen.get(a).copied().unwrap_or(0);
            assert_eq!(n, 1, "node {node} holds acknowledged row {a} {n} times");
        }
        // In order: first appearances follow the order of acknowledgement.
        let mut firsts: Vec<i64> = Vec::new();
        for i in rows {
            if !firsts.contains(&i) {
                firsts.push(i);
            }
        }
        let acked_order: Vec<i64> = firsts.into_iter().filter(|i| acked.contains(i)).collect();
        assert_eq!(
            acked_order, acked,
            "node {node}: acknowledged rows out of order"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partitioned_node_refuses_writes_and_serves_local_reads() -> anyhow::Result<()> {
    let cluster = TestCluster::in_process(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute("CREATE TOPIC t (n INT); INSERT INTO t VALUES (1)")
        .await?;
    // A follower of the topic's group is cut off (a cut-off leader cannot know whether
    // the write it took survives: t70_errors).
    let leader = cluster.leader_of(1, "t", 0).await?;
    let minority = (1..=3).find(|n| *n != leader).expect("a follower");
    let majority = (1..=3).find(|n| *n != minority).expect("another node");
    let c3 = cluster.client(minority).await?;
    let n: i64 = c3.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 1);

    // The fault took effect: the node sees both links cut.
    cluster.cut_off(minority).await?;
    let err = c3
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .expect_err("the minority refuses writes");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("retry"), "{msg}");
    // It still serves its own replica.
    c3.batch_execute("SET consistency = 'local'").await?;
    let n: i64 = c3.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 1);
    // The majority side goes on.
    let c2 = cluster.client(majority).await?;
    wait_for(
        "the majority to accept a write",
        Duration::from_secs(30),
        || {
            let c2 = &c2;
            async move { c2.execute("INSERT INTO t VALUES (3)", &[]).await.ok() }
        },
    )
    .await?;

    cluster.heal()?;
    cluster
        .wait_rows(
            minority,
            "SELECT node_id FROM eddy.nodes WHERE link = 'ok'",
            3,
        )
        .await?;
    c3.batch_execute("SET consistency = 'strong'").await?;
    let rows = wait_for(
        "the cut-off node to catch up",
        Duration::from_secs(30),
        || {
            let c3 = &c3;
            async move {
                let rows = c3
                    .query("SELECT n FROM t ORDER BY _offset", &[])
                    .await
                    .ok()?;
                let ns: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
                ns.contains(&3).then_some(ns)
            }
        },
    )
    .await?;
    assert!(
        !rows.contains(&2),
        "the refused write never appears: {rows:?}"
    );
    assert_eq!(rows.first(), Some(&1));
    Ok(())
}

/// Publishes ids 0, 1, 2, ... through `addr` with retries until `stop` (`sql` takes the
/// id as text, its `_msg_id`, then as a number); returns the acknowledged ids in order.
async fn publish_until(
    addr: std::net::SocketAddr,
    sql: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked_count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> anyhow::Result<Vec<i64>> {
    use std::sync::atomic::Ordering;
    let mut client = eddy_tests::connect(addr).await?;
    let mut acked = Vec::new();
    let mut id = 0i64;
    let mut errors = 0;
    while !stop.load(Ordering::Acquire) {
        match client.execute(sql, &[&id.to_string(), &id]).await {
            Ok(1) => {
                acked.push(id);
                acked_count.store(acked.len(), Ordering::Release);
                id += 1;
            }
            Ok(n) => anyhow::bail!("insert reported {n} rows"),
            Err(e) => {
                errors += 1;
                anyhow::ensure!(errors < 400, "writes never resumed: {e}");
                if client.is_closed() {
                    client = eddy_tests::connect(addr).await?;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(acked)
}

/// Waits until the publisher has `n` more acknowledgements than now.
async fn more_acks(count: &std::sync::atomic::AtomicUsize, n: usize) -> anyhow::Result<()> {
    let target = count.load(std::sync::atomic::Ordering::Acquire) + n;
    wait_for(
        "more acknowledged writes",
        Duration::from_secs(60),
        || async { (count.load(std::sync::atomic::Ordering::Acquire) >= target).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_and_another_removed_while_publishing_loses_no_acknowledged_row(
) -> anyhow::Result<()> {
    replace_node_while_publishing(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_while_publishing_without_losing_acknowledged_rows(
) -> anyhow::Result<()> {
    replace_node_while_publishing(true).await
}

/// Node 4 is added and node 3 removed (`dead`: after a kill -9) while a client
/// publishes through node 1; node 3's replicas end up on node 4.
async fn replace_node_while_publishing(dead: bool) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut cluster = TestCluster::start(3).await?;
    let c2 = cluster.client(2).await?;
    c2.batch_execute(
        "CREATE TOPIC events (id BIGINT) WITH (partitions = 2);
         CREATE TABLE kv (k BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO kv VALUES (1, 'one'), (2, 'two');",
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_until(
        cluster.addr(1),
        "INSERT INTO events (_msg_id, id) VALUES ($1, $2)",
        stop.clone(),
        count.clone(),
    ));
    more_acks(&count, 30).await?;
    if dead {
        cluster.kill9(3)?;
        more_acks(&count, 30).await?;
    }

    // A new node, started on its own, joins through ALTER CLUSTER ADD NODE.
    let new = cluster.start_new_node()?;
    let new_addr = cluster.cluster_addr(new).to_string();
    c2.batch_execute(&format!("ALTER CLUSTER ADD NODE '{new_addr}'"))
        .await?;
    cluster
        .wait_rows(new, "SELECT node_id FROM eddy.nodes", 4)
        .await?;
    // Adding it again is a no-op; a node that is not there is a clear error.
    c2.batch_execute(&format!("ALTER CLUSTER ADD NODE '{new_addr}'"))
        .await?;
    let err = c2
        .batch_execute("ALTER CLUSTER ADD NODE '127.0.0.1:1'")
        .await
        .expect_err("nothing listens there");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "40001", "{db:?}");
    assert!(db.message().contains("127.0.0.1:1"), "{}", db.message());
    more_acks(&count, 30).await?;

    // Node 3 leaves (alive, or dead); its replicas move, the new node being the only
    // one free.
    c2.batch_execute("ALTER CLUSTER REMOVE NODE 3").await?;
    let err = c2
        .batch_execute("ALTER CLUSTER REMOVE NODE 9")
        .await
        .expect_err("no node 9");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("node 9"), "{}", db.message());
    more_acks(&count, 30).await?;
    if !dead {
        // Told it was removed, node 3 stopped its groups (it would otherwise stand for
        // election in the metadata group forever).
        cluster
            .wait_rows(3, "SELECT group_id FROM eddy.raft_groups", 0)
            .await?;
    }
    // Node 3 is gone for good: writes go on without it.
    cluster.kill9(3)?;
    more_acks(&count, 30).await?;
    stop.store(true, Ordering::Release);
    let acked = publisher.await??;

    for node in [1, 2, new] {
        let c = cluster.client(node).await?;
        let nodes: Vec<i64> = c
            .query("SELECT node_id FROM eddy.nodes ORDER BY node_id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(nodes, vec![1, 2, new as i64], "members seen by node {node}");
    }
    let c = cluster.client(new).await?;
    let replicas: Vec<(Option<String>, String)> = c
        .query(
            "SELECT object, replicas FROM eddy.raft_groups ORDER BY group_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The metadata group, both partitions and the table, each on nodes 1, 2 and 4.
    assert_eq!(replicas.len(), 4, "{replicas:?}");
    for (object, r) in &replicas {
        let mut r: Vec<&str> = r.split(' ').collect();
        r.sort_unstable();
        assert_eq!(r, vec!["1", "2", "4"], "replicas of {object:?}");
    }
    // Each replica's indexes agree with each other: applied <= committed <= last log.
    for r in c
        .query(
            "SELECT last_log_index, commit_index, applied_index FROM eddy.raft_groups",
            &[],
        )
        .await?
    {
        let (last, commit, applied): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert!(
            applied <= commit && commit <= last,
            "{applied} {commit} {last}"
        );
    }
    let kv: Vec<(i64, String)> = c
        .query("SELECT k, v FROM kv ORDER BY k", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kv, vec![(1, "one".into()), (2, "two".into())]);
    for node in [1, 2, new] {
        let c = cluster.client(node).await?;
        let ids: Vec<i64> = c
            .query("SELECT id FROM events", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for i in &ids {
            *seen.entry(*i).or_default() += 1;
        }
        for a in &acked {
            let n = seen.get(a).copied().unwrap_or(0);
            assert_eq!(n, 1, "node {node} holds acknowledged row {a} {n} times");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_through_a_follower_keep_their_order_on_every_replica(
) -> anyhow::Result<()> {
    let cluster = TestCluster::in_process(3).await?;
    cluster
        .client(1)
        .await?
        .batch_execute("CREATE TOPIC seq (n BIGINT) WITH (partitions = 1)")
        .await?;
    let leader = cluster.leader_of(1, "seq", 0).await?;
    let via = if leader == 1 { 2 } else { 1 };
    let c = cluster.client(via).await?;
    let ins = c
        .prepare("INSERT INTO seq (n) VALUES ($1) RETURNING _offset")
        .await?;
    // Sent without waiting for answers (tokio-postgres pipelines queries polled
    // together); node `via` forwards them to the leader.
    let ns: Vec<i64> = (0..400).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        ns.iter().map(|n| [n as _]).collect();
    let answers = futures::future::join_all(params.iter().map(|p| c.query_one(&ins, p))).await;
    for (n, a) in ns.iter().zip(answers) {
        assert_eq!(a?.get::<_, i64>(0), *n, "publish {n} got the next offset");
    }
    for node in 1..=3 {
        cluster
            .wait_rows(node, "SELECT n FROM seq", ns.len())
            .await?;
        let got: Vec<i64> = cluster
            .client(node)
            .await?
            .query("SELECT n FROM seq ORDER BY _offset", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, ns, "node {node} holds the publishes in the order sent");
    }
    Ok(())
}
