//! Column families and key layout — the one place that says how bytes are arranged.
//!
//! | column family | key                                   | value                          |
//! |---------------|---------------------------------------|--------------------------------|
//! | `catalog`     | `u32 object id`                       | JSON [`ObjectDef`]             |
//! | `meta`        | ASCII name (`next_object_id`)         | big-endian u32                 |
//! | `log`         | `u32 topic id, u32 partition, u64 first offset` | a log entry (below)  |
//! | `log`         | `u32 topic id, u32 partition`         | `u64` first retained offset (after a trim) |
//! | `log`         | `u32 table id, u32 0, u64 first offset` (a table's change log) | a log entry, key = `insert`/`update`/`delete` |
//! | `log`         | `u32 topic id, u32 partition, u64::MAX, 0x00, id` ([`msg_id_key`]) | append time and offset of the message that took the id |
//! | `log`         | `u32 topic id, u32 partition, u64::MAX, 0x01, u64 time, id` | empty: the ids by the time they were taken |
//! | `rows`        | `u32 table id ++ memcomparable primary key` | [`crate::value::encode_row`] |
//! | `subs`        | `u32 sub id, u32 partition, 0x00`     | `u64` next offset to read      |
//! | `subs`        | `u32 sub id, u32 partition, 0x01, u64 offset` | `u32` deliveries of a pending row |
//! | `gossip`      | `u32 object id, tag, ...` (see [`crate::gossip`]) | delta log, version vectors, row versions |
//! | `raft`        | `u64 group, ...` (see [`crate::raft`]) | Raft logs and slots, opaque bytes |
//!
//! A *log entry* holds the messages of one append (split at about [`ENTRY_TARGET_BYTES`]),
//! at consecutive offsets from the one in its key, all with one append time:
//! `i64 LE append time · u32 LE count · count × (u32 LE len · varint(keylen+1) _key · row)`
//! (a `_key` of 0 is NULL). One RocksDB entry per append instead of one per message keeps
//! the memtable, the WAL framing and compaction per batch, not per message.
//!
//! Every key starts with the object id, so dropping an object is one range delete and a
//! scan of one partition's offset range is one bounded iterator.

use crate::catalog::{ColumnDef, ObjectId};
use crate::error::{Error, Result};
use crate::keys::{KeyReader, KeyWriter};
use crate::value::{decode_row, encode_row, get_varint, put_varint, ColumnType, Value};

pub(crate) const CF_CATALOG: &str = "catalog";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_ROWS: &str = "rows";
pub(crate) const CF_SUBS: &str = "subs";
/// Gossip replication: delta log, version vectors, row versions (see [`crate::gossip`]).
pub(crate) const CF_GOSSIP: &str = "gossip";
/// Raft groups' own state: their logs and slots (see [`crate::raft`]).
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const ALL_CFS: [&str; 7] = [
    CF_CATALOG, CF_META, CF_LOG, CF_ROWS, CF_SUBS, CF_GOSSIP, CF_RAFT,
];

/// Key of a subscription partition's read position.
pub(crate) fn sub_next_key(sub: ObjectId, partition: u32) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..4].copy_from_slice(&sub.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k
}

/// Key of one pending (delivered or waiting, unacked) row of a subscription.
pub(crate) fn sub_pending_key(sub: ObjectId, partition: u32, offset: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..4].copy_from_slice(&sub.to_be_bytes());
    k[4..8].copy_from_slice(&partition.to_be_bytes());
    k[8] = 1;
    k[9..].copy_from_slice(&offset.to_be_bytes());
    k
}

pub(crate) const META_NEXT_OBJECT_ID: &[u8] = b"next_object_id";

/// Key of a catalog entry.
pub(crate) fn catalog_key(id: ObjectId) -> [u8; 4] {
    id.to_be_bytes()
}

/// Key of the log entry whose first message has this offset: topic, partition, offset.
pub fn log_key(topic: ObjectId, partition: u32, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&log_start_key(topic, partition));
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Key of a partition's first retained offset (written by a trim). It sorts before every
/// entry of the partition, and is shorter than an entry key.
pub(crate) fn log_start_key(topic: ObjectId, partition: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&topic.to_be_bytes());
    k[4..].copy_from_slice(&partition.to_be_bytes());
    k
}

/// Key of a message id a partition took (idempotent publishes): `log_key(.., u64::MAX) ·
/// 0x00 · id`, with the append time and offset of the message as value
/// ([`msg_id_value`]). No entry has offset `u64::MAX`, so these keys sort after every
/// entry of the partition, inside its snapshot range; they are longer than entry keys,
/// which is how scans of entries tell them apart.
pub(crate) fn msg_id_key(topic: ObjectId, partition: u32, id: &[u8]) -> Vec<u8> {
    let mut k = msg_id_space(topic, partition, 0, id.len());
    k.extend_from_slice(id);
    k
}

/// Key of a message id in its partition's expiry index, by append time:
/// `log_key(.., u64::MAX) · 0x01 · u64 append time · id` (empty value).
pub(crate) fn msg_id_expiry_key(topic: ObjectId, partition: u32, ts: i64, id: &[u8]) -> Vec<u8> {
    let mut k = msg_id_space(topic, partition, 1, 8 + id.len());
    k.extend_from_slice(&(ts.max(0) as u64).to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// The start of a partition's expiry index.
pub(crate) fn msg_id_expiry_start(topic: ObjectId, partition: u32) -> Vec<u8> {
    msg_id_space(topic, partition, 1, 0)
}

/// The append time and id of an expiry index key.
pub(crate) fn msg_id_expiry_parts(key: &[u8]) -> Option<(i64, &[u8])> {
    let rest = key.get(MSG_ID_SPACE..)?;
    let ts: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(ts) as i64, &rest[8..]))
}

/// The value of a [`msg_id_key`]: the message's append time and offset.
pub(crate) fn msg_id_value(ts: i64, offset: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v
}

/// Reads a [`msg_id_value`].
pub(crate) fn parse_msg_id_value(v: &[u8]) -> Result<(i64, u64)> {
    let (ts, offset) = v
        .split_first_chunk::<8>()
        .and_then(|(ts, rest)| Some((*ts, *rest.first_chunk::<8>()?)))
        .ok_or_else(|| Error::corrupt("message id value"))?;
    Ok((i64::from_be_bytes(ts), u64::from_be_bytes(offset)))
}

/// Length of the prefix of message id keys: the partition's `log_key(.., u64::MAX)` and a tag.
const MSG_ID_SPACE: usize = 17;

fn msg_id_space(topic: ObjectId, partition: u32, tag: u8, more: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(MSG_ID_SPACE + more);
    k.extend_from_slice(&log_key(topic, partition, u64::MAX));
    k.push(tag);
    k
}

/// The first offset of an entry key of `topic`/`partition`; `None` for any other key
/// (another partition's, or the partition's start key).
pub(crate) fn entry_first_offset(key: &[u8], topic: ObjectId, partition: u32) -> Option<u64> {
    if key.len() != 16 || key[..8] != log_start_key(topic, partition) {
        return None;
    }
    let mut r = KeyReader::new(&key[8..]);
    r.u64().ok()
}

/// Prefix of every row key of a table.
pub fn table_prefix(table: ObjectId) -> [u8; 4] {
    table.to_be_bytes()
}

/// Key of one table row: table id followed by the primary key values.
pub fn row_key(table: ObjectId, pk: &[&Value]) -> Result<Vec<u8>> {
    let mut w = KeyWriter::with_capacity(32);
    w.u32(table);
    for v in pk {
        v.encode_key(&mut w)?;
    }
    Ok(w.finish())
}

/// One message as stored: everything but its position, which the key holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Append time, microseconds since the epoch (UTC); non-decreasing within a partition.
    pub ts_micros: i64,
    /// The `_key` column.
    pub key: Option<String>,
    /// User column values.
    pub values: Vec<Value>,
}

/// Encoded size at which a [`Records`] builder starts its next entry.
pub const ENTRY_TARGET_BYTES: usize = 64 * 1024;

/// Bytes before the first message of an entry: append time and count.
const ENTRY_HEADER: usize = 12;

/// Messages encoded for one append, ready to be stored as log entries.
///
/// Built by the writer (a session), so encoding runs in parallel on many threads; the
/// committer only stamps each entry's append time and count and stores it. [`Records::push`]
/// checks every message against the topic's columns, so the committer trusts the bytes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Records {
    entries: Vec<EntryBuf>,
    len: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct EntryBuf {
    /// Header placeholder, then the messages.
    #[serde(with = "serde_bytes")]
    buf: Vec<u8>,
    count: u32,
}

impl Records {
    /// No messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of messages.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when there are no messages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encoded bytes of every message (without entry headers).
    pub fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.buf.len() - ENTRY_HEADER)
            .sum()
    }

    /// Appends one message after checking it against `columns` (arity, types, NOT NULL).
    /// Returns the message's encoded size (its `_key` and row), for size limits.
    pub fn push(
        &mut self,
        columns: &[ColumnDef],
        key: Option<&str>,
        values: &[Value],
    ) -> Result<usize> {
        check_row(columns, values)?;
        Ok(self.push_with(key, |buf| encode_row(values, buf)))
    }

    /// The messages of one stored log entry (another node's, received by gossip), checked
    /// against the topic's column types; the entry keeps its bytes and gets a new append
    /// time when sealed.
    pub(crate) fn from_entry(buf: Vec<u8>, types: &[ColumnType]) -> Result<Records> {
        let entry = Entry::parse(&buf)?;
        let count = entry.count;
        let mut seen = 0u32;
        entry.decode(types, 0, usize::MAX, |_, _| seen += 1)?;
        if seen != count {
            return Err(Error::corrupt(
                "log entry count does not match its messages",
            ));
        }
        if count == 0 {
            return Ok(Records::new());
        }
        Ok(Records {
            entries: vec![EntryBuf { buf, count }],
            len: u64::from(count),
        })
    }

    /// Appends a message whose row is already encoded (a table's change log).
    pub(crate) fn push_encoded(&mut self, key: Option<&str>, row: &[u8]) {
        self.push_with(key, |buf| buf.extend_from_slice(row));
    }

    /// The messages whose flag in `keep` (one per message, in order) is set.
    pub(crate) fn retain(&self, keep: &[bool]) -> Result<Records> {
        let mut out = Records::new();
        let mut flags = keep.iter();
        for e in &self.entries {
            let mut body = &e.buf[ENTRY_HEADER..];
            for _ in 0..e.count {
                let (len, rest) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| Error::corrupt("message length"))?;
                let len = u32::from_le_bytes(*len) as usize;
                let message = rest
                    .get(..len)
                    .ok_or_else(|| Error::corrupt("message shorter than its length"))?;
                if flags.next().copied().unwrap_or(true) {
                    out.push_message(|buf| buf.extend_from_slice(message));
                }
                body = &rest[len..];
            }
        }
        Ok(out)
    }

    fn push_with(&mut self, key: Option<&str>, row: impl FnOnce(&mut Vec<u8>)) -> usize {
        self.push_message(|buf| {
            match key {
                None => buf.push(0),
                Some(k) => {
                    // len+1 so that 0 can mean NULL.
                    put_varint(buf, k.len() as u64 + 1);
                    buf.extend_from_slice(k.as_bytes());
                }
            }
            row(buf);
        })
    }

    /// Appends one message that `message` writes (its `_key` then its row), framed with
    /// its length; returns that length.
    fn push_message(&mut self, message: impl FnOnce(&mut Vec<u8>)) -> usize {
        let entry = match self.entries.last_mut() {
            Some(e) if e.buf.len() < ENTRY_TARGET_BYTES => e,
            _ => {
                self.entries.push(EntryBuf {
                    buf: vec![0; ENTRY_HEADER],
                    count: 0,
                });
                // Just pushed.
                #[allow(clippy::expect_used)]
                self.entries.last_mut().expect("an entry")
            }
        };
        let buf = &mut entry.buf;
        let len_at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        message(buf);
        let size = buf.len() - len_at - 4;
        buf[len_at..len_at + 4].copy_from_slice(&(size as u32).to_le_bytes());
        entry.count += 1;
        self.len += 1;
        size
    }

    /// The finished entries, stamped with their append time: (message count, bytes).
    pub fn seal(self, ts_micros: i64) -> impl Iterator<Item = (u32, Vec<u8>)> {
        self.entries.into_iter().map(move |mut e| {
            e.buf[..8].copy_from_slice(&ts_micros.to_le_bytes());
            e.buf[8..12].copy_from_slice(&e.count.to_le_bytes());
            (e.count, e.buf)
        })
    }
}

/// A stored log entry, parsed lazily.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// Append time of every message in it.
    pub(crate) ts_micros: i64,
    /// Number of messages.
    pub(crate) count: u32,
    body: &'a [u8],
}

impl<'a> Entry<'a> {
    pub(crate) fn parse(buf: &'a [u8]) -> Result<Entry<'a>> {
        if buf.len() < ENTRY_HEADER {
            return Err(Error::corrupt("log entry shorter than its header"));
        }
        let (head, body) = buf.split_at(ENTRY_HEADER);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&head[..8]);
        let mut count = [0u8; 4];
        count.copy_from_slice(&head[8..]);
        Ok(Entry {
            ts_micros: i64::from_le_bytes(ts),
            count: u32::from_le_bytes(count),
            body,
        })
    }

    /// The header alone (time and count), detached from the buffer.
    pub(crate) fn header_only(self) -> Entry<'static> {
        Entry {
            ts_micros: self.ts_micros,
            count: self.count,
            body: &[],
        }
    }

    /// Decodes the messages at positions `skip..` (of `count`), at most `max` of them.
    pub(crate) fn decode(
        &self,
        types: &[ColumnType],
        skip: u32,
        max: usize,
        mut each: impl FnMut(u32, LogRecord),
    ) -> Result<()> {
        let mut rest = self.body;
        for i in 0..self
            .count
            .min(skip.saturating_add(max.min(u32::MAX as usize) as u32))
        {
            if rest.len() < 4 {
                return Err(Error::corrupt("truncated log entry"));
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&rest[..4]);
            let len = u32::from_le_bytes(len) as usize;
            let msg = rest
                .get(4..4 + len)
                .ok_or_else(|| Error::corrupt("truncated message in log entry"))?;
            rest = &rest[4 + len..];
            if i >= skip {
                each(i, decode_message(types, self.ts_micros, msg)?);
            }
        }
        Ok(())
    }
}

/// Decodes every message of a stored log entry (as [`Records::seal`] makes them).
pub fn decode_entry(types: &[ColumnType], buf: &[u8]) -> Result<Vec<LogRecord>> {
    let entry = Entry::parse(buf)?;
    let mut out = Vec::with_capacity(entry.count as usize);
    entry.decode(types, 0, usize::MAX, |_, r| out.push(r))?;
    Ok(out)
}

/// Decodes one message of an entry: `varint(keylen+1) _key · row`.
fn decode_message(types: &[ColumnType], ts_micros: i64, mut rest: &[u8]) -> Result<LogRecord> {
    let key = match get_varint(&mut rest)? {
        0 => None,
        n => {
            let len = (n - 1) as usize;
            if rest.len() < len {
                return Err(Error::corrupt("truncated message key"));
            }
            let (k, tail) = rest.split_at(len);
            rest = tail;
            Some(
                String::from_utf8(k.to_vec())
                    .map_err(|_| Error::corrupt("message key is not UTF-8"))?,
            )
        }
    };
    let values = decode_row(types, rest)?;
    Ok(LogRecord {
        ts_micros,
        key,
        values,
    })
}

/// Checks arity, types and NOT NULL of a row against its columns.
pub(crate) fn check_row(columns: &[ColumnDef], row: &[Value]) -> Result<()> {
    if row.len() != columns.len() {
        return Err(Error::InvalidValue(format!(
            "row has {} values, expected {}",
            row.len(),
            columns.len()
        )));
    }
    for (c, v) in columns.iter().zip(row) {
        match v.column_type() {
            None if !c.nullable => {
                return Err(Error::NotNull {
                    column: c.name.clone(),
                })
            }
            Some(t) if t != c.ty => {
                return Err(Error::InvalidValue(format!(
                    "column \"{}\" is of type {} but the value is {}",
                    c.name,
                    c.ty.sql_name(),
                    t.sql_name()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn col(name: &str, ty: ColumnType, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable,
        }
    }

    #[test]
    fn large_appends_split_into_entries_of_about_the_target_size() {
        let columns = [col("p", ColumnType::Text, false)];
        let mut recs = Records::new();
        let payload = Value::Text("x".repeat(1000));
        for _ in 0..200 {
            recs.push(&columns, Some("k"), std::slice::from_ref(&payload))
                .unwrap();
        }
        assert_eq!(recs.len(), 200);
        let entries: Vec<_> = recs.seal(7).collect();
        assert_eq!(entries.len(), 4, "200 kB in entries of about 64 KiB");
        assert_eq!(entries.iter().map(|(c, _)| c).sum::<u32>(), 200);
        for (count, buf) in &entries {
            assert!(buf.len() < ENTRY_TARGET_BYTES + 1100, "{}", buf.len());
            let e = Entry::parse(buf).unwrap();
            assert_eq!((e.count, e.ts_micros), (*count, 7));
        }
    }

    #[test]
    fn push_checks_the_row_against_the_columns() {
        let columns = [col("n", ColumnType::Int64, false)];
        let mut recs = Records::new();
        assert!(matches!(
            recs.push(&columns, None, &[Value::Null]),
            Err(Error::NotNull { .. })
        ));
        assert!(recs
            .push(&columns, None, &[Value::Text("x".into())])
            .is_err());
        assert!(recs.push(&columns, None, &[]).is_err());
        assert!(recs.is_empty(), "a refused message leaves nothing behind");
        assert_eq!(
            recs.push(&columns, Some("ab"), &[Value::Int64(5)]).unwrap(),
            3 + 1 + 1 + 8
        );
    }

    #[test]
    fn truncated_entries_are_corrupt_not_panics() {
        let columns = [col("n", ColumnType::Int64, false)];
        let mut recs = Records::new();
        recs.push(&columns, None, &[Value::Int64(5)]).unwrap();
        let (_, buf) = recs.seal(1).next().unwrap();
        for cut in 0..buf.len() {
            if let Ok(e) = Entry::parse(&buf[..cut]) {
                assert!(
                    e.decode(&[ColumnType::Int64], 0, 10, |_, _| {}).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn entry_roundtrip(
            ts: i64,
            msgs in proptest::collection::vec((any::<Option<String>>(), any::<i64>(), any::<Option<String>>()), 1..40),
            skip in 0u32..45,
            max in 0usize..45,
        ) {
            let columns = [col("a", ColumnType::Int64, false), col("b", ColumnType::Text, true)];
            let mut recs = Records::new();
            let mut want = Vec::new();
            for (key, a, b) in msgs {
                let values = vec![Value::Int64(a), b.map(Value::Text).unwrap_or(Value::Null)];
                recs.push(&columns, key.as_deref(), &values).unwrap();
                want.push(LogRecord { ts_micros: ts, key, values });
            }
            let n = recs.len();
            let entries: Vec<_> = recs.seal(ts).collect();
            prop_assert_eq!(entries.iter().map(|(c, _)| u64::from(*c)).sum::<u64>(), n);
            let (count, buf) = &entries[0];
            let entry = Entry::parse(buf).unwrap();
            prop_assert_eq!(entry.count, *count);
            prop_assert_eq!(entry.ts_micros, ts);
            let mut got = Vec::new();
            entry.decode(&[ColumnType::Int64, ColumnType::Text], skip, max, |i, r| got.push((i, r))).unwrap();
            let expect: Vec<_> = want.into_iter().enumerate().skip(skip as usize).take(max)
                .map(|(i, r)| (i as u32, r)).collect();
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn entry_keys_give_their_offset_back(t: u32, p: u32, o: u64) {
            prop_assert_eq!(entry_first_offset(&log_key(t, p, o), t, p), Some(o));
            prop_assert_eq!(entry_first_offset(&log_key(t, p, o), t, p.wrapping_add(1)), None);
            prop_assert_eq!(entry_first_offset(&log_start_key(t, p), t, p), None);
        }

        #[test]
        fn row_keys_of_one_table_share_its_prefix(t: u32, id: i64, name: String) {
            let k = row_key(t, &[&Value::Int64(id), &Value::Text(name)]).unwrap();
            prop_assert!(k.starts_with(&table_prefix(t)));
        }
    }
}
