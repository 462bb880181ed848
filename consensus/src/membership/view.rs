//! Membership transitions as pure functions: a sample of chitchat's state goes in, one
//! [`Member`] per node id comes out. No I/O and no clock reads (`now` is an argument), so
//! unit tests drive it directly; the driver task only samples and stores.
//!
//! - **Failure detection** is chitchat's phi-accrual detector, configured by
//!   [`failure_detector_config`] from `gossip_interval` and `dead_after`.
//! - **Suspect** is ours: chitchat still counts the node live, but its heartbeat has not
//!   advanced here for longer than [`suspect_after`].
//! - **Generations**: a restarted node is a new chitchat id (same node id, newer
//!   generation); only the newest generation of each node id is reported.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, FailureDetectorConfig, Heartbeat};

use super::{Liveness, Member};

/// Key of the node's Postgres address.
pub(super) const KEY_PG_ADDR: &str = "pg_addr";
/// Key of the node's zone ("" when unset).
pub(super) const KEY_ZONE: &str = "zone";
/// Prefix of the load figures' keys (`load:<name>`).
pub(super) const LOAD_PREFIX: &str = "load:";

/// chitchat's smoothing gives its prior interval the weight of this many samples (a
/// constant inside chitchat).
const CHITCHAT_PRIOR_WEIGHT: usize = 5;

/// How long a dead node's state stays in chitchat before it is forgotten there (the view
/// keeps its last row, marked dead). Long enough that a node down for maintenance is
/// still listed with its addresses; short enough that a host restarted every few
/// minutes does not accumulate old generations for days.
const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);

/// Maps `dead_after` onto chitchat's failure detector.
///
/// chitchat's "phi" is `time since the last heartbeat / mean heartbeat interval`, and a
/// node is dead once it exceeds `phi_threshold`, i.e. after `phi_threshold × mean`
/// without a heartbeat. The mean is smoothed towards `initial_interval` with the weight
/// of 5 samples: `mean = (sum of the window + 5 × initial_interval) / (samples + 5)`.
/// How often a heartbeat advance is seen depends on the cluster size (a node hears of
/// another directly and through third nodes, a few times per gossip round), so with a
/// long window the timeout would shrink as the cluster grows. Instead:
///
/// - `initial_interval = gossip_interval`: a node's heartbeat advances at least once per
///   gossip round, so that is the slowest healthy interval;
/// - `sampling_window_size = 5`: the prior and the last five intervals weigh the same, so
///   `mean` is between `gossip_interval / 2` and `gossip_interval` on a healthy network
///   and grows with a slower one;
/// - `phi_threshold = dead_after / gossip_interval`: a node is dead after between
///   `dead_after / 2` and `dead_after` without a heartbeat, plus up to one gossip round
///   until liveness is next evaluated (and one more until the view is sampled);
/// - `max_interval = dead_after`: a longer silence is an outage, not a sample;
/// - `dead_node_grace_period`: one hour (see [`DEAD_NODE_GRACE_PERIOD`]).
///
/// A node chitchat just heard of needs two heartbeat intervals before it is counted
/// live; until then it is reported dead.
pub(super) fn failure_detector_config(
    gossip_interval: Duration,
    dead_after: Duration,
) -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: dead_after.as_secs_f64() / gossip_interval.as_secs_f64(),
        sampling_window_size: CHITCHAT_PRIOR_WEIGHT,
        max_interval: dead_after,
        initial_interval: gossip_interval,
        dead_node_grace_period: DEAD_NODE_GRACE_PERIOD.max(dead_after * 10),
    }
}

/// How long a live node's heartbeat may stand still before it is suspect:
/// `max(3 × gossip_interval, dead_after / 3)`. Three rounds rule out one lost datagram;
/// a third of `dead_after` is well before chitchat's earliest verdict (`dead_after / 2`).
pub(super) fn suspect_after(gossip_interval: Duration, dead_after: Duration) -> Duration {
    (gossip_interval * 3).max(dead_after / 3)
}

/// The liveness of another node: chitchat's verdict, with "live but its heartbeat stood
/// still for longer than `suspect_after`" as suspect.
pub(super) fn classify(
    chitchat_live: bool,
    stalled_for: Duration,
    suspect_after: Duration,
) -> Liveness {
    if !chitchat_live {
        Liveness::Dead
    } else if stalled_for > suspect_after {
        Liveness::Suspect
    } else {
        Liveness::Live
    }
}

/// One node state of chitchat, as sampled.
#[derive(Debug, Clone)]
pub(super) struct Observation {
    pub(super) id: ChitchatId,
    /// In chitchat's live set (always true for this node).
    pub(super) live: bool,
    pub(super) heartbeat: Heartbeat,
    pub(super) keys: Vec<(String, String)>,
}

/// The members as last sampled, and what computing the next sample needs.
#[derive(Debug)]
pub(super) struct View {
    self_id: ChitchatId,
    suspect_after: Duration,
    /// Per chitchat id: its heartbeat and when it last advanced (or was first seen).
    advanced: HashMap<ChitchatId, (Heartbeat, Instant)>,
    /// Every node id ever heard of, with its latest row.
    members: BTreeMap<u64, Member>,
}

impl View {
    /// A view that knows only this node, with its initial keys.
    pub(super) fn new(
        self_id: ChitchatId,
        suspect_after: Duration,
        keys: &[(String, String)],
    ) -> View {
        let mut view = View {
            self_id: self_id.clone(),
            suspect_after,
            advanced: HashMap::new(),
            members: BTreeMap::new(),
        };
        if let Some(me) = member(&self_id, keys, Liveness::Live, true) {
            view.members.insert(me.node_id, me);
        }
        view
    }

    /// The members, sorted by node id.
    pub(super) fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Takes a new sample of chitchat's node states at `now`.
    pub(super) fn update(&mut self, observations: &[Observation], now: Instant) {
        // Heartbeat advances, per chitchat id; ids chitchat forgot are forgotten here too.
        let mut advanced = HashMap::with_capacity(observations.len());
        for obs in observations {
            let since = match self.advanced.get(&obs.id) {
                Some(&(heartbeat, since)) if heartbeat >= obs.heartbeat => since,
                _ => now,
            };
            advanced.insert(obs.id.clone(), (obs.heartbeat, since));
        }
        self.advanced = advanced;

        // One observation per node id: this node's own, else the newest generation.
        let mut newest: BTreeMap<u64, &Observation> = BTreeMap::new();
        for obs in observations {
            let Ok(node_id) = obs.id.node_id.parse::<u64>() else {
                continue;
            };
            let mine = obs.id.node_id == self.self_id.node_id;
            if mine && obs.id != self.self_id {
                continue; // an earlier generation of this very node
            }
            let replace = newest
                .get(&node_id)
                .is_none_or(|seen| seen.id.generation_id < obs.id.generation_id);
            if replace {
                newest.insert(node_id, obs);
            }
        }

        // Nodes chitchat no longer holds (garbage collected long after death) stay, dead.
        for member in self.members.values_mut() {
            if !newest.contains_key(&member.node_id) {
                member.liveness = Liveness::Dead;
            }
        }
        for (node_id, obs) in newest {
            let this_node = obs.id == self.self_id;
            let liveness = if this_node {
                Liveness::Live
            } else {
                let stalled_for = self
                    .advanced
                    .get(&obs.id)
                    .map_or(Duration::ZERO, |&(_, since)| {
                        now.saturating_duration_since(since)
                    });
                classify(obs.live, stalled_for, self.suspect_after)
            };
            if let Some(mut row) = member(&obs.id, &obs.keys, liveness, this_node) {
                row.load_since = match self.members.get(&node_id) {
                    Some(old) if old.load == row.load => old.load_since,
                    _ => (!row.load.is_empty()).then_some(now),
                };
                self.members.insert(node_id, row);
            }
        }
    }

    /// Sets a load figure on this node's row (before chitchat has it back in a sample).
    pub(super) fn set_own_load(&mut self, key: &str, value: &str, now: Instant) {
        if let Some(me) = self
            .self_id
            .node_id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.members.get_mut(&id))
        {
            if me.load.get(key).map(String::as_str) != Some(value) {
                me.load.insert(key.to_string(), value.to_string());
                me.load_since = Some(now);
            }
        }
    }
}

/// The row of a chitchat node; `None` when its node id is not an eddy node id.
fn member(
    id: &ChitchatId,
    keys: &[(String, String)],
    liveness: Liveness,
    this_node: bool,
) -> Option<Member> {
    let mut row = Member {
        node_id: id.node_id.parse().ok()?,
        pg_addr: String::new(),
        cluster_addr: id.gossip_advertise_addr.to_string(),
        zone: String::new(),
        liveness,
        this_node,
        load: BTreeMap::new(),
        load_since: None,
    };
    for (key, value) in keys {
        if key == KEY_PG_ADDR {
            row.pg_addr.clone_from(value);
        } else if key == KEY_ZONE {
            row.zone.clone_from(value);
        } else if let Some(name) = key.strip_prefix(LOAD_PREFIX) {
            row.load.insert(name.to_string(), value.clone());
        }
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    const GOSSIP: Duration = Duration::from_millis(200);
    const DEAD_AFTER: Duration = Duration::from_secs(3);

    fn id(node: u64, generation: u64) -> ChitchatId {
        let addr: SocketAddr = ([127, 0, 0, 1], 7000 + node as u16).into();
        ChitchatId::new(node.to_string(), generation, addr)
    }

    /// Heartbeats are opaque outside chitchat (the counter is crate-private); postcard
    /// encodes the newtype as its `u64`, which makes one.
    fn heartbeat(n: u64) -> Heartbeat {
        postcard::from_bytes(&postcard::to_allocvec(&n).unwrap()).unwrap()
    }

    fn obs(id: ChitchatId, live: bool, hb: u64, keys: &[(&str, &str)]) -> Observation {
        Observation {
            id,
            live,
            heartbeat: heartbeat(hb),
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn liveness_of(view: &View, node: u64) -> Option<Liveness> {
        view.members()
            .into_iter()
            .find(|m| m.node_id == node)
            .map(|m| m.liveness)
    }

    #[test]
    fn failure_detector_mapping() {
        let cfg = failure_detector_config(GOSSIP, DEAD_AFTER);
        assert_eq!(cfg.phi_threshold, 15.0);
        assert_eq!(cfg.initial_interval, GOSSIP);
        assert_eq!(cfg.max_interval, DEAD_AFTER);
        assert_eq!(cfg.sampling_window_size, CHITCHAT_PRIOR_WEIGHT);
        // A node chitchat has only the prior for is declared dead after dead_after.
        let timeout = cfg.initial_interval.as_secs_f64() * cfg.phi_threshold;
        assert!((timeout - DEAD_AFTER.as_secs_f64()).abs() < 1e-9);
        // Heartbeats seen arbitrarily often: the prior still holds the mean at half.
        let fastest = cfg.initial_interval.as_secs_f64() * CHITCHAT_PRIOR_WEIGHT as f64
            / (cfg.sampling_window_size + CHITCHAT_PRIOR_WEIGHT) as f64
            * cfg.phi_threshold;
        assert!((fastest - DEAD_AFTER.as_secs_f64() / 2.0).abs() < 1e-9);
        assert!(suspect_after(GOSSIP, DEAD_AFTER) < DEAD_AFTER / 2);
        assert_eq!(suspect_after(GOSSIP, DEAD_AFTER), Duration::from_secs(1));
        assert_eq!(
            suspect_after(Duration::from_millis(500), DEAD_AFTER),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn load_figures_are_dated_by_their_last_change() {
        let me = id(1, 10);
        let mut view = View::new(me.clone(), suspect_after(GOSSIP, DEAD_AFTER), &[]);
        let other = id(2, 10);
        let since = |view: &View| {
            view.members()
                .into_iter()
                .find(|m| m.node_id == 2)
                .unwrap()
                .load_since
        };
        let t0 = Instant::now();
        view.update(
            &[
                obs(me.clone(), true, 1, &[]),
                obs(other.clone(), true, 1, &[]),
            ],
            t0,
        );
        assert_eq!(since(&view), None, "no figures yet");
        let seq1 = [("load:seq", "1"), ("load:in_flight", "3")];
        view.update(
            &[
                obs(me.clone(), true, 2, &[]),
                obs(other.clone(), true, 2, &seq1),
            ],
            t0,
        );
        assert_eq!(since(&view), Some(t0));
        // The same figures sampled later keep their date; new ones take the new date.
        let t1 = t0 + Duration::from_secs(2);
        view.update(
            &[
                obs(me.clone(), true, 3, &[]),
                obs(other.clone(), true, 3, &seq1),
            ],
            t1,
        );
        assert_eq!(since(&view), Some(t0));
        let seq2 = [("load:seq", "2"), ("load:in_flight", "3")];
        view.update(
            &[
                obs(me.clone(), true, 4, &[]),
                obs(other.clone(), true, 4, &seq2),
            ],
            t1,
        );
        assert_eq!(since(&view), Some(t1));
        // This node's own figures are dated when it sets them.
        view.set_own_load("seq", "7", t1);
        let mine = view.members().into_iter().find(|m| m.node_id == 1).unwrap();
        assert_eq!(
            (mine.load.get("seq").map(String::as_str), mine.load_since),
            (Some("7"), Some(t1))
        );
    }

    #[test]
    fn classify_live_suspect_dead() {
        let s = Duration::from_secs(1);
        assert_eq!(classify(true, Duration::ZERO, s), Liveness::Live);
        assert_eq!(classify(true, s, s), Liveness::Live);
        assert_eq!(
            classify(true, s + Duration::from_millis(1), s),
            Liveness::Suspect
        );
        assert_eq!(classify(false, Duration::ZERO, s), Liveness::Dead);
        assert_eq!(classify(false, s * 10, s), Liveness::Dead);
    }

    #[test]
    fn stalled_heartbeat_makes_suspect_and_an_advance_clears_it() {
        let me = id(1, 10);
        let mut view = View::new(me.clone(), suspect_after(GOSSIP, DEAD_AFTER), &[]);
        let t0 = Instant::now();
        let other = id(2, 10);
        view.update(
            &[
                obs(me.clone(), true, 5, &[]),
                obs(other.clone(), true, 1, &[]),
            ],
            t0,
        );
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Live));
        // Same heartbeat 0.9 s later: still live; 1.1 s later: suspect.
        let t1 = t0 + Duration::from_millis(900);
        view.update(
            &[
                obs(me.clone(), true, 6, &[]),
                obs(other.clone(), true, 1, &[]),
            ],
            t1,
        );
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Live));
        let t2 = t0 + Duration::from_millis(1100);
        view.update(
            &[
                obs(me.clone(), true, 7, &[]),
                obs(other.clone(), true, 1, &[]),
            ],
            t2,
        );
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Suspect));
        // It advanced: live again. This node itself is always live.
        view.update(
            &[
                obs(me.clone(), true, 8, &[]),
                obs(other.clone(), true, 2, &[]),
            ],
            t2,
        );
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Live));
        assert_eq!(liveness_of(&view, 1), Some(Liveness::Live));
        // chitchat's verdict wins over a fresh heartbeat.
        view.update(&[obs(me, true, 9, &[]), obs(other, false, 3, &[])], t2);
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Dead));
    }

    #[test]
    fn newest_generation_is_the_one_row_of_a_node() {
        let me = id(1, 10);
        let mut view = View::new(me.clone(), suspect_after(GOSSIP, DEAD_AFTER), &[]);
        let now = Instant::now();
        let old = obs(id(3, 100), false, 50, &[(KEY_PG_ADDR, "old:5432")]);
        let new = obs(id(3, 200), true, 2, &[(KEY_PG_ADDR, "new:5432")]);
        // Also an earlier generation of this node, as others still gossip it.
        let my_old = obs(id(1, 5), false, 99, &[]);
        for observations in [
            vec![
                obs(me.clone(), true, 1, &[]),
                old.clone(),
                new.clone(),
                my_old.clone(),
            ],
            vec![my_old, new, obs(me.clone(), true, 1, &[]), old],
        ] {
            view.update(&observations, now);
            let members = view.members();
            assert_eq!(members.len(), 2, "{members:?}");
            assert!(members[0].this_node && members[0].liveness == Liveness::Live);
            assert_eq!(members[1].node_id, 3);
            assert_eq!(members[1].pg_addr, "new:5432");
            assert_eq!(members[1].liveness, Liveness::Live);
        }
    }

    #[test]
    fn forgotten_node_stays_dead_and_keys_map_to_fields() {
        let me = id(1, 10);
        let keys = [(KEY_PG_ADDR.to_string(), "a:5432".to_string())];
        let mut view = View::new(me.clone(), suspect_after(GOSSIP, DEAD_AFTER), &keys);
        assert_eq!(view.members().len(), 1);
        assert_eq!(view.members()[0].pg_addr, "a:5432");
        let now = Instant::now();
        let two = obs(
            id(2, 1),
            true,
            1,
            &[
                (KEY_PG_ADDR, "b:5432"),
                (KEY_ZONE, "eu-1"),
                ("load:cpu", "0.5"),
                ("other", "x"),
            ],
        );
        let stranger = obs(
            ChitchatId::new("not-a-number", 1, ([10, 0, 0, 1], 1).into()),
            true,
            1,
            &[],
        );
        view.update(&[obs(me.clone(), true, 1, &[]), two, stranger], now);
        let members = view.members();
        assert_eq!(members.len(), 2, "non-numeric node ids are not eddy nodes");
        let m = &members[1];
        assert_eq!((m.pg_addr.as_str(), m.zone.as_str()), ("b:5432", "eu-1"));
        assert_eq!(m.cluster_addr, "127.0.0.1:7002");
        assert_eq!(m.load.get("cpu").map(String::as_str), Some("0.5"));
        assert_eq!(m.load.len(), 1);
        // chitchat garbage-collected node 2: still listed, dead.
        view.update(&[obs(me, true, 2, &[])], now);
        assert_eq!(liveness_of(&view, 2), Some(Liveness::Dead));
        assert_eq!(view.members()[1].pg_addr, "b:5432");
        // Load set locally shows at once.
        view.set_own_load("cpu", "0.9", Instant::now());
        assert_eq!(
            view.members()[0].load.get("cpu").map(String::as_str),
            Some("0.9")
        );
    }
}
