//! Group commit: concurrent writers share fsyncs; a lone writer commits in place, never
//! ahead of a queued request.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_distinct_offsets_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, topic("t", 1)).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        let id = t.id();
        tasks.push(tokio::spawn(async move {
            append(&store, id, 0, &[&i.to_string()]).await.0
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap());
    }
    offsets.sort();
    assert_eq!(offsets, (0..64).collect::<Vec<_>>());
    // Group commit: the 64 concurrent requests shared fsyncs. (Each commit is an fsync'd
    // batch; while one is being synced the others queue and go together in the next.)
    let stats = store.stats();
    let requests = stats
        .write_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(requests, 65, "64 appends + the CREATE");
    assert!(
        commits < requests,
        "{commits} commits for {requests} requests: no batching"
    );
    let t = store.catalog().topic("t").unwrap();
    let recs = store.read_log(as_topic(&t), 0, 0, 64, 1000).unwrap();
    let ts: Vec<_> = recs.iter().map(|(_, r)| r.ts_micros).collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "append times never go backwards in a partition"
    );
}

#[tokio::test]
async fn a_lone_writer_commits_in_place_but_never_ahead_of_a_queued_request() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let t = create(&store, topic("t", 1)).await;
    // This task made the CREATE, and with this write two requests in a row: from the
    // next one on it counts as alone.
    assert_eq!(append(&store, t.id(), 0, &["0"]).await.0, 0);
    let in_place = || store.stats().commits_in_place.load(Relaxed);
    let before = in_place();
    for i in 1..=5u64 {
        assert_eq!(append(&store, t.id(), 0, &[&i.to_string()]).await.0, i);
    }
    assert_eq!(
        in_place() - before,
        5,
        "a lone writer commits on its own thread"
    );

    // A request queued and not yet committed keeps writers off the in-place path, or
    // they would be written before it.
    store.writer.gate.queueing();
    assert_eq!(append(&store, t.id(), 0, &["6"]).await.0, 6);
    assert_eq!(in_place() - before, 5, "went through the queue");
    store.writer.gate.unqueued();
    assert_eq!(append(&store, t.id(), 0, &["7"]).await.0, 7);
    assert_eq!(in_place() - before, 6);

    // While someone else commits, a writer queues and waits its turn.
    let turn = store.writer.gate.turn.lock();
    let op = |p: &str| WriteOp::Append {
        topic: t.id(),
        partition: 0,
        records: texts(&[p]),
    };
    let first = store.submit(Commit::durable(vec![op("8")])).await.unwrap();
    let second = store.submit(Commit::durable(vec![op("9")])).await.unwrap();
    drop(turn);
    for (pending, offset) in [(first, 8), (second, 9)] {
        let results = pending.wait().await.unwrap().pop().unwrap().unwrap();
        assert!(
            matches!(results[0], WriteResult::Appended { first_offset, .. } if first_offset == offset),
            "{results:?}"
        );
    }
    assert_eq!(in_place() - before, 6);

    // Two writers taking turns: neither counts as alone.
    for i in 10..16u64 {
        let (store2, id) = (store.clone(), t.id());
        let payload = i.to_string();
        let offset = if i % 2 == 0 {
            append(&store, id, 0, &[&payload]).await.0
        } else {
            tokio::spawn(async move { append(&store2, id, 0, &[&payload]).await.0 })
                .await
                .unwrap()
        };
        assert_eq!(offset, i);
    }
    assert_eq!(in_place() - before, 6);

    let t = store.catalog().topic("t").unwrap();
    let stored: Vec<_> = store
        .read_log(as_topic(&t), 0, 0, 100, 100)
        .unwrap()
        .into_iter()
        .map(|(o, r)| (o, r.values[0].clone()))
        .collect();
    let expected: Vec<_> = (0..16u64)
        .map(|i| (i, Value::Text(i.to_string())))
        .collect();
    assert_eq!(
        stored, expected,
        "every write stored once, in the order it was made"
    );
}
