//! `COPY (SUBSCRIBE ...) TO STDOUT`: backlog, then live rows as they are published, until
//! the client cancels.

use std::time::Duration;

use eddy_tests::TestNode;
use futures::StreamExt;
use tokio_postgres::error::SqlState;

/// Reads CopyData chunks until `lines` lines have arrived (bounded wait per chunk).
async fn read_lines(
    stream: &mut std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
    lines: usize,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    while out.len() < lines {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))??;
        out.extend(String::from_utf8_lossy(&chunk).lines().map(str::to_owned));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_subscribe_streams_backlog_then_live_rows_until_cancelled() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let publisher = node.client().await?;
    publisher
        .batch_execute("CREATE TOPIC r (sensor TEXT, temp INT) WITH (partitions = 2)")
        .await?;
    publisher
        .batch_execute("INSERT INTO r VALUES ('cold', 1), ('hot', 40)")
        .await?;

    let subscriber = node.client().await?;
    let cancel = subscriber.cancel_token();
    let stream = subscriber
        .copy_out("COPY (SUBSCRIBE r WHERE temp > 10 FROM BEGINNING) TO STDOUT WITH (FORMAT csv)")
        .await?;
    let mut stream = Box::pin(stream);
    let backlog = read_lines(&mut stream, 1).await?;
    assert_eq!(backlog.len(), 1);
    assert!(backlog[0].ends_with(",hot,40"), "{backlog:?}");

    // Published after the subscriber caught up: delivered live, filtered.
    publisher
        .batch_execute(
            "INSERT INTO r (_key, sensor, temp) VALUES ('k', 'warm', 20), ('k', 'cool', 5)",
        )
        .await?;
    let live = read_lines(&mut stream, 1).await?;
    assert!(live[0].ends_with(",k,warm,20"), "{live:?}");
    publisher
        .batch_execute("INSERT INTO r (_key, sensor, temp) VALUES ('k', 'hotter', 50)")
        .await?;
    let live = read_lines(&mut stream, 1).await?;
    assert!(live[0].ends_with(",k,hotter,50"), "{live:?}");

    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let end = tokio::time::timeout(Duration::from_secs(20), stream.next()).await?;
    let err = match end {
        Some(Err(e)) => e,
        other => anyhow::bail!("expected a cancel error, got {other:?}"),
    };
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    // The connection is usable after the subscription ended.
    let n: i64 = subscriber
        .query_one("SELECT count(*) FROM r", &[])
        .await?
        .get(0);
    assert_eq!(n, 5);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_subscribe_errors() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC r (n INT); CREATE TABLE t (id INT PRIMARY KEY)")
        .await?;
    let e = c
        .batch_execute("COPY (SUBSCRIBE nope) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    let e = c
        .batch_execute("COPY (SUBSCRIBE r WHERE nope > 1) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e:?}");
    let e = c
        .batch_execute("COPY (SUBSCRIBE r WITH (snapshot = true)) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "snapshot is for tables: {e:?}"
    );
    let e = c
        .batch_execute("COPY (SUBSCRIBE r WITH (colour = 'red')) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_PARAMETER_VALUE));
    // Still usable.
    c.batch_execute("INSERT INTO r VALUES (1)").await?;
    node.shutdown().await
}
