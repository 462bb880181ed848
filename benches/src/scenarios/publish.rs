//! `publish-durable` (one write in flight per connection, acknowledged once durable) and
//! `publish-bulk` (a fixed number of rows written as fast as each system's bulk path
//! allows).
//!
//! | system | durable | bulk |
//! |---|---|---|
//! | eddy | prepared `INSERT .. RETURNING _offset` | `COPY FROM STDIN`, or eddy-client's `Producer` |
//! | PostgreSQL | prepared `INSERT .. RETURNING id` | `COPY FROM STDIN` |
//! | Redis (appendfsync always) | `XADD` | pipelined `XADD` |
//! | NATS | JetStream publish, file storage, R1 | — |

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use bytes::Bytes;
use futures::SinkExt;

use crate::{connect, histogram, record, Measured, Meter, Options, Scenario, Server, System, Via};

const DURABLE: &str = "bench_publish";
const BULK: &str = "bench_bulk";
const STREAM: &str = "BENCH_PUBLISH";
const SUBJECT: &str = "bench.publish";

pub(super) async fn setup(scenario: Scenario, server: &Server) -> anyhow::Result<()> {
    let name = if scenario == Scenario::PublishBulk {
        BULK
    } else {
        DURABLE
    };
    match server.system {
        System::Eddy => {
            let c = connect(server.url()).await?;
            c.batch_execute(&format!("DROP TOPIC IF EXISTS {name}"))
                .await?;
            c.batch_execute(&format!(
                "CREATE TOPIC {name} (payload TEXT) WITH (partitions = 4)"
            ))
            .await?;
        }
        System::Postgres => {
            let c = connect(server.url()).await?;
            c.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            // A queue table as people write one: a generated key for single inserts; bulk
            // loads get a bare heap (no index), PostgreSQL's fastest COPY target.
            let columns = if scenario == Scenario::PublishBulk {
                "payload TEXT"
            } else {
                "id BIGSERIAL PRIMARY KEY, payload TEXT"
            };
            c.batch_execute(&format!("CREATE TABLE {name} ({columns})"))
                .await?;
        }
        System::Redis => {
            let mut r = redis_connection(server.url()).await?;
            redis::cmd("DEL")
                .arg(name)
                .query_async::<()>(&mut r)
                .await?;
        }
        System::Floor => {} // keeps nothing to drop or create
        System::Nats => {
            let js = jetstream::new(async_nats::connect(server.url()).await?);
            let _ = js.delete_stream(STREAM).await; // absent on the first run
            js.create_stream(jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECT.into()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

pub(crate) async fn redis_connection(
    url: &str,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// One connection of `publish-durable`.
enum Writer {
    Sql(tokio_postgres::Client, tokio_postgres::Statement),
    Redis(redis::aio::MultiplexedConnection),
    Nats(jetstream::Context),
}

impl Writer {
    /// Connection `i`, to node `i` mod nodes.
    async fn connect(server: &Server, i: usize) -> anyhow::Result<Writer> {
        let url = server.url_for(i);
        Ok(match server.system {
            System::Eddy | System::Postgres | System::Floor => {
                let c = connect(url).await?;
                let returning = if server.system == System::Postgres {
                    "id"
                } else {
                    "_offset"
                };
                let stmt = c
                    .prepare(&format!(
                        "INSERT INTO {DURABLE} (payload) VALUES ($1) RETURNING {returning}"
                    ))
                    .await?;
                Writer::Sql(c, stmt)
            }
            System::Redis => Writer::Redis(redis_connection(url).await?),
            System::Nats => Writer::Nats(jetstream::new(async_nats::connect(url).await?)),
        })
    }

    /// Writes one message and waits for its durable acknowledgement.
    async fn publish(&mut self, payload: &str) -> anyhow::Result<()> {
        match self {
            Writer::Sql(c, stmt) => {
                c.query_one(&*stmt, &[&payload]).await?;
            }
            Writer::Redis(r) => {
                redis::cmd("XADD")
                    .arg(DURABLE)
                    .arg("*")
                    .arg("payload")
                    .arg(payload)
                    .query_async::<String>(r)
                    .await?;
            }
            Writer::Nats(js) => {
                js.publish(SUBJECT, Bytes::copy_from_slice(payload.as_bytes()))
                    .await?
                    .await?;
            }
        }
        Ok(())
    }
}

pub(super) async fn durable(
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    let mut writers = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        writers.push(Writer::connect(server, i).await?);
    }
    let payload: Arc<str> = "x".repeat(opts.size).into();
    super::closed_loop(writers, opts, meter, |_, mut w, mut run| {
        let payload = payload.clone();
        async move {
            while let Some(started) = run.next().await {
                w.publish(&payload).await?;
                run.done(started);
            }
            Ok(run.finish())
        }
    })
    .await
}

/// Rows for connection `i` of `n` when `total` are spread over them.
fn share(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

pub(super) async fn bulk(
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let batch = opts.batch.max(1);
    let payload: Arc<str> = "x".repeat(opts.size).into();
    let (system, via, n) = (server.system, opts.via, opts.connections);
    let (ops, latency) = super::gather(n, |i| {
        let (url, meter, payload) = (server.url_for(i).to_owned(), meter.clone(), payload.clone());
        let rows = share(opts.messages, n, i);
        async move {
            match (system, via) {
                (System::Eddy, Via::Producer) => produce(&url, rows, &payload, &meter).await,
                (System::Eddy | System::Postgres, _) => {
                    copy(&url, rows, batch, &payload, &meter).await
                }
                (System::Redis, _) => xadd_pipelined(&url, rows, batch, &payload, &meter).await,
                (System::Nats | System::Floor, _) => {
                    anyhow::bail!("publish-bulk has no {} workload", system.name())
                }
            }
        }
    })
    .await?;
    anyhow::ensure!(
        ops == opts.messages,
        "{ops} of {} rows acknowledged",
        opts.messages
    );
    Ok(Measured {
        ops,
        elapsed: start.elapsed(),
        latency,
    })
}

/// `rows` rows by `COPY FROM STDIN` statements of `batch` rows; latency per statement.
async fn copy(
    url: &str,
    rows: u64,
    batch: usize,
    payload: &str,
    meter: &Meter,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let c = connect(url).await?;
    let line = format!("{payload}\n");
    let full = Bytes::from(line.repeat(batch));
    let mut hist = histogram();
    let mut left = rows;
    while left > 0 {
        let n = left.min(batch as u64);
        let data = if n == batch as u64 {
            full.clone()
        } else {
            Bytes::from(line.repeat(n as usize))
        };
        let t = Instant::now();
        let sink = c
            .copy_in(&format!("COPY {BULK} (payload) FROM STDIN"))
            .await?;
        futures::pin_mut!(sink);
        sink.send(data).await?;
        let written = sink.finish().await?;
        anyhow::ensure!(written == n, "COPY wrote {written} of {n} rows");
        record(&mut hist, t);
        meter.add(n);
        left -= n;
    }
    Ok((rows, hist))
}

/// `rows` rows through eddy-client's batching producer; latency per row (queued to acked).
async fn produce(
    url: &str,
    rows: u64,
    payload: &str,
    meter: &Meter,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let client = eddy_client::Client::connect(url).await?;
    let producer = client
        .producer(BULK, &["payload"])
        .batch_size(1000)
        .max_in_flight(8)
        .build()
        .await?;
    // Acks resolve in order; a task of their own awaits them while this one keeps queueing.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, eddy_client::Ack)>();
    let meter = meter.clone();
    let acks = tokio::spawn(async move {
        let mut hist = histogram();
        let mut n = 0u64;
        while let Some((t, ack)) = rx.recv().await {
            ack.await?;
            record(&mut hist, t);
            n += 1;
            meter.add(1);
        }
        Ok::<_, anyhow::Error>((n, hist))
    });
    for _ in 0..rows {
        let t = Instant::now();
        let ack = producer
            .enqueue(None, vec![Box::new(payload.to_owned())])
            .await?;
        tx.send((t, ack))
            .map_err(|_| anyhow::anyhow!("ack task ended early"))?;
    }
    drop(tx);
    producer.close().await?;
    acks.await?
}

/// `rows` XADDs in pipelines of `batch`; latency per pipeline.
async fn xadd_pipelined(
    url: &str,
    rows: u64,
    batch: usize,
    payload: &str,
    meter: &Meter,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let mut r = redis_connection(url).await?;
    let mut hist = histogram();
    let mut left = rows;
    while left > 0 {
        let n = left.min(batch as u64);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg(BULK)
                .arg("*")
                .arg("payload")
                .arg(payload);
        }
        let t = Instant::now();
        let ids: Vec<String> = pipe.query_async(&mut r).await?;
        anyhow::ensure!(
            ids.len() as u64 == n,
            "XADD pipeline acknowledged {} of {n}",
            ids.len()
        );
        record(&mut hist, t);
        meter.add(n);
        left -= n;
    }
    Ok((rows, hist))
}
