//! The workloads. Each is written once per system against that system's own Rust client,
//! doing the same work: the same rows, payloads, connections and durability.

mod failover;
mod gossip;
mod point;
mod publish;
mod pubsub;
mod replicated;
mod route;

pub use failover::failover;
pub use gossip::{gossip_converge, TABLE as GOSSIP_TABLE};
pub use route::{route, RouteOptions, RouteReport, Slowdown, VARIANTS as ROUTE_VARIANTS};

use crate::{Measured, Meter, Options, Scenario, Server, System};

/// Prepares `server` for a run of `scenario`, dropping whatever an earlier run left.
pub async fn setup(scenario: Scenario, server: &Server, opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        server.system == System::Eddy || scenario.peers().contains(&server.system),
        "{scenario:?} has no workload for {}",
        server.system.name()
    );
    match scenario {
        Scenario::PointSelect => point::setup(server).await,
        Scenario::PublishBulk | Scenario::PublishDurable => publish::setup(scenario, server).await,
        Scenario::Fanout | Scenario::Latency => pubsub::setup(server, opts).await,
        Scenario::Replicated => replicated::setup(server).await,
        Scenario::GossipConverge | Scenario::Route => Err(not_a_run()),
    }
}

/// gossip-converge and route are no single timed run: they are measured by
/// [`gossip_converge`] and [`route`].
fn not_a_run() -> anyhow::Error {
    anyhow::anyhow!(
        "gossip-converge and route are measured by gossip_converge() and route(), not run()"
    )
}

/// Runs the workload (after [`setup`]).
pub async fn run(
    scenario: Scenario,
    server: &Server,
    opts: &Options,
    meter: &Meter,
) -> anyhow::Result<Measured> {
    match scenario {
        Scenario::PointSelect => point::run(server, opts, meter).await,
        Scenario::PublishBulk => publish::bulk(server, opts, meter).await,
        Scenario::PublishDurable => publish::durable(server, opts, meter).await,
        Scenario::Fanout | Scenario::Latency => pubsub::run(scenario, server, opts, meter).await,
        Scenario::Replicated => replicated::run(server, opts, meter).await,
        Scenario::GossipConverge | Scenario::Route => Err(not_a_run()),
    }
}

/// Spawns `n` workers and gathers their histograms and operation counts; the first error
/// wins.
async fn gather<F, Fut>(n: usize, worker: F) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>>
        + Send
        + 'static,
{
    let mut worker = worker;
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(worker(i))).collect();
    let mut total = crate::histogram();
    let mut ops = 0;
    for t in tasks {
        let (n, h) = t.await??;
        ops += n;
        total.add(h)?;
    }
    Ok((ops, total))
}

/// Runs `worker` once per client for the run's duration, each paced at its share of
/// `opts.rate`, and merges what they measured.
async fn closed_loop<C, F, Fut>(
    clients: Vec<C>,
    opts: &Options,
    meter: &Meter,
    mut worker: F,
) -> anyhow::Result<Measured>
where
    F: FnMut(usize, C, Closed) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>>
        + Send
        + 'static,
{
    let n = clients.len();
    let start = std::time::Instant::now();
    let deadline = start + opts.duration;
    let rate = opts.rate.map(|r| r as f64 / n as f64);
    let mut clients = clients.into_iter();
    let (ops, latency) = gather(n, |i| {
        // `gather` asks exactly `n` times.
        #[allow(clippy::unwrap_used)]
        let c = clients.next().unwrap();
        worker(i, c, Closed::new(deadline, rate, meter.clone()))
    })
    .await?;
    Ok(Measured {
        ops,
        elapsed: start.elapsed(),
        latency,
    })
}

/// One closed-loop worker's bookkeeping: paces its operations until the deadline and
/// records each one's latency.
pub(crate) struct Closed {
    deadline: std::time::Instant,
    pacer: crate::Pacer,
    latency: hdrhistogram::Histogram<u64>,
    ops: u64,
    meter: crate::Meter,
}

impl Closed {
    pub(crate) fn new(
        deadline: std::time::Instant,
        rate: Option<f64>,
        meter: crate::Meter,
    ) -> Closed {
        Closed {
            deadline,
            pacer: crate::Pacer::new(rate),
            latency: crate::histogram(),
            ops: 0,
            meter,
        }
    }

    /// Waits for the next operation's slot and returns when it starts; `None` once the
    /// run is over.
    pub(crate) async fn next(&mut self) -> Option<std::time::Instant> {
        if std::time::Instant::now() >= self.deadline {
            return None;
        }
        Some(self.pacer.next().await)
    }

    /// Counts the operation that started at `started`.
    pub(crate) fn done(&mut self, started: std::time::Instant) {
        crate::record(&mut self.latency, started);
        self.ops += 1;
        self.meter.add(1);
    }

    /// Operations done and their latencies.
    pub(crate) fn finish(self) -> (u64, hdrhistogram::Histogram<u64>) {
        (self.ops, self.latency)
    }
}

/// A payload of `size` bytes that starts with `seq` and the send time (nanoseconds since
/// the run's base instant), 20 digits each, padded with 'x'.
pub(crate) fn stamped(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("{seq:020}{sent_ns:020}");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// Reads back what [`stamped`] wrote.
pub(crate) fn unstamp(payload: &[u8]) -> Option<(u64, u64)> {
    let digits =
        |r: std::ops::Range<usize>| std::str::from_utf8(payload.get(r)?).ok()?.parse().ok();
    Some((digits(0..20)?, digits(20..40)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_pad() {
        let p = stamped(7, 123_456_789, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(unstamp(p.as_bytes()), Some((7, 123_456_789)));
        assert_eq!(stamped(1, 2, 10).len(), 40, "never shorter than the stamp");
        assert_eq!(unstamp(b"12"), None);
    }
}
