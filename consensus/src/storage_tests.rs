//! openraft's storage conformance suite against the RocksDB-backed log and state machine.

use eddy_storage::raft::KeyRange;
use eddy_storage::{StorageConfig, Store};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::storage::{group_storage, LogStore, StateMachine};
use crate::types::{StorageError, TypeConfig};

/// Keeps the directory and the store alive for one case, and shuts the store down after.
struct Guard {
    store: Store,
    _dir: TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.store.shutdown();
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError> {
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("temp dir");
        #[allow(clippy::expect_used)]
        let store = Store::open(dir.path(), StorageConfig::default()).expect("open store");
        let group = (7u64 << 32) | 1;
        // The suite checks append and apply apart: no applying at append.
        let (log, sm, _) =
            group_storage(&store, group, vec![KeyRange::partition(7, 1)], None, false);
        Ok((Guard { store, _dir: dir }, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite: {e}");
    }
}
