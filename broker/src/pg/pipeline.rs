//! Pipelined writes: a connection keeps reading while its blind writes are being
//! acknowledged.
//!
//! PostgreSQL clients may send many statements before reading any answer (tokio-postgres,
//! pgx, psycopg's pipeline mode, JDBC batches). Served one at a time, every statement on a
//! connection would wait for the previous one's quorum and fsync, so pipelining would only
//! queue. Here an `Execute` of a statement that only writes ([`Prepared::is_blind_write`]:
//! `INSERT .. VALUES`, no `ON CONFLICT DO UPDATE`) directly followed by its `Sync` is
//! submitted at once, and the connection goes on with the next message while the write
//! waits for its acknowledgement.
//!
//! The rules that keep this invisible to the client:
//! - Answers leave in the order the messages came. Each deferred write is one entry of a
//!   [`Pipeline`]; output of messages handled meanwhile (Parse, Bind, Describe, Close,
//!   Sync, Flush) is captured and queued behind it.
//! - Writes are submitted in statement order: a deferred write is polled once as soon as
//!   it is created, which queues it with its Raft group's proposer (or the committer)
//!   before the next message is read, so rows a connection pipelines into one partition
//!   keep their order.
//! - Anything that reads or changes the session (a query, any other Execute, a simple
//!   query, COPY) waits until every deferred write has been answered, so it sees them.
//! - Only the unnamed portal, executed to completion, outside a transaction block, with
//!   the `Sync` already received: an error then ends just that statement's implicit
//!   transaction, exactly as when it runs alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use super::cancel::Running;
use bytes::{Bytes, BytesMut};
use eddy_query::{Engine, Prepared, Session};
use eddy_storage::Lane;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::response::TransactionStatus;

use crate::load::{Meter, Work};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::error::to_pg;

/// Most deferred writes one connection may have awaiting acknowledgement; at this many it
/// stops reading until the oldest is answered.
pub(crate) const MAX_DEFERRED: usize = 1024;

/// An owed answer: whether it is a deferred write's, and its bytes once complete.
type Reply = Pin<Box<dyn Future<Output = (bool, Bytes)> + Send>>;

/// The answers a connection owes, in the order it owes them.
#[derive(Default)]
pub(crate) struct Pipeline {
    replies: FuturesOrdered<Reply>,
    /// Deferred writes among `replies` (captured output does not count against the limit).
    writes: usize,
}

impl Pipeline {
    /// True when nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// True while another write may be deferred.
    pub(crate) fn has_room(&self) -> bool {
        self.writes < MAX_DEFERRED
    }

    /// Queues output that is already complete, behind what is owed.
    pub(crate) fn push_ready(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.replies
                .push_back(Box::pin(std::future::ready((false, bytes))));
        }
    }

    /// The next answer, in order, once it is complete; `None` when nothing is owed.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        let (write, bytes) = self.replies.next().await?;
        if write {
            self.writes -= 1;
        }
        Some(bytes)
    }

    /// Every answer that is complete now, in order, concatenated (empty if none is).
    pub(crate) fn take_ready(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        while let Some(Some(b)) = futures::FutureExt::now_or_never(self.next()) {
            out.extend_from_slice(&b);
        }
        out
    }

    /// Queues a deferred write's answer after polling it once, so its write is submitted
    /// before anything that follows (see the module notes).
    async fn push_write(&mut self, reply: impl Future<Output = Bytes> + Send + 'static) {
        let mut reply: Reply = Box::pin(async move { (true, reply.await) });
        let polled = std::future::poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await;
        let reply: Reply = match polled {
            Poll::Ready(done) => Box::pin(std::future::ready(done)),
            Poll::Pending => reply,
        };
        self.replies.push_back(reply);
        self.writes += 1;
    }
}

/// Messages whose handling neither reads data nor depends on earlier statements'
/// outcome: handled while deferred writes are outstanding, their output queued.
pub(crate) fn runs_ahead(msg: &PgWireFrontendMessage) -> bool {
    matches!(
        msg,
        PgWireFrontendMessage::Parse(_)
            | PgWireFrontendMessage::Bind(_)
            | PgWireFrontendMessage::Describe(_)
            | PgWireFrontendMessage::Close(_)
            | PgWireFrontendMessage::Sync(_)
            | PgWireFrontendMessage::Flush(_)
    )
}

/// Defers `execute` when the rules above allow it: starts its write, queues its answer
/// on `pipeline` and returns true. Returns false to have it handled the ordinary way.
pub(crate) async fn defer<C>(
    engine: &Arc<Engine>,
    meter: &Arc<Meter>,
    client: &C,
    read_buffer: &[u8],
    execute: &Execute,
    pipeline: &mut Pipeline,
) -> bool
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore<Statement = Arc<Prepared>>,
{
    let unnamed = execute
        .name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == pgwire::api::DEFAULT_NAME);
    if !unnamed
        || execute.max_rows != 0
        || !pipeline.has_room()
        || !matches!(client.state(), PgWireConnectionState::ReadyForQuery)
        || client.transaction_status() != TransactionStatus::Idle
        || !sync_follows(read_buffer)
    {
        return false;
    }
    let Some(pgwire::api::store::Entry::Value(portal)) =
        client.portal_store().get_portal(pgwire::api::DEFAULT_NAME)
    else {
        return false;
    };
    let prepared = portal.statement.statement.clone();
    let fresh = portal
        .state
        .try_lock()
        .is_ok_and(|s| matches!(*s, PortalExecutionState::Initial));
    if !fresh || !prepared.is_blind_write() {
        return false;
    }
    // Parameters that do not decode are reported by the ordinary path.
    let Ok(params) = super::extended::parameters(&portal) else {
        return false;
    };
    let format = portal.result_column_format.clone();
    let options = super::format_options(client);
    let engine = engine.clone();
    // More than the Sync already here: the client is pipelining, so this write should
    // share a group commit with the next ones rather than commit alone in place.
    let lane = if read_buffer.len() > SYNC_LEN {
        Lane::Queued
    } else {
        super::session_of(client).lock().lane()
    };
    let mut timing = meter.statement();
    timing.set_work(Work::Publish);
    let write = async move {
        let _timing = timing;
        // A blind write reads no session state, only how the connection writes.
        let mut session = Session::new().in_lane(lane);
        let output = engine.execute(&mut session, &prepared, &params).await;
        let response = output.map_err(to_pg).and_then(|o| match o {
            eddy_query::Output::Command { tag, rows } => {
                Ok(Response::Execution(super::command_tag(&tag, rows)))
            }
            eddy_query::Output::Rows { tag, stream } => {
                super::rows_response(&tag, stream, &format, options, Running::unstoppable())
            }
            _ => Err(PgWireError::ApiError(
                "a blind write answered with neither rows nor a command tag".into(),
            )),
        });
        encode(response).await
    };
    pipeline.push_write(write).await;
    true
}

/// A Sync frame's length: its tag and its length field.
const SYNC_LEN: usize = 5;

/// True when the next whole frame in `buf` is a Sync.
fn sync_follows(buf: &[u8]) -> bool {
    buf.len() >= SYNC_LEN && buf[0] == b'S' && buf[1..SYNC_LEN] == 4u32.to_be_bytes()
}

/// Encodes the answer to an Execute: its rows and CommandComplete, or an ErrorResponse.
async fn encode(response: Result<Response, PgWireError>) -> Bytes {
    let mut out = BytesMut::new();
    let put = |m: PgWireBackendMessage, out: &mut BytesMut| {
        // Encoding into memory fails only on a message pgwire cannot represent.
        if let Err(e) = m.encode(out) {
            tracing::warn!(error = %e, "could not encode a pipelined answer");
        }
    };
    let failed = match response {
        Ok(Response::Execution(tag)) => {
            put(PgWireBackendMessage::CommandComplete(tag.into()), &mut out);
            None
        }
        Ok(Response::Query(mut rows)) => {
            let tag = rows.command_tag().to_owned();
            let mut n = 0;
            let mut failed = None;
            while let Some(row) = rows.data_rows().next().await {
                match row {
                    Ok(row) => {
                        put(PgWireBackendMessage::DataRow(row), &mut out);
                        n += 1;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if failed.is_none() {
                let tag = pgwire::api::results::Tag::new(&tag).with_rows(n);
                put(PgWireBackendMessage::CommandComplete(tag.into()), &mut out);
            }
            failed
        }
        Ok(_) => Some(PgWireError::ApiError(
            "a blind write answered with an unexpected response".into(),
        )),
        Err(e) => Some(e),
    };
    if let Some(e) = failed {
        let info: ErrorInfo = e.into();
        put(PgWireBackendMessage::ErrorResponse(info.into()), &mut out);
    }
    out.freeze()
}
