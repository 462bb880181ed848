//! Where the query layer's writes go: straight into the local store, or through the
//! cluster's Raft groups (the broker plugs `eddy-consensus` in; this crate does not
//! depend on it).

use std::sync::Arc;

use async_trait::async_trait;
use eddy_storage::{Store, WriteOp, WriteResult};

/// Applies writes and says when a read may see everything acknowledged before it.
#[async_trait]
pub trait Writer: Send + Sync + 'static {
    /// Applies `ops`; ops for one object apply atomically.
    async fn write(&self, ops: Vec<WriteOp>) -> eddy_storage::Result<Vec<WriteResult>>;
}

/// Writes into the local store only (a node without replication, and unit tests).
#[async_trait]
impl Writer for Store {
    async fn write(&self, ops: Vec<WriteOp>) -> eddy_storage::Result<Vec<WriteResult>> {
        Store::write(self, ops).await
    }
}

/// The local writer of `store`.
pub fn local(store: &Store) -> Arc<dyn Writer> {
    Arc::new(store.clone())
}
