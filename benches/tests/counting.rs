//! The tool counts right: every acknowledged publish is stored once, every point select
//! finds its row. Timings are never asserted.

use std::time::Duration;

use eddy_bench::{connect, run, setup, Options, OwnNode, Scenario, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_durable_counts_every_acknowledged_message_once() -> anyhow::Result<()> {
    let own = OwnNode::start().await?;
    let url = own.url.clone();
    let c = connect(&url).await?;
    setup(&c, Scenario::PublishDurable, Target::Eddy).await?;
    let opts = Options { connections: 3, duration: Duration::from_millis(300), size: 10 };
    let s = run(&url, Scenario::PublishDurable, Target::Eddy, &opts).await?;
    assert!(s.ops > 0);
    let stored: i64 = c.query_one("SELECT count(*) FROM bench_publish", &[]).await?.get(0);
    assert_eq!(stored as u64, s.ops, "acknowledged publishes = stored messages");
    assert!(s.p50_us <= s.p99_us && s.p99_us <= s.p999_us);
    own.node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_select_finds_every_row_it_asks_for() -> anyhow::Result<()> {
    let own = OwnNode::start().await?;
    let url = own.url.clone();
    setup(&connect(&url).await?, Scenario::PointSelect, Target::Eddy).await?;
    let opts = Options { connections: 2, duration: Duration::from_millis(300), size: 10 };
    // `run` fails if any lookup misses its row.
    let s = run(&url, Scenario::PointSelect, Target::Eddy, &opts).await?;
    assert!(s.ops > 0);
    own.node.shutdown().await
}
