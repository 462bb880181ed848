//! Gossip merge on real stores: whatever the order, duplication or loss of deltas, once
//! every delta has been offered in sequence (what anti-entropy does) every store holds
//! the same rows, and the rows the last writer of each key left.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::gossip::{Delta, DeltaBatch, DeltaBody, Origin};
use crate::*;

const ORIGINS: [Origin; 3] = [1, 2, 3];

fn gossip_table() -> ObjectDef {
    let columns = vec![
        ColumnDef::new("id", ColumnType::Int64, false),
        ColumnDef::new("v", ColumnType::Text, true),
    ];
    ObjectDef::Table(TableDef {
        replication: Replication::Gossip,
        ..TableDef::new("kv", columns, vec![0])
    })
}

fn gossip_topic() -> ObjectDef {
    ObjectDef::Topic(TopicDef {
        partitions: 2,
        replication: Replication::Gossip,
        ..TopicDef::new("ev", vec![ColumnDef::new("p", ColumnType::Text, true)])
    })
}

/// A temp dir that outlives its store: the store is shut down (its committer joined)
/// before the directory goes.
struct Dir {
    _dir: tempfile::TempDir,
    store: Store,
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = self.store.shutdown();
    }
}

/// A store with origin `origin` holding `def` (same object id on every store).
fn node(origin: Origin, def: ObjectDef) -> (Dir, Store, ObjectId) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    store.set_origin(origin).unwrap();
    let created = store.write_blocking(vec![WriteOp::Create(def)]).unwrap();
    let WriteResult::Created(d) = &created[0] else {
        panic!("{created:?}")
    };
    let id = d.id();
    (
        Dir {
            _dir: dir,
            store: store.clone(),
        },
        store,
        id,
    )
}

fn merge(store: &Store, object: ObjectId, origin: Origin, deltas: Vec<Delta>) -> u64 {
    let r = store
        .write_blocking(vec![WriteOp::Merge(DeltaBatch {
            object,
            origin,
            deltas,
        })])
        .unwrap();
    match r[0] {
        WriteResult::Merged { applied } => applied,
        ref other => panic!("{other:?}"),
    }
}

/// Every delta of every origin `from` holds, offered to `to` in sequence.
fn sync(from: &Store, to: &Store, object: ObjectId) {
    for origin in from.version_vector(object).unwrap().keys() {
        let deltas = from.read_deltas(object, *origin, 1, usize::MAX).unwrap();
        merge(to, object, *origin, deltas);
    }
}

fn rows(store: &Store, object: ObjectId) -> Vec<Vec<Value>> {
    let def = store.catalog().by_id(object).unwrap();
    let ObjectDef::Table(t) = &*def else { panic!() };
    store.scan_rows(t, None, usize::MAX).unwrap().0
}

fn write(store: &Store, table: ObjectId, key: i64, value: &Option<String>) {
    let op = match value {
        Some(v) => WriteOp::Insert {
            table,
            rows: vec![vec![Value::Int64(key), Value::Text(v.clone())]],
            on_conflict: OnConflict::Replace,
        },
        None => WriteOp::Delete {
            table,
            keys: vec![vec![Value::Int64(key)]],
        },
    };
    store.write_blocking(vec![op]).unwrap();
}

#[derive(Debug, Clone)]
enum Step {
    /// A write on an origin: key, new value (None deletes).
    Write(usize, i64, Option<String>),
    /// One origin's store learns everything another holds (a relay).
    Sync(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..6i64, proptest::option::of("[a-c]{1,2}")).prop_map(|(o, k, v)| Step::Write(o, k, v)),
        1 => (0..3usize, 0..3usize).prop_map(|(a, b)| Step::Sync(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Merge is commutative (any order), idempotent (duplicates) and associative
    /// (relays, grouping): stores fed the same writes in different ways agree, and hold
    /// the last writer's value of every key.
    #[test]
    fn table_merge_converges_whatever_the_order_duplication_or_loss(
        steps in proptest::collection::vec(step(), 1..30),
        picks in proptest::collection::vec((0..3usize, 0..40usize), 0..60),
    ) {
        let nodes: Vec<_> = ORIGINS.iter().map(|o| node(*o, gossip_table())).collect();
        let table = nodes[0].2;
        for s in &steps {
            match s {
                Step::Write(o, k, v) => write(&nodes[*o].1, table, *k, v),
                Step::Sync(a, b) if a != b => sync(&nodes[*a].1, &nodes[*b].1, table),
                Step::Sync(..) => {}
            }
        }
        let own: BTreeMap<Origin, Vec<Delta>> = nodes
            .iter()
            .map(|(_, s, _)| (s.origin(), s.read_deltas(table, s.origin(), 1, usize::MAX).unwrap()))
            .collect();

        // In order, once each.
        let (_d1, ordered, _) = node(9, gossip_table());
        for (o, ds) in &own {
            prop_assert_eq!(merge(&ordered, table, *o, ds.clone()), ds.len() as u64);
        }
        // Shuffled single deltas with duplicates and losses, then anti-entropy.
        let (_d2, messy, _) = node(8, gossip_table());
        for (o, i) in &picks {
            let ds = &own[&ORIGINS[*o]];
            if let Some(d) = ds.get(i % ds.len().max(1)) {
                merge(&messy, table, ORIGINS[*o], vec![d.clone()]);
            }
        }
        for (o, ds) in &own {
            merge(&messy, table, *o, ds.clone());
        }
        // Every origin after a full exchange.
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    sync(&nodes[a].1, &nodes[b].1, table);
                }
            }
        }

        // The model: per key, the write with the greatest (hlc, origin).
        let mut last: BTreeMap<Vec<u8>, ((u64, Origin), Option<Vec<u8>>)> = BTreeMap::new();
        for (o, ds) in &own {
            for d in ds {
                let DeltaBody::Rows(rs) = &d.body else { panic!() };
                for r in rs {
                    let stamp = (d.hlc, *o);
                    if last.get(&r.key).is_none_or(|(s, _)| *s < stamp) {
                        last.insert(r.key.clone(), (stamp, r.row.as_ref().map(|b| b.to_vec())));
                    }
                }
            }
        }
        let types = [ColumnType::Int64, ColumnType::Text];
        let want: Vec<Vec<Value>> = last
            .values()
            .filter_map(|(_, row)| row.as_ref().map(|r| decode_row(&types, r).unwrap()))
            .collect();
        let vv = ordered.version_vector(table).unwrap();
        prop_assert_eq!(&rows(&ordered, table), &want);
        prop_assert_eq!(&rows(&messy, table), &want);
        prop_assert_eq!(&messy.version_vector(table).unwrap(), &vv);
        prop_assert_eq!(&messy.table_state(table).unwrap(), &ordered.table_state(table).unwrap());
        for (_, s, _) in &nodes {
            prop_assert_eq!(&rows(s, table), &want);
            prop_assert_eq!(&s.version_vector(table).unwrap(), &vv);
        }
    }

    /// Topic messages: every one applied exactly once, each origin's in its order.
    #[test]
    fn topic_deltas_apply_once_in_origin_order(
        counts in proptest::collection::vec(1..6usize, 2),
        picks in proptest::collection::vec((0..2usize, 0..10usize), 0..30),
    ) {
        let nodes: Vec<_> = [1u64, 2].iter().map(|o| node(*o, gossip_topic())).collect();
        let topic = nodes[0].2;
        let columns = [ColumnDef::new("p", ColumnType::Text, true)];
        for (i, (_, s, _)) in nodes.iter().enumerate() {
            for n in 0..counts[i] {
                let mut r = Records::new();
                r.push(&columns, None, &[Value::Text(format!("{}-{n}", s.origin()))]).unwrap();
                s.write_blocking(vec![WriteOp::Append { topic, partition: (n % 2) as u32, records: r }]).unwrap();
            }
        }
        let (_d, recv, _) = node(7, gossip_topic());
        for (o, i) in &picks {
            let s = &nodes[*o].1;
            let ds = s.read_deltas(topic, s.origin(), 1, usize::MAX).unwrap();
            let d = ds[i % ds.len()].clone();
            merge(&recv, topic, s.origin(), vec![d]);
        }
        for (_, s, _) in &nodes {
            sync(s, &recv, topic);
        }
        let def = recv.catalog().by_id(topic).unwrap();
        let ObjectDef::Topic(t) = &*def else { panic!() };
        let mut got: Vec<String> = Vec::new();
        for p in 0..2 {
            for (_, rec) in recv.read_log(t, p, 0, u64::MAX, usize::MAX).unwrap() {
                let Value::Text(s) = &rec.values[0] else { panic!() };
                got.push(s.clone());
            }
        }
        prop_assert_eq!(got.len(), counts[0] + counts[1], "{:?}", got);
        for (i, o) in [1u64, 2].iter().enumerate() {
            for p in 0..2u32 {
                let mine: Vec<usize> = {
                    let mut v = Vec::new();
                    for (_, rec) in recv.read_log(t, p, 0, u64::MAX, usize::MAX).unwrap() {
                        let Value::Text(s) = &rec.values[0] else { panic!() };
                        if let Some(n) = s.strip_prefix(&format!("{o}-")) {
                            v.push(n.parse().unwrap());
                        }
                    }
                    v
                };
                let want: Vec<usize> = (0..counts[i]).filter(|n| n % 2 == p as usize).collect();
                prop_assert_eq!(mine, want, "origin {} partition {}", o, p);
            }
        }
    }
}

#[test]
fn a_delete_of_a_row_not_here_yet_still_wins_over_the_older_insert() {
    let (_a, a, table) = node(1, gossip_table());
    let (_b, b, _) = node(2, gossip_table());
    write(&a, table, 5, &Some("old".into()));
    // b deletes key 5 before it has heard of it: a tombstone, which must win.
    write(&b, table, 5, &None);
    sync(&a, &b, table);
    sync(&b, &a, table);
    assert!(rows(&a, table).is_empty());
    assert!(rows(&b, table).is_empty());
    let state = a.table_state(table).unwrap();
    assert_eq!(state.len(), 1);
    assert!(state[0].1.tombstone && state[0].1.origin == 2);
}

#[test]
fn merge_skips_duplicates_stops_at_a_gap_and_refuses_non_gossip_objects() {
    let (_a, a, table) = node(1, gossip_table());
    for k in 0..3 {
        write(&a, table, k, &Some("x".into()));
    }
    let ds = a.read_deltas(table, 1, 1, usize::MAX).unwrap();
    assert_eq!(ds.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let (_b, b, _) = node(2, gossip_table());
    assert_eq!(merge(&b, table, 1, vec![ds[0].clone(), ds[2].clone()]), 1);
    assert_eq!(rows(&b, table).len(), 1, "the delta after the gap waits");
    assert_eq!(merge(&b, table, 1, ds.clone()), 3);
    assert_eq!(merge(&b, table, 1, ds.clone()), 3, "nothing applies twice");
    assert_eq!(rows(&b, table).len(), 3);
    // The change log saw each insert once.
    let def = b.catalog().by_id(table).unwrap();
    let ObjectDef::Table(t) = &*def else { panic!() };
    let log = b.read_log(&t.change_log(), 0, 0, u64::MAX, 100).unwrap();
    assert_eq!(log.len(), 3);

    // A raft table refuses deltas.
    let ObjectDef::Table(mut raft) = gossip_table() else {
        panic!()
    };
    raft.name = "r".into();
    raft.replication = Replication::Raft;
    let created = b
        .write_blocking(vec![WriteOp::Create(ObjectDef::Table(raft))])
        .unwrap();
    let WriteResult::Created(r) = &created[0] else {
        panic!()
    };
    let err = b
        .write_blocking(vec![WriteOp::Merge(DeltaBatch {
            object: r.id(),
            origin: 1,
            deltas: ds,
        })])
        .unwrap_err();
    assert!(
        err.to_string().contains("not replicated by gossip"),
        "{err}"
    );
}

#[test]
fn gossip_state_survives_a_restart_and_goes_with_drop() {
    let dir = tempfile::tempdir().unwrap();
    let table;
    {
        let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
        store.set_origin(4).unwrap();
        let created = store
            .write_blocking(vec![WriteOp::Create(gossip_table())])
            .unwrap();
        let WriteResult::Created(d) = &created[0] else {
            panic!()
        };
        table = d.id();
        write(&store, table, 1, &Some("a".into()));
        write(&store, table, 1, &None);
        store.shutdown().unwrap();
    }
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    store.set_origin(4).unwrap();
    assert_eq!(store.version_vector(table).unwrap()[&4].applied, 2);
    let last = store.read_deltas(table, 4, 2, 0).unwrap()[0].hlc;
    assert!(
        store.hlc().last() >= last,
        "the clock restarts past the origin's newest write"
    );
    write(&store, table, 2, &Some("b".into()));
    assert_eq!(store.read_deltas(table, 4, 1, usize::MAX).unwrap().len(), 3);
    store
        .write_blocking(vec![WriteOp::Drop { name: "kv".into() }])
        .unwrap();
    assert!(store.version_vector(table).unwrap().is_empty());
    assert!(store
        .read_deltas(table, 4, 1, usize::MAX)
        .unwrap()
        .is_empty());
    assert!(store.table_state(table).unwrap().is_empty());
}

#[test]
fn a_node_behind_the_horizon_resyncs_without_bringing_deleted_rows_back() {
    let (_a, a, table) = node(1, gossip_table());
    let (_b, b, _) = node(2, gossip_table());
    write(&a, table, 1, &Some("x".into()));
    write(&a, table, 2, &Some("y".into()));
    sync(&a, &b, table);
    // b is away: a deletes 1 and writes 3, then collects everything before now.
    write(&a, table, 1, &None);
    write(&a, table, 3, &Some("z".into()));
    write(&b, table, 4, &Some("made while away".into()));
    let now = a.hlc().now();
    a.write_blocking(vec![WriteOp::Collect {
        object: table,
        before: now,
    }])
    .unwrap();
    let vv = a.version_vector(table).unwrap();
    assert_eq!(vv[&1].applied, 4);
    assert_eq!(vv[&1].floor, 5, "every delta of origin 1 is collected");
    assert!(a.read_deltas(table, 1, 0, usize::MAX).unwrap().is_empty());
    assert!(
        a.table_state(table).unwrap().iter().all(|s| !s.1.tombstone),
        "the tombstone is collected"
    );
    // Offered in sequence, b cannot catch up from a any more: a's deltas are gone.
    sync(&a, &b, table);
    assert_eq!(b.version_vector(table).unwrap()[&1].applied, 2);

    let vv: Vec<_> = a.version_vector(table).unwrap().into_iter().collect();
    let state = a.table_state(table).unwrap();
    let r = b
        .write_blocking(vec![WriteOp::Resync {
            table,
            rows: state,
            vv,
        }])
        .unwrap();
    assert_eq!(r[0], WriteResult::Rows(1), "row 1 removed");
    let text = |k: i64, v: &str| vec![Value::Int64(k), Value::Text(v.into())];
    let want = vec![text(2, "y"), text(3, "z"), text(4, "made while away")];
    assert_eq!(
        rows(&b, table),
        want,
        "deleted row 1 stays deleted, b's own write stays"
    );
    let bvv = b.version_vector(table).unwrap();
    assert_eq!((bvv[&1].applied, bvv[&1].floor), (4, 5));
    // b's own write still reaches a by its deltas.
    sync(&b, &a, table);
    assert_eq!(rows(&a, table), want);
}

#[test]
fn a_resync_from_a_stale_peer_does_not_bring_back_rows_deleted_here() {
    let (_a, a, table) = node(1, gossip_table());
    let (_b, b, _) = node(2, gossip_table());
    write(&a, table, 1, &Some("x".into()));
    sync(&a, &b, table);
    write(&a, table, 1, &None);
    let now = a.hlc().now();
    a.write_blocking(vec![WriteOp::Collect {
        object: table,
        before: now,
    }])
    .unwrap();
    // b still holds row 1 (origin 1, seq 1), which a has applied and then deleted.
    let vv: Vec<_> = b.version_vector(table).unwrap().into_iter().collect();
    let state = b.table_state(table).unwrap();
    a.write_blocking(vec![WriteOp::Resync {
        table,
        rows: state,
        vv,
    }])
    .unwrap();
    assert!(rows(&a, table).is_empty(), "row 1 stays deleted");
}

#[test]
fn a_topic_origin_can_be_skipped_past_collected_deltas() {
    let (_a, a, topic) = node(1, gossip_topic());
    let columns = [ColumnDef::new("p", ColumnType::Text, true)];
    for i in 0..3 {
        let mut r = Records::new();
        r.push(&columns, None, &[Value::Text(format!("m{i}"))])
            .unwrap();
        a.write_blocking(vec![WriteOp::Append {
            topic,
            partition: 0,
            records: r,
        }])
        .unwrap();
    }
    let (_b, b, _) = node(2, gossip_topic());
    let last = a.read_deltas(topic, 1, 3, usize::MAX).unwrap();
    b.write_blocking(vec![WriteOp::Skip {
        object: topic,
        origin: 1,
        to: 2,
    }])
    .unwrap();
    assert_eq!(
        merge(&b, topic, 1, last),
        3,
        "the delta after the skip applies"
    );
    let vv = b.version_vector(topic).unwrap();
    assert_eq!((vv[&1].applied, vv[&1].floor), (3, 3));
}
