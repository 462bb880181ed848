//! The node's router: gathers what [`crate::router`] weighs (the holders of what a
//! statement reads, their gossiped figures, this node's own view of each) and decides
//! where a statement or subscription runs. The relay asks it for every statement;
//! `EXPLAIN ROUTE` asks it to show its reasoning; both get the same [`Decision`].
//!
//! Rules, in order (docs/architecture.md, "Routing"):
//! 1. reads no Raft object, or writes blind: here;
//! 2. the session holds state here (an open block): here, counted as pinned;
//! 3. read-modify-write: the groups' leader;
//! 4. a subscription (COPY SUBSCRIBE, a cursor, LISTEN): the holder streaming the fewest
//!    subscriptions, placed once;
//! 5. any other read: the session's strategy over the holders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_consensus::{Cluster, Liveness, Member};
use eddy_query::{Description, Holder, NodeFigures, RouteRow, SessionChange, Writes};
use parking_lot::Mutex;

use crate::load::{self, Meter};
use crate::router::{self, Candidate, Figures, NodeState, SplitMix, Strategy, Weights};

/// Where a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this node.
    Here,
    /// On another node: the Postgres addresses to try, the chosen one first.
    Nodes(Vec<String>),
}

/// The router's answer for one statement.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Where it runs.
    pub target: Target,
    /// Why, in a few words.
    pub reason: &'static str,
    /// The candidates as the router saw them (for `EXPLAIN ROUTE`).
    pub rows: Vec<RouteRow>,
}

/// The most a peer never measured is assumed to take (see `candidates`).
const UNKNOWN_LATENCY: Duration = Duration::from_millis(5);

/// Who asks for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The relay, about to run the statement: the decision is counted in `eddy.routing`.
    Run,
    /// The relay, for a Describe: the same choice, not counted.
    Describe,
    /// `EXPLAIN ROUTE`, itself a statement running here: not counted, and not counted
    /// in this node's own load either.
    Explain,
}

/// Why a session must run its statement here whatever the strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// A block is open (BEGIN without COMMIT or ROLLBACK yet).
    Block,
}

impl Pin {
    fn name(self) -> &'static str {
        match self {
            Pin::Block => "block",
        }
    }
}

/// One per node, shared by every connection.
pub struct Routing {
    cluster: Cluster,
    meter: Arc<Meter>,
    weights: Weights,
    /// The strategy of a session that sets none (`[routing] strategy`).
    default: Strategy,
    started: Instant,
    turn: AtomicU64,
    rng: Mutex<SplitMix>,
    /// Per node: whether it was last seen live, and since when.
    seen: Mutex<HashMap<u64, (bool, Instant)>>,
    /// This node is flagged as a hotspot by its load loop.
    hot: AtomicBool,
}

impl Routing {
    /// The router of the node running `cluster`, measuring with `meter`.
    pub fn new(cluster: Cluster, meter: Arc<Meter>, default: Strategy, weights: Weights) -> Self {
        let seed = cluster.id().wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ chrono::Utc::now().timestamp_micros() as u64;
        Routing {
            cluster,
            meter,
            weights,
            default,
            started: Instant::now(),
            turn: AtomicU64::new(0),
            rng: Mutex::new(SplitMix(seed)),
            seen: Mutex::new(HashMap::new()),
            hot: AtomicBool::new(false),
        }
    }

    /// The node's meter.
    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// The strategy a session's `routing` setting names (the node's default if unset or
    /// unknown; SET checks the names).
    pub fn strategy(&self, setting: Option<&str>) -> Strategy {
        setting.and_then(Strategy::parse).unwrap_or(self.default)
    }

    /// The default strategy's name (a new session's `routing`).
    pub fn default_strategy(&self) -> Strategy {
        self.default
    }

    /// True while this node is draining (`ALTER CLUSTER DRAIN NODE`).
    pub fn draining(&self) -> bool {
        self.cluster.draining()
    }

    /// True when the cluster has other nodes.
    pub fn has_peers(&self) -> bool {
        self.cluster.node_count() > 1
    }

    /// Marks this node a hotspot (or not).
    pub fn set_hot(&self, on: bool) {
        self.hot.store(on, Relaxed);
    }

    /// True while this node is flagged hot.
    pub fn hot(&self) -> bool {
        self.hot.load(Relaxed)
    }

    /// `EXPLAIN ROUTE`: the candidates for `d` as the session's `strategy` weighs them,
    /// the chosen one marked; with nothing to weigh, this node's row and why it runs here.
    pub fn explain(
        &self,
        d: &Description,
        holders: Option<Vec<Holder>>,
        strategy: &str,
    ) -> Vec<RouteRow> {
        let decision = self.decide(
            d,
            holders,
            self.strategy(Some(strategy)),
            None,
            Purpose::Explain,
        );
        if !decision.rows.is_empty() {
            return decision.rows;
        }
        let me = self.cluster.id();
        vec![RouteRow {
            node: me,
            pg_addr: self
                .cluster
                .nodes()
                .get(&me)
                .map(|n| n.pg_addr.clone())
                .unwrap_or_default(),
            state: if self.draining() {
                "draining"
            } else {
                "serving"
            }
            .into(),
            leader: false,
            // Not counting the EXPLAIN itself, as for the candidates.
            load: u64::from(self.meter.in_flight().saturating_sub(1)),
            latency_ms: self.meter.service_time().map(|l| l.as_secs_f64() * 1000.0),
            cpu: None,
            figures_age_ms: None,
            cost: None,
            chosen: true,
            reason: decision.reason.to_owned(),
        }]
    }

    /// Where the statement `d` runs, among `holders` (`Engine::route`), for a session
    /// with `strategy` and `pin`, asked for `purpose`.
    pub fn decide(
        &self,
        d: &Description,
        holders: Option<Vec<Holder>>,
        strategy: Strategy,
        pin: Option<Pin>,
        purpose: Purpose,
    ) -> Decision {
        let count = purpose == Purpose::Run;
        let here = |reason| Decision {
            target: Target::Here,
            reason,
            rows: Vec::new(),
        };
        if d.is_blind_write() {
            return here("a blind write runs where it arrives");
        }
        let Some(holders) = holders else {
            return here("it reads no replicated object");
        };
        let mine = holders.iter().position(|h| h.this_node);
        // One look at the members for the whole decision.
        let members = self.cluster.members();
        let cands = self.candidates(&members, &holders, purpose == Purpose::Explain);
        let zone = own_zone(&members);
        let mut rows = self.rows(&holders, &cands, zone.as_deref());
        let (chosen, reason) = match (pin, mine) {
            (Some(p), Some(m)) => {
                if count {
                    self.meter.count("pinned", p.name());
                }
                (Some(m), "the session holds state here")
            }
            _ => self.choose(d, &members, &holders, &cands, strategy, zone.as_deref()),
        };
        let Some(chosen) = chosen else {
            if count {
                self.meter.count("failures", "no serving replica");
            }
            return Decision {
                target: Target::Nodes(Vec::new()),
                reason: "no node holding a replica takes work",
                rows,
            };
        };
        if let Some(r) = rows.get_mut(chosen) {
            r.chosen = true;
            r.reason = reason.to_owned();
        }
        if count {
            self.meter.count("routed", strategy.name());
            if cands[chosen].local || (zone.is_some() && cands[chosen].zone == zone) {
                self.meter.count("locality_hits", "");
            }
            if is_subscription(d) {
                self.meter.count("subscriptions_placed", "");
            }
        }
        if holders[chosen].this_node {
            return Decision {
                target: Target::Here,
                reason,
                rows,
            };
        }
        if count {
            self.meter.count("relayed", "");
        }
        // The chosen node first, then the other serving ones by cost (a read whose node
        // goes away runs on the next).
        let mut order: Vec<usize> = (0..holders.len())
            .filter(|&i| i != chosen && cands[i].state == NodeState::Serving)
            .collect();
        order.sort_by(|&a, &b| {
            let ca = router::cost(&cands[a], zone.as_deref(), &self.weights);
            let cb = router::cost(&cands[b], zone.as_deref(), &self.weights);
            ca.total_cmp(&cb)
        });
        let mut addrs = vec![holders[chosen].pg_addr.clone()];
        // This node last: if the others do not answer (one just died and is not yet
        // known dead), the statement runs here, relayed to itself (a relayed statement
        // runs where it arrives).
        order.sort_by_key(|&i| holders[i].this_node);
        addrs.extend(order.into_iter().map(|i| holders[i].pg_addr.clone()));
        Decision {
            target: Target::Nodes(addrs),
            reason,
            rows,
        }
    }

    /// Rules 3 to 5 of the module's list: the candidate chosen, and why.
    fn choose(
        &self,
        d: &Description,
        members: &[Member],
        holders: &[Holder],
        cands: &[Candidate],
        strategy: Strategy,
        zone: Option<&str>,
    ) -> (Option<usize>, &'static str) {
        let serving = |i: &usize| cands[*i].state == NodeState::Serving;
        if d.writes == Writes::Rows {
            if let Some(l) = (0..holders.len())
                .find(|i| holders[*i].leader)
                .filter(serving)
            {
                return (Some(l), "a read-modify-write runs at the leader");
            }
        }
        if is_subscription(d) {
            let figures: HashMap<u64, NodeFigures> = members
                .iter()
                .filter_map(|m| Some((m.node_id, load::decode(&m.load)?)))
                .collect();
            let subs = |i: usize| {
                if cands[i].local {
                    self.meter.totals().2
                } else {
                    figures.get(&cands[i].node).map_or(0, |f| f.subscriptions)
                }
            };
            let pick = (0..cands.len())
                .filter(serving)
                .min_by_key(|&i| (subs(i), !cands[i].local, cands[i].node));
            return (
                pick,
                "a subscription goes to the holder streaming the fewest",
            );
        }
        let turn = self.turn.fetch_add(1, Relaxed);
        let pick = router::choose(
            strategy,
            cands,
            zone,
            &self.weights,
            turn,
            &mut *self.rng.lock(),
        );
        let reason = match strategy {
            Strategy::Adaptive => {
                "the lower cost of two random candidates, this node within a hop's cost"
            }
            Strategy::RoundRobin => "the next in turn",
            Strategy::LeastConnections => "the fewest statements in flight",
            Strategy::Locality => "this zone first, then by cost",
            Strategy::Local => "this node, when it holds a replica",
        };
        (pick, reason)
    }

    /// The router's view of each holder; `asking` is a statement running here that is
    /// not part of this node's load.
    fn candidates(&self, members: &[Member], holders: &[Holder], asking: bool) -> Vec<Candidate> {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        holders
            .iter()
            .map(|h| {
                let member = members.iter().find(|m| m.node_id == h.node);
                let live = member.is_none_or(|m| m.liveness != Liveness::Dead);
                // When it came back: the first sighting counts as long up while this
                // router is young (it is the one that just came back).
                let since = seen.entry(h.node).or_insert_with(|| {
                    let long_ago = now.checked_sub(router::WARM_UP).unwrap_or(now);
                    (
                        live,
                        if now - self.started < router::WARM_UP {
                            long_ago
                        } else {
                            now
                        },
                    )
                });
                if since.0 != live {
                    *since = (live, now);
                }
                let up_for = if live { now - since.1 } else { Duration::ZERO };
                if h.this_node {
                    let mut mine = self.own_figures(member);
                    mine.in_flight = mine.in_flight.saturating_sub(u32::from(asking));
                    return Candidate {
                        node: h.node,
                        local: true,
                        state: if self.draining() {
                            NodeState::Draining
                        } else {
                            NodeState::Serving
                        },
                        zone: member.map(|m| m.zone.clone()).filter(|z| !z.is_empty()),
                        gossiped: Some((mine, Duration::ZERO)),
                        sent_in_flight: 0,
                        latency: self.meter.service_time(),
                        up_for: router::WARM_UP,
                    };
                }
                let gossiped = member.and_then(|m| {
                    let f = load::decode(&m.load)?;
                    let age = m.load_since.map_or(Duration::MAX, |t| now - t);
                    Some((f, age))
                });
                let state = match &gossiped {
                    _ if !live => NodeState::Dead,
                    Some((f, age)) if f.draining && *age <= router::STALE_AFTER => {
                        NodeState::Draining
                    }
                    _ => NodeState::Serving,
                };
                let (sent, relayed) = self.meter.peer(&h.pg_addr);
                // What this node measured of it, or (not measured lately) what it says
                // of itself: the larger, so that neither hides a slow node.
                let reported = gossiped
                    .as_ref()
                    .filter(|(_, age)| *age <= router::STALE_AFTER)
                    .map(|(f, _)| Duration::from_micros(f.service_us));
                // Nothing measured at all: as fast as this node, up to a few ms, so that
                // a healthy node keeps its work (only load, CPU and the hop tell them
                // apart) and a slow one tries the others.
                let reported = reported.filter(|d| !d.is_zero());
                let latency = match (relayed, reported) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (None, None) => self.meter.service_time().map(|l| l.min(UNKNOWN_LATENCY)),
                    (a, b) => a.or(b),
                };
                Candidate {
                    node: h.node,
                    local: false,
                    state,
                    zone: member.map(|m| m.zone.clone()).filter(|z| !z.is_empty()),
                    gossiped: gossiped.map(|(f, age)| (router_figures(&f), age)),
                    sent_in_flight: sent,
                    latency,
                    up_for,
                }
            })
            .collect()
    }

    /// `EXPLAIN ROUTE`'s rows for `cands`.
    fn rows(&self, holders: &[Holder], cands: &[Candidate], zone: Option<&str>) -> Vec<RouteRow> {
        holders
            .iter()
            .zip(cands)
            .map(|(h, c)| {
                let fresh = c
                    .gossiped
                    .as_ref()
                    .filter(|(_, age)| *age <= router::STALE_AFTER);
                RouteRow {
                    node: h.node,
                    pg_addr: h.pg_addr.clone(),
                    state: match c.state {
                        NodeState::Serving => "serving",
                        NodeState::Draining => "draining",
                        NodeState::Dead => "dead",
                    }
                    .to_owned(),
                    leader: h.leader,
                    load: u64::from(
                        fresh.map_or(0, |(f, _)| f.in_flight + f.queued) + c.sent_in_flight,
                    ),
                    latency_ms: c.latency.map(|l| l.as_secs_f64() * 1000.0),
                    cpu: fresh.map(|(f, _)| f.cpu),
                    figures_age_ms: c.gossiped.as_ref().and_then(|(_, age)| {
                        (*age != Duration::MAX).then(|| age.as_millis() as u64)
                    }),
                    cost: (c.state == NodeState::Serving)
                        .then(|| router::cost(c, zone, &self.weights)),
                    chosen: false,
                    reason: match c.state {
                        NodeState::Serving => "",
                        NodeState::Draining => "draining: takes no new work",
                        NodeState::Dead => "dead",
                    }
                    .to_owned(),
                }
            })
            .collect()
    }

    /// This node's own figures as the router weighs them (not waiting for gossip), from
    /// its member row.
    fn own_figures(&self, me: Option<&Member>) -> Figures {
        let gossiped = me.and_then(|m| load::decode(&m.load)).unwrap_or_default();
        Figures {
            in_flight: self.meter.in_flight(),
            hot: self.hot(),
            ..router_figures(&gossiped)
        }
    }
}

/// This node's zone, if it has one.
fn own_zone(members: &[Member]) -> Option<String> {
    members
        .iter()
        .find(|m| m.this_node)
        .map(|m| m.zone.clone())
        .filter(|z| !z.is_empty())
}

/// The router's part of a node's figures.
fn router_figures(f: &NodeFigures) -> Figures {
    Figures {
        in_flight: f.in_flight,
        queued: f.queued,
        cpu: f64::from(f.cpu_permille) / 1000.0,
        hot: f.hot,
    }
}

/// A statement that starts a stream of a topic's messages (placed by subscription load).
fn is_subscription(d: &Description) -> bool {
    matches!(
        d.session,
        SessionChange::Stream | SessionChange::Listen(_) | SessionChange::Declare(_)
    ) && !d.reads.is_empty()
}
