//! Ephemeral subscriptions: a topic's rows as a `Stream`, over a cursor on a connection
//! of their own, resumed exactly where they left off after the connection is lost.
//!
//! ```text
//!  stream()  ── connect ── SELECT .. FROM eddy.partitions      start → explicit offsets
//!            ── DECLARE c CURSOR FOR SUBSCRIBE t [WHERE ..] FROM OFFSETS ((p, o), ..)
//!  poll_next ── buffered row? yield it
//!            ── FETCH n c WITH (timeout = ..)  0..n rows; next offset per partition += ..
//!            ── connection lost: wait (backoff), connect, DECLARE .. FROM OFFSETS (next)
//! ```
//!
//! Because every partition's start is explicit from the first DECLARE, a resumed cursor
//! starts exactly after the last row received: none lost, none repeated.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio_postgres::Config;

use crate::backoff::Backoff;
use crate::delivery::Delivery;
use crate::error::{Error, Result};
use crate::link::{self, STALL_GRACE};
use crate::sql::{self, StartFrom};

/// The cursor's name on the subscription's own connection.
const CURSOR: &str = "eddy_subscription";

/// Settings of an ephemeral subscription; made by
/// [`Client::subscribe`](crate::Client::subscribe).
#[must_use = "a builder does nothing until .stream().await"]
pub struct SubscribeBuilder {
    config: Config,
    topic: String,
    filter: Option<String>,
    from: StartFrom,
    fetch_size: u32,
    fetch_timeout: Duration,
    backoff: Backoff,
}

impl SubscribeBuilder {
    pub(crate) fn new(config: Config, topic: &str) -> SubscribeBuilder {
        SubscribeBuilder {
            config,
            topic: topic.to_owned(),
            filter: None,
            from: StartFrom::Now,
            fetch_size: 100,
            fetch_timeout: Duration::from_secs(1),
            backoff: Backoff::default(),
        }
    }

    /// Only rows matching this SQL expression over the topic's columns (`"temp > 30"`).
    pub fn filter(mut self, expr: impl Into<String>) -> Self {
        self.filter = Some(expr.into());
        self
    }

    /// Start at the oldest row each partition still holds.
    pub fn from_beginning(mut self) -> Self {
        self.from = StartFrom::Beginning;
        self
    }

    /// Only rows published after the stream starts (the default).
    pub fn from_now(mut self) -> Self {
        self.from = StartFrom::Now;
        self
    }

    /// Start at `offset` in every partition.
    pub fn from_offset(mut self, offset: i64) -> Self {
        self.from = StartFrom::Offset(offset);
        self
    }

    /// Start at these `(partition, offset)` positions (e.g. the offsets after the last
    /// rows a previous run processed); partitions not listed start at the beginning.
    pub fn from_offsets(mut self, positions: impl IntoIterator<Item = (i32, i64)>) -> Self {
        self.from = StartFrom::Offsets(positions.into_iter().collect());
        self
    }

    /// Most rows per FETCH (default 100).
    pub fn fetch_size(mut self, rows: u32) -> Self {
        self.fetch_size = rows.max(1);
        self
    }

    /// How long one FETCH waits for a first row before it returns empty (default 1 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// The reconnect schedule (default 100 ms doubling to 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// Connects, fixes the start position of every partition and declares the cursor.
    /// Errors here (unknown topic, bad filter, position outside retention) are returned;
    /// once the stream runs, lost connections are retried and other errors end it.
    pub async fn stream(self) -> Result<Subscription> {
        let pg = link::open(&self.config).await?;
        let positions = Positions::resolve(&pg, &self.topic, &self.from).await?;
        let mut tail = Tail {
            config: self.config,
            topic: self.topic,
            filter: self.filter,
            fetch_size: self.fetch_size,
            fetch_timeout: self.fetch_timeout,
            backoff: self.backoff,
            from: self.from,
            positions,
            pg: None,
            buffer: VecDeque::new(),
            fatal: None,
            ended: false,
        };
        tail.declare_on(&pg).await?;
        tail.pg = Some(pg);
        let inner = futures::stream::unfold(tail, |mut tail| async move {
            let item = tail.next().await?;
            Some((item, tail))
        })
        .boxed();
        Ok(Subscription { inner })
    }
}

/// A live stream of a topic's rows; see [`SubscribeBuilder`]. Dropping it closes its
/// connection, which ends the subscription on the server.
pub struct Subscription {
    inner: BoxStream<'static, Result<Delivery>>,
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// The stream's state between polls.
struct Tail {
    config: Config,
    topic: String,
    filter: Option<String>,
    fetch_size: u32,
    fetch_timeout: Duration,
    backoff: Backoff,
    /// The caller's start position (only used when no partition is known).
    from: StartFrom,
    /// Next offset to receive, per partition.
    positions: Positions,
    /// The connection with the cursor declared; `None` after it was lost.
    pg: Option<tokio_postgres::Client>,
    /// Fetched rows not yet yielded.
    buffer: VecDeque<Delivery>,
    /// An error that ends the stream, yielded after the buffered rows.
    fatal: Option<Error>,
    /// Set once the fatal error was yielded.
    ended: bool,
}

impl Tail {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if let Some(d) = self.buffer.pop_front() {
                return Some(Ok(d));
            }
            if let Some(e) = self.fatal.take() {
                self.ended = true;
                return Some(Err(e));
            }
            if self.ended {
                return None;
            }
            match self.fetch().await {
                Ok(()) => self.backoff.reset(),
                Err(e) if e.is_retryable() => {
                    self.pg = None;
                    let wait = self.backoff.next_delay();
                    tracing::warn!(topic = %self.topic, error = %e, ?wait, "subscription lost its connection; resuming");
                    tokio::time::sleep(wait).await;
                }
                // Rows fetched before the error are yielded first.
                Err(e) => self.fatal = Some(e),
            }
        }
    }

    /// One FETCH into the buffer, reconnecting first if needed.
    async fn fetch(&mut self) -> Result<()> {
        let pg = match self.pg.take() {
            Some(pg) if !pg.is_closed() => pg,
            _ => {
                let pg = link::open(&self.config).await?;
                self.declare_on(&pg).await?;
                pg
            }
        };
        let fetch = sql::fetch_cursor(CURSOR, self.fetch_size, self.fetch_timeout);
        let rows = tokio::time::timeout(
            self.fetch_timeout + STALL_GRACE,
            pg.query_typed(&fetch, &[]),
        )
        .await
        .map_err(|_| Error::Stalled(self.fetch_timeout + STALL_GRACE))??;
        self.pg = Some(pg);
        for row in rows {
            let d = Delivery::from_row(row, None)?;
            self.positions.advance(d.partition(), d.offset());
            self.buffer.push_back(d);
        }
        Ok(())
    }

    async fn declare_on(&self, pg: &tokio_postgres::Client) -> Result<()> {
        // No partitions listed means the topic is unknown to eddy.partitions: declare from
        // the caller's position and let the server say what is wrong.
        let from = self.positions.start().unwrap_or_else(|| self.from.clone());
        pg.batch_execute(&sql::declare(
            CURSOR,
            &self.topic,
            self.filter.as_deref(),
            &from,
        ))
        .await?;
        Ok(())
    }
}

/// The next offset to receive in each partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Positions {
    next: BTreeMap<i32, i64>,
}

impl Positions {
    /// Turns a start position into an explicit offset for every partition of `topic`
    /// (`BEGINNING` = the oldest offset still held, `NOW` = the next offset to be written).
    async fn resolve(
        pg: &tokio_postgres::Client,
        topic: &str,
        from: &StartFrom,
    ) -> Result<Positions> {
        let rows = pg.query(sql::PARTITIONS, &[&topic]).await?;
        let mut ranges = Vec::with_capacity(rows.len());
        for row in rows {
            // NULL offsets: the node could not learn them (no replica answered). Then
            // the server resolves the start position itself.
            match (row.try_get(1)?, row.try_get(2)?) {
                (Some(start), Some(next)) => ranges.push((row.try_get(0)?, start, next)),
                _ => return Ok(Positions::default()),
            }
        }
        Ok(Positions::from_ranges(&ranges, from))
    }

    /// `ranges` are `(partition, start_offset, next_offset)`.
    pub(crate) fn from_ranges(ranges: &[(i32, i64, i64)], from: &StartFrom) -> Positions {
        let next = ranges
            .iter()
            .map(|&(p, start, end)| {
                let o = match from {
                    StartFrom::Beginning => start,
                    StartFrom::Now => end,
                    StartFrom::Offset(n) => *n,
                    StartFrom::Offsets(list) => list
                        .iter()
                        .find(|(lp, _)| *lp == p)
                        .map_or(start, |(_, o)| *o),
                };
                (p, o)
            })
            .collect();
        Positions { next }
    }

    /// Records that `(partition, offset)` was received.
    pub(crate) fn advance(&mut self, partition: i32, offset: i64) {
        let next = self.next.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// Where a cursor resumes: every known partition at its next offset; `None` when no
    /// partition is known.
    pub(crate) fn start(&self) -> Option<StartFrom> {
        (!self.next.is_empty())
            .then(|| StartFrom::Offsets(self.next.iter().map(|(&p, &o)| (p, o)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGES: [(i32, i64, i64); 3] = [(0, 0, 10), (1, 5, 7), (2, 0, 0)];

    #[test]
    fn start_positions_become_explicit_offsets() {
        let at = |from: StartFrom| Positions::from_ranges(&RANGES, &from).start().unwrap();
        assert_eq!(
            at(StartFrom::Beginning),
            StartFrom::Offsets(vec![(0, 0), (1, 5), (2, 0)])
        );
        assert_eq!(
            at(StartFrom::Now),
            StartFrom::Offsets(vec![(0, 10), (1, 7), (2, 0)])
        );
        assert_eq!(
            at(StartFrom::Offset(3)),
            StartFrom::Offsets(vec![(0, 3), (1, 3), (2, 3)])
        );
        // Unlisted partitions start at the beginning, as the server's FROM OFFSETS does.
        assert_eq!(
            at(StartFrom::Offsets(vec![(1, 6)])),
            StartFrom::Offsets(vec![(0, 0), (1, 6), (2, 0)])
        );
    }

    #[test]
    fn received_rows_move_their_partition_forward_only() {
        let mut p = Positions::from_ranges(&RANGES, &StartFrom::Beginning);
        p.advance(0, 0);
        p.advance(0, 1);
        p.advance(1, 6);
        // An older offset (cannot happen in order, but must not move back).
        p.advance(1, 5);
        assert_eq!(
            p.start(),
            Some(StartFrom::Offsets(vec![(0, 2), (1, 7), (2, 0)]))
        );
        assert_eq!(
            p.start().unwrap().clause(),
            "FROM OFFSETS ((0, 2), (1, 7), (2, 0))"
        );
        assert_eq!(Positions::from_ranges(&[], &StartFrom::Now).start(), None);
    }
}
