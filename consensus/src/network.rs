//! The internal RPC between nodes: one TCP connection per pair of nodes and direction,
//! length-delimited frames of postcard, many Raft groups and calls in flight on each.
//!
//! ```text
//!  caller ──► Peer (lazy connect) ── frame {id, Call} ──► server task ──► Handler
//!         ◄── pending[id] oneshot ◄── frame {id, Reply} ◄── (one task per call)
//! ```
//!
//! A broken connection fails every call in flight on it (`Network`), and the next call
//! connects again; a refused connection is `Unreachable`, which makes openraft back off.
//!
//! Every frame ends with an HMAC-SHA256 tag keyed by the cluster secret ([`FrameAuth`]);
//! a frame with a wrong tag is counted and closes its connection.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use eddy_storage::raft::GroupId;
use eddy_storage::WriteOp;

use crate::auth::FrameAuth;
use crate::types::{LogId, NodeId, NodeInfo, PartitionInfo, Response, TypeConfig};

/// Largest frame accepted (a snapshot chunk or a batch of entries fits well below it).
const MAX_FRAME: usize = 256 << 20;

/// A call from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// openraft's log replication.
    Append(GroupId, AppendEntriesRequest<TypeConfig>),
    /// openraft's election.
    Vote(GroupId, VoteRequest<NodeId>),
    /// openraft's snapshot transfer, one chunk.
    Snapshot(GroupId, InstallSnapshotRequest<TypeConfig>),
    /// Writes for a group this node leads, sent by a node that does not.
    Forward(GroupId, Vec<Vec<WriteOp>>),
    /// A linearizable read barrier: the leader's commit index once it knows it still leads.
    ReadIndex(GroupId),
    /// A new node asks to join the cluster.
    Join(NodeId, NodeInfo),
    /// Asks an empty node of a cluster of its own to join the cluster of the node at
    /// this cluster address (`ALTER CLUSTER ADD NODE`).
    Adopt(String),
    /// Tells a node it was removed from the cluster: it stops its groups.
    Removed,
    /// Moves a group's replica: `gone` stops voting and leaves the group, the nodes in
    /// the list become voters (the metadata group promotes a learner for a gone voter).
    Reconfigure {
        /// The group.
        group: GroupId,
        /// The node leaving the group.
        gone: NodeId,
        /// Nodes joining the group.
        add: Vec<NodeId>,
    },
    /// Gossip push: deltas of gossip objects from the calling node.
    Deltas(NodeId, Vec<eddy_storage::gossip::DeltaBatch>),
    /// Gossip anti-entropy: the caller's version vectors; the answer carries what it lacks.
    Digest(NodeId, Vec<crate::gossip::ObjectVv>),
    /// Gossip: the full state of a table, for a caller behind this node's horizon.
    Resync(eddy_storage::ObjectId),
    /// The leader and offsets of these topic partitions' groups, as the receiving node
    /// holds them (`eddy.partitions` on a node without a replica).
    Partitions(Vec<GroupId>),
    /// The receiving node drains (`true`) or takes work again (`false`).
    Drain(bool),
    /// The group's leader hands leadership over: the receiving node, caught up with it,
    /// stands for election now.
    Elect(GroupId),
}

/// Why a forwarded call failed on the node that received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// The receiving node does not run this group (yet).
    #[error("group {0} is not on this node")]
    NoGroup(GroupId),
    /// No leader is known, or it is not reachable; retrying later can succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request was refused for good.
    #[error("{0}")]
    Refused(String),
    /// A write was proposed but its fate is unknown (the leader died or stopped
    /// answering): it may still commit, so it is not retried inside the cluster.
    #[error("{0}")]
    Unknown(String),
}

/// The answer to a [`Call`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Call::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Call::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Call::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Call::Forward`].
    Forward(Result<Response, CallError>),
    /// To [`Call::ReadIndex`].
    ReadIndex(Result<Option<LogId>, CallError>),
    /// To [`Call::Join`] and [`Call::Reconfigure`]: done, or why not.
    Done(Result<(), CallError>),
    /// To [`Call::Adopt`]: the node's id once it is in.
    Adopted(Result<NodeId, CallError>),
    /// To [`Call::Deltas`]: per object and origin, the seq applied here afterwards.
    Deltas(Vec<crate::gossip::Applied>),
    /// To [`Call::Digest`].
    Digest(crate::gossip::DigestReply),
    /// To [`Call::Resync`].
    Resync(Result<crate::gossip::TableState, CallError>),
    /// To [`Call::Partitions`]: those of the groups this node holds.
    Partitions(Vec<PartitionInfo>),
    /// The group named in the call is not running on this node.
    NoGroup,
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Call(u64, Call),
    Reply(u64, Reply),
}

/// Answers calls that arrive at this node.
pub type Handler = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// How a call failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made: the call was not sent.
    #[error("node {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The connection broke or the call timed out after the call was sent: whether
    /// the other node acted on it is unknown.
    #[error("call to node {0} failed: {1}")]
    Network(NodeId, String),
}

/// Fault injection for tests: calls to and from these nodes are dropped, as if the
/// network between them were cut.
#[derive(Debug, Default)]
pub struct Faults {
    cut: RwLock<HashSet<NodeId>>,
    /// Calls dropped because of a cut (so a test can prove the fault took effect).
    pub dropped: AtomicU64,
    /// Share of gossip frames (pushes, digests) lost on the way, per mille.
    gossip_loss: AtomicU64,
    /// State of the loss dice.
    dice: AtomicU64,
    /// Gossip frames lost to `gossip_loss`.
    pub gossip_lost: AtomicU64,
    /// Writes forwarded to this node are answered with a storage failure reported by
    /// its text (as a failing disk on this node would), instead of being proposed.
    fail_forwards: std::sync::atomic::AtomicBool,
    /// Forwarded writes answered so.
    pub failed_forwards: AtomicU64,
    /// Every statement run on this node first waits this many milliseconds (a slow node,
    /// deterministic where a CPU quota is not).
    slow_ms: AtomicU64,
    /// Statements slowed so.
    pub statements_slowed: AtomicU64,
}

impl Faults {
    /// Cuts or heals the link to `node`.
    pub fn set_cut(&self, node: NodeId, cut: bool) {
        let mut c = self.cut.write();
        if cut {
            c.insert(node);
        } else {
            c.remove(&node);
        }
    }

    /// Whether the link to `node` is cut.
    pub fn is_cut(&self, node: NodeId) -> bool {
        self.cut.read().contains(&node)
    }

    /// The nodes this one is cut off from.
    pub fn cut(&self) -> Vec<NodeId> {
        let mut v: Vec<_> = self.cut.read().iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Makes this node answer every forwarded write with an internal failure (see
    /// `fail_forwards`), or stop doing so.
    pub fn set_fail_forwards(&self, fail: bool) {
        self.fail_forwards.store(fail, Ordering::Relaxed);
    }

    /// Slows every statement run on this node by `ms` milliseconds (0: not at all).
    pub fn set_slow_ms(&self, ms: u64) {
        self.slow_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the statement starting now must wait first, if at all (counts it).
    pub fn statement_delay(&self) -> Option<std::time::Duration> {
        let ms = self.slow_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return None;
        }
        self.statements_slowed.fetch_add(1, Ordering::Relaxed);
        Some(std::time::Duration::from_millis(ms))
    }

    /// When forwarded writes are to fail: counts one and returns the failure's text.
    pub fn forward_failure(&self) -> Option<String> {
        if !self.fail_forwards.load(Ordering::Relaxed) {
            return None;
        }
        self.failed_forwards.fetch_add(1, Ordering::Relaxed);
        Some("injected fault: IO error: While appending to file: /var/lib/eddy/000042.log: No space left on device".into())
    }

    /// Loses this share (per mille) of the gossip frames this node sends.
    pub fn set_gossip_loss(&self, permille: u64) {
        self.gossip_loss
            .store(permille.min(1000), Ordering::Relaxed);
    }

    /// The share of gossip frames lost, per mille.
    pub fn gossip_loss(&self) -> u64 {
        self.gossip_loss.load(Ordering::Relaxed)
    }

    /// Whether to lose the next gossip frame (counted when it is).
    pub(crate) fn lose_gossip(&self) -> bool {
        let p = self.gossip_loss.load(Ordering::Relaxed);
        if p == 0 {
            return false;
        }
        // splitmix64 over a counter: uniform enough for dropping frames.
        let mut z = self
            .dice
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let lost = z % 1000 < p;
        if lost {
            self.gossip_lost.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    fn blocks(&self, node: NodeId) -> bool {
        let blocked = self.cut.read().contains(&node);
        if blocked {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        blocked
    }
}

/// Outgoing connections of this node, one per peer.
pub struct Peers {
    me: NodeId,
    conns: Mutex<HashMap<NodeId, Arc<Conn>>>,
    /// Each connection's task; [`Peers::close`] ends them and waits for them.
    tasks: TaskTracker,
    closing: CancellationToken,
    /// Network faults injected by tests.
    pub faults: Arc<Faults>,
    /// Seals and checks every frame.
    pub auth: Arc<FrameAuth>,
}

struct Conn {
    addr: String,
    tx: mpsc::Sender<(Call, oneshot::Sender<Reply>)>,
}

impl Peers {
    /// No connections yet; they are made on first use.
    pub fn new(me: NodeId, faults: Arc<Faults>, auth: Arc<FrameAuth>) -> Arc<Peers> {
        Arc::new(Peers {
            me,
            conns: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            faults,
            auth,
        })
    }

    /// Closes every connection, refuses further calls, and waits for the connections'
    /// tasks to end.
    pub async fn close(&self) {
        self.closing.cancel();
        self.conns.lock().clear();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Sends `call` to `node` at `addr` and waits up to `timeout` for the reply.
    pub async fn call(
        &self,
        node: NodeId,
        addr: &str,
        call: Call,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        if self.closing.is_cancelled() {
            return Err(TransportError::Unreachable(node, "shutting down".into()));
        }
        if self.faults.blocks(node) {
            // A cut link looks like a peer that never answers.
            tokio::time::sleep(timeout.min(Duration::from_millis(200))).await;
            return Err(TransportError::Unreachable(node, "link cut".into()));
        }
        let conn = self.conn(node, addr).await?;
        let (tx, rx) = oneshot::channel();
        if conn.tx.send((call, tx)).await.is_err() {
            // Never sent: as good as unreachable.
            self.forget(node, &conn);
            return Err(TransportError::Unreachable(
                node,
                "connection closed".into(),
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => {
                self.forget(node, &conn);
                Err(TransportError::Network(node, "connection closed".into()))
            }
            Err(_) => Err(TransportError::Network(
                node,
                format!("no reply in {timeout:?}"),
            )),
        }
    }

    fn forget(&self, node: NodeId, conn: &Arc<Conn>) {
        let mut conns = self.conns.lock();
        if conns.get(&node).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(&node);
        }
    }

    async fn conn(&self, node: NodeId, addr: &str) -> Result<Arc<Conn>, TransportError> {
        if let Some(c) = self.conns.lock().get(&node) {
            if c.addr == addr && !c.tx.is_closed() {
                return Ok(c.clone());
            }
        }
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Unreachable(node, format!("connect to {addr} timed out")))?
            .map_err(|e| TransportError::Unreachable(node, format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, codec());
        // The first frame names the caller, so the receiver can apply injected faults.
        let hello = sealed(&self.auth, &self.me)
            .map_err(|e| TransportError::Network(node, e.to_string()))?;
        framed
            .send(hello)
            .await
            .map_err(|e| TransportError::Unreachable(node, e.to_string()))?;
        let (tx, rx) = mpsc::channel(1024);
        let (auth, closing) = (self.auth.clone(), self.closing.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = run_client(framed, rx, auth) => {}
            }
        });
        let conn = Arc::new(Conn {
            addr: addr.to_owned(),
            tx,
        });
        self.conns.lock().insert(node, conn.clone());
        Ok(conn)
    }
}

/// `value` in postcard, sealed with the cluster secret's tag.
fn sealed<T: Serialize>(auth: &FrameAuth, value: &T) -> Result<Bytes, postcard::Error> {
    let mut buf = postcard::to_stdvec(value)?;
    auth.seal(&mut buf);
    Ok(Bytes::from(buf))
}

/// A received frame checked against its tag and decoded; `None` if either fails.
fn opened<T: serde::de::DeserializeOwned>(auth: &FrameAuth, frame: &[u8]) -> Option<T> {
    postcard::from_bytes(auth.open(frame)?).ok()
}

/// Most frames written together in one flush (the codec writes through above 8 KiB
/// buffered anyway; this bounds how long one burst holds the writer).
const COALESCE_FRAMES: usize = 256;

/// Writes `first`, and whatever `rx` already holds (up to [`COALESCE_FRAMES`]), as frames
/// made by `frame` (`None`: nothing to send for that item), then flushes once: frames
/// queued together leave in one write. False when the connection failed.
async fn write_coalesced<T, S>(
    sink: &mut S,
    first: T,
    rx: &mut mpsc::Receiver<T>,
    mut frame: impl FnMut(T) -> Option<Bytes>,
) -> bool
where
    S: futures::Sink<Bytes> + Unpin,
{
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(item) = next.take() {
        if let Some(bytes) = frame(item) {
            if sink.feed(bytes).await.is_err() {
                return false;
            }
            fed += 1;
        }
        if fed < COALESCE_FRAMES {
            next = rx.try_recv().ok();
        }
    }
    sink.flush().await.is_ok()
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Writes calls and routes replies to their callers until either side closes.
async fn run_client(
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    mut rx: mpsc::Receiver<(Call, oneshot::Sender<Reply>)>,
    auth: Arc<FrameAuth>,
) {
    let (mut sink, mut stream) = framed.split();
    let pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>> = Mutex::default();
    // Reading replies and writing calls run side by side; when either ends (a side
    // closed, a bad frame), so does the other.
    let reader = async {
        while let Some(Ok(bytes)) = stream.next().await {
            match opened::<Frame>(&auth, &bytes) {
                Some(Frame::Reply(id, reply)) => {
                    if let Some(tx) = pending.lock().remove(&id) {
                        let _ = tx.send(reply);
                    }
                }
                Some(Frame::Call(..)) | None => break,
            }
        }
    };
    let writer = async {
        let mut next_id = 0u64;
        while let Some(first) = rx.recv().await {
            let sent = write_coalesced(&mut sink, first, &mut rx, |(call, reply)| {
                next_id += 1;
                pending.lock().insert(next_id, reply);
                let bytes = sealed(&auth, &Frame::Call(next_id, call)).ok();
                if bytes.is_none() {
                    pending.lock().remove(&next_id);
                }
                bytes
            })
            .await;
            if !sent {
                break;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    // Dropping the senders fails every call still waiting.
    pending.lock().clear();
}

/// Accepts connections from other nodes and answers their calls with `handler`, until
/// `cancel` fires (then every connection closes too). Each connection, and each call it
/// answers, is a task of `tasks`.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    faults: Arc<Faults>,
    auth: Arc<FrameAuth>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handler, faults, cancel) = (handler.clone(), faults.clone(), cancel.clone());
        let (auth, calls) = (auth.clone(), tasks.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_conn(stream, handler, faults, auth, calls) => {}
            }
        });
    }
}

async fn serve_conn(
    stream: TcpStream,
    handler: Handler,
    faults: Arc<Faults>,
    auth: Arc<FrameAuth>,
    tasks: TaskTracker,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let framed = Framed::new(stream, codec());
    let (mut sink, mut stream) = framed.split();
    let from: NodeId = match stream.next().await {
        Some(Ok(b)) => match opened(&auth, &b) {
            Some(id) => id,
            None => {
                tracing::warn!(%peer, "internal connection refused: its first frame does not carry this cluster's secret");
                return;
            }
        },
        _ => return,
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let writer = tasks.spawn(async move {
        while let Some(b) = rx.recv().await {
            if !write_coalesced(&mut sink, b, &mut rx, Some).await {
                break;
            }
        }
    });
    while let Some(Ok(bytes)) = stream.next().await {
        let Some(Frame::Call(id, call)) = opened::<Frame>(&auth, &bytes) else {
            tracing::warn!(
                node = from,
                "malformed or unauthenticated internal frame; closing the connection"
            );
            break;
        };
        if faults.blocks(from) {
            continue;
        }
        let handler = handler.clone();
        let tx = tx.clone();
        let auth = auth.clone();
        tasks.spawn(async move {
            let reply = handler(call).await;
            if let Ok(b) = sealed(&auth, &Frame::Reply(id, reply)) {
                let _ = tx.send(b).await;
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// openraft's network for one group: calls go through the shared [`Peers`].
#[derive(Clone)]
pub struct GroupNetwork {
    /// The group.
    pub group: GroupId,
    /// This node's connections.
    pub peers: Arc<Peers>,
}

/// One group's client to one peer.
pub struct GroupClient {
    group: GroupId,
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> GroupClient {
        GroupClient {
            group: self.group,
            target,
            addr: node.cluster_addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl GroupClient {
    /// Sends one openraft RPC and takes its answer out of the reply with `pick`.
    async fn rpc<T, E: std::error::Error>(
        &self,
        call: Call,
        option: &RPCOption,
        pick: impl FnOnce(Reply) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> RpcResult<T, E> {
        let reply = self
            .peers
            .call(self.target, &self.addr, call, option.hard_ttl())
            .await;
        match reply {
            Ok(Reply::NoGroup) => Err(RPCError::Unreachable(Unreachable::new(
                &CallError::NoGroup(self.group),
            ))),
            Ok(r) => match pick(r) {
                Some(answer) => {
                    answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
                }
                None => Err(RPCError::Network(NetworkError::new(&CallError::Refused(
                    "unexpected reply kind".into(),
                )))),
            },
            Err(e @ TransportError::Unreachable(..)) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::Network(..)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.rpc(Call::Append(self.group, rpc), &option, |r| match r {
            Reply::Append(a) => Some(a),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(Call::Snapshot(self.group, rpc), &option, |r| match r {
            Reply::Snapshot(a) => Some(a),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(Call::Vote(self.group, rpc), &option, |r| match r {
            Reply::Vote(a) => Some(a),
            _ => None,
        })
        .await
    }
}
