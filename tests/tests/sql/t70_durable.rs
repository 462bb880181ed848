//! Durable subscriptions: FETCH/ACK, redelivery after ack_wait, the dead-letter topic,
//! restarts, consumer groups, key ordering, and eddy.subscriptions.

use std::collections::BTreeSet;
use std::time::Duration;

use eddy_tests::{until_fetches_wait, TestNode};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// (partition, offset, n, deliveries) of each fetched row.
async fn fetch(c: &Client, sql: &str) -> anyhow::Result<Vec<(i32, i64, i32, i32)>> {
    let rows = c.query(sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("_partition"),
                r.get("_offset"),
                r.get("n"),
                r.get("_deliveries"),
            )
        })
        .collect())
}

fn ack_sql(sub: &str, rows: &[(i32, i64, i32, i32)]) -> String {
    let pairs: Vec<String> = rows.iter().map(|r| format!("({}, {})", r.0, r.1)).collect();
    format!("ACK SUBSCRIPTION {sub} {}", pairs.join(", "))
}

async fn publish(c: &Client, range: std::ops::Range<i32>) -> anyhow::Result<()> {
    let values: Vec<String> = range.map(|i| format!("('k{}', {i})", i % 5)).collect();
    c.batch_execute(&format!(
        "INSERT INTO t (_key, n) VALUES {}",
        values.join(",")
    ))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_ack_survive_restart_and_redeliver_unacked_rows() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT) WITH (partitions = 2)")
        .await?;
    publish(&c, 0..10).await?;
    c.batch_execute(
        "CREATE SUBSCRIPTION s ON t WHERE n % 2 = 0 FROM BEGINNING WITH (ack_wait = '1h')",
    )
    .await?;
    publish(&c, 10..20).await?;
    let first = fetch(&c, "FETCH 6 FROM SUBSCRIPTION s").await?;
    assert_eq!(first.len(), 6);
    assert!(
        first.iter().all(|r| r.2 % 2 == 0 && r.3 == 1),
        "filtered, first delivery: {first:?}"
    );
    // Ack four of them; the other two stay leased to this (soon dead) consumer.
    let tag = c.simple_query(&ack_sql("s", &first[..4])).await?;
    assert!(
        matches!(
            tag.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(4))
        ),
        "{tag:?}"
    );
    let node = node.restart().await?;
    let c = node.client().await?;
    // After the restart: every unacked row (the two leased ones again, and the rest), never an acked one.
    let mut rest = Vec::new();
    loop {
        let got = fetch(&c, "FETCH 100 FROM SUBSCRIPTION s").await?;
        if got.is_empty() {
            break;
        }
        c.batch_execute(&ack_sql("s", &got)).await?;
        rest.extend(got);
    }
    let acked: BTreeSet<i32> = first[..4].iter().map(|r| r.2).collect();
    let again: BTreeSet<i32> = first[4..].iter().map(|r| r.2).collect();
    let rest_ns: Vec<i32> = rest.iter().map(|r| r.2).collect();
    assert!(
        rest_ns.iter().all(|n| !acked.contains(n)),
        "no acked row comes back: {rest_ns:?}"
    );
    assert!(
        again.iter().all(|n| rest_ns.contains(n)),
        "unacked rows are delivered again"
    );
    assert!(
        rest.iter()
            .filter(|r| again.contains(&r.2))
            .all(|r| r.3 == 2),
        "second delivery counted: {rest:?}"
    );
    let mut all: Vec<i32> = acked
        .iter()
        .copied()
        .chain(rest_ns.iter().copied())
        .collect();
    all.sort();
    assert_eq!(
        all,
        (0..20).filter(|n| n % 2 == 0).collect::<Vec<_>>(),
        "exactly the matching rows, once acked"
    );
    for p in 0..2 {
        let offs: Vec<i64> = rest
            .iter()
            .filter(|r| r.0 == p && !again.contains(&r.2))
            .map(|r| r.1)
            .collect();
        let mut sorted = offs.clone();
        sorted.sort();
        assert_eq!(offs, sorted, "partition {p}: new rows in offset order");
    }
    // A FETCH with nothing to deliver waits for its timeout, then returns no rows.
    assert!(
        fetch(&c, "FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '200ms')")
            .await?
            .is_empty()
    );
    let waiting = tokio::spawn({
        let addr = node.addr();
        async move {
            let c2 = eddy_tests::connect(addr).await?;
            fetch(&c2, "FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '20s')").await
        }
    });
    until_fetches_wait(&c, "name = 's'", 1).await?;
    publish(&c, 100..101).await?;
    let live = waiting.await??;
    assert_eq!(
        live.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![100],
        "woken by the publish"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_rows_come_back_after_ack_wait_then_go_to_the_dlq() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT)").await?;
    c.batch_execute("CREATE SUBSCRIPTION s ON t WITH (ack_wait = '300ms', max_deliver = 2)")
        .await?;
    publish(&c, 0..3).await?;
    let one = fetch(&c, "FETCH 10 FROM SUBSCRIPTION s").await?;
    assert_eq!(
        one.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 1), (2, 1)]
    );
    c.batch_execute("ACK SUBSCRIPTION s (0, 1)").await?;
    // Leased: nothing to deliver before ack_wait; the FETCH waits for the leases to run out.
    let two = fetch(&c, "FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '20s')").await?;
    assert_eq!(
        two.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(),
        vec![(0, 2), (2, 2)],
        "redelivered after ack_wait"
    );
    // NACK: row 2 is available again at once (its third delivery would exceed max_deliver).
    let t = c
        .simple_query("NACK SUBSCRIPTION s (0, 2), (0, 99)")
        .await?;
    assert!(
        matches!(
            t.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
        ),
        "{t:?}"
    );
    // After max_deliver deliveries both go to the dead-letter topic instead.
    let three = fetch(&c, "FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '2s')").await?;
    assert!(three.is_empty(), "{three:?}");
    let dlq = c.query("SELECT source_partition, source_offset, deliveries, n, _key FROM s_dlq ORDER BY source_offset", &[]).await?;
    let dlq: Vec<(i32, i64, i32, i32, String)> = dlq
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        dlq,
        vec![(0, 0, 2, 0, "k0".into()), (0, 2, 2, 2, "k2".into())]
    );
    let stats = c
        .query_one(
            "SELECT pending, dead_lettered, acked, lag FROM eddy.subscriptions WHERE name = 's'",
            &[],
        )
        .await?;
    assert_eq!(
        (
            stats.get::<_, i64>(0),
            stats.get::<_, i64>(1),
            stats.get::<_, i64>(2),
            stats.get::<_, i64>(3)
        ),
        (0, 2, 1, 0)
    );
    // Errors.
    let e = c
        .batch_execute("FETCH 1 FROM SUBSCRIPTION nope")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    let e = c
        .batch_execute("CREATE SUBSCRIPTION s ON t")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::DUPLICATE_TABLE));
    c.batch_execute("CREATE SUBSCRIPTION IF NOT EXISTS s ON t")
        .await?;
    let e = c.batch_execute("DROP TOPIC t").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
        "{e:?}"
    );
    let e = c
        .batch_execute("CREATE SUBSCRIPTION x ON t WITH (ordering = 'sideways')")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_PARAMETER_VALUE));
    let e = c.batch_execute("ACK SUBSCRIPTION s (0)").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR));
    let shown = c.simple_query("SHOW SUBSCRIPTIONS").await?;
    assert!(shown.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get("name") == Some("s"))
    ));
    c.batch_execute("DROP SUBSCRIPTION s; DROP TOPIC t").await?;
    let e = c.batch_execute("SELECT * FROM s_dlq").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::UNDEFINED_TABLE),
        "the DLQ goes with its subscription"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_a_subscription_without_duplicates() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT) WITH (partitions = 3)")
        .await?;
    c.batch_execute("CREATE SUBSCRIPTION g ON t FROM BEGINNING WITH (ack_wait = '1h')")
        .await?;
    publish(&c, 0..600).await?;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let addr = node.addr();
        tasks.push(tokio::spawn(async move {
            let c = eddy_tests::connect(addr).await?;
            let mut mine = Vec::new();
            loop {
                let got =
                    fetch(&c, "FETCH 25 FROM SUBSCRIPTION g WITH (timeout = '300ms')").await?;
                if got.is_empty() {
                    return Ok::<_, anyhow::Error>(mine);
                }
                c.batch_execute(&ack_sql("g", &got)).await?;
                mine.extend(got.into_iter().map(|r| r.2));
            }
        }));
    }
    let a = tasks.remove(0).await??;
    let b = tasks.remove(0).await??;
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers got rows ({} / {})",
        a.len(),
        b.len()
    );
    let mut all: Vec<i32> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..600).collect::<Vec<_>>(),
        "every row delivered to exactly one consumer"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_holds_a_key_back_while_an_earlier_row_is_unacked() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT)").await?;
    c.batch_execute("CREATE SUBSCRIPTION o ON t WITH (ordering = 'key', ack_wait = '1h')")
        .await?;
    c.batch_execute(
        "INSERT INTO t (_key, n) VALUES ('a', 1), ('a', 2), ('b', 3), ('a', 4), ('b', 5)",
    )
    .await?;
    let first = fetch(&c, "FETCH 10 FROM SUBSCRIPTION o").await?;
    assert_eq!(
        first.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![1, 3],
        "one row per key in flight"
    );
    let other = eddy_tests::connect(node.addr()).await?;
    assert!(
        fetch(&other, "FETCH 10 FROM SUBSCRIPTION o")
            .await?
            .is_empty(),
        "a second consumer gets no row of a busy key"
    );
    c.batch_execute("ACK SUBSCRIPTION o (0, 0)").await?;
    let next = fetch(&other, "FETCH 10 FROM SUBSCRIPTION o").await?;
    assert_eq!(
        next.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![2],
        "key a continues in order; b still busy"
    );
    c.batch_execute("ACK SUBSCRIPTION o (0, 1), (0, 2)").await?;
    let last = fetch(&other, "FETCH 10 FROM SUBSCRIPTION o").await?;
    assert_eq!(last.iter().map(|r| r.2).collect::<Vec<_>>(), vec![4, 5]);
    node.shutdown().await
}

/// Regression: datafusion-pg-catalog's schema holds the catalog list that holds it, which
/// kept the store (and the RocksDB lock) alive after shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_releases_its_data_directory() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC t (n INT); CREATE SUBSCRIPTION s ON t; FETCH 1 FROM SUBSCRIPTION s",
    )
    .await?;
    drop(c);
    let node = node.restart().await?;
    let c = node.client().await?;
    assert_eq!(c.query("FETCH 1 FROM SUBSCRIPTION s", &[]).await?.len(), 0);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_can_be_cancelled_and_loses_nothing() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT); CREATE SUBSCRIPTION s ON t")
        .await?;
    let cancel = c.cancel_token();
    let waiting = tokio::spawn(async move {
        let r = c
            .query("FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '1h')", &[])
            .await;
        (c, r)
    });
    let watch = node.client().await?;
    until_fetches_wait(&watch, "name = 's'", 1).await?;
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let (c, r) = tokio::time::timeout(Duration::from_secs(20), waiting).await??;
    let e = r.expect_err("cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    // The cancelled FETCH no longer counts as waiting.
    until_fetches_wait(&watch, "name = 's'", 0).await?;
    publish(&c, 0..3).await?;
    let got = fetch(&c, "FETCH 10 FROM SUBSCRIPTION s WITH (timeout = '5s')").await?;
    assert_eq!(
        got.iter().map(|r| r.2).collect::<BTreeSet<_>>(),
        (0..3).collect(),
        "{got:?}"
    );
    node.shutdown().await
}
