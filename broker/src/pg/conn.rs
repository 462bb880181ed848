//! One client connection: pgwire's pieces driven by our own loop, with a guard under the
//! codec that checks every frame header.
//!
//! pgwire decodes a frame whose length field is below 4 (shorter than the length field
//! itself) as an empty message and carries on; PostgreSQL treats it as a protocol
//! violation and closes the connection. [`FrameGuard`] watches the raw bytes, and on a
//! malformed header fails the read, which ends this connection (and only it). Owning the
//! loop is also where server-initiated messages (notifications) are sent from.
//!
//! Replies are written the way PostgreSQL writes them: while a client message is handled,
//! the guard holds what pgwire sends (pgwire flushes after every reply message), and the
//! loop flushes once before it would wait for the client. A prepared query's
//! BindComplete, DataRow, CommandComplete and ReadyForQuery leave in one write instead of
//! three; output held past [`HOLD_LIMIT`] goes out at once, so memory stays bounded.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::ErrorHandler;
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message, MaybeTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use super::pipeline::{self, Pipeline};

/// Startup must finish within this time (as pgwire's own loop does).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// SSLRequest and GSSENCRequest codes: more untyped messages follow them.
const NEGOTIATION_CODES: [i32; 2] = [80_877_103, 80_877_104];

/// Tracks frame boundaries in the client's byte stream and rejects impossible lengths.
#[derive(Debug, Default)]
pub(crate) struct FrameCheck {
    /// After the startup message every frame starts with a type byte.
    typed: bool,
    header: [u8; 8],
    have: usize,
    /// Body bytes of the current frame still to pass.
    skip: u64,
}

impl FrameCheck {
    /// Feeds bytes read from the client; an error means the stream is malformed.
    pub(crate) fn observe(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            // Typed: type byte + length. Untyped (startup phase): length + protocol code.
            let need = if self.typed { 5 } else { 8 };
            let take = (need - self.have).min(data.len());
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < need {
                break;
            }
            self.have = 0;
            let at = if self.typed { 1 } else { 0 };
            let len = i32::from_be_bytes([
                self.header[at],
                self.header[at + 1],
                self.header[at + 2],
                self.header[at + 3],
            ]);
            if self.typed {
                if len < 4 {
                    return Err(format!("invalid message length {len}"));
                }
                self.skip = len as u64 - 4;
            } else {
                if len < 8 {
                    return Err(format!("invalid startup packet length {len}"));
                }
                let code = i32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                self.typed = !NEGOTIATION_CODES.contains(&code);
                self.skip = len as u64 - 8;
            }
        }
        Ok(())
    }
}

/// Most bytes held back while a message is handled; more are written through.
const HOLD_LIMIT: usize = 64 * 1024;

/// The socket under pgwire's codec, with a [`FrameCheck`] on everything read and the
/// reply holding described at the top.
pub(crate) struct FrameGuard<S> {
    inner: S,
    check: FrameCheck,
    /// Written but not yet sent.
    out: bytes::BytesMut,
    /// While true, flushes are deferred (the loop is handling a message).
    hold: bool,
    /// While true, everything written is kept, past [`HOLD_LIMIT`] too: the output is
    /// queued behind pipelined writes' answers (see `pipeline`).
    capture: bool,
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

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.check.observe(fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(msg) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, msg))),
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if (this.out.len() >= HOLD_LIMIT && !this.capture) || (!this.hold && !this.out.is_empty()) {
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

/// Serves one client until it disconnects, sends a malformed frame, or fails startup.
pub async fn serve(tcp: TcpStream, handlers: super::Handlers) -> io::Result<()> {
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    // SSL negotiation (refused: no TLS configured yet) is pgwire's.
    let negotiated = tokio::select! {
        _ = &mut deadline => return Ok(()),
        s = negotiate_tls::<std::sync::Arc<eddy_query::Prepared>>(tcp, None) => s?,
    };
    let Some(socket) = negotiated else {
        return Ok(());
    };
    let parts = socket.into_parts();
    let mut check = FrameCheck::default();
    // Bytes pgwire already buffered belong to the startup message; check them too.
    check
        .observe(&parts.read_buf)
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
    let mut new_parts = FramedParts::new(
        FrameGuard {
            inner: parts.io,
            check,
            out: bytes::BytesMut::new(),
            hold: false,
            capture: false,
        },
        parts.codec,
    );
    new_parts.read_buf = parts.read_buf;
    new_parts.write_buf = parts.write_buf;
    let mut socket: Framed<FrameGuard<MaybeTls>, _> = Framed::from_parts(new_parts);

    // The backend itself (not the opaque handler types) so the statement type is known.
    let backend = handlers.0.clone();
    let cancels = backend.cancels.clone();
    let engine = backend.engine.clone();
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
    let mut relay = super::relay::Relay::new(engine.config().relay_page_bytes);
    loop {
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
                        m = socket.next() => m,
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
                                if SinkExt::<pgwire::messages::PgWireBackendMessage>::flush(&mut socket).await.is_err() {
                                    break None;
                                }
                            }
                            m = socket.next(), if pipeline.has_room() => break m,
                        }
                    }
                } else if listeners.is_empty() && !relay.listening() {
                    socket.next().await
                } else {
                    // Between statements: deliver LISTEN notifications (this node's, and
                    // those of LISTENs relayed to other nodes) until the client speaks.
                    loop {
                        tokio::select! {
                            m = socket.next() => break m,
                            (channel, rows) = listeners.next() => notify(&mut socket, &channel, rows).await?,
                            (addr, frame) = relay.notification(), if relay.listening() => {
                                relay.deliver(&mut socket, addr, frame).await?;
                            }
                        }
                    }
                };
                // None: EOF or startup timeout. Err: a frame pgwire or the guard could not decode.
                let Some(Ok(msg)) = msg else { break };
                msg
            }
        };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        if let PgWireFrontendMessage::Execute(execute) = &msg {
            if pipeline::defer(
                &engine,
                &socket,
                socket.read_buffer(),
                execute,
                &mut pipeline,
            )
            .await
            {
                continue;
            }
        }
        if !pipeline::runs_ahead(&msg) && answer_all(&mut socket, &mut pipeline).await.is_err() {
            break;
        }
        if matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            if let Some(req) = relay.requested(&engine, &msg, &socket) {
                match relay.drive(&mut socket, req).await {
                    Ok(queued) => pending.extend(queued),
                    Err(_) => break,
                }
                continue;
            }
            if let Some(req) = super::subscription::requested(&engine, &msg, &socket) {
                match super::subscription::drive(&engine, &mut socket, req).await {
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
        socket.get_mut().capture = capture.is_some();
        let handled = process_message(
            msg,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(mut e) = handled {
            errors.on_error(&socket, &mut e);
            if process_error(&mut socket, e, is_extended).await.is_err() {
                break;
            }
        }
        if hold_output(&mut socket).await.is_err() {
            break;
        }
        let guard = socket.get_mut();
        guard.hold = false;
        guard.capture = false;
        if let Some(start) = capture {
            pipeline.push_ready(guard.out.split_off(start).freeze());
            continue;
        }
        // The replies go out before the loop could wait: unless the client's next message
        // is already here (a pipelined Bind/Execute/Sync), flush now.
        if pending.is_empty()
            && !has_whole_frame(socket.read_buffer())
            && SinkExt::<pgwire::messages::PgWireBackendMessage>::flush(&mut socket)
                .await
                .is_err()
        {
            break;
        }
        if matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            let wanted = super::session_of(&socket).lock().listens().clone();
            listeners.reconcile(&engine, &wanted).await;
            relay.settle().await;
        }
    }
    // Writes already submitted are answered even when the client has stopped reading
    // (a client may pipeline inserts and Terminate without waiting).
    let _ = answer_all(&mut socket, &mut pipeline).await;
    cancels.unregister(socket.pid_and_secret_key().0);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_packet() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00eddy\x00\x00";
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn accepts_well_formed_streams_in_any_chunking() {
        let mut bytes = Vec::new();
        // SSLRequest, then startup, then Query("SELECT 1"), then Sync.
        bytes.extend_from_slice(&8i32.to_be_bytes());
        bytes.extend_from_slice(&80_877_103i32.to_be_bytes());
        bytes.extend_from_slice(&startup_packet());
        bytes.push(b'Q');
        bytes.extend_from_slice(&13i32.to_be_bytes());
        bytes.extend_from_slice(b"SELECT 1\0");
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        for chunk in 1..bytes.len() {
            let mut c = FrameCheck::default();
            for piece in bytes.chunks(chunk) {
                c.observe(piece).unwrap();
            }
            assert!(c.typed && c.skip == 0 && c.have == 0, "chunk size {chunk}");
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        let mut c = FrameCheck::default();
        c.observe(&startup_packet()).unwrap();
        assert!(c.observe(&[b'Q', 0, 0, 0, 1]).is_err());
        let mut c = FrameCheck::default();
        c.observe(&startup_packet()).unwrap();
        assert!(
            c.observe(&[b'Q', 0xff, 0xff, 0xff, 0xff]).is_err(),
            "negative length"
        );
        let mut c = FrameCheck::default();
        assert!(
            c.observe(&[0, 0, 0, 2, 0, 3, 0, 0]).is_err(),
            "startup shorter than its header"
        );
    }
}
