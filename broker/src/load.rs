//! What this node measures of its own work and of each peer it relays to (issue 24,
//! docs/architecture.md "Routing"): the figures it gossips about once a second, the
//! per-peer figures only it knows, the latency histograms of `eddy.metrics` and
//! `/metrics`, and the counters of `eddy.routing`.
//!
//! ```text
//!  connection loop ─► Meter::statement() guard ─► in flight, service time, histogram
//!  relay           ─► Meter::relay(peer) guard  ─► peer in flight, peer PeakEwma
//!  subscription    ─► Meter::subscription()     ─► live count, bytes, end-to-end latency
//!  server.rs load loop ─► Meter::figures() ─► gossip (`load:*` keys) ─► other nodes' routers
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_query::{CounterRow, MetricRow, NodeFigures};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::router::PeakEwma;

/// The statements run here, as their latency is kept (`eddy.metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A write that reads nothing first (INSERT, COPY FROM): `publish`.
    Publish,
    /// A statement that only reads: `query` (the router's service time is theirs).
    Read,
    /// Any other (read-modify-writes, DDL): `query` too.
    Write,
}

/// The histograms kept, by name: the statements run here (see [`Work`]), those relayed
/// to another node as the client waits for them, and messages from their publish
/// timestamp to their delivery to a subscriber here.
const HISTOGRAMS: [&str; 4] = ["publish", "query", "relay", "subscription"];
const RELAY: usize = 2;
const SUBSCRIPTION: usize = 3;

impl Work {
    fn histogram(self) -> usize {
        match self {
            Work::Publish => 0,
            Work::Read | Work::Write => 1,
        }
    }
}

/// How fast a latency average forgets: the time constant of every [`PeakEwma`] here.
const DECAY: Duration = Duration::from_secs(2);
/// Largest latency a histogram keeps apart (longer ones count as this).
const HIST_MAX_US: u64 = 60_000_000;

/// One peer as this node sees it.
struct Peer {
    /// Statements this node sent there and has not had answered.
    in_flight: u32,
    /// Latency of those answered (`None` until one is).
    latency: Option<PeakEwma>,
}

/// This node's own figures and its view of its peers. One per node, shared by every
/// connection.
pub struct Meter {
    origin: Instant,
    in_flight: AtomicU32,
    finished: AtomicU64,
    /// Decayed service time of the statements run here.
    service: Mutex<Option<PeakEwma>>,
    subscriptions: AtomicU32,
    subscription_bytes: AtomicU64,
    histograms: Mutex<Vec<Histogram<u64>>>,
    peers: Mutex<HashMap<String, Peer>>,
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            finished: AtomicU64::new(0),
            service: Mutex::new(None),
            subscriptions: AtomicU32::new(0),
            subscription_bytes: AtomicU64::new(0),
            histograms: Mutex::new(
                HISTOGRAMS
                    .iter()
                    .map(|_| {
                        Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                            .expect("valid histogram bounds")
                    })
                    .collect(),
            ),
            peers: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Meter {
    /// Seconds since the meter started (the clock of its averages).
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// A statement starts running here; the guard counts it until dropped, then records
    /// its latency as the work [`Timing::set_work`] names (reads: the service time too).
    pub fn statement(self: &Arc<Self>) -> Timing {
        self.in_flight.fetch_add(1, Relaxed);
        Timing {
            meter: self.clone(),
            started: Instant::now(),
            work: None,
        }
    }

    /// A statement is relayed to the node at `addr`; the guard counts it there until
    /// dropped; [`Relayed::answered`] records its latency.
    pub fn relay(self: &Arc<Self>, addr: &str) -> Relayed {
        self.peers
            .lock()
            .entry(addr.to_owned())
            .or_insert(Peer {
                in_flight: 0,
                latency: None,
            })
            .in_flight += 1;
        Relayed {
            meter: self.clone(),
            addr: addr.to_owned(),
            started: Instant::now(),
        }
    }

    /// A subscription streams from here until the guard is dropped.
    pub fn subscription(self: &Arc<Self>) -> Streaming {
        self.subscriptions.fetch_add(1, Relaxed);
        Streaming(self.clone())
    }

    /// `bytes` were sent to a subscriber, holding messages published at `published`
    /// (microseconds since the epoch).
    pub fn delivered(&self, bytes: u64, published: impl Iterator<Item = i64>) {
        self.subscription_bytes.fetch_add(bytes, Relaxed);
        let now = chrono::Utc::now().timestamp_micros();
        let mut h = self.histograms.lock();
        for ts in published {
            record(
                &mut h[SUBSCRIPTION],
                Duration::from_micros(now.saturating_sub(ts).max(0) as u64),
            );
        }
    }

    /// What this node has in flight at the peer `addr`, and the peak-decayed latency of
    /// what it sent there (`None`: nothing answered yet).
    pub fn peer(&self, addr: &str) -> (u32, Option<Duration>) {
        let now = self.now();
        self.peers.lock().get(addr).map_or((0, None), |p| {
            (p.in_flight, p.latency.as_ref().map(|l| l.at(now)))
        })
    }

    /// The decayed service time of statements run here (`None`: none yet).
    pub fn service_time(&self) -> Option<Duration> {
        let now = self.now();
        self.service.lock().as_ref().map(|s| s.at(now))
    }

    /// Statements running here now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Counts one event of `eddy.routing`.
    pub fn count(&self, counter: &'static str, detail: &str) {
        *self
            .counters
            .lock()
            .entry((counter, detail.to_owned()))
            .or_default() += 1;
    }

    /// `eddy.routing`'s rows.
    pub fn counters(&self) -> Vec<CounterRow> {
        self.counters
            .lock()
            .iter()
            .map(|((counter, detail), value)| CounterRow {
                counter: (*counter).to_owned(),
                detail: detail.clone(),
                value: *value,
            })
            .collect()
    }

    /// `eddy.metrics`' rows: each kind of work's percentiles since the node started.
    pub fn metrics(&self) -> Vec<MetricRow> {
        let h = self.histograms.lock();
        let ms = |v: u64| v as f64 / 1000.0;
        HISTOGRAMS
            .iter()
            .zip(h.iter())
            .map(|(name, h)| MetricRow {
                metric: (*name).to_owned(),
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p90_ms: ms(h.value_at_quantile(0.9)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
            })
            .collect()
    }

    /// Totals for the load loop: statements finished and subscription bytes sent since
    /// the start, and subscriptions live now.
    pub fn totals(&self) -> (u64, u64, u32) {
        (
            self.finished.load(Relaxed),
            self.subscription_bytes.load(Relaxed),
            self.subscriptions.load(Relaxed),
        )
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, HIST_MAX_US);
    h.record(us).expect("clamped into the histogram's bounds");
}

/// A statement running here ([`Meter::statement`]).
pub struct Timing {
    meter: Arc<Meter>,
    started: Instant,
    work: Option<Work>,
}

impl Timing {
    /// Names the work, for its histogram.
    pub fn set_work(&mut self, work: Work) {
        self.work = Some(work);
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        let m = &self.meter;
        let took = self.started.elapsed();
        m.in_flight.fetch_sub(1, Relaxed);
        m.finished.fetch_add(1, Relaxed);
        if self.work == Some(Work::Read) {
            let now = m.now();
            m.service
                .lock()
                .get_or_insert_with(|| PeakEwma::new(took, DECAY))
                .observe(took, now);
        }
        if let Some(w) = self.work {
            record(&mut m.histograms.lock()[w.histogram()], took);
        }
    }
}

/// A statement relayed to a peer ([`Meter::relay`]).
pub struct Relayed {
    meter: Arc<Meter>,
    addr: String,
    started: Instant,
}

impl Relayed {
    /// The peer answered: its latency is recorded.
    pub fn answered(self) {
        let took = self.started.elapsed();
        let now = self.meter.now();
        if let Some(p) = self.meter.peers.lock().get_mut(&self.addr) {
            p.latency
                .get_or_insert_with(|| PeakEwma::new(took, DECAY))
                .observe(took, now);
        }
        record(&mut self.meter.histograms.lock()[RELAY], took);
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if let Some(p) = self.meter.peers.lock().get_mut(&self.addr) {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }
}

/// A subscription streaming from here ([`Meter::subscription`]).
pub struct Streaming(Arc<Meter>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Relaxed);
    }
}

/// The gossip keys of the figures (`load:<key>`), and back.
pub fn encode(f: &NodeFigures) -> Vec<(&'static str, String)> {
    vec![
        (
            "state",
            if f.draining { "draining" } else { "serving" }.to_owned(),
        ),
        ("hot", u8::from(f.hot).to_string()),
        ("connections", f.connections.to_string()),
        ("in_flight", f.in_flight.to_string()),
        ("queued", f.queued.to_string()),
        ("service_us", f.service_us.to_string()),
        ("statements_per_s", f.statements_per_s.to_string()),
        ("cpu_permille", f.cpu_permille.to_string()),
        ("subscriptions", f.subscriptions.to_string()),
        (
            "subscription_bytes_per_s",
            f.subscription_bytes_per_s.to_string(),
        ),
        ("leaders", f.leaders.to_string()),
        ("writes_per_s", f.writes_per_s.to_string()),
    ]
}

/// The figures a node gossiped (`None`: it gossiped none); a figure missing or
/// unreadable counts as 0.
pub fn decode(load: &BTreeMap<String, String>) -> Option<NodeFigures> {
    load.get("state")?;
    let n = |k: &str| load.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let n32 = |k: &str| u32::try_from(n(k)).unwrap_or(u32::MAX);
    Some(NodeFigures {
        draining: load.get("state").map(String::as_str) == Some("draining"),
        hot: n("hot") == 1,
        connections: n32("connections"),
        in_flight: n32("in_flight"),
        queued: n32("queued"),
        service_us: n("service_us"),
        statements_per_s: n("statements_per_s"),
        cpu_permille: n32("cpu_permille"),
        subscriptions: n32("subscriptions"),
        subscription_bytes_per_s: n("subscription_bytes_per_s"),
        leaders: n32("leaders"),
        writes_per_s: n("writes_per_s"),
    })
}

/// The figures of `m` if they are fresh: this node's own always, another's when they
/// changed within [`crate::router::STALE_AFTER`].
pub fn fresh(m: &eddy_consensus::Member) -> Option<NodeFigures> {
    let fresh = m.this_node
        || m.load_since
            .is_some_and(|t| t.elapsed() <= crate::router::STALE_AFTER);
    decode(&m.load).filter(|_| fresh)
}

/// CPU time this process has used (user and system), from `/proc/self/stat`.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 per second for user space.
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_through_gossip_keys() {
        let f = NodeFigures {
            draining: true,
            hot: true,
            connections: 4,
            in_flight: 3,
            queued: 9,
            service_us: 1234,
            statements_per_s: 560,
            cpu_permille: 730,
            subscriptions: 2,
            subscription_bytes_per_s: 4096,
            leaders: 5,
            writes_per_s: 77,
        };
        let keys: BTreeMap<String, String> = encode(&f)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(decode(&keys), Some(f));
        assert_eq!(decode(&BTreeMap::new()), None, "no figures gossiped");
        let mut partial = BTreeMap::new();
        partial.insert("state".to_owned(), "serving".to_owned());
        partial.insert("in_flight".to_owned(), "x".to_owned());
        let p = decode(&partial).expect("a state");
        assert_eq!((p.draining, p.in_flight), (false, 0));
    }

    #[test]
    fn guards_count_while_held_and_record_when_done() {
        let m = Arc::new(Meter::default());
        let mut t = m.statement();
        t.set_work(Work::Publish);
        assert_eq!(m.in_flight(), 1);
        drop(t);
        assert_eq!(m.in_flight(), 0);
        assert!(m.service_time().is_none(), "a write says nothing of reads");
        m.statement().set_work(Work::Read);
        assert!(m.service_time().is_some());
        let r = m.relay("n2:5432");
        assert_eq!(m.peer("n2:5432"), (1, None));
        r.answered();
        let (n, latency) = m.peer("n2:5432");
        assert_eq!(n, 0);
        assert!(latency.is_some());
        let s = m.subscription();
        assert_eq!(m.totals().2, 1);
        let now = chrono::Utc::now().timestamp_micros();
        m.delivered(100, [now - 2_000, now - 4_000].into_iter());
        drop(s);
        let (finished, bytes, live) = m.totals();
        assert_eq!((finished, bytes, live), (2, 100, 0));
        let rows = m.metrics();
        let count = |name: &str| rows.iter().find(|r| r.metric == name).unwrap().count;
        assert_eq!(
            (
                count("publish"),
                count("query"),
                count("relay"),
                count("subscription")
            ),
            (1, 1, 1, 2)
        );
        let sub = rows.iter().find(|r| r.metric == "subscription").unwrap();
        assert!(sub.p50_ms >= 1.9 && sub.max_ms >= 3.9, "{sub:?}");
        m.count("routed", "adaptive");
        m.count("routed", "adaptive");
        m.count("relayed", "");
        assert_eq!(
            m.counters(),
            vec![
                CounterRow {
                    counter: "relayed".into(),
                    detail: "".into(),
                    value: 1
                },
                CounterRow {
                    counter: "routed".into(),
                    detail: "adaptive".into(),
                    value: 2
                },
            ]
        );
    }

    #[test]
    fn process_cpu_time_is_read() {
        let before = process_cpu().expect("/proc/self/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = process_cpu().expect("/proc/self/stat");
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
