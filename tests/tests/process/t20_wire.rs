//! Malformed wire frames close that connection only; the node keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use eddy_tests::wire::startup;
use eddy_tests::{connect, ProcessNode};

/// True when the server closed the connection (EOF or reset), after reading any last
/// message it sent.
fn closed(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ProcessNode::start(&dir.path().join("data"), &[])?;
    let addr = node.addr();
    let c = connect(addr).await?;
    c.batch_execute("CREATE TOPIC t (n INT); INSERT INTO t VALUES (1)")
        .await?;

    let cases: Vec<(&str, Box<dyn Fn() -> anyhow::Result<TcpStream> + Send>)> = vec![
        (
            "not postgres at all",
            Box::new(move || {
                let mut s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
                Ok(s)
            }),
        ),
        (
            "unknown message type",
            Box::new(move || {
                let mut s = startup(addr)?;
                s.write_all(&[b'!', 0, 0, 0, 4])?;
                Ok(s)
            }),
        ),
        (
            "length shorter than its header",
            Box::new(move || {
                let mut s = startup(addr)?;
                s.write_all(&[b'Q', 0, 0, 0, 1])?;
                Ok(s)
            }),
        ),
        (
            "startup packet shorter than its header",
            Box::new(move || {
                let mut s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(&[0, 0, 0, 2, 0, 3, 0, 0])?;
                Ok(s)
            }),
        ),
        (
            "absurd length",
            Box::new(move || {
                let mut s = startup(addr)?;
                s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b'S'])?;
                Ok(s)
            }),
        ),
    ];
    for (name, open) in cases {
        let s = tokio::task::spawn_blocking(move || open()).await??;
        let was_closed = tokio::task::spawn_blocking(move || closed(s)).await?;
        assert!(was_closed, "{name}: connection should be closed");
        // The node is still up and the earlier connection still works.
        assert!(node.is_running(), "{name}: node died");
        let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
        assert_eq!(n, 1, "{name}");
    }
    // A fresh connection works too.
    let c2 = connect(addr).await?;
    c2.batch_execute("INSERT INTO t VALUES (2)").await?;
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 2);
    Ok(())
}
