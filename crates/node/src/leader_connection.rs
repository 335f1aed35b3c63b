//! How a follower learns at once that its leader's process is gone, instead
//! of waiting out the election timeout (issue 12: failover under half a
//! second).
//!
//! Each member sends its Raft messages to a peer over one connection, which
//! the peer's server accepted. Every accepted peer connection is watched
//! ([`WatchedPeerStream`]), and the peer service tags it with the member
//! whose leader messages (AppendEntries, snapshots) arrive on it
//! ([`ConnectionOrigin`]). A killed process's sockets are closed by its
//! kernel at once, so when the other side closes or resets the connection
//! that carries the current leader's messages, the leader has most likely
//! died. The follower then:
//! 1. stops trusting that leader in keel's view ([`LeaderContact::lose`]):
//!    requests wait for the next leader instead of being sent to a dead one;
//! 2. drops its own leader lease (voters, this member included, refuse any
//!    election while it lasts) through the only means openraft offers: a
//!    leadership transfer request naming the current leader's vote and, as
//!    the next leader, that leader itself, never this member (a transfer to
//!    this member would elect it even against a live leader's lease);
//! 3. runs pre-vote rounds (`trigger().elect(true)`), the first at a random
//!    time within a heartbeat interval, the next every one to two heartbeat
//!    intervals, until a leader is known again, for at most one election
//!    timeout. The other followers saw the same close and dropped their
//!    leases too; the random times keep two of them from splitting the vote,
//!    and a round that came too early (a voter still held its lease) is
//!    repeated.
//!
//! Invariant: this never raises a term while the leader lives. Every round
//! is a pre-vote, which a voter refuses while it still hears the leader (its
//! own lease) and a leader refuses while a quorum acknowledges it; only a
//! granted pre-vote leads to a real election. A connection reset while the
//! leader lives costs a few refused pre-vote rounds, and this member's lease
//! until the next term (openraft restores a dropped lease only with a new
//! vote): until then it grants votes as a member without leases would.
//! A clean end of a replication session is not a close of the connection.
//! A partition that leaves connections open is never seen here and waits out
//! the election timeout, as before; a proxy that closes connections when it
//! cuts a link looks like a death.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use keel_raft::{KeelRaft, NodeId, TypeConfig};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use openraft::ServerState;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::server::Connected;

use crate::leadership::LeaderContact;
use crate::tls_accept::AcceptedConnection;

/// What the peer service learns about an accepted connection: the member
/// whose leader messages arrive on it. It is the connection's `ConnectInfo`,
/// found in the extensions of every request that arrives on it.
#[derive(Clone, Default)]
pub struct ConnectionOrigin(Arc<OriginState>);

#[derive(Default)]
struct OriginState {
    /// The member that sends leader messages on this connection (one member
    /// dials each connection, so it never changes).
    leader: OnceLock<NodeId>,
    /// Set by a test to reset the connection from this side.
    reset: AtomicBool,
    /// The transport's pending read, woken for a reset.
    read_waker: AtomicWaker,
    /// The close was reported (at most once).
    reported: AtomicBool,
}

impl ConnectionOrigin {
    /// Notes that `member` sends leader messages on this connection.
    pub fn carries_leader_messages_from(&self, member: NodeId) {
        let _ = self.0.leader.set(member);
    }
}

/// An accepted peer connection whose close (end of stream or error, seen
/// by the transport's reads) is reported to its [`LeaderConnectionWatch`].
pub struct WatchedPeerStream {
    stream: AcceptedConnection,
    origin: ConnectionOrigin,
    closed: mpsc::UnboundedSender<NodeId>,
}

impl WatchedPeerStream {
    fn report_closed(&self) {
        if self.origin.0.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(member) = self.origin.0.leader.get() {
            let _ = self.closed.send(*member);
        }
    }
}

impl AsyncRead for WatchedPeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.origin.0.read_waker.register(cx.waker());
        if this.origin.0.reset.load(Ordering::Acquire) {
            this.report_closed();
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let filled = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let closed = match &read {
            Poll::Ready(Ok(())) => buf.filled().len() == filled && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if closed {
            this.report_closed();
        }
        read
    }
}

impl AsyncWrite for WatchedPeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for WatchedPeerStream {
    type ConnectInfo = ConnectionOrigin;

    fn connect_info(&self) -> ConnectionOrigin {
        self.origin.clone()
    }
}

/// The member's accepted peer connections and what it does when the one
/// carrying its leader's messages closes. A `keel` process makes its own;
/// an in-process test cluster hands each member one, to reset connections
/// and count what the member did.
#[derive(Clone)]
pub struct LeaderConnectionWatch {
    connections: Arc<Mutex<Vec<Weak<OriginState>>>>,
    closed_sender: mpsc::UnboundedSender<NodeId>,
    closed: Arc<Mutex<Option<mpsc::UnboundedReceiver<NodeId>>>>,
    leader_losses: Arc<AtomicU64>,
}

impl Default for LeaderConnectionWatch {
    fn default() -> Self {
        let (closed_sender, closed) = mpsc::unbounded_channel();
        LeaderConnectionWatch {
            connections: Arc::default(),
            closed_sender,
            closed: Arc::new(Mutex::new(Some(closed))),
            leader_losses: Arc::default(),
        }
    }
}

/// The timing of the pre-vote rounds after a leader's connection closed.
#[derive(Debug, Clone, Copy)]
pub struct CampaignTiming {
    pub heartbeat: Duration,
    pub election_timeout: Duration,
}

impl LeaderConnectionWatch {
    /// Watches a connection the peer server accepted.
    pub fn accept(&self, stream: AcceptedConnection) -> WatchedPeerStream {
        let origin = ConnectionOrigin::default();
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|connection| connection.strong_count() > 0);
        connections.push(Arc::downgrade(&origin.0));
        WatchedPeerStream {
            stream,
            origin,
            closed: self.closed_sender.clone(),
        }
    }

    /// Test hook: resets, from this side, every open connection on which
    /// `member` sent leader messages, as a network fault would; returns how
    /// many.
    pub fn reset_connections_from(&self, member: NodeId) -> usize {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let mut reset = 0;
        for origin in connections.iter().filter_map(Weak::upgrade) {
            if origin.leader.get() == Some(&member) && !origin.reported.load(Ordering::Acquire) {
                origin.reset.store(true, Ordering::Release);
                origin.read_waker.wake();
                reset += 1;
            }
        }
        reset
    }

    /// How many times this member acted on its leader's connection closing.
    pub fn leader_losses(&self) -> u64 {
        self.leader_losses.load(Ordering::Relaxed)
    }

    /// Acts on every close of the current leader's connection, until the
    /// member stops. Runs once per watch.
    pub(crate) async fn run(self, raft: KeelRaft, contact: LeaderContact, timing: CampaignTiming) {
        let taken = self.closed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut closed) = taken else {
            tracing::warn!("the leader connection watch runs once per member");
            return;
        };
        while let Some(member) = closed.recv().await {
            let Some(lost) = LostLeader::if_current(&raft, member) else {
                continue;
            };
            self.leader_losses.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                leader = %format!("{member:x}"),
                term = lost.term,
                "the leader's connection closed; campaigning (pre-vote) without waiting out the election timeout"
            );
            contact.lose();
            if let Err(fatal) = lost.drop_lease(&raft).await {
                tracing::warn!(%fatal, "could not drop the leader lease; Raft has stopped");
                return;
            }
            if let Err(fatal) = campaign_until_led(&raft, &contact, timing).await {
                tracing::warn!(%fatal, "could not campaign; Raft has stopped");
                return;
            }
        }
    }
}

/// The leader whose connection closed, if this member still follows it.
struct LostLeader {
    vote: keel_raft::type_config::Vote,
    leader: NodeId,
    term: u64,
}

impl LostLeader {
    fn if_current(raft: &KeelRaft, member: NodeId) -> Option<LostLeader> {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        let follows = metrics.state == ServerState::Follower
            && member != metrics.id
            && metrics.current_leader == Some(member)
            && metrics.vote.is_committed()
            && metrics.vote.leader_id().voted_for == member;
        follows.then(|| LostLeader {
            vote: metrics.vote,
            leader: member,
            term: metrics.current_term,
        })
    }

    /// Drops this member's lease on the lost leader: a transfer request from
    /// that leader's vote to the leader itself (a transfer to this member
    /// would elect it at once, lease or not). openraft ignores it if the
    /// vote changed meanwhile.
    async fn drop_lease(&self, raft: &KeelRaft) -> Result<(), openraft::error::Fatal<TypeConfig>> {
        let request = TransferLeaderRequest::new(self.vote, self.leader, None);
        if let Err(refused) = raft.handle_transfer_leader(request).await? {
            tracing::debug!(%refused, "the lease was not dropped");
        }
        Ok(())
    }
}

/// Runs pre-vote rounds at random times until a leader is known again (this
/// member leads, or heard from a leader since it lost its own), for at most
/// one election timeout.
async fn campaign_until_led(
    raft: &KeelRaft,
    contact: &LeaderContact,
    timing: CampaignTiming,
) -> Result<(), openraft::error::Fatal<TypeConfig>> {
    let give_up = Instant::now() + timing.election_timeout;
    let mut pause = random_pause(Duration::ZERO, timing.heartbeat);
    loop {
        tokio::time::sleep(pause).await;
        let leads = raft.metrics().borrow_watched().state == ServerState::Leader;
        if leads || !contact.is_lost() || Instant::now() >= give_up {
            return Ok(());
        }
        raft.trigger().elect(true).await?;
        pause = random_pause(timing.heartbeat, 2 * timing.heartbeat);
    }
}

fn random_pause(at_least: Duration, below: Duration) -> Duration {
    if below <= at_least {
        return at_least;
    }
    rand::thread_rng().gen_range(at_least..below)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// An accepted connection, watched, read until it fails or ends; and
    /// its other end.
    async fn watched_pair(
        watch: &LeaderConnectionWatch,
    ) -> (ConnectionOrigin, TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut watched = watch.accept(AcceptedConnection::Plain(accepted));
        let origin = watched.connect_info();
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            while let Ok(read) = watched.read(&mut buffer).await {
                if read == 0 {
                    return;
                }
            }
        });
        (origin, dialled, reader)
    }

    fn closed_receiver(watch: &LeaderConnectionWatch) -> mpsc::UnboundedReceiver<NodeId> {
        watch.closed.lock().unwrap().take().unwrap()
    }

    #[tokio::test]
    async fn a_closed_connection_that_carried_leader_messages_names_its_sender_once() {
        let watch = LeaderConnectionWatch::default();
        let mut closed = closed_receiver(&watch);
        let (origin, mut dialled, reader) = watched_pair(&watch).await;
        origin.carries_leader_messages_from(7);
        dialled.write_all(b"frames").await.unwrap();
        drop(dialled);
        reader.await.unwrap();
        assert_eq!(closed.recv().await, Some(7));
        assert!(closed.try_recv().is_err(), "reported once");
    }

    #[tokio::test]
    async fn a_closed_connection_without_leader_messages_is_not_reported() {
        let watch = LeaderConnectionWatch::default();
        let mut closed = closed_receiver(&watch);
        let (_origin, dialled, reader) = watched_pair(&watch).await;
        drop(dialled);
        reader.await.unwrap();
        let (origin, dialled, reader) = watched_pair(&watch).await;
        origin.carries_leader_messages_from(9);
        drop(dialled);
        reader.await.unwrap();
        assert_eq!(
            closed.recv().await,
            Some(9),
            "only the second connection is reported"
        );
    }

    #[tokio::test]
    async fn a_reset_fails_the_pending_read_and_is_reported() {
        let watch = LeaderConnectionWatch::default();
        let mut closed = closed_receiver(&watch);
        let (origin, _dialled, reader) = watched_pair(&watch).await;
        origin.carries_leader_messages_from(5);
        assert_eq!(
            watch.reset_connections_from(6),
            0,
            "another member's connections stay"
        );
        assert_eq!(watch.reset_connections_from(5), 1);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the blocked read ends")
            .unwrap();
        assert_eq!(closed.recv().await, Some(5));
    }
}
