//! A running node: storage, engine, the Postgres listener and background tasks.
//!
//! Shutdown order (see STYLE.md): stop accepting, give in-flight statements
//! `shutdown_grace_ms`, close the remaining connections, stop retention, then let the
//! committer drain its queue and sync the WAL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eddy_query::Engine;
use eddy_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pg::{Backend, Handlers};

/// Handle to a running node.
pub struct NodeHandle {
    pg_addr: SocketAddr,
    cancel: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    store: Store,
    engine: Arc<Engine>,
}

impl NodeHandle {
    /// The address the Postgres listener is bound to (useful with port 0).
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    /// The node's query engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops the node in order and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let _ = self.accept.await;
        let _ = self.retention.await;
        self.engine.close();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.shutdown()).await??;
        tracing::info!("node stopped");
        Ok(())
    }
}

/// Opens storage, binds the listener and starts serving.
pub async fn spawn_node(config: Config) -> anyhow::Result<NodeHandle> {
    config.validate()?;
    std::fs::create_dir_all(&config.node.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data dir {}: {e}",
            config.node.data_dir.display()
        )
    })?;
    let dir = config.node.data_dir.clone();
    let storage_cfg = config.storage.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, storage_cfg))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open data dir {}: {e}",
                config.node.data_dir.display()
            )
        })?;
    let engine = Engine::new(store.clone(), config.query.clone())?;
    let listener = TcpListener::bind(config.node.pg_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.node.pg_addr))?;
    let pg_addr = listener.local_addr()?;
    if !pg_addr.ip().is_loopback() {
        tracing::warn!(%pg_addr, "listening beyond loopback with trust authentication: anyone who can reach this port can connect");
    }
    tracing::info!(%pg_addr, data_dir = %config.node.data_dir.display(), "eddy node started");
    let cancel = CancellationToken::new();
    let handlers = Handlers(Backend::new(engine.clone()));
    let grace = Duration::from_millis(config.node.shutdown_grace_ms);
    let accept = tokio::spawn(accept_loop(listener, handlers, cancel.clone(), grace));
    let retention = tokio::spawn(retention_loop(
        store.clone(),
        Duration::from_millis(config.storage.retention_check_ms),
        cancel.clone(),
    ));
    Ok(NodeHandle {
        pg_addr,
        cancel,
        accept,
        retention,
        store,
        engine,
    })
}

async fn accept_loop(
    listener: TcpListener,
    handlers: Handlers,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let h = handlers.clone();
                    connections.spawn(async move {
                        // A malformed frame ends this connection only; the node stays up.
                        if let Err(e) = crate::pg::conn::serve(socket, h).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing connections still open after the grace period"
        );
        connections.shutdown().await;
    }
}

async fn retention_loop(store: Store, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        let now = chrono::Utc::now().timestamp_micros();
        match tokio::task::spawn_blocking(move || s.enforce_retention(now)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(partitions = n, "retention trimmed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            _ => {}
        }
    }
}
