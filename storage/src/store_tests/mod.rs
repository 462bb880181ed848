//! Store-level tests on a real RocksDB in a temp dir.

use std::sync::Arc;

use crate::*;

mod commits;
mod groups;
mod msg_ids;
mod wal;

fn topic(name: &str, partitions: u32) -> ObjectDef {
    let columns = vec![ColumnDef::new("payload", ColumnType::Text, true)];
    ObjectDef::Topic(TopicDef {
        partitions,
        ..TopicDef::new(name, columns)
    })
}

fn table(name: &str) -> ObjectDef {
    ObjectDef::Table(TableDef {
        id: 0,
        name: name.into(),
        columns: vec![
            ColumnDef {
                name: "id".into(),
                ty: ColumnType::Int64,
                nullable: false,
            },
            ColumnDef {
                name: "name".into(),
                ty: ColumnType::Text,
                nullable: true,
            },
        ],
        primary_key: vec![0],
        replication: Replication::Gossip,
        change_retention_ms: None,
        placement: Vec::new(),
        reassigned: false,
    })
}

async fn create(store: &Store, def: ObjectDef) -> Arc<ObjectDef> {
    match store
        .write(vec![WriteOp::Create(def)])
        .await
        .unwrap()
        .remove(0)
    {
        WriteResult::Created(d) => d,
        other => panic!("unexpected {other:?}"),
    }
}

/// Messages of the one-text-column topic above.
fn texts(payloads: &[&str]) -> Records {
    let columns = [ColumnDef {
        name: "payload".into(),
        ty: ColumnType::Text,
        nullable: true,
    }];
    let mut r = Records::new();
    for p in payloads {
        r.push(&columns, None, &[Value::Text((*p).into())]).unwrap();
    }
    r
}

/// Appends text messages to one partition; returns the first offset and the append time.
async fn append(store: &Store, topic: ObjectId, partition: u32, payloads: &[&str]) -> (u64, i64) {
    append_in(Lane::Queued, store, topic, partition, payloads).await
}

/// [`append`] in `lane`.
async fn append_in(
    lane: Lane,
    store: &Store,
    topic: ObjectId,
    partition: u32,
    payloads: &[&str],
) -> (u64, i64) {
    let op = WriteOp::Append {
        topic,
        partition,
        records: texts(payloads),
    };
    let r = store.write_in(lane, vec![op]).await.unwrap();
    match r[0] {
        WriteResult::Appended {
            partition: written,
            first_offset,
            ts_micros,
        } => {
            assert_eq!(written, partition);
            (first_offset, ts_micros)
        }
        ref other => panic!("unexpected {other:?}"),
    }
}

/// Opens the store in `dir` again: the store, topic `name` and its partition 0.
fn reopen(dir: &std::path::Path, name: &str) -> (Store, TopicDef, Arc<PartitionState>) {
    let store = Store::open(dir, StorageConfig::default()).unwrap();
    let t = store.catalog().topic(name).unwrap();
    let t = as_topic(&t).clone();
    let p = store.partition(&t, 0).unwrap();
    (store, t, p)
}

fn as_topic(d: &ObjectDef) -> &TopicDef {
    match d {
        ObjectDef::Topic(t) => t,
        _ => panic!("not a topic"),
    }
}

fn as_table(d: &ObjectDef) -> &TableDef {
    match d {
        ObjectDef::Table(t) => t,
        _ => panic!("not a table"),
    }
}

#[tokio::test]
async fn append_assigns_consecutive_offsets_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        let t = create(&store, topic("events", 2)).await;
        assert_eq!(append(&store, t.id(), 1, &["a", "b"]).await.0, 0);
        assert_eq!(append(&store, t.id(), 1, &["c"]).await.0, 2);
        store.shutdown().unwrap();
    }
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = store
        .catalog()
        .topic("events")
        .expect("catalog survives reopen");
    let t = as_topic(&t);
    let p = store.partition(t, 1).unwrap();
    assert_eq!(p.next_offset(), 3);
    let rows = store.read_log(t, 1, 0, 10, 100).unwrap();
    let payloads: Vec<_> = rows
        .iter()
        .map(|(o, r)| (*o, r.values[0].clone()))
        .collect();
    assert_eq!(
        payloads,
        vec![
            (0, Value::Text("a".into())),
            (1, Value::Text("b".into())),
            (2, Value::Text("c".into()))
        ]
    );
    assert_eq!(
        store.read_log(t, 1, 1, 2, 100).unwrap().len(),
        1,
        "range end is exclusive"
    );
    assert_eq!(store.partition(t, 0).unwrap().next_offset(), 0);
    assert!(matches!(
        store.partition(t, 2),
        Err(Error::NoSuchPartition { .. })
    ));
    // A new append continues after the reopened high watermark.
    assert_eq!(append(&store, t.id, 1, &["d"]).await.0, 3);
}

#[tokio::test]
async fn duplicate_key_fails_the_whole_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, table("users")).await;
    let row = |id: i64, n: &str| vec![Value::Int64(id), Value::Text(n.into())];
    store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![row(1, "a")],
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap();
    let err = store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![row(2, "b"), row(1, "dup")],
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateKey { .. }), "{err:?}");
    let def = as_table(&t);
    assert_eq!(
        store.get_row(def, &[Value::Int64(2)]).unwrap(),
        None,
        "no partial insert"
    );
    assert_eq!(
        store.get_row(def, &[Value::Int64(1)]).unwrap(),
        Some(row(1, "a"))
    );
    // Upsert replaces; ignore keeps.
    store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![row(1, "z")],
            on_conflict: OnConflict::Replace,
        }])
        .await
        .unwrap();
    let r = store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![row(1, "q")],
            on_conflict: OnConflict::Ignore,
        }])
        .await
        .unwrap();
    assert_eq!(r[0], WriteResult::Rows(0));
    assert_eq!(
        store.get_row(def, &[Value::Int64(1)]).unwrap(),
        Some(row(1, "z"))
    );
    // Delete then re-insert in one request sees its own delete.
    let r = store
        .write(vec![
            WriteOp::Delete {
                table: t.id(),
                keys: vec![vec![Value::Int64(1)], vec![Value::Int64(99)]],
            },
            WriteOp::Insert {
                table: t.id(),
                rows: vec![row(1, "again")],
                on_conflict: OnConflict::Error,
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![WriteResult::Rows(1), WriteResult::Rows(1)]);
    let (rows, _) = store.scan_rows(def, None, 10).unwrap();
    assert_eq!(rows, vec![row(1, "again")]);
}

#[tokio::test]
async fn bad_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, table("users")).await;
    let err = store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![vec![Value::Null, Value::Text("x".into())]],
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotNull { .. }), "{err:?}");
    let err = store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows: vec![vec![Value::Text("1".into()), Value::Null]],
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidValue(_)), "{err:?}");
}

#[tokio::test]
async fn scan_rows_pages_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, table("t")).await;
    let other = create(&store, table("u")).await;
    let rows: Vec<_> = [5i64, -3, 10, 0, 7]
        .iter()
        .map(|&i| vec![Value::Int64(i), Value::Null])
        .collect();
    store
        .write(vec![WriteOp::Insert {
            table: t.id(),
            rows,
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::Insert {
            table: other.id(),
            rows: vec![vec![Value::Int64(1), Value::Null]],
            on_conflict: OnConflict::Error,
        }])
        .await
        .unwrap();
    let def = as_table(&t);
    let (first, after) = store.scan_rows(def, None, 2).unwrap();
    let (second, after2) = store.scan_rows(def, after.as_deref(), 10).unwrap();
    let ids: Vec<_> = first.iter().chain(&second).map(|r| r[0].clone()).collect();
    assert_eq!(
        ids,
        [-3i64, 0, 5, 7, 10].map(Value::Int64).to_vec(),
        "only this table, in key order"
    );
    let (none, _) = store.scan_rows(def, after2.as_deref(), 10).unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn drop_removes_data_and_name_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, topic("t", 1)).await;
    append(&store, t.id(), 0, &["x"]).await;
    let err = store
        .write(vec![WriteOp::Create(topic("t", 1))])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ObjectExists { .. }));
    store
        .write(vec![WriteOp::Drop { name: "t".into() }])
        .await
        .unwrap();
    assert!(store.catalog().get("t").is_none());
    let t2 = create(&store, topic("t", 1)).await;
    assert_ne!(t.id(), t2.id(), "ids are never reused");
    let t2 = as_topic(&t2);
    assert_eq!(store.partition(t2, 0).unwrap().next_offset(), 0);
    assert!(store.read_log(t2, 0, 0, 10, 10).unwrap().is_empty());
    let err = store
        .write(vec![WriteOp::Drop {
            name: "nope".into(),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ObjectNotFound { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_old_messages_and_offset_for_ts_searches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, topic("t", 1)).await;
    let mut stamps = Vec::new();
    for i in 0..5 {
        let (_, ts_micros) = append(&store, t.id(), 0, &[&i.to_string()]).await;
        stamps.push(ts_micros);
        // Distinct append times for the search below.
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
            <= ts_micros
        {
            std::thread::yield_now();
        }
    }
    let def = as_topic(&t);
    assert_eq!(store.offset_for_ts(def, 0, i64::MIN).unwrap(), 0);
    assert_eq!(store.offset_for_ts(def, 0, stamps[3]).unwrap(), 3);
    assert_eq!(store.offset_for_ts(def, 0, stamps[4] + 1).unwrap(), 5);
    // Retention of 1 ms relative to "now" = just after message 2 keeps 3 and 4.
    let mut def2 = def.clone();
    def2.retention_ms = Some(1);
    store
        .write(vec![WriteOp::Alter(ObjectDef::Topic(def2.clone()))])
        .await
        .unwrap();
    // enforce_retention blocks (it is run by a background thread), so call it off the runtime.
    let enforce = |store: Store, now: i64| {
        tokio::task::spawn_blocking(move || store.enforce_retention(now).unwrap())
    };
    let trimmed = enforce(store.clone(), stamps[3] + 1000).await.unwrap();
    assert_eq!(trimmed, 1);
    assert_eq!(store.partition(&def2, 0).unwrap().start_offset(), 3);
    let left: Vec<_> = store
        .read_log(&def2, 0, 0, 10, 10)
        .unwrap()
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(left, vec![3, 4]);
    assert_eq!(
        enforce(store.clone(), stamps[3] + 1000).await.unwrap(),
        0,
        "nothing more to trim"
    );
}

/// Offsets of what `read_log` and `read_recent` return for `[from, to)`.
fn offsets_read(
    store: &Store,
    t: &TopicDef,
    from: u64,
    to: u64,
    max: usize,
) -> (Vec<u64>, Option<Vec<u64>>) {
    let log = store.read_log(t, 0, from, to, max).unwrap();
    let recent = store.read_recent(t, 0, from, to, max).unwrap();
    (
        log.into_iter().map(|(o, _)| o).collect(),
        recent.map(|r| r.into_iter().map(|(o, _)| o).collect()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_inside_entries_and_trims_inside_an_entry_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(1000);
    {
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        let t = create(&store, topic("t", 1)).await;
        let t = as_topic(&t).clone();
        // One append of 150 × 1 kB: three entries (about 64 KiB each), then two small appends.
        let payloads: Vec<&str> = (0..150).map(|_| big.as_str()).collect();
        for payloads in [&payloads[..], &["a", "b", "c"], &["d"]] {
            append(&store, t.id, 0, payloads).await;
        }
        let all: Vec<u64> = (0..154).collect();
        assert_eq!(offsets_read(&store, &t, 0, 1000, 1000).0, all);
        for (from, to, max) in [
            (0, 154, 5),
            (62, 70, 100),
            (63, 130, 100),
            (100, 152, 20),
            (151, 152, 1),
            (153, 200, 10),
        ] {
            let want: Vec<u64> = (from..to.min(154)).take(max).collect();
            let (log, recent) = offsets_read(&store, &t, from, to, max);
            assert_eq!(log, want, "read_log {from}..{to} max {max}");
            assert_eq!(recent, Some(want), "read_recent {from}..{to} max {max}");
        }
        let first = &store.read_log(&t, 0, 150, 151, 1).unwrap()[0].1;
        assert_eq!(first.values, vec![Value::Text("a".into())]);
        // Trim inside the second append: 150 stays on disk but is hidden.
        store
            .write(vec![WriteOp::Trim {
                topic: t.id,
                partition: 0,
                before: 151,
            }])
            .await
            .unwrap();
        assert_eq!(store.partition(&t, 0).unwrap().start_offset(), 151);
        assert_eq!(
            offsets_read(&store, &t, 0, 1000, 1000).0,
            vec![151, 152, 153]
        );
        assert_eq!(
            offsets_read(&store, &t, 0, 1000, 1000).1,
            None,
            "below the start"
        );
        store.shutdown().unwrap();
    }
    {
        let (store, t, p) = reopen(dir.path(), "t");
        assert_eq!(
            (p.start_offset(), p.next_offset()),
            (151, 154),
            "after reopen"
        );
        assert_eq!(
            offsets_read(&store, &t, 0, 1000, 1000).0,
            vec![151, 152, 153]
        );
        // Trimming everything keeps the offsets going.
        store
            .write(vec![WriteOp::Trim {
                topic: t.id,
                partition: 0,
                before: 154,
            }])
            .await
            .unwrap();
        assert!(offsets_read(&store, &t, 0, 1000, 1000).0.is_empty());
        store.shutdown().unwrap();
    }
    let (store, t, p) = reopen(dir.path(), "t");
    assert_eq!(
        (p.start_offset(), p.next_offset()),
        (154, 154),
        "offsets are never reused"
    );
    assert_eq!(append(&store, t.id, 0, &["e"]).await.0, 154);
    assert_eq!(store.offset_for_ts(&t, 0, i64::MIN).unwrap(), 154);
}

#[test]
fn partition_for_key_is_stable_and_in_range() {
    // Fixed expectations: clients in other languages compute the same partition.
    assert_eq!(
        partition_for_key("", 4),
        (0xcbf2_9ce4_8422_2325u64 % 4) as u32
    );
    for k in ["a", "s1", "sensor-42", "ünïcode"] {
        assert!(partition_for_key(k, 7) < 7);
        assert_eq!(partition_for_key(k, 7), partition_for_key(k, 7));
    }
    assert_ne!(partition_for_key("s1", 1024), partition_for_key("s2", 1024));
}

#[tokio::test]
async fn table_changes_are_logged_with_their_kind_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, table("users")).await;
    let t = as_table(&t).clone();
    let row = |id: i64, name: &str| vec![Value::Int64(id), Value::Text(name.into())];
    let insert = |rows, on_conflict| WriteOp::Insert {
        table: t.id,
        rows,
        on_conflict,
    };
    store
        .write(vec![insert(
            vec![row(1, "ann"), row(2, "bob")],
            OnConflict::Error,
        )])
        .await
        .unwrap();
    store
        .write(vec![insert(vec![row(1, "anna")], OnConflict::Replace)])
        .await
        .unwrap();
    store
        .write(vec![insert(vec![row(2, "ignored")], OnConflict::Ignore)])
        .await
        .unwrap();
    store
        .write(vec![WriteOp::Delete {
            table: t.id,
            keys: vec![vec![Value::Int64(2)], vec![Value::Int64(9)]],
        }])
        .await
        .unwrap();
    // A failed request logs nothing.
    assert!(store
        .write(vec![insert(vec![row(1, "dup")], OnConflict::Error)])
        .await
        .is_err());
    let log = t.change_log();
    assert_eq!(store.partition(&log, 0).unwrap().next_offset(), 4);
    let changes: Vec<(u64, Option<String>, Vec<Value>)> = store
        .read_log(&log, 0, 0, 10, 10)
        .unwrap()
        .into_iter()
        .map(|(o, r)| (o, r.key, r.values))
        .collect();
    let kind = |s: &str| Some(s.to_owned());
    assert_eq!(
        changes,
        vec![
            (0, kind("insert"), row(1, "ann")),
            (1, kind("insert"), row(2, "bob")),
            (2, kind("update"), row(1, "anna")),
            (3, kind("delete"), row(2, "bob")),
        ],
        "a delete logs the row it removed; ignored conflicts and missing keys log nothing"
    );
    // Dropping the table removes its change log too.
    store
        .write(vec![WriteOp::Drop {
            name: "users".into(),
        }])
        .await
        .unwrap();
    assert!(store.read_log(&log, 0, 0, 10, 10).unwrap().is_empty());
}

#[tokio::test]
async fn subscription_state_survives_reopen_and_blocks_dropping_its_topic() {
    let dir = tempfile::tempdir().unwrap();
    let sub_def = |topic: ObjectId| {
        ObjectDef::Subscription(SubscriptionDef {
            id: 0,
            name: "s".into(),
            topic,
            filter: None,
            start: vec![5, 7],
            ack_wait_ms: 1000,
            max_deliver: 3,
            ordering_key: false,
            max_pending: 100,
            dlq: "s_dlq".into(),
        })
    };
    {
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        let t = create(&store, topic("events", 2)).await;
        let s = create(&store, sub_def(t.id())).await;
        let changes = vec![
            SubChange::Next {
                partition: 0,
                next: 12,
            },
            SubChange::Pending {
                partition: 0,
                offset: 9,
                deliveries: 1,
            },
            SubChange::Pending {
                partition: 0,
                offset: 10,
                deliveries: 2,
            },
            SubChange::Pending {
                partition: 0,
                offset: 11,
                deliveries: 1,
            },
            SubChange::Done {
                partition: 0,
                offset: 10,
            },
        ];
        store
            .write(vec![WriteOp::SubState {
                sub: s.id(),
                changes,
            }])
            .await
            .unwrap();
        let err = store
            .write(vec![WriteOp::Drop {
                name: "events".into(),
            }])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DependentObjects { .. }), "{err:?}");
        store.shutdown().unwrap();
    }
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let s = store
        .catalog()
        .subscription("s")
        .expect("subscription survives reopen");
    let ObjectDef::Subscription(def) = &*s else {
        unreachable!()
    };
    let state = store.subscription_state(def, 2).unwrap();
    assert_eq!(
        state[0],
        PartitionSubState {
            next: 12,
            pending: vec![(9, 1), (11, 1)]
        }
    );
    assert_eq!(
        state[1],
        PartitionSubState {
            next: 7,
            pending: vec![]
        },
        "no state yet: the start offset"
    );
    // Dropping the subscription and its topic together is allowed, and clears the state.
    store
        .write(vec![
            WriteOp::Drop { name: "s".into() },
            WriteOp::Drop {
                name: "events".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.subscription_state(def, 2).unwrap()[0],
        PartitionSubState {
            next: 5,
            pending: vec![]
        }
    );
    assert!(store
        .write(vec![WriteOp::SubState {
            sub: def.id,
            changes: vec![]
        }])
        .await
        .is_err());
}
