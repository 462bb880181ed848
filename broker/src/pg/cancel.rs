//! CancelRequest. pgwire's own cancel drops the running `do_query` future, but a SELECT's
//! rows (and COPY TO's lines) stream after `do_query` has returned, so a long query would
//! run on. Each statement therefore gets a [`CancellationToken`] that its output stream
//! watches; a CancelRequest with the right pid and secret trips the connection's current
//! token (and pgwire's mechanism too). A cancel that arrives between statements finds an
//! already-finished token and affects nothing, as in PostgreSQL.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::Mutex;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::ClientInfo;
use pgwire::error::PgWireResult;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use tokio_util::sync::CancellationToken;

use crate::error::{sqlstate, user_error};

/// The token of the statement a connection is running.
#[derive(Default)]
pub struct QueryCancel(Mutex<CancellationToken>);

/// Connections by pid, for CancelRequest.
#[derive(Default)]
pub struct CancelRegistry {
    by_pid: Mutex<HashMap<i32, (SecretKey, Arc<QueryCancel>)>>,
}

impl CancelRegistry {
    /// Makes the connection `pid` cancellable until the returned registration is dropped.
    /// The connection keeps it in its session, so it goes when the connection does,
    /// however that ends (a panic included).
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        key: SecretKey,
        cancel: Arc<QueryCancel>,
    ) -> Registration {
        self.by_pid.lock().insert(pid, (key, cancel.clone()));
        Registration {
            registry: self.clone(),
            pid,
            cancel,
        }
    }

    /// Connections registered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_pid.lock().len()
    }

    fn cancel(&self, pid: i32, key: &SecretKey) {
        match self.by_pid.lock().get(&pid) {
            // By value: a protocol 3.0 client's 4-byte key is issued as an i32 but decoded
            // as bytes on the cancel connection.
            Some((k, c)) if k.eq_value(key) => c.0.lock().cancel(),
            Some(_) => tracing::debug!(pid, "cancel request with a wrong key ignored"),
            None => tracing::debug!(pid, "cancel request for an unknown connection ignored"),
        }
    }
}

/// A connection's entry in the [`CancelRegistry`], removed on drop.
pub(crate) struct Registration {
    registry: Arc<CancelRegistry>,
    pid: i32,
    /// Tells this connection's entry from a later one given the same (random) pid.
    cancel: Arc<QueryCancel>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_pid = self.registry.by_pid.lock();
        if by_pid
            .get(&self.pid)
            .is_some_and(|(_, c)| Arc::ptr_eq(c, &self.cancel))
        {
            by_pid.remove(&self.pid);
        }
    }
}

/// A fresh token for the statement the connection starts now.
pub(crate) fn begin_statement<C: ClientInfo>(client: &C) -> CancellationToken {
    let qc = client
        .session_extensions()
        .get_or_insert_with(QueryCancel::default);
    let token = CancellationToken::new();
    *qc.0.lock() = token.clone();
    token
}

/// A statement running here: cancelled by a CancelRequest (its token) or by running past
/// the session's `statement_timeout` (its deadline), both SQLSTATE 57014.
#[derive(Clone)]
pub(crate) struct Running {
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
}

impl Running {
    /// A fresh token for the statement the connection starts now, with a deadline after
    /// `timeout` if there is one.
    pub(crate) fn begin<C: ClientInfo>(client: &C, timeout: Option<Duration>) -> Running {
        Running {
            token: begin_statement(client),
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
        }
    }

    /// A statement nothing stops: a pipelined blind write, answered in its turn.
    pub(crate) fn unstoppable() -> Running {
        Running {
            token: CancellationToken::new(),
            deadline: None,
        }
    }

    /// Resolves when the statement must stop, with why.
    async fn stopped(&self) -> eddy_query::Error {
        stopped(&self.token, &mut self.timer()).await
    }

    /// A timer that fires at the deadline, if there is one.
    fn timer(&self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.deadline
            .map(|at| Box::pin(tokio::time::sleep_until(at)))
    }

    /// Runs a statement until it finishes or must stop (then 57014). Statements that wait
    /// (FETCH ... WITH (timeout), a long plan) stop waiting at once; what they already
    /// sent to storage still commits, as with PostgreSQL's cancel racing a commit.
    pub(crate) async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = eddy_query::Result<T>>,
    ) -> eddy_query::Result<T> {
        tokio::select! {
            r = work => r,
            e = self.stopped() => Err(e),
        }
    }

    /// Ends `stream` with SQLSTATE 57014 once the statement must stop. The deadline's
    /// timer is set once, not per item.
    pub(crate) fn guard<T: Send + 'static>(
        self,
        stream: BoxStream<'static, PgWireResult<T>>,
    ) -> BoxStream<'static, PgWireResult<T>> {
        let deadline = self.timer();
        futures::stream::unfold(Some((stream, self.token, deadline)), |state| async move {
            let (mut stream, token, mut deadline) = state?;
            let why = tokio::select! {
                biased;
                why = stopped(&token, &mut deadline) => why,
                item = stream.next() => return item.map(|i| (i, Some((stream, token, deadline)))),
            };
            Some((
                Err(user_error(sqlstate::QUERY_CANCELED, why.to_string())),
                None,
            ))
        })
        .boxed()
    }
}

/// Resolves when `token` is cancelled or `deadline` passes, with why.
async fn stopped(
    token: &CancellationToken,
    deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> eddy_query::Error {
    let timer = async {
        match deadline {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = token.cancelled() => eddy_query::Error::Cancelled,
        _ = timer => eddy_query::Error::StatementTimeout,
    }
}

/// Trips our token and pgwire's.
pub struct EddyCancelHandler {
    pub(crate) registry: Arc<CancelRegistry>,
    pub(crate) inner: DefaultCancelHandler,
}

#[async_trait]
impl CancelHandler for EddyCancelHandler {
    async fn on_cancel_request(&self, request: CancelRequest) {
        tracing::debug!(pid = request.pid, "cancel request");
        self.registry.cancel(request.pid, &request.secret_key);
        self.inner.on_cancel_request(request).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_leaves_with_its_connection_and_only_its_own_entry() {
        let registry = Arc::new(CancelRegistry::default());
        let first = registry.register(7, SecretKey::I32(1), Arc::default());
        assert_eq!(registry.len(), 1);
        // The same pid given to a later connection: the first one's leaving keeps it.
        let second = registry.register(7, SecretKey::I32(3), Arc::default());
        drop(first);
        assert_eq!(registry.len(), 1);
        drop(second);
        assert_eq!(registry.len(), 0);
    }
}
