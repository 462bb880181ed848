//! tokio-postgres: the extended protocol with parameters and prepared statements, typed
//! results, errors with SQLSTATEs, and filter pushdown seen through read counters.

use std::sync::atomic::Ordering;

use eddy_tests::TestNode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

#[tokio::test]
async fn prepared_statements_with_parameters() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION, n BIGINT) WITH (partitions = 3);
         CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT, active BOOLEAN);",
    )
    .await?;

    // Publish through a prepared INSERT ... RETURNING (the fast path binds the params).
    let ins = c.prepare("INSERT INTO readings (_key, sensor, temp, n) VALUES ($1, $2, $3, $4) RETURNING _partition, _offset").await?;
    let mut positions = Vec::new();
    for i in 0..30i64 {
        let key = format!("k{}", i % 5);
        let row = c
            .query_one(&ins, &[&key, &format!("s{i}"), &(i as f64 / 2.0), &i])
            .await?;
        let p: i32 = row.get(0);
        let o: i64 = row.get(1);
        positions.push((key, p, o));
    }
    // The same key always maps to the same partition, and offsets in a partition are dense.
    for (k, p, _) in &positions {
        assert!(positions
            .iter()
            .filter(|(k2, _, _)| k2 == k)
            .all(|(_, p2, _)| p2 == p));
    }
    for part in 0..3 {
        let mut offs: Vec<i64> = positions
            .iter()
            .filter(|(_, p, _)| *p == part)
            .map(|(_, _, o)| *o)
            .collect();
        offs.sort();
        assert_eq!(
            offs,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "partition {part}"
        );
    }

    // SELECT with parameters, typed (binary) results.
    let sel = c
        .prepare("SELECT sensor, temp, n FROM readings WHERE n >= $1 AND sensor <> $2 ORDER BY n")
        .await?;
    let rows = c.query(&sel, &[&25i64, &"s26"]).await?;
    let got: Vec<(String, f64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("s25".into(), 12.5, 25),
            ("s27".into(), 13.5, 27),
            ("s28".into(), 14.0, 28),
            ("s29".into(), 14.5, 29)
        ]
    );

    // Tables: insert, point lookup, update, delete, upsert — all with parameters.
    let put = c
        .prepare("INSERT INTO users (id, name, active) VALUES ($1, $2, $3)")
        .await?;
    for (id, name) in [(1i64, "ann"), (2, "bob"), (3, "cy")] {
        assert_eq!(c.execute(&put, &[&id, &name, &true]).await?, 1);
    }
    let get = c
        .prepare("SELECT name, active FROM users WHERE id = $1")
        .await?;
    let r = c.query_one(&get, &[&2i64]).await?;
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, bool>(1)),
        ("bob".to_owned(), true)
    );
    assert_eq!(
        c.execute(
            "UPDATE users SET name = $1 WHERE id = $2",
            &[&"bobby", &2i64]
        )
        .await?,
        1
    );
    assert_eq!(
        c.execute("DELETE FROM users WHERE id = $1", &[&3i64])
            .await?,
        1
    );
    assert_eq!(
        c.execute("INSERT INTO users (id, name, active) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name", &[&1i64, &"anna", &false]).await?,
        1
    );
    let names: Vec<String> = c
        .query("SELECT name FROM users ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["anna", "bobby"]);
    // NULL parameters.
    c.execute(&put, &[&7i64, &None::<String>, &None::<bool>])
        .await?;
    let r = c.query_one(&get, &[&7i64]).await?;
    assert_eq!(r.get::<_, Option<String>>(0), None);
    // A parameter compared with nothing takes the type it is cast to, as in PostgreSQL.
    let stmt = c.prepare("SELECT $1::float8 * 2, $2::bigint + 1").await?;
    assert_eq!(stmt.params(), &[Type::FLOAT8, Type::INT8]);
    let r = c.query_one(&stmt, &[&1.25f64, &41i64]).await?;
    assert_eq!((r.get::<_, f64>(0), r.get::<_, i64>(1)), (2.5, 42));
    node.shutdown().await
}

#[tokio::test]
async fn errors_have_sqlstates_and_the_connection_survives() -> anyhow::Result<()> {
    let node = TestNode::start_with(|c| c.query.max_message_bytes = 1024).await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (body TEXT); CREATE TABLE k (id INT PRIMARY KEY)")
        .await?;
    let code = |e: tokio_postgres::Error| e.code().cloned();

    assert_eq!(
        code(c.batch_execute("SELEC 1").await.unwrap_err()),
        Some(SqlState::SYNTAX_ERROR)
    );
    assert_eq!(
        code(c.query("SELECT * FROM nope", &[]).await.unwrap_err()),
        Some(SqlState::UNDEFINED_TABLE)
    );
    assert_eq!(
        code(c.query("SELECT nope FROM t", &[]).await.unwrap_err()),
        Some(SqlState::UNDEFINED_COLUMN)
    );
    c.execute("INSERT INTO k VALUES ($1)", &[&1i32]).await?;
    assert_eq!(
        code(
            c.execute("INSERT INTO k VALUES ($1)", &[&1i32])
                .await
                .unwrap_err()
        ),
        Some(SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(
        code(
            c.batch_execute("INSERT INTO k VALUES ('one')")
                .await
                .unwrap_err()
        ),
        Some(SqlState::INVALID_TEXT_REPRESENTATION)
    );
    let big = "x".repeat(2000);
    let e = c
        .execute("INSERT INTO t (body) VALUES ($1)", &[&big])
        .await
        .unwrap_err();
    assert_eq!(code(e), Some(SqlState::PROGRAM_LIMIT_EXCEEDED));
    let e = c
        .batch_execute("INSERT INTO t (_ts, body) VALUES (now(), 'x')")
        .await
        .unwrap_err();
    assert_eq!(code(e), Some(SqlState::GENERATED_ALWAYS));

    // Still usable, and the oversize message was not written.
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 0);
    c.execute("INSERT INTO t (body) VALUES ($1)", &[&"small"])
        .await?;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 1);
    node.shutdown().await
}

#[tokio::test]
async fn what_drivers_send_on_connect() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    let v: String = c.query_one("SELECT version()", &[]).await?.get(0);
    assert!(v.starts_with("PostgreSQL 16") && v.contains("eddy"), "{v}");
    let s: String = c.query_one("SELECT current_schema()", &[]).await?.get(0);
    assert_eq!(s, "public");
    c.batch_execute(
        "SET application_name = 'drv'; SET extra_float_digits = 3; SET DateStyle = 'ISO'",
    )
    .await?;
    let rows = c.simple_query("SHOW application_name").await?;
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("drv"));
    let tz: String = c.query_one("SHOW TimeZone", &[]).await?.get(0);
    assert_eq!(tz, "UTC");
    node.shutdown().await
}

#[tokio::test]
async fn filters_on_partition_offset_and_key_read_only_what_they_need() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (n BIGINT) WITH (partitions = 2); CREATE TABLE u (id BIGINT PRIMARY KEY, v TEXT)").await?;
    // 1000 messages into partition 0 (one key), 10 into partition 1.
    let values: Vec<String> = (0..1000).map(|i| format!("('a', {i})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO t (_key, n) VALUES {}",
        values.join(",")
    ))
    .await?;
    let p_a: i32 = c
        .query_one("SELECT _partition FROM t LIMIT 1", &[])
        .await?
        .get(0);
    let other = if p_a == 0 { "b" } else { "a" };
    let _ = other;
    let u_rows: Vec<String> = (0..500).map(|i| format!("({i}, 'v{i}')")).collect();
    c.batch_execute(&format!("INSERT INTO u VALUES {}", u_rows.join(",")))
        .await?;

    let stats = node_stats(&node);
    let before = stats.log_records_read.load(Ordering::Relaxed);
    let rows = c
        .query(
            "SELECT n FROM t WHERE _partition = $1 AND _offset >= 990",
            &[&p_a],
        )
        .await?;
    assert_eq!(rows.len(), 10);
    let read = stats.log_records_read.load(Ordering::Relaxed) - before;
    assert_eq!(read, 10, "an offset range scan reads only that range");

    let before = stats.log_records_read.load(Ordering::Relaxed);
    let rows = c
        .query(
            "SELECT n FROM t WHERE _partition = $1 AND _offset BETWEEN 100 AND 104",
            &[&p_a],
        )
        .await?;
    assert_eq!(rows.len(), 5);
    assert_eq!(stats.log_records_read.load(Ordering::Relaxed) - before, 5);

    let before = stats.log_records_read.load(Ordering::Relaxed);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM t WHERE _ts > now() + INTERVAL '1 hour'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(
        stats.log_records_read.load(Ordering::Relaxed) - before,
        0,
        "a future _ts bound reads nothing"
    );

    let before = stats.table_rows_read.load(Ordering::Relaxed);
    let v: String = c
        .query_one("SELECT v FROM u WHERE id = $1", &[&250i64])
        .await?
        .get(0);
    assert_eq!(v, "v250");
    assert_eq!(
        stats.table_rows_read.load(Ordering::Relaxed) - before,
        1,
        "a primary key lookup reads one row"
    );

    let before = stats.table_rows_read.load(Ordering::Relaxed);
    let n: i64 = c
        .query_one("SELECT count(*) FROM u WHERE v = 'v7'", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        stats.table_rows_read.load(Ordering::Relaxed) - before,
        500,
        "a non-key filter scans (the counter counts)"
    );
    node.shutdown().await
}

fn node_stats(node: &TestNode) -> &eddy_storage::StoreStats {
    node.store().stats()
}

#[tokio::test]
async fn output_columns_are_named_like_postgres() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC t (a INT, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y')")
        .await?;
    let stmt = c.prepare("SELECT count(*), max(a), a + 1, b, t.a, sum(a) AS total, count(b) FROM t GROUP BY a, b ORDER BY a").await?;
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names[..6], ["count", "max", "?column?", "b", "a", "total"]);
    // A duplicate name keeps a unique DataFusion name rather than failing the query.
    assert_ne!(names[6], "count");
    let rows = c.query(&stmt, &[]).await?;
    assert_eq!(rows.len(), 2);
    let n: i64 = rows[0].get("count");
    assert_eq!(n, 1);
    let star = c.prepare("SELECT * FROM t").await?;
    let names: Vec<&str> = star.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["_partition", "_offset", "_ts", "_key", "a", "b"]);
    node.shutdown().await
}

#[tokio::test]
async fn retention_removes_old_messages_in_the_background() -> anyhow::Result<()> {
    let node = TestNode::start_with(|c| c.storage.retention_check_ms = 50).await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC short (n INT) WITH (retention = '1s'); CREATE TOPIC kept (n INT)",
    )
    .await?;
    c.batch_execute(
        "INSERT INTO short VALUES (1), (2), (3); INSERT INTO kept VALUES (1), (2), (3)",
    )
    .await?;
    let n: i64 = c.query_one("SELECT count(*) FROM short", &[]).await?.get(0);
    assert_eq!(n, 3);
    eddy_tests::wait_for(
        "retention to trim",
        std::time::Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let n: i64 = c
                    .query_one("SELECT count(*) FROM short", &[])
                    .await
                    .ok()?
                    .get(0);
                (n == 0).then_some(())
            }
        },
    )
    .await?;
    let kept: i64 = c.query_one("SELECT count(*) FROM kept", &[]).await?.get(0);
    assert_eq!(kept, 3, "a topic without retention keeps everything");
    // Offsets continue after the trimmed range.
    let o: i64 = c
        .query_one("INSERT INTO short VALUES (4) RETURNING _offset", &[])
        .await?
        .get(0);
    assert_eq!(o, 3);
    node.shutdown().await
}

#[tokio::test]
async fn copy_in_and_out_from_tokio_postgres() -> anyhow::Result<()> {
    use futures::{SinkExt, TryStreamExt};
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC m (id BIGINT, note TEXT) WITH (partitions = 2)")
        .await?;
    let sink = c
        .copy_in("COPY m (_key, id, note) FROM STDIN WITH (FORMAT csv)")
        .await?;
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..500 {
        data.push_str(&format!("k{},{i},\"n,{i}\"\n", i % 7));
    }
    // Split mid-line on purpose: COPY data arrives in arbitrary chunks.
    let (a, b) = data.split_at(data.len() / 2 + 3);
    sink.send(bytes::Bytes::from(a.to_owned())).await?;
    sink.send(bytes::Bytes::from(b.to_owned())).await?;
    let n = sink.finish().await?;
    assert_eq!(n, 500);

    let stream = c
        .copy_out("COPY (SELECT id, note FROM m WHERE id < 3 ORDER BY id) TO STDOUT")
        .await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(text, "0\tn,0\n1\tn,1\n2\tn,2\n");
    let stream = c
        .copy_out("COPY m (id) TO STDOUT WITH (FORMAT csv, HEADER)")
        .await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.starts_with("id\n"), "{text}");
    assert_eq!(text.lines().count(), 501);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_and_updates_lose_no_increment() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE counters (id TEXT PRIMARY KEY, n BIGINT)")
        .await?;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = node.client().await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                if (w + i) % 2 == 0 {
                    client
                        .execute("INSERT INTO counters VALUES ('k', 1) ON CONFLICT (id) DO UPDATE SET n = counters.n + excluded.n", &[])
                        .await?;
                } else {
                    // The row exists after the first upsert; before that this may touch 0 rows.
                    let touched = client.execute("UPDATE counters SET n = n + 1 WHERE id = 'k'", &[]).await?;
                    if touched == 0 {
                        client
                            .execute("INSERT INTO counters VALUES ('k', 1) ON CONFLICT (id) DO UPDATE SET n = counters.n + excluded.n", &[])
                            .await?;
                    }
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n: i64 = c
        .query_one("SELECT n FROM counters WHERE id = 'k'", &[])
        .await?
        .get(0);
    assert_eq!(n, 100, "every increment counted");
    node.shutdown().await
}

#[tokio::test]
async fn binary_results_for_every_column_type() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TABLE all_types (id BIGINT PRIMARY KEY, b BOOLEAN, s SMALLINT, i INT, r REAL, d DOUBLE PRECISION,
                                 t TEXT, y BYTEA, ts TIMESTAMP);
         INSERT INTO all_types VALUES (1, true, -3, 70000, 1.5, -2.25, 'héllo', '\\x00ff', '2024-01-02 03:04:05.5');
         CREATE TOPIC e (n INT);",
    )
    .await?;
    let r = c
        .query_one(
            "SELECT b, s, i, r, d, t, y, ts FROM all_types WHERE id = $1",
            &[&1i64],
        )
        .await?;
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, i16>(1), -3);
    assert_eq!(r.get::<_, i32>(2), 70000);
    assert_eq!(r.get::<_, f32>(3), 1.5);
    assert_eq!(r.get::<_, f64>(4), -2.25);
    assert_eq!(r.get::<_, String>(5), "héllo");
    assert_eq!(r.get::<_, Vec<u8>>(6), vec![0u8, 255]);
    let ts: std::time::SystemTime = r.get(7);
    let micros = ts.duration_since(std::time::UNIX_EPOCH)?.as_micros();
    assert_eq!(micros, 1_704_164_645_500_000, "2024-01-02 03:04:05.5 UTC");

    // _ts of a message is the append time: between before and after the INSERT.
    let before = std::time::SystemTime::now();
    let r = c
        .query_one("INSERT INTO e VALUES (1) RETURNING _ts", &[])
        .await?;
    let after = std::time::SystemTime::now();
    let appended: std::time::SystemTime = r.get(0);
    assert!(
        appended >= before - std::time::Duration::from_millis(1) && appended <= after,
        "{appended:?}"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_point_reads_take_the_fast_path_with_the_same_answers() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE kv (a INT, b TEXT, v DOUBLE PRECISION, PRIMARY KEY (a, b))")
        .await?;
    c.batch_execute("INSERT INTO kv VALUES (1, 'x', 1.5), (1, 'y', NULL), (2, 'x', 3.0)")
        .await?;
    let get = c
        .prepare("SELECT v AS value, a FROM kv WHERE b = $2 AND a = $1")
        .await?;
    assert_eq!(
        get.columns().iter().map(|c| c.name()).collect::<Vec<_>>(),
        vec!["value", "a"]
    );
    let row = c.query_one(&get, &[&1i32, &"x"]).await?;
    assert_eq!(
        (row.get::<_, Option<f64>>(0), row.get::<_, i32>(1)),
        (Some(1.5), 1)
    );
    assert_eq!(
        c.query_one(&get, &[&1i32, &"y"])
            .await?
            .get::<_, Option<f64>>(0),
        None
    );
    assert!(
        c.query(&get, &[&3i32, &"x"]).await?.is_empty(),
        "a missing key is no rows"
    );
    let star = c
        .query("SELECT * FROM kv WHERE a = 2 AND b = 'x'", &[])
        .await?;
    assert_eq!(star.len(), 1);
    assert_eq!(star[0].get::<_, String>("b"), "x");
    let before = node
        .store()
        .stats()
        .table_rows_read
        .load(std::sync::atomic::Ordering::Relaxed);
    c.query_one(&get, &[&2i32, &"x"]).await?;
    let after = node
        .store()
        .stats()
        .table_rows_read
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 1, "one row read");
    c.batch_execute("DROP TABLE kv").await?;
    let e = c.query(&get, &[&1i32, &"x"]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
        "{e:?}"
    );
    node.shutdown().await
}

#[tokio::test]
async fn a_message_id_makes_a_retried_publish_store_once() -> anyhow::Result<()> {
    use futures::SinkExt;
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC orders (item TEXT) WITH (partitions = 4, dedup_window = '10 minutes');
         CREATE TOPIC gossiped (item TEXT) WITH (replication = 'gossip');",
    )
    .await?;
    let ins = c
        .prepare("INSERT INTO orders (_msg_id, item) VALUES ($1, $2) RETURNING _partition, _offset")
        .await?;
    let at = |row: tokio_postgres::Row| (row.get::<_, i32>(0), row.get::<_, i64>(1));
    let first = at(c.query_one(&ins, &[&"o-1", &"a"]).await?);
    // A retry (same id) answers with the first copy's position and stores nothing.
    assert_eq!(
        at(c.query_one(&ins, &[&"o-1", &"a, retried"]).await?),
        first
    );
    let second = at(c.query_one(&ins, &[&"o-2", &"b"]).await?);
    assert_ne!(second, first);
    // Rows of one INSERT with and without ids; the id already taken answers where it went.
    let rows = c
        .query(
            "INSERT INTO orders (_msg_id, item) VALUES ('o-1', 'x'), ('o-3', 'c'), (NULL, 'd')
             RETURNING _partition, _offset, item",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0].get::<_, i32>(0), rows[0].get::<_, i64>(1)), first);
    // With a key, the key picks the partition, and the id is still checked there.
    let keyed = c
        .prepare("INSERT INTO orders (_key, _msg_id, item) VALUES ($1, $2, $3) RETURNING _partition, _offset")
        .await?;
    let k = at(c.query_one(&keyed, &[&"cust-9", &"o-5", &"e"]).await?);
    assert_eq!(
        at(c.query_one(&keyed, &[&"cust-9", &"o-5", &"e"]).await?),
        k
    );
    // COPY takes _msg_id too.
    let sink = c.copy_in("COPY orders (_msg_id, item) FROM STDIN").await?;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"o-2\tb, copied again\no-6\tf\n"))
        .await?;
    assert_eq!(sink.finish().await?, 2);
    // Blind INSERTs pipelined on one connection: the same id twice in flight, stored once.
    let blind = c
        .prepare("INSERT INTO orders (_msg_id, item) VALUES ($1, $2)")
        .await?;
    let (x, y) = futures::join!(
        c.execute(&blind, &[&"o-7", &"g"]),
        c.execute(&blind, &[&"o-7", &"g, twice"])
    );
    assert_eq!((x?, y?), (1, 1));
    let items: Vec<String> = c
        .query("SELECT item FROM orders ORDER BY item", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(items, ["a", "b", "c", "d", "e", "f", "g"]);
    // _msg_id is not a column of the topic's rows.
    let err = c
        .query("SELECT _msg_id FROM orders", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN));
    // Gossip topics take writes on every node: no partition-wide memory of ids there.
    let err = c
        .execute(
            "INSERT INTO gossiped (_msg_id, item) VALUES ('g-1', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{err}");
    let long = "i".repeat(300);
    let err = c.query_one(&ins, &[&long, &"y"]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{err}"
    );
    let err = c
        .batch_execute("ALTER TOPIC orders SET (dedup_window = 'soon')")
        .await
        .unwrap_err();
    assert!(err.code().is_some(), "{err}");
    c.batch_execute("ALTER TOPIC orders SET (dedup_window = '1 hour')")
        .await?;
    assert_eq!(at(c.query_one(&ins, &[&"o-1", &"z"]).await?), first);
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert_eq!(n, 7);
    Ok(())
}

#[tokio::test]
async fn a_portal_returns_rows_in_pages_of_the_execute_row_limit() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let mut c = node.client().await?;
    c.batch_execute(
        "CREATE TOPIC pages (n BIGINT); INSERT INTO pages (n) VALUES (1), (2), (3), (4), (5)",
    )
    .await?;
    let tx = c.transaction().await?;
    let portal = tx.bind("SELECT n FROM pages ORDER BY n", &[]).await?;
    let mut pages = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 2).await?;
        if rows.is_empty() {
            break;
        }
        pages.push(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>());
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5]]);
    tx.commit().await?;
    Ok(())
}

/// Right after CREATE TOPIC, before the node has started the new partitions' Raft groups,
/// `eddy.partitions` already shows their offsets (this node holds them): drivers and
/// eddy-client read a subscription's start from it.
#[tokio::test]
async fn a_new_topics_partitions_show_offsets_at_once() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    for i in 0..20 {
        let name = format!("fresh{i}");
        c.batch_execute(&format!("CREATE TOPIC {name} WITH (partitions = 3)"))
            .await?;
        let rows = c
            .query(
                "SELECT start_offset, next_offset FROM eddy.partitions WHERE topic = $1",
                &[&name],
            )
            .await?;
        let offsets: Vec<(Option<i64>, Option<i64>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(offsets, [(Some(0), Some(0)); 3], "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn a_rollback_after_writes_warns_that_they_stay() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let (c, mut messages) = eddy_tests::connect_async(node.addr()).await?;
    c.batch_execute("CREATE TOPIC t (v TEXT)").await?;
    // A block that only read rolls back without a word.
    c.batch_execute("BEGIN").await?;
    c.query("SELECT count(*) FROM t", &[]).await?;
    c.batch_execute("ROLLBACK").await?;
    // A block that wrote, once by the extended protocol and once by the simple one.
    c.batch_execute("BEGIN").await?;
    c.execute("INSERT INTO t VALUES ($1)", &[&"a"]).await?;
    c.batch_execute("INSERT INTO t VALUES ('b')").await?;
    c.batch_execute("ROLLBACK").await?;
    let notice = eddy_tests::next_notice(&mut messages, std::time::Duration::from_secs(10)).await?;
    assert_eq!(notice.code(), &SqlState::WARNING);
    assert!(
        notice.message().contains("the 2 statement(s)"),
        "the first notice is the writing block's, counting its two writes: {}",
        notice.message()
    );
    // What the block wrote stays, as the warning says.
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 2);
    // COMMIT after writes, and ROLLBACK outside a block, say nothing.
    c.batch_execute("BEGIN; INSERT INTO t VALUES ('c'); COMMIT; ROLLBACK")
        .await?;
    c.batch_execute("SELECT 1").await?;
    assert!(
        messages.try_recv().is_err(),
        "no notice after COMMIT or a ROLLBACK outside a block"
    );
    node.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn returning_expressions_are_described_and_named_as_in_postgres() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TABLE kv (k TEXT PRIMARY KEY, n BIGINT)")
        .await?;
    let stmt = c
        .prepare("INSERT INTO kv VALUES ($1, $2) RETURNING upper(k), n * 2, k || '!' AS shout")
        .await?;
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["upper", "?column?", "shout"]);
    let types: Vec<&Type> = stmt.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(types, [&Type::TEXT, &Type::INT8, &Type::TEXT]);
    for (k, n) in [("a", 1i64), ("b", 21)] {
        let row = c.query_one(&stmt, &[&k, &n]).await?;
        assert_eq!(row.get::<_, String>(0), k.to_uppercase());
        assert_eq!(row.get::<_, i64>(1), n * 2);
        assert_eq!(row.get::<_, String>(2), format!("{k}!"));
    }
    node.shutdown().await?;
    Ok(())
}
