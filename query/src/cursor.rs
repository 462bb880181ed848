//! Cursors: `DECLARE c CURSOR FOR SUBSCRIBE ... | SELECT ...`, `FETCH n c`, `CLOSE c`.
//!
//! A cursor keeps its stream in the session, with the unsent rest of the last batch. A
//! FETCH on a subscription cursor waits at most its timeout for the first row, then takes
//! only what is ready without waiting more, up to n rows; 0 rows after the timeout is an
//! answer, not an error. A FETCH on a query cursor pages through the query's rows.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{FutureExt, StreamExt};

use crate::error::Result;
use crate::subscribe::{SubStats, Waiting};

/// A declared cursor; cheap to clone (the session is cloned around each statement).
#[derive(Clone)]
pub struct Cursor {
    pub(crate) schema: SchemaRef,
    state: Arc<tokio::sync::Mutex<CursorState>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor").finish_non_exhaustive()
    }
}

struct CursorState {
    stream: SendableRecordBatchStream,
    leftover: Option<RecordBatch>,
    /// A subscription (waits for rows; its counters) rather than a query (ends).
    live: Option<Arc<SubStats>>,
    done: bool,
}

impl Cursor {
    /// A cursor over `stream`: a subscription's, with its counters (`live`), or a query's.
    pub(crate) fn new(stream: SendableRecordBatchStream, live: Option<Arc<SubStats>>) -> Cursor {
        let schema = stream.schema();
        Cursor {
            schema,
            state: Arc::new(tokio::sync::Mutex::new(CursorState {
                stream,
                leftover: None,
                live,
                done: false,
            })),
        }
    }

    /// The rows of one FETCH, produced when the returned stream is polled (so waiting
    /// happens while the wire layer streams the response, where cancel can stop it).
    pub(crate) fn fetch(
        &self,
        count: Option<u64>,
        timeout: Option<Duration>,
    ) -> SendableRecordBatchStream {
        let state = self.state.clone();
        let rows = futures::stream::once(async move {
            let mut st = state.lock().await;
            st.fetch(count.map_or(usize::MAX, |n| n as usize), timeout)
                .await
        })
        .flat_map(|r| match r {
            Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::iter(vec![Err(
                datafusion::error::DataFusionError::External(Box::new(e)),
            )])
            .right_stream(),
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}

impl CursorState {
    async fn fetch(&mut self, limit: usize, timeout: Option<Duration>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut have = 0;
        while have < limit {
            let batch = if let Some(b) = self.leftover.take() {
                b
            } else if self.done {
                break;
            } else {
                let next = if let (0, Some(stats)) = (have, &self.live) {
                    // The first row: wait, at most `timeout` when one is given.
                    let _waiting = Waiting::start(&stats.waiting);
                    match timeout {
                        Some(t) => match tokio::time::timeout(t, self.stream.next()).await {
                            Ok(n) => n,
                            Err(_) => break,
                        },
                        None => self.stream.next().await,
                    }
                } else if self.live.is_none() {
                    self.stream.next().await
                } else {
                    // More rows only if they are ready now.
                    match self.stream.next().now_or_never() {
                        Some(n) => n,
                        None => break,
                    }
                };
                match next {
                    None => {
                        self.done = true;
                        break;
                    }
                    Some(b) => b?,
                }
            };
            let take = (limit - have).min(batch.num_rows());
            if take < batch.num_rows() {
                self.leftover = Some(batch.slice(take, batch.num_rows() - take));
            }
            have += take;
            if take > 0 {
                out.push(batch.slice(0, take));
            }
        }
        Ok(out)
    }
}
