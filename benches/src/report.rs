//! Results: the summary table, the JSON object, the SVG chart.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Convergence, Failover, Scenario, Summary, System};

/// One measured line of a report: a system (or a variant of eddy) and its median run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// "eddy", "eddy (producer)", "postgres", ...
    pub label: String,
    /// The system measured.
    pub system: System,
    /// The median round (by throughput, or by p99 for latency scenarios).
    #[serde(flatten)]
    pub summary: Summary,
    /// Every round, in the order run.
    pub rounds: Vec<Summary>,
}

impl Entry {
    /// The entry of `rounds` (at least one): the median by the scenario's deciding figure.
    pub fn median(
        label: String,
        system: System,
        scenario: Scenario,
        rounds: Vec<Summary>,
    ) -> Entry {
        let mut sorted = rounds.clone();
        if scenario.latency_bound() {
            sorted.sort_by_key(|s| s.p99_us);
        } else {
            sorted.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
        }
        let summary = sorted[sorted.len() / 2].clone();
        Entry {
            label,
            system,
            summary,
            rounds,
        }
    }
}

/// eddy over the peer: throughput ratio, or p99 latency ratio (peer / eddy) for latency
/// scenarios. Above 1 means eddy wins.
pub fn ratio(scenario: Scenario, eddy: &Summary, peer: &Summary) -> f64 {
    if scenario.latency_bound() {
        peer.p99_us as f64 / eddy.p99_us.max(1) as f64
    } else {
        eddy.throughput / peer.throughput
    }
}

/// Who a ratio favours (above 1, eddy).
fn verdict(ratio: f64) -> &'static str {
    if ratio >= 1.0 {
        "eddy wins"
    } else {
        "peer wins"
    }
}

/// A scenario's results: eddy's entries (the first is the one compared) and the peers'.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// A one-line description of the shape (sizes, connections, rounds).
    pub shape: String,
    /// eddy, then any variants (publish-bulk's and replicated's producer).
    pub eddy: Vec<Entry>,
    /// Each peer run.
    pub peers: Vec<Entry>,
    /// `replicated`: the leader-kill measurement of each system (eddy first), if run.
    pub failover: Vec<Failover>,
    /// `gossip-converge`: its measurement (`eddy` and `peers` are empty then).
    pub gossip: Option<Convergence>,
    /// `latency`: what one durable write costs the disk alone, measured in the same run:
    /// writes one after another, then paced as the workload is.
    pub disk: Vec<DiskSync>,
}

/// The disk's floor under a durable write: 4 KiB overwritten in place and fdatasync'd,
/// in the directory the tool's servers use (the cheapest durable write a log can make:
/// nothing to allocate, no size to commit), one after another or one per `gap_us`.
///
/// The pace matters on a virtual machine: a write issued after the vCPU and the host's
/// I/O thread went idle waits longer than one issued right behind another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiskSync {
    /// Writes measured.
    pub syncs: u64,
    /// One write started every this many µs (0: one after another).
    #[serde(default)]
    pub gap_us: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
}

impl DiskSync {
    /// Times `syncs` in-place 4 KiB writes with fdatasync in a temp file under `dir`, one
    /// started every `gap` (none: each right after the last), sleeping in between.
    pub fn measure(
        dir: &std::path::Path,
        syncs: u64,
        gap: Option<std::time::Duration>,
    ) -> anyhow::Result<DiskSync> {
        use std::os::unix::fs::FileExt;
        const BLOCK: u64 = 4096;
        const BLOCKS: u64 = 256;
        let file = tempfile::tempfile_in(dir)?;
        // Written and synced once first, so the timed writes allocate nothing.
        file.write_all_at(&vec![0u8; (BLOCK * BLOCKS) as usize], 0)?;
        file.sync_all()?;
        let block = vec![b'x'; BLOCK as usize];
        let mut h = crate::histogram();
        let first = std::time::Instant::now();
        for i in 0..syncs {
            if let Some(gap) = gap {
                let due = first + gap * i as u32;
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            let start = std::time::Instant::now();
            file.write_all_at(&block, (i % BLOCKS) * BLOCK)?;
            file.sync_data()?;
            h.saturating_record(start.elapsed().as_micros().max(1) as u64);
        }
        Ok(DiskSync {
            syncs,
            gap_us: gap.map_or(0, |g| g.as_micros() as u64),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        })
    }

    /// The line printed under the latency table.
    fn line(&self) -> String {
        let pace = match self.gap_us {
            0 => "in a row".to_owned(),
            gap => format!("one per {gap} µs"),
        };
        format!(
            "disk floor: 4 KiB overwritten in place + fdatasync, {} {pace}: p50 {} µs, \
             p99 {} µs, p99.9 {} µs (a publish durable before delivery takes at least this)\n",
            self.syncs, self.p50_us, self.p99_us, self.p999_us
        )
    }
}

impl Report {
    /// The summary table and ratio lines, as printed.
    pub fn table(&self) -> String {
        if let Some(g) = &self.gossip {
            return format!("{:?} — {}\n{}", self.scenario, self.shape, gossip_table(g));
        }
        let mut out = format!("{:?} — {}\n", self.scenario, self.shape);
        out.push_str(&format!(
            "{:<16} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>12} {:>12}\n",
            "system",
            "ops/s",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "cpu s",
            "ops/cpu-s",
            "client cpu s"
        ));
        for e in self.eddy.iter().chain(&self.peers) {
            let s = &e.summary;
            let cpu = s.cpu_seconds.map_or("-".into(), |c| format!("{c:.2}"));
            let per_cpu = s
                .ops_per_cpu_second
                .map_or("-".into(), |c| format!("{c:.0}"));
            out.push_str(&format!(
                "{:<16} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>8} {:>12} {:>12.2}\n",
                e.label,
                s.throughput,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p999_us,
                cpu,
                per_cpu,
                s.client_cpu_seconds
            ));
        }
        let basis = if self.scenario.latency_bound() {
            "p99 latency, peer/eddy"
        } else {
            "throughput, eddy/peer"
        };
        for (peer, r) in self.ratios() {
            let verdict = verdict(r);
            out.push_str(&format!("ratio vs {peer} ({basis}): {r:.2} — {verdict}\n"));
        }
        for (label, ratios) in self.variant_ratios() {
            for (peer, r) in ratios {
                let verdict = verdict(r);
                out.push_str(&format!(
                    "ratio of {label} vs {peer} ({basis}): {r:.2} — {verdict}\n"
                ));
            }
        }
        if self.scenario == Scenario::Replicated {
            // Its goal has two parts: throughput, and an ack p99 no worse than the peer's.
            for (peer, r) in self.p99_ratios() {
                let verdict = verdict(r);
                out.push_str(&format!(
                    "p99 ack latency vs {peer} (peer/eddy): {r:.2} — {verdict}\n"
                ));
            }
        }
        for d in &self.disk {
            out.push_str(&d.line());
        }
        if !self.failover.is_empty() {
            out.push_str(&format!(
                "{:<16} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>10}\n",
                "leader kill -9",
                "kills",
                "p50 ms",
                "p99 ms",
                "max ms",
                "acked",
                "retries",
                "lost",
                "duplicates"
            ));
            for f in &self.failover {
                out.push_str(&format!(
                    "{:<16} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>8} {:>6} {:>10}\n",
                    f.system.name(),
                    f.kills,
                    f.p50_ms,
                    f.p99_ms,
                    f.max_ms,
                    f.acked,
                    f.retries,
                    f.lost,
                    f.duplicates
                ));
            }
        }
        out
    }

    /// (peer, p99 latency ratio peer / eddy) for each peer: above 1, eddy's tail is shorter.
    pub fn p99_ratios(&self) -> Vec<(&'static str, f64)> {
        self.ratios_as(Scenario::Latency)
    }

    /// (peer, ratio) for each peer.
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        self.ratios_as(self.scenario)
    }

    /// (peer, ratio) for each peer, on the basis `scenario` decides by.
    fn ratios_as(&self, scenario: Scenario) -> Vec<(&'static str, f64)> {
        self.eddy
            .first()
            .map(|e| self.ratios_of(e, scenario))
            .unwrap_or_default()
    }

    /// (peer, ratio) of one eddy entry against each peer.
    fn ratios_of(&self, eddy: &Entry, scenario: Scenario) -> Vec<(&'static str, f64)> {
        self.peers
            .iter()
            .map(|p| (p.system.name(), ratio(scenario, &eddy.summary, &p.summary)))
            .collect()
    }

    /// For each eddy variant after the first: its label and (peer, ratio) per peer.
    pub fn variant_ratios(&self) -> Vec<(&str, Vec<(&'static str, f64)>)> {
        self.eddy
            .iter()
            .skip(1)
            .map(|e| (e.label.as_str(), self.ratios_of(e, self.scenario)))
            .collect()
    }

    /// The JSON object: `scenario`, `eddy`, `peer` (by name), `ratio` (by peer name); for
    /// `replicated` also `p99_ratio` (by peer name) and `failover` (by system name). For
    /// `gossip-converge`: `scenario`, `shape` and `gossip_converge` only.
    pub fn json(&self) -> serde_json::Value {
        if let Some(g) = &self.gossip {
            return serde_json::json!({
                "scenario": self.scenario,
                "shape": self.shape,
                "gossip_converge": g,
            });
        }
        let peer: serde_json::Map<String, serde_json::Value> = self
            .peers
            .iter()
            .map(|p| (p.system.name().to_owned(), serde_json::json!(p)))
            .collect();
        let ratio: serde_json::Map<String, serde_json::Value> = self
            .ratios()
            .into_iter()
            .map(|(p, r)| (p.to_owned(), r.into()))
            .collect();
        let mut out = serde_json::json!({
            "scenario": self.scenario,
            "shape": self.shape,
            "ratio_basis": if self.scenario.latency_bound() { "p99 latency: peer / eddy" } else { "throughput: eddy / peer" },
            "eddy": self.eddy.first(),
            "eddy_variants": &self.eddy[self.eddy.len().min(1)..],
            "peer": peer,
            "ratio": ratio,
        });
        if self.eddy.len() > 1 {
            let variants: serde_json::Map<String, serde_json::Value> = self
                .variant_ratios()
                .into_iter()
                .map(|(label, rs)| {
                    let rs: serde_json::Map<String, serde_json::Value> = rs
                        .into_iter()
                        .map(|(p, r)| (p.to_owned(), r.into()))
                        .collect();
                    (label.to_owned(), rs.into())
                })
                .collect();
            out["variant_ratio"] = variants.into();
        }
        if self.scenario == Scenario::Replicated {
            let p99: serde_json::Map<String, serde_json::Value> = self
                .p99_ratios()
                .into_iter()
                .map(|(p, r)| (p.to_owned(), r.into()))
                .collect();
            out["p99_ratio"] = p99.into();
        }
        if !self.failover.is_empty() {
            let failover: serde_json::Map<String, serde_json::Value> = self
                .failover
                .iter()
                .map(|f| (f.system.name().to_owned(), serde_json::json!(f)))
                .collect();
            out["failover"] = failover.into();
        }
        if !self.disk.is_empty() {
            out["disk_sync"] = serde_json::json!(self.disk);
        }
        out
    }

    /// Reads back what [`Report::json`] wrote (to redraw a chart without running again).
    pub fn from_json(v: &serde_json::Value) -> anyhow::Result<Report> {
        let field = |name: &str| {
            v.get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("results JSON has no \"{name}\""))
        };
        let scenario: Scenario = serde_json::from_value(field("scenario")?)?;
        if scenario == Scenario::GossipConverge {
            return Ok(Report {
                scenario,
                shape: serde_json::from_value(field("shape")?)?,
                eddy: Vec::new(),
                peers: Vec::new(),
                failover: Vec::new(),
                gossip: Some(serde_json::from_value(field("gossip_converge")?)?),
                disk: Vec::new(),
            });
        }
        let mut eddy: Vec<Entry> = vec![serde_json::from_value(field("eddy")?)?];
        eddy.extend(serde_json::from_value::<Vec<Entry>>(field(
            "eddy_variants",
        )?)?);
        let mut peers: Vec<Entry> =
            serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(field("peer")?)?
                .into_iter()
                .map(|(_, e)| serde_json::from_value(e))
                .collect::<Result<_, _>>()?;
        // In the order the scenario runs its peers.
        peers.sort_by_key(|e| scenario.peers().iter().position(|p| *p == e.system));
        let shape = serde_json::from_value(field("shape")?)?;
        let mut failover: Vec<Failover> = match v.get("failover") {
            Some(f) => {
                serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(f.clone())?
                    .into_iter()
                    .map(|(_, f)| serde_json::from_value(f))
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        failover.sort_by_key(|f| (f.system != System::Eddy, f.system.name()));
        // One object before the paced measurement came in, a list since.
        let disk = match v.get("disk_sync") {
            Some(serde_json::Value::Array(ds)) => ds
                .iter()
                .map(|d| serde_json::from_value(d.clone()))
                .collect::<Result<_, _>>()?,
            Some(d) => vec![serde_json::from_value(d.clone())?],
            None => Vec::new(),
        };
        Ok(Report {
            scenario,
            shape,
            eddy,
            peers,
            failover,
            gossip: None,
            disk,
        })
    }

    /// An SVG chart: throughput per system on the left, latency percentiles on the right.
    pub fn chart(&self, path: &std::path::Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.gossip.is_none(),
            "{:?} has no throughput or latency to chart: see its table or --json",
            self.scenario
        );
        let entries: Vec<&Entry> = self.eddy.iter().chain(&self.peers).collect();
        let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("eddy-bench {:?}: {}", self.scenario, self.shape),
            ("sans-serif", 16),
        )?;
        let (left, right) = root.split_horizontally(440);
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(255, 127, 14),
            RGBColor(148, 103, 189),
        ];

        let top = entries
            .iter()
            .map(|e| e.summary.throughput)
            .fold(1.0, f64::max)
            * 1.15;
        let mut bars = ChartBuilder::on(&left)
            .caption("throughput (ops/s)", ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0..entries.len().saturating_sub(1)).into_segmented(),
                0.0..top,
            )?;
        bars.configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    entries.get(*i).map(|e| e.label.clone()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .draw()?;
        bars.draw_series(entries.iter().enumerate().map(|(i, e)| {
            let c = colors[i % colors.len()];
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), e.summary.throughput),
                ],
                c.filled(),
            )
        }))?;

        let percentiles = ["p50", "p90", "p99", "p99.9"];
        let values =
            |s: &Summary| [s.p50_us, s.p90_us, s.p99_us, s.p999_us].map(|v| v.max(1) as f64);
        let low = entries
            .iter()
            .flat_map(|e| values(&e.summary))
            .fold(f64::MAX, f64::min)
            / 2.0;
        let high = entries
            .iter()
            .flat_map(|e| values(&e.summary))
            .fold(10.0, f64::max)
            * 2.0;
        let mut lat = ChartBuilder::on(&right)
            .caption("latency (µs, log scale)", ("sans-serif", 14))
            .margin(10)
            .margin_right(30)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..3usize, (low.max(1.0)..high).log_scale())?;
        lat.configure_mesh()
            .max_light_lines(1)
            .x_labels(4)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|x| percentiles.get(*x).copied().unwrap_or("").to_owned())
            .draw()?;
        for (i, e) in entries.iter().enumerate() {
            let c = colors[i % colors.len()];
            lat.draw_series(LineSeries::new(
                values(&e.summary).into_iter().enumerate(),
                c.stroke_width(2),
            ))?
            .label(e.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        lat.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// `gossip-converge`'s table: convergence percentiles and bytes per update, with what
/// the byte columns count.
fn gossip_table(g: &Convergence) -> String {
    // Per round, the part of the convergence time after the heal was seen.
    let after_seen: Vec<f64> = g
        .converge_ms
        .iter()
        .zip(&g.heal_seen_ms)
        .map(|(c, s)| c - s)
        .collect();
    let mut out = format!(
        "{:>5} {:>6} {:>6} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>12} {:>9} {:>15}\n",
        "nodes",
        "loss %",
        "rounds",
        "p50 ms",
        "p99 ms",
        "max ms",
        "seen p50",
        "after p50",
        "cut ms",
        "pushed B/upd",
        "per peer",
        "delivered B/upd"
    );
    out.push_str(&format!(
        "{:>5} {:>6} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>10.0} {:>8.0} {:>12.1} {:>9.1} {:>15.1}\n",
        g.nodes,
        g.loss_percent,
        g.rounds,
        g.p50_ms,
        g.p99_ms,
        g.max_ms,
        Failover::percentile(&g.heal_seen_ms, 0.5),
        Failover::percentile(&after_seen, 0.5),
        Failover::percentile(&g.partition_ms, 0.5),
        g.pushed_per_update,
        g.pushed_per_update_per_peer,
        g.delivered_per_update
    ));
    out.push_str(&format!(
        "converged after the heal in (ms, by round): {}\n",
        g.converge_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out.push_str(&format!(
        "keys checked: {} written by one node (exact), {} by several ({} across the cut); \
         {} rows at the end on every node; {} upserts retried after 23505\n",
        g.single_writer_keys, g.conflicting_keys, g.cross_partition_keys, g.rows, g.upsert_retries
    ));
    out.push_str(
        "seen: the heal seen in every node's eddy.nodes (fault files are re-read every \
         100 ms); after: convergence minus that, per round. \
         cut ms: median time node N was cut off (cut seen everywhere, the updates, a random \
         pause below 1 s so the heal falls anywhere in the nodes' 100 ms timers). \
         pushed: delta bytes pushed, counted once per peer reached (per peer: divided by \
         nodes - 1); delivered: delta bytes received, pushes and anti-entropy answers.\n",
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly
mod tests {
    use super::*;

    fn summary(throughput: f64, p99_us: u64) -> Summary {
        Summary {
            ops: 100,
            seconds: 1.0,
            throughput,
            p50_us: p99_us / 4,
            p90_us: p99_us / 2,
            p99_us,
            p999_us: p99_us * 2,
            cpu_seconds: Some(0.5),
            ops_per_cpu_second: Some(200.0),
            client_cpu_seconds: 0.25,
        }
    }

    fn entry(label: &str, system: System, rounds: Vec<Summary>) -> Entry {
        Entry::median(label.into(), system, Scenario::PublishBulk, rounds)
    }

    #[test]
    fn the_median_round_is_reported_and_ratios_favour_eddy_above_one() {
        let e = entry(
            "eddy",
            System::Eddy,
            vec![summary(300.0, 10), summary(100.0, 10), summary(200.0, 10)],
        );
        assert_eq!(e.summary.throughput, 200.0);
        let report = Report {
            scenario: Scenario::PublishBulk,
            shape: "tiny".into(),
            eddy: vec![
                e,
                entry("eddy (producer)", System::Eddy, vec![summary(50.0, 10)]),
            ],
            peers: vec![
                entry("postgres", System::Postgres, vec![summary(400.0, 5)]),
                entry("redis", System::Redis, vec![summary(100.0, 5)]),
            ],
            failover: Vec::new(),
            gossip: None,
            disk: Vec::new(),
        };
        assert_eq!(report.ratios(), vec![("postgres", 0.5), ("redis", 2.0)]);
        assert_eq!(
            ratio(Scenario::Latency, &summary(1.0, 100), &summary(1.0, 300)),
            3.0,
            "latency: peer p99 / eddy p99"
        );
        let table = report.table();
        assert!(
            table.contains("ratio vs redis (throughput, eddy/peer): 2.00 — eddy wins"),
            "{table}"
        );
        assert!(
            table.contains("ratio vs postgres (throughput, eddy/peer): 0.50 — peer wins"),
            "{table}"
        );
    }

    #[test]
    fn json_reads_back_into_the_same_report_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSync::measure(dir.path(), 20, None).unwrap();
        let paced =
            DiskSync::measure(dir.path(), 5, Some(std::time::Duration::from_millis(2))).unwrap();
        assert_eq!((disk.syncs, disk.gap_us), (20, 0));
        assert_eq!((paced.syncs, paced.gap_us), (5, 2000));
        for d in [disk, paced] {
            assert!(d.p50_us >= 1 && d.p50_us <= d.p99_us && d.p99_us <= d.p999_us);
        }
        let report = Report {
            scenario: Scenario::Latency,
            shape: "tiny".into(),
            eddy: vec![entry("eddy", System::Eddy, vec![summary(900.0, 30)])],
            // The scenario's own peer order, which reading back restores.
            peers: vec![
                entry("redis", System::Redis, vec![summary(700.0, 50)]),
                entry("nats", System::Nats, vec![summary(800.0, 40)]),
            ],
            failover: Vec::new(),
            gossip: None,
            disk: vec![disk, paced],
        };
        let table = report.table();
        assert!(
            table.contains(&format!(
                "disk floor: 4 KiB overwritten in place + fdatasync, 20 in a row: p50 {} µs",
                disk.p50_us
            )) && table.contains(&format!(
                "disk floor: 4 KiB overwritten in place + fdatasync, 5 one per 2000 µs: p50 {} µs",
                paced.p50_us
            )),
            "{table}"
        );
        let back = Report::from_json(&report.json()).unwrap();
        assert_eq!(back.disk, vec![disk, paced]);
        assert_eq!(back.table(), table);
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("chart.svg");
        back.chart(&svg).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(drawn.starts_with("<svg") && drawn.contains("redis") && drawn.contains("p99.9"));
    }

    fn failover(system: System, ms: Vec<f64>, lost: u64) -> Failover {
        Failover {
            system,
            kills: ms.len(),
            p50_ms: Failover::percentile(&ms, 0.5),
            p99_ms: Failover::percentile(&ms, 0.99),
            max_ms: Failover::percentile(&ms, 1.0),
            unavailable_ms: ms,
            acked: 1000,
            retries: 3,
            stored: 1000 - lost,
            lost,
            duplicates: 1,
        }
    }

    #[test]
    fn replicated_reports_both_goals_and_the_failover_and_reads_them_back() {
        let report = Report {
            scenario: Scenario::Replicated,
            shape: "tiny".into(),
            eddy: vec![entry("eddy", System::Eddy, vec![summary(5000.0, 40)])],
            peers: vec![entry("nats", System::Nats, vec![summary(1000.0, 80)])],
            failover: vec![
                failover(System::Eddy, vec![900.0, 700.0, 1200.0], 0),
                failover(System::Nats, vec![2000.0], 0),
            ],
            gossip: None,
            disk: Vec::new(),
        };
        let f = &report.failover[0];
        assert_eq!((f.p50_ms, f.p99_ms, f.max_ms), (900.0, 1200.0, 1200.0));
        let table = report.table();
        assert!(
            table.contains("ratio vs nats (throughput, eddy/peer): 5.00 — eddy wins"),
            "{table}"
        );
        assert!(
            table.contains("p99 ack latency vs nats (peer/eddy): 2.00 — eddy wins"),
            "{table}"
        );
        assert!(table.contains("leader kill -9"), "{table}");
        let json = report.json();
        assert_eq!(json["p99_ratio"]["nats"], 2.0);
        assert_eq!(json["failover"]["eddy"]["lost"], 0);
        let back = Report::from_json(&json).unwrap();
        assert_eq!(back.table(), table);
    }

    #[test]
    fn gossip_converge_reports_percentiles_and_bytes_and_reads_them_back() {
        let converge_ms = vec![120.0, 80.0, 300.0, 95.0];
        let report = Report {
            scenario: Scenario::GossipConverge,
            shape: "tiny".into(),
            eddy: Vec::new(),
            peers: Vec::new(),
            failover: Vec::new(),
            gossip: Some(Convergence {
                nodes: 3,
                loss_percent: 10.0,
                updates: 200,
                keys: 100,
                rounds: 4,
                p50_ms: Failover::percentile(&converge_ms, 0.5),
                p99_ms: Failover::percentile(&converge_ms, 0.99),
                max_ms: Failover::percentile(&converge_ms, 1.0),
                converge_ms,
                partition_ms: vec![400.0; 4],
                heal_seen_ms: vec![50.0, 30.0, 60.0, 40.0],
                pushed_bytes: 80_000,
                delivered_bytes: 120_000,
                pushed_per_update: 100.0,
                pushed_per_update_per_peer: 50.0,
                delivered_per_update: 150.0,
                rows: 70,
                single_writer_keys: 150,
                conflicting_keys: 200,
                cross_partition_keys: 90,
                upsert_retries: 1,
            }),
            disk: Vec::new(),
        };
        let g = report.gossip.as_ref().unwrap();
        assert_eq!((g.p50_ms, g.p99_ms, g.max_ms), (95.0, 300.0, 300.0));
        let table = report.table();
        assert!(
            table.contains("      95      300      300        40         55"),
            "{table}"
        );
        assert!(table.contains("100.0      50.0           150.0"), "{table}");
        let json = report.json();
        assert_eq!(json["scenario"], "gossip-converge");
        assert_eq!(json["gossip_converge"]["pushed_per_update"], 100.0);
        let back = Report::from_json(&json).unwrap();
        assert_eq!(back.table(), table);
        let dir = tempfile::tempdir().unwrap();
        assert!(
            back.chart(&dir.path().join("c.svg")).is_err(),
            "nothing to chart"
        );
    }
}
