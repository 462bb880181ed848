//! The real psql: `\d` family, COPY FROM STDIN in text and CSV, errors.

use eddy_tests::{psql, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_commands() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let a = node.addr();
    let out = psql(
        a,
        &[
            "-c",
            "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 2)",
            "-c",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT)",
        ],
        "",
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);

    let dt = psql(a, &["-c", "\\dt"], "").await?;
    assert!(dt.ok, "{}", dt.stderr);
    assert!(
        dt.stdout.contains("readings") && dt.stdout.contains("users"),
        "{}",
        dt.stdout
    );

    let d = psql(a, &["-c", "\\d readings"], "").await?;
    assert!(d.ok, "{}", d.stderr);
    for col in [
        "_partition",
        "_offset",
        "_ts",
        "_key",
        "sensor",
        "temp",
        "double precision",
        "timestamp",
    ] {
        assert!(
            d.stdout.contains(col),
            "\\d readings lacks {col}:\n{}",
            d.stdout
        );
    }
    let du = psql(a, &["-c", "\\d users"], "").await?;
    assert!(du.ok, "{}", du.stderr);
    assert!(
        du.stdout.contains("bigint") && du.stdout.contains("not null"),
        "{}",
        du.stdout
    );

    let all = psql(a, &["-c", "\\d"], "").await?;
    assert!(
        all.ok && all.stdout.contains("readings"),
        "{}{}",
        all.stdout,
        all.stderr
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_text_and_csv() -> anyhow::Result<()> {
    let node = TestNode::start_with(|c| c.query.copy_batch_rows = 100).await?;
    let a = node.addr();
    let out = psql(
        a,
        &[
            "-c",
            "CREATE TOPIC m (id BIGINT, note TEXT) WITH (partitions = 3)",
        ],
        "",
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);
    // 1000 rows in text format (more than copy_batch_rows, so several batches), with
    // escapes and NULLs.
    let mut data = String::new();
    for i in 0..1000 {
        if i % 100 == 0 {
            data.push_str(&format!("{i}\t\\N\n"));
        } else {
            data.push_str(&format!("{i}\tline\\t{i}\n"));
        }
    }
    let out = psql(a, &["-c", "COPY m (id, note) FROM STDIN"], &data).await?;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("COPY 1000"), "{}", out.stdout);

    let csv = "_key,id,note\nk1,5000,\"a, quoted \"\"note\"\"\"\nk1,5001,\n";
    let out = psql(
        a,
        &[
            "-c",
            "COPY m (_key, id, note) FROM STDIN WITH (FORMAT csv, HEADER)",
        ],
        csv,
    )
    .await?;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("COPY 2"), "{}", out.stdout);

    let c = node.client().await?;
    let n: i64 = c.query_one("SELECT count(*) FROM m", &[]).await?.get(0);
    assert_eq!(n, 1002);
    let nulls: i64 = c
        .query_one("SELECT count(*) FROM m WHERE note IS NULL", &[])
        .await?
        .get(0);
    assert_eq!(nulls, 11, "10 \\N rows + 1 empty unquoted CSV field");
    let note: String = c
        .query_one("SELECT note FROM m WHERE id = 7", &[])
        .await?
        .get(0);
    assert_eq!(note, "line\t7");
    let note: String = c
        .query_one("SELECT note FROM m WHERE id = 5000", &[])
        .await?
        .get(0);
    assert_eq!(note, "a, quoted \"note\"");
    let parts: i64 = c
        .query_one(
            "SELECT count(DISTINCT _partition) FROM m WHERE _key = 'k1'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(parts, 1);

    // A bad line fails the COPY with a clear error; the connection and node stay up.
    let out = psql(
        a,
        &["-c", "COPY m (id, note) FROM STDIN"],
        "1\tok\nnot-a-number\tx\n",
    )
    .await?;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("invalid input syntax for type bigint"),
        "{}",
        out.stderr
    );
    let out = psql(a, &["-c", "COPY m TO STDOUT WITH (FORMAT csv)"], "").await?;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.lines().count() >= 1002);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reports_errors_with_codes() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let a = node.addr();
    let out = psql(
        a,
        &["-v", "VERBOSITY=verbose", "-c", "SELECT * FROM nowhere"],
        "",
    )
    .await?;
    assert!(!out.ok);
    assert!(out.stderr.contains("42P01"), "{}", out.stderr);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_cursor_and_durable_subscription() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let a = node.addr();
    let script = "CREATE TOPIC readings (sensor TEXT, temp INT);
INSERT INTO readings VALUES ('a', 10), ('b', 40), ('c', 50);
CREATE SUBSCRIPTION hot ON readings WHERE temp > 30 FROM BEGINNING;
DECLARE c CURSOR FOR SUBSCRIBE readings WHERE temp > 30 FROM BEGINNING;
FETCH 10 c WITH (timeout = '5s');
FETCH 10 FROM SUBSCRIPTION hot;
ACK SUBSCRIPTION hot (0, 1), (0, 2);
SELECT name, topic, pending, acked FROM eddy.subscriptions WHERE name = 'hot';
";
    let out = psql(a, &["-A", "-t", "-F", ","], script).await?;
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    // FETCH from the cursor: b and c, with their positions.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0,1,") && l.ends_with(",b,40")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0,2,") && l.ends_with(",c,50")),
        "{}",
        out.stdout
    );
    // FETCH FROM SUBSCRIPTION carries the delivery count after _key.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0,1,") && l.ends_with(",,1,b,40")),
        "{}",
        out.stdout
    );
    assert!(lines.contains(&"ACK 2"), "{}", out.stdout);
    assert!(lines.contains(&"hot,readings,0,2"), "{}", out.stdout);
    node.shutdown().await
}
