//! `replicated --kills N`: how long writes stall when a leader is killed with SIGKILL,
//! and whether every acknowledged message survives.
//!
//! ```text
//!   publisher ──> node A ──forwards──> leader (node B)   ✕ kill -9, later restarted
//!   (one message in flight, each ack timed)
//!   unavailable = the longest gap between acks, from the last one before the kill
//! ```
//!
//! Each round finds the leader of a one-partition topic (eddy: `eddy.partitions`) or of a
//! stream (NATS: each server's own view in `/jsz`), starts a publisher on another node, kills the
//! leader once the publisher is being acknowledged, waits until writes flow again through
//! a new leader, stops the publisher once its current message is acknowledged, and
//! starts the killed node again with its own flags and data. The next round begins once
//! that node serves again and has caught up.
//!
//! A failed publish is retried at once with the same message until it is acknowledged, so
//! every message sent is acknowledged: fewer distinct messages stored than acknowledged is
//! a loss. A retried attempt may have been committed after all (its outcome was unknown);
//! both systems get the message's sequence number as its id (eddy: `_msg_id`, NATS: the
//! `Nats-Msg-Id` header), so such a copy is dropped. A message stored twice anyway is
//! counted as a duplicate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

use super::replicated::{create_stream, create_topic};
use super::stamped;
use crate::{connect, wait_for, Failover, Options, Server, System};

const TOPIC: &str = "bench_failover";
const STREAM: &str = "BENCH_FAILOVER";
const SUBJECT: &str = "bench.failover";
/// Publishing before the kill, so the publisher is in its stride.
const WARM: Duration = Duration::from_millis(300);
/// Acknowledgements after the kill that show writes flow again.
const RESUMED: usize = 20;
/// Publishing after that.
const AFTER: Duration = Duration::from_millis(200);
/// The longest one message may go unacknowledged (retries included), and the longest a
/// killed node may take to serve again, before the measurement gives up.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The longest one status query may take (a node still electing may hold it).
const QUERY: Duration = Duration::from_secs(5);
/// NATS: how long a publish waits for its ack before it is retried. A publish sent just
/// before its leader died may never be answered; this bounds how much of that wait the
/// figure can include.
const NATS_ACK_TIMEOUT: Duration = Duration::from_millis(250);

/// Runs `opts.kills` leader kills against `server`, a cluster the tool started with at
/// least three nodes.
pub async fn failover(server: &Server, opts: &Options) -> anyhow::Result<Failover> {
    anyhow::ensure!(
        server.nodes() >= 3,
        "the failover measurement needs 3 nodes, {} has {}",
        server.system.name(),
        server.nodes()
    );
    drop(server.cluster()?); // fails now, not after setup, for a server the tool cannot kill
    match server.system {
        System::Eddy => create_topic(server, TOPIC, 1).await?,
        System::Nats => create_stream(server, STREAM, SUBJECT).await?,
        other => anyhow::bail!("failover has no {} workload", other.name()),
    }
    let seq = Arc::new(AtomicU64::new(0));
    let (mut unavailable_ms, mut acked, mut retries) = (Vec::new(), 0, 0);
    // A round whose leader moved before the kill (a restarted node may still disturb
    // an election) is not counted; this many of them in all means something is wrong.
    let mut attempts = 0;
    while unavailable_ms.len() < opts.kills {
        attempts += 1;
        anyhow::ensure!(
            attempts <= 3 * opts.kills,
            "the leader moved before the kill in {} of {attempts} rounds",
            attempts - 1 - unavailable_ms.len()
        );
        let leader = leader(server).await?;
        let round = Round::start(server, (leader + 1) % server.nodes(), &seq, opts.size).await?;
        wait_for("the publisher's first ack", GIVE_UP, || async {
            round.last_ack()
        })
        .await?;
        tokio::time::sleep(WARM).await;
        if self::leader(server).await? != leader {
            let (a, r, _) = round.finish().await?;
            (acked, retries) = (acked + a, retries + r);
            continue;
        }
        let killed_at = Instant::now();
        server.cluster()?.kill9(leader)?;
        // The message in flight at the kill may still be acknowledged (it was committed,
        // its reply on the way); the stall comes after it. Once this many acks followed
        // the kill, writes flow through the new leader.
        let resumed = wait_for("writes to resume after the kill", GIVE_UP, || async {
            (round.acks_after(killed_at) >= RESUMED).then_some(())
        })
        .await;
        tokio::time::sleep(AFTER).await;
        let (a, r, times) = round.finish().await?;
        resumed?;
        (acked, retries) = (acked + a, retries + r);
        // The longest gap between acknowledgements from the last one before the kill.
        let from = times.partition_point(|t| *t <= killed_at).saturating_sub(1);
        let gap = times[from..]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        unavailable_ms.push(gap.as_secs_f64() * 1000.0);
        server.cluster()?.restart(leader)?;
        if let Err(e) = caught_up(server, leader).await {
            // The log goes with the temp dir when the cluster is dropped: quote its end.
            let log = server.cluster()?.log(leader);
            let log = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            let mut tail: Vec<&str> = log.lines().rev().take(20).collect();
            tail.reverse();
            let tail = tail.join("\n");
            return Err(e.context(format!("the restarted node's log ends:\n{tail}")));
        }
    }
    let (stored, duplicates) = stored(server, acked).await?;
    Ok(Failover {
        system: server.system,
        kills: opts.kills,
        p50_ms: Failover::percentile(&unavailable_ms, 0.50),
        p99_ms: Failover::percentile(&unavailable_ms, 0.99),
        max_ms: Failover::percentile(&unavailable_ms, 1.0),
        unavailable_ms,
        acked,
        retries,
        stored,
        lost: acked.saturating_sub(stored),
        duplicates,
    })
}

/// Runs `check` at most [`QUERY`] long; `None` when it failed or took longer.
async fn bounded<T, E>(check: impl std::future::Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(QUERY, check).await.ok()?.ok()
}

/// The 0-based index of the node leading the partition (eddy) or stream (NATS), once the
/// nodes agree on it. A node just restarted may report its old leadership until it hears
/// from the new leader: asking one node could pick a node that no longer leads.
async fn leader(server: &Server) -> anyhow::Result<usize> {
    let replicas = server.nodes().min(3);
    wait_for("the nodes to agree on a leader", GIVE_UP, || async {
        let mut seen = Vec::with_capacity(server.nodes());
        for node in 0..server.nodes() {
            seen.extend(leader_seen_by(server, node).await);
        }
        let first = *seen.first()?;
        (seen.len() >= replicas && seen.iter().all(|l| *l == first)).then_some(first)
    })
    .await
}

/// The leader as node `node` sees it (`None`: it does not know, or did not answer).
async fn leader_seen_by(server: &Server, node: usize) -> Option<usize> {
    let url = server.url_for(node);
    match server.system {
        System::Nats => {
            // Its own view, from its monitoring endpoint: a JetStream API request is
            // answered by whichever server believes it leads, and a restarted one may
            // believe so until it hears of the new term.
            let port = server.cluster().ok()?.monitor_port(node)?;
            let jsz = bounded(http_get(port, "/jsz?streams=true")).await?;
            let jsz: serde_json::Value = serde_json::from_slice(&jsz).ok()?;
            let leader = jsz["account_details"]
                .as_array()?
                .iter()
                .filter_map(|a| a["stream_detail"].as_array())
                .flatten()
                .find(|s| s["name"] == STREAM)?["cluster"]["leader"]
                .as_str()?;
            // Servers are named n1..nN.
            leader
                .strip_prefix('n')?
                .parse::<usize>()
                .ok()?
                .checked_sub(1)
        }
        _ => {
            let c = bounded(connect(url)).await?;
            let row = bounded(c.query_one(
                "SELECT leader FROM eddy.partitions WHERE topic = $1 AND partition = 0",
                &[&TOPIC],
            ))
            .await?;
            // Node ids are 1..=N.
            let id = row.get::<_, Option<i64>>(0)?;
            usize::try_from(id).ok()?.checked_sub(1)
        }
    }
}

/// The body of `GET path` from an HTTP server on a loopback port.
async fn http_get(port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    // HTTP/1.0: the server closes the connection after the body.
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP body from port {port}"))?;
    Ok(response.split_off(body + 4))
}

/// Waits until restarted node `node` serves again, the partition or stream has a leader,
/// and the node has caught up with it.
async fn caught_up(server: &Server, node: usize) -> anyhow::Result<()> {
    match server.system {
        System::Nats => {
            let js = jetstream::new(async_nats::connect(server.url_for(node)).await?);
            wait_for("every stream replica to be current", GIVE_UP, || async {
                let mut stream = bounded(js.get_stream(STREAM)).await?;
                let info = bounded(stream.info()).await?;
                let cluster = info.cluster.as_ref()?;
                let current = cluster.leader.is_some()
                    && cluster.replicas.len() + 1 >= server.nodes().min(3)
                    && cluster.replicas.iter().all(|r| r.current && !r.offline);
                current.then_some(())
            })
            .await
        }
        _ => {
            let url = server.url_for(node);
            wait_for(
                &format!("restarted node {} to catch up", node + 1),
                GIVE_UP,
                || async {
                    let c = bounded(connect(url)).await?;
                    let row = bounded(c.query_one(
                        "SELECT leader FROM eddy.partitions WHERE topic = $1 AND partition = 0",
                        &[&TOPIC],
                    ))
                    .await?;
                    row.get::<_, Option<i64>>(0)?;
                    // A strong read on the node returns once its replica has applied
                    // everything committed when the read began.
                    bounded(c.query_one(&format!("SELECT count(*) FROM {TOPIC}"), &[])).await?;
                    Some(())
                },
            )
            .await
        }
    }
}

/// (distinct messages stored on the replica with the fewest, most extra copies on one).
/// eddy: every node's own replica is read with `consistency = 'local'`, once a strong
/// read on that node has caught it up. NATS: the stream's count (deduplicated by id).
async fn stored(server: &Server, acked: u64) -> anyhow::Result<(u64, u64)> {
    if server.system == System::Nats {
        let js = jetstream::new(async_nats::connect(server.url()).await?);
        let messages = wait_for("the stream's state", GIVE_UP, || async {
            let mut stream = bounded(js.get_stream(STREAM)).await?;
            Some(bounded(stream.info()).await?.state.messages)
        })
        .await?;
        return Ok((messages.min(acked), messages.saturating_sub(acked)));
    }
    let sql = format!("SELECT count(*), count(DISTINCT payload) FROM {TOPIC}");
    let (mut fewest, mut extra) = (u64::MAX, 0);
    for node in 0..server.nodes() {
        let c = connect(server.url_for(node)).await?;
        let counts = || async {
            let row = bounded(c.query_one(&sql, &[])).await?;
            Some((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        };
        let strong = wait_for("a strong count", GIVE_UP, counts).await?;
        c.batch_execute("SET consistency = 'local'").await?;
        let (all, distinct) = wait_for(
            &format!("node {}'s own replica to hold {strong:?}", node + 1),
            GIVE_UP,
            || async { counts().await.filter(|c| *c == strong) },
        )
        .await?;
        fewest = fewest.min(distinct);
        extra = extra.max(all - distinct);
    }
    Ok((fewest, extra))
}

/// One round's publisher task and the times of its acknowledgements.
struct Round {
    task: tokio::task::JoinHandle<anyhow::Result<(u64, u64)>>,
    acks: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Round {
    /// Starts publishing on node `node`, numbering messages from `seq`.
    async fn start(
        server: &Server,
        node: usize,
        seq: &Arc<AtomicU64>,
        size: usize,
    ) -> anyhow::Result<Round> {
        let publisher = Publisher::connect(server, node).await?;
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(publisher.run(seq.clone(), acks.clone(), stop.clone(), size));
        Ok(Round { task, acks, stop })
    }

    /// When the latest acknowledgement came.
    fn last_ack(&self) -> Option<Instant> {
        self.acks.lock().ok()?.last().copied()
    }

    /// How many acknowledgements came after `t`.
    fn acks_after(&self, t: Instant) -> usize {
        self.acks
            .lock()
            .map_or(0, |a| a.len() - a.partition_point(|x| *x <= t))
    }

    /// Stops once the message in flight is acknowledged: (acknowledged, retries, the
    /// acknowledgements' times in order).
    async fn finish(self) -> anyhow::Result<(u64, u64, Vec<Instant>)> {
        self.stop.store(true, Ordering::Relaxed);
        let (acked, retries) = self.task.await??;
        let times = std::mem::take(
            &mut *self
                .acks
                .lock()
                .map_err(|_| anyhow::anyhow!("a publisher panicked"))?,
        );
        Ok((acked, retries, times))
    }
}

/// The failover publisher: one message in flight.
enum Publisher {
    Eddy {
        url: String,
        client: tokio_postgres::Client,
        insert: tokio_postgres::Statement,
    },
    Nats(jetstream::Context),
}

impl Publisher {
    /// A publisher on node `node`.
    async fn connect(server: &Server, node: usize) -> anyhow::Result<Publisher> {
        let url = server.url_for(node);
        Ok(match server.system {
            System::Nats => {
                let mut js = jetstream::new(async_nats::connect(url).await?);
                js.set_timeout(NATS_ACK_TIMEOUT);
                Publisher::Nats(js)
            }
            _ => {
                let client = connect(url).await?;
                let insert = client
                    .prepare(&format!(
                        "INSERT INTO {TOPIC} (_msg_id, payload) VALUES ($1, $2)"
                    ))
                    .await?;
                Publisher::Eddy {
                    url: url.to_owned(),
                    client,
                    insert,
                }
            }
        })
    }

    /// One attempt at publishing message `seq`.
    async fn publish(&mut self, seq: u64, payload: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Eddy {
                url,
                client,
                insert,
            } => {
                if client.is_closed() {
                    // The node itself is never killed, but a connection may still drop.
                    *client = connect(url).await?;
                    *insert = client
                        .prepare(&format!(
                            "INSERT INTO {TOPIC} (_msg_id, payload) VALUES ($1, $2)"
                        ))
                        .await?;
                }
                client
                    .execute(&*insert, &[&seq.to_string(), &payload])
                    .await?;
            }
            Publisher::Nats(js) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", seq.to_string().as_str());
                js.publish_with_headers(SUBJECT, headers, Bytes::from(payload.to_owned()))
                    .await?
                    .await?;
            }
        }
        Ok(())
    }

    /// Publishes messages numbered from `seq` until `stop`, each retried until it is
    /// acknowledged, pushing each acknowledgement's time to `acks`. Returns (acknowledged,
    /// retries).
    async fn run(
        mut self,
        seq: Arc<AtomicU64>,
        acks: Arc<Mutex<Vec<Instant>>>,
        stop: Arc<AtomicBool>,
        size: usize,
    ) -> anyhow::Result<(u64, u64)> {
        let (mut acked, mut retries) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let payload = stamped(n, 0, size);
            let first_try = Instant::now();
            while let Err(e) = self.publish(n, &payload).await {
                retries += 1;
                anyhow::ensure!(
                    first_try.elapsed() < GIVE_UP,
                    "message {n} not acknowledged in {GIVE_UP:?}: {e}"
                );
                // Errors that come back at once would otherwise spin a core the nodes
                // need; 1 ms is below what the measurement resolves.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            acks.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(Instant::now());
            acked += 1;
        }
        Ok((acked, retries))
    }
}
