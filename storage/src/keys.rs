//! Order-preserving ("memcomparable") key encodings.
//!
//! The contract: for two values `a` and `b` of the same type, `encode(a) < encode(b)`
//! (byte-wise, as RocksDB compares keys) exactly when `a < b`, and decoding gives the value
//! back. Composite keys are the concatenation of their parts, so tuples sort
//! lexicographically. Property tests at the bottom of this file check both halves.
//!
//! | type            | encoding                                                         |
//! |-----------------|------------------------------------------------------------------|
//! | unsigned ints   | big-endian                                                       |
//! | signed ints     | big-endian with the sign bit flipped                             |
//! | floats          | IEEE bits; positives get the sign bit set, negatives all bits flipped |
//! | bytes / text    | `0x00` escaped as `0x00 0xFF`, terminated by `0x00 0x01`         |
//! | bool            | one byte, 0 or 1                                                 |

use crate::error::{Error, Result};

/// Appends order-preserving encodings to a byte buffer.
#[derive(Debug, Default, Clone)]
pub struct KeyWriter {
    buf: Vec<u8>,
}

impl KeyWriter {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty key with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends an `i16`.
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.buf
            .extend_from_slice(&((v as u16) ^ 0x8000).to_be_bytes());
        self
    }
    /// Appends an `i32`.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf
            .extend_from_slice(&((v as u32) ^ 0x8000_0000).to_be_bytes());
        self
    }
    /// Appends an `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf
            .extend_from_slice(&((v as u64) ^ 0x8000_0000_0000_0000).to_be_bytes());
        self
    }
    /// Appends an `f64` (NaN sorts above +inf, -0.0 below +0.0).
    pub fn f64(&mut self, v: f64) -> &mut Self {
        let bits = v.to_bits();
        let bits = if bits >> 63 == 0 {
            bits | (1 << 63)
        } else {
            !bits
        };
        self.buf.extend_from_slice(&bits.to_be_bytes());
        self
    }
    /// Appends an `f32`.
    pub fn f32(&mut self, v: f32) -> &mut Self {
        let bits = v.to_bits();
        let bits = if bits >> 31 == 0 {
            bits | (1 << 31)
        } else {
            !bits
        };
        self.buf.extend_from_slice(&bits.to_be_bytes());
        self
    }
    /// Appends a bool.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.push(v as u8);
        self
    }
    /// Appends a byte string, escaped and terminated so that prefixes sort first.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        for &b in v {
            self.buf.push(b);
            if b == 0 {
                self.buf.push(0xFF);
            }
        }
        self.buf.extend_from_slice(&[0x00, 0x01]);
        self
    }
    /// The key so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    /// The finished key.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads back what [`KeyWriter`] wrote, in the same order.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Reads from the start of `key`.
    pub fn new(key: &'a [u8]) -> Self {
        Self { rest: key }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.rest.len() < N {
            return Err(Error::corrupt("key shorter than its encoding"));
        }
        let (head, tail) = self.rest.split_at(N);
        self.rest = tail;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    /// Reads an `i16`.
    pub fn i16(&mut self) -> Result<i16> {
        Ok((u16::from_be_bytes(self.take()?) ^ 0x8000) as i16)
    }
    /// Reads an `i32`.
    pub fn i32(&mut self) -> Result<i32> {
        Ok((u32::from_be_bytes(self.take()?) ^ 0x8000_0000) as i32)
    }
    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok((u64::from_be_bytes(self.take()?) ^ 0x8000_0000_0000_0000) as i64)
    }
    /// Reads an `f64`.
    pub fn f64(&mut self) -> Result<f64> {
        let bits = u64::from_be_bytes(self.take()?);
        let bits = if bits >> 63 == 1 {
            bits & !(1 << 63)
        } else {
            !bits
        };
        Ok(f64::from_bits(bits))
    }
    /// Reads an `f32`.
    pub fn f32(&mut self) -> Result<f32> {
        let bits = u32::from_be_bytes(self.take()?);
        let bits = if bits >> 31 == 1 {
            bits & !(1 << 31)
        } else {
            !bits
        };
        Ok(f32::from_bits(bits))
    }
    /// Reads a bool.
    pub fn bool(&mut self) -> Result<bool> {
        let [b] = self.take::<1>()?;
        Ok(b != 0)
    }
    /// Reads an escaped byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let b = *self
                .rest
                .get(i)
                .ok_or_else(|| Error::corrupt("unterminated key bytes"))?;
            if b == 0 {
                match self.rest.get(i + 1) {
                    Some(0xFF) => out.push(0),
                    Some(0x01) => {
                        self.rest = &self.rest[i + 2..];
                        return Ok(out);
                    }
                    _ => return Err(Error::corrupt("bad escape in key bytes")),
                }
                i += 2;
            } else {
                out.push(b);
                i += 1;
            }
        }
    }
    /// True once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The smallest key greater than every key starting with `prefix` (for iterator upper bounds).
/// `None` when no such key exists (the prefix is all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(f: impl FnOnce(&mut KeyWriter)) -> Vec<u8> {
        let mut w = KeyWriter::new();
        f(&mut w);
        w.finish()
    }

    proptest! {
        #[test]
        fn i64_order(a: i64, b: i64) {
            prop_assert_eq!(a.cmp(&b), key(|w| { w.i64(a); }).cmp(&key(|w| { w.i64(b); })));
            prop_assert_eq!(KeyReader::new(&key(|w| { w.i64(a); })).i64().unwrap(), a);
        }

        #[test]
        fn i32_i16_order(a: i32, b: i32, c: i16, d: i16) {
            prop_assert_eq!(a.cmp(&b), key(|w| { w.i32(a); }).cmp(&key(|w| { w.i32(b); })));
            prop_assert_eq!(c.cmp(&d), key(|w| { w.i16(c); }).cmp(&key(|w| { w.i16(d); })));
            prop_assert_eq!(KeyReader::new(&key(|w| { w.i32(a); })).i32().unwrap(), a);
            prop_assert_eq!(KeyReader::new(&key(|w| { w.i16(c); })).i16().unwrap(), c);
        }

        #[test]
        fn u64_order(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), key(|w| { w.u64(a); }).cmp(&key(|w| { w.u64(b); })));
        }

        #[test]
        fn f64_order(a in any::<f64>().prop_filter("no NaN", |v| !v.is_nan()),
                     b in any::<f64>().prop_filter("no NaN", |v| !v.is_nan())) {
            let (ka, kb) = (key(|w| { w.f64(a); }), key(|w| { w.f64(b); }));
            // total_cmp orders -0.0 below +0.0, as the encoding does.
            prop_assert_eq!(a.total_cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(KeyReader::new(&ka).f64().unwrap().to_bits(), a.to_bits());
        }

        #[test]
        fn f32_order(a in any::<f32>().prop_filter("no NaN", |v| !v.is_nan()),
                     b in any::<f32>().prop_filter("no NaN", |v| !v.is_nan())) {
            prop_assert_eq!(a.total_cmp(&b), key(|w| { w.f32(a); }).cmp(&key(|w| { w.f32(b); })));
        }

        #[test]
        fn bytes_order_and_roundtrip(a: Vec<u8>, b: Vec<u8>) {
            let (ka, kb) = (key(|w| { w.bytes(&a); }), key(|w| { w.bytes(&b); }));
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            let mut r = KeyReader::new(&ka);
            prop_assert_eq!(r.bytes().unwrap(), a);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn tuples_sort_lexicographically(a: (String, i64), b: (String, i64)) {
            let ka = key(|w| { w.bytes(a.0.as_bytes()).i64(a.1); });
            let kb = key(|w| { w.bytes(b.0.as_bytes()).i64(b.1); });
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            let mut r = KeyReader::new(&ka);
            prop_assert_eq!(r.bytes().unwrap(), a.0.into_bytes());
            prop_assert_eq!(r.i64().unwrap(), a.1);
        }

        #[test]
        fn log_keys_sort_by_object_partition_offset(a: (u32, u32, u64), b: (u32, u32, u64)) {
            let ka = key(|w| { w.u32(a.0).u32(a.1).u64(a.2); });
            let kb = key(|w| { w.u32(b.0).u32(b.1).u64(b.2); });
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn prefix_successor_bounds_the_prefix(p: Vec<u8>, suffix: Vec<u8>) {
            if let Some(s) = prefix_successor(&p) {
                let mut k = p.clone();
                k.extend_from_slice(&suffix);
                prop_assert!(k < s);
                prop_assert!(p < s);
            } else {
                prop_assert!(p.iter().all(|&b| b == 0xFF));
            }
        }
    }
}
