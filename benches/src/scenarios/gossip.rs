//! `gossip-converge`: how long a gossip table takes to hold the same rows on every node
//! once a partition heals, and how many delta bytes gossip sends per update.
//!
//! ```text
//!   cut node N off ──> wait until every node's eddy.nodes shows the cut
//!        │
//!        ▼
//!   updates on every node at once (upserts and deletes of a small key space: the
//!   two sides conflict), each acknowledged after its node's fsync; a random pause
//!        │
//!        ▼
//!   heal (fault files rewritten)  t0 ──> every 5 ms, every node's rows, ordered ──> all
//!                                        equal and as the updates leave them      t1
//!   convergence = t1 - t0
//! ```
//!
//! Faults go through the nodes' fault files ([`crate::Cluster::isolate`], `heal`,
//! `set_gossip_loss`): node N's file lists every other id, theirs list N, and with
//! `--loss` every file also says `loss=N`, so each node loses that share of the gossip
//! frames it sends (pushes and anti-entropy) for the whole run, partition or not.
//!
//! **What "converged" means.** Each node writes on one connection, one update after
//! another, so its own updates get increasing timestamps; the previous round had
//! converged everywhere, so every update also beats what was there before. Per key, the
//! winner is therefore the last update of one of the nodes that wrote the key: a key one
//! node wrote ends exactly as that node left it, a key several nodes wrote ends as one of
//! them left it (which one, the hybrid logical clocks decide), a key nobody wrote keeps
//! its value. Polling stops when every node returns the same rows and those rows pass
//! that check.
//!
//! **Bytes** come from `eddy.gossip_peers`, summed over every node and peer, read before
//! the cut and after the round settled (every link up and every node `live` again, then
//! [`SETTLE`]): `pushed_bytes` are the delta bytes a node sent by pushing (the push after
//! a write, and the push half of anti-entropy), counted per peer, so one update pushed to
//! N-1 peers counts N-1 times; `pulled_bytes` are the delta bytes a node received, pushes
//! and anti-entropy answers alike ("delivered"). Frames lost to `--loss` are never sent
//! and never counted. Digests (version vectors) are not delta bytes and count in neither.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::try_join_all;

use crate::{connect, wait_for, Convergence, Failover, Meter, Options, Server, System};

/// The gossip table every round writes.
pub const TABLE: &str = "bench_gossip";
/// How often every node's rows are read once the partition healed.
const POLL: Duration = Duration::from_millis(5);
/// The longest a round may take to converge, or the nodes to see a fault or heal.
const GIVE_UP: Duration = Duration::from_secs(60);
/// After a round converged and every link is up again, how long gossip traffic may still
/// go on before the byte counters are read (one anti-entropy round at the default
/// `anti_entropy_ms`): late duplicates count for the round that caused them.
const SETTLE: Duration = Duration::from_secs(1);
/// One update in this many is a delete.
const DELETE_ONE_IN: u64 = 5;
/// Attempts at one upsert that fails with `23505` (see [`update`]).
const UPSERT_TRIES: usize = 10;
/// Before the heal, a pause drawn uniformly below this. The nodes re-read their fault
/// files and run anti-entropy on 100 ms timers, and the steps of a round (50 ms polls, a
/// fixed settle) would otherwise put the heal at the same point of those timers round
/// after round: without it, all 20 rounds of one run measured 146 to 168 ms.
const DITHER_MS: u64 = 1000;

/// Each of a table's rows: id and value.
type Rows = BTreeMap<i64, String>;

/// One node's updates of a round, in the order acknowledged: (key, new value or `None`
/// for a delete).
type Updates = Vec<(i64, Option<String>)>;

/// What one node's updates of a round did.
struct Written {
    updates: Updates,
    /// Upserts that failed with `23505` and were tried again.
    retries: u64,
}

/// Runs `rounds` partition and heal rounds against `server`, an eddy cluster the tool
/// started (at least two nodes), counting each finished round on `meter`.
pub async fn gossip_converge(
    server: &Server,
    opts: &Options,
    rounds: usize,
    meter: &Meter,
) -> anyhow::Result<Convergence> {
    let n = server.nodes();
    anyhow::ensure!(
        server.system == System::Eddy,
        "gossip-converge has no {} workload",
        server.system.name()
    );
    anyhow::ensure!(n >= 2, "gossip-converge needs 2 nodes or more, not {n}");
    anyhow::ensure!(opts.updates >= 1, "gossip-converge needs 1 update or more");
    let keys = key_space(opts.updates);
    let isolated = n - 1;
    let clients = try_join_all(server.urls.iter().map(|u| connect(u))).await?;
    setup(server, &clients, opts.loss_permille).await?;

    let mut state = Rows::new();
    let mut out = Convergence {
        nodes: n,
        loss_percent: opts.loss_permille as f64 / 10.0,
        updates: opts.updates,
        keys,
        rounds,
        converge_ms: Vec::with_capacity(rounds),
        partition_ms: Vec::with_capacity(rounds),
        heal_seen_ms: Vec::with_capacity(rounds),
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        pushed_bytes: 0,
        delivered_bytes: 0,
        pushed_per_update: 0.0,
        pushed_per_update_per_peer: 0.0,
        delivered_per_update: 0.0,
        rows: 0,
        single_writer_keys: 0,
        conflicting_keys: 0,
        cross_partition_keys: 0,
        upsert_retries: 0,
    };
    for round in 0..rounds {
        let fail = |e: anyhow::Error| e.context(format!("gossip-converge round {}", round + 1));
        // The previous round ended converged; say so before cutting again.
        wait_for(
            "every node to hold the previous round's rows",
            GIVE_UP,
            || all_hold(&clients, &state),
        )
        .await
        .map_err(fail)?;
        let before = bytes(&clients).await.map_err(fail)?;

        let cut_at = Instant::now();
        server.cluster()?.isolate(isolated)?;
        wait_for("every node to see the cut", GIVE_UP, || {
            cut_seen(&clients, Some(isolated as i64 + 1))
        })
        .await
        .map_err(fail)?;
        let written = try_join_all(
            clients
                .iter()
                .enumerate()
                .map(|(i, c)| update(c, round, i, share(opts.updates, n, i), keys)),
        )
        .await
        .map_err(fail)?;
        let pause = Dice(round as u64 | 1 << 32).next() % DITHER_MS;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.cluster()?.heal()?;
        let healed = Instant::now();
        let updates: Vec<Updates> = written.iter().map(|w| w.updates.clone()).collect();

        let (rows, checked, converged_at, heal_seen) =
            converge(&clients, &state, &updates, isolated, healed)
                .await
                .map_err(fail)?;
        out.converge_ms.push(ms(converged_at - healed));
        out.heal_seen_ms.push(ms(heal_seen - healed));
        out.partition_ms.push(ms(healed - cut_at));
        out.single_writer_keys += checked.single_writer;
        out.conflicting_keys += checked.conflicting;
        out.cross_partition_keys += checked.cross_partition;
        out.upsert_retries += written.iter().map(|w| w.retries).sum::<u64>();
        state = rows;

        wait_for("every link up and every node live", GIVE_UP, || {
            ready(&clients)
        })
        .await
        .map_err(fail)?;
        tokio::time::sleep(SETTLE).await;
        let after = bytes(&clients).await.map_err(fail)?;
        out.pushed_bytes += after.0.saturating_sub(before.0);
        out.delivered_bytes += after.1.saturating_sub(before.1);
        meter.add(1);
    }
    let total = (opts.updates * rounds) as f64;
    out.p50_ms = Failover::percentile(&out.converge_ms, 0.50);
    out.p99_ms = Failover::percentile(&out.converge_ms, 0.99);
    out.max_ms = Failover::percentile(&out.converge_ms, 1.0);
    out.pushed_per_update = out.pushed_bytes as f64 / total;
    out.pushed_per_update_per_peer = out.pushed_per_update / (n - 1) as f64;
    out.delivered_per_update = out.delivered_bytes as f64 / total;
    out.rows = state.len() as u64;
    Ok(out)
}

/// Keys the updates are drawn from: half as many as updates, so most keys are written
/// more than once, often on both sides of the partition.
fn key_space(updates: usize) -> u64 {
    (updates as u64 / 2).max(1)
}

/// Updates node `i` of `n` makes of `total`: an even share, the first nodes one more.
fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (Re)creates [`TABLE`], sets every node's frame loss, and waits until every node has
/// the table and every link is up.
async fn setup(
    server: &Server,
    clients: &[tokio_postgres::Client],
    loss_permille: u64,
) -> anyhow::Result<()> {
    {
        let mut cluster = server.cluster()?;
        cluster.heal()?;
        cluster.set_gossip_loss(loss_permille)?;
    }
    // Catalog changes go through the metadata Raft group: made before any cut.
    clients[0]
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE};
             CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, v TEXT) WITH (replication = 'gossip')"
        ))
        .await?;
    let empty = Rows::new();
    wait_for(&format!("{TABLE} on every node"), GIVE_UP, || {
        all_hold(clients, &empty)
    })
    .await?;
    wait_for("every link up and every node live", GIVE_UP, || {
        ready(clients)
    })
    .await
}

/// Every row of [`TABLE`] on the node behind `c`.
async fn rows(c: &tokio_postgres::Client) -> anyhow::Result<Rows> {
    let rows = c
        .query(&format!("SELECT id, v FROM {TABLE} ORDER BY id"), &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `Some` once every node holds exactly `want`.
async fn all_hold(clients: &[tokio_postgres::Client], want: &Rows) -> Option<()> {
    for c in clients {
        if rows(c).await.ok()? != *want {
            return None;
        }
    }
    Some(())
}

/// `Some` once every node lists the links a cut of eddy node `isolated` makes (`None`:
/// no cut) as `link = 'cut'` in `eddy.nodes`, and no other.
async fn cut_seen(clients: &[tokio_postgres::Client], isolated: Option<i64>) -> Option<()> {
    let n = clients.len() as i64;
    for (i, c) in clients.iter().enumerate() {
        let me = i as i64 + 1;
        let want: Vec<i64> = match isolated {
            None => Vec::new(),
            Some(k) if k == me => (1..=n).filter(|id| *id != k).collect(),
            Some(k) => vec![k],
        };
        let got: Vec<i64> = c
            .query(
                "SELECT node_id FROM eddy.nodes WHERE link = 'cut' ORDER BY node_id",
                &[],
            )
            .await
            .ok()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if got != want {
            return None;
        }
    }
    Some(())
}

/// `Some` once no link is cut and every node sees every node `live`.
async fn ready(clients: &[tokio_postgres::Client]) -> Option<()> {
    cut_seen(clients, None).await?;
    for c in clients {
        let live: i64 = c
            .query_one("SELECT count(*) FROM eddy.nodes WHERE gossip = 'live'", &[])
            .await
            .ok()?
            .get(0);
        if live != clients.len() as i64 {
            return None;
        }
    }
    Some(())
}

/// (pushed, delivered) delta bytes so far, summed over every node's gossip peers.
async fn bytes(clients: &[tokio_postgres::Client]) -> anyhow::Result<(u64, u64)> {
    let (mut pushed, mut delivered) = (0, 0);
    for c in clients {
        let r = c
            .query_one(
                "SELECT coalesce(sum(pushed_bytes), 0), coalesce(sum(pulled_bytes), 0) \
                 FROM eddy.gossip_peers",
                &[],
            )
            .await?;
        pushed += r.get::<_, i64>(0) as u64;
        delivered += r.get::<_, i64>(1) as u64;
    }
    Ok((pushed, delivered))
}

/// splitmix64: a fixed sequence per (round, node), so runs repeat.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Node `node` (0-based) makes `count` updates one after another: upserts of a value
/// no other update uses, and one in [`DELETE_ONE_IN`] a delete.
///
/// An upsert (`INSERT .. ON CONFLICT (id) DO UPDATE`) can fail with `23505`: eddy reads
/// the key, finds no row and writes an insert, and a gossip delta of another node that
/// inserts the same key may be merged in between. Nothing of a failed statement is
/// written, so it is tried again, and counted.
async fn update(
    c: &tokio_postgres::Client,
    round: usize,
    node: usize,
    count: usize,
    keys: u64,
) -> anyhow::Result<Written> {
    let upsert = c
        .prepare(&format!(
            "INSERT INTO {TABLE} (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v"
        ))
        .await?;
    let delete = c
        .prepare(&format!("DELETE FROM {TABLE} WHERE id = $1"))
        .await?;
    let mut dice = Dice(((round as u64) << 16) | node as u64);
    let mut done = Vec::with_capacity(count);
    let mut retries = 0;
    for i in 0..count {
        let r = dice.next();
        let key = (r % keys) as i64;
        if (r >> 32).is_multiple_of(DELETE_ONE_IN) {
            // Whether it found the row or not: the check allows both (see `check`).
            c.execute(&delete, &[&key]).await?;
            done.push((key, None));
        } else {
            let v = format!("r{}.n{}.{i}", round + 1, node + 1);
            let mut tries = 0;
            loop {
                tries += 1;
                match c.execute(&upsert, &[&key, &v]).await {
                    Ok(_) => break,
                    Err(e)
                        if tries < UPSERT_TRIES
                            && e.code()
                                == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                    {
                        retries += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            done.push((key, Some(v)));
        }
    }
    Ok(Written {
        updates: done,
        retries,
    })
}

/// Polls every node's rows every [`POLL`] until they are equal and pass [`check`]:
/// (the rows, what the check found, when the last node's answer came, when every node's
/// `eddy.nodes` was first seen to show no cut). Until the heal is seen, each poll also
/// reads the links, at the same time as the rows.
async fn converge(
    clients: &[tokio_postgres::Client],
    before: &Rows,
    updates: &[Updates],
    isolated: usize,
    healed: Instant,
) -> anyhow::Result<(Rows, Checked, Instant, Instant)> {
    let mut heal_seen = None;
    loop {
        let (seen, links) = tokio::join!(try_join_all(clients.iter().map(rows)), async {
            match heal_seen {
                None => cut_seen(clients, None).await,
                Some(_) => None,
            }
        });
        let seen = seen?;
        let at = Instant::now();
        if heal_seen.is_none() && links.is_some() {
            heal_seen = Some(at);
        }
        let equal = seen.iter().all(|s| *s == seen[0]);
        let checked = check(before, updates, isolated, &seen[0]);
        if let (true, Ok(checked)) = (equal, &checked) {
            let checked = *checked;
            // Rows cannot converge before the links are up: a heal not seen yet was
            // applied since the links were last read.
            let heal_seen = heal_seen.unwrap_or(at);
            let rows = seen.into_iter().next().unwrap_or_default();
            return Ok((rows, checked, at, heal_seen));
        }
        if healed.elapsed() > GIVE_UP {
            let counts: Vec<usize> = seen.iter().map(BTreeMap::len).collect();
            let why = match checked {
                Err(e) if equal => format!("every node holds the same rows, but {e}"),
                _ => format!("the nodes differ (rows per node: {counts:?})"),
            };
            anyhow::bail!("no convergence within {GIVE_UP:?} of the heal: {why}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What [`check`] found, per kind of key written in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Checked {
    /// Keys one node wrote: their value was known exactly, and matched.
    pub single_writer: u64,
    /// Keys several nodes wrote: the value was one of theirs.
    pub conflicting: u64,
    /// Of those, keys written on both sides of the partition.
    pub cross_partition: u64,
}

/// Whether `after` is what the round's `updates` (per node, in order; node `isolated`
/// cut off from the rest) leave of `before`: a key no node wrote keeps its value; a key
/// one node wrote ends as that node's last update left it; a key several wrote ends as
/// one of their last updates left it. (Each node's updates beat its own earlier ones and
/// everything from before the round, so the winner is one of these last updates.)
pub(crate) fn check(
    before: &Rows,
    updates: &[Updates],
    isolated: usize,
    after: &Rows,
) -> Result<Checked, String> {
    // key -> (node, how that node's last update left it)
    let mut last: BTreeMap<i64, Vec<(usize, Option<&str>)>> = BTreeMap::new();
    for (node, ups) in updates.iter().enumerate() {
        let mine: HashMap<i64, Option<&str>> =
            ups.iter().map(|(k, v)| (*k, v.as_deref())).collect();
        for (k, v) in mine {
            last.entry(k).or_default().push((node, v));
        }
    }
    let mut out = Checked::default();
    let keys = before.keys().chain(after.keys()).chain(last.keys());
    let keys: std::collections::BTreeSet<i64> = keys.copied().collect();
    for k in keys {
        let got = after.get(&k).map(String::as_str);
        let Some(writers) = last.get(&k) else {
            if got != before.get(&k).map(String::as_str) {
                return Err(format!(
                    "key {k}, written by no node, went from {:?} to {got:?}",
                    before.get(&k)
                ));
            }
            continue;
        };
        if !writers.iter().any(|(_, v)| *v == got) {
            return Err(format!(
                "key {k} holds {got:?}, not one of its writers' last updates {writers:?}"
            ));
        }
        if writers.len() == 1 {
            out.single_writer += 1;
        } else {
            out.conflicting += 1;
            let sides = writers.iter().filter(|(n, _)| *n == isolated).count();
            if sides > 0 && sides < writers.len() {
                out.cross_partition += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(i64, &str)]) -> Rows {
        r.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn up(k: i64, v: &str) -> (i64, Option<String>) {
        (k, Some(v.to_owned()))
    }

    #[test]
    fn one_writer_decides_its_keys_exactly() {
        let before = rows(&[(1, "old"), (2, "old"), (9, "kept")]);
        // Node 0 (majority) upserts 1 twice and deletes 2; node 1 (cut off) writes 3.
        let updates = vec![vec![up(1, "a"), up(1, "b"), (2, None)], vec![up(3, "c")]];
        let good = rows(&[(1, "b"), (3, "c"), (9, "kept")]);
        assert_eq!(
            check(&before, &updates, 1, &good),
            Ok(Checked {
                single_writer: 3,
                ..Checked::default()
            })
        );
        for bad in [
            rows(&[(1, "a"), (3, "c"), (9, "kept")]), // an earlier update
            rows(&[(1, "b"), (2, "old"), (3, "c"), (9, "kept")]), // a delete lost
            rows(&[(1, "b"), (9, "kept")]),           // the cut-off side's write lost
            rows(&[(1, "b"), (3, "c")]),              // an unwritten key lost
        ] {
            assert!(check(&before, &updates, 1, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn conflicting_keys_end_as_one_of_their_writers_last_updates() {
        let before = rows(&[(1, "old")]);
        let updates = vec![
            vec![up(1, "x"), up(1, "majority")],
            vec![],
            vec![up(1, "y"), (1, None)],
        ];
        let by_majority = rows(&[(1, "majority")]);
        let deleted = Rows::new();
        let want = Checked {
            conflicting: 1,
            cross_partition: 1,
            ..Checked::default()
        };
        assert_eq!(check(&before, &updates, 2, &by_majority), Ok(want));
        assert_eq!(check(&before, &updates, 2, &deleted), Ok(want));
        assert!(check(&before, &updates, 2, &rows(&[(1, "x")])).is_err());
        assert!(check(&before, &updates, 2, &rows(&[(1, "old")])).is_err());
    }

    #[test]
    fn updates_are_shared_out_and_repeat() {
        assert_eq!(
            (0..3).map(|i| share(200, 3, i)).collect::<Vec<_>>(),
            [67, 67, 66]
        );
        assert_eq!((0..5).map(|i| share(3, 5, i)).sum::<usize>(), 3);
        assert_eq!(key_space(200), 100);
        assert_eq!(key_space(1), 1);
        let (mut a, mut b) = (Dice(7), Dice(7));
        assert_eq!(a.next(), b.next());
    }
}
