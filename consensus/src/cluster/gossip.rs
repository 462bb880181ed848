//! Delta gossip between nodes (see [`crate::gossip`] for what travels):
//!
//! - **push**: when a local write to a gossip object is durable, each live peer gets
//!   this node's new deltas in one `Deltas` call (one push in flight per peer; changes
//!   during a push start another). The reply's applied seq is where the next push starts.
//! - **anti-entropy**: every `anti_entropy` one peer, in turn, gets a `Digest` (this
//!   node's version vectors); it answers with what this node lacks and its own vectors,
//!   from which this node pushes what the peer lacks. Both ways are bounded to
//!   `sync_bytes` per round. A peer whose last exchange failed, or that gossip has just
//!   seen come back to life, is synced on the next 100 ms tick instead of waiting its turn.
//! - **receive**: deltas of untrusted origins, and deltas stamped too far ahead of the
//!   local clock, are refused and counted; the rest merge through the committer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use eddy_storage::gossip::{DeltaBatch, Origin};
use eddy_storage::hlc::{hlc_from_millis, Hlc};
use eddy_storage::{Commit, ObjectId, WriteOp};
use parking_lot::Mutex;

use super::Cluster;
use crate::gossip::{Applied, DigestReply, GossipConfig, ObjectVv, PeerStats, TableState};
use crate::network::{Call, CallError, Reply};
use crate::types::NodeId;

/// How long a gossip call may take. An exchange in flight blocks the next one with the
/// same peer, so a frame lost on the way (the peer never answers) must not hold the
/// peer for long: a push or an anti-entropy answer of a few MiB takes far less.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// This node's gossip state.
#[derive(Default)]
pub(crate) struct GossipState {
    pub(crate) config: GossipConfig,
    stats: Mutex<BTreeMap<NodeId, PeerStats>>,
    /// (peer, object) -> this node's deltas the peer is known to have applied.
    pushed: Mutex<HashMap<(NodeId, ObjectId), u64>>,
    /// Peers with a push in flight, and whether another is wanted after it.
    pushing: Mutex<HashMap<NodeId, bool>>,
    /// Whose turn it is for anti-entropy.
    turn: Mutex<usize>,
    /// Peers whose last exchange failed: anti-entropy retries them at once.
    dirty: Mutex<HashSet<NodeId>>,
    /// Peers with an anti-entropy exchange in flight.
    syncing: Mutex<HashSet<NodeId>>,
}

impl GossipState {
    pub(crate) fn new(config: GossipConfig) -> GossipState {
        GossipState {
            config,
            ..GossipState::default()
        }
    }
}

impl Cluster {
    fn gossip(&self) -> &GossipState {
        &self.inner.gossip
    }

    /// Per peer, what this node exchanged with it (`eddy.gossip_peers`).
    pub fn gossip_peers(&self) -> BTreeMap<NodeId, PeerStats> {
        let mut out = self.gossip().stats.lock().clone();
        for id in self.nodes().keys() {
            if *id != self.id() {
                out.entry(*id).or_default();
            }
        }
        out
    }

    fn with_stats(&self, peer: NodeId, f: impl FnOnce(&mut PeerStats)) {
        f(self.gossip().stats.lock().entry(peer).or_default());
    }

    /// An exchange with `peer` failed (or its frame was lost): counted, and anti-entropy
    /// tries the peer again on its next tick.
    fn failed(&self, peer: NodeId) {
        self.with_stats(peer, |s| s.failures += 1);
        self.gossip().dirty.lock().insert(peer);
    }

    /// An exchange with `peer` succeeded.
    fn synced(&self, peer: NodeId) {
        self.with_stats(peer, |s| s.last_sync = Some(SystemTime::now()));
        self.gossip().dirty.lock().remove(&peer);
    }

    /// Peers to gossip with: every member but this node, not known dead.
    fn gossip_targets(&self) -> Vec<(NodeId, String)> {
        self.nodes()
            .into_iter()
            .filter(|(id, _)| *id != self.id() && !self.is_dead(*id))
            .map(|(id, info)| (id, info.cluster_addr))
            .collect()
    }

    /// Pushes whenever local gossip writes become durable, until the node stops.
    pub(crate) async fn push_loop(self) {
        let mut changes = self.inner.store.gossip_changes();
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            for (peer, addr) in self.gossip_targets() {
                self.kick_push(peer, addr);
            }
        }
    }

    /// Starts a push to `peer` unless one is in flight (then it runs again after).
    fn kick_push(&self, peer: NodeId, addr: String) {
        {
            let mut pushing = self.gossip().pushing.lock();
            if let Some(again) = pushing.get_mut(&peer) {
                *again = true;
                return;
            }
            pushing.insert(peer, false);
        }
        let this = self.clone();
        self.spawn(async move {
            loop {
                let progressed = this.push_to(peer, &addr).await;
                let mut pushing = this.gossip().pushing.lock();
                match pushing.get_mut(&peer) {
                    Some(again) if *again || progressed => *again = false,
                    _ => {
                        pushing.remove(&peer);
                        return;
                    }
                }
            }
        });
    }

    /// Sends `peer` this node's deltas it has not acknowledged yet (a peer never pushed
    /// to gets the newest delta, and its answer tells where it really is). True when the
    /// peer moved on and more may be left.
    async fn push_to(&self, peer: NodeId, addr: &str) -> bool {
        let me = self.id();
        // Reading the deltas is RocksDB work: on the blocking pool.
        let c = self.clone();
        let Ok(batches) = tokio::task::spawn_blocking(move || c.unpushed(peer)).await else {
            return false;
        };
        if batches.is_empty() {
            return false;
        }
        let before: Vec<u64> = {
            let pushed = self.gossip().pushed.lock();
            batches
                .iter()
                .map(|b| pushed.get(&(peer, b.object)).copied().unwrap_or(0))
                .collect()
        };
        let Some(applied) = self.send_deltas(peer, addr, batches).await else {
            return false;
        };
        applied
            .iter()
            .zip(before)
            .any(|(a, was)| a.origin == me && a.applied > was)
    }

    /// This node's own deltas `peer` has not acknowledged, up to the push budget.
    fn unpushed(&self, peer: NodeId) -> Vec<DeltaBatch> {
        let me = self.id();
        let store = &self.inner.store;
        let mut budget = self.gossip().config.push_bytes;
        let mut batches = Vec::new();
        for object in store.gossip_objects() {
            let Ok(vv) = store.version_vector(object) else {
                continue;
            };
            let mine = vv.get(&me).map_or(0, |e| e.applied);
            let from = match self.gossip().pushed.lock().get(&(peer, object)) {
                Some(sent) => sent + 1,
                None => mine,
            };
            if mine == 0 || from > mine || budget == 0 {
                continue;
            }
            if let Ok(deltas) = store.read_deltas(object, me, from, budget) {
                budget = budget.saturating_sub(deltas.iter().map(|d| d.size()).sum());
                batches.push(DeltaBatch {
                    object,
                    origin: me,
                    deltas,
                });
            }
        }
        batches
    }

    /// Sends deltas to `peer`; records what it applied. `None` when the call failed.
    async fn send_deltas(
        &self,
        peer: NodeId,
        addr: &str,
        batches: Vec<DeltaBatch>,
    ) -> Option<Vec<Applied>> {
        let count: u64 = batches.iter().map(|b| b.deltas.len() as u64).sum();
        let bytes: u64 = batches
            .iter()
            .flat_map(|b| &b.deltas)
            .map(|d| d.size() as u64)
            .sum();
        if self.inner.peers.faults.lose_gossip() {
            self.failed(peer);
            return None;
        }
        let reply = self
            .inner
            .peers
            .call(peer, addr, Call::Deltas(self.id(), batches), CALL_TIMEOUT)
            .await;
        match reply {
            Ok(Reply::Deltas(applied)) => {
                self.note_applied(peer, &applied);
                self.with_stats(peer, |s| {
                    s.pushed += count;
                    s.pushed_bytes += bytes;
                });
                self.synced(peer);
                Some(applied)
            }
            _ => {
                self.failed(peer);
                None
            }
        }
    }

    /// Remembers how far `peer` has applied this node's deltas.
    fn note_applied(&self, peer: NodeId, applied: &[Applied]) {
        let mut pushed = self.gossip().pushed.lock();
        for a in applied.iter().filter(|a| a.origin == self.id()) {
            pushed.insert((peer, a.object), a.applied);
        }
    }

    /// Merges deltas received from `from` (a push or an anti-entropy answer) and says
    /// how far each object and origin is applied here afterwards.
    pub(crate) async fn receive_deltas(
        &self,
        from: NodeId,
        batches: Vec<DeltaBatch>,
    ) -> Vec<Applied> {
        let config = &self.gossip().config;
        let max_ahead = config.max_clock_offset.as_millis() as u64;
        let mut refused = 0u64;
        let mut bytes = 0u64;
        let mut keys = Vec::with_capacity(batches.len());
        let mut units = Vec::with_capacity(batches.len());
        for mut b in batches {
            keys.push((b.object, b.origin));
            bytes += b.deltas.iter().map(|d| d.size() as u64).sum::<u64>();
            if config
                .trust_origins
                .as_ref()
                .is_some_and(|t| !t.contains(&b.origin))
            {
                refused += b.deltas.len() as u64;
                continue;
            }
            // A delta too far ahead stops its batch: the ones after it would be a gap.
            if let Some(cut) = b
                .deltas
                .iter()
                .position(|d| Hlc::ahead_millis(d.hlc) > max_ahead)
            {
                refused += (b.deltas.len() - cut) as u64;
                b.deltas.truncate(cut);
            }
            if !b.deltas.is_empty() {
                units.push(vec![WriteOp::Merge(b)]);
            }
        }
        let store = &self.inner.store;
        let before = applied_of(store, &keys);
        if !units.is_empty() {
            // No fsync: a lost merge loses its version vector entry with it, and is
            // fetched again.
            let commit = Commit {
                units,
                sync: false,
                ..Commit::default()
            };
            match store.commit(commit).await {
                Ok(results) => {
                    for e in results.iter().filter_map(|r| r.as_ref().err()) {
                        // An object this node's catalog lacks yet, most likely.
                        tracing::debug!(peer = from, error = %e, "deltas not merged");
                    }
                }
                Err(e) => tracing::warn!(peer = from, error = %e, "deltas not merged"),
            }
        }
        let after = applied_of(store, &keys);
        let mut out = Vec::with_capacity(keys.len());
        let mut pulled = 0;
        for (object, origin) in keys {
            let applied = after[&(object, origin)];
            pulled += applied.saturating_sub(before[&(object, origin)]);
            out.push(Applied {
                object,
                origin,
                applied,
            });
        }
        self.with_stats(from, |s| {
            s.pulled += pulled;
            s.pulled_bytes += bytes;
            s.refused += refused;
            s.last_sync = Some(SystemTime::now());
        });
        out
    }

    /// This node's version vectors of every gossip object.
    fn digest(&self) -> Vec<ObjectVv> {
        let store = &self.inner.store;
        store
            .gossip_objects()
            .into_iter()
            .filter_map(|object| {
                let vv = store.version_vector(object).ok()?;
                Some(ObjectVv {
                    object,
                    applied: vv.iter().map(|(o, e)| (*o, e.applied)).collect(),
                })
            })
            .collect()
    }

    /// Answers a peer's digest with what it lacks (up to `sync_bytes`) and this node's
    /// version vectors.
    pub(crate) fn answer_digest(&self, theirs: Vec<ObjectVv>) -> DigestReply {
        let store = &self.inner.store;
        let theirs: HashMap<ObjectId, HashMap<Origin, u64>> = theirs
            .into_iter()
            .map(|v| (v.object, v.applied.into_iter().collect()))
            .collect();
        let mut budget = self.gossip().config.sync_bytes;
        let mut reply = DigestReply {
            mine: self.digest(),
            ..DigestReply::default()
        };
        for object in store.gossip_objects() {
            let Ok(vv) = store.version_vector(object) else {
                continue;
            };
            for (origin, e) in vv {
                let has = theirs
                    .get(&object)
                    .and_then(|t| t.get(&origin))
                    .copied()
                    .unwrap_or(0);
                if e.applied <= has || budget == 0 {
                    continue;
                }
                if has + 1 < e.floor {
                    reply.behind.push((object, origin, e.floor));
                    continue;
                }
                if let Ok(deltas) = store.read_deltas(object, origin, has + 1, budget) {
                    budget = budget.saturating_sub(deltas.iter().map(|d| d.size()).sum());
                    reply.missing.push(DeltaBatch {
                        object,
                        origin,
                        deltas,
                    });
                }
            }
        }
        reply
    }

    /// Runs anti-entropy until the node stops: with one peer per `anti_entropy`, in
    /// turn, and at once (on a 100 ms tick) with a peer whose last exchange failed or
    /// that gossip has just seen come back to life, so a healed partition converges
    /// without waiting for its turn.
    pub(crate) async fn anti_entropy_loop(self) {
        let every = self.gossip().config.anti_entropy;
        let tick = every.min(Duration::from_millis(100));
        let mut last_round = Instant::now();
        let mut was_live: HashSet<NodeId> = HashSet::new();
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let targets = self.gossip_targets();
            if targets.is_empty() || self.inner.store.gossip_objects().is_empty() {
                continue;
            }
            let live: HashSet<NodeId> = targets
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| self.liveness(*id) == Some(crate::membership::Liveness::Live))
                .collect();
            let mut urgent: HashSet<NodeId> = live.difference(&was_live).copied().collect();
            was_live = live;
            urgent.extend(self.gossip().dirty.lock().iter().copied());
            if last_round.elapsed() >= every {
                last_round = Instant::now();
                let mut turn = self.gossip().turn.lock();
                *turn = turn.wrapping_add(1);
                urgent.insert(targets[*turn % targets.len()].0);
            }
            for (peer, addr) in targets.into_iter().filter(|(id, _)| urgent.contains(id)) {
                if !self.gossip().syncing.lock().insert(peer) {
                    continue;
                }
                let this = self.clone();
                self.spawn(async move {
                    this.anti_entropy_with(peer, &addr).await;
                    this.gossip().syncing.lock().remove(&peer);
                });
            }
        }
    }

    /// One anti-entropy exchange with `peer`: pull what this node lacks, then push what
    /// the peer lacks.
    pub(crate) async fn anti_entropy_with(&self, peer: NodeId, addr: &str) {
        if self.inner.peers.faults.lose_gossip() {
            self.failed(peer);
            return;
        }
        let call = Call::Digest(self.id(), self.digest());
        let reply = match self.inner.peers.call(peer, addr, call, CALL_TIMEOUT).await {
            Ok(Reply::Digest(r)) => r,
            _ => {
                self.failed(peer);
                return;
            }
        };
        if !reply.behind.is_empty() {
            self.catch_up_past_horizon(peer, addr, &reply.behind).await;
        }
        if !reply.missing.is_empty() {
            self.receive_deltas(peer, reply.missing).await;
        }
        // Push what the peer lacks, from every origin this node holds (RocksDB reads:
        // on the blocking pool).
        let c = self.clone();
        let Ok(batches) = tokio::task::spawn_blocking(move || c.lacking(peer, &reply.mine)).await
        else {
            return;
        };
        if batches.is_empty() {
            self.synced(peer);
        } else {
            self.send_deltas(peer, addr, batches).await;
        }
    }

    /// The deltas a peer lacks by its version vectors `mine` (of its digest reply), from
    /// every origin this node holds, up to the sync budget.
    fn lacking(&self, peer: NodeId, mine: &[ObjectVv]) -> Vec<DeltaBatch> {
        let store = &self.inner.store;
        let mut budget = self.gossip().config.sync_bytes;
        let mut batches = Vec::new();
        for theirs in mine {
            let has: HashMap<Origin, u64> = theirs.applied.iter().copied().collect();
            self.note_applied(
                peer,
                &[Applied {
                    object: theirs.object,
                    origin: self.id(),
                    applied: has.get(&self.id()).copied().unwrap_or(0),
                }],
            );
            let Ok(vv) = store.version_vector(theirs.object) else {
                continue;
            };
            for (origin, e) in vv {
                let from = has.get(&origin).copied().unwrap_or(0) + 1;
                if e.applied < from || budget == 0 || from < e.floor {
                    continue;
                }
                if let Ok(deltas) = store.read_deltas(theirs.object, origin, from, budget) {
                    budget = budget.saturating_sub(deltas.iter().map(|d| d.size()).sum());
                    batches.push(DeltaBatch {
                        object: theirs.object,
                        origin,
                        deltas,
                    });
                }
            }
        }
        batches
    }

    /// Collects old deltas and tombstones, a few times per horizon, until the node stops.
    pub(crate) async fn collect_loop(self) {
        let horizon = self.gossip().config.horizon;
        let every = (horizon / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let before = hlc_from_millis(now.saturating_sub(horizon.as_millis() as u64));
            let store = &self.inner.store;
            for object in store.gossip_objects() {
                if let Err(e) = store.write(vec![WriteOp::Collect { object, before }]).await {
                    tracing::warn!(object, error = %e, "collecting old gossip deltas failed");
                }
            }
        }
    }

    /// A gossip table's full state (`Call::Resync`): version vector first, so every
    /// write it names is in the rows read after.
    pub(crate) fn gossip_table_state(&self, table: ObjectId) -> Result<TableState, CallError> {
        let store = &self.inner.store;
        let fail = |e: eddy_storage::Error| CallError::Refused(e.to_string());
        let vv = store.version_vector(table).map_err(fail)?;
        let rows = store.table_state(table).map_err(fail)?;
        Ok(TableState {
            vv: vv.into_iter().collect(),
            rows,
        })
    }

    /// This node lacks deltas `peer` has already collected: a table is resynced from the
    /// peer's full state; a topic skips to what the peer still holds (those messages
    /// never reach this node).
    async fn catch_up_past_horizon(
        &self,
        peer: NodeId,
        addr: &str,
        behind: &[(ObjectId, Origin, u64)],
    ) {
        let store = &self.inner.store;
        let mut tables = Vec::new();
        for &(object, origin, floor) in behind {
            let is_table = matches!(
                store.catalog().by_id(object).as_deref(),
                Some(eddy_storage::ObjectDef::Table(_))
            );
            if is_table {
                if !tables.contains(&object) {
                    tables.push(object);
                }
                continue;
            }
            let had = applied_here(store, object, origin);
            tracing::warn!(
                peer,
                object,
                origin,
                skipped = floor.saturating_sub(had + 1),
                "gossip topic behind the peer's horizon: skipping messages it no longer holds"
            );
            let skip = WriteOp::Skip {
                object,
                origin,
                to: floor - 1,
            };
            if let Err(e) = store.write(vec![skip]).await {
                tracing::warn!(object, error = %e, "skipping past the horizon failed");
            }
        }
        for table in tables {
            let reply = self
                .inner
                .peers
                .call(peer, addr, Call::Resync(table), CALL_TIMEOUT * 10)
                .await;
            let state = match reply {
                Ok(Reply::Resync(Ok(s))) => s,
                other => {
                    tracing::warn!(peer, table, ?other, "gossip resync failed");
                    self.failed(peer);
                    continue;
                }
            };
            let op = WriteOp::Resync {
                table,
                rows: state.rows,
                vv: state.vv,
            };
            match store.write(vec![op]).await {
                Ok(_) => tracing::info!(peer, table, "gossip table resynced past the horizon"),
                Err(e) => tracing::warn!(peer, table, error = %e, "gossip resync failed"),
            }
        }
    }
}

/// For each (object, origin), the seq applied here; each object's version vector is read
/// once.
fn applied_of(
    store: &eddy_storage::Store,
    keys: &[(ObjectId, Origin)],
) -> HashMap<(ObjectId, Origin), u64> {
    let mut vvs: HashMap<ObjectId, eddy_storage::gossip::VersionVector> = HashMap::new();
    keys.iter()
        .map(|&(object, origin)| {
            let vv = vvs
                .entry(object)
                .or_insert_with(|| store.version_vector(object).unwrap_or_default());
            let applied = vv.get(&origin).map_or(0, |e| e.applied);
            ((object, origin), applied)
        })
        .collect()
}

/// The seq of `origin` applied here for `object` (0 if none).
fn applied_here(store: &eddy_storage::Store, object: ObjectId, origin: Origin) -> u64 {
    store
        .version_vector(object)
        .ok()
        .and_then(|vv| vv.get(&origin).map(|e| e.applied))
        .unwrap_or(0)
}
