//! The floor: the least work any server speaking the Postgres protocol must do for a
//! durable single-row publish, run with the same client and connections as eddy, so a
//! run shows how far above this box's ceiling a goal lies.
//!
//! It understands just what tokio-postgres sends for a prepared `INSERT` (startup,
//! Parse/Describe/Sync, Bind/Execute/Sync, simple queries answered with an empty
//! `CommandComplete`). Each Bind hands its last parameter (the message) to one committer
//! thread, which writes whatever is waiting into a file written in full beforehand and
//! calls `fdatasync` once for all of it (group commit), and a connection's replies go
//! out once the write of its last Execute is durable. A prepared `COPY ... TO STDOUT`
//! subscribes: from its Execute on, the connection is sent every message made durable
//! after that, one COPY text row each, as soon as its fdatasync returns. No SQL, no
//! catalog, no index, no replication, no recovery: every real server does more.
//!
//! It runs as a process of its own (this executable started again with
//! [`SERVE_ENV`] set), so its CPU seconds are read from `/proc` like a peer's.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Set to `<listen address> <file> <sync|nosync>` in the environment of a child started
/// from this executable, it makes the child serve the floor instead of running a
/// benchmark (`nosync`: no `fdatasync`, what the protocol and the client alone allow).
pub const SERVE_ENV: &str = "EDDY_BENCH_FLOOR";

/// Serves the floor forever if [`SERVE_ENV`] asks for it; returns otherwise.
pub fn serve_if_asked() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var(SERVE_ENV) else {
        return Ok(());
    };
    let words: Vec<&str> = spec.split(' ').collect();
    let [addr, file, sync] = words[..] else {
        anyhow::bail!("{SERVE_ENV} is `<address> <file> <sync|nosync>`, not {spec:?}");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        serve(listener, Path::new(file), sync == "sync").await
    })?;
    std::process::exit(0)
}

/// One write waiting for the committer, answered once durable.
type Pending = (Vec<u8>, oneshot::Sender<()>);

/// The messages of one group commit, sent to subscribers once durable.
type Durable = Arc<Vec<Vec<u8>>>;

/// Group commits a subscriber may fall behind by before it is cut off.
const SUBSCRIBER_LAG: usize = 4096;

/// Serves the floor on `listener` until it fails, writing to `file` (created and filled
/// before the first connection is taken).
pub async fn serve(listener: TcpListener, file: &Path, sync: bool) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(file)?;
    fill(&log)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (deliver, _) = broadcast::channel(SUBSCRIBER_LAG);
    let shared = Shared {
        commit: tx,
        deliver: deliver.clone(),
        offsets: Arc::new(AtomicU64::new(0)),
    };
    std::thread::Builder::new()
        .name("floor-commit".into())
        .spawn(move || commit(log, sync, rx, deliver))?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = session(socket, shared).await; // a client hanging up ends it
        });
    }
}

/// What every connection shares: the committer's queue, the durable messages' broadcast
/// and the next offset to answer `RETURNING` with.
#[derive(Clone)]
struct Shared {
    commit: mpsc::UnboundedSender<Pending>,
    deliver: broadcast::Sender<Durable>,
    offsets: Arc<AtomicU64>,
}

/// Bytes of the file the floor writes round and round.
const RING: u64 = 64 << 20;

/// The payloads in a floor's `file`, in the order they were made durable, as long as
/// the ring has not wrapped round (a test's run writes far less than [`RING`]).
pub fn written(file: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(file)?;
    let mut payloads = Vec::new();
    let mut rest = &data[..];
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            break;
        }
        payloads.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(payloads)
}

/// Writes the whole ring once and syncs it, before anything is served.
fn fill(log: &std::fs::File) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    for i in 0..RING / zeros.len() as u64 {
        log.write_all_at(&zeros, i * zeros.len() as u64)?;
    }
    log.sync_all()
}

/// The committer: takes every waiting write, writes them in one `pwrite` into a file
/// written in full beforehand (so `fdatasync` has only data to flush, never the file's
/// size or extents: the cheapest durable write ext4 offers), then answers them all and
/// hands them to the subscribers. Without `sync` it skips the `fdatasync`.
fn commit(
    log: std::fs::File,
    sync: bool,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    deliver: broadcast::Sender<Durable>,
) {
    let mut at = 0u64;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut payloads = Vec::new();
        let mut next = Some(first);
        while let Some((payload, answer)) = next {
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&payload);
            payloads.push(payload);
            answers.push(answer);
            next = rx.try_recv().ok();
        }
        if at + buf.len() as u64 > RING {
            at = 0;
        }
        let written = log.write_all_at(&buf, at);
        if written
            .and_then(|()| if sync { log.sync_data() } else { Ok(()) })
            .is_err()
        {
            return; // dropped answers fail the sessions waiting on them
        }
        at += buf.len() as u64;
        buf.clear();
        for a in answers.drain(..) {
            let _ = a.send(());
        }
        if deliver.receiver_count() > 0 {
            let _ = deliver.send(Arc::new(payloads));
        }
    }
}

/// Appends a backend message: its type byte, length, then `body`.
fn message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// A frontend message's fields, read in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(self.0.len() >= n, "message ends early");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> anyhow::Result<usize> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into()?) as usize)
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }

    fn cstr(&mut self) -> anyhow::Result<&'a [u8]> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| anyhow::anyhow!("string not terminated"))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }
}

/// A prepared statement's shape: parameters (`$n`, the highest n), for `RETURNING
/// <column>` the one int8 column it returns, and whether it is a `COPY`.
struct Shape {
    params: usize,
    returning: Option<Vec<u8>>,
    /// A `COPY`: executing it subscribes.
    copy: bool,
}

impl Shape {
    fn of(query: &[u8]) -> Shape {
        let text = String::from_utf8_lossy(query);
        let params = text
            .split('$')
            .skip(1)
            .filter_map(|s| {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0);
        let upper = text.to_ascii_uppercase();
        let returning = upper.find("RETURNING ").map(|at| {
            text[at + "RETURNING ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .as_bytes()
                .to_vec()
        });
        let copy = upper.trim_start().starts_with("COPY");
        Shape {
            params,
            returning,
            copy,
        }
    }
}

async fn session(mut socket: TcpStream, shared: Shared) -> anyhow::Result<()> {
    // Startup, after refusing TLS if asked.
    loop {
        let len = socket.read_u32().await? as usize;
        anyhow::ensure!((8..=10_000).contains(&len), "bad startup length {len}");
        let mut body = vec![0; len - 4];
        socket.read_exact(&mut body).await?;
        if body[..4] == 80_877_103u32.to_be_bytes() {
            socket.write_all(b"N").await?;
            continue;
        }
        break;
    }
    let mut out = Vec::new();
    message(&mut out, b'R', &0u32.to_be_bytes());
    message(&mut out, b'S', b"server_version\x0015.0\x00");
    message(&mut out, b'S', b"client_encoding\x00UTF8\x00");
    message(&mut out, b'K', &[0; 8]);
    message(&mut out, b'Z', b"I");
    socket.write_all(&out).await?;
    out.clear();

    let mut statements: std::collections::HashMap<Vec<u8>, Shape> = Default::default();
    let mut portal_returns: Option<Vec<u8>> = None;
    let mut portal_copies = false;
    let mut input = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&chunk[..n]);
        let mut durable: Option<oneshot::Receiver<()>> = None;
        let mut at = 0;
        while input.len() - at >= 5 {
            let kind = input[at];
            let len = u32::from_be_bytes(input[at + 1..at + 5].try_into()?) as usize;
            anyhow::ensure!(len >= 4, "bad message length {len}");
            if input.len() - at < 1 + len {
                break;
            }
            let mut f = Fields(&input[at + 5..at + 1 + len]);
            at += 1 + len;
            match kind {
                b'P' => {
                    let name = f.cstr()?.to_vec();
                    let shape = Shape::of(f.cstr()?);
                    statements.insert(name, shape);
                    message(&mut out, b'1', b"");
                }
                b'D' => {
                    let what = f.take(1)?[0];
                    let name = f.cstr()?;
                    let shape = statements.get(name);
                    if what == b'S' {
                        let params = shape.map_or(0, |s| s.params);
                        let mut body = (params as u16).to_be_bytes().to_vec();
                        for _ in 0..params {
                            body.extend_from_slice(&25u32.to_be_bytes()); // text
                        }
                        message(&mut out, b't', &body);
                    }
                    let returning = if what == b'S' {
                        shape.and_then(|s| s.returning.as_deref())
                    } else {
                        portal_returns.as_deref()
                    };
                    match returning {
                        Some(column) => row_description(&mut out, column),
                        None => message(&mut out, b'n', b""),
                    }
                }
                b'B' => {
                    f.cstr()?; // portal
                    let statement = statements.get(f.cstr()?);
                    portal_returns = statement.and_then(|s| s.returning.clone());
                    portal_copies = statement.is_some_and(|s| s.copy);
                    let formats = f.u16()?;
                    f.take(2 * formats)?;
                    let values = f.u16()?;
                    let mut last = None;
                    for _ in 0..values {
                        let len = f.i32()?;
                        last = Some(f.take(len.max(0) as usize)?.to_vec());
                    }
                    if !portal_copies {
                        let (answer, done) = oneshot::channel();
                        shared
                            .commit
                            .send((last.unwrap_or_default(), answer))
                            .map_err(|_| anyhow::anyhow!("the committer stopped"))?;
                        durable = Some(done);
                    }
                    message(&mut out, b'2', b"");
                }
                b'E' if portal_copies => {
                    // Subscribed before the client hears of it: nothing made durable
                    // after this answer is missed.
                    let durable = shared.deliver.subscribe();
                    message(&mut out, b'H', &[0, 0, 1, 0, 0]); // text, one column
                    socket.write_all(&out).await?;
                    return stream(socket, durable).await;
                }
                b'E' => {
                    if portal_returns.is_some() {
                        let offset = shared.offsets.fetch_add(1, Ordering::Relaxed);
                        let mut row = 1u16.to_be_bytes().to_vec();
                        row.extend_from_slice(&8u32.to_be_bytes());
                        row.extend_from_slice(&offset.to_be_bytes());
                        message(&mut out, b'D', &row);
                    }
                    message(&mut out, b'C', b"INSERT 0 1\x00");
                }
                b'S' => message(&mut out, b'Z', b"I"),
                b'Q' => {
                    message(&mut out, b'C', b"OK\x00");
                    message(&mut out, b'Z', b"I");
                }
                b'C' => message(&mut out, b'3', b""),
                b'H' => {}
                b'X' => return Ok(()),
                other => anyhow::bail!("the floor does not serve message {:?}", other as char),
            }
        }
        input.drain(..at);
        // Commits are in order: the last write's answer covers every earlier one.
        if let Some(done) = durable {
            done.await?;
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Sends every durable message to a subscribed connection as a COPY text row, until the
/// client hangs up (or falls [`SUBSCRIBER_LAG`] commits behind).
async fn stream(
    socket: TcpStream,
    mut durable: broadcast::Receiver<Durable>,
) -> anyhow::Result<()> {
    let (mut read, mut write) = socket.into_split();
    let mut ignored = [0u8; 1024];
    let mut out = Vec::new();
    loop {
        tokio::select! {
            batch = durable.recv() => {
                for payload in batch?.iter() {
                    let mut row = payload.clone();
                    row.push(b'\n');
                    message(&mut out, b'd', &row);
                }
                write.write_all(&out).await?;
                out.clear();
            }
            n = read.read(&mut ignored) => if n? == 0 { return Ok(()) },
        }
    }
}

/// A RowDescription of one int8 column named `column`, sent in binary.
fn row_description(out: &mut Vec<u8>, column: &[u8]) {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(column);
    body.push(0);
    body.extend_from_slice(&0u32.to_be_bytes()); // table oid
    body.extend_from_slice(&0u16.to_be_bytes()); // column number
    body.extend_from_slice(&20u32.to_be_bytes()); // int8
    body.extend_from_slice(&8i16.to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes()); // binary
    message(out, b'T', &body);
}
