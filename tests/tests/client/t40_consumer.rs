//! Durable consumers: server-side positions and leases, so a consumer that dies loses
//! nothing and repeats nothing it acknowledged.
//!
//! Needs the server's `CREATE SUBSCRIPTION`, `FETCH n FROM SUBSCRIPTION`, `ACK` and `NACK`.

use std::collections::BTreeSet;
use std::time::Duration;

use eddy_client::{Client, Consumer, Delivery, Position, StartFrom, SubscriptionOptions, Value};
use eddy_tests::proxy::TcpProxy;
use eddy_tests::TestNode;
use futures::future::join_all;
use futures::StreamExt;

use super::url;

/// Publishes `n` rows (temp = i) to `readings` and returns their positions.
async fn publish(client: &Client, n: i32) -> anyhow::Result<Vec<Position>> {
    client
        .raw()
        .await?
        .batch_execute(
            "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 2)",
        )
        .await?;
    let producer = client
        .producer("readings", &["sensor", "temp"])
        .build()
        .await?;
    let sends = (0..n).map(|i| {
        let values: Vec<Value> = vec![Box::new(format!("s{i}")), Box::new(f64::from(i))];
        producer.send(None, values)
    });
    let acks = join_all(sends)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    producer.close().await?;
    Ok(acks)
}

async fn consumer(client: &Client, ack_wait: Duration) -> anyhow::Result<Consumer> {
    let options = SubscriptionOptions {
        from: Some(StartFrom::Beginning),
        ack_wait: Some(ack_wait),
        max_deliver: Some(100),
        ..SubscriptionOptions::default()
    };
    Ok(client
        .consumer("work")
        .create_on("readings", options)
        .fetch_size(10)
        .fetch_timeout(Duration::from_millis(500))
        .build()
        .await?)
}

fn positions<'a>(rows: impl IntoIterator<Item = &'a Delivery>) -> BTreeSet<Position> {
    rows.into_iter().map(Delivery::position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_gets_every_unacked_row_and_no_acked_row() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    let all: BTreeSet<Position> = publish(&client, 100).await?.into_iter().collect();

    // The first consumer acks 40 rows, fetches 20 more, and dies before acking them.
    let first = consumer(&client, Duration::from_secs(2)).await?;
    let mut acked = BTreeSet::new();
    while acked.len() < 40 {
        let rows = first
            .fetch((40 - acked.len()) as u32, Duration::from_secs(5))
            .await?;
        assert!(rows.iter().all(|d| d.deliveries() == Some(1)));
        assert_eq!(first.ack(&rows).await?, rows.len() as u64);
        acked.extend(positions(&rows));
    }
    let mut leased = BTreeSet::new();
    while leased.len() < 20 {
        leased.extend(positions(
            &first
                .fetch((20 - leased.len()) as u32, Duration::from_secs(5))
                .await?,
        ));
    }
    assert!(acked.is_disjoint(&leased));
    drop(first);

    // A new consumer of the same subscription, on a new connection: everything not
    // acked arrives (the 20 leased rows once their ack_wait passes), nothing acked does.
    let client = Client::connect(&url(node.addr())).await?;
    let second = consumer(&client, Duration::from_secs(2)).await?;
    let expected: BTreeSet<Position> = all.difference(&acked).copied().collect();
    let mut got = BTreeSet::new();
    let mut stream = second.stream();
    while got.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        assert!(
            !acked.contains(&d.position()),
            "acked row {} delivered again",
            d.position()
        );
        if leased.contains(&d.position()) {
            assert!(
                d.deliveries() >= Some(2),
                "{} redelivered with _deliveries {:?}",
                d.position(),
                d.deliveries()
            );
        }
        d.ack().await?;
        got.insert(d.position());
    }
    assert_eq!(got, expected);
    // Nothing is left.
    assert!(second.fetch(100, Duration::from_secs(1)).await?.is_empty());
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_makes_rows_available_again_at_once() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    publish(&client, 10).await?;
    // An ack_wait of an hour: within this test only a NACK can bring a row back.
    let c = consumer(&client, Duration::from_secs(3600)).await?;
    let mut rows = Vec::new();
    while rows.len() < 10 {
        rows.extend(c.fetch(10, Duration::from_secs(5)).await?);
    }
    assert!(
        c.fetch(10, Duration::from_millis(200)).await?.is_empty(),
        "leased rows were delivered again"
    );
    let (back, done) = rows.split_at(3);
    assert_eq!(c.ack(done).await?, 7);
    assert_eq!(c.nak(back).await?, 3);
    let mut again = Vec::new();
    while again.len() < 3 {
        again.extend(c.fetch(10, Duration::from_secs(5)).await?);
    }
    assert_eq!(positions(&again), positions(back));
    assert!(again.iter().all(|d| d.deliveries() == Some(2)));
    for d in &again {
        d.ack().await?;
    }
    assert!(c.fetch(10, Duration::from_millis(200)).await?.is_empty());
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_stream_carries_on_after_its_connection_is_cut() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let client = Client::connect(&url(node.addr())).await?;
    let all: BTreeSet<Position> = publish(&client, 100).await?.into_iter().collect();

    let via_proxy = Client::connect(&url(proxy.addr())).await?;
    let c = consumer(&via_proxy, Duration::from_secs(2)).await?;
    let mut stream = c.stream();
    let mut acked = BTreeSet::new();
    let mut accepted_before_cut = None;
    while acked.len() < all.len() {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        assert!(
            !acked.contains(&d.position()),
            "acked row {} delivered again",
            d.position()
        );
        // An ack lost with the connection is no loss: the row comes back after ack_wait.
        if d.ack().await.is_ok() {
            acked.insert(d.position());
        }
        if acked.len() == 30 && accepted_before_cut.is_none() {
            accepted_before_cut = Some(proxy.accepted());
            // The client's connection and the consumer's.
            assert_eq!(proxy.cut_all().await, 2);
        }
    }
    assert_eq!(acked, all);
    let before = accepted_before_cut.ok_or_else(|| anyhow::anyhow!("never cut"))?;
    assert!(proxy.accepted() > before, "the consumer never reconnected");
    node.shutdown().await
}
