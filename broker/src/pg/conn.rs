//! One client connection: pgwire's pieces driven by our own loop, over a guard that
//! checks every frame before pgwire decodes it.
//!
//! pgwire reads a message's fields without holding them to the frame's length, and panics
//! or misreads the next message when they do not fit; PostgreSQL answers such messages
//! with 08P01 and closes the connection. [`FrameGuard`] passes every byte read from the
//! client through a [`FrameCheck`] (`frame.rs`) and hands pgwire only the bytes before a
//! malformed frame; the loop then says why and closes this connection (only it). Owning
//! the loop is also where server-initiated messages (notifications) are sent from, and
//! where the node's shutdown reaches each connection.
//!
//! Replies are written the way PostgreSQL writes them: while a client message is handled,
//! the guard holds what pgwire sends (pgwire flushes after every reply message), and the
//! loop flushes once before it would wait for the client. A prepared query's
//! BindComplete, DataRow, CommandComplete and ReadyForQuery leave in one write instead of
//! three; output held past [`HOLD_LIMIT`] goes out at once, so memory stays bounded.
//!
//! How a connection ends besides the client leaving: an ErrorResponse of FATAL severity
//! (what PostgreSQL sends), then the socket closes.
//!
//! | why | SQLSTATE | when |
//! |---|---|---|
//! | the node shuts down | 57P01 | idle: at once; in a statement: when it ends, or when `shutdown_grace_ms` is over |
//! | `max_connections` are open | 53300 | after its startup message (a CancelRequest is still served) |
//! | a malformed message | 08P01 | at once; the messages before it are answered |
//! | a bug (a panic) | XX000 | at once; the node keeps serving |
//!
//! ```text
//!  accept ─► serve ─┬─ run: startup, messages, statements ◄── Shutdown::begun (between statements)
//!                   ├─ Shutdown::grace_over ─► run dropped mid-statement
//!                   └─ goodbye: FATAL ErrorResponse, close
//! ```

use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::ErrorHandler;
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{
    negotiate_tls, process_error, process_message, MaybeTls, PgWireMessageServerCodec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;

use super::frame::FrameCheck;
use super::pipeline::{self, Pipeline};
use crate::error::hidden;
use crate::error::sqlstate::{
    ADMIN_SHUTDOWN, INTERNAL_ERROR, PROTOCOL_VIOLATION, TOO_MANY_CONNECTIONS,
};

/// Startup must finish within this time (as pgwire's own loop does).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection being turned away (every slot taken) gets this long to send its startup
/// message: a client sends it at once, and these connections hold one of few places.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time spent telling a client why its connection ends and closing it: a client that
/// stops reading must not hold up the node's shutdown.
pub(crate) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket of one connection, as its loop drives it.
type Socket = Framed<FrameGuard<MaybeTls>, PgWireMessageServerCodec<Arc<eddy_query::Prepared>>>;

/// How the node's shutdown reaches a connection.
#[derive(Clone)]
pub(crate) struct Shutdown {
    /// The node is stopping: an idle connection closes at once, a busy one when its
    /// statement has ended.
    pub(crate) begun: CancellationToken,
    /// The grace period is over: every connection closes now, mid-statement or not.
    pub(crate) grace_over: CancellationToken,
}

/// A connection's place among the node's `max_connections`.
pub(crate) struct Admission {
    /// Every place was taken: a startup is refused (53300), a CancelRequest still served.
    refused: bool,
    /// Held until the connection ends, however it ends (a panic included): the number of
    /// places held is the node's open-connections figure. A refused connection holds one
    /// of the few places kept for turning connections away instead.
    _place: OwnedSemaphorePermit,
}

impl Admission {
    /// A connection holding one of the `max_connections` places.
    pub(crate) fn admitted(place: OwnedSemaphorePermit) -> Admission {
        Admission {
            refused: false,
            _place: place,
        }
    }

    /// A connection over the limit, holding a place among those being turned away.
    pub(crate) fn refused(place: OwnedSemaphorePermit) -> Admission {
        Admission {
            refused: true,
            _place: place,
        }
    }
}

/// Most bytes held back while a message is handled; more are written through.
const HOLD_LIMIT: usize = 64 * 1024;

/// The socket under pgwire's codec, with a [`FrameCheck`] on everything read and the
/// reply holding described at the top.
pub(crate) struct FrameGuard<S> {
    inner: S,
    check: FrameCheck,
    /// Why the client's byte stream was refused, once it was; every later read fails.
    violation: Option<String>,
    /// Written but not yet sent.
    out: bytes::BytesMut,
    /// While true, flushes are deferred (the loop is handling a message).
    hold: bool,
    /// While set, everything written from this offset of `out` on is kept, past
    /// [`HOLD_LIMIT`] too: the output is queued behind pipelined writes' answers (see
    /// `pipeline`).
    capture_from: Option<usize>,
}

impl<S> FrameGuard<S> {
    /// Queues bytes already framed (a relayed answer) behind what is held; the next
    /// flush writes them.
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.out.len()
    }
}

impl<S: AsyncWrite + Unpin> FrameGuard<S> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            bytes::Buf::advance(&mut self.out, n);
        }
        Poll::Ready(Ok(()))
    }
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = &this.violation {
            return Poll::Ready(Err(refused(why)));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(v) = this.check.observe(&buf.filled()[before..]) {
            // The bytes before the one that showed the frame malformed go up: the messages
            // before it are answered, and pgwire never holds the malformed frame whole.
            buf.set_filled(before + v.at);
            let now = v.at == 0;
            this.violation = Some(v.message);
            if now {
                return Poll::Ready(Err(refused(this.violation.as_deref().unwrap_or_default())));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if (this.out.len() >= HOLD_LIMIT && this.capture_from.is_none())
            || (!this.hold && !this.out.is_empty())
        {
            std::task::ready!(this.poll_drain(cx))?;
        }
        if !this.hold {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.hold {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client left (Terminate, EOF), startup timed out, or the socket failed.
    Closed,
    /// The node is shutting down.
    Shutdown,
    /// A startup over `max_connections`.
    TooMany,
    /// A malformed message, and what was wrong with it.
    Violation(String),
    /// The connection's code panicked: what the client is told (an id into the log).
    Panicked(String),
}

/// Serves one client until it leaves, sends a malformed message, fails startup, or the
/// node shuts down; `admission` is held until then.
pub(crate) async fn serve(
    tcp: TcpStream,
    handlers: super::Handlers,
    admission: Admission,
    shutdown: Shutdown,
) -> io::Result<()> {
    let deadline = tokio::time::sleep(if admission.refused {
        REFUSAL_TIMEOUT
    } else {
        STARTUP_TIMEOUT
    });
    tokio::pin!(deadline);
    // SSL negotiation (refused: no TLS configured yet) is pgwire's.
    let negotiated = tokio::select! {
        _ = &mut deadline => return Ok(()),
        _ = shutdown.begun.cancelled() => return Ok(()),
        s = negotiate_tls::<Arc<eddy_query::Prepared>>(tcp, None) => s?,
    };
    let Some(socket) = negotiated else {
        return Ok(());
    };
    let parts = socket.into_parts();
    let mut check = FrameCheck::default();
    // Bytes pgwire already buffered belong to the startup message: checked too. They are
    // in the codec's buffer already, so a violation among them ends the connection before
    // anything is decoded.
    let early = check.observe(&parts.read_buf).err().map(|v| v.message);
    let mut new_parts = FramedParts::new(
        FrameGuard {
            inner: parts.io,
            check,
            violation: None,
            out: bytes::BytesMut::new(),
            hold: false,
            capture_from: None,
        },
        parts.codec,
    );
    new_parts.read_buf = parts.read_buf;
    new_parts.write_buf = parts.write_buf;
    let mut socket: Socket = Framed::from_parts(new_parts);
    let end = match early {
        Some(why) => End::Violation(why),
        None => {
            let running = AssertUnwindSafe(run(
                &mut socket,
                &handlers,
                admission.refused,
                &shutdown.begun,
                deadline.as_mut(),
            ))
            .catch_unwind();
            tokio::select! {
                biased;
                // Dropping `run` drops the statement it was in; its output so far stays
                // queued in order, and the goodbye goes after it.
                _ = shutdown.grace_over.cancelled() => End::Shutdown,
                ended = running => match ended {
                    Ok(Ok(end)) => end,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        End::Closed
                    }
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        End::Panicked(hidden(
                            "internal error; the connection is closed",
                            &format!("a connection's code panicked: {what}"),
                        ))
                    }
                }
            }
        }
    };
    // A malformed message found while a relayed statement or a subscription read from the
    // client ends the connection the same way.
    let end = match (end, socket.get_mut().violation.take()) {
        (End::Closed, Some(why)) => End::Violation(why),
        (end, _) => end,
    };
    if let End::Violation(why) = &end {
        tracing::debug!(
            peer = %socket.socket_addr(),
            %why,
            "malformed message; closing the connection"
        );
    }
    goodbye(&mut socket, end).await;
    Ok(())
}

/// The client's next message. pgwire only decodes frames the guard checked; should its
/// decoder panic all the same, the message counts as malformed.
pub(crate) async fn next_message<T, ST>(
    socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
) -> Option<Result<PgWireFrontendMessage, PgWireError>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match AssertUnwindSafe(socket.next()).catch_unwind().await {
        Ok(m) => m,
        Err(_) => {
            let why = "invalid message format";
            socket.get_mut().violation = Some(why.to_owned());
            Some(Err(PgWireError::IoError(refused(why))))
        }
    }
}

/// Tells the client why its connection ends (a FATAL ErrorResponse) and closes it, in at
/// most [`GOODBYE_TIMEOUT`].
async fn goodbye(socket: &mut Socket, end: End) {
    let (code, message) = match end {
        End::Closed => return,
        End::Shutdown => (
            ADMIN_SHUTDOWN,
            "terminating connection due to administrator command".to_owned(),
        ),
        End::TooMany => (
            TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".to_owned(),
        ),
        End::Violation(why) => (PROTOCOL_VIOLATION, why),
        End::Panicked(message) => (INTERNAL_ERROR, message),
    };
    let guard = socket.get_mut();
    // Output held for after pipelined writes' answers would now come before them, and they
    // will not come: it is dropped. Everything held before it goes out, then the error.
    if let Some(start) = guard.capture_from.take() {
        guard.out.truncate(start);
    }
    guard.hold = false;
    let error = ErrorInfo::new("FATAL".to_owned(), code.to_owned(), message);
    let bye = async {
        socket
            .send(PgWireBackendMessage::ErrorResponse(error.into()))
            .await?;
        SinkExt::<PgWireBackendMessage>::close(socket).await?;
        // Read what the client still sends until it closes its end: closing a socket with
        // unread input resets the connection, and a reset can destroy the error on its way.
        let mut discard = [0u8; 4096];
        while socket.get_mut().inner.read(&mut discard).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, bye).await;
}

/// The message loop, from startup until the connection must end; what ended it.
async fn run(
    socket: &mut Socket,
    handlers: &super::Handlers,
    refused: bool,
    stop: &CancellationToken,
    mut deadline: Pin<&mut tokio::time::Sleep>,
) -> io::Result<End> {
    // The backend itself (not the opaque handler types) so the statement type is known.
    let backend = handlers.0.clone();
    let engine = backend.engine.clone();
    let routing = backend.routing.clone();
    let (startup, simple, extended, copy) =
        (backend.clone(), backend.clone(), backend.clone(), backend);
    let cancel = handlers.cancel_handler();
    let errors = handlers.error_handler();
    // Messages that arrived while a subscription streamed, handled before reading more.
    let mut pending = std::collections::VecDeque::new();
    let mut listeners = super::listen::Listeners::default();
    // Answers owed to pipelined writes, and output queued behind them.
    let mut pipeline = Pipeline::default();
    // Statements run on another node holding the replicas they read.
    let mut relay = super::relay::Relay::new(routing.clone(), engine.config().relay_page_bytes);
    'messages: loop {
        if stop.is_cancelled() {
            // Between statements: what pipelined writes are owed is answered first.
            answer_all(socket, &mut pipeline).await?;
            return Ok(End::Shutdown);
        }
        let msg = match pending.pop_front() {
            Some(m) => m,
            None => {
                let starting = matches!(
                    socket.state(),
                    PgWireConnectionState::AwaitingStartup
                        | PgWireConnectionState::AuthenticationInProgress
                );
                let msg = if starting {
                    tokio::select! {
                        _ = &mut deadline => None,
                        _ = stop.cancelled() => continue 'messages,
                        m = next_message(socket) => m,
                    }
                } else if !pipeline.is_empty() {
                    // Answers go out as their writes are acknowledged, in order, while
                    // the client's next messages are read.
                    loop {
                        tokio::select! {
                            biased;
                            Some(first) = pipeline.next() => {
                                let out = &mut socket.get_mut().out;
                                out.extend_from_slice(&first);
                                out.extend_from_slice(&pipeline.take_ready());
                                if SinkExt::<PgWireBackendMessage>::flush(socket).await.is_err() {
                                    break None;
                                }
                            }
                            _ = stop.cancelled() => continue 'messages,
                            m = next_message(socket), if pipeline.has_room() => break m,
                        }
                    }
                } else if listeners.is_empty() && !relay.listening() {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => continue 'messages,
                        m = next_message(socket) => m,
                    }
                } else {
                    // Between statements: deliver LISTEN notifications (this node's, and
                    // those of LISTENs relayed to other nodes) until the client speaks.
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => continue 'messages,
                            m = next_message(socket) => break m,
                            (channel, rows) = listeners.next() => notify(socket, &channel, rows).await?,
                            (addr, frame) = relay.notification(), if relay.listening() => {
                                relay.deliver(socket, addr, frame).await?;
                            }
                        }
                    }
                };
                match msg {
                    Some(Ok(msg)) => msg,
                    // A frame pgwire could not decode. (One the guard refused comes as an
                    // I/O error; `serve` finds why in the guard.)
                    Some(Err(e)) if !matches!(e, PgWireError::IoError(_)) => {
                        return Ok(End::Violation(e.to_string()))
                    }
                    // EOF, a failed read, or the startup timeout.
                    _ => break,
                }
            }
        };
        if refused && matches!(msg, PgWireFrontendMessage::Startup(_)) {
            return Ok(End::TooMany);
        }
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        if let PgWireFrontendMessage::Execute(execute) = &msg {
            if pipeline::defer(
                &engine,
                routing.meter(),
                &*socket,
                socket.read_buffer(),
                execute,
                &mut pipeline,
            )
            .await
            {
                continue;
            }
        }
        if !pipeline::runs_ahead(&msg) && answer_all(socket, &mut pipeline).await.is_err() {
            break;
        }
        if matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            if let Some(req) = relay.requested(&engine, &msg, &*socket) {
                match relay.drive(socket, req).await {
                    Ok(queued) => pending.extend(queued),
                    Err(_) => break,
                }
                continue;
            }
            if let Some(req) = super::subscription::requested(&engine, &msg, &*socket) {
                match super::subscription::drive(&engine, routing.meter(), socket, req).await {
                    Ok(queued) => pending.extend(queued),
                    Err(_) => break,
                }
                continue;
            }
        }
        let is_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(ext) => ext,
            _ => msg.is_extended_query(),
        };
        // Behind outstanding answers, this message's output is queued, not sent. Held
        // output of earlier messages stays in front of it (see `hold_output`).
        let capture = (!pipeline.is_empty()).then(|| socket.get_ref().out.len());
        socket.get_mut().hold = true;
        socket.get_mut().capture_from = capture;
        // A statement run here counts in the node's load until its answer is out.
        let mut timing = matches!(
            msg,
            PgWireFrontendMessage::Query(_) | PgWireFrontendMessage::Execute(_)
        )
        .then(|| routing.meter().statement());
        let handled = process_message(
            msg,
            socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(mut e) = handled {
            errors.on_error(&*socket, &mut e);
            if process_error(socket, e, is_extended).await.is_err() {
                break;
            }
        }
        if hold_output(socket).await.is_err() {
            break;
        }
        if let (Some(t), Some(work)) = (timing.as_mut(), super::take_work(&*socket)) {
            t.set_work(work);
        }
        drop(timing);
        let guard = socket.get_mut();
        guard.hold = false;
        guard.capture_from = None;
        if let Some(start) = capture {
            pipeline.push_ready(guard.out.split_off(start).freeze());
            continue;
        }
        // The replies go out before the loop could wait: unless the client's next message
        // is already here (a pipelined Bind/Execute/Sync), flush now.
        if pending.is_empty()
            && !has_whole_frame(socket.read_buffer())
            && SinkExt::<PgWireBackendMessage>::flush(socket)
                .await
                .is_err()
        {
            break;
        }
        if matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            let wanted = super::session_of(&*socket).lock().listens().clone();
            listeners.reconcile(&engine, &wanted).await;
            relay.settle().await;
        }
    }
    // Writes already submitted are answered even when the client has stopped reading
    // (a client may pipeline inserts and Terminate without waiting).
    let _ = answer_all(socket, &mut pipeline).await;
    Ok(End::Closed)
}

/// Moves what pgwire wrote but the codec still buffers into the guard's held output (the
/// guard holds, so nothing is sent). Afterwards the held output is everything written so
/// far, in order, so a pipelined answer or captured output appended to it lands after it.
async fn hold_output<T, C>(socket: &mut Framed<FrameGuard<T>, C>) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
    C: tokio_util::codec::Encoder<pgwire::messages::PgWireBackendMessage, Error = io::Error>,
{
    debug_assert!(socket.get_ref().hold);
    SinkExt::<pgwire::messages::PgWireBackendMessage>::flush(socket).await
}

/// Waits for every answer `pipeline` owes and sends them, in order.
async fn answer_all<T, C>(
    socket: &mut Framed<FrameGuard<T>, C>,
    pipeline: &mut Pipeline,
) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
    C: tokio_util::codec::Encoder<pgwire::messages::PgWireBackendMessage, Error = io::Error>,
{
    if pipeline.is_empty() {
        return Ok(());
    }
    while let Some(bytes) = pipeline.next().await {
        socket.get_mut().out.extend_from_slice(&bytes);
    }
    SinkExt::<pgwire::messages::PgWireBackendMessage>::flush(socket).await
}

/// True when `buf` starts with a complete typed frame (type byte, length, body).
pub(crate) fn has_whole_frame(buf: &[u8]) -> bool {
    match buf.get(1..5) {
        Some(len) => {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            buf.len() > len
        }
        None => false,
    }
}

/// Sends each row of `rows` as a NotificationResponse on `channel`.
async fn notify<T, ST>(
    socket: &mut Framed<T, pgwire::tokio::server::PgWireMessageServerCodec<ST>>,
    channel: &str,
    rows: Result<arrow::array::RecordBatch, datafusion::error::DataFusionError>,
) -> io::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    use futures::SinkExt;
    use pgwire::messages::response::NotificationResponse;
    use pgwire::messages::PgWireBackendMessage;
    let payloads = match rows
        .map_err(eddy_query::Error::from)
        .and_then(|b| eddy_query::rows_as_json(&b))
    {
        Ok(p) => p,
        Err(e) => {
            // A LISTEN that can no longer deliver (its topic dropped, say) just stops.
            tracing::debug!(%channel, error = %e, "LISTEN stream failed");
            return Ok(());
        }
    };
    let pid = socket.pid_and_secret_key().0;
    for payload in payloads {
        let n = NotificationResponse::new(pid, channel.to_owned(), payload);
        socket
            .feed(PgWireBackendMessage::NotificationResponse(n))
            .await?;
    }
    socket.flush().await
}
