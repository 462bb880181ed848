//! Optional LAN discovery: nodes announce their cluster address by UDP broadcast on a
//! shared port and seed gossip with the addresses they hear.
//!
//! ```text
//!  every ~1 s:  sealed("eddy-discover/1" · node id · cluster addr)
//!               ─► 255.255.255.255:port, 127.255.255.255:port, 127.0.0.1:port
//!  on receive:  open (refused: dropped, counted) ─► not ours, not blocked, new? ─► seed
//! ```
//!
//! Every node on a host binds the port with `SO_REUSEADDR` and `SO_REUSEPORT`, so several
//! nodes share it; a broadcast reaches all of them (a unicast only one, which is why the
//! loopback broadcast address is used as well as 127.0.0.1).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::transport::Counters;
use super::{Blocked, MembershipError};
use crate::auth::FrameAuth;

/// How often a node announces itself.
pub(super) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a receive error, so a persistent one does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Starts every announcement: keeps them apart from gossip datagrams sealed with the
/// same secret.
const MAGIC: &[u8] = b"eddy-discover/1\0";

/// An announcement: who, and where its gossip (cluster) address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Announcement {
    pub(super) node_id: u64,
    pub(super) cluster_addr: SocketAddr,
}

impl Announcement {
    /// `MAGIC · node id (u64 big endian) · cluster address as text`, unsealed.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&self.node_id.to_be_bytes());
        buf.extend_from_slice(self.cluster_addr.to_string().as_bytes());
        buf
    }

    /// The announcement in an opened datagram, `None` if it is not one.
    pub(super) fn decode(buf: &[u8]) -> Option<Announcement> {
        let rest = buf.strip_prefix(MAGIC)?;
        let (id, addr) = rest.split_first_chunk::<8>()?;
        Some(Announcement {
            node_id: u64::from_be_bytes(*id),
            cluster_addr: std::str::from_utf8(addr).ok()?.parse().ok()?,
        })
    }
}

/// Binds `0.0.0.0:port`, shared with other nodes of this host, broadcast allowed.
pub(super) fn bind(port: u16) -> Result<UdpSocket, MembershipError> {
    let err = |source| MembershipError::Discovery { port, source };
    let socket =
        socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_broadcast(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(socket.into()).map_err(err)
}

/// A node's discovery: its socket and what it announces and checks.
pub(super) struct Discovery {
    /// From [`bind`]: receives announcements, and sends ours.
    pub(super) socket: UdpSocket,
    pub(super) port: u16,
    /// What this node announces; announcements naming its id or address are its own.
    pub(super) me: Announcement,
    pub(super) auth: Arc<FrameAuth>,
    pub(super) blocked: Blocked,
    pub(super) counters: Arc<Counters>,
}

impl Discovery {
    /// The discovery task: announces `me` every [`ANNOUNCE_INTERVAL`] and calls `heard`
    /// once for each other node address it hears, until cancelled.
    pub(super) async fn run(self, heard: impl Fn(SocketAddr) + Send, cancel: CancellationToken) {
        let Discovery {
            socket,
            port,
            me,
            auth,
            blocked,
            counters,
        } = self;
        let mut frame = me.encode();
        auth.seal(&mut frame);
        let targets = [
            SocketAddr::from((Ipv4Addr::BROADCAST, port)),
            SocketAddr::from((Ipv4Addr::new(127, 255, 255, 255), port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ];
        let mut known = HashSet::new();
        let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 1024];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    for target in targets {
                        // No broadcast route (a container without a default route) is normal.
                        if let Err(err) = socket.send_to(&frame, target).await {
                            debug!(%err, %target, "discovery announcement not sent");
                        }
                    }
                }
                received = socket.recv_from(&mut buf) => {
                    let (len, from) = match received {
                        Ok(received) => received,
                        Err(err) => {
                            debug!(%err, "discovery receive failed");
                            tokio::time::sleep(RECV_ERROR_PAUSE).await;
                            continue;
                        }
                    };
                    let Some(payload) = auth.open(&buf[..len]) else {
                        Counters::count(&counters.rejected);
                        debug!(%from, "discovery datagram refused: bad tag");
                        continue;
                    };
                    let Some(other) = Announcement::decode(payload) else { continue };
                    let ours = other.node_id == me.node_id || other.cluster_addr == me.cluster_addr;
                    if ours || blocked(other.cluster_addr) || !known.insert(other.cluster_addr) {
                        continue;
                    }
                    info!(node_id = other.node_id, addr = %other.cluster_addr, "discovered a node");
                    heard(other.cluster_addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_roundtrip() {
        let a = Announcement {
            node_id: 7,
            cluster_addr: "10.1.2.3:7000".parse().unwrap(),
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a));
        let v6 = Announcement {
            node_id: u64::MAX,
            cluster_addr: "[::1]:9".parse().unwrap(),
        };
        assert_eq!(Announcement::decode(&v6.encode()), Some(v6));
    }

    #[test]
    fn garbage_is_not_an_announcement() {
        let good = Announcement {
            node_id: 1,
            cluster_addr: "127.0.0.1:1".parse().unwrap(),
        }
        .encode();
        for len in 0..good.len() {
            assert_eq!(Announcement::decode(&good[..len]), None, "prefix of {len}");
        }
        let mut wrong_magic = good.clone();
        wrong_magic[0] ^= 1;
        assert_eq!(Announcement::decode(&wrong_magic), None);
    }
}
