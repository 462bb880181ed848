//! Durable consumers: a named subscription whose position, leases and delivery counts
//! live on the server.
//!
//! The client keeps no state but the subscription's name: every call is one statement
//! (`FETCH n FROM SUBSCRIPTION`, `ACK`, `NACK`), so a consumer that dies and comes back —
//! or another consumer of the same subscription — carries on where the server says: acked
//! rows never come again, unacked ones come again after `ack_wait`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::backoff::Backoff;
use crate::delivery::{Delivery, Positioned};
use crate::durable::DurableSub;
use crate::error::{Error, Result};
use crate::link::{Link, STALL_GRACE};
use crate::sql::{self, SubscriptionOptions, SubscriptionSpec};

/// SQLSTATE of a FETCH that found rows removed by retention before they were delivered;
/// delivery goes on after them.
const LAGGED_OUT: &str = "YE003";

/// Settings of a durable consumer; made by [`Client::consumer`](crate::Client::consumer).
#[must_use = "a builder does nothing until .build().await"]
pub struct ConsumerBuilder {
    link: Link,
    name: String,
    create: Option<SubscriptionSpec>,
    fetch_size: u32,
    fetch_timeout: Duration,
    backoff: Backoff,
}

impl ConsumerBuilder {
    pub(crate) fn new(config: tokio_postgres::Config, name: &str) -> ConsumerBuilder {
        ConsumerBuilder {
            link: Link::new(config),
            name: name.to_owned(),
            create: None,
            fetch_size: 100,
            fetch_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
        }
    }

    /// Creates the subscription on `topic` with `options` if it does not exist yet
    /// (`CREATE SUBSCRIPTION IF NOT EXISTS`); an existing one is used as it is.
    pub fn create_on(mut self, topic: &str, options: SubscriptionOptions) -> Self {
        self.create = Some(SubscriptionSpec {
            topic: topic.to_owned(),
            options,
        });
        self
    }

    /// Rows per FETCH of [`Consumer::stream`] (default 100).
    pub fn fetch_size(mut self, rows: u32) -> Self {
        self.fetch_size = rows.max(1);
        self
    }

    /// How long one FETCH of [`Consumer::stream`] waits for a first row (default 5 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The reconnect schedule of [`Consumer::stream`] (default 100 ms doubling to 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// Connects and, with [`create_on`](Self::create_on), creates the subscription.
    pub async fn build(self) -> Result<Consumer> {
        let session = self.link.session().await?;
        if let Some(spec) = &self.create {
            session
                .batch_execute(&sql::create_subscription(&self.name, spec))
                .await?;
        }
        Ok(Consumer {
            sub: Arc::new(DurableSub {
                link: self.link,
                name: self.name,
            }),
            fetch_size: self.fetch_size,
            fetch_timeout: self.fetch_timeout,
            backoff: self.backoff,
        })
    }
}

/// A consumer of a durable subscription. Cheap to clone (clones share one connection);
/// several consumers of one subscription, in one process or many, share its rows.
///
/// Each call is one attempt: after a lost connection it fails with a retryable error and
/// the next call connects again. [`stream`](Consumer::stream) retries by itself.
#[derive(Clone)]
pub struct Consumer {
    /// The subscription and its connection, shared with the rows this consumer fetched.
    sub: Arc<DurableSub>,
    fetch_size: u32,
    fetch_timeout: Duration,
    backoff: Backoff,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.sub.name)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.sub.name
    }

    /// Up to `n` rows, waiting up to `timeout` for the first; an empty batch after the
    /// timeout is not an error. Each row is leased to this consumer until acked, nak'ed,
    /// or `ack_wait` passes.
    pub async fn fetch(&self, n: u32, timeout: Duration) -> Result<Vec<Delivery>> {
        let sql = sql::fetch_subscription(&self.sub.name, n, timeout);
        let rows = self
            .sub
            .link
            .call(|session| async move {
                let wait = timeout + STALL_GRACE;
                tokio::time::timeout(wait, session.query_typed(&sql, &[]))
                    .await
                    .map_err(|_| Error::Stalled(wait))?
                    .map_err(Error::from_pg)
            })
            .await?;
        rows.into_iter()
            .map(|row| Delivery::from_row(row, Some(self.sub.clone())))
            .collect()
    }

    /// Acknowledges rows: they are done and will not be delivered again. Returns how many
    /// the server settled (rows already acked or not leased are not counted).
    pub async fn ack<P: Positioned>(&self, rows: impl IntoIterator<Item = P>) -> Result<u64> {
        self.settle("ACK", rows).await
    }

    /// Gives rows back for redelivery at once (to this or another consumer). Returns how
    /// many the server settled.
    pub async fn nak<P: Positioned>(&self, rows: impl IntoIterator<Item = P>) -> Result<u64> {
        self.settle("NACK", rows).await
    }

    async fn settle<P: Positioned>(
        &self,
        verb: &str,
        rows: impl IntoIterator<Item = P>,
    ) -> Result<u64> {
        let positions: Vec<(i32, i64)> = rows
            .into_iter()
            .map(|r| {
                let p = r.position();
                (p.partition, p.offset)
            })
            .collect();
        self.sub.settle(verb, positions).await
    }

    /// Fetches in a loop and yields rows one by one, reconnecting with backoff after a
    /// lost connection. Ack each row (or batch) yourself; unacked rows come back after
    /// `ack_wait`. A "lagged out" error (`YE003`: rows removed by retention before they
    /// were delivered) is yielded and the stream goes on after them; other errors end it.
    pub fn stream(&self) -> ConsumerStream {
        let poller = Poller {
            consumer: self.clone(),
            backoff: self.backoff.clone(),
            buffer: VecDeque::new(),
            ended: false,
        };
        let inner = futures::stream::unfold(poller, |mut poller| async move {
            let item = poller.next().await?;
            Some((item, poller))
        })
        .boxed();
        ConsumerStream { inner }
    }
}

/// The state of [`Consumer::stream`] between polls.
struct Poller {
    consumer: Consumer,
    backoff: Backoff,
    /// Fetched rows not yet yielded.
    buffer: VecDeque<Delivery>,
    /// Set once an error that ends the stream was yielded.
    ended: bool,
}

impl Poller {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if let Some(d) = self.buffer.pop_front() {
                return Some(Ok(d));
            }
            if self.ended {
                return None;
            }
            let consumer = &self.consumer;
            match consumer
                .fetch(consumer.fetch_size, consumer.fetch_timeout)
                .await
            {
                Ok(rows) => {
                    self.backoff.reset();
                    self.buffer.extend(rows);
                }
                Err(e) if e.is_retryable() => {
                    let wait = self.backoff.next_delay();
                    tracing::warn!(subscription = %consumer.sub.name, error = %e, ?wait, "consumer lost its connection; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.ended = e.code().is_none_or(|c| c.code() != LAGGED_OUT);
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Rows of a durable subscription, one by one; see [`Consumer::stream`].
pub struct ConsumerStream {
    inner: BoxStream<'static, Result<Delivery>>,
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}
