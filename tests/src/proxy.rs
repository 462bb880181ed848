//! A TCP proxy in front of a node that can cut every connection through it: a fault
//! injector over real sockets for reconnect tests. Its upstream can be switched, so a
//! client keeps one address while the node behind it restarts on another port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    /// Relays of live connections; ending one closes both of its sockets.
    relays: Mutex<Vec<JoinHandle<()>>>,
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
                let relay = tokio::spawn(relay(client, upstream));
                let mut relays = s.relays.lock().unwrap_or_else(PoisonError::into_inner);
                relays.retain(|r| !r.is_finished());
                relays.push(relay);
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
        let live = relays.iter().filter(|r| !r.is_finished()).count();
        for r in &relays {
            r.abort();
        }
        for r in relays {
            let _ = r.await;
        }
        live
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

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
