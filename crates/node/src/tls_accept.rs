//! The accepting side of TLS, shared by the peer port (`peer_tls.rs`) and
//! the `keel` server's client port: a connection that is plaintext or TLS
//! over TCP, and a stream of accepted connections whose handshakes run
//! concurrently.
//!
//! Invariant: a connection whose handshake fails, stalls or is refused is
//! dropped alone (the handshake logs why); the listener goes on accepting,
//! and one slow client delays nobody.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection may take to finish its TLS handshake.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// One accepted connection: plaintext, or TLS over TCP.
pub enum AcceptedConnection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AcceptedConnection {
    fn tcp(&self) -> &TcpStream {
        match self {
            AcceptedConnection::Plain(tcp) => tcp,
            AcceptedConnection::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// The connections of `accepted` whose `handshake` succeeded (`Some`), in
/// the order their handshakes finish; handshakes run as concurrent tasks.
/// Errors of `accepted` itself are passed on.
pub fn handshaken_connections<T, H, F>(
    accepted: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    handshake: H,
) -> Pin<Box<dyn Stream<Item = io::Result<T>> + Send>>
where
    T: Send + 'static,
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = Option<T>> + Send + 'static,
{
    let state = (Box::pin(accepted), JoinSet::new(), handshake);
    Box::pin(futures::stream::unfold(
        state,
        |(mut accepted, mut handshakes, handshake)| async move {
            loop {
                tokio::select! {
                    next = accepted.next() => match next {
                        Some(Ok(tcp)) => {
                            handshakes.spawn(handshake(tcp));
                        }
                        Some(Err(error)) => return Some((Err(error), (accepted, handshakes, handshake))),
                        None => return None,
                    },
                    Some(finished) = handshakes.join_next(), if !handshakes.is_empty() => {
                        if let Ok(Some(connection)) = finished {
                            return Some((Ok(connection), (accepted, handshakes, handshake)));
                        }
                    }
                }
            }
        },
    ))
}

impl AsyncRead for AcceptedConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AcceptedConnection::Plain(tcp) => Pin::new(tcp).poll_read(cx, out),
            AcceptedConnection::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, out),
        }
    }
}

impl AsyncWrite for AcceptedConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AcceptedConnection::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            AcceptedConnection::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AcceptedConnection::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, buffers),
            AcceptedConnection::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AcceptedConnection::Plain(tcp) => tcp.is_write_vectored(),
            AcceptedConnection::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AcceptedConnection::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            AcceptedConnection::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AcceptedConnection::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            AcceptedConnection::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a request learns of the connection it came on (in its
/// extensions): the TCP addresses, and the common name of the client
/// certificate the TLS handshake verified (only a port that requires client
/// certificates asks for one), which etcd's auth takes as the user when a
/// request carries no token.
#[derive(Debug, Clone)]
pub struct AcceptedConnectInfo {
    pub tcp: TcpConnectInfo,
    pub client_common_name: Option<String>,
}

impl Connected for AcceptedConnection {
    type ConnectInfo = AcceptedConnectInfo;

    fn connect_info(&self) -> AcceptedConnectInfo {
        let client_common_name = match self {
            AcceptedConnection::Plain(_) => None,
            AcceptedConnection::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|end| certificate_common_name(end).ok().flatten()),
        };
        AcceptedConnectInfo {
            tcp: self.tcp().connect_info(),
            client_common_name,
        }
    }
}

/// A certificate that could not be parsed as X.509.
#[derive(Debug, thiserror::Error)]
#[error("unparsable certificate: {0}")]
pub struct UnparsableCertificate(pub String);

/// The subject common name of a DER certificate, if it has one.
pub fn certificate_common_name(
    certificate: &rustls::pki_types::CertificateDer<'_>,
) -> Result<Option<String>, UnparsableCertificate> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| UnparsableCertificate(error.to_string()))?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(name)
}
