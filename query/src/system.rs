//! The `eddy` system schema: `eddy.partitions`, `eddy.subscriptions`, `eddy.nodes`,
//! `eddy.raft_groups`, `eddy.gossip_peers`, `eddy.routing` and `eddy.metrics`, computed
//! when a query reads them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use eddy_storage::ObjectDef;

use crate::core::Core;
use crate::durable::DurableSubs;
use crate::error::Result;
use crate::writer::{NodeFigures, NodeRow};

/// Serves `eddy.<name>`; holds what it reads weakly (the core owns the catalog holding
/// this).
#[derive(Debug)]
pub(crate) struct SystemSchema {
    pub(crate) core: Weak<Core>,
    pub(crate) durable: Weak<DurableSubs>,
}

const TABLES: [&str; 7] = [
    "partitions",
    "subscriptions",
    "nodes",
    "raft_groups",
    "gossip_peers",
    "routing",
    "metrics",
];

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| (*s).to_owned()).collect()
    }
    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let (Some(core), Some(durable)) = (self.core.upgrade(), self.durable.upgrade()) else {
            return Ok(None);
        };
        let batch = match name {
            "partitions" => core.partitions_batch().await,
            "subscriptions" => core.subscriptions_batch(&durable).await,
            "nodes" => core.nodes_batch(),
            "raft_groups" => core.raft_groups_batch(),
            "gossip_peers" => core.gossip_peers_batch(),
            "routing" => core.routing_batch(),
            "metrics" => core.metrics_batch(),
            _ => return Ok(None),
        }
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }
    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

/// The columns of `eddy.nodes` and `SHOW CLUSTER`.
pub(crate) fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node_id", DataType::Int64, false),
        Field::new("pg_addr", DataType::Utf8, false),
        Field::new("cluster_addr", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("this_node", DataType::Boolean, false),
        Field::new("link", DataType::Utf8, false),
        Field::new("gossip", DataType::Utf8, true),
        Field::new("zone", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, true),
        Field::new("connections", DataType::Int64, true),
        Field::new("in_flight", DataType::Int64, true),
        Field::new("queued", DataType::Int64, true),
        Field::new("service_ms", DataType::Float64, true),
        Field::new("statements_per_s", DataType::Int64, true),
        Field::new("cpu", DataType::Float64, true),
        Field::new("subscriptions", DataType::Int64, true),
        Field::new("subscription_bytes_per_s", DataType::Int64, true),
        Field::new("leaders", DataType::Int64, true),
        Field::new("writes_per_s", DataType::Int64, true),
        Field::new("hot", DataType::Boolean, true),
        Field::new("figures_age_ms", DataType::Int64, true),
        Field::new("frames_refused", DataType::Int64, true),
        Field::new("calls_dropped", DataType::Int64, true),
        Field::new("gossip_lost", DataType::Int64, true),
        Field::new("forwards_failed", DataType::Int64, true),
        Field::new("statements_slowed", DataType::Int64, true),
        Field::new("hlc", DataType::Int64, true),
    ]))
}

/// The columns of `EXPLAIN ROUTE`.
pub(crate) fn route_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node_id", DataType::Int64, false),
        Field::new("pg_addr", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("leader", DataType::Boolean, false),
        Field::new("load", DataType::Int64, false),
        Field::new("latency_ms", DataType::Float64, true),
        Field::new("cpu", DataType::Float64, true),
        Field::new("figures_age_ms", DataType::Int64, true),
        Field::new("cost", DataType::Float64, true),
        Field::new("chosen", DataType::Boolean, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

/// `EXPLAIN ROUTE`'s rows.
pub(crate) fn route_batch(rows: &[crate::writer::RouteRow]) -> Result<RecordBatch> {
    let f64s = |f: fn(&crate::writer::RouteRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let bools = |f: fn(&crate::writer::RouteRow) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    Ok(RecordBatch::try_new(
        route_schema(),
        vec![
            int8(rows.iter().map(|r| r.node).collect()),
            text(rows.iter().map(|r| Some(r.pg_addr.clone())).collect()),
            text(rows.iter().map(|r| Some(r.state.clone())).collect()),
            bools(|r| r.leader),
            int8(rows.iter().map(|r| r.load).collect()),
            f64s(|r| r.latency_ms),
            f64s(|r| r.cpu),
            opt_int8(rows.iter().map(|r| r.figures_age_ms).collect()),
            f64s(|r| r.cost),
            bools(|r| r.chosen),
            text(rows.iter().map(|r| Some(r.reason.clone())).collect()),
        ],
    )?)
}

fn opt_int8(v: Vec<Option<u64>>) -> ArrayRef {
    Arc::new(Int64Array::from(
        v.into_iter()
            .map(|x| x.map(|x| x as i64))
            .collect::<Vec<_>>(),
    ))
}

/// A column of one load figure of each node (NULL where none was heard).
fn figure(rows: &[NodeRow], f: impl Fn(&NodeFigures) -> u64) -> ArrayRef {
    opt_int8(rows.iter().map(|r| r.figures.as_ref().map(&f)).collect())
}

fn figure_f64(rows: &[NodeRow], f: impl Fn(&NodeFigures) -> f64) -> ArrayRef {
    Arc::new(Float64Array::from(
        rows.iter()
            .map(|r| r.figures.as_ref().map(&f))
            .collect::<Vec<_>>(),
    ))
}

fn text(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn int8(v: Vec<u64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        v.into_iter().map(|x| x as i64),
    ))
}

/// Renders per-partition offsets as `0:41 1:17`.
fn positions_text(next: &[u64]) -> String {
    next.iter()
        .enumerate()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Core {
    /// `eddy.partitions`: every topic partition's retained start offset and next offset
    /// (its high watermark), and its Raft group's leader and replicas: from this node's
    /// replica, or for a partition without one here, from a node that has one (NULL
    /// offsets and leader when none answers).
    async fn partitions_batch(&self) -> Result<RecordBatch> {
        let groups: std::collections::HashMap<(String, u32), (Option<u64>, String)> = self
            .writer
            .raft_groups()
            .into_iter()
            .filter_map(|g| Some(((g.object?, g.partition), (g.leader, g.replicas))))
            .collect();
        let topics: Vec<_> = self
            .store()
            .catalog()
            .list()
            .into_iter()
            .filter_map(|obj| match &*obj {
                ObjectDef::Topic(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        // Placed on this node, though its group may not run yet (a topic just created).
        let me = self
            .writer
            .nodes()
            .into_iter()
            .find(|n| n.this_node)
            .map(|n| n.id);
        let placed_here = |t: &eddy_storage::TopicDef, p: u32| {
            t.placement
                .get(p as usize)
                .is_some_and(|nodes| me.is_some_and(|me| nodes.contains(&me)))
        };
        // Raft partitions without a replica here: a replica tells.
        let elsewhere = |t: &eddy_storage::TopicDef, p: u32| {
            !groups.contains_key(&(t.name.clone(), p))
                && t.placement.get(p as usize).is_some()
                && !placed_here(t, p)
        };
        let wanted: Vec<(u32, u32)> = topics
            .iter()
            .flat_map(|t| {
                (0..t.partitions)
                    .filter(|p| elsewhere(t, *p))
                    .map(|p| (t.id, p))
            })
            .collect();
        let remote: std::collections::HashMap<(u32, u32), crate::writer::PartitionRow> =
            if wanted.is_empty() {
                Default::default()
            } else {
                self.writer
                    .remote_partitions(&wanted)
                    .await
                    .into_iter()
                    .map(|r| ((r.topic, r.partition), r))
                    .collect()
            };
        let (mut topic, mut part, mut start, mut next) = (vec![], vec![], vec![], vec![]);
        let (mut leader, mut replicas) = (vec![], vec![]);
        for t in &topics {
            for p in 0..t.partitions {
                topic.push(Some(t.name.clone()));
                part.push(p as i32);
                let placed = t.placement.get(p as usize).map(|nodes| {
                    nodes
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                let here = |leader: Option<u64>, replicas: Option<String>| {
                    let state = self.store().partition(t, p)?;
                    Ok::<_, crate::error::Error>((
                        Some(state.start_offset()),
                        Some(state.next_offset()),
                        leader,
                        replicas,
                    ))
                };
                let (s, n, l, r) = match (groups.get(&(t.name.clone(), p)), placed) {
                    // This node's replica.
                    (Some((l, r)), _) => here(*l, Some(r.clone()))?,
                    // This node's replica, its group not started yet: no leader known.
                    (None, Some(placed)) if placed_here(t, p) => here(None, Some(placed))?,
                    // A replica elsewhere tells (see `wanted`); unknown if none answered.
                    (None, Some(placed)) => match remote.get(&(t.id, p)) {
                        Some(row) => (
                            Some(row.start_offset),
                            Some(row.next_offset),
                            row.leader,
                            Some(placed),
                        ),
                        None => (None, None, None, Some(placed)),
                    },
                    // A local (gossip) topic.
                    (None, None) => here(None, None)?,
                };
                start.push(s);
                next.push(n);
                leader.push(l);
                replicas.push(r);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("start_offset", DataType::Int64, true),
            Field::new("next_offset", DataType::Int64, true),
            Field::new("leader", DataType::Int64, true),
            Field::new("replicas", DataType::Utf8, true),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                text(topic),
                Arc::new(Int32Array::from(part)),
                opt_int8(start),
                opt_int8(next),
                opt_int8(leader),
                text(replicas),
            ],
        )?)
    }

    /// `eddy.nodes` (and `SHOW CLUSTER`): the cluster's members as this node's metadata
    /// replica knows them.
    pub(crate) fn nodes_batch(&self) -> Result<RecordBatch> {
        let rows = self.writer.nodes();
        Ok(RecordBatch::try_new(
            nodes_schema(),
            vec![
                int8(rows.iter().map(|r| r.id).collect()),
                text(rows.iter().map(|r| Some(r.pg_addr.clone())).collect()),
                text(rows.iter().map(|r| Some(r.cluster_addr.clone())).collect()),
                text(rows.iter().map(|r| Some(r.role.clone())).collect()),
                Arc::new(BooleanArray::from(
                    rows.iter().map(|r| r.this_node).collect::<Vec<_>>(),
                )),
                text(rows.iter().map(|r| Some(r.link.clone())).collect()),
                text(rows.iter().map(|r| r.gossip.clone()).collect()),
                text(rows.iter().map(|r| r.zone.clone()).collect()),
                text(
                    rows.iter()
                        .map(|r| {
                            r.figures
                                .as_ref()
                                .map(|f| if f.draining { "draining" } else { "serving" }.to_owned())
                        })
                        .collect(),
                ),
                figure(&rows, |f| f.connections.into()),
                figure(&rows, |f| f.in_flight.into()),
                figure(&rows, |f| f.queued.into()),
                figure_f64(&rows, |f| f.service_us as f64 / 1000.0),
                figure(&rows, |f| f.statements_per_s),
                figure_f64(&rows, |f| f64::from(f.cpu_permille) / 1000.0),
                figure(&rows, |f| f.subscriptions.into()),
                figure(&rows, |f| f.subscription_bytes_per_s),
                figure(&rows, |f| f.leaders.into()),
                figure(&rows, |f| f.writes_per_s),
                Arc::new(BooleanArray::from(
                    rows.iter()
                        .map(|r| r.figures.as_ref().map(|f| f.hot))
                        .collect::<Vec<_>>(),
                )),
                opt_int8(rows.iter().map(|r| r.figures_age_ms).collect()),
                opt_int8(rows.iter().map(|r| r.frames_refused).collect()),
                opt_int8(
                    rows.iter()
                        .map(|r| r.faults.map(|f| f.calls_dropped))
                        .collect(),
                ),
                opt_int8(
                    rows.iter()
                        .map(|r| r.faults.map(|f| f.gossip_lost))
                        .collect(),
                ),
                opt_int8(
                    rows.iter()
                        .map(|r| r.faults.map(|f| f.forwards_failed))
                        .collect(),
                ),
                opt_int8(
                    rows.iter()
                        .map(|r| r.faults.map(|f| f.statements_slowed))
                        .collect(),
                ),
                opt_int8(rows.iter().map(|r| r.hlc).collect()),
            ],
        )?)
    }

    /// `eddy.routing`: what this node's router decided, a counter a row.
    fn routing_batch(&self) -> Result<RecordBatch> {
        let rows = self.writer.routing();
        let node = self.writer.node_id();
        let schema = Arc::new(Schema::new(vec![
            Field::new("node_id", DataType::Int64, true),
            Field::new("counter", DataType::Utf8, false),
            Field::new("detail", DataType::Utf8, false),
            Field::new("value", DataType::Int64, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                opt_int8(vec![node; rows.len()]),
                text(rows.iter().map(|r| Some(r.counter.clone())).collect()),
                text(rows.iter().map(|r| Some(r.detail.clone())).collect()),
                int8(rows.iter().map(|r| r.value).collect()),
            ],
        )?)
    }

    /// `eddy.metrics`: latency percentiles of what this node served, per kind of work.
    fn metrics_batch(&self) -> Result<RecordBatch> {
        let rows = self.writer.metrics();
        let node = self.writer.node_id();
        let ms = |n: &str| Field::new(n, DataType::Float64, false);
        let schema = Arc::new(Schema::new(vec![
            Field::new("node_id", DataType::Int64, true),
            Field::new("metric", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            ms("p50_ms"),
            ms("p90_ms"),
            ms("p99_ms"),
            ms("p99_9_ms"),
            ms("max_ms"),
        ]));
        let col = |f: fn(&crate::writer::MetricRow) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
        };
        Ok(RecordBatch::try_new(
            schema,
            vec![
                opt_int8(vec![node; rows.len()]),
                text(rows.iter().map(|r| Some(r.metric.clone())).collect()),
                int8(rows.iter().map(|r| r.count).collect()),
                col(|r| r.p50_ms),
                col(|r| r.p90_ms),
                col(|r| r.p99_ms),
                col(|r| r.p999_ms),
                col(|r| r.max_ms),
            ],
        )?)
    }

    /// `eddy.gossip_peers`: per peer, what this node's delta gossip exchanged with it.
    fn gossip_peers_batch(&self) -> Result<RecordBatch> {
        let rows = self.writer.gossip_peers();
        let int8f = |n: &str| Field::new(n, DataType::Int64, false);
        let schema = Arc::new(Schema::new(vec![
            int8f("peer"),
            Field::new("status", DataType::Utf8, false),
            int8f("pushed"),
            int8f("pushed_bytes"),
            int8f("pulled"),
            int8f("pulled_bytes"),
            int8f("refused"),
            int8f("failures"),
            Field::new(
                "last_sync",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                true,
            ),
        ]));
        let col = |f: fn(&crate::writer::GossipPeerRow) -> u64| int8(rows.iter().map(f).collect());
        Ok(RecordBatch::try_new(
            schema,
            vec![
                col(|r| r.peer),
                text(rows.iter().map(|r| Some(r.status.clone())).collect()),
                col(|r| r.pushed),
                col(|r| r.pushed_bytes),
                col(|r| r.pulled),
                col(|r| r.pulled_bytes),
                col(|r| r.refused),
                col(|r| r.failures),
                Arc::new(arrow::array::TimestampMicrosecondArray::from(
                    rows.iter().map(|r| r.last_sync_micros).collect::<Vec<_>>(),
                )),
            ],
        )?)
    }

    /// `eddy.raft_groups`: the Raft groups this node holds a replica of.
    fn raft_groups_batch(&self) -> Result<RecordBatch> {
        let rows = self.writer.raft_groups();
        let opt = opt_int8;
        let schema = Arc::new(Schema::new(vec![
            Field::new("group_id", DataType::Int64, false),
            Field::new("object", DataType::Utf8, true),
            Field::new("partition", DataType::Int32, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("leader", DataType::Int64, true),
            Field::new("term", DataType::Int64, false),
            Field::new("last_log_index", DataType::Int64, true),
            Field::new("commit_index", DataType::Int64, true),
            Field::new("applied_index", DataType::Int64, true),
            Field::new("replicas", DataType::Utf8, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                int8(rows.iter().map(|r| r.group).collect()),
                text(rows.iter().map(|r| r.object.clone()).collect()),
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.partition as i32).collect::<Vec<_>>(),
                )),
                text(rows.iter().map(|r| Some(r.state.clone())).collect()),
                opt(rows.iter().map(|r| r.leader).collect()),
                int8(rows.iter().map(|r| r.term).collect()),
                opt(rows.iter().map(|r| r.last_log_index).collect()),
                opt(rows.iter().map(|r| r.commit_index).collect()),
                opt(rows.iter().map(|r| r.applied_index).collect()),
                text(rows.iter().map(|r| Some(r.replicas.clone())).collect()),
            ],
        )?)
    }

    /// The columns of `eddy.subscriptions`.
    pub(crate) fn subscriptions_schema() -> SchemaRef {
        let int8 = |n: &str| Field::new(n, DataType::Int64, false);
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("kind", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("filter", DataType::Utf8, true),
            Field::new("position", DataType::Utf8, false),
            int8("lag"),
            int8("pending"),
            int8("delivered"),
            int8("redelivered"),
            int8("acked"),
            int8("dead_lettered"),
            int8("buffered_bytes"),
            int8("waiting"),
        ]))
    }

    /// `eddy.subscriptions`: durable subscriptions, then live ephemeral ones.
    pub(crate) async fn subscriptions_batch(&self, durable: &DurableSubs) -> Result<RecordBatch> {
        let mut rows: Vec<SubRow> = Vec::new();
        let loaded = durable.loaded();
        for obj in self.store().catalog().list() {
            let ObjectDef::Subscription(sub) = &*obj else {
                continue;
            };
            let Some(ObjectDef::Topic(topic)) =
                self.store().catalog().by_id(sub.topic).as_deref().cloned()
            else {
                continue;
            };
            let served = loaded.iter().find(|d| d.def.id == sub.id);
            let (next, pending) = match served {
                Some(d) => {
                    let v = d.view().await;
                    (v.next, v.pending)
                }
                None => {
                    let stored = self.store().subscription_state(sub, topic.partitions)?;
                    let pending = stored.iter().map(|s| s.pending.len() as u64).sum();
                    (stored.into_iter().map(|s| s.next).collect(), pending)
                }
            };
            let c = served.map(|d| &d.counters);
            let count = |f: fn(&crate::durable::DurableCounters) -> u64| c.map_or(0, f);
            rows.push(SubRow {
                name: Some(sub.name.clone()),
                kind: "durable",
                topic: topic.name.clone(),
                filter: sub.filter.clone(),
                lag: self.lag(&topic, &next)? + pending,
                position: positions_text(&next),
                pending,
                delivered: count(|c| c.delivered.load(Ordering::Relaxed)),
                redelivered: count(|c| c.redelivered.load(Ordering::Relaxed)),
                acked: count(|c| c.acked.load(Ordering::Relaxed)),
                dead_lettered: count(|c| c.dead_lettered.load(Ordering::Relaxed)),
                buffered_bytes: 0,
                waiting: count(|c| c.waiting.load(Ordering::Relaxed)),
            });
        }
        for s in self.subscriptions.list() {
            let next: Vec<u64> = s.next.iter().map(|n| n.load(Ordering::Relaxed)).collect();
            rows.push(SubRow {
                name: None,
                kind: s.kind,
                topic: s.object.clone(),
                filter: s.filter.clone(),
                lag: self.lag(&s.log, &next)?,
                position: positions_text(&next),
                pending: 0,
                delivered: s.rows.load(Ordering::Relaxed),
                redelivered: 0,
                acked: 0,
                dead_lettered: 0,
                buffered_bytes: s.buffered_bytes.load(Ordering::Relaxed),
                waiting: s.waiting.load(Ordering::Relaxed),
            });
        }
        let col = |f: fn(&SubRow) -> u64| int8(rows.iter().map(f).collect());
        Ok(RecordBatch::try_new(
            Self::subscriptions_schema(),
            vec![
                text(rows.iter().map(|r| r.name.clone()).collect()),
                text(rows.iter().map(|r| Some(r.kind.to_owned())).collect()),
                text(rows.iter().map(|r| Some(r.topic.clone())).collect()),
                text(rows.iter().map(|r| r.filter.clone()).collect()),
                text(rows.iter().map(|r| Some(r.position.clone())).collect()),
                col(|r| r.lag),
                col(|r| r.pending),
                col(|r| r.delivered),
                col(|r| r.redelivered),
                col(|r| r.acked),
                col(|r| r.dead_lettered),
                col(|r| r.buffered_bytes),
                col(|r| r.waiting),
            ],
        )?)
    }

    /// Rows between each partition's position and its head.
    fn lag(&self, topic: &eddy_storage::TopicDef, next: &[u64]) -> Result<u64> {
        let mut lag = 0;
        for (p, n) in next.iter().enumerate() {
            lag += self
                .store()
                .partition(topic, p as u32)?
                .next_offset()
                .saturating_sub(*n);
        }
        Ok(lag)
    }
}

struct SubRow {
    name: Option<String>,
    kind: &'static str,
    topic: String,
    filter: Option<String>,
    position: String,
    lag: u64,
    pending: u64,
    delivered: u64,
    redelivered: u64,
    acked: u64,
    dead_lettered: u64,
    buffered_bytes: u64,
    waiting: u64,
}
