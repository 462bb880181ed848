//! Where a statement or a subscription runs: the cost of each candidate node and the
//! choice between them (issue 24, adaptive load balancing). Pure functions over figures
//! the caller gathers (gossiped load, this node's own view of each peer), so that every
//! rule here is tested without a cluster; docs/architecture.md, "Routing", says how the
//! figures are measured and where the choice is made.
//!
//! ```text
//!   candidates (replicas able to serve it) ─► drop dead, draining, stale-and-unreachable
//!        │
//!        ├─ local / round_robin / least_connections / locality: their one rule
//!        └─ adaptive: two distinct candidates at random ─► the lower cost wins
//!             cost = 0.30 load + 0.30 latency + 0.20 resources + 0.20 locality + warm-up
//! ```

use std::time::Duration;

/// How statements are routed (`SET routing = ...`, the config's default, or the startup
/// parameter `options=-c routing=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// By cost, between two random candidates (power of two choices).
    #[default]
    Adaptive,
    /// Each candidate in turn.
    RoundRobin,
    /// The candidate with the fewest statements in flight.
    LeastConnections,
    /// The same zone as this node first, then any, by cost.
    Locality,
    /// This node whenever it can serve the statement (eddy's behaviour before issue 24).
    Local,
}

impl Strategy {
    /// The strategy a `SET routing` value names.
    pub fn parse(name: &str) -> Option<Strategy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "adaptive" => Some(Strategy::Adaptive),
            "round_robin" => Some(Strategy::RoundRobin),
            "least_connections" => Some(Strategy::LeastConnections),
            "locality" => Some(Strategy::Locality),
            "local" => Some(Strategy::Local),
            _ => None,
        }
    }

    /// Its name, as `SET routing` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Adaptive => "adaptive",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::Locality => "locality",
            Strategy::Local => "local",
        }
    }
}

/// The weights of the four factors in a cost (documented defaults 30/30/20/20).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Statements in flight and queued.
    pub load: f64,
    /// Latency of what this node sent there.
    pub latency: f64,
    /// CPU use.
    pub resources: f64,
    /// Another zone than this node's.
    pub locality: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            load: 0.30,
            latency: 0.30,
            resources: 0.20,
            locality: 0.20,
        }
    }
}

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Takes work.
    Serving,
    /// Finishing what it has (`ALTER CLUSTER DRAIN NODE`): takes nothing new.
    Draining,
    /// Failure detection says it is gone.
    Dead,
}

/// What the router knows of one candidate node.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node id.
    pub node: u64,
    /// True for the node making the choice.
    pub local: bool,
    /// Its state.
    pub state: NodeState,
    /// Its zone label, if it has one.
    pub zone: Option<String>,
    /// Its own figures as last gossiped, and how old they are; `None`: never heard.
    pub gossiped: Option<(Figures, Duration)>,
    /// Statements this node has sent there and not had answered yet: counted at once,
    /// before gossip catches up, so that one node does not send a burst to the same
    /// target on the same stale figures.
    pub sent_in_flight: u32,
    /// This node's peak-decayed latency of what it sent there; for itself, its own
    /// decayed service time.
    pub latency: Option<Duration>,
    /// How long since it came back (joined, restarted, or was seen live again).
    pub up_for: Duration,
}

impl Candidate {
    /// Its gossiped figures if fresh (no older than [`STALE_AFTER`]), else none.
    fn fresh(&self) -> Figures {
        self.gossiped
            .as_ref()
            .filter(|(_, age)| *age <= STALE_AFTER)
            .map(|(f, _)| *f)
            .unwrap_or_default()
    }

    /// Statements running or waiting there as far as this node knows: its fresh figures
    /// plus what this node has sent there itself.
    fn load(&self) -> u32 {
        let fresh = self.fresh();
        fresh.in_flight + fresh.queued + self.sent_in_flight
    }
}

/// A node's own load figures, as it gossips them about once a second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    /// Statements running.
    pub in_flight: u32,
    /// Statements waiting for a place.
    pub queued: u32,
    /// CPU use over the last interval, 0 to 1 (of all its cores).
    pub cpu: f64,
    /// Flagged as a hotspot: work moves away from it.
    pub hot: bool,
}

/// Figures older than this are ignored: the candidate is judged on this node's own view.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// A node that came back less than this ago gets a share of work that grows to full.
pub const WARM_UP: Duration = Duration::from_secs(10);
/// The load (statements in flight and queued) at which the load factor is one half.
const LOAD_HALF: f64 = 8.0;
/// The latency at which the latency factor is one half.
const LATENCY_HALF_MS: f64 = 5.0;
/// What a warm-up adds to the cost of a node that has just come back (falling to 0).
const WARM_UP_COST: f64 = 0.5;
/// What a hotspot's flag adds to its cost: work moves to any node not far worse.
const HOT_COST: f64 = 0.25;
/// What running a statement elsewhere costs over running it here (a second hop, and
/// this node's work relaying the answer): `adaptive` keeps a statement here unless
/// this node costs more than the other choice by this much, so a healthy cluster
/// relays nothing and a slow or loaded node sheds its work.
pub const HOP_COST: f64 = 0.05;

/// The cost of sending work to `c`, from `here` (this node's zone): lower is better, each
/// factor in [0, 1) before its weight. Load and latency grow without bound, so they are
/// mapped by `x / (x + half)`: equal steps matter most near idle, and one huge figure
/// cannot drown the other factors. Stale or missing gossip counts as no load and no CPU
/// beyond what this node itself has sent there.
pub fn cost(c: &Candidate, here: Option<&str>, w: &Weights) -> f64 {
    let load = f64::from(c.load());
    let load = load / (load + LOAD_HALF);
    let latency = c.latency.map_or(0.0, |l| {
        let ms = l.as_secs_f64() * 1000.0;
        ms / (ms + LATENCY_HALF_MS)
    });
    let resources = c.fresh().cpu.clamp(0.0, 1.0);
    let remote = match (here, c.zone.as_deref()) {
        _ if c.local => 0.0,
        (Some(a), Some(b)) if a == b => 0.0,
        (None, None) => 0.0,
        _ => 1.0,
    };
    let warm = if c.up_for < WARM_UP {
        WARM_UP_COST * (1.0 - c.up_for.as_secs_f64() / WARM_UP.as_secs_f64())
    } else {
        0.0
    };
    let hot = if c.fresh().hot { HOT_COST } else { 0.0 };
    w.load * load + w.latency * latency + w.resources * resources + w.locality * remote + warm + hot
}

/// A source of randomness for the choice (the router's own generator, or a fixed one in
/// tests).
pub trait Random {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize;
}

/// SplitMix64: small, fast, and good enough to pick two candidates.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl Random for SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

/// Picks the candidate that serves the work, by `strategy`; `None` when no candidate
/// takes work. `turn` counts this node's choices (round robin's position); `here` is this
/// node's zone.
pub fn choose(
    strategy: Strategy,
    candidates: &[Candidate],
    here: Option<&str>,
    weights: &Weights,
    turn: u64,
    rng: &mut impl Random,
) -> Option<usize> {
    let open: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].state == NodeState::Serving)
        .collect();
    if open.is_empty() {
        return None;
    }
    let by_cost =
        |pool: &[usize], rng: &mut dyn Random| two_choices(pool, candidates, here, weights, rng);
    // This node, when it serves and costs at most HOP_COST more than the pick.
    let stay = |pick: Option<usize>| {
        let mine = open.iter().copied().find(|&i| candidates[i].local);
        match (mine, pick) {
            (Some(m), Some(p))
                if cost(&candidates[m], here, weights)
                    <= cost(&candidates[p], here, weights) + HOP_COST =>
            {
                Some(m)
            }
            _ => pick,
        }
    };
    match strategy {
        Strategy::Local => open
            .iter()
            .copied()
            .find(|&i| candidates[i].local)
            .or_else(|| by_cost(&open, rng)),
        Strategy::RoundRobin => Some(open[(turn % open.len() as u64) as usize]),
        Strategy::LeastConnections => open
            .iter()
            .copied()
            .min_by_key(|&i| (candidates[i].load(), !candidates[i].local)),
        Strategy::Locality => {
            let near: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&i| {
                    let c = &candidates[i];
                    c.local || (here.is_some() && c.zone.as_deref() == here)
                })
                .collect();
            if near.is_empty() {
                by_cost(&open, rng)
            } else {
                stay(by_cost(&near, rng))
            }
        }
        Strategy::Adaptive => stay(by_cost(&open, rng)),
    }
}

/// Power of two choices: two distinct candidates of `pool` at random, the cheaper wins
/// (the first on a tie). Choosing the cheapest of all would send every node's work to
/// the same target on the same stale figures; two at random spreads it while still
/// avoiding a slow or loaded one.
fn two_choices(
    pool: &[usize],
    candidates: &[Candidate],
    here: Option<&str>,
    weights: &Weights,
    rng: &mut dyn Random,
) -> Option<usize> {
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(n - 1)) % n;
            let (a, b) = (pool[a], pool[b]);
            let (ca, cb) = (
                cost(&candidates[a], here, weights),
                cost(&candidates[b], here, weights),
            );
            Some(if cb < ca { b } else { a })
        }
    }
}

/// A peak-decayed moving average of latency (as Finagle, Linkerd and tower measure a
/// peer): a sample above the average takes over at once, one below pulls it down with
/// a time constant, so a peer that turns slow is avoided immediately and trusted again
/// only gradually.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    value_ms: f64,
    /// Seconds since some origin of the caller's, at the last sample.
    at: f64,
    /// The time constant.
    tau: f64,
}

impl PeakEwma {
    /// An average with time constant `tau`, starting at `initial`.
    pub fn new(initial: Duration, tau: Duration) -> PeakEwma {
        PeakEwma {
            value_ms: initial.as_secs_f64() * 1000.0,
            at: 0.0,
            tau: tau.as_secs_f64().max(1e-3),
        }
    }

    /// Adds a sample `rtt` taken at `now` (seconds since the caller's origin).
    pub fn observe(&mut self, rtt: Duration, now: f64) {
        let ms = rtt.as_secs_f64() * 1000.0;
        let base = self.at(now).as_secs_f64() * 1000.0;
        if ms > base {
            self.value_ms = ms;
        } else {
            let elapsed = (now - self.at).max(0.0);
            let keep = (-elapsed / self.tau).exp();
            self.value_ms = base * keep + ms * (1.0 - keep);
        }
        self.at = now;
    }

    /// The average as of the last sample.
    pub fn get(&self) -> Duration {
        Duration::from_secs_f64(self.value_ms / 1000.0)
    }

    /// The average at `now`: after one time constant without samples it decays towards
    /// zero, so a peer avoided for being slow (and thus no longer measured) is tried
    /// again after a while, and measured afresh, instead of being shunned for good.
    pub fn at(&self, now: f64) -> Duration {
        let idle = (now - self.at - self.tau).max(0.0);
        Duration::from_secs_f64(self.value_ms * (-idle / self.tau).exp() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> Candidate {
        Candidate {
            node: id,
            local: id == 1,
            state: NodeState::Serving,
            zone: None,
            gossiped: Some((Figures::default(), Duration::from_millis(500))),
            sent_in_flight: 0,
            latency: Some(Duration::from_millis(1)),
            up_for: Duration::from_secs(60),
        }
    }

    fn counts(strategy: Strategy, cands: &[Candidate], rounds: usize, seed: u64) -> Vec<usize> {
        let mut rng = SplitMix(seed);
        let mut n = vec![0; cands.len()];
        for turn in 0..rounds {
            let w = Weights::default();
            if let Some(i) = choose(strategy, cands, None, &w, turn as u64, &mut rng) {
                n[i] += 1;
            }
        }
        n
    }

    #[test]
    fn equal_stale_figures_spread_the_choices_instead_of_herding() {
        // Every figure stale and equal: all candidates cost the same, and the choices
        // still spread over all of them.
        let mut cands: Vec<Candidate> = (1..=4).map(node).collect();
        for c in &mut cands {
            c.gossiped = Some((
                Figures {
                    in_flight: 3,
                    queued: 0,
                    cpu: 0.5,
                    hot: false,
                },
                Duration::from_secs(30),
            ));
            c.local = false;
        }
        let n = counts(Strategy::Adaptive, &cands, 4000, 7);
        for (i, &k) in n.iter().enumerate() {
            assert!(k > 4000 / 4 / 2, "candidate {i} got {k} of 4000: {n:?}");
        }
    }

    #[test]
    fn a_slow_or_loaded_candidate_loses_and_a_dead_or_draining_one_is_never_chosen() {
        let mut cands: Vec<Candidate> = (1..=3).map(node).collect();
        cands[1].latency = Some(Duration::from_millis(200));
        let n = counts(Strategy::Adaptive, &cands, 3000, 1);
        // The slow one wins only when drawn with itself, which two distinct draws never do.
        assert_eq!(n[1], 0, "{n:?}");
        cands[1].latency = Some(Duration::from_millis(1));
        cands[2].gossiped = Some((
            Figures {
                in_flight: 40,
                queued: 10,
                cpu: 0.95,
                hot: false,
            },
            Duration::ZERO,
        ));
        let n = counts(Strategy::Adaptive, &cands, 3000, 2);
        assert_eq!(n[2], 0, "{n:?}");
        cands[0].state = NodeState::Dead;
        cands[2].state = NodeState::Draining;
        for strategy in [
            Strategy::Adaptive,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Locality,
            Strategy::Local,
        ] {
            let n = counts(strategy, &cands, 500, 3);
            assert_eq!(n, vec![0, 500, 0], "{}", strategy.name());
        }
        for c in &mut cands {
            c.state = NodeState::Dead;
        }
        let mut rng = SplitMix(4);
        let w = Weights::default();
        assert_eq!(
            choose(Strategy::Adaptive, &cands, None, &w, 0, &mut rng),
            None
        );
    }

    #[test]
    fn what_this_node_sent_counts_before_gossip_catches_up() {
        let mut cands: Vec<Candidate> = (1..=2).map(node).collect();
        let w = Weights::default();
        let before = cost(&cands[1], None, &w);
        cands[1].sent_in_flight = 20;
        assert!(cost(&cands[1], None, &w) > before);
        let n = counts(Strategy::Adaptive, &cands, 1000, 5);
        assert_eq!(n, vec![1000, 0]);
        assert_eq!(
            counts(Strategy::LeastConnections, &cands, 10, 5),
            vec![10, 0]
        );
    }

    #[test]
    fn adaptive_keeps_work_here_until_this_node_is_clearly_worse() {
        let mut cands: Vec<Candidate> = (1..=3).map(node).collect();
        // Peers measured through the relay are a hop slower than this node's own
        // service time: the work stays.
        cands[1].latency = Some(Duration::from_micros(1500));
        cands[2].latency = Some(Duration::from_micros(1500));
        assert_eq!(
            counts(Strategy::Adaptive, &cands, 1000, 3),
            vec![1000, 0, 0]
        );
        // This node turns slow: its work goes to the others, spread over both.
        cands[0].latency = Some(Duration::from_millis(40));
        let n = counts(Strategy::Adaptive, &cands, 1000, 3);
        assert_eq!(n[0], 0, "{n:?}");
        assert!(n[1] > 300 && n[2] > 300, "{n:?}");
        // Flagged hot instead: the same.
        cands[0].latency = Some(Duration::from_millis(1));
        cands[0].gossiped = Some((
            Figures {
                hot: true,
                ..Figures::default()
            },
            Duration::ZERO,
        ));
        let n = counts(Strategy::Adaptive, &cands, 1000, 4);
        assert_eq!(n[0], 0, "{n:?}");
    }

    #[test]
    fn a_node_that_just_came_back_warms_up() {
        let mut c = node(2);
        let w = Weights::default();
        let settled = cost(&c, None, &w);
        c.up_for = Duration::ZERO;
        let fresh = cost(&c, None, &w);
        c.up_for = WARM_UP / 2;
        let half = cost(&c, None, &w);
        assert!(fresh > half && half > settled, "{fresh} {half} {settled}");
    }

    #[test]
    fn locality_prefers_the_zone_then_any_and_local_prefers_this_node() {
        let mut cands: Vec<Candidate> = (1..=3).map(node).collect();
        cands[0].local = false;
        cands[0].zone = Some("a".into());
        cands[1].zone = Some("b".into());
        cands[2].zone = Some("b".into());
        let mut rng = SplitMix(9);
        let w = Weights::default();
        for turn in 0..200 {
            let i = choose(Strategy::Locality, &cands, Some("b"), &w, turn, &mut rng);
            assert!(matches!(i, Some(1) | Some(2)), "{i:?}");
        }
        cands[1].state = NodeState::Dead;
        cands[2].state = NodeState::Dead;
        assert_eq!(
            choose(Strategy::Locality, &cands, Some("b"), &w, 0, &mut rng),
            Some(0)
        );
        let mut cands: Vec<Candidate> = (1..=3).map(node).collect();
        cands[0].gossiped = Some((
            Figures {
                in_flight: 100,
                queued: 0,
                cpu: 1.0,
                hot: false,
            },
            Duration::ZERO,
        ));
        assert_eq!(counts(Strategy::Local, &cands, 100, 1), vec![100, 0, 0]);
        assert_eq!(
            counts(Strategy::RoundRobin, &cands, 300, 1),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn every_name_set_routing_takes_is_a_strategy_of_that_name() {
        // The query crate checks SET routing against its list; the two must agree.
        for name in eddy_query::ROUTING_STRATEGIES {
            assert_eq!(Strategy::parse(name).map(Strategy::name), Some(name));
        }
        assert_eq!(eddy_query::ROUTING_STRATEGIES.len(), 5);
    }

    #[test]
    fn peak_ewma_takes_a_peak_at_once_and_forgets_it_gradually() {
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(1));
        e.observe(Duration::from_millis(100), 0.0);
        assert_eq!(e.get(), Duration::from_millis(100));
        e.observe(Duration::from_millis(1), 0.1);
        let after_short = e.get();
        assert!(after_short > Duration::from_millis(80), "{after_short:?}");
        e.observe(Duration::from_millis(1), 5.1);
        assert!(e.get() < Duration::from_millis(3), "{:?}", e.get());
    }

    #[test]
    fn peak_ewma_unsampled_decays_so_the_peer_is_tried_again() {
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(2));
        e.observe(Duration::from_millis(200), 10.0);
        // Within one time constant it holds; then it falls towards zero.
        assert_eq!(e.at(11.5), Duration::from_millis(200));
        let later = e.at(18.0);
        assert!(later < Duration::from_millis(12), "{later:?}");
        // A sample after the idle time starts from the decayed value: a fast answer
        // brings it down, a slow one takes over again at once.
        let mut fast = e;
        fast.observe(Duration::from_millis(2), 18.0);
        assert!(fast.get() < Duration::from_millis(12), "{:?}", fast.get());
        e.observe(Duration::from_millis(150), 18.0);
        assert_eq!(e.get(), Duration::from_millis(150));
    }

    proptest::proptest! {
        /// Whatever the figures and the strategy: a choice is always a serving candidate,
        /// and there is one whenever a candidate serves.
        #[test]
        fn only_a_serving_candidate_is_ever_chosen(
            nodes in proptest::collection::vec(
                (0u8..3, 0u32..100, 0u32..50, 0.0f64..1.0, 0u64..5000, 0u64..500, 0u64..20_000),
                1..7,
            ),
            strategy in 0usize..5,
            seed in proptest::num::u64::ANY,
            turn in 0u64..1000,
        ) {
            let cands: Vec<Candidate> = nodes
                .iter()
                .enumerate()
                .map(|(i, &(state, in_flight, sent, cpu, age_ms, lat_ms, up_ms))| Candidate {
                    node: i as u64 + 1,
                    local: i == 0,
                    state: [NodeState::Serving, NodeState::Draining, NodeState::Dead][state as usize],
                    zone: (i % 2 == 0).then(|| "a".to_owned()),
                    gossiped: Some((
                        Figures { in_flight, queued: 0, cpu, hot: false },
                        Duration::from_millis(age_ms),
                    )),
                    sent_in_flight: sent,
                    latency: Some(Duration::from_millis(lat_ms)),
                    up_for: Duration::from_millis(up_ms),
                })
                .collect();
            let strategy = [
                Strategy::Adaptive,
                Strategy::RoundRobin,
                Strategy::LeastConnections,
                Strategy::Locality,
                Strategy::Local,
            ][strategy];
            let mut rng = SplitMix(seed);
            let chosen = choose(strategy, &cands, Some("a"), &Weights::default(), turn, &mut rng);
            let serving = cands.iter().any(|c| c.state == NodeState::Serving);
            proptest::prop_assert_eq!(chosen.is_some(), serving);
            if let Some(i) = chosen {
                proptest::prop_assert_eq!(cands[i].state, NodeState::Serving);
            }
        }
    }

    #[test]
    fn strategies_parse_by_their_set_routing_names() {
        for s in [
            Strategy::Adaptive,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Locality,
            Strategy::Local,
        ] {
            assert_eq!(Strategy::parse(s.name()), Some(s));
        }
        assert_eq!(Strategy::parse(" ADAPTIVE "), Some(Strategy::Adaptive));
        assert_eq!(Strategy::parse("fastest"), None);
    }
}
