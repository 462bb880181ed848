//! [`Producer`]: rows batched into multi-row INSERTs, pipelined on one connection, each
//! row acknowledged with its position.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::backoff::Backoff;
use crate::batcher::{self, Command, Limits, Turn};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::message::{Position, Value};
use crate::sql;

/// Settings of a [`Producer`]; made by [`Client::producer`](crate::Client::producer).
#[must_use = "a builder does nothing until .build().await"]
pub struct ProducerBuilder {
    link: Arc<Link>,
    topic: String,
    columns: Vec<String>,
    batch_size: usize,
    linger: Duration,
    max_in_flight: usize,
    /// How long a batch is retried, when idempotent.
    idempotent: Option<Duration>,
}

impl ProducerBuilder {
    pub(crate) fn new(link: Arc<Link>, topic: &str, columns: &[&str]) -> ProducerBuilder {
        ProducerBuilder {
            link,
            topic: topic.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            batch_size: 500,
            linger: Duration::from_millis(5),
            max_in_flight: 4,
            idempotent: None,
        }
    }

    /// Most rows per INSERT (default 500). Capped so one statement stays under the wire
    /// protocol's 65535 parameters.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    /// How long a batch waits for more rows after its first one (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Most batches written at once on the connection (default 4).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches;
        self
    }

    /// Makes sends idempotent: every row gets a message id (`_msg_id`: this producer's
    /// random id and the row's number), and a batch that fails with an error after which
    /// it may or may not be stored (a lost connection, a node going away: SQLSTATE class
    /// `08`, `57P0x`, or eddy's `40001`) is sent again with the same ids, after a
    /// backoff, for up to `retry_for`. The topic stores each row once, since it skips ids
    /// it took within its `dedup_window` (default 2 minutes; keep `retry_for` below it).
    /// One batch is in flight at a time, so a retried batch never lands after a later
    /// one. Needs a topic replicated by raft (gossip topics refuse ids).
    pub fn idempotent(mut self, retry_for: Duration) -> Self {
        self.idempotent = Some(retry_for);
        self
    }

    /// Checks the topic and columns (by preparing the INSERT once) and starts the batching
    /// task.
    pub async fn build(self) -> Result<Producer> {
        if self.batch_size == 0 {
            return Err(Error::InvalidSetting(
                "batch_size must be at least 1".into(),
            ));
        }
        if !(1..=1024).contains(&self.max_in_flight) {
            return Err(Error::InvalidSetting(
                "max_in_flight must be between 1 and 1024".into(),
            ));
        }
        let columns = self.columns.len();
        // Idempotent: `_msg_id` is written first, and one batch at a time.
        let mut written = self.columns;
        let mut max_in_flight = self.max_in_flight;
        if self.idempotent.is_some() {
            written.insert(0, "_msg_id".to_owned());
            max_in_flight = 1;
        }
        let max_rows = self.batch_size.min(sql::max_rows(written.len()));
        // The one-row statement tells us the parameter types, so later batches of any
        // size go out as one Parse/Bind/Execute round trip (`query_typed`).
        let session = self.link.session().await?;
        let statement = session
            .prepared(&sql::insert(&self.topic, &written, 1))
            .await?;
        let types = statement.params().to_vec();
        let writer = Arc::new(Writer {
            link: self.link,
            topic: self.topic,
            columns: written,
            types,
            retry_for: self.idempotent,
        });
        // Room for every in-flight batch plus one being filled; `send` waits when it is full.
        let (tx, rx) = mpsc::channel(max_rows * (max_in_flight + 1));
        let limits = Limits {
            max_rows,
            linger: self.linger,
            max_in_flight,
        };
        let task = tokio::spawn(batcher::run(rx, limits, move |rows, turn| {
            let writer = writer.clone();
            async move { writer.write(rows, turn).await }
        }));
        Ok(Producer {
            tx: Some(tx),
            task: Some(task),
            columns,
            ids: self.idempotent.map(|_| Ids::new()),
        })
    }
}

/// One queued row and where its answer goes.
struct Pending {
    key: Option<String>,
    /// Its message id, when the producer is idempotent.
    id: Option<String>,
    values: Vec<Value>,
    ack: oneshot::Sender<Result<Position>>,
}

/// Message ids of an idempotent producer: a random prefix of its own and a row number.
struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        use std::hash::{BuildHasher, Hasher};
        // Two draws of std's randomly keyed hasher over the time and the process: 128
        // bits, so two producers never share a prefix.
        let draw = || {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        Ids {
            prefix: format!("{:016x}{:016x}", draw(), draw()),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Writes batches: one INSERT each, answering every row.
struct Writer {
    link: Arc<Link>,
    topic: String,
    /// The columns after `_key`: `_msg_id` first when idempotent.
    columns: Vec<String>,
    /// Parameter types of one row: `_key`, then the columns.
    types: Vec<Type>,
    /// Idempotent: how long a batch is retried.
    retry_for: Option<Duration>,
}

impl Writer {
    async fn write(&self, rows: Vec<Pending>, turn: Turn) {
        let mut outcome = self.insert(&rows, Some(turn)).await;
        if let Some(retry_for) = self.retry_for {
            // Alone in flight (one batch at a time), with the same ids every time.
            let until = Instant::now() + retry_for;
            let mut backoff = Backoff::default();
            while let Err(e) = &outcome {
                let wait = backoff.next_delay();
                if !may_be_stored(e) || Instant::now() + wait > until {
                    break;
                }
                tracing::warn!(topic = %self.topic, error = %e, ?wait, "producer retrying a batch");
                tokio::time::sleep(wait).await;
                outcome = self.insert(&rows, None).await;
            }
        }
        match outcome {
            Ok(positions) => {
                for (row, position) in rows.into_iter().zip(positions) {
                    let _ = row.ack.send(Ok(position));
                }
            }
            Err(e) => {
                for row in rows {
                    let _ = row.ack.send(Err(e.clone()));
                }
            }
        }
    }

    async fn insert(&self, rows: &[Pending], turn: Option<Turn>) -> Result<Vec<Position>> {
        let sql = sql::insert(&self.topic, &self.columns, rows.len());
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            Vec::with_capacity(rows.len() * self.types.len());
        for row in rows {
            params.push((&row.key, self.types[0].clone()));
            let mut types = self.types[1..].iter();
            // Idempotent rows carry their id, in the column written first.
            if let Some(id) = &row.id {
                if let Some(t) = types.next() {
                    params.push((id, t.clone()));
                }
            }
            for (v, t) in row.values.iter().zip(types) {
                params.push((v.as_ref() as &(dyn ToSql + Sync), t.clone()));
            }
        }
        let answer = self
            .link
            .call(|session| async move {
                let mut query = std::pin::pin!(session.query_typed(&sql, &params));
                // tokio-postgres puts the statement on the connection in the first poll;
                // after that the next batch may send.
                let first = futures::poll!(query.as_mut());
                drop(turn);
                match first {
                    Poll::Ready(answer) => Ok(answer?),
                    Poll::Pending => Ok(query.await?),
                }
            })
            .await?;
        // RETURNING rows come back in VALUES order.
        if answer.len() != rows.len() {
            return Err(Error::UnexpectedAnswer(format!(
                "an INSERT of {} rows returned {} rows",
                rows.len(),
                answer.len()
            )));
        }
        answer.iter().map(Position::from_row).collect()
    }
}

/// Whether a batch that failed with `e` may have been stored, so that sending it again
/// with the same ids may help: the connection went, the node is going or starting, or
/// eddy could not say whether the write was applied (`40001`).
fn may_be_stored(e: &Error) -> bool {
    e.is_retryable() || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Publishes rows to one topic in batches.
///
/// Each [`send`](Producer::send) resolves once its row is durable, with the row's
/// position. Rows queued together are written by one multi-row INSERT (atomic: all rows
/// or none), and up to `max_in_flight` INSERTs are pipelined on the connection.
///
/// Dropping the producer still writes every queued row (their acks still arrive);
/// [`close`](Producer::close) does the same and waits for it.
///
/// A lost connection fails the batches in flight with a retryable error (the rows may
/// or may not have been written); later rows go out on a new connection. An
/// [`idempotent`](ProducerBuilder::idempotent) producer retries them instead, without
/// storing a row twice.
pub struct Producer {
    /// `None` once closing.
    tx: Option<mpsc::Sender<Command<Pending>>>,
    task: Option<JoinHandle<()>>,
    /// User columns per row.
    columns: usize,
    /// Idempotent: where message ids come from.
    ids: Option<Ids>,
}

impl Producer {
    /// Queues a row (waiting while the queue is full) and returns the future of its ack,
    /// so one task can queue many rows before awaiting any.
    pub async fn enqueue(&self, key: Option<&str>, values: Vec<Value>) -> Result<Ack> {
        if values.len() != self.columns {
            return Err(Error::InvalidSetting(format!(
                "this producer writes {} columns, the row has {}",
                self.columns,
                values.len()
            )));
        }
        let tx = self.tx.as_ref().ok_or(Error::Closed("producer"))?;
        let (ack, rx) = oneshot::channel();
        let row = Pending {
            key: key.map(str::to_owned),
            id: self.ids.as_ref().map(Ids::next),
            values,
            ack,
        };
        tx.send(Command::Row(row))
            .await
            .map_err(|_| Error::Closed("producer"))?;
        Ok(Ack { rx })
    }

    /// Publishes a row (`values` in the producer's column order) and resolves with its
    /// position once it is durable. Run many sends concurrently (e.g.
    /// `futures::future::join_all`) to fill batches; awaiting each in turn writes one row
    /// per batch.
    pub async fn send(&self, key: Option<&str>, values: Vec<Value>) -> Result<Position> {
        self.enqueue(key, values).await?.await
    }

    /// Writes everything queued so far and waits until it is acknowledged.
    pub async fn flush(&self) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(Error::Closed("producer"))?;
        let (done, flushed) = oneshot::channel();
        tx.send(Command::Flush(done))
            .await
            .map_err(|_| Error::Closed("producer"))?;
        flushed.await.map_err(|_| Error::Closed("producer"))
    }

    /// Stops taking rows, writes the queued ones and waits until all are acknowledged.
    pub async fn close(mut self) -> Result<()> {
        self.tx = None;
        if let Some(task) = self.task.take() {
            // The task only ends by finishing its loop; a panic in it is a bug worth seeing.
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        Ok(())
    }
}

/// The ack of one queued row: resolves with its position once it is durable.
#[must_use = "an Ack does nothing unless awaited (the row is sent either way)"]
pub struct Ack {
    rx: oneshot::Receiver<Result<Position>>,
}

impl Future for Ack {
    type Output = Result<Position>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed("producer"))))
    }
}
