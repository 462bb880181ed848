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
    let me = Lane::Alone(WriterId::Session(1));
    // Two requests in a row from this writer: from the next one on it counts as alone.
    assert_eq!(append_in(me, &store, t.id(), 0, &["0"]).await.0, 0);
    assert_eq!(append_in(me, &store, t.id(), 0, &["1"]).await.0, 1);
    let in_place = || store.stats().commits_in_place.load(Relaxed);
    let before = in_place();
    for i in 2..=6u64 {
        assert_eq!(
            append_in(me, &store, t.id(), 0, &[&i.to_string()]).await.0,
            i
        );
    }
    assert_eq!(
        in_place() - before,
        5,
        "a lone writer commits on its own thread"
    );

    // The same writer saying more follow (queued) never commits in place, and breaks
    // the run.
    for i in 7..=9u64 {
        assert_eq!(
            append_in(Lane::Queued, &store, t.id(), 0, &[&i.to_string()])
                .await
                .0,
            i
        );
    }
    assert_eq!(
        in_place() - before,
        5,
        "queued writes went through the queue"
    );
    assert_eq!(append_in(me, &store, t.id(), 0, &["10"]).await.0, 10);
    assert_eq!(append_in(me, &store, t.id(), 0, &["11"]).await.0, 11);
    assert_eq!(
        in_place() - before,
        5,
        "a new run starts after a queued write"
    );
    assert_eq!(append_in(me, &store, t.id(), 0, &["12"]).await.0, 12);
    assert_eq!(in_place() - before, 6);

    // A request queued and not yet committed keeps writers off the in-place path, or
    // they would be written before it.
    store.writer.gate.queueing();
    assert_eq!(append_in(me, &store, t.id(), 0, &["13"]).await.0, 13);
    assert_eq!(in_place() - before, 6, "went through the queue");
    store.writer.gate.unqueued();
    assert_eq!(append_in(me, &store, t.id(), 0, &["14"]).await.0, 14);
    assert_eq!(in_place() - before, 7);

    // While someone else commits, a writer queues and waits its turn.
    let turn = store.writer.gate.turn.lock();
    let op = |p: &str| WriteOp::Append {
        topic: t.id(),
        partition: 0,
        records: texts(&[p]),
    };
    let first = store
        .submit(Commit::durable(vec![op("15")]).in_lane(me))
        .await
        .unwrap();
    let second = store
        .submit(Commit::durable(vec![op("16")]).in_lane(me))
        .await
        .unwrap();
    drop(turn);
    for (pending, offset) in [(first, 15), (second, 16)] {
        let results = pending.wait().await.unwrap().pop().unwrap().unwrap();
        assert!(
            matches!(results[0], WriteResult::Appended { first_offset, .. } if first_offset == offset),
            "{results:?}"
        );
    }
    assert_eq!(in_place() - before, 7);

    // Two writers taking turns, on the same task: neither counts as alone.
    let other = Lane::Alone(WriterId::Session(2));
    for i in 17..23u64 {
        let lane = if i % 2 == 0 { me } else { other };
        assert_eq!(
            append_in(lane, &store, t.id(), 0, &[&i.to_string()])
                .await
                .0,
            i
        );
    }
    assert_eq!(in_place() - before, 7);

    let t = store.catalog().topic("t").unwrap();
    let stored: Vec<_> = store
        .read_log(as_topic(&t), 0, 0, 100, 100)
        .unwrap()
        .into_iter()
        .map(|(o, r)| (o, r.values[0].clone()))
        .collect();
    let expected: Vec<_> = (0..23u64)
        .map(|i| (i, Value::Text(i.to_string())))
        .collect();
    assert_eq!(
        stored, expected,
        "every write stored once, in the order it was made"
    );
}
