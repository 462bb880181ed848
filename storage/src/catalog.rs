//! The catalog: definitions of topics and tables, kept in memory and persisted in the
//! `catalog` column family by the committer.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::value::ColumnType;

/// Numeric id of a topic or table; the first four bytes of every key of its data.
/// Ids are never reused, so a dropped object's leftovers can never be read as a new one's.
pub type ObjectId = u32;

/// How an object is replicated (recorded now; a single node stores both locally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// Writes go through the object's Raft group (the default).
    #[default]
    Raft,
    /// Writes are accepted anywhere and spread by delta gossip.
    Gossip,
}

impl Replication {
    /// The name used in `WITH (replication = '...')`.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::Raft => "raft",
            Replication::Gossip => "gossip",
        }
    }
}

/// One user column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name (already case-folded).
    pub name: String,
    /// Stored type.
    pub ty: ColumnType,
    /// False for NOT NULL and primary key columns.
    pub nullable: bool,
}

/// A partitioned append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDef {
    /// Object id (assigned by the committer).
    pub id: ObjectId,
    /// Topic name.
    pub name: String,
    /// User columns; the metadata columns `_partition`, `_offset`, `_ts`, `_key` are implied.
    pub columns: Vec<ColumnDef>,
    /// Number of partitions, fixed at creation.
    pub partitions: u32,
    /// Messages older than this are removed in the background; `None` keeps them forever.
    pub retention_ms: Option<u64>,
    /// Replication mode.
    pub replication: Replication,
    /// Requested replica count (`None` = cluster default).
    pub replicas: Option<u32>,
    /// The nodes holding each partition's Raft group, preferred leader first; decided
    /// when the topic is created in a cluster (empty: this node alone).
    #[serde(default)]
    pub placement: Vec<Vec<u64>>,
    /// Some replica was moved since creation (`ALTER CLUSTER REMOVE NODE`): a node new
    /// to a group waits for the group's leader to add it instead of initializing it.
    #[serde(default)]
    pub reassigned: bool,
    /// How long, in append time, a partition remembers a message id (`_msg_id`): a
    /// message whose id it took within this window is not stored again.
    #[serde(default = "default_dedup_window")]
    pub dedup_window_ms: u64,
}

/// How long a topic remembers message ids unless it says otherwise: two minutes.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 120 * 1000;

fn default_dedup_window() -> u64 {
    DEFAULT_DEDUP_WINDOW_MS
}

/// Rows with a primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// Object id (assigned by the committer).
    pub id: ObjectId,
    /// Table name.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns` forming the primary key, in key order.
    pub primary_key: Vec<usize>,
    /// Replication mode.
    pub replication: Replication,
    /// Entries of the change log (what `SUBSCRIBE table` reads) older than this are removed;
    /// `None` keeps them forever.
    #[serde(default = "default_change_retention")]
    pub change_retention_ms: Option<u64>,
    /// The nodes holding the table's Raft group (one list, like a one-partition topic's).
    #[serde(default)]
    pub placement: Vec<Vec<u64>>,
    /// See [`TopicDef::reassigned`].
    #[serde(default)]
    pub reassigned: bool,
}

/// How long a table's change log is kept unless the table says otherwise: one day.
pub const DEFAULT_CHANGE_RETENTION_MS: u64 = 24 * 3600 * 1000;

fn default_change_retention() -> Option<u64> {
    Some(DEFAULT_CHANGE_RETENTION_MS)
}

impl TableDef {
    /// A table with these columns and primary key (indexes into `columns`) and the
    /// defaults for the rest: replicated through Raft, changes kept a day (its id and
    /// placement are decided when it is created).
    pub fn new(
        name: impl Into<String>,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
    ) -> TableDef {
        TableDef {
            id: 0,
            name: name.into(),
            columns,
            primary_key,
            replication: Replication::Raft,
            change_retention_ms: default_change_retention(),
            placement: Vec::new(),
            reassigned: false,
        }
    }

    /// The column types in declaration order.
    pub fn column_types(&self) -> Vec<ColumnType> {
        self.columns.iter().map(|c| c.ty).collect()
    }

    /// The table's change log seen as a one-partition topic: same id, the table's columns,
    /// and the change kind (`insert`, `update`, `delete`) as each record's key.
    pub fn change_log(&self) -> TopicDef {
        TopicDef {
            id: self.id,
            name: self.name.clone(),
            columns: self.columns.clone(),
            partitions: 1,
            retention_ms: self.change_retention_ms,
            replication: self.replication,
            replicas: None,
            placement: self.placement.clone(),
            reassigned: self.reassigned,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
        }
    }
}

/// A durable subscription: a named, server-side position in a topic with leases and acks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDef {
    /// Object id (assigned by the committer); the prefix of its state keys.
    pub id: ObjectId,
    /// Subscription name.
    pub name: String,
    /// The topic it reads.
    pub topic: ObjectId,
    /// `WHERE` expression as SQL text, evaluated against the topic's rows.
    pub filter: Option<String>,
    /// Offset each partition starts at until the subscription has state for it.
    pub start: Vec<u64>,
    /// How long a delivered row stays leased before it is delivered again.
    pub ack_wait_ms: u64,
    /// Deliveries after which an unacked row moves to the dead-letter topic.
    pub max_deliver: u32,
    /// Hold a row back while an earlier row with the same key is unacked.
    pub ordering_key: bool,
    /// Most rows leased or waiting at once (bounds the subscription's memory).
    pub max_pending: u32,
    /// Name of the dead-letter topic.
    pub dlq: String,
}

impl ColumnDef {
    /// A column.
    pub fn new(name: impl Into<String>, ty: ColumnType, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable,
        }
    }
}

impl TopicDef {
    /// A topic with these columns and the defaults for the rest: one partition, kept
    /// forever, replicated through Raft with the cluster's replica count (its id and
    /// placement are decided when it is created).
    pub fn new(name: impl Into<String>, columns: Vec<ColumnDef>) -> TopicDef {
        TopicDef {
            id: 0,
            name: name.into(),
            columns,
            partitions: 1,
            retention_ms: None,
            replication: Replication::Raft,
            replicas: None,
            placement: Vec::new(),
            reassigned: false,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
        }
    }

    /// The user column types in declaration order.
    pub fn column_types(&self) -> Vec<ColumnType> {
        self.columns.iter().map(|c| c.ty).collect()
    }
}

/// A catalog object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectDef {
    /// A topic.
    Topic(TopicDef),
    /// A table.
    Table(TableDef),
    /// A durable subscription.
    Subscription(SubscriptionDef),
}

impl ObjectDef {
    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            ObjectDef::Topic(t) => &t.name,
            ObjectDef::Table(t) => &t.name,
            ObjectDef::Subscription(s) => &s.name,
        }
    }
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        match self {
            ObjectDef::Topic(t) => t.id,
            ObjectDef::Table(t) => t.id,
            ObjectDef::Subscription(s) => s.id,
        }
    }
    /// The nodes of each of the object's Raft groups (a table has one; subscriptions none).
    pub fn placement(&self) -> &[Vec<u64>] {
        match self {
            ObjectDef::Topic(t) => &t.placement,
            ObjectDef::Table(t) => &t.placement,
            ObjectDef::Subscription(_) => &[],
        }
    }
    /// True for a topic or table replicated by gossip.
    pub fn is_gossip(&self) -> bool {
        match self {
            ObjectDef::Topic(t) => t.replication == Replication::Gossip,
            ObjectDef::Table(t) => t.replication == Replication::Gossip,
            ObjectDef::Subscription(_) => false,
        }
    }
    /// Whether some replica of the object was moved since creation.
    pub fn reassigned(&self) -> bool {
        match self {
            ObjectDef::Topic(t) => t.reassigned,
            ObjectDef::Table(t) => t.reassigned,
            ObjectDef::Subscription(_) => false,
        }
    }
    /// Replaces the placement of the object's groups and its reassigned mark.
    pub(crate) fn set_placement(&mut self, placement: Vec<Vec<u64>>, reassigned: bool) {
        match self {
            ObjectDef::Topic(t) => (t.placement, t.reassigned) = (placement, reassigned),
            ObjectDef::Table(t) => (t.placement, t.reassigned) = (placement, reassigned),
            ObjectDef::Subscription(_) => {}
        }
    }
    pub(crate) fn set_id(&mut self, id: ObjectId) {
        match self {
            ObjectDef::Topic(t) => t.id = id,
            ObjectDef::Table(t) => t.id = id,
            ObjectDef::Subscription(s) => s.id = id,
        }
    }
}

/// In-memory view of the catalog. Readers take cheap `Arc` snapshots of definitions;
/// only the committer changes it, after the change is durable.
#[derive(Debug, Default)]
pub struct Catalog {
    by_name: RwLock<BTreeMap<String, Arc<ObjectDef>>>,
}

impl Catalog {
    /// The object with this name.
    pub fn get(&self, name: &str) -> Option<Arc<ObjectDef>> {
        self.by_name.read().get(name).cloned()
    }

    /// The topic with this name.
    pub fn topic(&self, name: &str) -> Option<Arc<ObjectDef>> {
        self.get(name)
            .filter(|o| matches!(**o, ObjectDef::Topic(_)))
    }

    /// The table with this name.
    pub fn table(&self, name: &str) -> Option<Arc<ObjectDef>> {
        self.get(name)
            .filter(|o| matches!(**o, ObjectDef::Table(_)))
    }

    /// The durable subscription with this name.
    pub fn subscription(&self, name: &str) -> Option<Arc<ObjectDef>> {
        self.get(name)
            .filter(|o| matches!(**o, ObjectDef::Subscription(_)))
    }

    /// Durable subscriptions reading the topic with this id.
    pub fn subscriptions_of(&self, topic: ObjectId) -> Vec<Arc<ObjectDef>> {
        self.by_name
            .read()
            .values()
            .filter(|o| matches!(&***o, ObjectDef::Subscription(s) if s.topic == topic))
            .cloned()
            .collect()
    }

    /// Every object, ordered by name.
    pub fn list(&self) -> Vec<Arc<ObjectDef>> {
        self.by_name.read().values().cloned().collect()
    }

    /// True when `f` holds for some object.
    pub fn any(&self, f: impl Fn(&ObjectDef) -> bool) -> bool {
        self.by_name.read().values().any(|o| f(o))
    }

    /// The object with this id.
    pub fn by_id(&self, id: ObjectId) -> Option<Arc<ObjectDef>> {
        self.by_name.read().values().find(|o| o.id() == id).cloned()
    }

    pub(crate) fn insert(&self, def: ObjectDef) {
        self.by_name
            .write()
            .insert(def.name().to_owned(), Arc::new(def));
    }

    /// Replaces every definition (a snapshot was installed, or the store opened).
    pub(crate) fn replace_all(&self, defs: Vec<ObjectDef>) {
        let map = defs
            .into_iter()
            .map(|d| (d.name().to_owned(), Arc::new(d)))
            .collect();
        *self.by_name.write() = map;
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<ObjectDef>> {
        self.by_name.write().remove(name)
    }
}

/// Serde adapter that carries an [`ObjectDef`] as JSON text inside other formats: the
/// definition is an internally tagged enum, which compact binary formats (postcard, in
/// Raft entries) cannot decode. `#[serde(with = "eddy_storage::def_as_json")]`.
pub mod def_as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ObjectDef;

    /// Serializes as a JSON string.
    pub fn serialize<S: Serializer>(def: &ObjectDef, s: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_string(def).map_err(serde::ser::Error::custom)?;
        json.serialize(s)
    }

    /// Deserializes from a JSON string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectDef, D::Error> {
        let json = String::deserialize(d)?;
        serde_json::from_str(&json).map_err(serde::de::Error::custom)
    }
}
