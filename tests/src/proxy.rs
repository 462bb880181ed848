//! A TCP proxy in front of a node that can cut every connection through it, or swallow
//! what the node answers on them: a fault injector over real sockets for reconnect
//! tests. Its upstream can be switched, so a client keeps one address while the node
//! behind it restarts on another port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The proxy; stops accepting when dropped (relays already running end with their sockets).
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    /// Relays of live connections (ending one closes both of its sockets), each with its
    /// switch for swallowing the node's bytes.
    relays: Mutex<Vec<(JoinHandle<()>, Arc<AtomicBool>)>>,
    accepted: AtomicUsize,
}

impl TcpProxy {
    /// Listens on a free loopback port and relays each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            relays: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = *s.upstream.lock().unwrap_or_else(PoisonError::into_inner);
                let swallow = Arc::new(AtomicBool::new(false));
                let relay = tokio::spawn(relay(client, upstream, swallow.clone()));
                let mut relays = s.relays.lock().unwrap_or_else(PoisonError::into_inner);
                relays.retain(|(r, _)| !r.is_finished());
                relays.push((relay, swallow));
            }
        })
        .abort_handle();
        Ok(TcpProxy {
            addr,
            shared,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections go to `upstream` from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    /// Closes every connection through the proxy (both sides) and returns how many were
    /// live; when it returns, their sockets are closed.
    pub async fn cut_all(&self) -> usize {
        let relays = std::mem::take(
            &mut *self
                .shared
                .relays
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let live = relays.iter().filter(|(r, _)| !r.is_finished()).count();
        for (r, _) in &relays {
            r.abort();
        }
        for (r, _) in relays {
            let _ = r.await;
        }
        live
    }

    /// From now on, drops whatever the node sends on the connections live now (it still
    /// gets what the client sends); connections made later are relayed as usual. Returns
    /// how many were live.
    pub fn swallow_replies(&self) -> usize {
        let relays = self
            .shared
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let live: Vec<_> = relays.iter().filter(|(r, _)| !r.is_finished()).collect();
        for (_, swallow) in &live {
            swallow.store(true, Ordering::SeqCst);
        }
        live.len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays both ways until both sides are done, each end's close passed on to the other.
async fn relay(client: TcpStream, upstream: SocketAddr, swallow: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from_server.read(&mut buf).await {
            if !swallow.load(Ordering::SeqCst) && to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}
