//! Statements relayed to a node holding replicas of what they read (docs/architecture.md,
//! "Statements relayed to a replica").
//!
//! ```text
//!  client ─► this node: Engine::route(statement) = [replica nodes]
//!            └─ backend connection (Postgres wire, one per client connection and node)
//!               ─► replica node runs it ─► frames back verbatim ─► client
//! ```
//!
//! The backend connection is opened on first use with the client's user and database and
//! carries the session's `SET` values. Its `ReadyForQuery` is dropped: this node answers
//! the client's own Sync (or simple query), with its own transaction status.

mod backend;
mod page;
mod route;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use eddy_query::{Engine, Prepared};
use futures::SinkExt;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::stmt::StoredStatement;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::conn::FrameGuard;
use crate::error::{sqlstate, user_error};
use crate::routing::Routing;

use backend::{as_ours, BackendConn, Gone, RELAY_APP};
use page::Page;
use route::{Change, Route, Session};

/// Relayed output held before it is written to the client.
const FLUSH_BYTES: usize = 64 * 1024;

/// One client connection's relay state: its backend connections, and the cursors
/// declared and the channels LISTENed through them.
pub(crate) struct Relay {
    /// The node's router: where each statement goes, and what relaying it measured.
    routing: Arc<Routing>,
    /// Backend connections by the Postgres address of their node.
    backends: HashMap<String, BackendConn>,
    /// Cursors declared through the relay, by name, with the node holding them: their
    /// FETCH and CLOSE follow them there.
    cursors: HashMap<String, String>,
    /// Channels LISTENed through the relay, with the node listening: its notifications
    /// are passed on while the client is idle, and UNLISTEN follows it there.
    listens: HashMap<String, String>,
    /// An `UNLISTEN *` ran here: the backends' LISTENs end too ([`Relay::settle`]).
    unlisten_all: bool,
    /// Relayed portals run with a row limit, by name: the statement ran there to its end,
    /// and its rows are handed out here a page at a time (then none, as for a portal
    /// run to its end), until the portal is bound again or closed.
    pages: HashMap<String, Page>,
    /// The most bytes of rows one page may hold (`query.relay_page_bytes`).
    page_limit: usize,
}

/// A statement to relay, found before pgwire handles its message.
pub(crate) struct Requested {
    route: Route,
    /// What to send.
    message: Outgoing,
}

enum Outgoing {
    /// A simple query.
    Query(String),
    /// An extended-protocol Execute or Describe.
    Extended(Extended),
}

/// A client's prepared statement run or described on the backend: there it is prepared
/// once per backend connection (named), then bound and run like here.
struct Extended {
    /// The statement's text and the parameter types the client declared (0: unknown).
    sql: String,
    types: Vec<u32>,
    /// The Bind body after the statement name (parameter formats and bytes, result
    /// formats), when a portal is bound.
    bind: Option<Bytes>,
    /// Execute the portal, or Describe the statement (`S`) or portal (`P`).
    then: Then,
}

enum Then {
    /// Execute the client's portal `portal` (`bound`), `max_rows` at a time (0: all).
    Execute {
        portal: String,
        bound: Arc<Portal<Arc<Prepared>>>,
        max_rows: usize,
    },
    Describe(u8),
}

/// A portal's name as the protocol gives it (none: the unnamed portal).
fn portal_name(name: Option<&str>) -> &str {
    name.unwrap_or(pgwire::api::DEFAULT_NAME)
}

impl Relay {
    /// A connection's relay, routing with `routing`, holding at most `page_limit` bytes
    /// of rows per paged portal.
    pub(crate) fn new(routing: Arc<Routing>, page_limit: usize) -> Relay {
        Relay {
            routing,
            backends: HashMap::new(),
            cursors: HashMap::new(),
            listens: HashMap::new(),
            unlisten_all: false,
            pages: HashMap::new(),
            page_limit,
        }
    }

    /// The relay `msg` asks for, if its statement reads objects this node holds no replica
    /// of, or uses a cursor declared or a channel LISTENed through the relay.
    pub(crate) fn requested<S>(
        &mut self,
        engine: &Engine,
        msg: &PgWireFrontendMessage,
        socket: &S,
    ) -> Option<Requested>
    where
        S: ClientPortalStore + ClientInfo,
        S::PortalStore: PortalStore<Statement = Arc<Prepared>>,
    {
        match msg {
            // A portal bound again or closed starts over.
            PgWireFrontendMessage::Bind(b) => {
                self.pages.remove(portal_name(b.portal_name.as_deref()));
                return None;
            }
            PgWireFrontendMessage::Close(c) if c.target_type == b'P' => {
                self.pages.remove(portal_name(c.name.as_deref()));
                return None;
            }
            PgWireFrontendMessage::Query(_)
            | PgWireFrontendMessage::Execute(_)
            | PgWireFrontendMessage::Describe(_) => {}
            // Nothing else is relayed: no need to look at the session.
            _ => return None,
        }
        // A statement relayed here runs here: nodes whose catalogs disagree for a moment
        // about where a replica is could otherwise pass it back and forth.
        if socket
            .metadata()
            .get("application_name")
            .map(String::as_str)
            == Some(RELAY_APP)
        {
            return None;
        }
        let session = Session::of(&self.routing, socket);
        match msg {
            PgWireFrontendMessage::Query(q) => {
                if !self.may_route(engine, &session) {
                    return None;
                }
                let stmts = engine.parse(&q.query).ok()?;
                self.note_unlisten_all(stmts.iter().map(|p| &p.description));
                let route = match stmts.as_slice() {
                    [one] => self.route(engine, &one.description, &session),
                    many => self.route_all(engine, many, &session),
                };
                let Some(route) = route else {
                    // It runs here: the handler takes these instead of parsing again.
                    super::keep_parsed(socket, &q.query, stmts);
                    return None;
                };
                Some(Requested {
                    route,
                    message: Outgoing::Query(q.query.clone()),
                })
            }
            PgWireFrontendMessage::Execute(e) => {
                let name = portal_name(e.name.as_deref());
                let entry = socket.portal_store().get_portal(name)?;
                let portal = entry.value()?;
                self.note_unlisten_all([&portal.statement.statement.description]);
                let route = self.route_prepared(engine, &portal.statement.statement, &session)?;
                let then = Then::Execute {
                    portal: name.to_owned(),
                    bound: portal.clone(),
                    max_rows: usize::try_from(e.max_rows).unwrap_or(0),
                };
                let call = Extended::of(&portal.statement, Some(portal), then)?;
                Some(Requested {
                    route,
                    message: Outgoing::Extended(call),
                })
            }
            // Described there too, so the row description matches the rows relayed.
            PgWireFrontendMessage::Describe(d) => {
                let name = d.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
                let store = socket.portal_store();
                let then = Then::Describe(d.target_type);
                // Described where it would run, without counting it as routed.
                let session = Session {
                    purpose: crate::routing::Purpose::Describe,
                    ..session
                };
                let (route, call) = if d.target_type == b'S' {
                    let entry = store.get_statement(name)?;
                    let statement = entry.value()?;
                    let route = self.route_prepared(engine, &statement.statement, &session)?;
                    (route, Extended::of(statement, None, then)?)
                } else {
                    let entry = store.get_portal(name)?;
                    let portal = entry.value()?;
                    let route =
                        self.route_prepared(engine, &portal.statement.statement, &session)?;
                    (route, Extended::of(&portal.statement, Some(portal), then)?)
                };
                Some(Requested {
                    route: Route {
                        change: Change::None,
                        retry: true,
                        measure: false,
                        ..route
                    },
                    message: Outgoing::Extended(call),
                })
            }
            _ => None,
        }
    }

    /// Runs the statement on the first target that takes a connection and passes its
    /// answer to the client. Messages the client sends meanwhile are returned, to be
    /// handled afterwards. `Err` ends the client's connection (it went away).
    pub(crate) async fn drive<T, ST>(
        &mut self,
        socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
        req: Requested,
    ) -> io::Result<Vec<PgWireFrontendMessage>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let extended = matches!(req.message, Outgoing::Extended(_));
        // The portal's next page, if an earlier Execute left rows.
        let paged = match &req.message {
            Outgoing::Extended(Extended {
                then:
                    Then::Execute {
                        portal,
                        bound,
                        max_rows,
                    },
                ..
            }) => Some((portal.clone(), bound.clone(), *max_rows)),
            _ => None,
        };
        if let Some((portal, bound, max_rows)) = &paged {
            let same = |p: &Page| Arc::ptr_eq(&p.bound, bound);
            if let Some(mut page) = self.pages.remove(portal).filter(same) {
                let sock = socket.get_mut();
                page.next_page(*max_rows, |f| sock.queue_raw(f));
                self.pages.insert(portal.clone(), page);
                flush_client(socket).await?;
                return Ok(Vec::new());
            }
        }
        let token = super::cancel::begin_statement(socket);
        let Route {
            targets,
            change,
            retry,
            measure,
        } = req.route;
        let mut targets = match targets {
            Ok(t) => t,
            Err(e) => return finish(socket, e, extended, Vec::new()).await,
        };
        let (user, database) = {
            let m = socket.metadata();
            let user = m.get("user").cloned().unwrap_or_else(|| "eddy".into());
            let database = m.get("database").cloned().unwrap_or_else(|| user.clone());
            (user, database)
        };
        let settings = super::session_of(socket).lock().settings().clone();
        let mut queued = Vec::new();
        loop {
            let addr = match self.connect(&targets, &user, &database).await {
                Ok(addr) => addr,
                Err(e) => return finish(socket, e, extended, queued).await,
            };
            let backend = self.backends.get_mut(&addr).expect("connected above");
            let mut page = paged
                .as_ref()
                .filter(|(_, _, max_rows)| *max_rows > 0)
                .map(|(_, bound, max_rows)| Page::new(bound.clone(), *max_rows, self.page_limit));
            let measured = self.routing.meter().relay(&addr);
            let outcome = async {
                backend.apply_settings(&settings).await?;
                let prepared = backend.send_statement(&req.message).await?;
                let outcome = backend
                    .relay(socket, &token, &mut queued, page.as_mut())
                    .await;
                if outcome.is_ok() && measure {
                    measured.answered();
                }
                if let (Some(key), Ok(true) | Err(_)) = (prepared, &outcome) {
                    // It may not be prepared there after all: Parse it again next time.
                    backend.forget_statement(&key);
                }
                outcome
            }
            .await;
            let (e, early) = match outcome {
                Ok(failed) => {
                    self.finished(change, failed, addr);
                    if page.as_ref().is_some_and(|p| p.over) {
                        let e = user_error(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!(
                                "the portal's rows past its row limit outgrew \
                                 query.relay_page_bytes ({} bytes) on this node, which \
                                 holds them for the replica that ran it; fetch without a \
                                 row limit, use a cursor, or connect to a node holding a \
                                 replica",
                                self.page_limit
                            ),
                        );
                        return finish(socket, e, extended, queued).await;
                    }
                    if let (Some((portal, _, _)), Some(page)) = (&paged, page) {
                        if !page.rest.is_empty() || page.complete.is_some() {
                            self.pages.insert(portal.clone(), page);
                        }
                    }
                    if extended && failed {
                        // As after any error in the extended protocol: skip to the Sync.
                        socket.set_state(PgWireConnectionState::AwaitingSync);
                    } else if !extended {
                        socket
                            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                                socket.transaction_status(),
                            )))
                            .await?;
                    }
                    return Ok(queued);
                }
                Err(Gone::Client(e)) => return Err(e),
                Err(Gone::Early(e)) => (e, true),
                Err(Gone::Backend(e)) => (e, false),
            };
            // The replica's node went away: its cursors and LISTENs went with it. A read
            // it had not answered yet runs on the next replica.
            self.lost(socket, &addr).await.map_err(io::Error::other)?;
            targets.retain(|t| t != &addr);
            if !(retry && early && !targets.is_empty()) {
                let e = user_error(
                    sqlstate::SERIALIZATION_FAILURE,
                    format!("the node at {addr} running this statement went away ({e}); retry"),
                );
                return finish(socket, e, extended, queued).await;
            }
            tracing::debug!(%addr, error = %e, "relay target went away; trying the next replica");
        }
    }

    /// Records the cursor or channel a statement that ran on `addr` started or ended.
    fn finished(&mut self, change: Change, failed: bool, addr: String) {
        match change {
            _ if failed => {}
            Change::Declare(name) => {
                self.cursors.insert(name, addr);
            }
            Change::Close(name) => {
                self.cursors.remove(&name);
            }
            Change::Listen(channel) => {
                self.listens.insert(channel, addr);
            }
            Change::Unlisten(channel) => {
                self.listens.remove(&channel);
            }
            Change::None => {}
        }
    }

    /// Drops the backend connection to `addr`, whose node went away, with the cursors
    /// and LISTENs it held; tells the client which channels it no longer hears.
    async fn lost<T, ST>(
        &mut self,
        socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
        addr: &str,
    ) -> Result<(), PgWireError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        self.backends.remove(addr);
        self.cursors.retain(|_, at| at != addr);
        let mut gone: Vec<String> = Vec::new();
        self.listens.retain(|channel, at| {
            let keep = at != addr;
            if !keep {
                gone.push(channel.clone());
            }
            keep
        });
        if gone.is_empty() {
            return Ok(());
        }
        gone.sort();
        let note = ErrorInfo::new(
            "WARNING".into(),
            "01000".into(),
            format!(
                "LISTEN {} ended: the node at {addr} that listened went away; LISTEN again",
                gone.join(", ")
            ),
        );
        socket
            .send(PgWireBackendMessage::NoticeResponse(note.into()))
            .await
            .map_err(PgWireError::IoError)
    }

    /// True while some channel is LISTENed through the relay.
    pub(crate) fn listening(&self) -> bool {
        !self.listens.is_empty()
    }

    /// The next frame (or failure) of a backend connection that listens; for the client's
    /// idle time. Cancel-safe: a frame not yet whole stays in its connection's buffer.
    pub(crate) async fn notification(&mut self) -> (String, io::Result<(u8, Bytes)>) {
        let listening: std::collections::HashSet<&String> = self.listens.values().collect();
        let waits: Vec<_> = self
            .backends
            .iter_mut()
            .filter(|(addr, _)| listening.contains(addr))
            .map(|(addr, b)| Box::pin(async move { (addr.clone(), b.next().await) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await.0
    }

    /// Passes a frame [`Relay::notification`] returned on to the client: a notification
    /// (as if from this connection) or a notice; a failure drops that backend.
    pub(crate) async fn deliver<T, ST>(
        &mut self,
        socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
        addr: String,
        frame: io::Result<(u8, Bytes)>,
    ) -> io::Result<()>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        match frame {
            Ok((b'A', f)) => {
                let pid = socket.pid_and_secret_key().0;
                socket.get_mut().queue_raw(&as_ours(pid, f));
                flush_client(socket).await
            }
            Ok((b'N', f)) => {
                socket.get_mut().queue_raw(&f);
                flush_client(socket).await
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "listening backend connection lost");
                self.lost(socket, &addr).await.map_err(io::Error::other)
            }
        }
    }

    /// After an `UNLISTEN *` that ran here: ends the LISTENs of the backend connections
    /// too (their notifications meanwhile are dropped, as the client stopped listening).
    pub(crate) async fn settle(&mut self) {
        if !std::mem::take(&mut self.unlisten_all) {
            return;
        }
        let addrs: std::collections::BTreeSet<String> =
            self.listens.drain().map(|(_, a)| a).collect();
        for addr in addrs {
            let Some(b) = self.backends.get_mut(&addr) else {
                continue;
            };
            if b.simple("UNLISTEN *").await.is_err() {
                self.backends.remove(&addr);
                self.cursors.retain(|_, at| at != &addr);
            }
        }
    }

    /// The address of a backend connection to one of `targets`: one already open, else
    /// the first that accepts a new one.
    async fn connect(
        &mut self,
        targets: &[String],
        user: &str,
        database: &str,
    ) -> Result<String, PgWireError> {
        // A connection whose node went away since its last statement reads as closed
        // (or holds the node's goodbye): dropped, so the statement goes elsewhere.
        // One that listens is kept: what it sent unasked are notifications, which the
        // statement's relay passes on; if it is closed, the statement finds out.
        let listening: std::collections::HashSet<String> = self.listens.values().cloned().collect();
        self.backends
            .retain(|addr, b| listening.contains(addr) || b.idle_and_open());
        self.cursors.retain(|_, at| self.backends.contains_key(at));
        if let Some(open) = targets.iter().find(|t| self.backends.contains_key(*t)) {
            return Ok(open.clone());
        }
        let mut last = String::from("no replica node is known");
        for addr in targets {
            match BackendConn::open(addr, user, database).await {
                Ok(b) => {
                    self.backends.insert(addr.clone(), b);
                    return Ok(addr.clone());
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(user_error(
            sqlstate::SERIALIZATION_FAILURE,
            format!("no node holding a replica of what this statement reads is reachable ({last}); retry"),
        ))
    }
}

impl Extended {
    /// The call for `statement` (bound as `portal`, when given); `None` for a statement
    /// not prepared from text.
    fn of(
        statement: &StoredStatement<Arc<Prepared>>,
        portal: Option<&Portal<Arc<Prepared>>>,
        then: Then,
    ) -> Option<Extended> {
        let bind = portal.map(|portal| {
            let mut b = BytesMut::new();
            put_formats(&mut b, &portal.parameter_format);
            b.put_i16(portal.parameters.len() as i16);
            for p in &portal.parameters {
                match p {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                    None => b.put_i32(-1),
                }
            }
            put_formats(&mut b, &portal.result_column_format);
            b.freeze()
        });
        Some(Extended {
            sql: statement.statement.sql()?.to_owned(),
            types: statement
                .parameter_types
                .iter()
                .map(|t| t.as_ref().map_or(0, |t| t.oid()))
                .collect(),
            bind,
            then,
        })
    }

    /// The messages for a backend where the statement is prepared as `name`, preceded by
    /// its Parse when `parse`.
    fn messages(&self, name: &str, parse: bool) -> Bytes {
        let mut b = BytesMut::new();
        if parse {
            frame(&mut b, b'P', |b| {
                put_cstr(b, name);
                put_cstr(b, &self.sql);
                b.put_i16(self.types.len() as i16);
                for t in &self.types {
                    b.put_u32(*t);
                }
            });
        }
        if let Some(bind) = &self.bind {
            frame(&mut b, b'B', |b| {
                put_cstr(b, "");
                put_cstr(b, name);
                b.put_slice(bind);
            });
        }
        match self.then {
            // All rows at once: a portal suspended there would end at the Sync below,
            // and its next Execute would start it over. A row limit is kept here.
            Then::Execute { .. } => frame(&mut b, b'E', |b| {
                put_cstr(b, "");
                b.put_i32(0);
            }),
            Then::Describe(target) => frame(&mut b, b'D', |b| {
                b.put_u8(target);
                put_cstr(b, if target == b'S' { name } else { "" });
            }),
        }
        frame(&mut b, b'S', |_| {});
        b.freeze()
    }
}

fn put_formats(b: &mut BytesMut, f: &Format) {
    match f {
        Format::UnifiedText => b.put_i16(0),
        Format::UnifiedBinary => {
            b.put_i16(1);
            b.put_i16(1);
        }
        Format::Individual(codes) => {
            b.put_i16(codes.len() as i16);
            for c in codes {
                b.put_i16(*c);
            }
        }
    }
}

/// Appends a typed frame whose body `body` writes.
fn frame(b: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    b.put_u8(tag);
    let at = b.len();
    b.put_i32(0);
    body(b);
    let len = (b.len() - at) as i32;
    b[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

async fn flush_client<T, ST>(
    socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    SinkExt::<PgWireBackendMessage>::flush(socket).await
}

/// Ends a relay with `error`: then ReadyForQuery (simple protocol) or skipping to the
/// client's Sync (extended).
async fn finish<T, ST>(
    socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
    error: PgWireError,
    extended: bool,
    queued: Vec<PgWireFrontendMessage>,
) -> io::Result<Vec<PgWireFrontendMessage>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    super::subscription::finish_with_error(socket, ErrorInfo::from(error), extended, queued).await
}
