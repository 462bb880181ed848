//! Draining a node (`ALTER CLUSTER DRAIN NODE`): the node stops taking new work, which
//! routers everywhere see in its gossiped state.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Cluster;
use crate::network::{Call, Reply};
use crate::types::NodeId;
use crate::Error;

/// How long a drain call may take to be answered.
const DRAIN_CALL: Duration = Duration::from_secs(2);

impl Cluster {
    /// True while this node drains.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Drains node `node` (`on`), or has it take work again: here, or by a call to it.
    pub async fn drain_node(&self, node: NodeId, on: bool) -> Result<(), Error> {
        if node == self.id() {
            self.drain_here(on);
            return Ok(());
        }
        let addr = self
            .nodes()
            .get(&node)
            .map(|n| n.cluster_addr.clone())
            .ok_or_else(|| Error::Refused(format!("no node {node} in this cluster")))?;
        match self
            .inner
            .peers
            .call(node, &addr, Call::Drain(on), DRAIN_CALL)
            .await
        {
            Ok(Reply::Done(Ok(()))) => Ok(()),
            Ok(Reply::Done(Err(e))) => Err(Error::Unavailable(e.to_string())),
            Ok(other) => Err(Error::Internal(format!(
                "node {node} answered {other:?} to a drain"
            ))),
            Err(e) => Err(Error::Unavailable(format!(
                "node {node} at {addr} cannot be reached to drain it ({e}); retry"
            ))),
        }
    }

    /// Drains this node (its own shutdown, `--drain-on-shutdown`).
    pub fn drain_here_now(&self) {
        self.drain_here(true);
    }

    /// Drains this node, or has it take work again.
    pub(super) fn drain_here(&self, on: bool) {
        let was = self.inner.draining.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::info!(draining = on, "node drain state changed");
        }
    }
}
