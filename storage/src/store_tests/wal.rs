//! The write-ahead log stays bounded: its oldest file is finished once the WAL passes
//! `max_wal_bytes`, even while a family that holds some of it fills its memtable slowly.

use super::*;

/// Bytes of the WAL files in `dir` (the current one and those kept for recycling).
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test]
async fn the_wal_is_bounded_by_max_wal_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        max_wal_bytes: 1 << 20,
        ..StorageConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    // The catalog's write sits in the first WAL file; its memtable never fills.
    let id = create(&store, topic("big", 1)).await.id();
    let payload = "x".repeat(10_000);
    let batch: Vec<&str> = vec![payload.as_str(); 100];
    for _ in 0..40 {
        append(&store, id, 0, &batch).await;
    }
    // 40 MB written, far below a memtable's 64 MiB: without the bound, it would all be in
    // the WAL still.
    let wal = wal_bytes(dir.path());
    assert!(wal < 16 << 20, "the WAL holds {wal} bytes");
    // Nothing is lost by the flushes: the data is there after a restart.
    store.shutdown().unwrap();
    drop(store);
    let (_store, _t, p) = reopen(dir.path(), "big");
    assert_eq!(p.next_offset(), 4000);
}
