//! What a node tells about itself: its load figures in `eddy.nodes`, latency
//! percentiles in `eddy.metrics`, the router's counters in `eddy.routing`, and the same
//! over HTTP (`/metrics`, `/healthz`, `/readyz`), draining included.

use std::net::SocketAddr;
use std::time::Duration;

use eddy_tests::{wait_for, wait_node_state, TestNode};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` to the HTTP endpoint; returns the status and the body.
async fn http(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http(addr, &format!("GET {path} HTTP/1.1\r\nhost: eddy\r\n\r\n")).await
}

/// The value of the `/metrics` sample whose name and labels are `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_metrics_and_the_http_endpoint_show_what_the_node_did() -> anyhow::Result<()> {
    let node =
        TestNode::start_with(|c| c.node.http_addr = Some("127.0.0.1:0".parse().unwrap())).await?;
    let web = node.http_addr().expect("an HTTP endpoint was asked for");
    let c = node.client().await?;
    c.batch_execute("CREATE TOPIC ticks (n BIGINT)").await?;
    let sub = node.client().await?;
    let stream = sub
        .copy_out("COPY (SUBSCRIBE ticks FROM BEGINNING) TO STDOUT")
        .await?;
    let mut stream = Box::pin(stream);
    for n in 0..5i64 {
        c.execute("INSERT INTO ticks (n) VALUES ($1)", &[&n])
            .await?;
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the subscription ended"))??;
    }
    c.query("SELECT count(*) FROM ticks", &[]).await?;

    // eddy.metrics: publishes, queries, and the messages delivered end to end.
    let rows = c
        .query(
            "SELECT metric, count, p50_ms, p99_ms, p99_9_ms, max_ms FROM eddy.metrics",
            &[],
        )
        .await?;
    let get_row = |name: &str| {
        rows.iter()
            .find(|r| r.get::<_, &str>(0) == name)
            .map(|r| {
                (
                    r.get::<_, i64>(1),
                    r.get::<_, f64>(2),
                    r.get::<_, f64>(3),
                    r.get::<_, f64>(4),
                    r.get::<_, f64>(5),
                )
            })
            .unwrap_or_else(|| panic!("no {name} row"))
    };
    let (published, ..) = get_row("publish");
    assert!(published >= 5, "{published}");
    let (delivered, p50, p99, p999, max) = get_row("subscription");
    assert_eq!(delivered, 5);
    assert!(
        p50 <= p99 && p99 <= p999 && p999 <= max && p50 > 0.0,
        "{p50} {p99} {p999} {max}"
    );
    let (queries, ..) = get_row("query");
    assert!(queries >= 1);

    // eddy.nodes: this node's own figures, as it gossips them every second.
    wait_for("one live subscription in the node's figures", Duration::from_secs(20), || async {
        let r = c
            .query_one(
                "SELECT subscriptions, connections, state, leaders, figures_age_ms FROM eddy.nodes WHERE this_node",
                &[],
            )
            .await
            .ok()?;
        let (subs, conns, state, leaders, age): (Option<i64>, Option<i64>, Option<String>, Option<i64>, Option<i64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        (subs == Some(1) && conns == Some(2) && state.as_deref() == Some("serving") && leaders >= Some(1) && age < Some(3000))
            .then_some(())
    })
    .await?;

    // The same over HTTP.
    let (status, body) = get(web, "/metrics").await?;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &body,
            "eddy_latency_seconds_count{node=\"1\",work=\"subscription\"}"
        ),
        Some(5.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "eddy_latency_seconds_count{node=\"1\",work=\"publish\"}"
        ) >= Some(5.0),
        "{body}"
    );
    assert_eq!(sample(&body, "eddy_up{node=\"1\"}"), Some(1.0), "{body}");
    assert_eq!(get(web, "/healthz").await?.0, 200);
    assert_eq!(get(web, "/readyz").await?, (200, "ready\n".to_owned()));
    assert_eq!(get(web, "/nowhere").await?.0, 404);
    assert_eq!(http(web, "POST /metrics HTTP/1.1\r\n\r\n").await?.0, 405);
    assert_eq!(http(web, "\r\n\r\n").await?.0, 400);

    // Draining: not ready, and shown so; resumed: ready again.
    c.batch_execute("ALTER CLUSTER DRAIN NODE 1").await?;
    assert_eq!(get(web, "/readyz").await?, (503, "draining\n".to_owned()));
    wait_node_state(&c, 1, "draining", Duration::from_secs(20)).await?;
    c.batch_execute("ALTER CLUSTER RESUME NODE 1").await?;
    assert_eq!(get(web, "/readyz").await?.0, 200);

    // A node alone routes nothing away: its reads run here, said why.
    let rows = c
        .query("EXPLAIN ROUTE SELECT count(*) FROM ticks", &[])
        .await?;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, bool>("chosen"));
    assert_eq!(rows[0].get::<_, i64>("node_id"), 1);
    node.shutdown().await
}
