//! `Client::publish`: positions, keys, errors with their SQLSTATE, and the proxy used by
//! the reconnect tests (proved to cut connections here).

use std::collections::BTreeMap;

use eddy_client::{Client, Error, Message};
use eddy_tests::proxy::TcpProxy;
use eddy_tests::TestNode;
use tokio_postgres::error::SqlState;

use super::url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_increasing_offsets_per_partition() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute(
            "CREATE TOPIC readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)",
        )
        .await?;

    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut by_key: BTreeMap<String, i32> = BTreeMap::new();
    for i in 0..40 {
        let key = format!("s{}", i % 5);
        let m = Message::new()
            .key(key.clone())
            .set("sensor", key.clone())
            .set("temp", f64::from(i));
        let at = client.publish("readings", &m).await?;
        assert!((0..4).contains(&at.partition), "{at}");
        // Offsets within a partition are dense and increasing.
        let expected = last.get(&at.partition).map_or(0, |o| o + 1);
        assert_eq!(
            at.offset,
            expected,
            "partition {} after {:?}",
            at.partition,
            last.get(&at.partition)
        );
        last.insert(at.partition, at.offset);
        // One key, one partition.
        assert_eq!(*by_key.entry(key).or_insert(at.partition), at.partition);
    }
    // Without a key (and with a column left out: NULL) rows still get a position.
    let at = client
        .publish("readings", &Message::new().set("temp", 1.5))
        .await?;
    assert_eq!(at.offset, last.get(&at.partition).map_or(0, |o| o + 1));

    let raw = client.raw().await?;
    let n: i64 = raw
        .query_one("SELECT count(*) FROM readings", &[])
        .await?
        .get(0);
    assert_eq!(n, 41);
    let row = raw
        .query_one(
            "SELECT _key, sensor, temp FROM readings WHERE _partition = $1 AND _offset = $2",
            &[&at.partition, &at.offset],
        )
        .await?;
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, f64>(2), 1.5);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_carry_the_sqlstate() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let client = Client::connect(&url(node.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (n INT)")
        .await?;

    let e = client
        .publish("nope", &Message::new().set("n", 1i32))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    assert!(!e.is_retryable());
    let e = client
        .publish("t", &Message::new().set("missing", 1i32))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_COLUMN), "{e}");
    // Names are quoted: a case or a quote in the name is part of the name.
    let e = client
        .publish("T", &Message::new().set("n", 1i32))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    let e = client
        .publish("t\"; DROP TOPIC t; --", &Message::new().set("n", 1i32))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    // The connection is still usable, and the topic still there.
    let at = client.publish("t", &Message::new().set("n", 7i32)).await?;
    assert_eq!(at.offset, 0);
    assert!(matches!(
        Client::connect("port=notanumber").await,
        Err(Error::BadUrl(_))
    ));
    assert!(matches!(
        Client::connect("user=eddy").await,
        Err(Error::InvalidSetting(_))
    ));
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_on_the_call_after_a_lost_connection() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let proxy = TcpProxy::start(node.addr()).await?;
    let client = Client::connect(&url(proxy.addr())).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC t (n INT)")
        .await?;
    client.publish("t", &Message::new().set("n", 1i32)).await?;

    // Cut the connection. The next publish either runs into the cut (a retryable error,
    // no code) or, when the driver already saw the connection close, connects again.
    assert_eq!(proxy.cut_all().await, 1);
    let second = client.publish("t", &Message::new().set("n", 2i32)).await;
    if let Err(e) = &second {
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(e.code(), None);
    }
    // Either way the call after it runs on a new connection.
    client.publish("t", &Message::new().set("n", 3i32)).await?;
    assert_eq!(proxy.accepted(), 2);
    let n: Vec<i32> = client
        .raw()
        .await?
        .query("SELECT n FROM t ORDER BY _offset", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: &[i32] = if second.is_ok() { &[1, 2, 3] } else { &[1, 3] };
    assert_eq!(n, expected);
    node.shutdown().await
}
