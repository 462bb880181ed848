//! Every acknowledged write survives kill -9 and a restart on the same data directory.

use std::sync::Arc;

use eddy_tests::{connect, ProcessNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut node = ProcessNode::start(&data, &[])?;
    let addr = node.addr();
    let c = connect(addr).await?;
    c.batch_execute("CREATE TOPIC t (n BIGINT) WITH (partitions = 4); CREATE TABLE kv (id BIGINT PRIMARY KEY, v TEXT)").await?;
    drop(c);

    // Keys whose INSERT was acknowledged.
    // Eight concurrent writers (so group commit batches them) insert until killed.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut writers = Vec::new();
    for w in 0..8i64 {
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let Ok(c) = connect(addr).await else { return };
            for i in 0.. {
                let n = w * 1_000_000 + i;
                let ok = if i % 2 == 0 {
                    c.execute("INSERT INTO t (n) VALUES ($1)", &[&n])
                        .await
                        .is_ok()
                } else {
                    c.execute("INSERT INTO kv (id, v) VALUES ($1, 'x')", &[&n])
                        .await
                        .is_ok()
                };
                if !ok {
                    return;
                }
                acked.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            }
        }));
    }
    // Let a few hundred writes be acknowledged, then kill -9 mid-stream.
    eddy_tests::wait_for(
        "acknowledged writes",
        std::time::Duration::from_secs(60),
        || {
            let n = acked.lock().map(|v| v.len()).unwrap_or(0);
            async move { (n >= 300).then_some(()) }
        },
    )
    .await?;
    node.kill9()?;
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<i64> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(acked.len() >= 300);

    let node = ProcessNode::start(&data, &[])?;
    let c = connect(node.addr()).await?;
    let mut topic: Vec<i64> = c
        .query("SELECT n FROM t", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut table: Vec<i64> = c
        .query("SELECT id FROM kv", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    topic.sort();
    table.sort();
    for n in &acked {
        let found = if (n % 1_000_000) % 2 == 0 {
            topic.binary_search(n).is_ok()
        } else {
            table.binary_search(n).is_ok()
        };
        assert!(found, "acknowledged write {n} lost after kill -9");
    }
    // Offsets stay dense per partition after recovery: nothing half-written.
    for p in 0..4i32 {
        let rows = c
            .query(
                "SELECT _offset FROM t WHERE _partition = $1 ORDER BY _offset",
                &[&p],
            )
            .await?;
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.get::<_, i64>(0), i as i64, "partition {p}");
        }
    }
    // New writes continue after the recovered offsets.
    let r = c
        .query_one(
            "INSERT INTO t (n) VALUES (-1) RETURNING _partition, _offset",
            &[],
        )
        .await?;
    let (p, o): (i32, i64) = (r.get(0), r.get(1));
    let max: i64 = c
        .query_one("SELECT max(_offset) FROM t WHERE _partition = $1", &[&p])
        .await?
        .get(0);
    assert_eq!(o, max);
    eprintln!(
        "{} acknowledged writes, all found after kill -9",
        acked.len()
    );
    Ok(())
}
