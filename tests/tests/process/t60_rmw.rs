//! Read-modify-writes through several nodes at once (`UPDATE ... SET n = n + 1`,
//! `ON CONFLICT DO UPDATE`, `DELETE ... WHERE` racing an `UPDATE`): every acknowledged
//! change is in the final state on every node. Each statement's condition is checked
//! where the Raft group orders it (docs/consistency.md, "Read-modify-writes").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use eddy_tests::cluster::TestCluster;

const KEYS: usize = 5;
/// Statements per connection.
const ROUNDS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_three_nodes_at_once_lose_none() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let setup = cluster.client(1).await?;
    setup
        .batch_execute("CREATE TABLE counters (k TEXT PRIMARY KEY, n BIGINT)")
        .await?;
    for k in 0..KEYS {
        setup
            .execute("INSERT INTO counters VALUES ($1, 0)", &[&key(k)])
            .await?;
    }

    // Six connections, two per node; each adds 1 to the rows in turn, one statement in
    // two an UPDATE, the other an upsert, and counts what was acknowledged.
    let mut tasks = Vec::new();
    for c in 0..6 {
        let client = cluster.client(c % 3 + 1).await?;
        tasks.push(tokio::spawn(async move {
            let mut acked = [0i64; KEYS];
            let mut refused = 0;
            for i in 0..ROUNDS {
                let k = (i + c) % KEYS;
                let done = if i % 2 == 0 {
                    client
                        .execute("UPDATE counters SET n = n + 1 WHERE k = $1", &[&key(k)])
                        .await
                } else {
                    client
                        .execute(
                            "INSERT INTO counters VALUES ($1, 1)
                             ON CONFLICT (k) DO UPDATE SET n = counters.n + 1",
                            &[&key(k)],
                        )
                        .await
                };
                match done {
                    Ok(1) => acked[k] += 1,
                    Ok(n) => anyhow::bail!("connection {c}: {n} rows changed, not 1"),
                    // Not applied, safe to retry: not counted.
                    Err(e) if sqlstate(&e) == Some("40001") => refused += 1,
                    Err(e) => anyhow::bail!("connection {c}: {e:?}"),
                }
            }
            anyhow::Ok((acked, refused))
        }));
    }
    let mut want = [0i64; KEYS];
    let mut refused = 0;
    for t in tasks {
        let (acked, r) = t.await??;
        for k in 0..KEYS {
            want[k] += acked[k];
        }
        refused += r;
    }
    eprintln!("acknowledged per key {want:?}, refused {refused}");
    assert!(
        want.iter().sum::<i64>() > (6 * ROUNDS / 2) as i64,
        "most increments went through: {want:?}"
    );
    for node in 1..=3 {
        let c = cluster.client(node).await?;
        let rows = c.query("SELECT k, n FROM counters ORDER BY k", &[]).await?;
        let got: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        assert_eq!(
            got,
            want.to_vec(),
            "node {node} holds every acknowledged increment"
        );
    }
    Ok(())
}

/// A row's incarnation: the key, and the generation it was inserted with.
type Incarnation = (String, i64);

/// What the clients were told.
#[derive(Default)]
struct Told {
    /// Incarnations inserted.
    inserted: BTreeSet<Incarnation>,
    /// Acknowledged increments per incarnation.
    updated: BTreeMap<Incarnation, i64>,
    /// Incarnations a DELETE said it deleted, with the `n` it deleted.
    deleted: BTreeMap<Incarnation, i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_updates_through_other_nodes_loses_no_acknowledged_change(
) -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let setup = cluster.client(1).await?;
    // `g` tells incarnations of one key apart: each insert uses a new one.
    setup
        .batch_execute("CREATE TABLE slots (k TEXT PRIMARY KEY, g BIGINT, n BIGINT)")
        .await?;
    let told = Arc::new(std::sync::Mutex::new(Told::default()));
    let generation = Arc::new(std::sync::atomic::AtomicI64::new(0));

    // Updaters on nodes 1 and 3: `n = n + 1`, attributed to the incarnation RETURNING
    // names.
    let mut tasks = Vec::new();
    for node in [1, 3] {
        let client = cluster.client(node).await?;
        let told = told.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS * 2 {
                let k = key((i + node) % KEYS);
                let rows = unless_refused(client.query(
                    "UPDATE slots SET n = n + 1 WHERE k = $1 RETURNING k, g",
                    &[&k],
                ))
                .await?;
                for r in rows {
                    *told
                        .lock()
                        .expect("lock")
                        .updated
                        .entry((r.get(0), r.get(1)))
                        .or_default() += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    // On node 2: one connection deletes the rows, returning the `n` each had, another
    // inserts a new incarnation of each key that is gone.
    {
        let client = cluster.client(2).await?;
        let told = told.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS * 2 {
                let rows = unless_refused(client.query(
                    "DELETE FROM slots WHERE k = $1 RETURNING k, g, n",
                    &[&key(i % KEYS)],
                ))
                .await?;
                for r in rows {
                    told.lock()
                        .expect("lock")
                        .deleted
                        .insert((r.get(0), r.get(1)), r.get(2));
                }
            }
            anyhow::Ok(())
        }));
    }
    {
        let client = cluster.client(2).await?;
        let told = told.clone();
        let generation = generation.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS * 2 {
                let k = key(i % KEYS);
                let g = generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let rows = unless_refused(client.query(
                    "INSERT INTO slots VALUES ($1, $2, 0) ON CONFLICT (k) DO NOTHING RETURNING k, g",
                    &[&k, &g],
                ))
                .await?;
                for r in rows {
                    told.lock().expect("lock").inserted.insert((r.get(0), r.get(1)));
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let told = told.lock().expect("lock");
    eprintln!(
        "inserted {}, deleted {}, updated {} incarnations ({} increments)",
        told.inserted.len(),
        told.deleted.len(),
        told.updated.len(),
        told.updated.values().sum::<i64>()
    );
    assert!(
        !told.deleted.is_empty() && !told.updated.is_empty(),
        "the race ran"
    );
    for node in 1..=3 {
        let c = cluster.client(node).await?;
        let rows = c.query("SELECT k, g, n FROM slots", &[]).await?;
        let present: BTreeMap<Incarnation, i64> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        for (incarnation, n) in &told.deleted {
            assert!(
                !present.contains_key(incarnation),
                "node {node}: {incarnation:?} came back after its DELETE was acknowledged"
            );
            let updated = told.updated.get(incarnation).copied().unwrap_or(0);
            assert_eq!(
                updated, *n,
                "{incarnation:?}: the DELETE removed it holding {n} increments, {updated} were acknowledged"
            );
        }
        for (incarnation, n) in &present {
            assert!(
                told.inserted.contains(incarnation),
                "{incarnation:?} was inserted"
            );
            let want = told.updated.get(incarnation).copied().unwrap_or(0);
            assert_eq!(
                *n, want,
                "node {node}: {incarnation:?} holds its acknowledged increments"
            );
        }
        for incarnation in &told.inserted {
            assert!(
                present.contains_key(incarnation) != told.deleted.contains_key(incarnation),
                "node {node}: {incarnation:?} is either deleted or present"
            );
        }
    }
    Ok(())
}

/// A statement's rows; none when it was refused with `40001` (nothing of it applied).
async fn unless_refused(
    run: impl std::future::Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>,
) -> anyhow::Result<Vec<tokio_postgres::Row>> {
    match run.await {
        Ok(rows) => Ok(rows),
        // Not applied: the caller moves on to its next statement, as if it had not run.
        Err(e) if sqlstate(&e) == Some("40001") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

fn key(k: usize) -> String {
    format!("k{k}")
}
