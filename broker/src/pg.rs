//! The Postgres wire protocol frontend (pgwire): startup, simple and extended queries,
//! COPY, cancel. Statements go to the [`Engine`]; [`Output`]s come back as wire responses.
//!
//! ```text
//!  TCP ─► pgwire connection loop ─► Handlers
//!                                   ├─ startup: trust auth, server parameters, cancel key
//!                                   ├─ simple query: parse → run each statement → Response
//!                                   ├─ extended: Parse = plan once, Bind/Execute = run with params
//!                                   ├─ COPY FROM data → CopyInSink → batched writes
//!                                   └─ relay: statements reading objects with no replica here
//!                                      run on a node that has them (pg/relay.rs)
//! ```

mod cancel;
pub(crate) mod conn;
mod copy;
mod extended;
mod frame;
mod listen;
mod pipeline;
mod relay;
mod subscription;

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use eddy_query::{
    CopyOptions, Description, Engine, Output, Parsed, Session, SessionChange, Writes,
};
use eddy_storage::{Lane, WriterId};
use futures::{stream, Sink, SinkExt, StreamExt};
use parking_lot::Mutex;
use pgwire::api::auth::{self, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{CopyResponse, QueryResponse, Response, Tag};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;

use crate::error::{to_pg, user_error};
use crate::load::Work;
use crate::routing::Routing;
use cancel::Running;

/// Shared by every connection of a node.
pub struct Backend {
    pub(crate) engine: Arc<Engine>,
    /// The node's router and meter.
    pub(crate) routing: Arc<Routing>,
    /// Faults injected through the fault file (testing): a statement delay.
    faults: Arc<eddy_consensus::Faults>,
    params: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    connections: Arc<ConnectionManager>,
    pub(crate) cancels: Arc<cancel::CancelRegistry>,
}

impl Backend {
    /// A backend serving `engine`, routing with `routing`.
    pub(crate) fn new(
        engine: Arc<Engine>,
        routing: Arc<Routing>,
        faults: Arc<eddy_consensus::Faults>,
    ) -> Arc<Backend> {
        let mut params = DefaultServerParameterProvider::default();
        if let Some((_, v)) = eddy_query::DEFAULT_SETTINGS
            .iter()
            .find(|(k, _)| *k == "server_version")
        {
            params.server_version = (*v).to_owned();
        }
        params.time_zone = "UTC".into();
        Arc::new(Backend {
            engine,
            routing,
            faults,
            params,
            pids: RandomPidSecretKeyGenerator::default(),
            connections: Arc::new(ConnectionManager::new()),
            cancels: Arc::new(cancel::CancelRegistry::default()),
        })
    }
}

/// The handler set pgwire asks for, once per connection.
#[derive(Clone)]
pub struct Handlers(pub Arc<Backend>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.0.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }
    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.0.clone()
    }
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(cancel::EddyCancelHandler {
            registry: self.0.cancels.clone(),
            inner: DefaultCancelHandler::new(self.0.connections.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::startup_settings;

    #[test]
    fn startup_options_give_settings() {
        let got = startup_settings(
            "-c routing=round_robin  -cstatement_timeout=5s --Search-Path=a\\ b -x",
        );
        assert_eq!(
            got,
            vec![
                ("routing".to_owned(), "round_robin".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("search_path".to_owned(), "a b".to_owned()),
            ]
        );
        assert!(startup_settings("").is_empty());
    }
}

#[async_trait]
impl StartupHandler for Backend {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            auth::protocol_negotiation(client, startup).await?;
            auth::save_startup_parameters_to_metadata(client, startup);
            let (pid, key) = self.pids.generate(client);
            client.set_pid_and_secret_key(pid, key.clone());
            // The connection runs one statement at a time: a writer alone, by its pid.
            let lane = Lane::Alone(WriterId::Session(pid as u32));
            let mut session = Session::new()
                .in_lane(lane)
                .with_default("routing", self.routing.default_strategy().name());
            // `options=-c name=value ...`, as PostgreSQL takes settings at startup.
            if let Some(options) = startup.parameters.get("options") {
                for (name, value) in startup_settings(options) {
                    eddy_query::check_setting(&name, &value).map_err(|e| {
                        PgWireError::UserError(Box::new(ErrorInfo::new(
                            "FATAL".into(),
                            crate::error::sqlstate::INVALID_PARAMETER.into(),
                            e.to_string(),
                        )))
                    })?;
                    session.set(&name, value);
                }
            }
            client.session_extensions().insert(Mutex::new(session));
            // Registering the connection makes CancelRequest work for it. Both
            // registrations live in the session and leave with the connection, whether it
            // ends or its task panics.
            let qc = client
                .session_extensions()
                .get_or_insert_with(cancel::QueryCancel::default);
            let registration = self.cancels.register(pid, key.clone(), qc);
            client.session_extensions().insert(registration);
            let (handle, guard) = self.connections.register(pid, key);
            client
                .session_extensions()
                .insert::<Arc<ConnectionHandle>>(handle);
            client.session_extensions().insert::<ConnectionGuard>(guard);
            // Trust authentication: no password is asked (see docs/sql.md, "Connecting").
            auth::finish_authentication(client, &self.params).await?;
        }
        Ok(())
    }
}

/// The settings in a startup packet's `options` (`-c name=value`, `--name=value`, with
/// `\ ` for a space in a value), lower-cased names.
fn startup_settings(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            Some(rest.to_owned())
        } else {
            None
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((
                name.trim().replace('-', "_").to_ascii_lowercase(),
                value.to_owned(),
            ));
        }
    }
    out
}

/// What the statement a connection just ran was, for its latency histogram: set by the
/// query handlers, taken by the connection loop's [`Timing`](crate::load::Timing).
#[derive(Default)]
struct WorkDone(Mutex<Option<Work>>);

/// Notes the work of the statement running on `client` ([`WorkDone`]).
pub(crate) fn note_work<C: ClientInfo>(
    client: &C,
    statement: &eddy_query::Statement,
    description: &Description,
) {
    let work = work_of(statement, description);
    *client
        .session_extensions()
        .get_or_insert_with(WorkDone::default)
        .0
        .lock() = work;
}

/// Takes the work [`note_work`] noted, if any.
pub(crate) fn take_work<C: ClientInfo>(client: &C) -> Option<Work> {
    client
        .session_extensions()
        .get::<WorkDone>()
        .and_then(|w| w.0.lock().take())
}

/// The histogram a statement's latency goes to; `None` for statements that wait on
/// purpose (FETCH) or only touch the session.
fn work_of(statement: &eddy_query::Statement, d: &Description) -> Option<Work> {
    use eddy_query::Statement as S;
    if matches!(statement, S::Fetch { .. } | S::FetchSubscription { .. }) {
        return None;
    }
    if d.is_blind_write() {
        return Some(Work::Publish);
    }
    match (d.session.clone(), d.writes) {
        (SessionChange::None, Writes::Nothing) if !d.reads.is_empty() => Some(Work::Read),
        (SessionChange::None, _) => Some(Work::Write),
        _ => None,
    }
}

/// Statements the relay parsed for a query string it decided to run here, kept so the
/// simple query handler does not parse the same text again.
#[derive(Default)]
pub(crate) struct Preparsed(Mutex<Option<(String, Vec<Parsed>)>>);

/// Keeps `statements`, parsed from `query`, for the simple query handler.
pub(crate) fn keep_parsed<C: ClientInfo>(client: &C, query: &str, statements: Vec<Parsed>) {
    *client
        .session_extensions()
        .get_or_insert_with(Preparsed::default)
        .0
        .lock() = Some((query.to_owned(), statements));
}

impl Backend {
    /// Waits as a slow node would, when the fault file says so (testing).
    pub(crate) async fn slow_down(&self) {
        if let Some(d) = self.faults.statement_delay() {
            tokio::time::sleep(d).await;
        }
    }
}

/// The connection's session settings.
pub(crate) fn session_of<C: ClientInfo>(client: &C) -> Arc<Mutex<Session>> {
    client
        .session_extensions()
        .get_or_insert_with(|| Mutex::new(Session::new()))
}

pub(crate) fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

/// Turns an engine output into a wire response; its rows stop when the statement must.
pub(crate) fn respond<C: ClientInfo>(
    client: &C,
    output: Output,
    format: &Format,
    running: Running,
) -> PgWireResult<Response> {
    Ok(match output {
        Output::Rows { tag, stream } => {
            rows_response(&tag, stream, format, format_options(client), running)?
        }
        Output::Command { tag, rows } => Response::Execution(command_tag(&tag, rows)),
        Output::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
        Output::TransactionEnd { tag, .. } => Response::TransactionEnd(Tag::new(tag)),
        Output::CopyIn(sink) => {
            let columns = sink.columns();
            copy::begin(client, sink);
            Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))
        }
        Output::CopyOut { stream, options } => copy_out(stream, options, running),
    })
}

/// Sends the warning an output carries ([`Output::warning`]: a ROLLBACK of a block that
/// wrote) as a notice, ahead of the output itself. Takes the text, not the output: an
/// output holding a row stream is not `Sync`, so no reference to it may cross an await.
pub(crate) async fn warn_first<C>(client: &mut C, warning: Option<String>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<C::Error>,
{
    if let Some(text) = warning {
        let note = ErrorInfo::new("WARNING".into(), "01000".into(), text);
        client
            .send(PgWireBackendMessage::NoticeResponse(note.into()))
            .await?;
    }
    Ok(())
}

/// A CommandComplete tag, with its row count when the command has one.
pub(crate) fn command_tag(tag: &str, rows: Option<u64>) -> Tag {
    let t = Tag::new(tag);
    match rows {
        Some(n) => t.with_rows(n as usize),
        None => t,
    }
}

/// A Bind gives no result format (text), one for every column, or one per column. Any
/// other count is the client's error, as in PostgreSQL (08P01, the connection stays);
/// arrow-pg would index past the codes it was given.
pub(crate) fn check_result_formats(format: &Format, columns: usize) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != columns => Err(user_error(
            crate::error::sqlstate::PROTOCOL_VIOLATION,
            format!(
                "bind message has {} result formats but query has {columns} columns",
                codes.len()
            ),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn rows_response(
    tag: &str,
    stream: SendableRecordBatchStream,
    format: &Format,
    options: Arc<FormatOptions>,
    running: Running,
) -> PgWireResult<Response> {
    let schema = stream.schema();
    check_result_formats(format, schema.fields().len())?;
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
    let row_fields = fields.clone();
    let rows = stream
        .map(move |batch| match batch {
            Ok(b) => stream::iter(encode_recordbatch(row_fields.clone(), b)).left_stream(),
            Err(e) => stream::once(async move { Err(to_pg(e.into())) }).right_stream(),
        })
        .flatten()
        .boxed();
    let mut response = QueryResponse::new(fields, running.guard(rows));
    response.set_command_tag(tag);
    Ok(Response::Query(response))
}

fn copy_out(stream: SendableRecordBatchStream, options: CopyOptions, running: Running) -> Response {
    let schema = stream.schema();
    let columns = schema.fields().len();
    let mut header = options.header.then(|| options.encode_header(&schema));
    let data = stream
        .map(move |batch| {
            let lines = batch
                .map_err(|e| to_pg(e.into()))
                .and_then(|b| options.encode_batch(&b).map_err(to_pg));
            match lines {
                Ok(lines) => {
                    let mut msgs: Vec<PgWireResult<CopyData>> = Vec::with_capacity(lines.len());
                    for line in lines {
                        // The header rides in the first row's message so it is not counted as a row.
                        let line = match header.take() {
                            Some(mut h) => {
                                h.extend_from_slice(&line);
                                Bytes::from(h)
                            }
                            None => line,
                        };
                        msgs.push(Ok(CopyData::new(line)));
                    }
                    stream::iter(msgs)
                }
                Err(e) => stream::iter(vec![Err(e)]),
            }
        })
        .flatten()
        .boxed();
    Response::CopyOut(CopyResponse::new(0, columns, running.guard(data)))
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let kept = client
            .session_extensions()
            .get::<Preparsed>()
            .and_then(|p| p.0.lock().take())
            .filter(|(text, _)| text == query);
        let statements = match kept {
            Some((_, statements)) => statements,
            None => self.engine.parse(query).map_err(to_pg)?,
        };
        if let Some(first) = statements.first() {
            note_work(client, &first.statement, &first.description);
        }
        self.slow_down().await;
        let session = session_of(client);
        // One deadline for the whole query string, as in PostgreSQL.
        let timeout = session.lock().statement_timeout();
        let running = Running::begin(client, timeout);
        let mut out = Vec::with_capacity(statements.len());
        for stmt in statements {
            // The session is cloned out and back so no lock is held across an await.
            let mut s = session.lock().clone();
            let result = running.until_stopped(self.engine.run(&mut s, stmt)).await;
            *session.lock() = s;
            let warning = result
                .as_ref()
                .ok()
                .and_then(|o| o.warning().map(str::to_owned));
            warn_first(client, warning).await?;
            match result
                .map_err(to_pg)
                .and_then(|o| respond(client, o, &Format::UnifiedText, running.clone()))
            {
                Ok(r) => {
                    let copy_in = matches!(r, Response::CopyIn(_));
                    out.push(r);
                    if copy_in {
                        break;
                    }
                }
                Err(e) => {
                    // PostgreSQL stops at the first failing statement of a query string.
                    out.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(out)
    }
}
