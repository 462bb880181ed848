//! Ephemeral subscription transports besides COPY: cursors with FETCH timeouts, LISTEN,
//! table change streams, heartbeats, and a paused subscriber's bounded memory.

use std::time::Duration;

use eddy_tests::{connect_listening, until_fetches_wait, wait_for, TestNode};
use futures::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

/// (partition, offset, n) of each row.
fn rows(rs: &[tokio_postgres::Row]) -> Vec<(i32, i64, i32)> {
    rs.iter()
        .map(|r| (r.get("_partition"), r.get("_offset"), r.get("n")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_fetch_waits_up_to_its_timeout_and_keeps_offset_order() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let publisher = node.client().await?;
    publisher
        .batch_execute("CREATE TOPIC t (n INT) WITH (partitions = 3)")
        .await?;
    let values: Vec<String> = (0..60).map(|i| format!("('k{}', {i})", i % 7)).collect();
    publisher
        .batch_execute(&format!(
            "INSERT INTO t (_key, n) VALUES {}",
            values.join(",")
        ))
        .await?;

    let c = node.client().await?;
    c.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE t FROM BEGINNING")
        .await?;
    let mut got = Vec::new();
    while got.len() < 60 {
        let batch = c.query("FETCH 25 c WITH (timeout = '5s')", &[]).await?;
        assert!(
            !batch.is_empty() && batch.len() <= 25,
            "1..=25 rows per FETCH, got {}",
            batch.len()
        );
        got.extend(rows(&batch));
    }
    // Caught up: the timeout passes and FETCH answers with no rows (not an error).
    assert!(c
        .query("FETCH 10 c WITH (timeout = '200ms')", &[])
        .await?
        .is_empty());
    // A row published while FETCH waits is returned by that FETCH.
    let waiting = tokio::spawn({
        let c2 = c;
        async move {
            let r = c2.query("FETCH 10 c WITH (timeout = '20s')", &[]).await;
            (c2, r)
        }
    });
    until_fetches_wait(&publisher, "kind = 'cursor'", 1).await?;
    publisher
        .batch_execute("INSERT INTO t (_key, n) VALUES ('k1', 100)")
        .await?;
    let (c, live) = waiting.await?;
    let live = rows(&live?);
    assert_eq!(live.iter().map(|r| r.2).collect::<Vec<_>>(), vec![100]);
    got.extend(live);

    let mut ns: Vec<i32> = got.iter().map(|r| r.2).collect();
    ns.sort();
    let mut want: Vec<i32> = (0..60).collect();
    want.push(100);
    assert_eq!(ns, want, "every published row exactly once");
    for p in 0..3 {
        let offs: Vec<i64> = got.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        assert_eq!(
            offs,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "partition {p} in offset order"
        );
    }
    // FETCH NEXT / FORWARD n / IN, and CLOSE; an unknown or closed cursor is 34000.
    c.batch_execute("CLOSE c").await?;
    let e = c.query("FETCH 1 c", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_CURSOR_NAME), "{e:?}");
    let e = c
        .batch_execute("DECLARE d CURSOR FOR SUBSCRIBE nope")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    c.batch_execute(
        "DECLARE d CURSOR FOR SUBSCRIBE t WHERE n >= 50 FROM OFFSETS ((0, 0), (1, 0), (2, 0))",
    )
    .await?;
    let e = c
        .batch_execute("DECLARE d CURSOR FOR SUBSCRIBE t")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::DUPLICATE_CURSOR));
    let first = c.query("FETCH NEXT FROM d", &[]).await?;
    assert_eq!(first.len(), 1);
    let more = c
        .query("FETCH FORWARD 100 IN d WITH (timeout = '1s')", &[])
        .await?;
    let mut ns: Vec<i32> = rows(&first)
        .iter()
        .chain(rows(&more).iter())
        .map(|r| r.2)
        .collect();
    while ns.len() < 11 {
        ns.extend(
            rows(&c.query("FETCH 100 d WITH (timeout = '1s')", &[]).await?)
                .iter()
                .map(|r| r.2),
        );
    }
    ns.sort();
    assert_eq!(
        ns,
        (50..60).chain([100]).collect::<Vec<_>>(),
        "filter and explicit offsets"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_over_a_query_pages_through_it() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE u (id INT PRIMARY KEY, name TEXT)")
        .await?;
    c.batch_execute("INSERT INTO u VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')")
        .await?;
    c.batch_execute(
        "BEGIN; DECLARE q NO SCROLL CURSOR WITHOUT HOLD FOR SELECT id, name FROM u ORDER BY id",
    )
    .await?;
    let page =
        |rs: Vec<tokio_postgres::Row>| rs.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>();
    assert_eq!(
        page(c.query("FETCH FORWARD 2 FROM q", &[]).await?),
        vec![1, 2]
    );
    assert_eq!(page(c.query("FETCH 2 q", &[]).await?), vec![3, 4]);
    assert_eq!(page(c.query("FETCH ALL q", &[]).await?), vec![5]);
    assert!(c.query("FETCH 2 q", &[]).await?.is_empty(), "exhausted");
    c.batch_execute("CLOSE q; COMMIT").await?;
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_delivers_each_new_row_as_a_json_notification() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let publisher = node.client().await?;
    publisher
        .batch_execute("CREATE TOPIC alerts (level TEXT, n INT) WITH (partitions = 2)")
        .await?;
    publisher
        .batch_execute("INSERT INTO alerts VALUES ('old', 0)")
        .await?;
    let (listener, mut notes) = connect_listening(node.addr()).await?;
    listener.batch_execute("LISTEN alerts").await?;
    // Published right after LISTEN completed: none is missed.
    let values: Vec<String> = (1..=20)
        .map(|i| format!("('k{}', 'warn', {i})", i % 3))
        .collect();
    publisher
        .batch_execute(&format!(
            "INSERT INTO alerts (_key, level, n) VALUES {}",
            values.join(",")
        ))
        .await?;
    let mut got = Vec::new();
    while got.len() < 20 {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(20), notes.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed"))?;
        assert_eq!(channel, "alerts");
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        assert_eq!(v["level"], "warn", "{payload}");
        assert!(
            v["_offset"].is_i64() && v["_partition"].is_i64() && v["_key"].is_string(),
            "{payload}"
        );
        got.push((
            v["_partition"].as_i64().unwrap_or(-1),
            v["_offset"].as_i64().unwrap_or(-1),
            v["n"].as_i64().unwrap_or(-1),
        ));
    }
    let mut ns: Vec<i64> = got.iter().map(|g| g.2).collect();
    ns.sort();
    assert_eq!(
        ns,
        (1..=20).collect::<Vec<_>>(),
        "exactly the rows published after LISTEN"
    );
    for p in 0..2 {
        let offs: Vec<i64> = got.iter().filter(|g| g.0 == p).map(|g| g.1).collect();
        let mut sorted = offs.clone();
        sorted.sort();
        assert_eq!(offs, sorted, "partition {p} in offset order");
    }
    // The connection still runs queries while it listens; UNLISTEN stops notifications.
    let n: i64 = listener
        .query_one("SELECT count(*) FROM alerts", &[])
        .await?
        .get(0);
    assert_eq!(n, 21);
    listener.batch_execute("UNLISTEN alerts").await?;
    publisher
        .batch_execute("INSERT INTO alerts VALUES ('late', 99)")
        .await?;
    // A round trip on the listener after the insert: a notification would have come first.
    listener.batch_execute("SELECT 1").await?;
    assert!(notes.try_recv().is_err(), "no notification after UNLISTEN");
    let e = listener.batch_execute("LISTEN nope").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_subscription_streams_snapshot_then_changes_with_op() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE users (id INT PRIMARY KEY, name TEXT)")
        .await?;
    c.batch_execute("INSERT INTO users VALUES (1, 'ann'), (2, 'bob')")
        .await?;
    let s = node.client().await?;
    s.batch_execute("DECLARE ch CURSOR FOR SUBSCRIBE users WITH (snapshot = true)")
        .await?;
    c.batch_execute("UPDATE users SET name = 'anna' WHERE id = 1")
        .await?;
    c.batch_execute("DELETE FROM users WHERE id = 2").await?;
    c.batch_execute(
        "INSERT INTO users VALUES (3, 'cy') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    )
    .await?;
    let mut got: Vec<(String, Option<i64>, i32, String)> = Vec::new();
    while got.len() < 5 {
        for r in s.query("FETCH 10 ch WITH (timeout = '5s')", &[]).await? {
            got.push((r.get("_op"), r.get("_offset"), r.get("id"), r.get("name")));
        }
    }
    let op =
        |o: &str, off: Option<i64>, id: i32, name: &str| (o.to_owned(), off, id, name.to_owned());
    assert_eq!(
        got,
        vec![
            op("insert", None, 1, "ann"),
            op("insert", None, 2, "bob"),
            op("update", Some(2), 1, "anna"),
            op("delete", Some(3), 2, "bob"),
            op("insert", Some(4), 3, "cy"),
        ],
        "the snapshot (current rows), then each change in order"
    );
    // Without snapshot, from the beginning of the change log, filtered on _op.
    s.batch_execute("DECLARE d CURSOR FOR SUBSCRIBE users WHERE _op = 'delete' FROM BEGINNING")
        .await?;
    let r = s.query("FETCH 10 d WITH (timeout = '5s')", &[]).await?;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, i32>("id"), 2);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_copy_subscription_sends_heartbeat_rows() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n INT)").await?;
    let stream = c
        .copy_out("COPY (SUBSCRIBE t WITH (heartbeat = '100ms')) TO STDOUT")
        .await?;
    let mut stream = Box::pin(stream);
    for _ in 0..2 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .expect("open")?;
        let line = String::from_utf8_lossy(&chunk).trim_end().to_owned();
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "{line}");
        assert_eq!(
            (fields[0], fields[1], fields[3], fields[4]),
            ("\\N", "\\N", "\\N", "\\N"),
            "heartbeat: {line}"
        );
        assert!(
            fields[2].starts_with("20"),
            "_ts is the current time: {line}"
        );
    }
    // A real row between heartbeats carries its partition and offset.
    node.client()
        .await?
        .batch_execute("INSERT INTO t VALUES (7)")
        .await?;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .expect("open")?;
        let line = String::from_utf8_lossy(&chunk).trim_end().to_owned();
        if !line.starts_with("\\N") {
            assert!(
                line.starts_with("0\t0\t") && line.ends_with("\t7"),
                "{line}"
            );
            break;
        }
    }
    node.shutdown().await
}

/// Reads eddy.subscriptions' (lag, buffered_bytes) for the copy subscription on `topic`.
async fn copy_sub_stats(
    c: &tokio_postgres::Client,
    topic: &str,
) -> anyhow::Result<Option<(i64, i64, i64)>> {
    let rows = c
        .query(
            "SELECT lag, buffered_bytes, delivered FROM eddy.subscriptions WHERE kind = 'copy' AND topic = $1",
            &[&topic],
        )
        .await?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscriber_neither_stalls_publishers_nor_grows_server_memory(
) -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let publisher = node.client().await?;
    publisher
        .batch_execute("CREATE TOPIC big (body TEXT) WITH (partitions = 2)")
        .await?;
    // A subscriber that starts a COPY stream and then never reads its socket.
    let paused = node.client().await?;
    let stream = paused.copy_out("COPY (SUBSCRIBE big) TO STDOUT").await?;
    let _held = Box::pin(stream);
    // 40 MB, far more than socket buffers hold: the publisher completes every row.
    let body = "x".repeat(1000);
    let values: Vec<String> = (0..1000).map(|_| format!("('{body}')")).collect();
    let insert = format!("INSERT INTO big (body) VALUES {}", values.join(","));
    for _ in 0..40 {
        publisher.batch_execute(&insert).await?;
    }
    let n: i64 = publisher
        .query_one("SELECT count(*) FROM big", &[])
        .await?
        .get(0);
    assert_eq!(
        n, 40_000,
        "the publisher finished while the subscriber was paused"
    );
    // The server holds at most one chunk for the subscriber, however far behind it is.
    let (lag, buffered, delivered) = wait_for(
        "the subscriber to stall",
        Duration::from_secs(20),
        || async {
            let s = copy_sub_stats(&publisher, "big").await.ok().flatten()?;
            // Stalled: what it has been handed stopped moving.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again = copy_sub_stats(&publisher, "big").await.ok().flatten()?;
            (s.2 == again.2).then_some(again)
        },
    )
    .await?;
    println!("paused subscriber: lag {lag} rows, delivered {delivered}, server buffers {buffered} bytes for it");
    assert!(
        lag > 10_000,
        "the subscriber is far behind (lag {lag}, delivered {delivered})"
    );
    assert!(
        buffered <= 4 << 20,
        "at most one chunk buffered for it, got {buffered} bytes"
    );
    let rows: Vec<SimpleQueryMessage> = publisher.simple_query("SELECT 1").await?;
    assert!(!rows.is_empty());
    node.shutdown().await
}
