//! Gossip replication's stored state: the delta log, version vectors and row versions
//! (the `gossip` column family), their keys and encodings, and the stored reads the
//! committer needs. [`Store`](crate::Store)'s gossip reads, which anti-entropy uses, are
//! in `store/gossip.rs`.
//!
//! | key                                         | value                                     |
//! |---------------------------------------------|-------------------------------------------|
//! | `u32 object · 0x00 · u64 origin`            | `u64 applied seq · u64 first retained seq` |
//! | `u32 object · 0x01 · u64 origin · u64 seq`  | `u64 hlc` · postcard [`DeltaBody`]         |
//! | `u32 object · 0x02 · primary key`           | [`RowVersion`] (25 bytes)                  |
//!
//! Every write to a gossip object is one delta under its origin node and a sequence
//! number (1, 2, 3, … per object and origin, no gaps). A node applies each origin's
//! deltas in sequence, so its *version vector* (the applied seq per origin) says exactly
//! which writes it has. The committer writes all of it (see `commit/gossip.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::ObjectId;
use crate::error::{Error, Result};
use crate::inner::Inner;
use crate::layout::CF_GOSSIP;

/// A node id as the origin of a write.
pub type Origin = u64;

const TAG_VV: u8 = 0;
const TAG_DELTA: u8 = 1;
const TAG_VERSION: u8 = 2;

/// Key of an object's version vector entry for `origin`.
pub(crate) fn vv_key(object: ObjectId, origin: Origin) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&object.to_be_bytes());
    k[4] = TAG_VV;
    k[5..].copy_from_slice(&origin.to_be_bytes());
    k
}

/// Key of one delta.
pub(crate) fn delta_key(object: ObjectId, origin: Origin, seq: u64) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..13].copy_from_slice(&vv_key(object, origin));
    k[4] = TAG_DELTA;
    k[13..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a row's version, from the row's key (`u32 table · primary key`).
pub(crate) fn version_key(row_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(row_key.len() + 1);
    k.extend_from_slice(&row_key[..4.min(row_key.len())]);
    k.push(TAG_VERSION);
    k.extend_from_slice(row_key.get(4..).unwrap_or_default());
    k
}

/// The row key a version key belongs to ([`version_key`] undone).
pub(crate) fn row_key_of_version(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len().saturating_sub(1));
    k.extend_from_slice(&key[..4.min(key.len())]);
    k.extend_from_slice(key.get(5..).unwrap_or_default());
    k
}

fn prefix(object: ObjectId, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&object.to_be_bytes());
    k[4] = tag;
    k
}

/// What one delta changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaBody {
    /// One topic log entry, as stored (header and messages; the receiver restamps it).
    Entry {
        /// Partition.
        partition: u32,
        /// The entry's bytes.
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
    },
    /// Table rows set or deleted.
    Rows(Vec<RowChange>),
}

/// One row of a table delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    /// The primary key, memcomparable (the row key without the table id).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The new row, encoded; `None` deletes it.
    pub row: Option<serde_bytes::ByteBuf>,
}

/// One write to a gossip object, as spread to other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Position in its origin's sequence for the object (from 1, no gaps).
    pub seq: u64,
    /// Hybrid logical clock timestamp of the write.
    pub hlc: u64,
    /// The change.
    pub body: DeltaBody,
}

impl Delta {
    /// The version a row gets from this delta, made on `origin`.
    pub fn version(&self, origin: Origin, change: &RowChange) -> RowVersion {
        RowVersion {
            hlc: self.hlc,
            origin,
            seq: self.seq,
            tombstone: change.row.is_none(),
        }
    }

    /// Encoded size, roughly what it costs on the wire.
    pub fn size(&self) -> usize {
        24 + match &self.body {
            DeltaBody::Entry { entry, .. } => entry.len(),
            DeltaBody::Rows(rows) => rows
                .iter()
                .map(|r| r.key.len() + r.row.as_ref().map_or(0, |b| b.len()) + 4)
                .sum(),
        }
    }
}

/// Consecutive deltas of one origin for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaBatch {
    /// The topic or table.
    pub object: ObjectId,
    /// The node that made the writes.
    pub origin: Origin,
    /// The deltas, in sequence order.
    pub deltas: Vec<Delta>,
}

/// One origin's entry of an object's version vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VvEntry {
    /// Every delta up to this seq is applied here.
    pub applied: u64,
    /// Deltas below this seq were collected (past the horizon); 0 or 1: none were.
    pub floor: u64,
}

impl VvEntry {
    pub(crate) fn encode(self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.applied.to_be_bytes());
        v[8..].copy_from_slice(&self.floor.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<VvEntry> {
        if v.len() != 16 {
            return Err(Error::corrupt("version vector entry"));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&v[..8]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&v[8..]);
        Ok(VvEntry {
            applied: u64::from_be_bytes(a),
            floor: u64::from_be_bytes(f),
        })
    }
}

/// An object's version vector: per origin, what is applied here.
pub type VersionVector = BTreeMap<Origin, VvEntry>;

/// The version of a table row (or of its tombstone) under gossip replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowVersion {
    /// Timestamp of the write that made it.
    pub hlc: u64,
    /// The node that made it.
    pub origin: Origin,
    /// The write's seq in its origin's sequence.
    pub seq: u64,
    /// The row was deleted.
    pub tombstone: bool,
}

impl RowVersion {
    /// True when a write stamped `(hlc, origin)` replaces this version: the later
    /// timestamp wins, and equal timestamps go to the larger origin id.
    pub fn loses_to(&self, hlc: u64, origin: Origin) -> bool {
        (hlc, origin) > (self.hlc, self.origin)
    }

    pub(crate) fn encode(&self) -> [u8; 25] {
        let mut v = [0u8; 25];
        v[..8].copy_from_slice(&self.hlc.to_be_bytes());
        v[8..16].copy_from_slice(&self.origin.to_be_bytes());
        v[16..24].copy_from_slice(&self.seq.to_be_bytes());
        v[24] = u8::from(self.tombstone);
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<RowVersion> {
        if v.len() != 25 {
            return Err(Error::corrupt("row version"));
        }
        let u = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[r]);
            u64::from_be_bytes(b)
        };
        Ok(RowVersion {
            hlc: u(0..8),
            origin: u(8..16),
            seq: u(16..24),
            tombstone: v[24] != 0,
        })
    }
}

/// A delta as stored: `u64 hlc` then the postcard body.
pub(crate) fn encode_delta(hlc: u64, body: &DeltaBody) -> Result<Vec<u8>> {
    let mut v = hlc.to_be_bytes().to_vec();
    let body = postcard::to_stdvec(body)
        .map_err(|e| Error::InvalidValue(format!("cannot encode delta: {e}")))?;
    v.extend_from_slice(&body);
    Ok(v)
}

pub(crate) fn decode_delta(seq: u64, v: &[u8]) -> Result<Delta> {
    if v.len() < 8 {
        return Err(Error::corrupt("delta shorter than its timestamp"));
    }
    let mut h = [0u8; 8];
    h.copy_from_slice(&v[..8]);
    let body = postcard::from_bytes(&v[8..]).map_err(|_| Error::corrupt("delta body"))?;
    Ok(Delta {
        seq,
        hlc: u64::from_be_bytes(h),
        body,
    })
}

/// An object's version vector as stored (not what a batch in progress has staged).
pub(crate) fn stored_vv(inner: &Inner, object: ObjectId) -> Result<VersionVector> {
    let mut out = VersionVector::new();
    let from = prefix(object, TAG_VV);
    let mut it = inner.db.raw_iterator_cf(inner.cf(CF_GOSSIP));
    it.seek(from);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k.len() != 13 || k[..5] != from {
            break;
        }
        let mut o = [0u8; 8];
        o.copy_from_slice(&k[5..]);
        out.insert(u64::from_be_bytes(o), VvEntry::decode(v)?);
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Every stored row version of a table: (version key, version).
pub(crate) fn stored_versions(
    inner: &Inner,
    table: ObjectId,
) -> Result<Vec<(Vec<u8>, RowVersion)>> {
    let mut out = Vec::new();
    let from = prefix(table, TAG_VERSION);
    let mut it = inner.db.raw_iterator_cf(inner.cf(CF_GOSSIP));
    it.seek(from);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if !k.starts_with(&from) {
            break;
        }
        out.push((k.to_vec(), RowVersion::decode(v)?));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// The timestamps of an origin's stored deltas from seq `from` to `to` (inclusive).
pub(crate) fn stored_delta_stamps(
    inner: &Inner,
    object: ObjectId,
    origin: Origin,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let end = delta_key(object, origin, to);
    let mut it = inner.db.raw_iterator_cf(inner.cf(CF_GOSSIP));
    it.seek(delta_key(object, origin, from));
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k.len() != 21 || k[..13] != end[..13] || k > &end[..] || v.len() < 8 {
            break;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&k[13..]);
        let mut h = [0u8; 8];
        h.copy_from_slice(&v[..8]);
        out.push((u64::from_be_bytes(s), u64::from_be_bytes(h)));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// One row of a table's full state, for a resync: its key, version and row (`None` for
/// a tombstone).
pub type RowState = (Vec<u8>, RowVersion, Option<Vec<u8>>);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_of_one_object_share_its_prefix_and_sort_by_origin_then_seq(
            o: u32, a: (u64, u64), b: (u64, u64)
        ) {
            let (ka, kb) = (delta_key(o, a.0, a.1), delta_key(o, b.0, b.1));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert!(ka.starts_with(&o.to_be_bytes()));
            prop_assert!(vv_key(o, a.0)[..] < ka[..], "version vector entries sort before deltas");
        }

        #[test]
        fn version_keys_round_trip(row in proptest::collection::vec(any::<u8>(), 4..40)) {
            prop_assert_eq!(row_key_of_version(&version_key(&row)), row);
        }

        #[test]
        fn row_versions_round_trip(hlc: u64, origin: u64, seq: u64, tombstone: bool) {
            let v = RowVersion { hlc, origin, seq, tombstone };
            prop_assert_eq!(RowVersion::decode(&v.encode()).unwrap(), v);
        }
    }
}
