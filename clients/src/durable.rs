//! A durable subscription as the client holds it: its name and the connection its
//! statements go over. A [`Consumer`](crate::Consumer) and every
//! [`Delivery`](crate::Delivery) it fetched share one, so a delivery can ack itself
//! without holding its consumer.

use tokio_postgres::SimpleQueryMessage;

use crate::error::Result;
use crate::link::Link;
use crate::sql;

/// A durable subscription's name and its connection.
#[derive(Debug)]
pub(crate) struct DurableSub {
    pub(crate) link: Link,
    pub(crate) name: String,
}

impl DurableSub {
    /// Settles the rows at `positions` (`(partition, offset)`): `ACK` (`verb` = `ACK`) or
    /// `NACK`. Returns how many the server settled (rows already acked or not leased are
    /// not counted).
    pub(crate) async fn settle(&self, verb: &str, positions: Vec<(i32, i64)>) -> Result<u64> {
        if positions.is_empty() {
            return Ok(0);
        }
        let sql = sql::settle(verb, &self.name, positions);
        let answer = self
            .link
            .call(|session| async move { Ok(session.simple_query(&sql).await?) })
            .await?;
        Ok(answer
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0))
    }
}
