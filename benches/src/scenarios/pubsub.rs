//! `fanout` (one publisher as fast as the subscribers keep up, N subscribers) and `latency`
//! (one publisher at a fixed rate, one subscriber): publish to receive, counted per
//! delivery.
//!
//! | system | publisher | subscriber |
//! |---|---|---|
//! | eddy | eddy-client `Producer` (durable acks) | `COPY (SUBSCRIBE ..) TO STDOUT` |
//! | Redis | `PUBLISH` (pipelined in fanout) | pub/sub `SUBSCRIBE` |
//! | NATS | core `publish` | core `subscribe` |
//! | PostgreSQL | `SELECT pg_notify(..)` | `LISTEN` |
//! | the floor (latency) | prepared `INSERT`, acknowledged once durable | `COPY .. TO STDOUT`, sent each message once durable |
//!
//! Every payload carries its sequence number and send time; each subscriber checks that it
//! receives every message exactly once, and records publish-to-receive latency (from the
//! moment the publisher sends it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::publish::redis_connection;
use super::{stamped, unstamp};
use crate::{connect, histogram, Measured, Meter, Options, Pacer, Scenario, Server, System};

const TOPIC: &str = "bench_fanout";
const SUBJECT: &str = "bench.fanout";
/// How far (messages) the publisher may run ahead of the slowest subscriber, the same for
/// every system, so a fast publisher cannot overflow a peer's subscriber buffers.
const WINDOW: u64 = 10_000;
/// Messages per publish call when not paced.
const BATCH: usize = 100;
/// Most publish calls awaiting their acknowledgement.
const IN_FLIGHT: usize = 64;

pub(super) async fn setup(server: &Server, _opts: &Options) -> anyhow::Result<()> {
    if server.system == System::Eddy {
        let c = connect(server.url()).await?;
        c.batch_execute(&format!("DROP TOPIC IF EXISTS {TOPIC}"))
            .await?;
        // One partition: one ordered stream, as a Redis channel or NATS subject is.
        c.batch_execute(&format!(
            "CREATE TOPIC {TOPIC} (payload TEXT) WITH (partitions = 1)"
        ))
        .await?;
    }
    Ok(())
}

/// What one subscriber saw.
struct Received {
    count: u64,
    latency: Histogram<u64>,
    done: Instant,
}

pub(super) async fn run(
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    let subscribers = if scenario == Scenario::Latency {
        1
    } else {
        opts.subscribers.max(1)
    };
    let base = Instant::now();
    let counters: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let (target_tx, target_rx) = watch::channel(None::<u64>);
    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let stream = subscribe(server, i).await?;
        let (counters, target, meter) = (counters.clone(), target_rx.clone(), meter.clone());
        subs.push(tokio::spawn(receive(
            stream, i, base, counters, target, meter,
        )));
    }
    let start = Instant::now();
    let published = publish(server, opts, base, &counters).await?;
    target_tx.send_replace(Some(published));
    let mut latency = histogram();
    let mut last = start;
    for (i, s) in subs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "subscriber {i} received {} of {published} messages",
                    counters[i].load(Ordering::Relaxed)
                )
            })???;
        latency.add(r.latency)?;
        last = last.max(r.done);
        anyhow::ensure!(
            r.count == published,
            "subscriber {i} received {} of {published}",
            r.count
        );
    }
    Ok(Measured {
        ops: published * subscribers as u64,
        elapsed: last - start,
        latency,
    })
}

/// Counts one subscriber's messages until it has all `target` of them; fails on a
/// duplicate or a message it cannot read.
async fn receive(
    mut stream: BoxStream<'static, anyhow::Result<Bytes>>,
    i: usize,
    base: Instant,
    counters: Arc<Vec<AtomicU64>>,
    mut target: watch::Receiver<Option<u64>>,
    meter: Meter,
) -> anyhow::Result<Received> {
    let mut seen: Vec<bool> = Vec::new();
    let mut latency = histogram();
    let mut count = 0u64;
    loop {
        if *target.borrow() == Some(count) {
            return Ok(Received {
                count,
                latency,
                done: Instant::now(),
            });
        }
        let payload = tokio::select! {
            p = stream.next() => p.ok_or_else(|| anyhow::anyhow!("subscriber {i}: the stream ended"))??,
            changed = target.changed() => { changed?; continue }
        };
        let (seq, sent_ns) = unstamp(&payload)
            .ok_or_else(|| anyhow::anyhow!("subscriber {i}: unreadable payload {payload:?}"))?;
        let seq = seq as usize;
        if seen.len() <= seq {
            seen.resize(seq + 1, false);
        }
        anyhow::ensure!(!seen[seq], "subscriber {i}: message {seq} arrived twice");
        seen[seq] = true;
        let sent = base + Duration::from_nanos(sent_ns);
        latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
        count += 1;
        counters[i].store(count, Ordering::Relaxed);
        meter.add(1);
    }
}

/// Subscribes client `i` (on node `i` mod nodes) and returns its payloads once the
/// subscription is in place.
async fn subscribe(
    server: &Server,
    i: usize,
) -> anyhow::Result<BoxStream<'static, anyhow::Result<Bytes>>> {
    let url = server.url_for(i);
    Ok(match server.system {
        System::Eddy | System::Floor => {
            let c = connect(url).await?;
            let rows = c
                .copy_out(&format!(
                    "COPY (SUBSCRIBE {TOPIC} FROM BEGINNING) TO STDOUT"
                ))
                .await?;
            // COPY text rows are tab-separated, the payload is the last column.
            rows.flat_map(move |chunk| {
                let _keep = &c; // the stream lives as long as its client
                let payloads: Vec<anyhow::Result<Bytes>> = match chunk {
                    Ok(chunk) => copy_payloads(chunk).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.into())],
                };
                futures::stream::iter(payloads)
            })
            .boxed()
        }
        System::Redis => {
            let mut ps = redis::Client::open(url)?.get_async_pubsub().await?;
            ps.subscribe(TOPIC).await?;
            ps.into_on_message()
                .map(|m| Ok(Bytes::copy_from_slice(m.get_payload_bytes())))
                .boxed()
        }
        System::Nats => {
            let c = async_nats::connect(url).await?;
            let sub = c.subscribe(SUBJECT).await?;
            c.flush().await?; // the server has the subscription
            sub.map(move |m| {
                let _keep = &c;
                Ok(m.payload)
            })
            .boxed()
        }
        System::Postgres => {
            let (c, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    let m = match m {
                        Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                            Ok(Bytes::copy_from_slice(n.payload().as_bytes()))
                        }
                        Ok(_) => continue,
                        Err(e) => Err(e.into()),
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            });
            c.batch_execute(&format!("LISTEN {TOPIC}")).await?;
            futures::stream::unfold((rx, c), |(mut rx, c)| async move {
                rx.recv().await.map(|m| (m, (rx, c)))
            })
            .boxed()
        }
    })
}

/// The payload (last tab-separated column) of each row in a COPY text chunk.
fn copy_payloads(chunk: Bytes) -> Vec<Bytes> {
    chunk
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let from = line.iter().rposition(|b| *b == b'\t').map_or(0, |p| p + 1);
            Bytes::copy_from_slice(&line[from..])
        })
        // Heartbeat rows (NULL payload) carry no message.
        .filter(|p| p.as_ref() != b"\\N")
        .collect()
}

/// A publishing client.
enum Publisher {
    /// The producer, and the task awaiting its acks in order.
    Eddy(
        eddy_client::Producer,
        mpsc::UnboundedSender<eddy_client::Ack>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    Postgres(Arc<tokio_postgres::Client>, tokio_postgres::Statement),
    Redis(redis::aio::MultiplexedConnection),
    Nats(async_nats::Client),
}

impl Publisher {
    async fn connect(server: &Server, paced: bool) -> anyhow::Result<Publisher> {
        Ok(match server.system {
            System::Eddy => {
                let client = eddy_client::Client::connect(server.url()).await?;
                // Paced: every row goes out at once; flat out: batches fill for up to 1 ms.
                let linger = if paced {
                    Duration::ZERO
                } else {
                    Duration::from_millis(1)
                };
                let producer = client
                    .producer(TOPIC, &["payload"])
                    .batch_size(BATCH)
                    .linger(linger)
                    .max_in_flight(8)
                    .build()
                    .await?;
                let (tx, mut rx) = mpsc::unbounded_channel::<eddy_client::Ack>();
                let acks = tokio::spawn(async move {
                    while let Some(ack) = rx.recv().await {
                        ack.await?;
                    }
                    Ok(())
                });
                Publisher::Eddy(producer, tx, acks)
            }
            System::Postgres => {
                let c = connect(server.url()).await?;
                let stmt = c.prepare("SELECT pg_notify($1, $2)").await?;
                Publisher::Postgres(Arc::new(c), stmt)
            }
            System::Redis => Publisher::Redis(redis_connection(server.url()).await?),
            System::Nats => Publisher::Nats(async_nats::connect(server.url()).await?),
            System::Floor => {
                let c = connect(server.url()).await?;
                let stmt = c
                    .prepare(&format!(
                        "INSERT INTO {TOPIC} (channel, payload) VALUES ($1, $2) RETURNING _offset"
                    ))
                    .await?;
                Publisher::Postgres(Arc::new(c), stmt)
            }
        })
    }

    /// Sends `payloads` in order; what waits for acknowledgement goes into `in_flight`.
    async fn send(
        &mut self,
        payloads: Vec<String>,
        in_flight: &mut JoinSet<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        match self {
            Publisher::Eddy(producer, acks, _) => {
                for p in payloads {
                    let ack = producer.enqueue(None, vec![Box::new(p)]).await?;
                    acks.send(ack)
                        .map_err(|_| anyhow::anyhow!("the ack task ended"))?;
                }
            }
            Publisher::Postgres(c, stmt) => {
                for p in payloads {
                    let (c, stmt) = (c.clone(), stmt.clone());
                    in_flight.spawn(async move {
                        c.query_one(&stmt, &[&TOPIC, &p]).await?;
                        Ok(())
                    });
                }
            }
            Publisher::Redis(r) => {
                let mut pipe = redis::pipe();
                for p in &payloads {
                    pipe.cmd("PUBLISH").arg(TOPIC).arg(p).ignore();
                }
                let mut r = r.clone();
                in_flight.spawn(async move {
                    pipe.query_async::<()>(&mut r).await?;
                    Ok(())
                });
            }
            Publisher::Nats(c) => {
                for p in payloads {
                    c.publish(SUBJECT, Bytes::from(p)).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits for every acknowledgement.
    async fn finish(self, mut in_flight: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
        while let Some(r) = in_flight.join_next().await {
            r??;
        }
        match self {
            Publisher::Eddy(producer, acks, task) => {
                drop(acks);
                producer.close().await?;
                task.await?
            }
            Publisher::Nats(c) => Ok(c.flush().await?),
            Publisher::Postgres(..) | Publisher::Redis(_) => Ok(()),
        }
    }
}

/// Publishes for the run's duration (at `opts.rate` when set, else in batches as fast as
/// the slowest subscriber keeps within [`WINDOW`]); returns how many were published.
async fn publish(
    server: &Server,
    opts: &Options,
    base: Instant,
    received: &[AtomicU64],
) -> anyhow::Result<u64> {
    let paced = opts.rate.is_some();
    let mut publisher = Publisher::connect(server, paced).await?;
    let mut in_flight = JoinSet::new();
    let mut pacer = Pacer::new(opts.rate.map(|r| r as f64));
    let deadline = Instant::now() + opts.duration;
    let batch = if paced { 1 } else { BATCH };
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let slowest = received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if seq.saturating_sub(slowest) > WINDOW {
            tokio::time::sleep(Duration::from_micros(500)).await;
            continue;
        }
        while in_flight.len() >= IN_FLIGHT {
            if let Some(r) = in_flight.join_next().await {
                r??;
            }
        }
        let started = pacer.next().await;
        let sent_ns = (started - base).as_nanos() as u64;
        let payloads = (seq..seq + batch as u64)
            .map(|s| stamped(s, sent_ns, opts.size))
            .collect();
        publisher.send(payloads, &mut in_flight).await?;
        seq += batch as u64;
    }
    publisher.finish(in_flight).await?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_chunks_split_into_payloads() {
        let chunk = Bytes::from_static(
            b"0\t1\t2026-01-01\tabc\n0\t2\t2026-01-01\tdef\n\\N\t\\N\t2026-01-01\t\\N\n",
        );
        let got = copy_payloads(chunk);
        assert_eq!(
            got,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")]
        );
    }
}
