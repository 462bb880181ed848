//! What a Raft group asks of the store: a partition's range replaced by a snapshot, log
//! entries truncated and purged by index, a group's placement moved.

use super::*;

#[tokio::test]
async fn a_replaced_partition_range_is_what_readers_and_writers_see_next() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), StorageConfig::default()).unwrap();
    let b = Store::open(db.path(), StorageConfig::default()).unwrap();
    let ta = create(&a, topic("t", 1)).await;
    let tb = create(&b, topic("t", 1)).await;
    assert_eq!(ta.id(), tb.id());
    append(&a, ta.id(), 0, &["x", "y", "z"]).await;
    append(&b, tb.id(), 0, &["stale"]).await;
    let pb = b.partition(as_topic(&tb), 0).unwrap();
    let mut watch = pb.watch();

    // Install a's partition on b, as a snapshot would, with b's Raft marker in the batch.
    let ranges = vec![raft::KeyRange::partition(ta.id(), 0)];
    let items = a.read_ranges(&ranges).unwrap();
    assert!(!items.is_empty());
    let results = b
        .commit(Commit {
            raft: vec![
                raft::RaftWrite::Replace { ranges, items },
                raft::RaftWrite::Put {
                    group: 9,
                    slot: 3,
                    value: vec![42],
                },
            ],
            sync: true,
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(results.is_empty());
    assert_eq!(b.raft_slot(9, 3).unwrap(), Some(vec![42]));
    assert_eq!(
        pb.next_offset(),
        3,
        "memory reloaded from the replaced range"
    );
    assert!(watch.has_changed().unwrap(), "subscribers are woken");
    let read = b.read_log(as_topic(&tb), 0, 0, 10, 10).unwrap();
    let payloads: Vec<_> = read.iter().map(|(_, r)| r.values[0].clone()).collect();
    assert_eq!(
        payloads,
        ["x", "y", "z"].map(|s| Value::Text(s.into())).to_vec()
    );
    // New appends continue after the installed messages.
    let (first, _) = append(&b, tb.id(), 0, &["w"]).await;
    assert_eq!(first, 3);
    let _ = watch.borrow_and_update();
}

#[tokio::test]
async fn raft_entries_truncate_and_purge_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let put = |entries: Vec<(u64, Vec<u8>)>| Commit {
        raft: vec![raft::RaftWrite::Entries { group: 5, entries }],
        sync: true,
        ..Commit::default()
    };
    s.commit(put((1..=6).map(|i| (i, vec![i as u8])).collect()))
        .await
        .unwrap();
    // Another group's entries never show up in group 5's reads.
    s.commit(Commit {
        raft: vec![raft::RaftWrite::Entries {
            group: 6,
            entries: vec![(1, vec![99])],
        }],
        ..Commit::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.raft_entries(5, 2, 4).unwrap(),
        vec![(2, vec![2]), (3, vec![3])]
    );
    assert_eq!(s.raft_last_entry(5).unwrap(), Some((6, vec![6])));
    s.commit(Commit {
        raft: vec![
            raft::RaftWrite::TruncateFrom { group: 5, index: 5 },
            raft::RaftWrite::PurgeTo { group: 5, index: 2 },
        ],
        ..Commit::default()
    })
    .await
    .unwrap();
    let left: Vec<u64> = s
        .raft_entries(5, 0, u64::MAX)
        .unwrap()
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(left, vec![3, 4]);
    assert_eq!(s.raft_entries(6, 0, u64::MAX).unwrap(), vec![(1, vec![99])]);
}

/// `Place` moves one group and marks the object reassigned (two in one batch both
/// land); `Alter` never changes placement; both survive a restart.
#[tokio::test]
async fn place_moves_one_group_and_alter_keeps_placement() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        let mut def = topic("moved", 2);
        if let ObjectDef::Topic(t) = &mut def {
            t.placement = vec![vec![1, 2, 3], vec![2, 3, 1]];
        }
        let id = create(&store, def).await.id();
        store
            .write(vec![
                WriteOp::Place {
                    object: id,
                    partition: 0,
                    nodes: vec![1, 2, 4],
                },
                WriteOp::Place {
                    object: id,
                    partition: 1,
                    nodes: vec![2, 1, 4],
                },
            ])
            .await
            .unwrap();
        let placed = store.catalog().get("moved").unwrap();
        assert_eq!(placed.placement(), &[vec![1, 2, 4], vec![2, 1, 4]]);
        assert!(placed.reassigned());
        // An ALTER built from an older definition keeps the current placement.
        let mut stale = as_topic(&placed).clone();
        stale.placement = vec![vec![9], vec![9]];
        stale.reassigned = false;
        stale.retention_ms = Some(5);
        store
            .write(vec![WriteOp::Alter(ObjectDef::Topic(stale))])
            .await
            .unwrap();
        let bad = store
            .write(vec![WriteOp::Place {
                object: id,
                partition: 2,
                nodes: vec![1],
            }])
            .await;
        assert!(
            matches!(bad, Err(Error::InvalidValue(ref m)) if m.contains("no raft group 2")),
            "{bad:?}"
        );
        store.shutdown().unwrap();
    }
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let def = store.catalog().get("moved").unwrap();
    assert_eq!(as_topic(&def).retention_ms, Some(5));
    assert_eq!(def.placement(), &[vec![1, 2, 4], vec![2, 1, 4]]);
    assert!(def.reassigned());
}
