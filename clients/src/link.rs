//! A connection that is reopened on the next use after it was lost, and how long a fetch
//! may stall before its connection counts as lost ([`STALL_GRACE`]).
//!
//! The failed call itself is not retried here: a publish whose answer was lost may or may
//! not have been written, and only the caller can decide whether to send it again.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_postgres::{Config, NoTls, Statement};

use crate::error::{Error, Result};

/// How long past its own timeout a FETCH may take before the connection is presumed dead
/// (a peer that vanished without closing the socket).
pub(crate) const STALL_GRACE: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection; past this many the cache starts over (names
/// come from the caller, so their number is not ours to bound).
const STATEMENT_CACHE: usize = 256;

/// Opens a connection and drives it on a background task until it ends.
pub(crate) async fn open(config: &Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(Error::from_connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "eddy connection ended");
        }
    });
    Ok(client)
}

/// Locks a std mutex; a panic elsewhere while holding it leaves plain data behind, which
/// is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One open connection and the statements prepared on it.
#[derive(Debug)]
pub struct Session {
    pg: tokio_postgres::Client,
    /// SQL text -> its prepared statement on this connection.
    statements: Mutex<HashMap<String, Statement>>,
}

impl Session {
    fn new(pg: tokio_postgres::Client) -> Session {
        Session {
            pg,
            statements: Mutex::new(HashMap::new()),
        }
    }

    /// `sql` prepared on this connection, from the cache when it was prepared before.
    pub(crate) async fn prepared(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = lock(&self.statements).get(sql) {
            return Ok(s.clone());
        }
        let statement = self.pg.prepare(sql).await?;
        let mut cache = lock(&self.statements);
        if cache.len() >= STATEMENT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Deref for Session {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.pg
    }
}

/// A lazily (re)opened connection shared by the calls of one client or consumer.
#[derive(Debug)]
pub(crate) struct Link {
    config: Config,
    current: Mutex<Option<Arc<Session>>>,
    /// Held while connecting, so concurrent callers that find the connection lost open
    /// one new connection between them, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub(crate) fn new(config: Config) -> Link {
        Link {
            config,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection settings, for connections of their own (subscriptions).
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    fn live(&self) -> Option<Arc<Session>> {
        lock(&self.current)
            .as_ref()
            .filter(|s| !s.pg.is_closed())
            .cloned()
    }

    /// The open connection, or a new one when there is none or it was lost.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let session = Arc::new(Session::new(open(&self.config).await?));
        *lock(&self.current) = Some(session.clone());
        Ok(session)
    }

    /// Runs `f` on the connection; after a retryable failure the connection is dropped,
    /// so the next call connects again even when the driver has not noticed the loss
    /// yet (a stalled socket).
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let session = self.session().await?;
        let result = f(session.clone()).await;
        if result.as_ref().is_err_and(Error::is_retryable) {
            self.discard(&session);
        }
        result
    }

    /// Forgets `dead` if it is still the current connection.
    fn discard(&self, dead: &Arc<Session>) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, dead)) {
            *current = None;
        }
    }
}
