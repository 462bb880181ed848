//! How connections end when the server ends them: a node shutting down (57P01), one
//! connection too many (53300), a malformed message (08P01). Every time the client is told
//! why, with a FATAL ErrorResponse, and nothing of the connection is left counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use eddy_tests::wire::{startup, startup_packet};
use eddy_tests::{connect, wait_for, ProcessNode};
use tokio::sync::oneshot;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(30);

/// A connection and the error it ends with (`None`: it ended without one).
async fn connect_watched(
    addr: SocketAddr,
) -> anyhow::Result<(Client, oneshot::Receiver<Option<tokio_postgres::Error>>)> {
    let conn_str = format!(
        "host={} port={} user=eddy dbname=eddy",
        addr.ip(),
        addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, NoTls).await?;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(conn.await.err());
    });
    Ok((client, rx))
}

/// The server's error in `e`, or a failure naming what was expected.
fn db_error<'a>(e: &'a tokio_postgres::Error, what: &str) -> anyhow::Result<&'a DbError> {
    e.as_db_error()
        .ok_or_else(|| anyhow::anyhow!("{what}: not a server error: {e}"))
}

/// Asserts the connection watched by `ended` was ended by a FATAL 57P01.
async fn ended_by_shutdown(
    ended: oneshot::Receiver<Option<tokio_postgres::Error>>,
    what: &str,
) -> anyhow::Result<()> {
    let e = tokio::time::timeout(DEADLINE, ended)
        .await??
        .ok_or_else(|| anyhow::anyhow!("{what}: the connection ended without an error"))?;
    let db = db_error(&e, what)?;
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN, "{what}: {db}");
    assert_eq!(db.severity(), "FATAL", "{what}");
    assert_eq!(
        db.message(),
        "terminating connection due to administrator command"
    );
    Ok(())
}

/// A node started with `toml` as its config file (flags still set its data dir and port).
fn start_with_config(dir: &Path, toml: &str, extra: &[&str]) -> anyhow::Result<ProcessNode> {
    let config = dir.join("eddy.toml");
    std::fs::write(&config, toml)?;
    let config = config.to_string_lossy().into_owned();
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    ProcessNode::start(&dir.join("data"), &args)
}

/// SIGTERM, on the blocking pool (it waits for the process to exit); the node comes back
/// with its exit status.
fn terminate(
    mut node: ProcessNode,
) -> tokio::task::JoinHandle<(ProcessNode, anyhow::Result<std::process::ExitStatus>)> {
    tokio::task::spawn_blocking(move || {
        let status = node.terminate();
        (node, status)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_idle_connections_at_once_and_busy_ones_after_their_statement(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A grace period the statement below never uses up.
    let node = start_with_config(dir.path(), "[node]\nshutdown_grace_ms = 60000\n", &[])?;
    let addr = node.addr();
    let (idle, idle_ended) = connect_watched(addr).await?;
    idle.batch_execute("CREATE TOPIC t (n INT)").await?;

    eprintln!("phase: a statement in flight (its INSERT is visible, its sleep running)");
    let (busy, busy_ended) = connect_watched(addr).await?;
    // The client comes back with the answer: dropped, it would end its connection itself.
    let statement = tokio::spawn(async move {
        let answer = busy
            .simple_query("INSERT INTO t VALUES (1); SELECT pg_sleep(2)")
            .await;
        (busy, answer)
    });
    rows_in_t(&idle, 1, "the busy connection's INSERT").await?;

    eprintln!("phase: SIGTERM");
    let stopping = terminate(node);
    ended_by_shutdown(idle_ended, "idle connection").await?;
    // The statement running when the signal came finishes and answers in full ...
    let (_busy, answered) = tokio::time::timeout(DEADLINE, statement).await??;
    let rows = answered?
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1, "pg_sleep's row");
    // ... and then its connection is told why it closes.
    ended_by_shutdown(busy_ended, "busy connection").await?;
    let (_node, status) = tokio::time::timeout(DEADLINE, stopping).await??;
    assert!(status?.success(), "the node exits cleanly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_statements_outlasting_the_grace_period_with_57p01() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_with_config(dir.path(), "[node]\nshutdown_grace_ms = 300\n", &[])?;
    let addr = node.addr();
    let setup = connect(addr).await?;
    setup
        .batch_execute("CREATE TOPIC t (n INT); INSERT INTO t VALUES (0)")
        .await?;

    eprintln!("phase: a subscription streaming, and a statement that would sleep for 10 minutes");
    let (subscriber, _) = connect_watched(addr).await?;
    let copy = subscriber
        .copy_out("COPY (SUBSCRIBE t FROM BEGINNING) TO STDOUT")
        .await?;
    let mut copy = Box::pin(copy);
    let first = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut copy)).await?;
    assert!(matches!(first, Some(Ok(_))), "the subscription's first row");
    let (sleeper, _) = connect_watched(addr).await?;
    let statement = tokio::spawn(async move {
        sleeper
            .simple_query("INSERT INTO t VALUES (1); SELECT pg_sleep(600)")
            .await
    });
    rows_in_t(&setup, 2, "the sleeper's INSERT").await?;

    eprintln!("phase: SIGTERM; the grace period runs out");
    let stopping = terminate(node);
    let e = tokio::time::timeout(DEADLINE, statement)
        .await??
        .err()
        .ok_or_else(|| anyhow::anyhow!("pg_sleep(600) answered"))?;
    let db = db_error(&e, "the sleeping statement")?;
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN, "{db}");
    assert_eq!(db.severity(), "FATAL");
    // The subscription may pass the sleeper's row first; then it ends the same way.
    let e = tokio::time::timeout(DEADLINE, async {
        loop {
            match futures::StreamExt::next(&mut copy).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("the subscription ended without an error"))?;
    let db = db_error(&e, "the subscription")?;
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN, "{db}");
    let (_node, status) = tokio::time::timeout(DEADLINE, stopping).await??;
    assert!(status?.success(), "the node exits cleanly");
    Ok(())
}

/// The `connections` figure of this node's gossiped load.
async fn open_connections(c: &Client) -> Option<u64> {
    let n: i64 = c
        .query_one("SELECT connections FROM eddy.nodes WHERE this_node", &[])
        .await
        .ok()?
        .get::<_, Option<i64>>(0)?;
    u64::try_from(n).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_one_more_with_53300_until_one_closes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ProcessNode::start(&dir.path().join("data"), &["--max-connections", "3"])?;
    let addr = node.addr();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(addr).await?);
    }
    wait_for("3 connections in the node's load", DEADLINE, || async {
        (open_connections(&open[0]).await == Some(3)).then_some(())
    })
    .await?;

    eprintln!("phase: the fourth connection");
    let e = connect(addr)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a fourth connection was accepted"))?;
    let e = e
        .downcast_ref::<tokio_postgres::Error>()
        .ok_or_else(|| anyhow::anyhow!("not a postgres error: {e}"))?;
    let db = db_error(e, "the fourth connection")?;
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS, "{db}");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.message(), "sorry, too many clients already");
    // The three keep working.
    for c in &open {
        c.simple_query("SELECT 1").await?;
    }

    eprintln!("phase: a CancelRequest still gets through while every place is taken");
    open[0].batch_execute("CREATE TOPIC t (n INT)").await?;
    let cancel = open[2].cancel_token();
    let sleeper = open.pop().ok_or_else(|| anyhow::anyhow!("three clients"))?;
    let statement = tokio::spawn(async move {
        let answer = sleeper
            .simple_query("INSERT INTO t VALUES (1); SELECT pg_sleep(600)")
            .await;
        (sleeper, answer)
    });
    wait_for("the sleeper's INSERT", DEADLINE, || async {
        let n: i64 = open[0]
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await?;
    cancel.cancel_query(NoTls).await?;
    let (sleeper, answer) = tokio::time::timeout(DEADLINE, statement).await??;
    let e = answer
        .err()
        .ok_or_else(|| anyhow::anyhow!("pg_sleep(600) answered"))?;
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    open.push(sleeper);

    eprintln!("phase: one closes, and its place is taken again");
    drop(open.pop());
    let fourth = wait_for("a connection in the freed place", DEADLINE, || async {
        connect(addr).await.ok()
    })
    .await?;
    let n: i64 = fourth.query_one("SELECT 1::BIGINT", &[]).await?.get(0);
    assert_eq!(n, 1);
    Ok(())
}

/// Reads the server's messages until it closes the connection: (type, body) pairs.
fn messages_until_closed(mut s: TcpStream) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        anyhow::ensure!(rest.len() > len, "a message cut short: {rest:?}");
        out.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    anyhow::ensure!(rest.is_empty(), "stray bytes {rest:?}");
    Ok(out)
}

/// A field of an ErrorResponse body (`b'C'`: the SQLSTATE).
fn error_field(body: &[u8], field: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&field))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_08p01_and_leave_nothing_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ProcessNode::start(&dir.path().join("data"), &[])?;
    let addr = node.addr();
    let c = connect(addr).await?;
    c.batch_execute("CREATE TOPIC t (n INT); INSERT INTO t VALUES (1)")
        .await?;

    // A Parse of 7 bytes (no room for its parameter type count), and a Bind announcing
    // five parameter format codes and carrying one: each decoded as is, pgwire panics.
    let parse: &[u8] = &[b'P', 0, 0, 0, 6, 0, 0];
    let bind: &[u8] = &[b'B', 0, 0, 0, 10, 0, 0, 0, 5, 0, 1];
    eprintln!("phase: 80 connections sending malformed messages");
    let answers = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut sockets = Vec::new();
        for i in 0..80 {
            let bad = if i < 40 { parse } else { bind };
            let s = if i % 2 == 0 {
                // Right behind the startup packet, before authentication is through.
                let mut s = TcpStream::connect(addr)?;
                let mut bytes = startup_packet();
                bytes.extend_from_slice(bad);
                s.write_all(&bytes)?;
                s
            } else {
                let mut s = startup(addr)?;
                s.write_all(bad)?;
                s
            };
            s.set_read_timeout(Some(DEADLINE))?;
            sockets.push(s);
        }
        sockets
            .into_iter()
            .map(messages_until_closed)
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    for (i, messages) in answers.iter().enumerate() {
        let (kind, body) = messages
            .last()
            .ok_or_else(|| anyhow::anyhow!("connection {i}: no answer"))?;
        assert_eq!(*kind, b'E', "connection {i}: ends with an ErrorResponse");
        assert_eq!(
            error_field(body, b'C').as_deref(),
            Some("08P01"),
            "connection {i}"
        );
        assert_eq!(
            error_field(body, b'S').as_deref(),
            Some("FATAL"),
            "connection {i}"
        );
    }
    for i in [0, 79] {
        let said = answers[i]
            .last()
            .and_then(|(_, body)| error_field(body, b'M'));
        assert_eq!(said.as_deref(), Some("insufficient data left in message"));
    }

    eprintln!("phase: the node serves on, and counts only the connection left open");
    assert!(node.is_running(), "node died");
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 1);
    connect(addr)
        .await?
        .batch_execute("INSERT INTO t VALUES (2)")
        .await?;
    wait_for("1 connection in the node's load", DEADLINE, || async {
        (open_connections(&c).await == Some(1)).then_some(())
    })
    .await?;
    Ok(())
}

/// A frame of type `kind` around `body`.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Reads the server's messages up to and including the next ReadyForQuery.
fn messages_until_ready(s: &mut TcpStream) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut bytes = Vec::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while bytes.len() >= 5 {
            let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            if bytes.len() <= len {
                break;
            }
            let kind = bytes[0];
            out.push((kind, bytes[5..1 + len].to_vec()));
            bytes.drain(..1 + len);
            if kind == b'Z' {
                return Ok(out);
            }
        }
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "closed before ReadyForQuery; got {out:?}");
        bytes.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_with_result_formats_not_one_per_column_is_refused_and_the_connection_stays(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ProcessNode::start(&dir.path().join("data"), &[])?;
    let addr = node.addr();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(DEADLINE))?;
        s.write_all(&startup_packet())?;
        messages_until_ready(&mut s)?;
        // Three columns, two result format codes: neither one for all nor one each.
        let mut bytes = frame(b'P', b"\0SELECT 1, 2, 3\0\0\0");
        bytes.extend(frame(b'B', b"\0\0\0\0\0\0\0\x02\0\0\0\0"));
        bytes.extend(frame(b'E', b"\0\0\0\0\0"));
        bytes.extend(frame(b'S', b""));
        s.write_all(&bytes)?;
        let answer = messages_until_ready(&mut s)?;
        let (_, error) = answer
            .iter()
            .find(|(kind, _)| *kind == b'E')
            .ok_or_else(|| anyhow::anyhow!("no error: {answer:?}"))?;
        assert_eq!(error_field(error, b'C').as_deref(), Some("08P01"));
        assert_eq!(error_field(error, b'S').as_deref(), Some("ERROR"));
        assert_eq!(
            error_field(error, b'M').as_deref(),
            Some("bind message has 2 result formats but query has 3 columns")
        );
        // The connection goes on.
        s.write_all(&frame(b'Q', b"SELECT 1\0"))?;
        let answer = messages_until_ready(&mut s)?;
        assert!(answer.iter().any(|(kind, _)| *kind == b'D'), "{answer:?}");
        Ok(())
    })
    .await??;
    Ok(())
}

/// Waits until topic `t` holds `n` rows, as `c` sees them (`what` names the write).
async fn rows_in_t(c: &tokio_postgres::Client, n: i64, what: &str) -> anyhow::Result<()> {
    wait_for(what, DEADLINE, || async {
        let got: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .ok()?
            .get(0);
        (got == n).then_some(())
    })
    .await
}
