//! Raw Postgres wire bytes, for tests that send what no driver would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A StartupMessage (protocol 3.0) for user and database `eddy`.
pub fn startup_packet() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec(); // protocol 3.0
    for kv in ["user", "eddy", "database", "eddy"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A connection through startup: the StartupMessage sent, and everything read up to the
/// first ReadyForQuery (`Z`, length 5, status).
pub fn startup(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&startup_packet())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen
        .windows(6)
        .any(|w| w[0] == b'Z' && w[1..5] == 5i32.to_be_bytes())
    {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "server closed during startup");
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}
