//! Error classes as a client sees them on a real cluster: "not applied, retry"
//! (`40001`), "may or may not have been applied" (`08007`), and an internal failure
//! (`XX000`, whose message carries an id and no internal text).

use eddy_tests::cluster::TestCluster;

/// A 3-node cluster with a raft table `kv (k TEXT PRIMARY KEY, v INT)` after `setup`, its
/// group's leader, and a follower.
async fn kv_cluster(setup: &str) -> anyhow::Result<(TestCluster, usize, usize)> {
    let cluster = TestCluster::start(3).await?;
    let sql = format!("CREATE TABLE kv (k TEXT PRIMARY KEY, v INT); {setup}");
    cluster.client(1).await?.batch_execute(&sql).await?;
    let leader = cluster.leader_of(1, "kv", 0).await?;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    Ok((cluster, leader, follower))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_after_taking_a_write_answers_outcome_unknown() -> anyhow::Result<()> {
    let (cluster, leader, _) = kv_cluster("INSERT INTO kv VALUES ('a', 1)").await?;
    let c = cluster.client(leader).await?;
    cluster.cut_off(leader).await?;
    // The leader appends the write to its log and can never get it acknowledged: it
    // cannot know whether a later leader will keep it.
    let err = c
        .execute("INSERT INTO kv VALUES ('b', 2)", &[])
        .await
        .expect_err("no quorum");
    assert_eq!(err.code().map(|c| c.code()), Some("08007"), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_answers_retry_and_applies_nothing() -> anyhow::Result<()> {
    let (cluster, leader, follower) = kv_cluster("").await?;
    let c = cluster.client(follower).await?;
    cluster.cut_off(follower).await?;
    let err = c
        .execute("INSERT INTO kv VALUES ('b', 2)", &[])
        .await
        .expect_err("no leader reachable");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err:?}");
    cluster.heal()?;
    let n: i64 = cluster
        .client(leader)
        .await?
        .query_one("SELECT count(*) FROM kv", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "the refused write was not applied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_failure_reaches_the_client_as_xx000_without_its_text() -> anyhow::Result<()> {
    let (cluster, leader, follower) = kv_cluster("").await?;
    let c = cluster.client(follower).await?;
    // The leader's storage "fails" on every write forwarded to it.
    cluster.fail_forwards(leader)?;
    let err = eddy_tests::wait_for(
        "the injected failure",
        std::time::Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                let e = c
                    .execute("INSERT INTO kv VALUES ('a', 1)", &[])
                    .await
                    .err()?;
                (e.code().map(|c| c.code()) == Some("XX000")).then_some(e)
            }
        },
    )
    .await?;
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("internal error (id "), "{msg}");
    for secret in ["/var/lib/eddy", "No space left", "IO error", "injected"] {
        assert!(!msg.contains(secret), "internal text on the wire: {msg}");
    }
    // The failure came from the fault injected on the leader.
    cluster.wait_fault(leader, "forwards_failed").await?;
    // The node stays up, and the same statement succeeds once the fault is gone.
    cluster.heal()?;
    eddy_tests::wait_for(
        "the write to go through",
        std::time::Duration::from_secs(10),
        || {
            let c = &c;
            async move {
                c.execute("INSERT INTO kv VALUES ('a', 1) ON CONFLICT DO NOTHING", &[])
                    .await
                    .ok()
            }
        },
    )
    .await?;
    let n: i64 = c.query_one("SELECT count(*) FROM kv", &[]).await?.get(0);
    assert_eq!(n, 1);
    Ok(())
}
