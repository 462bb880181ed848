//! The tool counts right: a tiny run of every scenario against a real eddy process (three
//! forming a cluster for `replicated` and `gossip-converge`), checking that every
//! acknowledged message is stored (or received by every subscriber) exactly once, that a
//! leader kill loses nothing, and that a healed partition leaves every node the same rows.
//! Timings are never asserted.

use std::time::Duration;

use eddy_bench::scenarios::GOSSIP_TABLE;
use eddy_bench::{
    connect, failover, gossip_converge, run, wait_for, Meter, Options, Scenario, Server, System,
    Via,
};

fn tiny(scenario: Scenario) -> Options {
    let mut o = Options::defaults(scenario);
    o.duration = Duration::from_millis(300);
    o.connections = o.connections.min(3);
    o.messages = 2_500;
    o.batch = 400;
    o.subscribers = 3;
    o.in_flight = 12;
    o.kills = 1;
    o
}

/// One tiny run of `scenario` against `server`.
async fn run_tiny(scenario: Scenario, server: &Server) -> anyhow::Result<eddy_bench::Summary> {
    run(scenario, server, &tiny(scenario), &Meter::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_durable_counts_every_acknowledged_message_once() -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 1).await?;
    let s = run_tiny(Scenario::PublishDurable, &eddy).await?;
    assert!(s.ops > 0);
    let stored: i64 = connect(eddy.url())
        .await?
        .query_one("SELECT count(*) FROM bench_publish", &[])
        .await?
        .get(0);
    assert_eq!(
        stored as u64, s.ops,
        "acknowledged publishes = stored messages"
    );
    assert!(s.p50_us <= s.p99_us && s.p99_us <= s.p999_us);
    assert!(
        s.cpu_seconds.is_some_and(|c| c >= 0.0),
        "the child's CPU seconds are read: {s:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_makes_every_acknowledged_publish_durable_once_and_delivers_it(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("floor.dat");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "host=127.0.0.1 port={} user=floor",
        listener.local_addr()?.port()
    );
    let serving = {
        let file = file.clone();
        tokio::spawn(async move { eddy_bench::floor::serve(listener, &file, true).await })
    };
    let floor = Server::external(System::Floor, vec![url])?;
    let durable = run_tiny(Scenario::PublishDurable, &floor).await?;
    let replicated = run_tiny(Scenario::Replicated, &floor).await?;
    // The run fails unless its subscriber receives every message once.
    let delivered = run_tiny(Scenario::Latency, &floor).await?;
    assert!(durable.ops > 0 && replicated.ops > 0 && delivered.ops > 0);
    let written = eddy_bench::floor::written(&file)?;
    assert_eq!(
        written.len() as u64,
        durable.ops + replicated.ops + delivered.ops,
        "acknowledged publishes = payloads in the floor's file"
    );
    // replicated's and latency's payloads are all different: none written twice.
    let distinct: std::collections::HashSet<_> = written[durable.ops as usize..].iter().collect();
    assert_eq!(distinct.len() as u64, replicated.ops + delivered.ops);
    assert!(!serving.is_finished(), "the floor still serves");
    serving.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_bulk_stores_exactly_the_rows_by_copy_and_by_producer() -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 1).await?;
    for via in [Via::Copy, Via::Producer] {
        let opts = Options {
            via,
            ..tiny(Scenario::PublishBulk)
        };
        // A second run starts from an empty topic: setup drops what the first left.
        let s = run(Scenario::PublishBulk, &eddy, &opts, &Meter::default()).await?;
        assert_eq!(s.ops, 2_500, "{via:?}");
        let c = connect(eddy.url()).await?;
        let row = c
            .query_one(
                "SELECT count(*), count(DISTINCT (_partition, _offset)) FROM bench_bulk",
                &[],
            )
            .await?;
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            (2_500, 2_500),
            "{via:?}: every row once"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_select_finds_every_row_it_asks_for() -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 1).await?;
    // `run` fails if any lookup misses its row.
    let meter = Meter::default();
    let s = run(
        Scenario::PointSelect,
        &eddy,
        &tiny(Scenario::PointSelect),
        &meter,
    )
    .await?;
    assert!(s.ops > 0);
    assert_eq!(meter.get(), s.ops, "the progress meter saw every operation");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_subscriber_once() -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 1).await?;
    let opts = tiny(Scenario::Fanout);
    // `run` fails unless each subscriber got every published message exactly once.
    let s = run(Scenario::Fanout, &eddy, &opts, &Meter::default()).await?;
    let published: i64 = connect(eddy.url())
        .await?
        .query_one("SELECT count(*) FROM bench_fanout", &[])
        .await?
        .get(0);
    assert!(published > 0);
    assert_eq!(
        s.ops,
        published as u64 * 3,
        "deliveries = published x subscribers"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_run_receives_what_it_paced_out() -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 1).await?;
    let mut opts = tiny(Scenario::Latency);
    opts.rate = Some(200);
    let s = run(Scenario::Latency, &eddy, &opts, &Meter::default()).await?;
    let published: i64 = connect(eddy.url())
        .await?
        .query_one("SELECT count(*) FROM bench_fanout", &[])
        .await?
        .get(0);
    assert_eq!(s.ops, published as u64);
    // 300 ms at 200/s: the pacer has 61 slots at most, however fast the machine.
    assert!(s.ops > 0 && s.ops <= 61, "paced: {}", s.ops);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_stores_every_acknowledged_publish_once_on_every_node_and_survives_a_kill(
) -> anyhow::Result<()> {
    let eddy = Server::start(System::Eddy, 3).await?;
    assert_eq!(eddy.nodes(), 3);
    let opts = tiny(Scenario::Replicated);
    let s = run(Scenario::Replicated, &eddy, &opts, &Meter::default()).await?;
    assert!(s.ops > 0);
    assert!(
        s.cpu_seconds.is_some_and(|c| c > 0.0),
        "CPU seconds summed over the three nodes: {s:?}"
    );
    // A strong read on each node sees every acknowledged publish; then the node's own
    // replica (a local read) holds each exactly once.
    let want = (s.ops as i64, s.ops as i64);
    let sql = "SELECT count(*), count(DISTINCT payload) FROM bench_replicated";
    for node in 0..3 {
        let c = connect(eddy.url_for(node)).await?;
        let row = c.query_one(sql, &[]).await?;
        assert_eq!((row.get(0), row.get(1)), want, "node {}: strong", node + 1);
        c.batch_execute("SET consistency = 'local'").await?;
        let local = wait_for("the local replica", Duration::from_secs(30), || async {
            let row = c.query_one(sql, &[]).await.ok()?;
            let got: (i64, i64) = (row.get(0), row.get(1));
            (got == want).then_some(got)
        })
        .await;
        assert!(local.is_ok(), "node {}: local replica", node + 1);
    }
    // The writes were spread: every partition (each led by its own node) has some.
    let c = connect(eddy.url()).await?;
    let parts = c
        .query(
            "SELECT leader FROM eddy.partitions WHERE topic = 'bench_replicated' AND next_offset > 0",
            &[],
        )
        .await?;
    assert_eq!(parts.len(), 3, "all three partitions written");

    // The fault injector works: a killed node refuses connections, a restarted one serves
    // on its old address.
    eddy.cluster()?.kill9(2)?;
    assert!(connect(eddy.url_for(2)).await.is_err(), "node 3 is down");
    eddy.cluster()?.restart(2)?;
    connect(eddy.url_for(2))
        .await?
        .query_one("SELECT count(*) FROM eddy.nodes", &[])
        .await?;

    // One leader kill: the publisher goes on through the new leader, nothing acknowledged
    // is lost, and the killed node comes back.
    let f = failover(&eddy, &opts).await?;
    assert_eq!(f.kills, 1);
    assert_eq!(
        f.unavailable_ms.len(),
        1,
        "the gap around the kill was measured"
    );
    assert!(f.acked > 0);
    assert_eq!(f.lost, 0, "{f:?}");
    assert_eq!(f.stored, f.acked, "{f:?}");
    Ok(())
}

/// Every row of the gossip-converge table on node `node`, ordered by id.
async fn gossip_rows(eddy: &Server, node: usize) -> anyhow::Result<Vec<(i64, String)>> {
    let rows = connect(eddy.url_for(node))
        .await?
        .query(
            &format!("SELECT id, v FROM {GOSSIP_TABLE} ORDER BY id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Gossip frames node 1 failed to exchange so far (lost frames count as failures).
async fn gossip_failures(c: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let r = c
        .query_one(
            "SELECT coalesce(sum(failures), 0) FROM eddy.gossip_peers",
            &[],
        )
        .await?;
    Ok(r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_converge_leaves_every_node_the_same_rows_and_counts_the_bytes() -> anyhow::Result<()>
{
    let eddy = Server::start(System::Eddy, 3).await?;
    let mut opts = Options::defaults(Scenario::GossipConverge);
    opts.updates = 24;
    opts.loss_permille = 100;
    let meter = Meter::default();
    // Each round waits until every node's eddy.nodes shows the cut (the fault files took
    // effect), and ends only once every node holds the same rows, as the updates leave
    // them (a key one node wrote exactly as that node left it).
    let g = gossip_converge(&eddy, &opts, 2, &meter).await?;
    assert_eq!(meter.get(), 2, "both rounds counted");
    assert_eq!(
        (
            g.converge_ms.len(),
            g.partition_ms.len(),
            g.heal_seen_ms.len()
        ),
        (2, 2, 2)
    );
    assert!(
        g.heal_seen_ms
            .iter()
            .zip(&g.converge_ms)
            .all(|(s, c)| s <= c),
        "the heal is seen no later than the rows converge: {g:?}"
    );
    assert_eq!(
        (g.nodes, g.updates, g.keys, g.loss_percent),
        (3, 24, 12, 10.0)
    );
    assert!(g.single_writer_keys + g.conflicting_keys > 0, "{g:?}");
    assert!(g.pushed_bytes > 0 && g.pushed_per_update > 0.0, "{g:?}");
    assert!(
        g.delivered_bytes >= g.pushed_bytes,
        "every pushed byte was received, and anti-entropy answers come on top: {g:?}"
    );
    assert_eq!(g.pushed_per_update, g.pushed_bytes as f64 / 48.0);
    assert_eq!(g.pushed_per_update_per_peer, g.pushed_per_update / 2.0);
    let first = gossip_rows(&eddy, 0).await?;
    assert_eq!(first.len() as u64, g.rows, "the rows reported are node 1's");
    for node in 1..3 {
        assert_eq!(gossip_rows(&eddy, node).await?, first, "node {}", node + 1);
    }

    // The loss injector works: with every frame lost, a write stays on its node (its
    // pushes and syncs fail); with none lost, it reaches the others.
    let clients = [
        connect(eddy.url_for(0)).await?,
        connect(eddy.url_for(1)).await?,
        connect(eddy.url_for(2)).await?,
    ];
    let mut before = Vec::new();
    for c in &clients {
        before.push(gossip_failures(c).await?);
    }
    eddy.cluster()?.set_gossip_loss(1000)?;
    // Applied once every node's idle anti-entropy exchanges start failing.
    for (c, b) in clients.iter().zip(&before) {
        wait_for(
            "every node to lose frames",
            Duration::from_secs(30),
            || async { (gossip_failures(c).await.ok()? > *b).then_some(()) },
        )
        .await?;
    }
    let c1 = &clients[0];
    let failures = gossip_failures(c1).await?;
    c1.execute(
        &format!("INSERT INTO {GOSSIP_TABLE} (id, v) VALUES (-1, 'lost')"),
        &[],
    )
    .await?;
    wait_for("node 1 to lose frames", Duration::from_secs(30), || async {
        (gossip_failures(c1).await.ok()? >= failures + 3).then_some(())
    })
    .await?;
    for node in 1..3 {
        let rows = gossip_rows(&eddy, node).await?;
        assert!(
            !rows.contains(&(-1, "lost".into())),
            "node {}: nothing got through",
            node + 1
        );
    }
    eddy.cluster()?.set_gossip_loss(0)?;
    for node in 1..3 {
        wait_for("the write to spread", Duration::from_secs(30), || async {
            let rows = gossip_rows(&eddy, node).await.ok()?;
            rows.contains(&(-1, "lost".into())).then_some(())
        })
        .await?;
    }
    Ok(())
}
