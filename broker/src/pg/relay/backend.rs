//! One backend connection of the relay: a Postgres-wire connection from this node to
//! another node's Postgres port, opened with the client's user and database, its
//! statements prepared once, its answers passed to the client frame by frame.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::ClientInfo;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::{flush_client, frame, put_cstr, Outgoing, Page, FLUSH_BYTES};
use crate::pg::conn::FrameGuard;

/// Longest wait for a replica node to accept a backend connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest backend frame accepted (PostgreSQL's own limit is 1 GiB).
const MAX_FRAME: usize = 1 << 30;
/// The `application_name` of backend connections (statements arriving on one are not
/// relayed again).
pub(super) const RELAY_APP: &str = "eddy relay";
/// Statements kept prepared on one backend connection.
const BACKEND_STATEMENTS: usize = 256;

/// Why a relay stopped early.
pub(super) enum Gone {
    /// The client's connection failed or closed.
    Client(io::Error),
    /// The backend connection failed or closed before any of its answer was passed on.
    Early(io::Error),
    /// The backend connection failed or closed.
    Backend(io::Error),
}

/// One connection to another node's Postgres port.
pub(super) struct BackendConn {
    addr: String,
    io: Framed<TcpStream, RawFrames>,
    /// The backend's pid and secret, for CancelRequest.
    key: Option<(i32, i32)>,
    /// The session settings it has been given.
    sent: BTreeMap<String, String>,
    /// Statements prepared on it, by text and declared types, with their names.
    statements: HashMap<(String, Vec<u32>), String>,
    /// Statement names given out (at most [`BACKEND_STATEMENTS`]).
    named: usize,
}

impl BackendConn {
    pub(super) async fn open(addr: &str, user: &str, database: &str) -> io::Result<BackendConn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        let mut conn = BackendConn {
            addr: addr.to_owned(),
            io: Framed::new(tcp, RawFrames),
            key: None,
            sent: BTreeMap::new(),
            statements: HashMap::new(),
            named: 0,
        };
        let mut startup = BytesMut::new();
        startup.put_i32(0);
        startup.put_i32(196_608); // protocol 3.0
        for (k, v) in [
            ("user", user),
            ("database", database),
            ("application_name", RELAY_APP),
        ] {
            put_cstr(&mut startup, k);
            put_cstr(&mut startup, v);
        }
        startup.put_u8(0);
        let len = startup.len() as i32;
        startup[..4].copy_from_slice(&len.to_be_bytes());
        conn.send(startup.freeze()).await?;
        loop {
            let (tag, f) = conn.next().await?;
            match tag {
                b'R' if body(&f).get_i32() != 0 => {
                    return Err(io::Error::other("the node asks for a password"))
                }
                b'K' => {
                    let mut b = body(&f);
                    conn.key = Some((b.get_i32(), b.get_i32()));
                }
                b'E' => return Err(io::Error::other(error_text(&f))),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    /// True unless the connection was closed or sent something unasked since the last
    /// statement ended.
    pub(super) fn idle_and_open(&mut self) -> bool {
        self.io.next().now_or_never().is_none()
    }

    /// Sends a statement; for an extended one, returns the key it was newly prepared
    /// under (Parse sent), if it was.
    pub(super) async fn send_statement(
        &mut self,
        message: &Outgoing,
    ) -> Result<Option<(String, Vec<u32>)>, Gone> {
        let (bytes, parsed) = match message {
            Outgoing::Query(sql) => {
                let mut b = BytesMut::new();
                frame(&mut b, b'Q', |b| put_cstr(b, sql));
                (b.freeze(), None)
            }
            Outgoing::Extended(call) => {
                let key = (call.sql.clone(), call.types.clone());
                match self.statements.get(&key) {
                    Some(name) => (call.messages(name, false), None),
                    // Up to a bound, statements stay prepared; past it, they go unnamed.
                    None if self.named >= BACKEND_STATEMENTS => (call.messages("", true), None),
                    None => {
                        self.named += 1;
                        let name = format!("eddy_relay_{}", self.named);
                        let bytes = call.messages(&name, true);
                        self.statements.insert(key.clone(), name);
                        (bytes, Some(key))
                    }
                }
            }
        };
        self.send(bytes).await.map_err(Gone::Early)?;
        Ok(parsed)
    }

    /// Forgets that a statement is prepared here (it may not be after all): it is
    /// parsed again next time.
    pub(super) fn forget_statement(&mut self, key: &(String, Vec<u32>)) {
        self.statements.remove(key);
    }

    async fn send(&mut self, bytes: Bytes) -> io::Result<()> {
        self.io.send(bytes).await
    }

    /// Runs a simple query whose answer nobody needs, up to its ReadyForQuery.
    pub(super) async fn simple(&mut self, sql: &str) -> io::Result<()> {
        let mut b = BytesMut::new();
        frame(&mut b, b'Q', |b| put_cstr(b, sql));
        self.send(b.freeze()).await?;
        while self.next().await?.0 != b'Z' {}
        Ok(())
    }

    pub(super) async fn next(&mut self) -> io::Result<(u8, Bytes)> {
        match self.io.next().await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
        }
    }

    /// Sends the SET (and RESET) statements that make the backend's settings `want`.
    pub(super) async fn apply_settings(
        &mut self,
        want: &BTreeMap<String, String>,
    ) -> Result<(), Gone> {
        if &self.sent == want {
            return Ok(());
        }
        let mut statements: Vec<String> = want
            .iter()
            .filter(|(k, v)| self.sent.get(*k) != Some(*v))
            .map(|(k, v)| format!("SET {k} = '{}'", v.replace('\'', "''")))
            .collect();
        statements.extend(
            self.sent
                .keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| format!("RESET {k}")),
        );
        let mut b = BytesMut::new();
        for sql in &statements {
            frame(&mut b, b'Q', |b| put_cstr(b, sql));
        }
        self.send(b.freeze()).await.map_err(Gone::Early)?;
        for _ in &statements {
            loop {
                let (tag, f) = self.next().await.map_err(Gone::Early)?;
                match tag {
                    b'E' => {
                        tracing::debug!(addr = %self.addr, error = %error_text(&f), "relayed SET refused")
                    }
                    b'Z' => break,
                    _ => {}
                }
            }
        }
        self.sent = want.clone();
        Ok(())
    }

    /// Asks the backend's node to cancel the statement running on this connection.
    async fn cancel(&self) {
        if let Some((pid, secret)) = self.key {
            send_cancel(&self.addr, pid, secret).await;
        }
    }

    /// Passes the backend's answer to the client up to its ReadyForQuery (not passed).
    /// Returns whether the statement failed. A cancel of the client's statement is sent
    /// on to the backend.
    ///
    /// With `page`, rows past its limit are held in it, with the CommandComplete after
    /// them, and the client gets PortalSuspended instead.
    pub(super) async fn relay<T, ST>(
        &mut self,
        socket: &mut Framed<FrameGuard<T>, PgWireMessageServerCodec<ST>>,
        token: &tokio_util::sync::CancellationToken,
        queued: &mut Vec<PgWireFrontendMessage>,
        mut page: Option<&mut Page>,
    ) -> Result<bool, Gone>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let mut failed = false;
        let mut cancel_sent = false;
        let mut passed = false;
        let gone = |passed: bool, e: io::Error| {
            if passed {
                Gone::Backend(e)
            } else {
                Gone::Early(e)
            }
        };
        loop {
            tokio::select! {
                frame = self.io.next() => {
                    let (tag, f) = match frame {
                        Some(Ok(f)) => f,
                        Some(Err(e)) => return Err(gone(passed, e)),
                        None => return Err(gone(passed, io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))),
                    };
                    match tag {
                        b'Z' => {
                            if let Some(p) = page.as_deref_mut() {
                                if failed || p.over {
                                    // Nothing to page: the portal failed.
                                    p.rest.clear();
                                    p.complete = None;
                                } else if !p.rest.is_empty() {
                                    socket.get_mut().queue_raw(PORTAL_SUSPENDED);
                                }
                            }
                            flush_client(socket).await.map_err(Gone::Client)?;
                            return Ok(failed || page.is_some_and(|p| p.over));
                        }
                        // Parse, Bind and Close were answered here already.
                        b'1' | b'2' | b'3' => {}
                        // A LISTEN's notification: passed on as this connection's.
                        b'A' => {
                            let pid = socket.pid_and_secret_key().0;
                            socket.get_mut().queue_raw(&as_ours(pid, f));
                        }
                        // A page that outgrew its bytes: the rest of the answer is dropped
                        // (the backend was told to stop), and the client gets an error.
                        _ if page.as_deref().is_some_and(|p| p.over) => {}
                        // Rows past the page's limit, and the end after them, are held.
                        b'D' if page.as_deref().is_some_and(Page::full) => {
                            if let Some(p) = page.as_deref_mut() {
                                if !p.hold(f) && !cancel_sent {
                                    cancel_sent = true;
                                    self.cancel().await;
                                }
                            }
                        }
                        b'C' if page.as_deref().is_some_and(|p| !p.rest.is_empty()) => {
                            if let Some(p) = page.as_deref_mut() {
                                p.complete = Some(f);
                            }
                        }
                        _ => {
                            if let Some(p) = page.as_deref_mut() {
                                match tag {
                                    b'D' => p.sent += 1,
                                    b'C' => p.complete = Some(f.clone()),
                                    _ => {}
                                }
                            }
                            failed |= tag == b'E';
                            passed = true;
                            socket.get_mut().queue_raw(&f);
                            // Written out when more would have to be waited for.
                            if socket.get_ref().queued() >= FLUSH_BYTES || !crate::pg::conn::has_whole_frame(self.io.read_buffer()) {
                                flush_client(socket).await.map_err(Gone::Client)?;
                            }
                        }
                    }
                }
                _ = token.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    self.cancel().await;
                }
                // While a statement runs, the client only talks to end the session.
                msg = crate::pg::conn::next_message(socket) => match msg {
                    Some(Ok(PgWireFrontendMessage::Terminate(_))) | None | Some(Err(_)) => {
                        return Err(Gone::Client(io::Error::new(io::ErrorKind::ConnectionAborted, "client left during a relayed statement")));
                    }
                    Some(Ok(m)) => queued.push(m),
                },
            }
        }
    }
}

/// The PortalSuspended message: an Execute's row limit was reached.
pub(super) const PORTAL_SUSPENDED: &[u8] = &[b's', 0, 0, 0, 4];

/// A backend's NotificationResponse frame with `pid` (the client's connection) as sender.
pub(super) fn as_ours(pid: i32, frame: Bytes) -> Bytes {
    let mut f = BytesMut::from(&frame[..]);
    if f.len() >= 9 {
        f[5..9].copy_from_slice(&pid.to_be_bytes());
    }
    f.freeze()
}

/// Sends a CancelRequest for the backend connection `pid` to the node at `addr`.
pub(super) async fn send_cancel(addr: &str, pid: i32, secret: i32) {
    let mut b = BytesMut::with_capacity(16);
    b.put_i32(16);
    b.put_i32(80_877_102);
    b.put_i32(pid);
    b.put_i32(secret);
    let sent = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(&b).await?;
        tcp.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(CONNECT_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(%addr, error = %e, "could not pass a cancel on");
    }
}

/// A frame's body (after the type byte and length).
fn body(frame: &Bytes) -> Bytes {
    frame.slice(5..)
}

/// The message of an ErrorResponse frame.
pub(super) fn error_text(frame: &Bytes) -> String {
    let mut fields = body(frame);
    while fields.has_remaining() {
        let code = fields.get_u8();
        if code == 0 {
            break;
        }
        let end = fields.iter().position(|b| *b == 0).unwrap_or(fields.len());
        let value = String::from_utf8_lossy(&fields[..end]).into_owned();
        fields.advance((end + 1).min(fields.len()));
        if code == b'M' {
            return value;
        }
    }
    "error".into()
}

/// Backend frames, whole (type byte, length and body), and raw bytes out.
struct RawFrames;

impl Decoder for RawFrames {
    type Item = (u8, Bytes);
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<(u8, Bytes)>> {
        if src.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backend frame of length {len}"),
            ));
        }
        if src.len() < len + 1 {
            src.reserve(len + 1 - src.len());
            return Ok(None);
        }
        let f = src.split_to(len + 1).freeze();
        Ok(Some((f[0], f)))
    }
}

impl Encoder<Bytes> for RawFrames {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}
