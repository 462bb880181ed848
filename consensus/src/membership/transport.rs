//! chitchat's [`Transport`] over one UDP socket, every datagram sealed with the cluster
//! secret ([`FrameAuth`]) and subject to the `blocked` fault injector.
//!
//! chitchat 0.13 keeps the wire codec of `ChitchatEnvelope` crate-private: the only public
//! code that turns an envelope into bytes, or bytes into an envelope, is its own
//! `UdpSocket`. So this transport uses a pair of those on 127.0.0.1 as its codec and does
//! the real I/O itself:
//!
//! ```text
//!  send  envelope ─► encoder ─► tap ─► seal ─► ext socket ─────────────────► peer
//!                   (chitchat    (plain UDP,
//!                    UdpSocket)   127.0.0.1)
//!
//!  recv  peer ─► ext socket ─► pump task: blocked? open? ─► relay of that peer ─► decoder ─► envelope
//!                                                          (one 127.0.0.1       (chitchat    from = peer
//!                                                           socket per peer)     UdpSocket)
//! ```
//!
//! The decoder only tells where a datagram came from, so each peer gets its own relay
//! socket and the relay's address names the peer. Datagrams the decoder cannot parse are
//! dropped by chitchat, which is what a garbled datagram from the network would get too.
//! Loopback datagrams can only be lost when a socket buffer is full, and gossip tolerates
//! loss.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use chitchat::ChitchatEnvelope;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Blocked, MembershipError};
use crate::auth::FrameAuth;

/// Largest UDP payload over IPv4, and chitchat's own limit for an encoded envelope
/// (`MAX_UDP_DATAGRAM_PAYLOAD_SIZE`, crate-private in chitchat). chitchat sizes its deltas
/// to fill it and its limit cannot be configured, so an envelope within 32 bytes of it
/// does not fit once sealed: such a datagram is dropped and counted (`oversized`).
/// eddy gossips a handful of short keys per node, far below this.
pub(super) const MAX_DATAGRAM: usize = 65_507;

/// Receive buffers hold any UDP payload, so a too-large datagram is seen (and refused)
/// rather than silently truncated.
const RECV_BUF: usize = 65_536;

/// How long the loopback codec may take to hand back an encoded envelope.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after an unexpected receive error, so a persistent one does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Peers with a relay socket at once. Only authenticated peers get one, so this is
/// reached only by a very large cluster; the oldest relay is then closed.
const MAX_RELAYS: usize = 1024;

/// What the transport dropped, and why.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Datagrams refused by [`FrameAuth::open`] (gossip and discovery).
    pub(super) rejected: AtomicU64,
    /// Datagrams dropped by the `blocked` fault injector, either direction.
    pub(super) blocked: AtomicU64,
    /// Envelopes too large to send once sealed.
    pub(super) oversized: AtomicU64,
}

impl Counters {
    pub(super) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands chitchat the socket [`SealedSocket::bind`] opened beforehand (so that `start`
/// knows the bound address before chitchat's id, which carries it, is made).
pub(super) struct SealedTransport {
    socket: Mutex<Option<SealedSocket>>,
}

impl SealedTransport {
    pub(super) fn new(socket: SealedSocket) -> SealedTransport {
        SealedTransport {
            socket: Mutex::new(Some(socket)),
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .take()
            .with_context(|| format!("gossip socket {listen_addr} already opened"))?;
        Ok(Box::new(socket))
    }
}

/// The gossip socket as chitchat sees it. Receiving from the network happens in the pump
/// task (started by [`SealedSocket::bind`], stopped by its cancellation token); this
/// socket reads what the pump forwarded.
pub(super) struct SealedSocket {
    /// Bound to the node's cluster address; sends from here, the pump receives on it.
    ext: Arc<UdpSocket>,
    /// `ext`'s bound address (the cluster address, with the port chosen if it was 0).
    local_addr: SocketAddr,
    auth: Arc<FrameAuth>,
    blocked: Blocked,
    counters: Arc<Counters>,
    /// Serializes envelopes: sends them to `tap`.
    encoder: CodecSocket,
    encoder_addr: SocketAddr,
    /// Receives what `encoder` serialized.
    tap: UdpSocket,
    tap_addr: SocketAddr,
    tap_buf: Box<[u8]>,
    /// Deserializes what the relays forward.
    decoder: CodecSocket,
    /// Relay socket address -> the peer whose datagrams it forwards.
    relay_names: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    /// The sealed frame being sent (kept to reuse its allocation).
    frame: Vec<u8>,
}

impl SealedSocket {
    /// Binds `addr` (UDP) and the loopback codec, and starts the pump task on `tasks`.
    pub(super) async fn bind(
        addr: SocketAddr,
        auth: Arc<FrameAuth>,
        blocked: Blocked,
        counters: Arc<Counters>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<SealedSocket, MembershipError> {
        let bind_err = |source| MembershipError::Bind { addr, source };
        let ext = Arc::new(UdpSocket::bind(addr).await.map_err(bind_err)?);
        let local_addr = ext.local_addr().map_err(bind_err)?;

        let codec_err = |err: anyhow::Error| MembershipError::Gossip {
            source: err.context("loopback codec").into(),
        };
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let encoder = CodecSocket::open(loopback).await.map_err(codec_err)?;
        let encoder_addr = encoder.local_addr().map_err(codec_err)?;
        let decoder = CodecSocket::open(loopback).await.map_err(codec_err)?;
        let decoder_addr = decoder.local_addr().map_err(codec_err)?;
        let io_err = |err: io::Error| codec_err(anyhow::Error::new(err));
        let tap = UdpSocket::bind(loopback).await.map_err(io_err)?;
        let tap_addr = tap.local_addr().map_err(io_err)?;

        let relay_names = Arc::new(Mutex::new(HashMap::new()));
        let pump = Pump {
            ext: ext.clone(),
            decoder_addr,
            auth: auth.clone(),
            blocked: blocked.clone(),
            counters: counters.clone(),
            relays: HashMap::new(),
            relay_order: VecDeque::new(),
            relay_names: relay_names.clone(),
        };
        tasks.spawn(pump.run(cancel));

        Ok(SealedSocket {
            ext,
            local_addr,
            auth,
            blocked,
            counters,
            encoder,
            encoder_addr,
            tap,
            tap_addr,
            tap_buf: vec![0; RECV_BUF].into_boxed_slice(),
            decoder,
            relay_names,
            frame: Vec::new(),
        })
    }

    /// The bound gossip address.
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serializes `envelope` into `self.frame` through the loopback codec.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<()> {
        // An earlier encode cancelled between its send and its receive would have left its
        // bytes in the tap; they must not be taken for this envelope's.
        while self.tap.try_recv_from(&mut self.tap_buf).is_ok() {}
        self.encoder.send(self.tap_addr, envelope).await?;
        let deadline = tokio::time::Instant::now() + ENCODE_TIMEOUT;
        loop {
            let (len, from) =
                tokio::time::timeout_at(deadline, self.tap.recv_from(&mut self.tap_buf))
                    .await
                    .context("loopback codec timed out")??;
            // Anything else on the tap's port is not ours.
            if from == self.encoder_addr {
                self.frame.clear();
                self.frame.extend_from_slice(&self.tap_buf[..len]);
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// Only a broken codec is an error; a dropped datagram is what UDP does anyway, and
    /// chitchat would log an error every gossip round.
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        const NOTHING_SENT: SendOutcome = SendOutcome { num_bytes_sent: 0 };
        if (self.blocked)(to) {
            Counters::count(&self.counters.blocked);
            return Ok(NOTHING_SENT);
        }
        self.encode(envelope).await?;
        self.auth.seal(&mut self.frame);
        if self.frame.len() > MAX_DATAGRAM {
            Counters::count(&self.counters.oversized);
            warn!(len = self.frame.len(), %to, "gossip datagram too large once sealed, dropped");
            return Ok(NOTHING_SENT);
        }
        match self.ext.send_to(&self.frame, to).await {
            Ok(num_bytes_sent) => Ok(SendOutcome { num_bytes_sent }),
            Err(err) => {
                debug!(%err, %to, "gossip send failed");
                Ok(NOTHING_SENT)
            }
        }
    }

    /// Cancel-safe, as chitchat's select loop needs: the decoder's receive is, and the
    /// name lookup does not await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut outcome = self.decoder.recv().await?;
            let peer = self.relay_names.lock().get(&outcome.from_addr).copied();
            // Anything not from one of our relays is a local datagram that did not pass
            // the pump's checks.
            if let Some(peer) = peer {
                outcome.from_addr = peer;
                outcome.num_bytes_received += FrameAuth::TAG_LEN;
                return Ok(outcome);
            }
        }
    }
}

/// Receives from the network: drops blocked and unauthenticated datagrams, forwards the
/// payload of the others to the decoder through the sender's relay.
struct Pump {
    ext: Arc<UdpSocket>,
    decoder_addr: SocketAddr,
    auth: Arc<FrameAuth>,
    blocked: Blocked,
    counters: Arc<Counters>,
    /// Peer -> its relay socket.
    relays: HashMap<SocketAddr, UdpSocket>,
    /// Peers in the order their relays were made (the oldest is closed first).
    relay_order: VecDeque<SocketAddr>,
    /// Shared with [`SealedSocket::recv`]: relay address -> peer.
    relay_names: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
}

impl Pump {
    async fn run(mut self, cancel: CancellationToken) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => return,
                received = self.ext.recv_from(&mut buf) => received,
            };
            let (len, from) = match received {
                Ok(received) => received,
                Err(err) => {
                    debug!(%err, "gossip receive failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
            };
            if (self.blocked)(from) {
                Counters::count(&self.counters.blocked);
                continue;
            }
            let Some(payload) = self.auth.open(&buf[..len]) else {
                Counters::count(&self.counters.rejected);
                debug!(%from, len, "gossip datagram refused: bad tag");
                continue;
            };
            let decoder_addr = self.decoder_addr;
            match self.relay(from).await {
                Ok(relay) => {
                    if let Err(err) = relay.send_to(payload, decoder_addr).await {
                        debug!(%err, %from, "gossip relay failed");
                    }
                }
                Err(err) => warn!(%err, %from, "cannot open a gossip relay socket"),
            }
        }
    }

    /// The relay socket of `peer`, made on first use.
    async fn relay(&mut self, peer: SocketAddr) -> io::Result<&UdpSocket> {
        if !self.relays.contains_key(&peer) {
            if self.relays.len() >= MAX_RELAYS {
                if let Some(oldest) = self.relay_order.pop_front() {
                    if let Some(socket) = self.relays.remove(&oldest) {
                        if let Ok(addr) = socket.local_addr() {
                            self.relay_names.lock().remove(&addr);
                        }
                    }
                }
            }
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let relay_addr = socket.local_addr()?;
            self.relay_names.lock().insert(relay_addr, peer);
            self.relays.insert(peer, socket);
            self.relay_order.push_back(peer);
        }
        self.relays
            .get(&peer)
            .ok_or_else(|| io::Error::other("relay vanished"))
    }
}
