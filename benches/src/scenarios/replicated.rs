//! `replicated`: single-row publishes to a topic replicated on three nodes, with
//! `in_flight` publishes awaiting their acknowledgement at once, spread over `connections`
//! connections that go round the nodes. A publish is acknowledged once a majority of its
//! replicas has it.
//!
//! | system | what is written to | publish |
//! |---|---|---|
//! | eddy (3 nodes) | a topic of 3 partitions, each a Raft group on all 3 nodes, leaders spread over them | prepared `INSERT .. (payload) VALUES ($1)`; partitions round-robin, the node forwards to the leader |
//! | NATS (3 servers) | a JetStream stream on file storage, `num_replicas: 3` | JetStream publish, acknowledged by the stream leader |
//!
//! Every payload is distinct (it starts with the publisher's sequence number), so a
//! counting test can tell a lost or doubled message from a stored one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use super::stamped;
use crate::{connect, wait_for, Measured, Meter, Options, Server, System, Via};

/// The topic eddy publishes to.
pub const TOPIC: &str = "bench_replicated";
/// Partitions of [`TOPIC`]: one led by each node of a 3-node cluster.
const PARTITIONS: usize = 3;
const STREAM: &str = "BENCH_REPLICATED";
const SUBJECT: &str = "bench.replicated";

/// Replicas of what a run writes to: every node, up to three.
pub(super) fn replicas(server: &Server) -> usize {
    server.nodes().min(3)
}

pub(super) async fn setup(server: &Server) -> anyhow::Result<()> {
    match server.system {
        System::Eddy => create_topic(server, TOPIC, PARTITIONS).await,
        System::Nats => create_stream(server, STREAM, SUBJECT).await,
        System::Floor => Ok(()),
        other => anyhow::bail!("replicated has no {} workload", other.name()),
    }
}

/// (Re)creates eddy topic `name` with `partitions` partitions on [`replicas`] nodes and
/// waits until each partition has a leader.
pub(super) async fn create_topic(
    server: &Server,
    name: &str,
    partitions: usize,
) -> anyhow::Result<()> {
    let c = connect(server.url()).await?;
    c.batch_execute(&format!("DROP TOPIC IF EXISTS {name}"))
        .await?;
    c.batch_execute(&format!(
        "CREATE TOPIC {name} (payload TEXT) WITH (partitions = {partitions}, replicas = {})",
        replicas(server)
    ))
    .await?;
    wait_for(
        &format!("a leader for each partition of {name}"),
        Duration::from_secs(30),
        || async {
            let row = c
                .query_one(
                    "SELECT count(*) FROM eddy.partitions WHERE topic = $1 AND leader IS NOT NULL",
                    &[&name],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) == partitions as i64).then_some(())
        },
    )
    .await
}

/// (Re)creates JetStream stream `name` on file storage with [`replicas`] replicas. Retries
/// while the cluster has no meta leader yet (just after the servers started).
pub(super) async fn create_stream(
    server: &Server,
    name: &str,
    subject: &str,
) -> anyhow::Result<()> {
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    // The last refusal, to say why if JetStream never accepts the stream.
    let last = std::cell::RefCell::new(String::new());
    let created = wait_for(
        &format!("JetStream to create stream {name}"),
        Duration::from_secs(60),
        || async {
            let _ = js.delete_stream(name).await; // absent on the first run
            let config = jetstream::stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas(server),
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => Some(()),
                Err(e) => {
                    *last.borrow_mut() = e.to_string();
                    None
                }
            }
        },
    )
    .await;
    created.map_err(|e| e.context(last.into_inner()))
}

/// One connection's publisher, shared by the workers assigned to it.
#[derive(Clone)]
enum Writer {
    Eddy(Arc<tokio_postgres::Client>, tokio_postgres::Statement),
    /// eddy-client's batching producer: the messages its workers have waiting go out
    /// together as multi-row INSERTs, several pipelined on the connection.
    Producer(Arc<eddy_client::Producer>),
    /// Shared rather than cloned per worker: a context is large.
    Nats(Arc<jetstream::Context>),
}

impl Writer {
    async fn connect(server: &Server, i: usize, via: Via) -> anyhow::Result<Writer> {
        let url = server.url_for(i);
        Ok(match server.system {
            System::Nats => Writer::Nats(Arc::new(jetstream::new(async_nats::connect(url).await?))),
            System::Eddy if via == Via::Producer => {
                let client = eddy_client::Client::connect(url).await?;
                let producer = client
                    .producer(TOPIC, &["payload"])
                    .linger(Duration::ZERO)
                    .max_in_flight(8)
                    .build()
                    .await?;
                Writer::Producer(Arc::new(producer))
            }
            _ => {
                let c = connect(url).await?;
                let stmt = c
                    .prepare(&format!("INSERT INTO {TOPIC} (payload) VALUES ($1)"))
                    .await?;
                Writer::Eddy(Arc::new(c), stmt)
            }
        })
    }

    /// Publishes one message and waits for its acknowledgement.
    async fn publish(&self, payload: String) -> anyhow::Result<()> {
        match self {
            Writer::Eddy(c, stmt) => {
                let n = c.execute(stmt, &[&payload]).await?;
                anyhow::ensure!(n == 1, "INSERT reported {n} rows");
            }
            Writer::Producer(p) => {
                p.send(None, vec![Box::new(payload)]).await?;
            }
            Writer::Nats(js) => {
                js.publish(SUBJECT, Bytes::from(payload)).await?.await?;
            }
        }
        Ok(())
    }
}

pub(super) async fn run(
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    let in_flight = opts.in_flight.max(1);
    let connections = opts.connections.clamp(1, in_flight);
    let mut writers = Vec::with_capacity(connections);
    for i in 0..connections {
        writers.push(Writer::connect(server, i, opts.via).await?);
    }
    // Worker w publishes on connection w mod connections: each connection has
    // in_flight / connections publishes outstanding (tokio-postgres pipelines them).
    let workers: Vec<Writer> = (0..in_flight)
        .map(|w| writers[w % connections].clone())
        .collect();
    let size = opts.size;
    super::closed_loop(workers, opts, meter, move |w, writer, mut run| async move {
        let mut seq = (w as u64) << 40;
        while let Some(started) = run.next().await {
            writer.publish(stamped(seq, 0, size)).await?;
            seq += 1;
            run.done(started);
        }
        Ok(run.finish())
    })
    .await
}
