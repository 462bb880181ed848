//! eddy-client: the Rust client for eddy, on top of tokio-postgres.
//!
//! eddy speaks the PostgreSQL wire protocol, so this crate is a thin layer of eddy's SQL
//! over [`tokio_postgres`]: publishing with acknowledged positions, a batching producer,
//! subscriptions as a [`Stream`](futures::Stream) that resume after a lost connection
//! without losing or repeating a row, and durable consumers with acks.
//!
//! # Layout
//! - [`Client`] — one connection: [`publish`](Client::publish), plain SQL through
//!   [`raw`](Client::raw), and the builders below.
//! - [`Message`] / [`Position`] — a row to publish; where a row landed.
//! - [`Producer`] — rows batched into multi-row INSERTs, pipelined, one ack per row;
//!   [`idempotent`](ProducerBuilder::idempotent) ones retry failed batches without
//!   storing a row twice.
//! - [`Subscription`] — an ephemeral subscription (`DECLARE .. CURSOR FOR SUBSCRIBE`,
//!   `FETCH`) as a stream of [`Delivery`].
//! - [`Consumer`] — a durable subscription (`FETCH n FROM SUBSCRIPTION`, `ACK`, `NACK`).
//! - [`Error`] — one error type; [`Error::code`] is the server's SQLSTATE and
//!   [`Error::is_retryable`] says whether a new connection may help.
//!
//! Names of topics, columns and subscriptions are quoted, so they are used exactly as
//! given; unquoted SQL folds names to lower case (`CREATE TOPIC Readings` makes `readings`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use eddy_client::{Client, Message, Value};
//! use futures::StreamExt;
//!
//! # async fn demo() -> eddy_client::Result<()> {
//! let client = Client::connect("host=127.0.0.1 port=5433 user=eddy dbname=eddy").await?;
//! client
//!     .raw()
//!     .await?
//!     .batch_execute("CREATE TOPIC IF NOT EXISTS readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)")
//!     .await?;
//!
//! // One row, acknowledged once durable.
//! let at = client.publish("readings", &Message::new().key("s1").set("sensor", "s1").set("temp", 21.5)).await?;
//! println!("stored at partition {} offset {}", at.partition, at.offset);
//!
//! // Many rows: batched into multi-row INSERTs, one ack per row.
//! let producer = client.producer("readings", &["sensor", "temp"]).linger(Duration::from_millis(5)).build().await?;
//! let sends = (0..1000).map(|i| {
//!     let values: Vec<Value> = vec![Box::new(format!("s{}", i % 10)), Box::new(f64::from(i))];
//!     producer.send(None, values)
//! });
//! for ack in futures::future::join_all(sends).await {
//!     ack?;
//! }
//!
//! // A live stream of hot readings, from the first row on.
//! let mut hot = client.subscribe("readings").filter("temp > 30").from_beginning().stream().await?;
//! while let Some(row) = hot.next().await {
//!     let row = row?;
//!     println!("{} {} {}", row.partition(), row.offset(), row.get::<f64>("temp")?);
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
// Unit tests may unwrap; the library itself is still linted (clippy checks it without cfg(test)).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backoff;
mod batcher;
mod client;
mod consumer;
mod delivery;
mod durable;
mod error;
mod link;
mod message;
mod producer;
mod sql;
mod subscription;

pub use client::Client;
pub use consumer::{Consumer, ConsumerBuilder, ConsumerStream};
pub use delivery::{Delivery, Positioned};
pub use error::{Error, Result};
pub use link::Session;
pub use message::{Message, Position, Value};
pub use producer::{Ack, Producer, ProducerBuilder};
pub use sql::{quote_ident, quote_literal, StartFrom, SubscriptionOptions};
pub use subscription::{SubscribeBuilder, Subscription};
/// The driver underneath, for its types (`ToSql`, `FromSql`, `Row`, `SqlState`, ...).
pub use tokio_postgres;
