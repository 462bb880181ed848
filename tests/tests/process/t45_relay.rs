//! Statements on a node that holds no replica of what they read: relayed to one that
//! does (queries, cursors, LISTEN, COPY, subscriptions), also while replicas die.

use std::time::Duration;

use eddy_tests::cluster::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_on_a_node_without_a_replica_run_on_a_node_that_has_one() -> anyhow::Result<()> {
    use futures::StreamExt;
    // Relayed pages small enough to outgrow (see the end of the portal part).
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), "[query]\nrelay_page_bytes = 1000\n")?;
    let path = config.path().to_string_lossy().into_owned();
    let mut cluster =
        TestCluster::start_with(3, |_| vec!["--config".to_owned(), path.clone()]).await?;
    cluster
        .client(1)
        .await?
        .batch_execute("CREATE TOPIC solo (item TEXT) WITH (partitions = 3, replicas = 1)")
        .await?;
    // All partitions of an object share one set of nodes: here, one node.
    let holders = cluster.replicas_of("solo", 3).await?;
    let [(holder, 3)] = holders[..] else {
        panic!("one node holds the three partitions: {holders:?}")
    };
    let others: Vec<usize> = (1..=3).filter(|n| *n != holder).collect();
    let (a, b) = (others[0], others[1]);

    // A subscription on node a, rows published through node b: neither holds a replica.
    let sub = cluster.client(a).await?;
    let copy = sub
        .copy_out("COPY (SUBSCRIBE solo FROM BEGINNING) TO STDOUT")
        .await?;
    let cb = cluster.client(b).await?;
    let items: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    for item in &items {
        cb.execute("INSERT INTO solo (item) VALUES ($1)", &[item])
            .await?;
    }
    let mut copy = Box::pin(copy);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < items.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(30), copy.next())
            .await?
            .expect("the relayed subscription goes on")?;
        let line = String::from_utf8(chunk.to_vec())?;
        // _partition, _offset, _ts, _key, item
        seen.insert(
            line.trim_end()
                .rsplit('\t')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), items);

    // Queries on node a, simple and extended (parameters, binary results).
    let ca = cluster.client(a).await?;
    let n: i64 = ca.query_one("SELECT count(*) FROM solo", &[]).await?.get(0);
    assert_eq!(n, 30, "a strong read through node {a}");
    // Several statements in one simple query run there together.
    let counts: Vec<String> = ca
        .simple_query(
            "SELECT count(*) FROM solo; SELECT 1; SELECT count(*) FROM solo WHERE item >= 'm10'",
        )
        .await?
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec!["30", "1", "20"]);
    // eddy.partitions on node a: leader and high watermarks as the holder reports them.
    let parts: Vec<(i32, Option<i64>, Option<i64>, String)> = ca
        .query(
            "SELECT partition, leader, next_offset, replicas FROM eddy.partitions
             WHERE topic = 'solo' ORDER BY partition",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(
        parts
            .iter()
            .all(|(_, l, _, r)| *l == Some(holder as i64) && *r == holder.to_string()),
        "{parts:?}"
    );
    let written: i64 = parts.iter().map(|(_, _, n, _)| n.unwrap_or(0)).sum();
    assert_eq!(written, 30, "high watermarks from the holder: {parts:?}");

    let row = ca
        .query_one("SELECT _offset, item FROM solo WHERE item = $1", &[&"m07"])
        .await?;
    assert_eq!(row.get::<_, String>(1), "m07");
    // One prepared statement, run again with other values (prepared once on the holder).
    let by_item = ca
        .prepare("SELECT count(*) FROM solo WHERE item >= $1")
        .await?;
    for (from, want) in [("m00", 30i64), ("m25", 5), ("m29", 1), ("z", 0)] {
        let n: i64 = ca.query_one(&by_item, &[&from]).await?.get(0);
        assert_eq!(n, want, "items from {from}");
    }
    // A statement failing there (at run time) fails here with its SQLSTATE, again when
    // repeated, and the connection goes on.
    for _ in 0..2 {
        let err = ca
            .query("SELECT CAST(item AS BIGINT) FROM solo", &[])
            .await
            .expect_err("'m00' is no number");
        assert!(err.code().is_some(), "{err}");
    }
    ca.batch_execute("SET consistency = 'local'").await?;
    let local = ca.simple_query("SELECT count(*) FROM solo").await?;
    let count = local.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("30"), "local read of the replica");
    ca.batch_execute("SET consistency = 'strong'").await?;

    // A cursor declared through node a pages on the holder.
    ca.batch_execute("DECLARE c CURSOR FOR SELECT item FROM solo ORDER BY item")
        .await?;
    let first = ca.query("FETCH 10 FROM c", &[]).await?;
    let rest = ca.query("FETCH ALL FROM c", &[]).await?;
    let paged: Vec<String> = first.iter().chain(&rest).map(|r| r.get(0)).collect();
    assert_eq!((first.len(), paged), (10, items.clone()));
    ca.batch_execute("CLOSE c").await?;
    let err = ca.query("FETCH 1 FROM c", &[]).await.expect_err("closed");
    assert_eq!(err.code().map(|c| c.code()), Some("34000"));

    // A portal run a page at a time (an Execute's row limit, like JDBC's fetch size)
    // through node a: the holder runs it, node a hands out the pages.
    let mut cp = cluster.client(a).await?;
    let tx = cp.transaction().await?;
    let sql = "SELECT item FROM solo WHERE item >= $1 ORDER BY item";
    let portal = tx.bind(sql, &[&"m05"]).await?;
    let mut pages: Vec<Vec<String>> = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).await?;
        if rows.is_empty() {
            break;
        }
        anyhow::ensure!(pages.len() < 10, "the portal never ends: {pages:?}");
        pages.push(rows.iter().map(|r| r.get(0)).collect());
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(pages.concat(), items[5..]);
    // Bound again, a portal starts over.
    let again = tx.bind(sql, &[&"m20"]).await?;
    let rows = tx.query_portal(&again, 3).await?;
    let firsts: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(firsts, items[20..23]);
    tx.commit().await?;
    // Rows past the first page may take up to query.relay_page_bytes (1,000 here) on
    // node a: 900 rows of a join outgrow it, and the Execute fails with 54000.
    let tx = cp.transaction().await?;
    let big = tx
        .bind(
            "SELECT a.item FROM solo a, solo b WHERE b.item >= $1",
            &[&"m00"],
        )
        .await?;
    let err = tx
        .query_portal(&big, 10)
        .await
        .expect_err("over the page bytes");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"), "{err:?}");
    drop(tx);
    // The connection and the holder go on.
    let n: i64 = cp.query_one("SELECT count(*) FROM solo", &[]).await?.get(0);
    assert_eq!(n, 30);

    // A durable subscription fetched and acked through node a.
    ca.batch_execute("CREATE SUBSCRIPTION s ON solo FROM BEGINNING")
        .await?;
    let leased = ca
        .query("FETCH 100 FROM SUBSCRIPTION s WITH (timeout = '5s')", &[])
        .await?;
    assert_eq!(leased.len(), 30, "every row leased once");
    let acks: Vec<String> = leased
        .iter()
        .map(|r| {
            format!(
                "({}, {})",
                r.get::<_, i32>("_partition"),
                r.get::<_, i64>("_offset")
            )
        })
        .collect();
    let acked = ca
        .execute(&format!("ACK SUBSCRIPTION s {}", acks.join(", ")), &[])
        .await?;
    assert_eq!(acked, 30);

    // Errors come back with their SQLSTATE, and the connection goes on.
    let err = ca
        .query("SELECT nope FROM solo", &[])
        .await
        .expect_err("no such column");
    assert_eq!(err.code().map(|c| c.code()), Some("42703"));
    let n: i64 = ca.query_one("SELECT count(*) FROM solo", &[]).await?.get(0);
    assert_eq!(n, 30);

    // A cancel reaches the relayed subscription.
    sub.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await?;
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match copy.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        }
    })
    .await?;
    let code = end.and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "the subscription was cancelled"
    );

    // LISTEN on node a: the holder listens, node a passes its notifications on.
    let (listener, mut notes) = eddy_tests::connect_async(cluster.addr(a)).await?;
    listener.batch_execute("LISTEN solo").await?;
    let published = |from: i32| {
        let cb = &cb;
        async move {
            for i in from..from + 5 {
                cb.execute("INSERT INTO solo (item) VALUES ($1)", &[&format!("n{i}")])
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    published(0).await?;
    let mut heard = Vec::new();
    while heard.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(20), notes.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("listener closed"))?;
        let tokio_postgres::AsyncMessage::Notification(n) = message else {
            panic!("a notification, not {message:?}")
        };
        assert_eq!(n.channel(), "solo");
        let v: serde_json::Value = serde_json::from_str(n.payload())?;
        heard.push(v["item"].as_str().unwrap_or_default().to_owned());
    }
    heard.sort();
    assert_eq!(heard, (0..5).map(|i| format!("n{i}")).collect::<Vec<_>>());
    // The connection still runs statements, relayed or not, between notifications.
    let n: i64 = listener
        .query_one("SELECT count(*) FROM solo", &[])
        .await?
        .get(0);
    assert_eq!(n, 35);
    // UNLISTEN follows the LISTEN to its node; so does UNLISTEN *.
    for stop in ["UNLISTEN solo", "UNLISTEN *"] {
        listener.batch_execute(stop).await?;
        published(100).await?;
        // A round trip after the inserts: a notification would have come before it.
        listener.query_one("SELECT count(*) FROM solo", &[]).await?;
        listener.batch_execute("SELECT 1").await?;
        assert!(notes.try_recv().is_err(), "a notification after {stop}");
        listener.batch_execute("LISTEN solo").await?;
    }

    // With the holder gone, node a says so with a retryable error and stays up.
    cluster.kill9(holder)?;
    let err = ca
        .query("SELECT count(*) FROM solo", &[])
        .await
        .expect_err("no replica left");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    let unknown: Vec<Option<i64>> = ca
        .query(
            "SELECT next_offset FROM eddy.partitions WHERE topic = 'solo'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        unknown,
        vec![None; 3],
        "no replica to ask: unknown, not zero"
    );
    // The idle listener is told its LISTEN ended with the holder.
    let ended = eddy_tests::next_notice(&mut notes, Duration::from_secs(20)).await?;
    assert!(
        ended.message().contains("LISTEN solo ended") && ended.severity() == "WARNING",
        "{ended:?}"
    );
    let one: i64 = ca.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_a_tables_replicas_updates_and_reads_it_while_replicas_die(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(4).await?;
    cluster
        .client(1)
        .await?
        .batch_execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INT)")
        .await?;
    // Three replicas on four nodes.
    let replicas: Vec<usize> = cluster
        .replicas_of("kv", 3)
        .await?
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    let outside = (1..=4)
        .find(|n| !replicas.contains(n))
        .expect("a fourth node");
    let c = cluster.client(outside).await?;
    c.batch_execute("INSERT INTO kv VALUES ('a', 1), ('b', 2), ('c', 3)")
        .await?;
    // Statements that read before they write run where the rows are.
    assert_eq!(
        c.execute("UPDATE kv SET v = v + 10 WHERE k <> 'c'", &[])
            .await?,
        2
    );
    c.execute(
        "INSERT INTO kv VALUES ('c', 30) ON CONFLICT (k) DO UPDATE SET v = excluded.v + kv.v",
        &[],
    )
    .await?;
    assert_eq!(c.execute("DELETE FROM kv WHERE k = $1", &[&"b"]).await?, 1);
    let want = vec![("a".to_owned(), 11), ("c".to_owned(), 33)];
    assert_eq!(kv_rows(&c).await?, want);
    let v: i32 = c
        .query_one("SELECT v FROM kv WHERE k = $1", &[&"a"])
        .await?
        .get(0);
    assert_eq!(v, 11, "a point read");

    // Replicas die one after another, the relayed one among them: each read runs on
    // one still up. With one replica left there is no quorum, and a `local` read (the
    // setting goes along to the replica) still answers.
    c.batch_execute("SET consistency = 'local'").await?;
    for dead in &replicas[..2] {
        cluster.kill9(*dead)?;
        assert_eq!(kv_rows(&c).await?, want, "after node {dead} died");
    }
    Ok(())
}

async fn kv_rows(c: &tokio_postgres::Client) -> anyhow::Result<Vec<(String, i32)>> {
    let rows = c.query("SELECT k, v FROM kv ORDER BY k", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
