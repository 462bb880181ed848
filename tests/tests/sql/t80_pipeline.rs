//! Pipelining on one connection: tokio-postgres sends many statements before reading an
//! answer; eddy submits blind writes (`INSERT .. VALUES`) without waiting for the previous
//! one's acknowledgement, answers in order, and lets reads see every write before them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use eddy_tests::{wait_for, TestNode};
use futures::future::join_all;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// One statement's parameters.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Commits (fsync'd write batches) of the node so far.
fn commits(node: &TestNode) -> u64 {
    node.store().stats().commits.load(Ordering::Relaxed)
}

/// Write requests committed in place by their writer's own thread so far.
fn in_place(node: &TestNode) -> u64 {
    node.store()
        .stats()
        .commits_in_place
        .load(Ordering::Relaxed)
}

/// Waits until the node has committed nothing for 300 ms (new Raft groups finish starting
/// in the background after CREATE returns).
async fn settled(node: &TestNode) -> anyhow::Result<()> {
    let requests = || node.store().stats().write_requests.load(Ordering::Relaxed);
    let (mut last, mut quiet) = (requests(), 0);
    // Polled every 20 ms: 15 polls without a new request.
    wait_for("the node to go quiet", Duration::from_secs(20), || {
        let now = requests();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
        std::future::ready((quiet >= 15).then_some(()))
    })
    .await
}

#[tokio::test]
async fn pipelined_inserts_keep_their_order_and_share_commits() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC p (payload TEXT) WITH (partitions = 1)")
        .await?;
    let ins = c
        .prepare("INSERT INTO p (payload) VALUES ($1) RETURNING _offset, payload")
        .await?;
    const N: usize = 500;
    let before = commits(&node);
    let alone_before = in_place(&node);
    // join_all polls the queries in order, so tokio-postgres sends them in this order
    // without waiting for any answer.
    let payloads: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    let params: Vec<Params> = payloads.iter().map(|p| vec![p as _]).collect();
    let answers = join_all(params.iter().map(|p| c.query_one(&ins, p))).await;
    let spent = commits(&node) - before;
    let alone = in_place(&node) - alone_before;
    for (i, a) in answers.into_iter().enumerate() {
        let row = a?;
        assert_eq!(row.get::<_, i64>(0), i as i64, "offset of publish {i}");
        assert_eq!(
            row.get::<_, String>(1),
            payloads[i],
            "RETURNING of publish {i}"
        );
    }
    // Served one at a time, every publish would need a commit of its own; pipelined,
    // publishes waiting together share them.
    assert!(
        spent < N as u64,
        "{N} pipelined publishes took {spent} commits ({alone} committed alone in place)"
    );
    let stored: Vec<String> = c
        .query("SELECT payload FROM p ORDER BY _offset", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, payloads);
    node.shutdown().await
}

#[tokio::test]
async fn a_failing_pipelined_insert_fails_alone() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT, note TEXT)")
        .await?;
    let put = c.prepare("INSERT INTO kv (k, v) VALUES ($1, $2)").await?;
    let put_note = c
        .prepare("INSERT INTO kv (k, note) VALUES ($1, $2)")
        .await?;
    let rows: Vec<(String, i64)> = vec![
        ("a".into(), 1),
        ("b".into(), 2),
        ("a".into(), 3), // duplicate key
        ("c".into(), 4),
    ];
    let params: Vec<Params> = rows.iter().map(|(k, v)| vec![k as _, v as _]).collect();
    let answers = join_all(params.iter().map(|p| c.execute(&put, p))).await;
    assert_eq!(answers[0].as_ref().ok(), Some(&1));
    assert_eq!(answers[1].as_ref().ok(), Some(&1));
    let err = answers[2]
        .as_ref()
        .expect_err("the duplicate key must fail");
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(answers[3].as_ref().ok(), Some(&1));
    // An oversize row in the middle of a pipeline fails that statement alone (54000);
    // the writes around it still land.
    let big = "x".repeat(2 << 20);
    let mixed = join_all([
        c.execute(&put, &[&"d", &5i64]),
        c.execute(&put_note, &[&"e", &big]),
        c.execute(&put, &[&"f", &6i64]),
    ])
    .await;
    assert!(mixed[0].is_ok() && mixed[2].is_ok(), "{mixed:?}");
    let err = mixed[1].as_ref().expect_err("an oversize row must fail");
    assert_eq!(err.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{err}");
    let got: Vec<(String, i64)> = c
        .query("SELECT k, v FROM kv ORDER BY k", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), 1),
            ("b".into(), 2),
            ("c".into(), 4),
            ("d".into(), 5),
            ("f".into(), 6)
        ]
    );
    node.shutdown().await
}

#[tokio::test]
async fn reads_and_prepares_in_a_pipeline_see_the_writes_before_them() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC t (n BIGINT) WITH (partitions = 3);
         CREATE TABLE u (id BIGINT PRIMARY KEY, n BIGINT)",
    )
    .await?;
    let pub_t = c.prepare("INSERT INTO t (n) VALUES ($1)").await?;
    let put_u = c.prepare("INSERT INTO u (id, n) VALUES ($1, $1)").await?;
    let count_t = c.prepare("SELECT count(*) FROM t").await?;
    let get_u = c.prepare("SELECT n FROM u WHERE id = $1").await?;
    for round in 0..5i64 {
        let ns: Vec<i64> = (0..40).map(|i| round * 40 + i).collect();
        let params: Vec<Params> = ns.iter().map(|n| vec![n as _]).collect();
        let mut writes = Vec::new();
        for p in &params {
            writes.push(c.execute(&pub_t, p));
            writes.push(c.execute(&put_u, p));
        }
        // Sent after the writes, on the same connection, before any answer is read: a
        // Parse (prepare), a count and a point read must all see them.
        let last = round * 40 + 39;
        let point_params: Params = vec![&last];
        let (written, prepared, count, point) = tokio::join!(
            join_all(writes),
            c.prepare("SELECT max(n) FROM t"),
            c.query_one(&count_t, &[]),
            c.query_opt(&get_u, &point_params),
        );
        for w in written {
            assert_eq!(w?, 1);
        }
        let max: i64 = c.query_one(&prepared?, &[]).await?.get(0);
        assert_eq!(max, last);
        assert_eq!(count?.get::<_, i64>(0), (round + 1) * 40);
        assert_eq!(point?.map(|r| r.get::<_, i64>(0)), Some(last));
    }
    node.shutdown().await
}

#[tokio::test]
async fn a_lone_insert_commits_in_place_and_one_over_partitions_queues() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC lone (payload TEXT) WITH (partitions = 4)")
        .await?;
    let ins = c.prepare("INSERT INTO lone (payload) VALUES ($1)").await?;
    settled(&node).await?;
    // Background writers (the new groups' Raft state) came last: this connection's
    // writes count as alone once two in a row were its own.
    for _ in 0..2 {
        c.execute(&ins, &[&"warm-up"]).await?;
    }
    // One client, one write at a time: each is committed by its session's own thread.
    let before = in_place(&node);
    for i in 0..5 {
        c.execute(&ins, &[&format!("m{i}")]).await?;
    }
    assert_eq!(in_place(&node) - before, 5);
    // One statement writing several partitions makes a write to each at once: they go
    // through the queue together, none commits alone ahead of the others.
    let before = in_place(&node);
    let written = c
        .query(
            "INSERT INTO lone (payload) VALUES ('a'), ('b'), ('c'), ('d') RETURNING _partition",
            &[],
        )
        .await?;
    let mut partitions: Vec<i32> = written.iter().map(|r| r.get(0)).collect();
    partitions.sort();
    partitions.dedup();
    assert!(partitions.len() > 1, "{partitions:?}");
    assert_eq!(in_place(&node) - before, 0);
    let n: i64 = c.query_one("SELECT count(*) FROM lone", &[]).await?.get(0);
    assert_eq!(n, 11);
    node.shutdown().await
}
