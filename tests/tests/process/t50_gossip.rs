//! Gossip between eddy nodes (real processes, or nodes in the test process where none is
//! killed): failure detection in `eddy.nodes`, gossip tables and topics written on every
//! node during a partition and after it, frames without the cluster secret refused.

use std::time::Duration;

use eddy_tests::cluster::TestCluster;
use eddy_tests::{eddy_bin, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// Every row of `kv` on node `n`, as text, ordered by id: equal strings, equal state.
async fn kv_digest(cluster: &TestCluster, n: usize) -> anyhow::Result<String> {
    let c = cluster.client(n).await?;
    let rows = c.query("SELECT id, v FROM kv ORDER BY id", &[]).await?;
    Ok(rows
        .iter()
        .map(|r| format!("{}={}", r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect::<Vec<_>>()
        .join(","))
}

/// Frames the node behind `c` refused for want of the cluster secret.
async fn refused(c: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let r = c
        .query_one("SELECT frames_refused FROM eddy.nodes WHERE this_node", &[])
        .await?;
    Ok(r.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// The hybrid logical clock of the node behind `c`, as `eddy.nodes` shows it.
async fn hlc(c: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let r = c
        .query_one("SELECT hlc FROM eddy.nodes WHERE this_node", &[])
        .await?;
    r.get::<_, Option<i64>>(0)
        .ok_or_else(|| anyhow::anyhow!("no hlc on this node's row"))
}

async fn converged(cluster: &TestCluster, n: usize) -> anyhow::Result<String> {
    wait_for("every node to hold the same rows", DEADLINE, || async {
        let first = kv_digest(cluster, 1).await.ok()?;
        for i in 2..=n {
            if kv_digest(cluster, i).await.ok()? != first {
                return None;
            }
        }
        Some(first)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_tables_and_topics_take_writes_on_every_node_through_a_partition(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute(
        "CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT) WITH (replication = 'gossip');
         CREATE TOPIC ev (p TEXT) WITH (replication = 'gossip', partitions = 2);
         INSERT INTO kv VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )
    .await?;
    assert_eq!(converged(&cluster, 3).await?, "1=one,2=two,3=three");

    // Node 3 alone: its gossip writes are still accepted, a raft write is not.
    cluster.isolate(3)?;
    let c3 = cluster.client(3).await?;
    wait_for("node 3 to see the cut", DEADLINE, || async {
        let r = c3
            .query_one("SELECT count(*) FROM eddy.nodes WHERE link = 'cut'", &[])
            .await
            .ok()?;
        (r.get::<_, i64>(0) == 2).then_some(())
    })
    .await?;
    let c2 = cluster.client(2).await?;
    c1.batch_execute("INSERT INTO kv VALUES (10, 'from 1'); DELETE FROM kv WHERE id = 2")
        .await?;
    c2.batch_execute("INSERT INTO kv VALUES (20, 'from 2'); INSERT INTO kv VALUES (5, 'majority') ON CONFLICT (id) DO UPDATE SET v = excluded.v")
        .await?;
    c3.batch_execute("INSERT INTO kv VALUES (30, 'from 3'); DELETE FROM kv WHERE id = 3")
        .await?;
    // Node 3's next write must be later by HLC than node 2's: node 2's clock now is past
    // its write; wait until node 3's own clock (which cannot see node 2's) is past that.
    let written_on_2 = hlc(&c2).await?;
    wait_for(
        "node 3's clock to pass node 2's write",
        DEADLINE,
        || async { (hlc(&c3).await.ok()? > written_on_2).then_some(()) },
    )
    .await?;
    c3.batch_execute("INSERT INTO kv VALUES (5, 'minority, later') ON CONFLICT (id) DO UPDATE SET v = excluded.v")
        .await?;
    for (i, c) in [&c1, &c2, &c3].iter().enumerate() {
        c.execute(
            "INSERT INTO ev (p) VALUES ($1), ($2)",
            &[&format!("{}a", i + 1), &format!("{}b", i + 1)],
        )
        .await?;
    }
    let on3 = kv_digest(&cluster, 3).await?;
    assert!(
        !on3.contains("from 1"),
        "the cut kept node 1's write away: {on3}"
    );

    cluster.heal()?;
    let rows = converged(&cluster, 3).await?;
    assert_eq!(
        rows, "1=one,5=minority, later,10=from 1,20=from 2,30=from 3",
        "deleted rows stay deleted on every node, and the later write wins"
    );
    for n in 1..=3 {
        let c = cluster.client(n).await?;
        let got: Vec<String> = wait_for("every message on every node", DEADLINE, || async {
            let rows = c.query("SELECT p FROM ev ORDER BY p", &[]).await.ok()?;
            let v: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            (v.len() >= 6).then_some(v)
        })
        .await?;
        assert_eq!(
            got,
            vec!["1a", "1b", "2a", "2b", "3a", "3b"],
            "node {n}: once each"
        );
    }
    let peers = c1
        .query(
            "SELECT peer, status, pulled FROM eddy.gossip_peers ORDER BY peer",
            &[],
        )
        .await?;
    let peers: Vec<(i64, String, i64)> = peers
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.2 > 0),
        "node 1 pulled from both: {peers:?}"
    );

    // Half the gossip frames lost: anti-entropy still gets every write everywhere.
    cluster.lose_gossip(500)?;
    for i in 0..30i64 {
        let c = cluster.client((i % 3 + 1) as usize).await?;
        c.execute("INSERT INTO kv VALUES ($1, 'lossy')", &[&(100 + i)])
            .await?;
    }
    let rows = converged(&cluster, 3).await?;
    assert_eq!(rows.matches("lossy").count(), 30);
    // Frames were lost indeed, on every node.
    for node in 1..=3 {
        cluster.wait_fault(node, "gossip_lost").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_marks_a_killed_node_dead_and_live_again_after_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    let gossip_of = |node: i64| {
        let c1 = &c1;
        async move {
            let r = c1
                .query_one("SELECT gossip FROM eddy.nodes WHERE node_id = $1", &[&node])
                .await
                .ok()?;
            r.get::<_, Option<String>>(0)
        }
    };
    wait_for("every node live", DEADLINE, || async {
        for n in 1..=3 {
            if gossip_of(n).await.as_deref() != Some("live") {
                return None;
            }
        }
        Some(())
    })
    .await?;
    // Load figures travel with gossip: node 1 sees node 2's.
    wait_for("node 2's load figures on node 1", DEADLINE, || async {
        let r = c1
            .query_one(
                "SELECT connections, leaders, state, figures_age_ms FROM eddy.nodes \
                 WHERE node_id = 2",
                &[],
            )
            .await
            .ok()?;
        let (connections, leaders, state, age) = (
            r.get::<_, Option<i64>>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        );
        // Fresh: a node gossips new figures every second.
        (connections >= 0 && leaders >= 0 && state == "serving" && age < 3000).then_some(())
    })
    .await?;
    let leaders: i64 = wait_for("the metadata leader's figure", DEADLINE, || async {
        let rows = c1.query("SELECT leaders FROM eddy.nodes", &[]).await.ok()?;
        let sum: i64 = rows.iter().filter_map(|r| r.get::<_, Option<i64>>(0)).sum();
        (sum >= 1).then_some(sum)
    })
    .await?;
    assert!(leaders >= 1, "some node leads the metadata group");
    cluster.kill9(3)?;
    wait_for("node 3 marked dead on node 1", DEADLINE, || async {
        (gossip_of(3).await.as_deref() == Some("dead")).then_some(())
    })
    .await?;
    assert_eq!(gossip_of(2).await.as_deref(), Some("live"));
    cluster.restart(3).await?;
    wait_for("node 3 live again", DEADLINE, || async {
        (gossip_of(3).await.as_deref() == Some("live")).then_some(())
    })
    .await?;

    // A node with another secret: its frames are refused and counted.
    let before = refused(&c1).await?;
    let dir = tempfile::tempdir()?;
    let seed = cluster.cluster_addr(1).to_string();
    // It cannot join, so it never prints its address: run it without waiting for that.
    let mut stranger = std::process::Command::new(eddy_bin()?)
        .arg("start")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--pg-addr", "127.0.0.1:0", "--node-id", "9"])
        .args(["--cluster-addr", "127.0.0.1:0", "--join", &seed])
        .args(["--cluster-secret", "not the secret"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let seen = wait_for(
        "node 1 to refuse the stranger's frames",
        DEADLINE,
        || async { (refused(&c1).await.ok()? > before).then_some(()) },
    )
    .await;
    let _ = stranger.kill();
    let _ = stranger.wait();
    seen?;
    let n: i64 = c1
        .query_one("SELECT count(*) FROM eddy.nodes", &[])
        .await?
        .get(0);
    assert_eq!(n, 3, "the stranger never joined");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_deltas_from_origins_it_does_not_trust() -> anyhow::Result<()> {
    // Node 2 trusts writes made on nodes 2 and 3 only.
    let cluster = TestCluster::start_with(3, |n| {
        if n == 2 {
            vec!["--trust-origins".into(), "2,3".into()]
        } else {
            Vec::new()
        }
    })
    .await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute(
        "CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT) WITH (replication = 'gossip');
         INSERT INTO kv VALUES (1, 'from 1')",
    )
    .await?;
    let c3 = cluster.client(3).await?;
    c3.batch_execute("INSERT INTO kv VALUES (3, 'from 3')")
        .await?;
    let c2 = cluster.client(2).await?;
    wait_for("node 2 to refuse node 1's delta", DEADLINE, || async {
        let r = c2
            .query_one("SELECT sum(refused) FROM eddy.gossip_peers", &[])
            .await
            .ok()?;
        (r.get::<_, Option<i64>>(0)? > 0).then_some(())
    })
    .await?;
    wait_for("node 3's row on node 2", DEADLINE, || async {
        (kv_digest(&cluster, 2).await.ok()? == "3=from 3").then_some(())
    })
    .await?;
    wait_for("both rows on node 3", DEADLINE, || async {
        (kv_digest(&cluster, 3).await.ok()? == "1=from 1,3=from 3").then_some(())
    })
    .await?;
    // Node 3 holds node 1's row and offers it to node 2 too: wait until node 2 has
    // refused it from node 3, then look.
    wait_for(
        "node 2 to refuse node 1's delta relayed by node 3",
        DEADLINE,
        || async {
            let r = c2
                .query_one(
                    "SELECT sum(refused) FROM eddy.gossip_peers WHERE peer = 3",
                    &[],
                )
                .await
                .ok()?;
            (r.get::<_, Option<i64>>(0)? > 0).then_some(())
        },
    )
    .await?;
    assert_eq!(
        kv_digest(&cluster, 2).await?,
        "3=from 3",
        "a refused delta is never applied, even relayed through node 3"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_every_node_get_every_gossip_message_once_in_origin_order(
) -> anyhow::Result<()> {
    use futures::StreamExt;
    const EACH: usize = 20;
    let cluster = TestCluster::in_process(3).await?;
    cluster
        .client(1)
        .await?
        .batch_execute("CREATE TOPIC ev1 (p TEXT) WITH (replication = 'gossip')")
        .await?;
    // A subscriber on every node, from the beginning, in CSV.
    let mut streams = Vec::new();
    for n in 1..=3 {
        let c = cluster.client(n).await?;
        wait_for("the topic on the node", DEADLINE, || async {
            c.query_one("SELECT count(*) FROM ev1", &[]).await.ok()
        })
        .await?;
        let s = c
            .copy_out("COPY (SUBSCRIBE ev1 FROM BEGINNING) TO STDOUT WITH (FORMAT csv)")
            .await?;
        streams.push((c, Box::pin(s)));
    }
    // Every node publishes, one message per statement, all at once.
    let mut publishers = Vec::new();
    for n in 1..=3 {
        let c = cluster.client(n).await?;
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                c.execute("INSERT INTO ev1 (p) VALUES ($1)", &[&format!("{n}-{i}")])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    for (n, (_c, stream)) in streams.iter_mut().enumerate() {
        let mut got: Vec<String> = Vec::new();
        while got.len() < 3 * EACH {
            let chunk = tokio::time::timeout(DEADLINE, stream.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("subscription ended"))??;
            got.extend(
                String::from_utf8_lossy(&chunk)
                    .lines()
                    .filter_map(|l| l.rsplit(',').next().map(str::to_owned)),
            );
        }
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3 * EACH, "node {}: every message once", n + 1);
        for origin in 1..=3 {
            let seq: Vec<usize> = got
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("{origin}-"))?.parse().ok())
                .collect();
            let want: Vec<usize> = (0..EACH).collect();
            assert_eq!(seq, want, "node {}: origin {origin} in order", n + 1);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_on_every_node_never_fail_with_a_duplicate_key() -> anyhow::Result<()> {
    let cluster = TestCluster::in_process(3).await?;
    cluster
        .client(1)
        .await?
        .batch_execute(
            "CREATE TABLE g (id BIGINT PRIMARY KEY, v TEXT) WITH (replication = 'gossip');
             CREATE TABLE r (id BIGINT PRIMARY KEY, v TEXT)",
        )
        .await?;
    let mut tasks = Vec::new();
    for n in 1..=3 {
        for c in 0..3 {
            let client = cluster.client(n).await?;
            wait_for("both tables on the node", DEADLINE, || async {
                client.query_one("SELECT count(*) FROM g", &[]).await.ok()?;
                client.query_one("SELECT count(*) FROM r", &[]).await.ok()
            })
            .await?;
            tasks.push(tokio::spawn(async move {
                for i in 0..40i64 {
                    for t in ["g", "r"] {
                        // A new key every statement, written by every node at once.
                        let sql = format!(
                            "INSERT INTO {t} VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v"
                        );
                        client
                            .execute(&sql, &[&i, &format!("{n}.{c}.{i}")])
                            .await
                            .map_err(|e| anyhow::anyhow!("node {n}: {t}: {:?}", e.as_db_error()))?;
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let c = cluster.client(2).await?;
    let n: i64 = c.query_one("SELECT count(*) FROM r", &[]).await?.get(0);
    assert_eq!(n, 40);
    wait_for("the gossip table on every node", DEADLINE, || async {
        for i in 1..=3 {
            let c = cluster.client(i).await.ok()?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM g", &[])
                .await
                .ok()?
                .get(0);
            if n != 40 {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}
