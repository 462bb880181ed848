//! The router (issue 24) on a cluster of processes: strategies chosen per session and at
//! startup, reads spread over replicas yet linearizable, read-modify-writes at the
//! leader, cursors and blocks kept on their node, `EXPLAIN ROUTE` and `eddy.routing`
//! agreeing with what happened, a slow node shed and taken back, a drained node avoided.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_tests::cluster::TestCluster;
use eddy_tests::{wait_for, wait_node_state};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(30);

/// `eddy.routing` of the node `c` is connected to, as `counter/detail -> value`.
async fn routing(c: &Client) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(
        c.query("SELECT counter, detail, value FROM eddy.routing", &[])
            .await?
            .iter()
            .map(|r| {
                let (counter, detail): (String, String) = (r.get(0), r.get(1));
                let key = if detail.is_empty() {
                    counter
                } else {
                    format!("{counter}/{detail}")
                };
                (key, r.get::<_, i64>(2))
            })
            .collect(),
    )
}

fn count(m: &BTreeMap<String, i64>, key: &str) -> i64 {
    m.get(key).copied().unwrap_or(0)
}

/// `EXPLAIN ROUTE sql` on `c`: (node, state, leader, chosen, reason) per candidate.
async fn explain(c: &Client, sql: &str) -> anyhow::Result<Vec<(i64, String, bool, bool, String)>> {
    Ok(c.query(&format!("EXPLAIN ROUTE {sql}"), &[])
        .await?
        .iter()
        .map(|r| {
            (
                r.get("node_id"),
                r.get("state"),
                r.get("leader"),
                r.get("chosen"),
                r.get("reason"),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_spread_reads_that_stay_linearizable_and_the_counters_agree(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT)")
        .await?;
    cluster.replicas_of("kv", 3).await?;

    // The setting: checked, shown, reset to the node's default.
    let shown: String = c1.query_one("SHOW routing", &[]).await?.get(0);
    assert_eq!(shown, "adaptive");
    let bad = c1
        .batch_execute("SET routing = 'fastest'")
        .await
        .expect_err("no such strategy");
    assert_eq!(
        bad.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{bad}"
    );
    // At startup, as `options=-c routing=...`.
    let addr = cluster.addr(1);
    let rr = eddy_kit::connect(&format!(
        "host={} port={} user=eddy dbname=eddy options='-c routing=round_robin'",
        addr.ip(),
        addr.port()
    ))
    .await?;
    let shown: String = rr.query_one("SHOW routing", &[]).await?.get(0);
    assert_eq!(shown, "round_robin");
    let refused = eddy_kit::connect(&format!(
        "host={} port={} user=eddy dbname=eddy options='-c routing=nowhere'",
        addr.ip(),
        addr.port()
    ))
    .await
    .err()
    .expect("a bad strategy at startup is refused");
    let db = refused
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .unwrap_or_else(|| panic!("not a server error: {refused:#}"));
    assert_eq!(
        (db.severity(), db.code()),
        ("FATAL", &SqlState::INVALID_PARAMETER_VALUE)
    );
    assert!(db.message().contains("routing must be one of"), "{db:?}");

    // Round robin: reads spread over all three replicas, and each one still sees every
    // write acknowledged before it (the follower's read barrier), wherever it runs.
    let before = routing(&rr).await?;
    for k in 1..=30i64 {
        rr.execute("INSERT INTO kv VALUES ($1, $1)", &[&k]).await?;
        let n: i64 = rr.query_one("SELECT count(*) FROM kv", &[]).await?.get(0);
        assert_eq!(n, k, "a read after the {k}th write");
    }
    let after = routing(&rr).await?;
    let routed = count(&after, "routed/round_robin") - count(&before, "routed/round_robin");
    let relayed = count(&after, "relayed") - count(&before, "relayed");
    assert!(routed >= 30, "{before:?} -> {after:?}");
    // Two of every three went to the other nodes.
    assert!(
        (18..=22).contains(&relayed),
        "relayed {relayed} of {routed}: {after:?}"
    );

    // EXPLAIN ROUTE: three candidates for a read, one chosen; a blind write runs here.
    let rows = explain(&rr, "SELECT * FROM kv WHERE k = 1").await?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.3).count(), 1, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "serving"), "{rows:?}");
    let rows = explain(&rr, "INSERT INTO kv VALUES (99, 1)").await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].3 && rows[0].4.contains("blind write"), "{rows:?}");
    // A read-modify-write goes to the table's leader, and runs there.
    let leader = cluster.leader_of(1, "kv", 0).await? as i64;
    let rows = explain(&rr, "UPDATE kv SET v = v + 1 WHERE k = 1").await?;
    let chosen: Vec<_> = rows.iter().filter(|r| r.3).collect();
    assert_eq!(chosen.len(), 1, "{rows:?}");
    assert_eq!((chosen[0].0, chosen[0].2), (leader, true), "{rows:?}");
    assert!(chosen[0].4.contains("leader"), "{rows:?}");
    for _ in 0..10 {
        rr.execute("UPDATE kv SET v = v + 1 WHERE k = 1", &[])
            .await?;
    }
    let v: i64 = rr
        .query_one("SELECT v FROM kv WHERE k = 1", &[])
        .await?
        .get(0);
    assert_eq!(v, 11);

    // A cursor stays on the node that holds it, whatever the strategy says after.
    rr.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT k FROM kv ORDER BY k")
        .await?;
    let mut seen = Vec::new();
    for _ in 0..6 {
        for row in rr.query("FETCH 5 FROM c", &[]).await? {
            seen.push(row.get::<_, i64>(0));
        }
    }
    rr.batch_execute("CLOSE c; COMMIT").await?;
    assert_eq!(seen, (1..=30).collect::<Vec<i64>>());
    // An open block pins its reads here.
    let before = routing(&rr).await?;
    rr.batch_execute("BEGIN").await?;
    for _ in 0..5 {
        rr.query_one("SELECT count(*) FROM kv", &[]).await?;
    }
    rr.batch_execute("COMMIT").await?;
    let after = routing(&rr).await?;
    assert_eq!(
        count(&after, "pinned/block") - count(&before, "pinned/block"),
        5,
        "{after:?}"
    );
    assert_eq!(
        count(&after, "relayed"),
        count(&before, "relayed"),
        "{after:?}"
    );

    // eddy.metrics: what this node served, by kind.
    let metrics: BTreeMap<String, (i64, f64, f64)> = rr
        .query(
            "SELECT metric, count, p50_ms, p99_ms FROM eddy.metrics",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let (queries, p50, p99) = metrics["query"];
    assert!(queries >= 10 && p99 >= p50 && p50 > 0.0, "{metrics:?}");
    assert!(metrics["publish"].0 >= 30, "{metrics:?}");
    assert!(metrics["relay"].0 >= relayed, "{metrics:?}");
    Ok(())
}

/// Three nodes and a table `kv` on all of them holding the row (1, 1); a client of node 1.
async fn cluster_with_kv() -> anyhow::Result<(TestCluster, Client)> {
    let cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute("CREATE TABLE kv (k BIGINT PRIMARY KEY, v BIGINT)")
        .await?;
    cluster.replicas_of("kv", 3).await?;
    c1.batch_execute("INSERT INTO kv VALUES (1, 1)").await?;
    Ok((cluster, c1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sheds_a_slow_node_and_avoids_a_drained_one() -> anyhow::Result<()> {
    let (cluster, c1) = cluster_with_kv().await?;

    // Healthy: every read is routed by adaptive (whether one goes elsewhere depends on
    // this node's own hiccups; the benchmark measures what that costs).
    let before = routing(&c1).await?;
    for _ in 0..20 {
        let v: i64 = c1
            .query_one("SELECT v FROM kv WHERE k = 1", &[])
            .await?
            .get(0);
        assert_eq!(v, 1);
    }
    let after = routing(&c1).await?;
    assert_eq!(
        count(&after, "routed/adaptive") - count(&before, "routed/adaptive"),
        20
    );

    // Node 1 turns slow: its reads move to the others within a few statements.
    cluster.slow(1, 50)?;
    wait_for("node 1's statements slowed", DEADLINE, || async {
        let r = c1
            .query_one(
                "SELECT statements_slowed FROM eddy.nodes WHERE this_node",
                &[],
            )
            .await
            .ok()?;
        (r.get::<_, Option<i64>>(0)? > 0).then_some(())
    })
    .await?;
    let relayed_at_start = count(&routing(&c1).await?, "relayed");
    let mut relayed_run = 0;
    for _ in 0..200 {
        let before = count(&routing(&c1).await?, "relayed");
        c1.query_one("SELECT v FROM kv WHERE k = 1", &[]).await?;
        let after = count(&routing(&c1).await?, "relayed");
        relayed_run = if after > before { relayed_run + 1 } else { 0 };
        if relayed_run >= 5 {
            break;
        }
    }
    assert!(
        relayed_run >= 5,
        "reads did not move off the slow node ({relayed_at_start} relayed before)"
    );
    let rows = explain(&c1, "SELECT v FROM kv WHERE k = 1").await?;
    assert!(rows.iter().any(|r| r.3 && r.0 != 1), "{rows:?}");

    // Healthy again: after its latency decays, node 1 serves its own reads again.
    cluster.slow(1, 0)?;
    wait_for("reads back on node 1", DEADLINE, || async {
        let before = count(&routing(&c1).await.ok()?, "relayed");
        for _ in 0..5 {
            c1.query_one("SELECT v FROM kv WHERE k = 1", &[])
                .await
                .ok()?;
        }
        let after = count(&routing(&c1).await.ok()?, "relayed");
        (after == before).then_some(())
    })
    .await?;

    // Drained: node 3 is shown draining everywhere and never chosen.
    c1.batch_execute("ALTER CLUSTER DRAIN NODE 3").await?;
    let rr = cluster.client(2).await?;
    rr.batch_execute("SET routing = round_robin").await?;
    wait_node_state(&rr, 3, "draining", DEADLINE).await?;
    let rows = explain(&rr, "SELECT v FROM kv").await?;
    assert!(
        rows.iter().any(|r| r.0 == 3 && r.1 == "draining" && !r.3),
        "{rows:?}"
    );
    for _ in 0..12 {
        let rows = explain(&rr, "SELECT v FROM kv").await?;
        assert!(!rows.iter().any(|r| r.0 == 3 && r.3), "{rows:?}");
    }
    c1.batch_execute("ALTER CLUSTER RESUME NODE 3").await?;
    wait_node_state(&rr, 3, "serving", DEADLINE).await?;
    let bad = c1
        .batch_execute("ALTER CLUSTER DRAIN NODE 9")
        .await
        .expect_err("no node 9");
    assert!(bad.code().is_some(), "{bad}");
    Ok(())
}

/// Groups (other than the metadata group) node `node` leads, as it reports them.
async fn leads(cluster: &TestCluster, node: usize) -> Option<i64> {
    let c = cluster.client(node).await.ok()?;
    let r = c
        .query_one(
            "SELECT count(*) FROM eddy.raft_groups WHERE state = 'leader' AND group_id <> 0",
            &[],
        )
        .await
        .ok()?;
    Some(r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_after_a_restart_and_leave_a_drained_node() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    for t in 0..6 {
        c1.batch_execute(&format!(
            "CREATE TABLE t{t} (k BIGINT PRIMARY KEY, v BIGINT)"
        ))
        .await?;
        cluster.replicas_of(&format!("t{t}"), 3).await?;
    }
    // Node 2 goes away: the others take its leaderships. Back, it leads nothing at first,
    // and the others hand some over until the leaderships are spread.
    cluster.kill9(2)?;
    wait_for("node 1 and 3 leading all six", DEADLINE, || async {
        let (a, b) = (leads(&cluster, 1).await?, leads(&cluster, 3).await?);
        (a + b == 6).then_some(())
    })
    .await?;
    cluster.restart(2).await?;
    wait_for(
        "the leaderships spread again",
        Duration::from_secs(60),
        || async {
            let n: Vec<i64> = vec![
                leads(&cluster, 1).await?,
                leads(&cluster, 2).await?,
                leads(&cluster, 3).await?,
            ];
            (n.iter().sum::<i64>() == 6 && n.iter().all(|k| (1..=3).contains(k)) && n[1] >= 1)
                .then_some(())
        },
    )
    .await?;
    let mut balanced = 0;
    for n in [1, 3] {
        balanced += count(
            &routing(&cluster.client(n).await?).await?,
            "leader_moves/balance",
        );
    }
    assert!(balanced >= 1, "no leader moved to balance");

    // Drained: node 2 hands every leadership over, and writes go on meanwhile.
    let had = leads(&cluster, 2).await.unwrap_or(0);
    c1.batch_execute("ALTER CLUSTER DRAIN NODE 2").await?;
    wait_for(
        "node 2 leading nothing",
        Duration::from_secs(60),
        || async { (leads(&cluster, 2).await? == 0).then_some(()) },
    )
    .await?;
    for t in 0..6 {
        c1.execute(&format!("INSERT INTO t{t} VALUES (1, 1)"), &[])
            .await?;
    }
    let c2 = cluster.client(2).await?;
    let counters = routing(&c2).await?;
    assert!(
        had == 0 || count(&counters, "leader_moves/drain") >= 1,
        "node 2 led {had} when drained: {counters:?}"
    );
    // Resumed, it takes its share back.
    c1.batch_execute("ALTER CLUSTER RESUME NODE 2").await?;
    wait_for("node 2 leading again", Duration::from_secs(60), || async {
        (leads(&cluster, 2).await? >= 1).then_some(())
    })
    .await?;
    for t in 0..6 {
        let v: i64 = c1
            .query_one(&format!("SELECT count(*) FROM t{t}"), &[])
            .await?
            .get(0);
        assert_eq!(v, 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_node_is_flagged_and_its_reads_move_away() -> anyhow::Result<()> {
    let (cluster, c1) = cluster_with_kv().await?;
    // Node 1 alone serves a steady stream of cheap statements: far above the cluster's
    // mean, and above the floor of 200/s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let c = cluster.client(1).await?;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.simple_query("SELECT 1").await.is_err() {
                    break;
                }
            }
        }));
    }
    wait_for(
        "node 1 flagged hot, as node 2 sees it",
        DEADLINE,
        || async {
            let c2 = cluster.client(2).await.ok()?;
            let r = c2
                .query_one("SELECT hot FROM eddy.nodes WHERE node_id = 1", &[])
                .await
                .ok()?;
            r.get::<_, Option<bool>>(0)?.then_some(())
        },
    )
    .await?;
    assert!(count(&routing(&c1).await?, "hotspots/detected") >= 1);
    // Its own reads now go to the others.
    let before = count(&routing(&c1).await?, "relayed");
    for _ in 0..10 {
        c1.query_one("SELECT v FROM kv WHERE k = 1", &[]).await?;
    }
    let after = count(&routing(&c1).await?, "relayed");
    assert!(after - before >= 8, "{before} -> {after} relayed while hot");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    wait_for("node 1 no longer hot", DEADLINE, || async {
        let r = c1
            .query_one("SELECT hot FROM eddy.nodes WHERE node_id = 1", &[])
            .await
            .ok()?;
        (!r.get::<_, Option<bool>>(0)?).then_some(())
    })
    .await?;
    Ok(())
}
