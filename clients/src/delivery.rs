//! A received row: its position, key, append time and typed column access.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::durable::DurableSub;
use crate::error::{Error, Result};
use crate::message::Position;

/// One row of a topic, from a subscription stream or a durable consumer.
#[derive(Debug)]
pub struct Delivery {
    row: Row,
    position: Position,
    ts: SystemTime,
    /// `_deliveries` of a durable subscription's row; `None` for ephemeral streams.
    deliveries: Option<i32>,
    /// The durable subscription it was fetched from, so [`Delivery::ack`] knows where to
    /// send the ack; `None` for ephemeral streams.
    sub: Option<Arc<DurableSub>>,
}

impl Delivery {
    /// Wraps a row of `FETCH`, checking the metadata columns eddy always sends.
    pub(crate) fn from_row(row: Row, sub: Option<Arc<DurableSub>>) -> Result<Delivery> {
        let position = Position::from_row(&row)?;
        let ts = row
            .try_get("_ts")
            .map_err(|e| Error::UnexpectedAnswer(format!("column _ts: {e}")))?;
        let deliveries = match sub {
            Some(_) => Some(
                row.try_get("_deliveries")
                    .map_err(|e| Error::UnexpectedAnswer(format!("column _deliveries: {e}")))?,
            ),
            None => None,
        };
        Ok(Delivery {
            row,
            position,
            ts,
            deliveries,
            sub,
        })
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.position.partition
    }

    /// The offset within the partition.
    pub fn offset(&self) -> i64 {
        self.position.offset
    }

    /// `(partition, offset)`.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The row's key, if it was published with one.
    pub fn key(&self) -> Option<&str> {
        self.row.try_get::<_, Option<&str>>("_key").ok().flatten()
    }

    /// When the row was appended (UTC).
    pub fn ts(&self) -> SystemTime {
        self.ts
    }

    /// How many times a durable subscription has delivered this row, this time included
    /// (1 on first delivery); `None` for ephemeral subscriptions.
    pub fn deliveries(&self) -> Option<i32> {
        self.deliveries
    }

    /// Column `name` as `T` (any type tokio-postgres decodes; `Option<T>` for NULLs).
    pub fn get<'a, T: FromSql<'a>>(&'a self, name: &str) -> Result<T> {
        self.row.try_get(name).map_err(Error::from_pg)
    }

    /// The underlying row (all columns, by index or name).
    pub fn row(&self) -> &Row {
        &self.row
    }

    /// The underlying row, owned.
    pub fn into_row(self) -> Row {
        self.row
    }

    /// Acknowledges this row to the durable consumer that fetched it: it will not be
    /// delivered again. Fails with [`Error::NotDurable`] for ephemeral subscriptions.
    pub async fn ack(&self) -> Result<()> {
        self.settle("ACK").await
    }

    /// Gives the row back to the durable consumer that fetched it, for redelivery at once.
    /// Fails with [`Error::NotDurable`] for ephemeral subscriptions.
    pub async fn nak(&self) -> Result<()> {
        self.settle("NACK").await
    }

    /// [`Consumer::ack`](crate::Consumer::ack) (`verb` = `ACK`) or
    /// [`Consumer::nak`](crate::Consumer::nak) of this row alone.
    async fn settle(&self, verb: &str) -> Result<()> {
        let sub = self.sub.as_ref().ok_or(Error::NotDurable)?;
        let p = self.position;
        sub.settle(verb, vec![(p.partition, p.offset)])
            .await
            .map(drop)
    }
}

/// Anything with a topic position: what [`Consumer::ack`](crate::Consumer::ack) and
/// [`Consumer::nak`](crate::Consumer::nak) take.
pub trait Positioned {
    /// `(partition, offset)`.
    fn position(&self) -> Position;
}

impl Positioned for Position {
    fn position(&self) -> Position {
        *self
    }
}

impl Positioned for Delivery {
    fn position(&self) -> Position {
        self.position
    }
}

impl<T: Positioned + ?Sized> Positioned for &T {
    fn position(&self) -> Position {
        (**self).position()
    }
}
