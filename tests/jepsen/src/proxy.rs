//! The harness's control over member-to-member traffic: one TCP proxy per
//! DIRECTED link i -> j on 127.0.0.1. Member i dials member j through it
//! (keel's `--peer-dial-overrides`), so the proxy carries i's requests to j
//! and j's responses back to i on the same connections.
//!
//! Invariants:
//! - only loopback addresses are ever bound or dialled (checked at start);
//! - while a link is cut, no byte crosses it: live connections are closed
//!   at the moment of the cut, and connections accepted during the cut are
//!   held open but never forwarded (a blackhole, like dropped packets),
//!   then closed when the link heals so the member reconnects;
//! - cutting a cut link or healing an open one changes nothing (live
//!   connections on an open link are not disturbed by a redundant heal);
//! - a link's target moves when another member takes the place of the one
//!   it led to (the `member` nemesis): connections to the old target are
//!   closed then, and new ones reach the new member.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::partition::Grudge;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("refusing to proxy to or from a non-loopback address {0}")]
    NotLoopback(SocketAddr),
    #[error("binding the proxy for link {from}->{to}: {source}")]
    Bind {
        from: usize,
        to: usize,
        source: std::io::Error,
    },
}

/// Whether the link is cut and where it leads; `epoch` counts
/// transitions, so a connection knows when the state it was accepted under
/// has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    cut: bool,
    target: SocketAddr,
    epoch: u64,
}

/// What happened on one link, for the run's summary.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub forwarded: AtomicU64,
    pub blackholed: AtomicU64,
    pub killed: AtomicU64,
}

/// A cuttable proxy for the directed link `from -> to`.
pub struct LinkProxy {
    from: usize,
    to: usize,
    listen: SocketAddr,
    state: watch::Sender<LinkState>,
    counters: Arc<LinkCounters>,
    accept_task: JoinHandle<()>,
}

fn require_loopback(address: SocketAddr) -> Result<(), ProxyError> {
    if address.ip().is_loopback() {
        Ok(())
    } else {
        Err(ProxyError::NotLoopback(address))
    }
}

impl LinkProxy {
    /// Binds 127.0.0.1 on a free port and starts forwarding to `target`.
    pub async fn start(from: usize, to: usize, target: SocketAddr) -> Result<LinkProxy, ProxyError> {
        LinkProxy::start_avoiding(from, to, target, &BTreeSet::new()).await
    }

    /// As [`LinkProxy::start`], on a port outside `avoid` (ports promised to
    /// the members, which are not bound yet).
    pub async fn start_avoiding(
        from: usize,
        to: usize,
        target: SocketAddr,
        avoid: &BTreeSet<u16>,
    ) -> Result<LinkProxy, ProxyError> {
        require_loopback(target)?;
        let bind_error = |source| ProxyError::Bind { from, to, source };
        // Rejected listeners stay bound until a good port is found, so the
        // kernel does not hand the same port out again.
        let mut rejected = Vec::new();
        let (listener, listen) = loop {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(bind_error)?;
            let listen = listener.local_addr().map_err(bind_error)?;
            if !avoid.contains(&listen.port()) {
                break (listener, listen);
            }
            rejected.push(listener);
        };
        drop(rejected);
        require_loopback(listen)?;
        let (state, _) = watch::channel(LinkState {
            cut: false,
            target,
            epoch: 0,
        });
        let counters = Arc::new(LinkCounters::default());
        let accept_task = tokio::spawn(accept_loop(listener, state.clone(), counters.clone()));
        Ok(LinkProxy {
            from,
            to,
            listen,
            state,
            counters,
            accept_task,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn link(&self) -> (usize, usize) {
        (self.from, self.to)
    }

    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.counters
    }

    fn set_cut(&self, cut: bool) {
        self.state.send_if_modified(|state| {
            if state.cut == cut {
                return false;
            }
            state.cut = cut;
            state.epoch += 1;
            true
        });
    }

    /// Leads the link to `target` from now on, closing the connections to
    /// the old one.
    pub fn retarget(&self, target: SocketAddr) -> Result<(), ProxyError> {
        require_loopback(target)?;
        self.state.send_if_modified(|state| {
            if state.target == target {
                return false;
            }
            state.target = target;
            state.epoch += 1;
            true
        });
        Ok(())
    }

    /// Drops every live connection and blackholes new ones.
    pub fn cut(&self) {
        self.set_cut(true);
    }

    /// Lets traffic through again (closing the blackholed connections).
    pub fn heal(&self) {
        self.set_cut(false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Connection tasks end when the state sender goes away.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: watch::Sender<LinkState>, counters: Arc<LinkCounters>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let receiver = state.subscribe();
        tokio::spawn(serve_connection(inbound, receiver, counters.clone()));
    }
}

/// Resolves when the link leaves the state it had at `epoch` (or the proxy
/// is gone).
async fn transition_after(state: &mut watch::Receiver<LinkState>, epoch: u64) {
    loop {
        if state.borrow_and_update().epoch != epoch {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_connection(
    mut inbound: TcpStream,
    mut state: watch::Receiver<LinkState>,
    counters: Arc<LinkCounters>,
) {
    let at = *state.borrow_and_update();
    if at.cut {
        counters.blackholed.fetch_add(1, Ordering::Relaxed);
        transition_after(&mut state, at.epoch).await;
        return;
    }
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(at.target));
    let mut outbound = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(stream)) => stream,
            // The member is down: close the inbound side, as a refusal would.
            _ => return,
        },
        _ = transition_after(&mut state, at.epoch) => return,
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = transition_after(&mut state, at.epoch) => {
            counters.killed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Both streams drop here: the connection is closed on both sides.
}

/// All directed links of an `n`-member cluster.
pub struct Network {
    n: usize,
    links: BTreeMap<(usize, usize), LinkProxy>,
}

impl Network {
    /// One proxy per directed link; `peer_addrs[j]` is member j's real peer
    /// listener. No proxy takes a port in `avoid`.
    pub async fn start(peer_addrs: &[SocketAddr], avoid: &BTreeSet<u16>) -> Result<Network, ProxyError> {
        let n = peer_addrs.len();
        let mut links = BTreeMap::new();
        for from in 0..n {
            for (to, &target) in peer_addrs.iter().enumerate() {
                if from != to {
                    let proxy = LinkProxy::start_avoiding(from, to, target, avoid).await?;
                    links.insert((from, to), proxy);
                }
            }
        }
        Ok(Network { n, links })
    }

    pub fn size(&self) -> usize {
        self.n
    }

    /// The address member `from` must dial to reach member `to`.
    pub fn dial_address(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.links.get(&(from, to)).map(LinkProxy::listen_addr)
    }

    /// keel's `--peer-dial-overrides` value for member `from`:
    /// `name=http://127.0.0.1:port,...` for every other member (but those
    /// whose name is empty).
    pub fn dial_overrides(&self, from: usize, names: &[String]) -> String {
        (0..self.n)
            .filter(|&to| to != from)
            .filter_map(|to| {
                let address = self.dial_address(from, to)?;
                let name = names.get(to).filter(|name| !name.is_empty())?;
                Some(format!("{name}=http://{address}"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Leads every link into member `to` to `peer_addr`, the peer listener
    /// of the member that took its place.
    pub fn retarget_member(&self, to: usize, peer_addr: SocketAddr) -> Result<(), ProxyError> {
        self.links
            .iter()
            .filter(|(&(_, into), _)| into == to)
            .try_for_each(|(_, proxy)| proxy.retarget(peer_addr))
    }

    /// Cuts both directions of every pair in `grudge` and heals every other
    /// link.
    pub fn apply(&self, grudge: &Grudge) {
        for (&(from, to), proxy) in &self.links {
            if grudge.is_cut(from, to) {
                proxy.cut();
            } else {
                proxy.heal();
            }
        }
    }

    pub fn heal_all(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// The directed links that are cut right now.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        self.links
            .iter()
            .filter(|(_, proxy)| proxy.is_cut())
            .map(|(&link, _)| link)
            .collect()
    }

    /// (forwarded, blackholed, killed) connections over all links.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.links.values().fold((0, 0, 0), |(f, b, k), proxy| {
            let c = proxy.counters();
            (
                f + c.forwarded.load(Ordering::Relaxed),
                b + c.blackholed.load(Ordering::Relaxed),
                k + c.killed.load(Ordering::Relaxed),
            )
        })
    }
}
