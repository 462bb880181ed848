//! Where a statement can run: here, or on a node holding replicas of what it reads
//! (docs/architecture.md, "Statements relayed to a replica"). The broker relays a
//! statement whose [`Engine::route`] names other nodes.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    visit_relations, ObjectName, OnConflictAction, OnInsert, SetExpr, Statement as SqlStatement,
};
use eddy_storage::{ObjectDef, ObjectId};

use crate::dialect::{CursorSource, Statement};
use crate::engine::{object_name, Engine};
use crate::error::{Error, Result};

impl Engine {
    /// True when this node holds no replica of some Raft topic or table (a cluster with
    /// more nodes than that object's `replicas`); only then can [`Engine::route`] send a
    /// statement elsewhere.
    pub fn lacks_replicas(&self) -> bool {
        self.writer.lacks_replicas()
    }

    /// Where `statement` runs: `None` here; otherwise the Postgres addresses of the nodes
    /// holding a replica of every topic and table it reads, in the order to try them.
    pub fn route(&self, statement: &Statement) -> Result<Option<Vec<String>>> {
        if !self.lacks_replicas() {
            return Ok(None);
        }
        let objects = self.objects_read(statement);
        if objects.is_empty() {
            return Ok(None);
        }
        match self.writer.serving_nodes(&objects) {
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

    /// The topics and tables whose rows running `statement` reads: those of a query,
    /// an `UPDATE`, `DELETE`, upsert or `INSERT .. SELECT`, `COPY .. TO`, a subscription
    /// or cursor, `LISTEN`, and the topic of a durable subscription fetched or acked. A blind
    /// `INSERT .. VALUES` and `COPY .. FROM` read none; neither do DDL and settings.
    pub fn objects_read(&self, statement: &Statement) -> Vec<ObjectId> {
        let catalog = self.store.catalog();
        let mut ids = Vec::new();
        let mut add = |name: &ObjectName| {
            let Some(def) = object_name(name).ok().and_then(|n| catalog.get(&n)) else {
                return ControlFlow::<()>::Continue(());
            };
            let id = match &*def {
                ObjectDef::Subscription(s) => s.topic,
                other => other.id(),
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
            ControlFlow::Continue(())
        };
        match statement {
            Statement::Sql(s) if reads_rows(s) => {
                let _ = visit_relations(s.as_ref(), &mut add);
            }
            Statement::Subscribe(spec) | Statement::CopySubscribe { spec, .. } => {
                let _ = add(&spec.topic);
            }
            Statement::DeclareCursor { source, .. } => match source {
                CursorSource::Subscribe(spec) => {
                    let _ = add(&spec.topic);
                }
                CursorSource::Query(q) => {
                    let _ = visit_relations(q.as_ref(), &mut add);
                }
            },
            Statement::FetchSubscription { name, .. } | Statement::Ack { name, .. } => {
                let _ = add(name);
            }
            Statement::Listen(name) => {
                let _ = add(name);
            }
            _ => {}
        }
        ids
    }

    /// What `statement` does to the session's LISTENs: the channel it starts or stops
    /// (`LISTEN x`, `UNLISTEN x`), `Some(None)` for `UNLISTEN *`, `None` otherwise.
    pub fn listen_change(statement: &Statement) -> Option<ListenChange> {
        match statement {
            Statement::Listen(name) => Some(ListenChange::Listen(object_name(name).ok()?)),
            Statement::Unlisten(Some(name)) => {
                Some(ListenChange::Unlisten(object_name(name).ok()?))
            }
            Statement::Unlisten(None) => Some(ListenChange::UnlistenAll),
            _ => None,
        }
    }
}

/// See [`Engine::listen_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenChange {
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
}

/// True for the SQL statements whose result depends on stored rows (see
/// [`Engine::objects_read`]); false for blind writes, `COPY FROM` and everything else.
fn reads_rows(s: &SqlStatement) -> bool {
    match s {
        SqlStatement::Query(_) | SqlStatement::Update(_) | SqlStatement::Delete(_) => true,
        SqlStatement::Copy { to, .. } => *to,
        SqlStatement::Insert(insert) => {
            let values = insert
                .source
                .as_ref()
                .is_some_and(|q| matches!(*q.body, SetExpr::Values(_)));
            let upsert = matches!(
                &insert.on,
                Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoUpdate(_))
            );
            !values || upsert
        }
        _ => false,
    }
}
