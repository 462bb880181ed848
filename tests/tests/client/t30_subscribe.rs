//! `Client::subscribe`: a topic's rows as a stream over a cursor, and exact resumption
//! after the stream's connection is lost or the node restarts.
//!
//! Needs the server's `DECLARE .. CURSOR FOR SUBSCRIBE`, `FETCH .. WITH (timeout)` and
//! `eddy.partitions`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eddy_client::{Client, Delivery, Error, Position, Subscription, Value};
use eddy_tests::proxy::TcpProxy;
use eddy_tests::{ProcessNode, TestNode};
use futures::future::join_all;
use futures::StreamExt;
use tokio_postgres::error::SqlState;

use super::url;

const TOPIC: &str =
    "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)";

/// The next `n` rows of `stream` (each awaited for at most 30 s).
async fn take(stream: &mut Subscription, n: usize) -> anyhow::Result<Vec<Delivery>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no row {} of {n} within 30 s", out.len()))?
            .ok_or_else(|| anyhow::anyhow!("stream ended after {} rows", out.len()))??;
        out.push(next);
    }
    Ok(out)
}

/// Publishes rows `from..to` (temp = i, key = `k{i % 8}`) and returns their positions.
async fn publish(client: &Client, from: i32, to: i32) -> anyhow::Result<Vec<Position>> {
    let producer = client
        .producer("readings", &["sensor", "temp"])
        .build()
        .await?;
    let sends = (from..to).map(|i| {
        let key = format!("k{}", i % 8);
        let values: Vec<Value> = vec![Box::new(key.clone()), Box::new(f64::from(i))];
        let producer = &producer;
        async move { producer.send(Some(&key), values).await }
    });
    let acks = join_all(sends)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    producer.close().await?;
    Ok(acks)
}

/// Checks rows arrived once each, in offset order within each partition, and are exactly
/// `expected`.
fn assert_exactly(rows: &[Delivery], expected: &[Position]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for d in rows {
        if let Some(prev) = last.insert(d.partition(), d.offset()) {
            assert!(
                prev < d.offset(),
                "partition {}: offset {} after {prev}",
                d.partition(),
                d.offset()
            );
        }
    }
    let got: Vec<Position> = rows.iter().map(Delivery::position).collect();
    let got_set: BTreeSet<Position> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "a row arrived twice");
    let expected: BTreeSet<Position> = expected.iter().copied().collect();
    let lost: Vec<_> = expected.difference(&got_set).collect();
    let extra: Vec<_> = got_set.difference(&expected).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "lost {lost:?}, unexpected {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_receives_exactly_the_published_rows_in_partition_order() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client.raw().await?.batch_execute(TOPIC).await?;
    let backlog = publish(&client, 0, 100).await?;

    let mut stream = client
        .subscribe("readings")
        .from_beginning()
        .fetch_size(16)
        .stream()
        .await?;
    let mut rows = take(&mut stream, 60).await?;
    let live = publish(&client, 100, 200).await?;
    rows.extend(take(&mut stream, 140).await?);
    let all: Vec<Position> = backlog.iter().chain(&live).copied().collect();
    assert_exactly(&rows, &all);
    // Columns and metadata come through typed.
    for d in &rows {
        let temp: f64 = d.get("temp")?;
        let i = temp as i32;
        assert_eq!(d.key(), Some(format!("k{}", i % 8).as_str()));
        assert_eq!(d.get::<String>("sensor")?, format!("k{}", i % 8));
        assert_eq!(Some(d.position()), all.get(i as usize).copied(), "row {i}");
        assert!(d.ts() > std::time::UNIX_EPOCH);
        assert_eq!(d.deliveries(), None);
    }
    // Ephemeral rows have no server-side lease to acknowledge.
    assert!(matches!(rows[0].ack().await, Err(Error::NotDurable)));

    // A filter.
    let mut hot = client
        .subscribe("readings")
        .filter("temp >= 150")
        .from_beginning()
        .stream()
        .await?;
    let rows = take(&mut hot, 50).await?;
    assert_exactly(&rows, &all[150..]);

    // From an offset: every partition from its offset 20 on.
    let mut later = client
        .subscribe("readings")
        .from_offset(20)
        .stream()
        .await?;
    let expected: Vec<Position> = all.iter().copied().filter(|p| p.offset >= 20).collect();
    let rows = take(&mut later, expected.len()).await?;
    assert_exactly(&rows, &expected);

    // From now (the default): only rows published after the stream started.
    let mut now = client.subscribe("readings").stream().await?;
    let new = publish(&client, 200, 210).await?;
    let rows = take(&mut now, 10).await?;
    assert_exactly(&rows, &new);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_come_from_the_first_call() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client.raw().await?.batch_execute(TOPIC).await?;
    let e = client
        .subscribe("nope")
        .stream()
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("unknown topic accepted"))?;
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let e = client
        .subscribe("readings")
        .filter("nope > 1")
        .stream()
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("bad filter accepted"))?;
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_after_its_connection_is_cut() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let client = Client::connect(&url(node.addr())).await?;
    client.raw().await?.batch_execute(TOPIC).await?;
    let mut all = publish(&client, 0, 200).await?;

    // Only the stream goes through the proxy.
    let via_proxy = Client::connect(&url(proxy.addr())).await?;
    let mut stream = via_proxy
        .subscribe("readings")
        .from_beginning()
        .fetch_size(7)
        .stream()
        .await?;
    let mut rows = take(&mut stream, 100).await?;
    let accepted = proxy.accepted();
    assert!(proxy.cut_all().await >= 1, "nothing to cut");
    all.extend(publish(&client, 200, 400).await?);
    rows.extend(take(&mut stream, 300).await?);
    assert_exactly(&rows, &all);
    assert!(proxy.accepted() > accepted, "the stream never reconnected");
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_after_the_node_is_killed_and_restarted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut node = ProcessNode::start(&data, &[])?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let client = Client::connect(&url(node.addr())).await?;
    client.raw().await?.batch_execute(TOPIC).await?;
    let mut all = publish(&client, 0, 100).await?;

    let via_proxy = Client::connect(&url(proxy.addr())).await?;
    let mut stream = via_proxy
        .subscribe("readings")
        .from_beginning()
        .fetch_size(10)
        .stream()
        .await?;
    let mut rows = take(&mut stream, 50).await?;

    node.kill9()?;
    let node = ProcessNode::start(&data, &[])?;
    proxy.set_upstream(node.addr());
    let client = Client::connect(&url(node.addr())).await?;
    all.extend(publish(&client, 100, 200).await?);
    rows.extend(take(&mut stream, 150).await?);
    assert_exactly(&rows, &all);
    Ok(())
}
