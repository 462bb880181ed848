//! Frame authentication with the cluster secret: every frame between nodes ends with an
//! HMAC-SHA256 tag of what precedes it, keyed by the cluster secret.
//!
//! ```text
//!  seal:  payload ──────────────► payload || HMAC(key, payload)
//!  open:  payload || tag ── verify (constant time) ──► Some(payload) | None (+1 rejected)
//! ```
//!
//! A tag proves that the frame was made by a holder of the secret and was not changed on
//! the way. It does not hide the payload and does not stop replays; the protocols on top
//! tolerate repeated frames (gossip is idempotent, Raft RPCs carry terms and indexes).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::hmac;

/// Salt of the key derivation: keeps the frame key apart from any other use of the
/// same secret text.
const KEY_SALT: &[u8] = b"eddy frame auth v1";

/// Seals and opens frames with the cluster secret, counting the frames it refuses.
///
/// Shared by every sender and receiver of a node (`Arc<FrameAuth>`); both operations take
/// `&self`.
pub struct FrameAuth {
    /// HMAC-SHA256 key derived from the cluster secret.
    key: hmac::Key,
    /// Frames `open` refused, for metrics and for tests that prove a fault happened.
    rejected: AtomicU64,
}

impl FrameAuth {
    /// Tag length in bytes (32, the HMAC-SHA256 output).
    pub const TAG_LEN: usize = 32;

    /// Key derived from the cluster secret text.
    ///
    /// The key is `HMAC-SHA256(salt = "eddy frame auth v1", secret)` (HKDF's extract step),
    /// so secrets of any length give a full-strength key and the same text used for
    /// something else does not give the same key.
    pub fn new(secret: &str) -> FrameAuth {
        let salt = hmac::Key::new(hmac::HMAC_SHA256, KEY_SALT);
        let derived = hmac::sign(&salt, secret.as_bytes());
        FrameAuth {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            rejected: AtomicU64::new(0),
        }
    }

    /// Appends the tag of `payload` to a buffer holding `payload` (frame = payload || tag).
    pub fn seal(&self, frame: &mut Vec<u8>) {
        let tag = hmac::sign(&self.key, frame);
        frame.extend_from_slice(tag.as_ref());
    }

    /// Checks and strips the tag: `Some(payload)` when the tag matches (a constant-time
    /// comparison, `ring::hmac::verify`), `None` otherwise, counting one rejection. A frame
    /// shorter than a tag is refused the same way.
    pub fn open<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        let verified = frame
            .len()
            .checked_sub(Self::TAG_LEN)
            .map(|at| frame.split_at(at))
            .filter(|(payload, tag)| hmac::verify(&self.key, payload, tag).is_ok());
        match verified {
            Some((payload, _)) => Some(payload),
            None => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Frames refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Shows the rejection count only: the key must never reach a log.
impl fmt::Debug for FrameAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAuth")
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(auth: &FrameAuth, payload: &[u8]) -> Vec<u8> {
        let mut frame = payload.to_vec();
        auth.seal(&mut frame);
        frame
    }

    #[test]
    fn roundtrip() {
        let auth = FrameAuth::new("s3cret");
        for payload in [&b""[..], b"x", b"hello, cluster", &[0u8; 1500][..]] {
            let frame = sealed(&auth, payload);
            assert_eq!(frame.len(), payload.len() + FrameAuth::TAG_LEN);
            assert_eq!(&frame[..payload.len()], payload, "payload stays in clear");
            assert_eq!(auth.open(&frame), Some(payload));
        }
        assert_eq!(auth.rejected(), 0);
    }

    #[test]
    fn flipped_bit_anywhere_is_rejected_and_counted() {
        let auth = FrameAuth::new("s3cret");
        let frame = sealed(&auth, b"a gossip datagram");
        let bits = frame.len() * 8;
        for bit in 0..bits {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(auth.open(&bad), None, "bit {bit} flipped was accepted");
        }
        assert_eq!(auth.rejected(), bits as u64);
        // The original still opens: rejections leave no state behind.
        assert!(auth.open(&frame).is_some());
    }

    #[test]
    fn frame_sealed_with_another_secret_is_rejected() {
        let ours = FrameAuth::new("s3cret");
        let theirs = FrameAuth::new("s3cret ");
        let frame = sealed(&theirs, b"payload");
        assert_eq!(ours.open(&frame), None);
        assert_eq!(ours.rejected(), 1);
        assert_eq!(theirs.rejected(), 0);
        // Same secret in another instance: accepted (the key depends on the text only).
        assert!(FrameAuth::new("s3cret ").open(&frame).is_some());
    }

    #[test]
    fn frame_shorter_than_tag_is_rejected_without_panic() {
        let auth = FrameAuth::new("s3cret");
        let full = sealed(&auth, b"");
        for len in 0..FrameAuth::TAG_LEN {
            assert_eq!(auth.open(&full[..len]), None);
        }
        assert_eq!(auth.rejected(), FrameAuth::TAG_LEN as u64);
        assert_eq!(auth.open(&full), Some(&b""[..]));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let auth = FrameAuth::new("s3cret");
        let shown = format!("{auth:?}");
        assert!(shown.contains("rejected"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
