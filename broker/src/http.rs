//! The node's HTTP endpoint (`--http-addr`, off by default): `/metrics` in Prometheus'
//! text format, `/healthz` and `/readyz`. One request per connection, GET only; it
//! serves what `eddy.nodes`, `eddy.metrics` and `eddy.routing` show, for scrapers and
//! load balancers that do not speak Postgres.
//!
//! | path | 200 when | else |
//! |---|---|---|
//! | `/healthz` | the node's tasks answer | no answer at all |
//! | `/readyz` | it serves: not draining, not stopping, a metadata leader known | 503 with the reason |
//! | `/metrics` | always | |

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use eddy_consensus::{Cluster, METADATA_GROUP};
use eddy_query::NodeFigures;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::load;
use crate::routing::Routing;

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reads.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) cluster: Cluster,
    pub(crate) routing: Arc<Routing>,
    /// Fires when the node begins to stop (then `/readyz` answers 503).
    pub(crate) stopping: CancellationToken,
}

/// Serves `listener` until `endpoint.stopping` fires; each connection on `tasks`.
pub(crate) async fn serve(listener: TcpListener, endpoint: Endpoint, tasks: TaskTracker) {
    loop {
        tokio::select! {
            _ = endpoint.stopping.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let e = endpoint.clone();
                    tasks.spawn(async move {
                        if let Err(err) = answer(socket, &e).await {
                            tracing::debug!(error = %err, "http request failed");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn answer(mut socket: TcpStream, e: &Endpoint) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let (status, body) = match read {
        Err(_) => (408, "request timeout\n".to_owned()),
        Ok(Err(err)) => return Err(err),
        Ok(Ok(())) => route(&head, e),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let content_type = if body.starts_with("# ") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// The status and body for a request head.
fn route(head: &[u8], e: &Endpoint) -> (u16, String) {
    let text = String::from_utf8_lossy(head);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return (400, "bad request\n".into());
    };
    let path = target.split('?').next().unwrap_or(target);
    if method != "GET" && method != "HEAD" {
        return (405, "only GET\n".into());
    }
    match path {
        "/healthz" => (200, "ok\n".into()),
        "/readyz" => match not_ready(e) {
            None => (200, "ready\n".into()),
            Some(why) => (503, format!("{why}\n")),
        },
        "/metrics" => (200, metrics(e)),
        _ => (404, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

/// Why the node does not take new work now, if it does not.
fn not_ready(e: &Endpoint) -> Option<&'static str> {
    if e.stopping.is_cancelled() {
        return Some("stopping");
    }
    if e.routing.draining() {
        return Some("draining");
    }
    let leader = e
        .cluster
        .group_info()
        .into_iter()
        .find(|g| g.group == METADATA_GROUP)
        .and_then(|g| g.leader);
    leader.is_none().then_some("no metadata leader known")
}

/// `/metrics`: this node's figures, latency percentiles and routing counters.
fn metrics(e: &Endpoint) -> String {
    let node = e.cluster.id();
    let meter = e.routing.meter();
    let mut out = String::new();
    let mine = e
        .cluster
        .members()
        .into_iter()
        .find(|m| m.this_node)
        .and_then(|m| load::decode(&m.load))
        .unwrap_or_default();
    let NodeFigures {
        draining,
        hot,
        connections,
        // Counted live below, not as last gossiped.
        in_flight: _,
        queued,
        service_us,
        statements_per_s,
        cpu_permille,
        subscriptions,
        subscription_bytes_per_s,
        leaders,
        writes_per_s,
    } = mine;
    let gauges: [(&str, &str, f64); 13] = [
        ("eddy_up", "1 while the node serves this endpoint", 1.0),
        (
            "eddy_ready",
            "1 while /readyz answers 200",
            f64::from(u8::from(not_ready(e).is_none())),
        ),
        (
            "eddy_draining",
            "1 while the node drains",
            f64::from(u8::from(draining)),
        ),
        (
            "eddy_hot",
            "1 while the node is flagged a hotspot",
            f64::from(u8::from(hot)),
        ),
        (
            "eddy_connections",
            "open Postgres connections",
            f64::from(connections),
        ),
        (
            "eddy_in_flight",
            "statements running",
            f64::from(meter.in_flight()),
        ),
        (
            "eddy_queued",
            "tasks waiting for a thread",
            f64::from(queued),
        ),
        (
            "eddy_service_seconds",
            "decayed service time of reads",
            service_us as f64 / 1e6,
        ),
        (
            "eddy_statements_per_second",
            "statements finished per second",
            statements_per_s as f64,
        ),
        (
            "eddy_cpu_ratio",
            "CPU use of the process, 0 to 1 of all cores",
            f64::from(cpu_permille) / 1000.0,
        ),
        (
            "eddy_subscriptions",
            "live subscriptions streaming from this node",
            f64::from(subscriptions),
        ),
        ("eddy_leaders", "Raft groups led", f64::from(leaders)),
        (
            "eddy_raft_writes_per_second",
            "entries per second appended by the groups led",
            writes_per_s as f64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP eddy_subscription_bytes_per_second bytes per second sent to subscribers\n# TYPE eddy_subscription_bytes_per_second gauge\neddy_subscription_bytes_per_second{{node=\"{node}\"}} {subscription_bytes_per_s}"
    );
    let _ = writeln!(
        out,
        "# HELP eddy_latency_seconds latency of what this node served, since it started\n# TYPE eddy_latency_seconds summary"
    );
    for m in meter.metrics() {
        for (q, v) in [
            ("0.5", m.p50_ms),
            ("0.9", m.p90_ms),
            ("0.99", m.p99_ms),
            ("0.999", m.p999_ms),
        ] {
            let _ = writeln!(
                out,
                "eddy_latency_seconds{{node=\"{node}\",work=\"{}\",quantile=\"{q}\"}} {}",
                m.metric,
                v / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "eddy_latency_seconds_count{{node=\"{node}\",work=\"{}\"}} {}",
            m.metric, m.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP eddy_routing_total what this node's router decided (eddy.routing)\n# TYPE eddy_routing_total counter"
    );
    for c in meter.counters() {
        let _ = writeln!(
            out,
            "eddy_routing_total{{node=\"{node}\",counter=\"{}\",detail=\"{}\"}} {}",
            c.counter, c.detail, c.value
        );
    }
    out
}
