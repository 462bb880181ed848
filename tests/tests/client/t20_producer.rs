//! `Producer`: batched, pipelined INSERTs with one ack per row.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use eddy_client::{Client, Error, Position, Value};
use eddy_tests::proxy::TcpProxy;
use eddy_tests::TestNode;
use futures::future::join_all;
use tokio_postgres::error::SqlState;

use super::url;

fn row(sensor: String, temp: f64) -> Vec<Value> {
    vec![Box::new(sensor), Box::new(temp)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_acked_with_a_distinct_position() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute(
            "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)",
        )
        .await?;
    let producer = client
        .producer("readings", &["sensor", "temp"])
        .batch_size(500)
        .linger(Duration::from_millis(5))
        .max_in_flight(4)
        .build()
        .await?;

    let requests_before = node.store().stats().write_requests.load(Ordering::Relaxed);
    let sends = (0..2000).map(|i| {
        let key = format!("k{}", i % 16);
        let producer = &producer;
        async move {
            producer
                .send(Some(&key), row(key.clone(), f64::from(i)))
                .await
        }
    });
    let acks: Vec<Position> = join_all(sends)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let distinct: BTreeSet<Position> = acks.iter().copied().collect();
    assert_eq!(distinct.len(), 2000, "positions repeated");

    let raw = client.raw().await?;
    let n: i64 = raw
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0);
    assert_eq!(n, 2000);
    // Every ack names the row that was sent: row i sits at acks[i].
    let stored: BTreeMap<Position, f64> = raw
        .query("SELECT _partition, _offset, temp FROM readings", &[])
        .await?
        .iter()
        .map(|r| {
            (
                Position {
                    partition: r.get(0),
                    offset: r.get(1),
                },
                r.get(2),
            )
        })
        .collect();
    for (i, at) in acks.iter().enumerate() {
        assert_eq!(stored.get(at), Some(&(i as f64)), "row {i} acked at {at}");
    }
    // One write request per INSERT: several rows each, at most batch_size.
    let requests = node.store().stats().write_requests.load(Ordering::Relaxed) - requests_before;
    assert!(
        (4..2000).contains(&requests),
        "{requests} INSERTs for 2000 rows in batches of at most 500"
    );
    producer.close().await?;
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_keeps_its_order_across_pipelined_batches() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 3)")
        .await?;
    let producer = client
        .producer("t", &["sensor", "temp"])
        .batch_size(7)
        .max_in_flight(4)
        .build()
        .await?;
    // One task queues rows in order, then awaits the acks.
    let mut acks = Vec::new();
    for i in 0..300 {
        acks.push(
            producer
                .enqueue(Some("one-key"), row("s".into(), f64::from(i)))
                .await?,
        );
    }
    let positions: Vec<Position> = join_all(acks).await.into_iter().collect::<Result<_, _>>()?;
    assert!(positions
        .iter()
        .all(|p| p.partition == positions[0].partition));
    assert!(
        positions.windows(2).all(|w| w[0].offset < w[1].offset),
        "{positions:?}"
    );
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_close_and_drop_complete_outstanding_sends() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 2)")
        .await?;
    let count = || async {
        client
            .raw()
            .await?
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(anyhow::Error::from)
    };

    // A linger far longer than the test: only flush, close or drop send these rows.
    let lazy = |c: &Client| {
        c.producer("t", &["sensor", "temp"])
            .batch_size(1000)
            .linger(Duration::from_secs(3600))
            .build()
    };

    let producer = lazy(&client).await?;
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            producer
                .enqueue(None, row("a".into(), f64::from(i)))
                .await?,
        );
    }
    producer.flush().await?;
    assert_eq!(count().await?, 10);
    for ack in acks {
        ack.await?;
    }

    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(
            producer
                .enqueue(None, row("b".into(), f64::from(i)))
                .await?,
        );
    }
    producer.close().await?;
    assert_eq!(count().await?, 30);
    for ack in acks {
        ack.await?;
    }

    let producer = lazy(&client).await?;
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(
            producer
                .enqueue(None, row("c".into(), f64::from(i)))
                .await?,
        );
    }
    drop(producer);
    for ack in acks {
        ack.await?;
    }
    assert_eq!(count().await?, 35);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_fail_their_batch_and_the_producer_carries_on() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (n INT NOT NULL)")
        .await?;

    let e = client
        .producer("nope", &["n"])
        .build()
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown topic accepted"))?;
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let e = client
        .producer("t", &["n"])
        .batch_size(0)
        .build()
        .await
        .err();
    assert!(matches!(e, Some(Error::InvalidSetting(_))), "{e:?}");

    let producer = client
        .producer("t", &["n"])
        .linger(Duration::from_secs(3600))
        .build()
        .await?;
    let e = producer
        .send(None, vec![Box::new(1i32), Box::new(2i32)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidSetting(_)), "{e:?}");

    // A NULL in a NOT NULL column fails the whole batch (an INSERT is atomic) ...
    let good = producer.enqueue(None, vec![Box::new(1i32)]).await?;
    let bad = producer.enqueue(None, vec![Box::new(None::<i32>)]).await?;
    producer.flush().await?;
    let e = bad.await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::NOT_NULL_VIOLATION), "{e}");
    assert_eq!(
        good.await.unwrap_err().code(),
        Some(&SqlState::NOT_NULL_VIOLATION)
    );
    // ... and the next batch goes through.
    let next = producer.enqueue(None, vec![Box::new(3i32)]).await?;
    producer.flush().await?;
    assert_eq!(next.await?.offset, 0);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_under_the_parameter_limit() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (n INT)")
        .await?;
    // Asked for 100,000 rows per batch: two parameters a row would be 200,000, more
    // than one statement can carry, so the producer cuts batches at 32,767 rows.
    let producer = client
        .producer("t", &["n"])
        .batch_size(100_000)
        .linger(Duration::from_secs(3600))
        .build()
        .await?;
    let mut acks = Vec::new();
    for i in 0..40_000 {
        acks.push(producer.enqueue(None, vec![Box::new(i)]).await?);
    }
    producer.close().await?;
    let positions: BTreeSet<Position> =
        join_all(acks).await.into_iter().collect::<Result<_, _>>()?;
    assert_eq!(positions.len(), 40_000);
    let n: i64 = client
        .raw()
        .await?
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(n, 40_000);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_only_the_batches_in_flight() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let direct = Client::connect(&url(node.addr())).await?;
    direct
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 2)")
        .await?;
    let client = Client::connect(&url(proxy.addr())).await?;
    let producer = client
        .producer("t", &["sensor", "temp"])
        .batch_size(50)
        .build()
        .await?;

    let mut acks = Vec::new();
    for i in 0..1000 {
        acks.push(
            producer
                .enqueue(None, row("a".into(), f64::from(i)))
                .await?,
        );
    }
    let mut results = Vec::new();
    for ack in acks.drain(..200) {
        results.push(ack.await);
    }
    assert!(proxy.cut_all().await >= 1);
    for i in 1000..2000 {
        acks.push(
            producer
                .enqueue(None, row("a".into(), f64::from(i)))
                .await?,
        );
    }
    producer.close().await?;
    results.extend(join_all(acks).await);

    // Rows acked before the cut and after the reconnect are stored where their ack says;
    // a batch caught by the cut fails with a retryable error (it may or may not be stored).
    let stored: BTreeMap<Position, f64> = direct
        .raw()
        .await?
        .query("SELECT _partition, _offset, temp FROM t", &[])
        .await?
        .iter()
        .map(|r| {
            (
                Position {
                    partition: r.get(0),
                    offset: r.get(1),
                },
                r.get(2),
            )
        })
        .collect();
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(at) => assert_eq!(stored.get(at), Some(&(i as f64)), "row {i} acked at {at}"),
            Err(e) => assert!(e.is_retryable(), "row {i}: {e:?}"),
        }
    }
    assert!(results[..200].iter().all(Result::is_ok));
    assert!(
        results[1999].is_ok(),
        "no row went out after the cut: {:?}",
        results[1999]
    );
    assert!(proxy.accepted() >= 2);
    node.shutdown().await
}

/// A row the node stored but whose answer never reached the producer (the proxy swallows
/// it, then cuts the connection): an idempotent producer sends it again with the same
/// id and gets the stored row's position; a plain one fails it although it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_retries_a_lost_answer_without_storing_twice() -> anyhow::Result<()>
{
    let node = TestNode::start().await?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let direct = Client::connect(&url(node.addr())).await?.raw().await?;
    direct
        .batch_execute("CREATE TOPIC t (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 3)")
        .await?;
    let client = Client::connect(&url(proxy.addr())).await?;
    let stored = |temp: f64| {
        let direct = &direct;
        async move {
            let rows = direct
                .query(
                    "SELECT _partition, _offset FROM t WHERE temp = $1",
                    &[&temp],
                )
                .await?;
            anyhow::Ok(
                rows.iter()
                    .map(|r| Position {
                        partition: r.get(0),
                        offset: r.get(1),
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    for (idempotent, temp) in [(true, 1000.0), (false, 2000.0)] {
        let mut builder = client
            .producer("t", &["sensor", "temp"])
            .linger(Duration::ZERO);
        if idempotent {
            builder = builder.idempotent(Duration::from_secs(30));
        }
        let producer = builder.build().await?;
        let before = join_all(
            (0..50).map(|i| producer.send(None, row("a".into(), temp + 1.0 + f64::from(i)))),
        )
        .await;
        assert!(before.iter().all(Result::is_ok), "{before:?}");
        assert!(proxy.swallow_replies() >= 1);
        let ack = producer.enqueue(None, row("lost".into(), temp)).await?;
        eddy_tests::wait_for("the row to be stored", Duration::from_secs(10), || async {
            (stored(temp).await.ok()?.len() == 1).then_some(())
        })
        .await?;
        assert!(proxy.cut_all().await >= 1);
        let answer = ack.await;
        let at = stored(temp).await?;
        assert_eq!(at.len(), 1, "idempotent: {idempotent}: stored once");
        if idempotent {
            assert_eq!(answer?, at[0]);
        } else {
            let e = answer.expect_err("a plain producer cannot know");
            assert!(e.is_retryable(), "{e:?}");
        }
        // The producer goes on, on a new connection.
        let after = producer.send(None, row("b".into(), temp + 500.0)).await?;
        assert_eq!(stored(temp + 500.0).await?, [after]);
        producer.close().await?;
    }
    drop((client, direct));
    node.shutdown().await
}
