//! Where a statement can run: here, or on a node holding replicas of what it reads
//! (docs/architecture.md, "Statements relayed to a replica", "Routing"). The broker's
//! router chooses one of the nodes [`Core::route`] names.

use eddy_storage::{ObjectDef, ObjectId};

use crate::core::Core;
use crate::description::Description;
use crate::error::{Error, Result};
use crate::writer::Holder;

impl Core {
    /// True when this node holds no replica of some Raft topic or table (a cluster with
    /// more nodes than that object's `replicas`): then even the `local` strategy sends
    /// some statements elsewhere.
    pub fn lacks_replicas(&self) -> bool {
        self.writer.lacks_replicas()
    }

    /// The nodes that can run a statement described by `description` (the broker's
    /// router chooses among them): those holding a replica of every topic and table it
    /// reads, this node included when it does. `None` when it reads no Raft object, so
    /// runs here.
    pub fn route(&self, description: &Description) -> Result<Option<Vec<Holder>>> {
        let objects = self.objects(&description.reads);
        if objects.is_empty() {
            return Ok(None);
        }
        match self.writer.holders(&objects) {
            Some(nodes) if nodes.is_empty() => {
                let catalog = self.store.catalog();
                let names: Vec<String> = objects
                    .iter()
                    .filter_map(|id| catalog.by_id(*id))
                    .map(|d| format!("\"{}\"", d.name()))
                    .collect();
                Err(Error::NotSupported(format!(
                    "a statement reading {} together: no node holds a replica of all of them",
                    names.join(", ")
                )))
            }
            other => Ok(other),
        }
    }

    /// The topics and tables `names` (a [`Description`]'s reads) are now, a subscription
    /// standing for its topic; names of no object (a CTE, a system table) are left out.
    pub(crate) fn objects(&self, names: &[String]) -> Vec<ObjectId> {
        let catalog = self.store.catalog();
        let mut ids = Vec::new();
        for def in names.iter().filter_map(|n| catalog.get(n)) {
            let id = match &*def {
                ObjectDef::Subscription(s) => s.topic,
                other => other.id(),
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}
