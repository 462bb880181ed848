//! eddy-storage: everything eddy keeps on disk, in one RocksDB database per node.
//!
//! No networking, no SQL: the layers above (query, consensus, broker) call into this crate.
//!
//! # Layout
//! - [`Store`] — opens the database, holds the [`Catalog`], serves reads
//!   ([`Store::read_log`], [`Store::get_row`], [`Store::scan_rows`], [`Store::offset_for_ts`]).
//! - [`WriteOp`] / [`Store::write`] — the only way to change data. One committer thread
//!   group-commits concurrent writes (one WriteBatch, one fsync) and decides offsets,
//!   append times and duplicate keys; replication will feed the same ops.
//! - [`keys`] — order-preserving key encodings; [`layout`] — which key goes where.
//! - [`Value`], [`ColumnType`], [`encode_row`]/[`decode_row`] — the row codec.
//!
//! Inside the crate, modules import one way: none uses a module on a later line.
//! ```text
//!  error, config, keys, value, catalog, layout, raft, hlc   encodings and plain types
//!  partition, inner          what memory holds; the store's inner handle, shared by:
//!  gossip                    gossip's stored state and its reads
//!  commit                    the committer: every write
//!  store                     Store: opens the database, submits commits, serves reads
//! ```
//!
//! # Example
//! ```
//! # async fn demo() -> eddy_storage::Result<()> {
//! use eddy_storage::*;
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StorageConfig::default())?;
//! let def = ObjectDef::Topic(TopicDef::new(
//!     "events",
//!     vec![ColumnDef::new("payload", ColumnType::Text, true)],
//! ));
//! let created = store.write(vec![WriteOp::Create(def)]).await?;
//! let WriteResult::Created(obj) = &created[0] else { unreachable!() };
//! let ObjectDef::Topic(topic) = &**obj else { unreachable!() };
//! let mut records = Records::new();
//! records.push(&topic.columns, None, &[Value::Text("hi".into())])?;
//! store.write(vec![WriteOp::Append { topic: topic.id, partition: 0, records }]).await?;
//! # Ok(()) }
//! ```

mod catalog;
mod commit;
mod config;
mod error;
pub mod gossip;
pub mod hlc;
mod inner;
pub mod keys;
pub mod layout;
mod partition;
pub mod raft;
mod store;
mod value;

pub use catalog::{
    def_as_json, Catalog, ColumnDef, ObjectDef, ObjectId, Replication, SubscriptionDef, TableDef,
    TopicDef, DEFAULT_CHANGE_RETENTION_MS, DEFAULT_DEDUP_WINDOW_MS,
};
pub use commit::{
    now_micros, Commit, Lane, OnConflict, SubChange, UnitResults, WriteOp, WriteResult, WriterId,
};
pub use config::StorageConfig;
pub use error::{Error, ErrorClass, Result};
pub use inner::StoreStats;
pub use layout::{LogRecord, Records};
pub use partition::PartitionState;
pub use store::{PartitionSubState, Pending, RangeItem, Store, WeakStore};
pub use value::{decode_row, encode_row, ColumnType, Value};

/// The partition a message key maps to: FNV-1a (64-bit) of the key's UTF-8 bytes modulo the
/// partition count. Stable across versions and platforms, so clients can compute it too.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod gossip_tests;
#[cfg(test)]
mod store_tests;
