//! Message ids: taken once within the window, forgotten after, and looked up cheaply.

use super::*;

/// Messages with these ids (`None`: none) appended to partition 0 in one op at append
/// time `at` (µs); each one's offset and append time as answered.
async fn append_ids(
    store: &Store,
    topic: ObjectId,
    messages: &[(Option<&str>, &str)],
    at: i64,
) -> Vec<(u64, i64)> {
    let payloads: Vec<&str> = messages.iter().map(|(_, p)| *p).collect();
    let mut r = store
        .commit(Commit {
            units: vec![vec![WriteOp::AppendOnce {
                topic,
                partition: 0,
                ids: messages.iter().map(|(id, _)| id.map(Into::into)).collect(),
                records: texts(&payloads),
            }]],
            at: Some(at),
            sync: true,
            ..Commit::default()
        })
        .await
        .unwrap();
    match r.remove(0).unwrap().remove(0) {
        WriteResult::Positions { partition, each } => {
            assert_eq!(partition, 0);
            each
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// One message with id `id` (see [`append_ids`]).
async fn append_once(
    store: &Store,
    topic: ObjectId,
    id: &str,
    payload: &str,
    at: i64,
) -> (u64, i64) {
    append_ids(store, topic, &[(Some(id), payload)], at).await[0]
}

fn has_key(store: &Store, key: &[u8]) -> bool {
    let cf = store.inner.cf(crate::layout::CF_LOG);
    store.inner.db.get_cf(cf, key).unwrap().is_some()
}

/// Creates one-partition topic `name` that remembers message ids for one second.
async fn topic_with_ids(store: &Store, name: &str) -> ObjectId {
    let mut def = topic(name, 1);
    if let ObjectDef::Topic(t) = &mut def {
        t.dedup_window_ms = 1000;
    }
    create(store, def).await.id()
}

/// Partition 0's messages, each as its values' debug form.
fn logged(store: &Store, t: &TopicDef) -> Vec<String> {
    store
        .read_log(t, 0, 0, u64::MAX, 100)
        .unwrap()
        .into_iter()
        .map(|(_, r)| format!("{:?}", r.values))
        .collect()
}

/// A new store in a temp dir, with topic `name` as [`topic_with_ids`] makes it.
async fn store_with_ids(name: &str) -> (tempfile::TempDir, Store, ObjectId) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let id = topic_with_ids(&store, name).await;
    (dir, store, id)
}

#[tokio::test]
async fn a_message_id_is_stored_once_within_the_window_and_forgotten_after() {
    let (dir, store, id) = store_with_ids("ids").await;
    // Ahead of the clock, so that the plain append below takes the log's newest time.
    let t0 = now_micros() + 3_600_000_000;
    assert_eq!(append_once(&store, id, "m1", "first", t0).await, (0, t0));
    // The same id again within the window: the first copy's answer, nothing stored.
    assert_eq!(
        append_once(&store, id, "m1", "again", t0 + 500_000).await,
        (0, t0)
    );
    assert_eq!(
        append_once(&store, id, "m2", "second", t0 + 600_000)
            .await
            .0,
        1
    );
    let t = as_topic(&store.catalog().topic("ids").unwrap()).clone();
    let read = logged(&store, &t);
    assert_eq!(read, [r#"[Text("first")]"#, r#"[Text("second")]"#]);
    assert_eq!(store.partition(&t, 0).unwrap().next_offset(), 2);
    // A plain append between them is unaffected.
    assert_eq!(append(&store, id, 0, &["plain"]).await.0, 2);
    // Past m1's window it is a new message; m1's first take and m2 fell out of the
    // window, so that append forgets them (its own m1 is kept).
    let later = t0 + 1_700_000;
    assert_eq!(
        append_once(&store, id, "m1", "third", later).await,
        (3, later)
    );
    // In one op: a repeat of an id earlier in the op and one taken before are left out;
    // the rest, with or without ids, get consecutive offsets.
    let at = later + 1000;
    let each = append_ids(
        &store,
        id,
        &[
            (Some("m3"), "fifth"),
            (None, "sixth"),
            (Some("m3"), "fifth again"),
            (Some("m1"), "third again"),
            (Some("m4"), "seventh"),
        ],
        at,
    )
    .await;
    assert_eq!(each, [(4, at), (5, at), (4, at), (3, later), (6, at)]);
    let key = |id: &str| crate::layout::msg_id_key(t.id, 0, id.as_bytes());
    let expiry = |ts: i64, id: &str| crate::layout::msg_id_expiry_key(t.id, 0, ts, id.as_bytes());
    assert!(has_key(&store, &key("m1")), "m1's new take is remembered");
    assert!(
        !has_key(&store, &expiry(t0, "m1")),
        "m1's first take is forgotten"
    );
    assert!(!has_key(&store, &key("m2")), "m2 is forgotten");
    assert!(!has_key(&store, &expiry(t0 + 600_000, "m2")));
    assert!(has_key(&store, &expiry(later, "m1")));
    // Both kinds of key are inside the partition's snapshot range, and no other's.
    for k in [key("m1"), expiry(later, "m1")] {
        assert!(crate::raft::KeyRange::partition(t.id, 0).contains(&k));
        assert!(!crate::raft::KeyRange::partition(t.id, 1).contains(&k));
        assert!(!crate::raft::KeyRange::partition(t.id + 1, 0).contains(&k));
    }
    // Ids survive a restart, and scans still see messages only.
    store.shutdown().unwrap();
    drop(store);
    let (store, t, p) = reopen(dir.path(), "ids");
    assert_eq!(p.next_offset(), 7);
    assert_eq!(
        append_once(&store, t.id, "m4", "again", at + 1).await,
        (6, at)
    );
    let read = logged(&store, &t);
    assert_eq!(
        read,
        ["first", "second", "plain", "third", "fifth", "sixth", "seventh"]
            .map(|p| format!("[Text({p:?})]"))
    );
}

fn with_ids(ids: &[String]) -> Vec<(Option<&str>, &str)> {
    ids.iter().map(|i| (Some(i.as_str()), "x")).collect()
}

/// Forgetting keeps up with appends of many ids: an op forgets about twice as many old
/// ids as it takes, so one window's ids are gone after the next window's first op.
#[tokio::test]
async fn large_appends_forget_as_many_old_ids_as_they_take() {
    let (_dir, store, id) = store_with_ids("bulk").await;
    let t0 = now_micros() + 3_600_000_000;
    let names =
        |from: usize| -> Vec<String> { (from..from + 300).map(|i| format!("b-{i}")).collect() };
    let first = names(0);
    assert_eq!(
        append_ids(&store, id, &with_ids(&first), t0).await.len(),
        300
    );
    let second = names(300);
    let each = append_ids(&store, id, &with_ids(&second), t0 + 2_000_000).await;
    assert_eq!(each[0].0, 300);
    let remembered = |ids: &[String]| {
        ids.iter()
            .filter(|i| has_key(&store, &crate::layout::msg_id_key(id, 0, i.as_bytes())))
            .count()
    };
    assert_eq!(
        remembered(&first),
        0,
        "the first window's ids are forgotten"
    );
    assert_eq!(remembered(&second), 300);
}

/// The log's SST files carry a whole-key bloom filter, so an id lookup that misses (every
/// new id) does not read a file's blocks once the ids are flushed out of the memtable.
#[tokio::test]
async fn flushed_ids_are_covered_by_a_bloom_filter() {
    let (_dir, store, id) = store_with_ids("flushed").await;
    let ids: Vec<String> = (0..200).map(|i| format!("f-{i}")).collect();
    let at = now_micros();
    append_ids(&store, id, &with_ids(&ids), at).await;
    let cf = store.inner.cf(crate::layout::CF_LOG);
    store.inner.db.flush_cf(cf).unwrap();
    let props = store
        .inner
        .db
        .property_value_cf(cf, "rocksdb.aggregated-table-properties")
        .unwrap()
        .unwrap();
    let filter_bytes: u64 = props
        .split(';')
        .find_map(|p| p.trim().strip_prefix("filter block size="))
        .unwrap_or_else(|| panic!("no filter size in {props}"))
        .parse()
        .unwrap();
    assert!(
        filter_bytes > 0,
        "no bloom filter in the log's SST: {props}"
    );
    // Flushed ids are still found, and still repeat.
    assert!(has_key(
        &store,
        &crate::layout::msg_id_key(id, 0, ids[7].as_bytes())
    ));
    assert_eq!(
        append_once(&store, id, "f-7", "again", at + 1).await,
        (7, at)
    );
}
