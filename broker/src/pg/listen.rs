//! LISTEN: rows of LISTENed topics (or table changes) sent as NotificationResponse
//! messages, payload = the row as a JSON object, channel = the topic name.
//!
//! The session records what it listens to and from which offsets (`Session::listens`);
//! the connection loop reconciles its streams with that after each statement and, while
//! waiting for the client's next message, sends whatever rows arrive.

use std::collections::{BTreeMap, HashMap};

use datafusion::error::DataFusionError;
use eddy_query::Engine;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

type Item = (String, Result<arrow::array::RecordBatch, DataFusionError>);

/// The LISTEN streams of one connection.
#[derive(Default)]
pub(crate) struct Listeners {
    active: HashMap<String, CancellationToken>,
    streams: SelectAll<BoxStream<'static, Item>>,
}

impl Listeners {
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Starts streams for new LISTENs and stops those UNLISTENed.
    pub(crate) async fn reconcile(&mut self, engine: &Engine, wanted: &BTreeMap<String, Vec<u64>>) {
        self.active.retain(|name, token| {
            let keep = wanted.contains_key(name);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (name, positions) in wanted {
            if self.active.contains_key(name) {
                continue;
            }
            let token = CancellationToken::new();
            let channel = name.clone();
            let stream = match engine.listen_stream(name, positions).await {
                Ok(s) => s.map(move |b| (channel.clone(), b)).boxed(),
                Err(e) => {
                    // The topic went away between LISTEN and now: nothing to deliver.
                    tracing::debug!(topic = %name, error = %e, "LISTEN stream not started");
                    futures::stream::empty().boxed()
                }
            };
            self.streams
                .push(stream.take_until(token.clone().cancelled_owned()).boxed());
            self.active.insert(name.clone(), token);
        }
    }

    /// The next batch of rows for some channel; never returns while nothing is listened to.
    pub(crate) async fn next(&mut self) -> Item {
        loop {
            match self.streams.next().await {
                Some(item) => return item,
                None => std::future::pending::<()>().await,
            }
        }
    }
}
