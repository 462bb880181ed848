//! Writes to topics: rows (with `_key` and `_msg_id` first) encoded per partition on the
//! session's thread, appended (once per message id, when they carry one), and answered
//! with where each went.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use eddy_storage::{
    partition_for_key, Lane, Records, Replication, TopicDef, Value, WriteOp, WriteResult,
};

use super::{returning_output, DmlPlan};
use crate::convert::build_array;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::provider::topic_schema;

/// How many of a topic's [`super::write_columns`] are metadata an INSERT may set: `_key` (picks
/// the partition) and `_msg_id` (a message id: a message whose id its partition took
/// within the topic's `dedup_window` is not stored again). Without a column list an
/// INSERT or COPY fills the user columns only.
pub(crate) const TOPIC_WRITE_META: usize = 2;

/// Longest `_msg_id`, in bytes.
const MAX_MSG_ID_BYTES: usize = 256;

/// A message written to a topic: where it went.
pub(super) struct Appended {
    partition: u32,
    offset: u64,
    ts: i64,
    key: Option<String>,
    values: Vec<Value>,
}

pub(super) async fn append(
    engine: &Core,
    lane: Lane,
    topic: &TopicDef,
    rows: Vec<Vec<Value>>,
) -> Result<Vec<Appended>> {
    // Encode per partition here, on the session's thread; keep each row's position and
    // values for the answer.
    #[derive(Default)]
    struct Part {
        records: Records,
        rows: Vec<(usize, Option<String>, Vec<Value>)>,
        /// One per row when some row has a message id.
        ids: Vec<Option<String>>,
    }
    let mut by_partition: std::collections::BTreeMap<u32, Part> = Default::default();
    let n = rows.len();
    let mut round_robin = engine.round_robin(topic);
    for (pos, mut row) in rows.into_iter().enumerate() {
        let mut meta = row
            .drain(..TOPIC_WRITE_META.min(row.len()))
            .map(|v| match v {
                Value::Text(t) => Ok(Some(t)),
                Value::Null => Ok(None),
                other => Err(other),
            });
        let key = meta.next().unwrap_or(Ok(None));
        let msg_id = meta.next().unwrap_or(Ok(None));
        drop(meta);
        let key =
            key.map_err(|v| Error::DatatypeMismatch(format!("_key must be text, got {v:?}")))?;
        let msg_id = msg_id
            .map_err(|v| Error::DatatypeMismatch(format!("_msg_id must be text, got {v:?}")))?;
        if let Some(id) = &msg_id {
            check_msg_id(topic, id)?;
        }
        // A retried message must reach the partition that took it: without a key, its
        // id picks the partition.
        let partition = match (&key, &msg_id) {
            (Some(k), _) | (None, Some(k)) => partition_for_key(k, topic.partitions),
            (None, None) => round_robin.next(),
        };
        let part = by_partition.entry(partition).or_default();
        let size = part.records.push(&topic.columns, key.as_deref(), &row)?;
        if size > engine.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                limit: engine.config.max_message_bytes,
            });
        }
        if msg_id.is_some() && part.ids.is_empty() {
            part.ids = vec![None; part.rows.len()];
        }
        if msg_id.is_some() || !part.ids.is_empty() {
            part.ids.push(msg_id);
        }
        part.rows.push((pos, key, row));
    }
    let mut kept = Vec::new();
    let mut ops = Vec::new();
    for (p, part) in by_partition {
        kept.push(part.rows);
        ops.push(if part.ids.is_empty() {
            WriteOp::Append {
                topic: topic.id,
                partition: p,
                records: part.records,
            }
        } else {
            WriteOp::AppendOnce {
                topic: topic.id,
                partition: p,
                ids: part.ids,
                records: part.records,
            }
        });
    }
    let results = engine.write(lane, ops).await?;
    let mut out: Vec<Option<Appended>> = (0..n).map(|_| None).collect();
    for (rows, res) in kept.into_iter().zip(results) {
        let (partition, each): (u32, Box<dyn Iterator<Item = (u64, i64)>>) = match res {
            WriteResult::Appended {
                partition,
                first_offset,
                ts_micros,
            } => (
                partition,
                Box::new((first_offset..).map(move |o| (o, ts_micros))),
            ),
            WriteResult::Positions { partition, each } => (partition, Box::new(each.into_iter())),
            _ => continue,
        };
        for ((pos, key, values), (offset, ts)) in rows.into_iter().zip(each) {
            out[pos] = Some(Appended {
                partition,
                offset,
                ts,
                key,
                values,
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Refuses a message id eddy cannot keep: one on a gossip topic, or too long.
fn check_msg_id(topic: &TopicDef, id: &str) -> Result<()> {
    if topic.replication == Replication::Gossip {
        return Err(Error::NotSupported(format!(
            "_msg_id on a topic replicated by gossip (\"{}\")",
            topic.name
        )));
    }
    if id.len() > MAX_MSG_ID_BYTES {
        return Err(Error::InvalidParameter(format!(
            "_msg_id is {} bytes; the limit is {MAX_MSG_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Appends already-typed messages (`_key` and `_msg_id` first); used by COPY.
pub(crate) async fn append_rows(
    engine: &Core,
    lane: Lane,
    topic: &TopicDef,
    rows: Vec<Vec<Value>>,
) -> Result<u64> {
    Ok(append(engine, lane, topic, rows).await?.len() as u64)
}

pub(super) fn finish_topic(
    plan: &DmlPlan,
    topic: &TopicDef,
    written: Vec<Appended>,
) -> Result<Output> {
    let Some(ret) = &plan.returning else {
        return Ok(Output::Command {
            tag: "INSERT 0".into(),
            rows: Some(written.len() as u64),
        });
    };
    let schema = topic_schema(topic);
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(
            written.iter().map(|w| w.partition as i32),
        )),
        Arc::new(Int64Array::from_iter_values(
            written.iter().map(|w| w.offset as i64),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            written.iter().map(|w| w.ts),
        )),
        Arc::new(StringArray::from_iter(
            written.iter().map(|w| w.key.as_deref()),
        )),
    ];
    for (i, c) in topic.columns.iter().enumerate() {
        cols.push(build_array(c.ty, written.iter().map(|w| &w.values[i])));
    }
    let batch = RecordBatch::try_new(schema, cols)?;
    returning_output(ret, batch, "INSERT 0")
}
