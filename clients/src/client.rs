//! [`Client`]: one connection for publishing and plain SQL, and the builders of
//! producers, subscriptions and consumers.

use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Config;

use crate::consumer::ConsumerBuilder;
use crate::error::{Error, Result};
use crate::link::{Link, Session};
use crate::message::{Message, Position};
use crate::producer::ProducerBuilder;
use crate::sql;
use crate::subscription::SubscribeBuilder;

/// A connection to an eddy node. Cheap to clone; clones share the connection, and
/// statements from concurrent tasks are pipelined on it.
///
/// After the connection is lost, the next call connects again; a call that was under way
/// when it was lost fails with a retryable error ([`Error::is_retryable`]) and is not
/// repeated (a publish may or may not have been written). Subscriptions and durable
/// consumers use connections of their own.
#[derive(Clone, Debug)]
pub struct Client {
    link: Arc<Link>,
}

impl Client {
    /// Connects to `url`: a libpq-style string (`host=127.0.0.1 port=5433 user=eddy
    /// dbname=eddy`) or a URL (`postgres://eddy@127.0.0.1:5433/eddy`).
    pub async fn connect(url: &str) -> Result<Client> {
        let config: Config = url.parse().map_err(|e| Error::BadUrl(Arc::new(e)))?;
        Client::connect_with(config).await
    }

    /// Connects with a tokio-postgres [`Config`].
    pub async fn connect_with(config: Config) -> Result<Client> {
        // Caught here, or the driver would report it like a refused connection (retryable).
        if config.get_hosts().is_empty() {
            return Err(Error::InvalidSetting(
                "the connection string names no host".into(),
            ));
        }
        let link = Arc::new(Link::new(config));
        link.session().await?;
        Ok(Client { link })
    }

    /// The underlying tokio-postgres client, for plain SQL (`CREATE TOPIC`, `SELECT`,
    /// ...). It derefs to [`tokio_postgres::Client`].
    pub async fn raw(&self) -> Result<Arc<Session>> {
        self.link.session().await
    }

    /// Publishes one row and returns its position once it is durable.
    ///
    /// Runs `INSERT INTO topic (_key, columns...) VALUES (...) RETURNING _partition,
    /// _offset`, prepared once per topic and column list on this connection.
    pub async fn publish(&self, topic: &str, message: &Message) -> Result<Position> {
        let sql = sql::insert(topic, &message.columns, 1);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(message.values.len() + 1);
        params.push(&message.key);
        params.extend(
            message
                .values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync)),
        );
        let rows = self
            .link
            .call(|session| async move {
                let statement = session.prepared(&sql).await?;
                Ok(session.query(&statement, &params).await?)
            })
            .await?;
        match rows.as_slice() {
            [row] => Position::from_row(row),
            _ => Err(Error::UnexpectedAnswer(format!(
                "a one-row INSERT returned {} rows",
                rows.len()
            ))),
        }
    }

    /// A batching producer for `topic`, writing `columns` (plus the key) per row.
    pub fn producer(&self, topic: &str, columns: &[&str]) -> ProducerBuilder {
        ProducerBuilder::new(self.link.clone(), topic, columns)
    }

    /// An ephemeral subscription to `topic` (on a connection of its own).
    pub fn subscribe(&self, topic: &str) -> SubscribeBuilder {
        SubscribeBuilder::new(self.link.config().clone(), topic)
    }

    /// A consumer of the durable subscription `name` (on a connection of its own).
    pub fn consumer(&self, name: &str) -> ConsumerBuilder {
        ConsumerBuilder::new(self.link.config().clone(), name)
    }
}
