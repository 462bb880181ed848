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

/// Opens a connection and drives it on a background task until it ends. Given several
/// hosts (`host=a,b,c`), it is cluster-aware: it connects to the first that answers,
/// reads the cluster's nodes and their load from `eddy.nodes`, and moves to the live,
/// serving (not draining) node with the least work in flight, if that is another one.
/// A node that went away or drains (57P01) is thus left for another on the next
/// connection.
pub(crate) async fn open(config: &Config) -> Result<tokio_postgres::Client> {
    let first = open_one(config).await?;
    if config.get_hosts().len() < 2 {
        return Ok(first);
    }
    // The lighter nodes in order, until one answers (one that just died may still be
    // listed live); none: stay.
    for (host, port) in lighter(&first).await {
        match open_one(&moved(config, &host, port)).await {
            Ok(there) => return Ok(there),
            Err(e) => tracing::debug!(error = %e, host, port, "a lighter node did not answer"),
        }
    }
    Ok(first)
}

/// Connects to `config` as given (its hosts in order).
async fn open_one(config: &Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(Error::from_connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "eddy connection ended");
        }
    });
    Ok(client)
}

/// The Postgres addresses of the live, serving nodes with less work (statements in
/// flight and queued, then connections) than the one `pg` is connected to, least first;
/// all of them when that one drains.
async fn lighter(pg: &tokio_postgres::Client) -> Vec<(String, u16)> {
    let Ok(rows) = pg
        .query(
            "SELECT pg_addr, this_node, coalesce(state, 'serving') = 'serving', \
             coalesce(gossip, 'live') = 'live', \
             coalesce(in_flight, 0) + coalesce(queued, 0), coalesce(connections, 0) \
             FROM eddy.nodes",
            &[],
        )
        .await
    else {
        return Vec::new();
    };
    let mut open: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2) && (r.get::<_, bool>(1) || r.get::<_, bool>(3)))
        .collect();
    open.sort_by_key(|r| (r.get::<_, i64>(4), r.get::<_, i64>(5), !r.get::<_, bool>(1)));
    open.iter()
        .take_while(|r| !r.get::<_, bool>(1))
        .filter_map(|r| {
            let (host, port) = r.get::<_, &str>(0).rsplit_once(':')?;
            Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// `config` with `host:port` as its only address.
fn moved(config: &Config, host: &str, port: u16) -> Config {
    let mut c = Config::new();
    c.host(host).port(port);
    if let Some(u) = config.get_user() {
        c.user(u);
    }
    if let Some(d) = config.get_dbname() {
        c.dbname(d);
    }
    if let Some(p) = config.get_password() {
        c.password(p);
    }
    if let Some(o) = config.get_options() {
        c.options(o);
    }
    if let Some(a) = config.get_application_name() {
        c.application_name(a);
    }
    if let Some(t) = config.get_connect_timeout() {
        c.connect_timeout(*t);
    }
    c
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
