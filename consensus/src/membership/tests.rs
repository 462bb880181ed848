//! Membership over real UDP on 127.0.0.1: nodes on port 0, short intervals, and waits
//! for conditions with a generous deadline instead of fixed sleeps.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;

const GOSSIP: Duration = Duration::from_millis(100);
const DEAD_AFTER: Duration = Duration::from_secs(1);
/// Far beyond what any step takes; only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(20);
const SECRET: &str = "test cluster secret";

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Addresses the `blocked` injector of some nodes drops, changed while they run.
#[derive(Clone, Default)]
struct Blocklist(Arc<Mutex<HashSet<SocketAddr>>>);

impl Blocklist {
    fn injector(&self) -> Blocked {
        let set = self.0.clone();
        Arc::new(move |addr| set.lock().contains(&addr))
    }
    fn block(&self, addr: SocketAddr) {
        self.0.lock().insert(addr);
    }
    fn unblock(&self, addr: SocketAddr) {
        self.0.lock().remove(&addr);
    }
}

fn config(node_id: u64, addr: SocketAddr, seeds: &[&Membership]) -> MembershipConfig {
    let mut cfg = MembershipConfig::new(node_id, addr, Arc::new(FrameAuth::new(SECRET)));
    cfg.pg_addr = format!("127.0.0.1:{}", 5400 + node_id);
    cfg.zone = format!("zone-{}", node_id % 2);
    cfg.seeds = seeds.iter().map(|m| m.gossip_addr().to_string()).collect();
    cfg.gossip_interval = GOSSIP;
    cfg.dead_after = DEAD_AFTER;
    cfg
}

async fn start(node_id: u64, seeds: &[&Membership]) -> Membership {
    Membership::start(config(node_id, localhost(), seeds))
        .await
        .unwrap()
}

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sees(node: &Membership, other: u64, liveness: Liveness) -> bool {
    node.liveness(other) == Some(liveness)
}

/// Every node sees every node of `ids` live.
fn all_live(nodes: &[&Membership], ids: &[u64]) -> bool {
    nodes
        .iter()
        .all(|n| ids.iter().all(|&id| sees(n, id, Liveness::Live)))
}

#[tokio::test]
async fn three_nodes_see_each_other_live_with_their_keys() {
    let n1 = start(1, &[]).await;
    let n2 = start(2, &[&n1]).await;
    let n3 = start(3, &[&n1]).await;
    let nodes = [&n1, &n2, &n3];
    wait_for("all three live everywhere", || all_live(&nodes, &[1, 2, 3])).await;

    for (i, node) in nodes.iter().enumerate() {
        let members = node.members();
        assert_eq!(
            members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for m in &members {
            assert_eq!(m.pg_addr, format!("127.0.0.1:{}", 5400 + m.node_id));
            assert_eq!(m.zone, format!("zone-{}", m.node_id % 2));
            assert_eq!(m.this_node, m.node_id == i as u64 + 1);
            assert_eq!(
                m.cluster_addr,
                nodes[m.node_id as usize - 1].gossip_addr().to_string()
            );
        }
    }

    // Load figures travel too.
    n3.set_load("cpu", "0.75".to_string());
    assert_eq!(
        n3.members()[2].load.get("cpu").map(String::as_str),
        Some("0.75")
    );
    wait_for("n1 sees n3's load", || {
        n1.members()[2].load.get("cpu").map(String::as_str) == Some("0.75")
    })
    .await;
    assert_eq!(Liveness::Suspect.to_string(), "suspect");
    assert_eq!(n1.rejected(), 0);

    for node in [n1, n2, n3] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn stopped_node_turns_dead_and_comes_back_as_one_row() {
    let n1 = start(1, &[]).await;
    let n2 = start(2, &[&n1]).await;
    let n3 = start(3, &[&n1]).await;
    wait_for("all three live", || all_live(&[&n1, &n2, &n3], &[1, 2, 3])).await;

    let addr3 = n3.gossip_addr();
    n3.shutdown().await;
    wait_for("n3 dead on n1 and n2", || {
        sees(&n1, 3, Liveness::Dead) && sees(&n2, 3, Liveness::Dead)
    })
    .await;

    // Same id, same address, a new generation.
    let n3 = Membership::start(config(3, addr3, &[&n1])).await.unwrap();
    assert_eq!(n3.gossip_addr(), addr3);
    wait_for("n3 live again on n1 and n2", || {
        sees(&n1, 3, Liveness::Live) && sees(&n2, 3, Liveness::Live)
    })
    .await;
    wait_for("n3 sees the others", || all_live(&[&n3], &[1, 2])).await;
    for node in [&n1, &n2, &n3] {
        let rows = node.members().iter().filter(|m| m.node_id == 3).count();
        assert_eq!(rows, 1, "{:?}", node.members());
    }

    for node in [n1, n2, n3] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn node_with_other_secret_stays_invisible() {
    let n1 = start(1, &[]).await;
    let n2 = start(2, &[&n1]).await;
    wait_for("n1 and n2 live", || all_live(&[&n1, &n2], &[1, 2])).await;

    let mut cfg = config(9, localhost(), &[&n1, &n2]);
    cfg.auth = Arc::new(FrameAuth::new("another secret"));
    let intruder = Membership::start(cfg).await.unwrap();

    wait_for("both refuse the intruder's datagrams", || {
        n1.rejected() > 0 && n2.rejected() > 0
    })
    .await;
    // Let it try for a few more rounds before looking.
    tokio::time::sleep(GOSSIP * 10).await;
    for node in [&n1, &n2] {
        assert_eq!(node.liveness(9), None, "{:?}", node.members());
        assert_eq!(node.members().len(), 2);
    }
    // And it learned nothing: their replies, if any, would not open either.
    assert_eq!(intruder.members().len(), 1);
    assert_eq!(intruder.rejected(), 0, "nobody answered it");

    for node in [n1, n2, intruder] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn blocked_address_turns_dead_and_back_live_when_unblocked() {
    let cut = Blocklist::default();
    let mut cfg1 = config(1, localhost(), &[]);
    cfg1.blocked = cut.injector();
    let n1 = Membership::start(cfg1).await.unwrap();
    let mut cfg2 = config(2, localhost(), &[&n1]);
    cfg2.blocked = cut.injector();
    let n2 = Membership::start(cfg2).await.unwrap();
    let n3 = start(3, &[&n1]).await;
    let nodes = [&n1, &n2, &n3];
    wait_for("all three live", || all_live(&nodes, &[1, 2, 3])).await;

    // Cut n3 off from n1 and n2, both directions.
    cut.block(n3.gossip_addr());
    wait_for("n3 dead on n1 and n2", || {
        sees(&n1, 3, Liveness::Dead) && sees(&n2, 3, Liveness::Dead)
    })
    .await;
    wait_for("n1 and n2 dead on n3", || {
        sees(&n3, 1, Liveness::Dead) && sees(&n3, 2, Liveness::Dead)
    })
    .await;
    assert!(n1.blocked_datagrams() > 0 && n2.blocked_datagrams() > 0);
    assert_eq!(n3.blocked_datagrams(), 0, "n3 blocks nothing itself");
    assert!(
        sees(&n1, 2, Liveness::Live),
        "n1 and n2 still see each other"
    );

    cut.unblock(n3.gossip_addr());
    wait_for("all three live again", || all_live(&nodes, &[1, 2, 3])).await;

    for node in [n1, n2, n3] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn discovery_finds_nodes_without_seeds() {
    // A port free right now (other tests in this binary do not use discovery).
    let port = StdUdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let mut cfg = config(id, localhost(), &[]);
        cfg.discover = Some(port);
        nodes.push(Membership::start(cfg).await.unwrap());
    }
    let refs: Vec<&Membership> = nodes.iter().collect();
    wait_for("both found each other", || all_live(&refs, &[1, 2])).await;

    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let mut cfg = config(1, localhost(), &[]);
    cfg.dead_after = GOSSIP;
    let err = Membership::start(cfg).await.unwrap_err();
    assert!(
        matches!(err, MembershipError::InvalidConfig { .. }),
        "{err}"
    );
}
