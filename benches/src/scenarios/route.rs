//! `route`: what routing does for latency when one node of three turns slow. Prepared
//! primary-key SELECTs, open loop (each one sent at its scheduled time, whatever is still
//! in flight, its latency counted from that time), spread evenly over connections to
//! all three nodes. Node 3 is slowed for the middle window: every statement run there
//! waits `slow_ms` first (its fault file's `slow=`, deterministic) or the process gets a
//! CPU quota (cgroup v1 `cpu` controller). Four variants, one after the other on the
//! same cluster:
//!
//! | variant | sessions | client |
//! |---|---|---|
//! | `local` | `routing = local`: a statement runs where it arrives | every node in turn |
//! | `round_robin` | `routing = round_robin` | every node in turn |
//! | `adaptive` | `routing = adaptive` (the default) | every node in turn |
//! | `adaptive+client` | `adaptive` | skips nodes whose `eddy.nodes.service_ms` is over 3x the lowest (a cluster-aware client) |
//!
//! Per variant: latency percentiles in the healthy, slow and recovered windows, the
//! share of statements answered within 1 s in the slow window, and (adaptive) how long
//! after the slowdown node 3 sent most of its reads elsewhere (`eddy.routing`, polled)
//! and how long after it ended it served them itself again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{connect, Server};

use super::point::ROWS;
/// The slowed node (1-based) and its index.
const SLOW_NODE: u64 = 3;
/// How often node 3's routing counters and the cluster's figures are polled.
const POLL: Duration = Duration::from_millis(250);

/// How node 3 is slowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slowdown {
    /// Its fault file's `slow=`: every statement run there waits first.
    Fault,
    /// A CPU quota on its process (cgroup v1 `cpu`, as root).
    Cpu,
}

/// What a `route` run does.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// Statements per second over all connections.
    pub rate: u64,
    /// Connections per node.
    pub per_node: usize,
    /// How long node 3 is slow; the healthy window before is half as long, the
    /// recovered window after 25 s.
    pub slow_for: Duration,
    /// How it is slowed.
    pub slowdown: Slowdown,
    /// `fault`: the wait per statement.
    pub slow_ms: u64,
    /// `cpu`: the quota, in percent of one CPU.
    pub cpu_percent: u64,
    /// The variants to run (default all four).
    pub variants: Vec<String>,
}

/// Latency of one window of a variant.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Window {
    /// Statements scheduled in the window and answered.
    pub ops: u64,
    /// Statements that failed.
    pub errors: u64,
    /// Answered per second.
    pub per_s: f64,
    /// Percentiles in ms, from the scheduled send time.
    pub p50_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Share answered within 1 s.
    pub under_1s: f64,
}

/// One variant's results.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Its name.
    pub name: String,
    /// Before the slowdown.
    pub healthy: Window,
    /// While node 3 is slow.
    pub slow: Window,
    /// After it (25 s).
    pub recovered: Window,
    /// Seconds from the slowdown until node 3 sent most of its reads elsewhere.
    pub shifted_after_s: Option<f64>,
    /// Seconds from its end until node 3 served most of its reads itself again.
    pub back_after_s: Option<f64>,
    /// Per second of the run: p99 in ms of the statements scheduled in it.
    pub p99_by_second: Vec<f64>,
}

/// The variants' results, and the run's shape.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// Statements per second.
    pub rate: u64,
    /// Connections per node.
    pub per_node: usize,
    /// Healthy, slow and recovered windows, in seconds.
    pub windows_s: [f64; 3],
    /// How node 3 was slowed.
    pub slowdown: String,
    /// The variants.
    pub variants: Vec<Variant>,
}

/// The variants run by default.
pub const VARIANTS: [&str; 4] = ["local", "round_robin", "adaptive", "adaptive+client"];

/// Runs every variant of `o` on `server` (3 nodes the tool started).
pub async fn route(server: &Server, o: &RouteOptions) -> anyhow::Result<RouteReport> {
    anyhow::ensure!(
        server.nodes() == 3,
        "route runs on 3 nodes, not {}",
        server.nodes()
    );
    // point-select's table: on every node (three replicas, the default).
    super::point::setup(server).await?;
    let healthy = o.slow_for / 2;
    let recovered = Duration::from_secs(25);
    let mut variants = Vec::new();
    for name in &o.variants {
        eprintln!("route: {name} at {} statements/s", o.rate);
        variants.push(run_variant(server, o, name, healthy, recovered).await?);
        // Let the slow node's figures settle before the next variant.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(RouteReport {
        rate: o.rate,
        per_node: o.per_node,
        windows_s: [
            healthy.as_secs_f64(),
            o.slow_for.as_secs_f64(),
            recovered.as_secs_f64(),
        ],
        slowdown: match o.slowdown {
            Slowdown::Fault => format!("fault file slow={} ms per statement", o.slow_ms),
            Slowdown::Cpu => format!("cgroup v1 cpu quota {}% of one CPU", o.cpu_percent),
        },
        variants,
    })
}

/// One statement's outcome: when it was scheduled (s since the start), its latency (µs).
type Sample = (f64, u64, bool);

async fn run_variant(
    server: &Server,
    o: &RouteOptions,
    name: &str,
    healthy: Duration,
    recovered: Duration,
) -> anyhow::Result<Variant> {
    let strategy = name.split('+').next().unwrap_or(name);
    let smart = name.ends_with("+client");
    // Connections per node, each with its prepared statement.
    let mut pools = Vec::new();
    for node in 0..3 {
        let mut pool = Vec::new();
        for _ in 0..o.per_node {
            let url = format!("{} options='-c routing={strategy}'", server.url_for(node));
            let c = Arc::new(connect(&url).await?);
            let stmt = c
                .prepare("SELECT name FROM bench_points WHERE id = $1")
                .await?;
            pool.push((c, stmt));
        }
        pools.push(pool);
    }
    let pools = Arc::new(pools);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let total = healthy + o.slow_for + recovered;
    let start = Instant::now();
    // The cluster-aware client's view: nodes to skip (bit i: node i + 1).
    let avoid = Arc::new(AtomicU64::new(0));
    let polls: Arc<Mutex<Vec<(f64, i64, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pollers = {
        let (avoid, polls, stop) = (avoid.clone(), polls.clone(), stop.clone());
        let figures = connect(&format!("{} options='-c routing=local'", server.url_for(0))).await?;
        let slow = connect(&format!("{} options='-c routing=local'", server.url_for(2))).await?;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if smart {
                    if let Ok(rows) = figures
                        .query("SELECT node_id, service_ms FROM eddy.nodes", &[])
                        .await
                    {
                        let ms: Vec<(i64, f64)> = rows
                            .iter()
                            .filter_map(|r| Some((r.get::<_, i64>(0), r.get::<_, Option<f64>>(1)?)))
                            .collect();
                        let low = ms
                            .iter()
                            .map(|m| m.1)
                            .fold(f64::INFINITY, f64::min)
                            .max(0.5);
                        let mask = ms
                            .iter()
                            .filter(|m| m.1 > 3.0 * low)
                            .fold(0u64, |a, m| a | 1 << (m.0 - 1));
                        avoid.store(mask, Ordering::Relaxed);
                    }
                }
                if let Ok(rows) = slow
                    .query("SELECT counter, value FROM eddy.routing", &[])
                    .await
                {
                    let get = |c: &str| -> i64 {
                        rows.iter()
                            .filter(|r| r.get::<_, &str>(0) == c)
                            .map(|r| r.get::<_, i64>(1))
                            .sum()
                    };
                    lock(&polls).push((
                        start.elapsed().as_secs_f64(),
                        get("routed"),
                        get("relayed"),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    // Open loop: statement i at start + i / rate.
    let interval = Duration::from_secs_f64(1.0 / o.rate as f64);
    let mut inflight = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    // The slowdown, in the middle window: switched between two statements.
    let (mut slowed, mut healed) = (false, false);
    loop {
        let at = start + interval.mul_f64(i as f64);
        if at >= start + total {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if !slowed && at >= start + healthy {
            slow_node(server, o, true);
            slowed = true;
        }
        if !healed && at >= start + healthy + o.slow_for {
            slow_node(server, o, false);
            healed = true;
        }
        let nodes: Vec<usize> = {
            let mask = if smart {
                avoid.load(Ordering::Relaxed)
            } else {
                0
            };
            let open: Vec<usize> = (0..3).filter(|n| mask & (1 << n) == 0).collect();
            if open.is_empty() {
                (0..3).collect()
            } else {
                open
            }
        };
        let node = nodes[(i as usize) % nodes.len()];
        let (c, stmt) = pools[node][(i as usize / 3) % o.per_node].clone();
        let samples = samples.clone();
        let id = (i as i64 * 7919) % ROWS;
        inflight.spawn(async move {
            let ok = c
                .query(&stmt, &[&id])
                .await
                .is_ok_and(|rows| rows.len() == 1);
            let took = at.elapsed().as_micros() as u64;
            lock(&samples).push(((at - start).as_secs_f64(), took, ok));
        });
        // Reap what finished, so the set stays small.
        while inflight.try_join_next().is_some() {}
        i += 1;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = pollers.await;
    let samples = std::mem::take(&mut *lock(&samples));
    let polls = std::mem::take(&mut *lock(&polls));
    let (h, s) = (healthy.as_secs_f64(), (healthy + o.slow_for).as_secs_f64());
    let t = total.as_secs_f64();
    let share = shares(&polls);
    let adaptive = strategy == "adaptive";
    Ok(Variant {
        name: name.to_owned(),
        healthy: window(&samples, 0.0, h),
        slow: window(&samples, h, s),
        recovered: window(&samples, s, t),
        shifted_after_s: adaptive
            .then(|| {
                share
                    .iter()
                    .find(|(at, x)| *at >= h && *at < s && *x >= 0.5)
                    .map(|(at, _)| at - h)
            })
            .flatten(),
        back_after_s: adaptive
            .then(|| {
                share
                    .iter()
                    .find(|(at, x)| *at >= s && *x < 0.5)
                    .map(|(at, _)| at - s)
            })
            .flatten(),
        p99_by_second: (0..t.ceil() as usize)
            .map(|sec| window(&samples, sec as f64, sec as f64 + 1.0).p99_ms)
            .collect(),
    })
}

/// Slows node 3 (`on`) or heals it; a failure is reported, not fatal.
fn slow_node(server: &Server, o: &RouteOptions, on: bool) {
    let node = SLOW_NODE as usize - 1;
    let done = server.cluster().and_then(|mut c| match o.slowdown {
        Slowdown::Fault => c.slow(node, if on { o.slow_ms } else { 0 }),
        Slowdown::Cpu => {
            let pid = c
                .pid(node)
                .ok_or_else(|| anyhow::anyhow!("node {SLOW_NODE} is not running"))?;
            cpu_quota(pid, on.then_some(o.cpu_percent))
        }
    });
    if let Err(e) = done {
        eprintln!(
            "route: cannot {} node {SLOW_NODE}: {e}",
            if on { "slow" } else { "heal" }
        );
    }
}

/// The cgroup v1 `cpu` group node 3 is moved into while slow.
const CGROUP: &str = "/sys/fs/cgroup/cpu/eddy-bench-slow";

/// Puts process `pid` under a quota of `percent` of one CPU, or (`None`) back in the
/// root group, removing the group.
pub fn cpu_quota(pid: u32, percent: Option<u64>) -> anyhow::Result<()> {
    let root = std::path::Path::new(CGROUP)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    match percent {
        Some(p) => {
            std::fs::create_dir_all(CGROUP)?;
            std::fs::write(format!("{CGROUP}/cpu.cfs_period_us"), "100000")?;
            std::fs::write(format!("{CGROUP}/cpu.cfs_quota_us"), (p * 1000).to_string())?;
            std::fs::write(format!("{CGROUP}/cgroup.procs"), pid.to_string())?;
        }
        None => {
            std::fs::write(root.join("cgroup.procs"), pid.to_string())?;
            let _ = std::fs::remove_dir(CGROUP);
        }
    }
    Ok(())
}

/// Locks `m`, whatever a panicking holder left (samples only ever get pushed).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Node 3's share of routed reads it relayed, over each second of polls: (time, share).
fn shares(polls: &[(f64, i64, i64)]) -> Vec<(f64, f64)> {
    let per = (1.0 / POLL.as_secs_f64()).round() as usize;
    polls
        .windows(per + 1)
        .filter_map(|w| {
            let (first, last) = (w.first()?, w.last()?);
            let routed = last.1 - first.1;
            (routed > 0).then(|| (last.0, (last.2 - first.2) as f64 / routed as f64))
        })
        .collect()
}

/// Latency of the statements scheduled in `[from, to)`.
fn window(samples: &[Sample], from: f64, to: f64) -> Window {
    let mut h = crate::histogram();
    let (mut ok, mut errors, mut under) = (0u64, 0u64, 0u64);
    for &(_, us, fine) in samples.iter().filter(|s| s.0 >= from && s.0 < to) {
        if fine {
            h.saturating_record(us.max(1));
            ok += 1;
            under += u64::from(us < 1_000_000);
        } else {
            errors += 1;
        }
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Window {
        ops: ok,
        errors,
        per_s: ok as f64 / (to - from).max(1e-9),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        under_1s: if ok + errors == 0 {
            1.0
        } else {
            under as f64 / (ok + errors) as f64
        },
    }
}

impl RouteReport {
    /// The table printed after a run, and checked against the goals.
    pub fn table(&self) -> String {
        let [h, s, r] = self.windows_s;
        let mut out = format!(
            "route: 3 nodes, node 3 slowed by {} for {s:.0} s (healthy {h:.0} s before, {r:.0} s after); {} statements/s open loop over {} connections per node\n\n",
            self.slowdown, self.rate, self.per_node
        );
        out.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "variant",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "slow p50",
            "slow p99",
            "slow p999",
            "<1s %",
            "shift s",
            "back s"
        ));
        for v in &self.variants {
            let opt = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}"));
            out.push_str(&format!(
                "{:<16} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>8} {:>8}\n",
                v.name,
                v.healthy.per_s,
                v.healthy.p50_ms,
                v.healthy.p99_ms,
                v.slow.p50_ms,
                v.slow.p99_ms,
                v.slow.p999_ms,
                v.slow.under_1s * 100.0,
                opt(v.shifted_after_s),
                opt(v.back_after_s),
            ));
        }
        let find = |n: &str| self.variants.iter().find(|v| v.name == n);
        if let (Some(a), Some(l), Some(rr)) = (find("adaptive"), find("local"), find("round_robin"))
        {
            out.push_str(&format!(
                "\nslow window p99: adaptive / round_robin = {:.2}, adaptive / local = {:.2} (goal <= 0.33); \
                 healthy: adaptive p99 / local = {:.2}, throughput = {:.3} (goal within 5%)\n",
                a.slow.p99_ms / rr.slow.p99_ms.max(1e-9),
                a.slow.p99_ms / l.slow.p99_ms.max(1e-9),
                a.healthy.p99_ms / l.healthy.p99_ms.max(1e-9),
                a.healthy.per_s / l.healthy.per_s.max(1e-9),
            ));
        }
        out
    }

    /// An SVG chart: each variant's p99 per second (log scale), the slow window shaded.
    pub fn chart(&self) -> String {
        let (w, h, pad) = (900.0, 420.0, 50.0);
        let secs = self
            .variants
            .iter()
            .map(|v| v.p99_by_second.len())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let top = self
            .variants
            .iter()
            .flat_map(|v| v.p99_by_second.iter().copied())
            .fold(1.0f64, f64::max);
        let (lo, hi) = (0.1f64.log10(), top.log10().ceil().max(1.0));
        let x = |s: f64| pad + (w - 2.0 * pad) * s / secs;
        let y = |ms: f64| h - pad - (h - 2.0 * pad) * ((ms.max(0.1).log10() - lo) / (hi - lo));
        let [hs, ss, _] = self.windows_s;
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\
             <rect x='{:.1}' y='{pad}' width='{:.1}' height='{:.1}' fill='#fde2e2'/>\
             <text x='{pad}' y='20'>p99 latency per second (ms, log scale); shaded: node 3 slowed</text>",
            x(hs),
            x(hs + ss) - x(hs),
            h - 2.0 * pad
        );
        let mut decade = 0.1;
        while decade <= 10f64.powf(hi) {
            svg.push_str(&format!(
                "<line x1='{pad}' x2='{:.1}' y1='{:.1}' y2='{:.1}' stroke='#ddd'/><text x='5' y='{:.1}'>{decade}</text>",
                w - pad,
                y(decade),
                y(decade),
                y(decade) + 4.0
            ));
            decade *= 10.0;
        }
        let colors = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
        for (i, v) in self.variants.iter().enumerate() {
            let points: Vec<String> = v
                .p99_by_second
                .iter()
                .enumerate()
                .filter(|(_, ms)| **ms > 0.0)
                .map(|(s, ms)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*ms)))
                .collect();
            let color = colors[i % colors.len()];
            svg.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\
                 <text x='{:.1}' y='{:.1}' fill='{color}'>{}</text>",
                points.join(" "),
                w - pad - 130.0,
                pad + 15.0 * (i as f64 + 1.0),
                v.name
            ));
        }
        svg.push_str(&format!(
            "<text x='{:.1}' y='{:.1}'>seconds</text></svg>\n",
            w / 2.0,
            h - 15.0
        ));
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_what_was_scheduled_in_them() {
        let samples = vec![
            (0.5, 1_000, true),
            (1.5, 2_000_000, true),
            (1.7, 0, false),
            (3.0, 10, true),
        ];
        let w = window(&samples, 1.0, 2.0);
        assert_eq!((w.ops, w.errors), (1, 1));
        assert!((w.under_1s - 0.0).abs() < 1e-9, "{w:?}");
        let w = window(&samples, 0.0, 1.0);
        assert_eq!(w.ops, 1);
        assert!((w.p99_ms - 1.0).abs() < 0.01, "{w:?}");
    }

    #[test]
    fn shares_are_relayed_over_routed_per_second() {
        let polls: Vec<(f64, i64, i64)> =
            (0..9).map(|i| (i as f64 * 0.25, i * 10, i * 5)).collect();
        let s = shares(&polls);
        assert!(!s.is_empty());
        assert!(s.iter().all(|(_, x)| (*x - 0.5).abs() < 1e-9), "{s:?}");
    }
}
