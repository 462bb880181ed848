//! `COPY (SUBSCRIBE ...) TO STDOUT`, driven by the connection loop itself.
//!
//! pgwire's COPY OUT sender only queues (`feed`s) messages, so a live row could wait in
//! the write buffer until more arrive. Here each batch's rows are written and then
//! flushed, so a subscriber sees a message as soon as it is durable. While no row comes for
//! the heartbeat interval, a heartbeat row (NULL `_partition`/`_offset`, `_ts` = now) is
//! sent. The stream ends on CancelRequest (57014), on a client disconnect, or when the
//! topic is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{new_null_array, ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema, SchemaRef};

use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use eddy_query::{CopyOptions, Engine, Prepared, Statement};
use futures::{SinkExt, StreamExt};
use pgwire::api::results::Tag;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState};
use pgwire::error::ErrorInfo;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::conn::{next_message, FrameGuard};
use crate::error::{sqlstate, to_pg, user_error};
use crate::load::Meter;

/// A subscription a message asks for, found before pgwire handles the message.
pub(crate) struct Requested {
    statement: Statement,
    /// Extended protocol (Execute): ReadyForQuery answers the client's Sync, not the COPY.
    extended: bool,
}

/// The subscription `msg` starts, if it starts one.
pub(crate) fn requested<S>(
    engine: &Engine,
    msg: &PgWireFrontendMessage,
    socket: &S,
) -> Option<Requested>
where
    S: ClientPortalStore,
    S::PortalStore: PortalStore<Statement = Arc<Prepared>>,
{
    match msg {
        // A cheap scan first, so ordinary queries are not parsed twice.
        PgWireFrontendMessage::Query(q) if mentions_subscribe(&q.query) => {
            match engine.parse(&q.query) {
                Ok(mut stmts)
                    if stmts.len() == 1
                        && matches!(stmts[0].statement, Statement::CopySubscribe { .. }) =>
                {
                    Some(Requested {
                        statement: stmts.remove(0).statement,
                        extended: false,
                    })
                }
                _ => None,
            }
        }
        PgWireFrontendMessage::Execute(e) => {
            let portal = socket
                .portal_store()
                .get_portal(e.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME))?;
            let statement = &portal.value()?.statement.statement.statement;
            matches!(statement, Statement::CopySubscribe { .. }).then(|| Requested {
                statement: statement.clone(),
                extended: true,
            })
        }
        _ => None,
    }
}

/// True when `sql` contains the word SUBSCRIBE in any case (a superset of the queries
/// that start a subscription).
fn mentions_subscribe(sql: &str) -> bool {
    sql.as_bytes()
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
}

/// Streams the subscription to the client until it ends. Messages the client sends
/// meanwhile (a driver's Close and Sync, say) are returned, in order, to be handled after
/// the COPY, as PostgreSQL reads them only then.
pub(crate) async fn drive<T, ST>(
    engine: &Engine,
    meter: &Arc<Meter>,
    socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
    req: Requested,
) -> std::io::Result<Vec<PgWireFrontendMessage>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let token = super::cancel::begin_statement(socket);
    let _streaming = meter.subscription();
    let Statement::CopySubscribe { spec, options } = &req.statement else {
        return Ok(Vec::new());
    };
    let started = engine.copy_subscribe(spec, options).await;
    let (stream, opts, heartbeat): (SendableRecordBatchStream, CopyOptions, Option<Duration>) =
        match started {
            Ok(v) => v,
            Err(e) => {
                return finish_with_error(
                    socket,
                    ErrorInfo::from(to_pg(e)),
                    req.extended,
                    Vec::new(),
                )
                .await
            }
        };
    let columns = stream.schema().fields().len();
    socket
        .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            0,
            columns as i16,
            vec![0; columns],
        )))
        .await?;
    if opts.header {
        socket
            .send(PgWireBackendMessage::CopyData(CopyData::new(Bytes::from(
                opts.encode_header(&stream.schema()),
            ))))
            .await?;
    }
    let mut stream = stream;
    let mut rows = 0usize;
    let mut queued = Vec::new();
    let mut last_sent = Instant::now();
    loop {
        let beat = async {
            match heartbeat {
                Some(every) => tokio::time::sleep_until((last_sent + every).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = beat => {
                // Idle: a heartbeat row (NULL _partition and _offset, _ts = now) shows the stream is alive.
                let line = match heartbeat_row(&stream.schema()).and_then(|b| opts.encode_batch(&b)) {
                    Ok(mut l) => l.pop().unwrap_or_default(),
                    Err(e) => return finish_with_error(socket, ErrorInfo::from(to_pg(e)), req.extended, queued).await,
                };
                socket.send(PgWireBackendMessage::CopyData(CopyData::new(line))).await?;
                last_sent = Instant::now();
            }
            _ = token.cancelled() => {
                let e = user_error(sqlstate::QUERY_CANCELED, "canceling statement due to user request");
                return finish_with_error(socket, ErrorInfo::from(e), req.extended, queued).await;
            }
            // While streaming, the client only talks to end the session (Terminate or EOF).
            msg = next_message(socket) => {
                match msg {
                    Some(Ok(PgWireFrontendMessage::Terminate(_))) | None | Some(Err(_)) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "client left a subscription"));
                    }
                    Some(Ok(m)) => queued.push(m),
                }
            }
            batch = stream.next() => match batch {
                Some(Ok(b)) => {
                    let lines = match engine.copy_lines(&opts, &b) {
                        Ok(l) => l,
                        Err(e) => return finish_with_error(socket, ErrorInfo::from(to_pg(e)), req.extended, queued).await,
                    };
                    rows += lines.len();
                    let bytes: usize = lines.iter().map(Bytes::len).sum();
                    for line in lines {
                        socket.feed(PgWireBackendMessage::CopyData(CopyData::new(line))).await?;
                    }
                    socket.flush().await?;
                    meter.delivered(bytes as u64, published(&b));
                    last_sent = Instant::now();
                }
                Some(Err(e)) => {
                    return finish_with_error(socket, ErrorInfo::from(to_pg(e.into())), req.extended, queued).await;
                }
                None => break, // the topic was dropped
            }
        }
    }
    socket
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    socket
        .feed(PgWireBackendMessage::CommandComplete(
            Tag::new("COPY").with_rows(rows).into(),
        ))
        .await?;
    // Simple protocol: the COPY was the whole query. Extended: the client's Sync answers.
    if !req.extended {
        socket
            .feed(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                socket.transaction_status(),
            )))
            .await?;
    }
    socket.flush().await?;
    Ok(queued)
}

/// The publish timestamps (`_ts`, microseconds since the epoch) of a batch's messages.
fn published(batch: &RecordBatch) -> impl Iterator<Item = i64> + '_ {
    batch
        .column_by_name("_ts")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .into_iter()
        .flat_map(|a| a.iter().flatten())
}

/// A heartbeat: every column NULL except `_ts`, the current time.
fn heartbeat_row(schema: &SchemaRef) -> eddy_query::Result<RecordBatch> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let now = chrono::Utc::now().timestamp_micros();
    let columns = fields
        .iter()
        .map(|f| match f.name().as_str() {
            "_ts" => Arc::new(TimestampMicrosecondArray::from(vec![now])) as ArrayRef,
            _ => new_null_array(f.data_type(), 1),
        })
        .collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(datafusion::error::DataFusionError::from)?)
}

/// Answers `error` in place of a statement's result: then ReadyForQuery (simple
/// protocol) or skipping to the client's Sync (extended).
pub(crate) async fn finish_with_error<T, ST>(
    socket: &mut Framed<T, PgWireMessageServerCodec<ST>>,
    error: ErrorInfo,
    extended: bool,
    queued: Vec<PgWireFrontendMessage>,
) -> std::io::Result<Vec<PgWireFrontendMessage>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    socket
        .feed(PgWireBackendMessage::ErrorResponse(error.into()))
        .await?;
    if extended {
        // As after any error in the extended protocol: skip messages until Sync.
        socket.set_state(PgWireConnectionState::AwaitingSync);
    } else {
        socket
            .feed(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                socket.transaction_status(),
            )))
            .await?;
    }
    socket.flush().await?;
    Ok(queued)
}
