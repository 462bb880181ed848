//! A client given several addresses of a cluster: it connects to a live, serving node
//! with the least work, leaves a drained one alone, and after its node dies the next
//! call connects to another.

use std::time::Duration;

use eddy_client::{Client, Message};
use eddy_tests::cluster::TestCluster;
use eddy_tests::{wait_for, wait_node_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_aware_client_avoids_drained_and_dead_nodes() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    let c1 = cluster.client(1).await?;
    c1.batch_execute("CREATE TOPIC events (n BIGINT) WITH (partitions = 3)")
        .await?;
    cluster.replicas_of("events", 9).await?;
    c1.batch_execute("ALTER CLUSTER DRAIN NODE 1").await?;
    wait_node_state(&c1, 1, "draining", Duration::from_secs(20)).await?;
    let (a, b, c) = (cluster.addr(1), cluster.addr(2), cluster.addr(3));
    let url = format!(
        "host={},{},{} port={},{},{} user=eddy dbname=eddy",
        a.ip(),
        b.ip(),
        c.ip(),
        a.port(),
        b.port(),
        c.port()
    );
    let client = Client::connect(&url).await?;
    let on: i64 = client
        .raw()
        .await?
        .query_one("SELECT node_id FROM eddy.nodes WHERE this_node", &[])
        .await?
        .get(0);
    assert_ne!(on, 1, "node 1, listed first, drains");
    for n in 0..10i64 {
        client
            .publish("events", &Message::new().set("n", n))
            .await?;
    }
    // Its node dies: a call may fail (retryably), and the next one runs elsewhere.
    cluster.kill9(on as usize)?;
    let mut published = 10;
    let moved_to = wait_for(
        "a publish after the node died",
        Duration::from_secs(30),
        || async {
            match client
                .publish("events", &Message::new().set("n", 10i64))
                .await
            {
                Ok(_) => Some(()),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    None
                }
            }
        },
    )
    .await;
    moved_to?;
    published += 1;
    let now_on: i64 = client
        .raw()
        .await?
        .query_one("SELECT node_id FROM eddy.nodes WHERE this_node", &[])
        .await?
        .get(0);
    assert!(now_on != on && now_on != 1, "moved to node {now_on}");
    let survivor = cluster.client(now_on as usize).await?;
    let n: i64 = survivor
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    assert_eq!(n, published);
    Ok(())
}
