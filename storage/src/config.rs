//! Storage settings (the `[storage]` section of `eddy.toml`).

use serde::{Deserialize, Serialize};

/// Settings of the storage layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Most write requests the committer folds into one RocksDB batch and one fsync.
    pub max_batch_requests: usize,
    /// Pending write requests before writers wait (backpressure on publishers).
    pub queue_depth: usize,
    /// fsync every commit before acknowledging it. Turning this off loses acknowledged
    /// writes on power loss (not on a process crash) and exists for throwaway benchmarks.
    pub sync: bool,
    /// How often the background task removes messages older than a topic's retention.
    pub retention_check_ms: u64,
    /// Bytes of each partition's newest messages kept in memory, so subscribers that keep
    /// up read them without touching RocksDB (0 = off).
    pub tail_cache_bytes: usize,
    /// The write-ahead log's total size past which the column families holding its
    /// oldest file are flushed, so that file is finished and recycled. Bounds the WAL on
    /// disk and the replay at restart.
    pub max_wal_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_batch_requests: 1024,
            queue_depth: 4096,
            sync: true,
            retention_check_ms: 1000,
            tail_cache_bytes: 1 << 20,
            max_wal_bytes: 256 << 20,
        }
    }
}

impl StorageConfig {
    /// Checks that the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_requests == 0 {
            return Err("storage.max_batch_requests must be at least 1".into());
        }
        if self.queue_depth == 0 {
            return Err("storage.queue_depth must be at least 1".into());
        }
        if self.max_wal_bytes < 1 << 20 {
            return Err("storage.max_wal_bytes must be at least 1 MiB".into());
        }
        if self.retention_check_ms == 0 {
            return Err("storage.retention_check_ms must be at least 1".into());
        }
        Ok(())
    }
}
