//! The link proxies against a local echo server: traffic passes while the
//! link is open; a cut closes live connections at once and blackholes new
//! ones (accepted, never forwarded); healing closes the blackholed ones and
//! forwards again; a network cuts both directions of a pair; a link led to
//! another member's listener closes its connections to the old one and
//! forwards new ones to the new one; only loopback targets are accepted.

use std::net::SocketAddr;
use std::time::Duration;

use keel_jepsen::partition::isolate;
use keel_jepsen::proxy::{LinkProxy, Network, ProxyError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    answering_server(|byte| byte).await
}

/// A server that answers every byte it reads with `answer(byte)`.
async fn answering_server(answer: fn(u8) -> u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let answered: Vec<u8> = buffer[..n].iter().map(|&b| answer(b)).collect();
                            if stream.write_all(&answered).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// Sends `message` and waits up to `wait` for its echo.
async fn round_trip(stream: &mut TcpStream, message: &[u8], wait: Duration) -> Option<Vec<u8>> {
    stream.write_all(message).await.ok()?;
    let mut buffer = vec![0u8; message.len()];
    match tokio::time::timeout(wait, stream.read_exact(&mut buffer)).await {
        Ok(Ok(_)) => Some(buffer),
        _ => None,
    }
}

/// Whether the peer closed the stream (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buffer = [0u8; 16];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

const WAIT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_cut_kills_live_connections_and_blackholes_new_ones_until_healed() {
    let echo = echo_server().await;
    let proxy = LinkProxy::start(0, 1, echo).await.expect("proxy");
    assert!(proxy.listen_addr().ip().is_loopback());

    let mut live = TcpStream::connect(proxy.listen_addr()).await.expect("connect");
    assert_eq!(
        round_trip(&mut live, b"hello", WAIT).await.as_deref(),
        Some(&b"hello"[..])
    );

    proxy.cut();
    assert!(proxy.is_cut());
    assert!(
        closed_within(&mut live, WAIT).await,
        "a cut must close live connections"
    );

    // A connection made during the cut is accepted but goes nowhere.
    let mut blackholed = TcpStream::connect(proxy.listen_addr()).await.expect("connect");
    assert_eq!(round_trip(&mut blackholed, b"lost", WAIT).await, None);

    proxy.heal();
    assert!(
        closed_within(&mut blackholed, WAIT).await,
        "healing closes blackholed connections"
    );
    let mut fresh = TcpStream::connect(proxy.listen_addr()).await.expect("connect");
    assert_eq!(
        round_trip(&mut fresh, b"again", WAIT).await.as_deref(),
        Some(&b"again"[..])
    );

    // Healing an open link leaves live connections alone.
    proxy.heal();
    assert_eq!(
        round_trip(&mut fresh, b"still", WAIT).await.as_deref(),
        Some(&b"still"[..])
    );
    let (forwarded, blackholed, killed) = {
        let c = proxy.counters();
        use std::sync::atomic::Ordering::Relaxed;
        (
            c.forwarded.load(Relaxed),
            c.blackholed.load(Relaxed),
            c.killed.load(Relaxed),
        )
    };
    assert_eq!((forwarded, blackholed, killed), (2, 1, 1));
}

#[tokio::test]
async fn a_retargeted_link_closes_old_connections_and_forwards_to_the_new_member() {
    let old_member = echo_server().await;
    let new_member = answering_server(|byte| byte.to_ascii_uppercase()).await;
    let network = Network::start(&[old_member, old_member], &Default::default())
        .await
        .expect("network");
    let link = network.dial_address(0, 1).expect("link 0->1");
    let mut live = TcpStream::connect(link).await.expect("connect");
    assert_eq!(
        round_trip(&mut live, b"old", WAIT).await.as_deref(),
        Some(&b"old"[..])
    );

    network.retarget_member(1, new_member).expect("loopback target");
    assert!(
        closed_within(&mut live, WAIT).await,
        "connections to the replaced member are closed"
    );
    let mut fresh = TcpStream::connect(link).await.expect("connect");
    assert_eq!(
        round_trip(&mut fresh, b"new", WAIT).await.as_deref(),
        Some(&b"NEW"[..]),
        "a new connection reaches the new member"
    );
    // The other direction still leads to member 0.
    let back = network.dial_address(1, 0).expect("link 1->0");
    let mut other = TcpStream::connect(back).await.expect("connect");
    assert_eq!(
        round_trip(&mut other, b"zero", WAIT).await.as_deref(),
        Some(&b"zero"[..])
    );
    // Cuts still apply to the retargeted link.
    network.apply(&isolate(2, 1));
    assert!(closed_within(&mut fresh, WAIT).await, "a cut closes it");
    assert!(matches!(
        network.retarget_member(1, "10.0.0.1:80".parse().expect("address")),
        Err(ProxyError::NotLoopback(_))
    ));
}

#[tokio::test]
async fn a_network_cuts_both_directions_of_a_pair() {
    let echoes = [echo_server().await, echo_server().await, echo_server().await];
    let network = Network::start(&echoes, &Default::default())
        .await
        .expect("network");
    let names: Vec<String> = ["m1", "m2", "m3"].iter().map(|s| s.to_string()).collect();
    let overrides = network.dial_overrides(0, &names);
    assert!(overrides.starts_with("m2=http://127.0.0.1:"), "{overrides}");
    assert_eq!(overrides.matches("=http://127.0.0.1:").count(), 2);

    network.apply(&isolate(3, 2));
    let mut cut = network.cut_links();
    cut.sort();
    assert_eq!(cut, vec![(0, 2), (1, 2), (2, 0), (2, 1)]);
    for (from, to) in [(0, 2), (2, 0)] {
        let address = network.dial_address(from, to).expect("link");
        let mut stream = TcpStream::connect(address).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, b"x", WAIT).await,
            None,
            "{from}->{to} must be cut"
        );
    }
    let address = network.dial_address(0, 1).expect("link");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    assert!(
        round_trip(&mut stream, b"y", WAIT).await.is_some(),
        "0->1 stays open"
    );

    network.heal_all();
    assert!(network.cut_links().is_empty());
}

#[tokio::test]
async fn proxies_never_take_a_port_promised_to_a_member() {
    let echo = echo_server().await;
    // Promise many ports the kernel is likely to hand out next.
    let mut promised = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..50 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        promised.insert(listener.local_addr().expect("address").port());
        held.push(listener);
    }
    drop(held);
    for _ in 0..50 {
        let proxy = LinkProxy::start_avoiding(0, 1, echo, &promised)
            .await
            .expect("proxy");
        assert!(!promised.contains(&proxy.listen_addr().port()));
    }
}

#[tokio::test]
async fn only_loopback_targets_are_proxied() {
    let outside: SocketAddr = "192.0.2.1:2380".parse().expect("address");
    assert!(matches!(
        LinkProxy::start(0, 1, outside).await,
        Err(ProxyError::NotLoopback(_))
    ));
}
