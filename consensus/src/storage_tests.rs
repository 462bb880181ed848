//! The Raft storage with its fast paths on: openraft's storage conformance suite against
//! the RocksDB-backed log and state machine, and a model-based test of a node's writes
//! through every path they can take (around the log, applied at append, in place or
//! queued, one group or several) and across restarts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eddy_storage::raft::KeyRange;
use eddy_storage::{
    ColumnDef, ColumnType, Lane, ObjectDef, StorageConfig, Store, TableDef, Value, WriteOp,
    WriteResult, WriterId,
};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::cluster_tests::{start_solo_in, stop_solo, texts, topic_def, wait_for};
use crate::storage::{group_storage, LogStore, StateMachine};
use crate::types::{StorageError, TypeConfig};
use crate::{group_of, Cluster};

/// Keeps the directory and the store alive for one case, and shuts the store down after,
/// adding its in-place commits to the suite's count.
struct Guard {
    store: Store,
    in_place: Arc<AtomicU64>,
    _dir: TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let n = self.store.stats().commits_in_place.load(Ordering::Relaxed);
        self.in_place.fetch_add(n, Ordering::Relaxed);
        let _ = self.store.shutdown();
    }
}

struct Builder {
    in_place: Arc<AtomicU64>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError> {
        #[allow(clippy::expect_used)]
        let dir = tempfile::tempdir().expect("temp dir");
        #[allow(clippy::expect_used)]
        let store = Store::open(dir.path(), StorageConfig::default()).expect("open store");
        let group = (7u64 << 32) | 1;
        // As a node runs it: this node (1) applies at append what it alone commits. The
        // suite's memberships never make node 1 a sole voter with everything before
        // applied, so its appends and applies stay apart, as it checks them; the
        // model-based test below covers applying at append.
        let (log, sm, _) = group_storage(
            &store,
            group,
            vec![KeyRange::partition(7, 1)],
            Some(1),
            false,
        );
        let guard = Guard {
            store,
            in_place: self.in_place.clone(),
            _dir: dir,
        };
        Ok((guard, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_with_in_place_commits() {
    let in_place = Arc::new(AtomicU64::new(0));
    let builder = Builder {
        in_place: in_place.clone(),
    };
    if let Err(e) = Suite::test_all(builder) {
        panic!("openraft storage suite: {e}");
    }
    // Single-entry appends and applies are their group's writer alone: some of them
    // committed in place, so the suite checked that path too.
    assert!(
        in_place.load(Ordering::Relaxed) > 0,
        "no commit went in place during the suite"
    );
}

/// A small deterministic generator (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What the node should hold: the table's rows by key and each partition's payloads.
#[derive(Debug, Default)]
struct Model {
    rows: BTreeMap<i64, i64>,
    partitions: [Vec<String>; 2],
}

/// The node under test: a cluster of one, the table `kv (k BIGINT PRIMARY KEY, n BIGINT)`
/// and the two-partition topic `log`, all replicated through Raft.
struct Node {
    cluster: Cluster,
    table: u32,
    topic: u32,
}

impl Node {
    async fn start(dir: &std::path::Path, create: bool) -> Node {
        let cluster = start_solo_in(dir).await;
        if create {
            let columns = vec![
                ColumnDef::new("k", ColumnType::Int64, false),
                ColumnDef::new("n", ColumnType::Int64, true),
            ];
            let kv = ObjectDef::Table(TableDef::new("kv", columns, vec![0]));
            cluster.write(vec![WriteOp::Create(kv)]).await.unwrap();
            cluster
                .write(vec![WriteOp::Create(topic_def("log", 2))])
                .await
                .unwrap();
        }
        let catalog = cluster.store().catalog();
        let table = catalog.table("kv").unwrap().id();
        let topic = catalog.topic("log").unwrap().id();
        Node {
            cluster,
            table,
            topic,
        }
    }

    fn put(&self, k: i64, n: i64, on_conflict: eddy_storage::OnConflict) -> WriteOp {
        WriteOp::Insert {
            table: self.table,
            rows: vec![vec![Value::Int64(k), Value::Int64(n)]],
            on_conflict,
        }
    }

    fn append(&self, partition: u32, payload: &str) -> WriteOp {
        WriteOp::Append {
            topic: self.topic,
            partition,
            records: texts(&[payload.to_owned()]),
        }
    }

    /// Checks everything stored against the model.
    fn check(&self, model: &Model, step: &str) {
        let store = self.cluster.store();
        let def = store.catalog().table("kv").unwrap();
        let ObjectDef::Table(t) = &*def else { panic!() };
        let (rows, _) = store.scan_rows(t, None, 10_000).unwrap();
        let stored: BTreeMap<i64, i64> = rows
            .into_iter()
            .map(|r| match (&r[0], &r[1]) {
                (Value::Int64(k), Value::Int64(n)) => (*k, *n),
                other => panic!("unexpected row {other:?}"),
            })
            .collect();
        assert_eq!(stored, model.rows, "table after {step}");
        let def = store.catalog().topic("log").unwrap();
        let ObjectDef::Topic(t) = &*def else { panic!() };
        for (p, expected) in model.partitions.iter().enumerate() {
            let stored: Vec<String> = store
                .read_log(t, p as u32, 0, u64::MAX, 100_000)
                .unwrap()
                .into_iter()
                .map(|(_, r)| match &r.values[0] {
                    Value::Text(s) => s.clone(),
                    other => panic!("unexpected payload {other:?}"),
                })
                .collect();
            assert_eq!(&stored, expected, "partition {p} after {step}");
        }
    }

    fn in_place(&self) -> u64 {
        let stats = self.cluster.store().stats();
        stats.commits_in_place.load(Ordering::Relaxed)
    }
}

/// Runs `steps` random steps from `seed` against a node and the model.
async fn run_model(seed: u64, steps: usize) -> (u64, bool) {
    use eddy_storage::OnConflict;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), true).await;
    let mut model = Model::default();
    let mut rng = Rng(seed);
    let mut in_place = 0;
    let mut sealed = false;
    let me = Lane::Alone(WriterId::Session(1));
    for i in 0..steps {
        let k = rng.below(6) as i64;
        let n = i as i64;
        let step = match rng.below(20) {
            // Upsert, as a lone session.
            0..=4 => {
                node.cluster
                    .write_in(me, vec![node.put(k, n, OnConflict::Replace)])
                    .await
                    .unwrap();
                model.rows.insert(k, n);
                format!("put {k}={n}")
            }
            // Plain INSERT: a duplicate key fails and leaves nothing.
            5..=6 => {
                let done = node
                    .cluster
                    .write_in(me, vec![node.put(k, n, OnConflict::Error)])
                    .await;
                assert_eq!(done.is_ok(), !model.rows.contains_key(&k), "{done:?}");
                model.rows.entry(k).or_insert(n);
                format!("insert {k}={n}")
            }
            7..=8 => {
                let keys = vec![vec![Value::Int64(k)]];
                let op = WriteOp::Delete {
                    table: node.table,
                    keys,
                };
                node.cluster.write_in(me, vec![op]).await.unwrap();
                model.rows.remove(&k);
                format!("delete {k}")
            }
            // A conditional write, as an UPDATE makes it: the row as read (or a stale
            // copy of it), then the new row; applied only if the row is still as read.
            9..=11 => {
                let now = model.rows.get(&k).copied();
                let read = if rng.below(3) == 0 {
                    now.map_or(Some(-1), |_| None)
                } else {
                    now
                };
                let expect = WriteOp::Expect {
                    table: node.table,
                    key: vec![Value::Int64(k)],
                    row: read.map(|v| vec![Value::Int64(k), Value::Int64(v)]),
                };
                let done = node
                    .cluster
                    .write_in(me, vec![expect, node.put(k, n, OnConflict::Replace)])
                    .await;
                assert_eq!(done.is_ok(), read == now, "{done:?}");
                if read == now {
                    model.rows.insert(k, n);
                }
                format!("update {k} from {read:?} to {n}")
            }
            12..=14 => {
                let p = rng.below(2) as u32;
                let payload = format!("m{i}");
                let r = node
                    .cluster
                    .write_in(me, vec![node.append(p, &payload)])
                    .await
                    .unwrap();
                let expected = model.partitions[p as usize].len() as u64;
                assert!(
                    matches!(r[0], WriteResult::Appended { first_offset, .. } if first_offset == expected),
                    "{r:?}"
                );
                model.partitions[p as usize].push(payload);
                format!("append {p}")
            }
            // Writers at once, some alone and some queued, to distinct keys.
            15..=16 => {
                let writes = (0..4i64).map(|w| {
                    let lane = if w % 2 == 0 {
                        Lane::Alone(WriterId::Session(10 + w as u32))
                    } else {
                        Lane::Queued
                    };
                    let op = node.put(100 + w, n, OnConflict::Replace);
                    node.cluster.write_in(lane, vec![op])
                });
                for done in futures::future::join_all(writes).await {
                    done.unwrap();
                }
                for w in 0..4 {
                    model.rows.insert(100 + w, n);
                }
                "burst".to_owned()
            }
            // One statement's writes to several groups (the table's and a partition's).
            17 => {
                let payload = format!("x{i}");
                let ops = vec![
                    node.put(k, n, OnConflict::Replace),
                    node.append(1, &payload),
                ];
                node.cluster.write_in(me, ops).await.unwrap();
                model.rows.insert(k, n);
                model.partitions[1].push(payload);
                format!("two groups {k}={n}")
            }
            // From writes around the log to Raft entries applied at their append.
            18 if !sealed => {
                let mut groups = vec![group_of(node.table, 0)];
                groups.extend((0..2).map(|p| group_of(node.topic, p)));
                for g in groups {
                    // After a restart the group starts and elects itself first.
                    wait_for("the group to start", || node.cluster.raft(g).is_some()).await;
                    let raft = node.cluster.raft(g).unwrap();
                    raft.wait(Some(std::time::Duration::from_secs(10)))
                        .metrics(|m| m.current_leader == Some(1), "the node leads its group")
                        .await
                        .unwrap();
                    node.cluster.seal(g).await.unwrap();
                }
                sealed = true;
                "seal".to_owned()
            }
            _ => {
                in_place += node.in_place();
                stop_solo(node.cluster).await;
                node = Node::start(dir.path(), false).await;
                "restart".to_owned()
            }
        };
        node.check(&model, &format!("step {i} ({step}), seed {seed}"));
    }
    in_place += node.in_place();
    stop_solo(node.cluster).await;
    (in_place, sealed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writing_through_every_fast_path_and_restarting_matches_a_model() {
    let mut in_place = 0;
    let mut sealed = 0;
    for seed in [
        0x9e37_79b9_7f4a_7c15,
        0x2545_f491_4f6c_dd1d,
        0x1234_5678_9abc_def1,
    ] {
        let (n, s) = run_model(seed, 120).await;
        in_place += n;
        sealed += u32::from(s);
    }
    assert!(in_place > 0, "no write went in place");
    assert!(sealed > 0, "no run applied entries at append");
}
