//! Draining a node (`ALTER CLUSTER DRAIN NODE`): the node stops taking new work, which
//! routers everywhere see in its gossiped state, and hands its leaderships over.
//! Leader balancing: a node leading more than its share of groups, hot or draining,
//! hands leaderships to other voters ([`Cluster::transfer_leader`]: openraft 0.9 has no
//! transfer, so the leader stops proposing, lets the target catch up, and the target
//! stands for election; the old leader's vote and the target's own make the quorum).

use std::sync::atomic::Ordering;
use std::time::Duration;

use std::collections::BTreeMap;

use eddy_storage::raft::GroupId;

use super::Cluster;
use crate::network::{Call, Reply};
use crate::types::{NodeId, Raft};
use crate::Error;

/// How long a drain call may take to be answered.
const DRAIN_CALL: Duration = Duration::from_secs(2);

impl Cluster {
    /// True while this node drains.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Drains node `node` (`on`), or has it take work again: here, or by a call to it.
    pub async fn drain_node(&self, node: NodeId, on: bool) -> Result<(), Error> {
        if node == self.id() {
            self.drain_here(on);
            return Ok(());
        }
        let addr = self
            .nodes()
            .get(&node)
            .map(|n| n.cluster_addr.clone())
            .ok_or_else(|| Error::Refused(format!("no node {node} in this cluster")))?;
        match self
            .inner
            .peers
            .call(node, &addr, Call::Drain(on), DRAIN_CALL)
            .await
        {
            Ok(Reply::Done(Ok(()))) => Ok(()),
            Ok(Reply::Done(Err(e))) => Err(Error::Unavailable(e.to_string())),
            Ok(other) => Err(Error::Internal(format!(
                "node {node} answered {other:?} to a drain"
            ))),
            Err(e) => Err(Error::Unavailable(format!(
                "node {node} at {addr} cannot be reached to drain it ({e}); retry"
            ))),
        }
    }

    /// Drains this node (its own shutdown, `--drain-on-shutdown`).
    pub fn drain_here_now(&self) {
        self.drain_here(true);
    }

    /// Drains this node, or has it take work again.
    pub(super) fn drain_here(&self, on: bool) {
        let was = self.inner.draining.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::info!(draining = on, "node drain state changed");
        }
    }
}

/// How long a handover may wait for the new leader to catch up, then to be elected.
const CATCH_UP: Duration = Duration::from_secs(1);
const ELECTED: Duration = Duration::from_secs(2);
/// The most voters a group may have for its leadership to be handed over: the old
/// leader and the target make its quorum (openraft 0.9 has no transfer of its own, and
/// a third voter refuses votes while its leader lease runs).
const MAX_VOTERS: usize = 3;

/// What leader balancing is asked to do this round ([`Cluster::balance_leaders`]).
#[derive(Debug, Clone, Default)]
pub struct Balance {
    /// Nodes no leadership should go to (draining, hot, dead).
    pub avoid: Vec<NodeId>,
    /// This node drains: hand over every group it leads.
    pub shed_all: bool,
    /// This node is hot: hand over one group this round.
    pub shed_one: bool,
    /// Groups led by each node, as gossiped: a node leading more than its share hands
    /// one over to the voter leading fewest.
    pub leaders: BTreeMap<NodeId, u32>,
}

impl Cluster {
    /// Hands the leadership of `group`, led here, to its voter `target`, and waits until
    /// `target` leads. Proposals wait meanwhile (they then go to the new leader). Only
    /// for groups of up to three voters (see [`MAX_VOTERS`]).
    pub async fn transfer_leader(&self, group: GroupId, target: NodeId) -> Result<(), Error> {
        let g = self
            .group(group)
            .ok_or_else(|| Error::Refused(format!("raft group {group} is not on this node")))?;
        let me = self.id();
        {
            let m = g.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(me) {
                return Err(Error::Refused(format!(
                    "this node does not lead raft group {group}"
                )));
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            if !voters.contains(&target) || target == me {
                return Err(Error::Refused(format!(
                    "node {target} is not another voter of raft group {group}"
                )));
            }
            if voters.len() > MAX_VOTERS {
                return Err(Error::Refused(format!(
                    "raft group {group} has {} voters; leadership moves only in groups of up to {MAX_VOTERS}",
                    voters.len()
                )));
            }
        }
        let addr = self
            .nodes()
            .get(&target)
            .map(|n| n.cluster_addr.clone())
            .ok_or_else(|| Error::Refused(format!("no node {target} in this cluster")))?;
        // No new entry from here on: the target can catch up with the last one.
        let _stopped = g.gate.write().await;
        let mut metrics = g.raft.metrics();
        let caught_up = tokio::time::timeout(CATCH_UP, async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let last = m.last_log_index;
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index);
                    if m.current_leader != Some(me) {
                        return Err(Error::Unavailable(format!(
                            "raft group {group} lost its leader meanwhile"
                        )));
                    }
                    if last.is_some() && matched == last {
                        return Ok(());
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(Error::Unavailable(format!("raft group {group} stopped")));
                }
            }
        })
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "node {target} did not catch up with raft group {group} in time"
            ))
        })?;
        caught_up?;
        match self
            .inner
            .peers
            .call(target, &addr, Call::Elect(group), DRAIN_CALL)
            .await
        {
            Ok(Reply::Done(Ok(()))) => {}
            Ok(Reply::Done(Err(e))) => return Err(Error::Unavailable(e.to_string())),
            Ok(other) => {
                return Err(Error::Internal(format!(
                    "node {target} answered {other:?} to an election call"
                )))
            }
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "node {target} cannot be reached ({e})"
                )))
            }
        }
        tokio::time::timeout(ELECTED, async {
            loop {
                if metrics.borrow_and_update().current_leader == Some(target) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .ok()
        .filter(|elected| *elected)
        .map(|_| tracing::info!(group, target, "leadership handed over"))
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "node {target} was not elected leader of raft group {group} in time"
            ))
        })
    }

    /// This node stands for election in `group` now (its leader hands over to it).
    pub(super) async fn elect_here(&self, group: GroupId) -> Result<(), crate::network::CallError> {
        let raft = self
            .raft(group)
            .ok_or(crate::network::CallError::NoGroup(group))?;
        raft.trigger()
            .elect()
            .await
            .map_err(|e| crate::network::CallError::Unavailable(e.to_string()))
    }

    /// One round of leader balancing for the groups this node leads (see [`Balance`]);
    /// returns how many leaderships it handed over. Called about every few seconds by
    /// the node; one handover at a time, so a round is short and proposals wait little.
    pub async fn balance_leaders(&self, b: &Balance) -> usize {
        let me = self.id();
        let mut moved = 0;
        let led = self.led_groups();
        if led.is_empty() {
            return 0;
        }
        let share = {
            let total: u32 = b.leaders.values().sum();
            let nodes = b.leaders.len().max(1) as u32;
            total.div_ceil(nodes)
        };
        let mine = led.len() as u32;
        let wanted = if b.shed_all {
            led.len()
        } else if b.shed_one || mine > share {
            1
        } else {
            0
        };
        let mut given: BTreeMap<NodeId, u32> = BTreeMap::new();
        for (group, voters) in led {
            if moved >= wanted {
                break;
            }
            let target = voters
                .iter()
                .copied()
                .filter(|v| *v != me && !b.avoid.contains(v))
                .min_by_key(|v| {
                    (
                        b.leaders.get(v).copied().unwrap_or(0) + given.get(v).copied().unwrap_or(0),
                        *v,
                    )
                });
            let Some(target) = target else { continue };
            // Balancing alone moves a leadership only to a node leading at least two
            // fewer, so two nodes never hand one back and forth.
            if !b.shed_all && !b.shed_one && b.leaders.get(&target).copied().unwrap_or(0) + 2 > mine
            {
                continue;
            }
            match self.transfer_leader(group, target).await {
                Ok(()) => {
                    moved += 1;
                    *given.entry(target).or_default() += 1;
                }
                Err(e) => {
                    tracing::debug!(group, target, error = %e, "leader handover failed");
                    // The target may still win the election it was asked to stand for,
                    // after the wait: the leadership left all the same.
                    let left = self
                        .raft(group)
                        .is_some_and(|r| r.metrics().borrow().current_leader != Some(me));
                    moved += usize::from(left);
                }
            }
        }
        moved
    }

    /// The groups this node leads, acknowledged by a quorum, with their voters, small
    /// enough to hand over (the metadata group stays where it is).
    fn led_groups(&self) -> Vec<(GroupId, Vec<NodeId>)> {
        let me = self.id();
        let groups: Vec<(GroupId, Raft)> = self
            .inner
            .groups
            .read()
            .iter()
            .map(|(id, g)| (*id, g.raft.clone()))
            .collect();
        groups
            .into_iter()
            .filter_map(|(id, raft)| {
                let m = raft.metrics();
                let m = m.borrow();
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                let settled = m.millis_since_quorum_ack.is_some();
                (id != super::METADATA_GROUP
                    && m.current_leader == Some(me)
                    && settled
                    && voters.len() > 1
                    && voters.len() <= MAX_VOTERS)
                    .then_some((id, voters))
            })
            .collect()
    }
}
