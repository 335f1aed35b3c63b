//! TLS between members, with etcd 3.4's peer flags' meanings: the member's
//! one peer certificate is served on its `https://` peer listeners and
//! presented as its client certificate when it dials an `https://` peer.
//! The trusted CA verifies both directions; `client_cert_auth` (or a
//! trusted CA, as etcd's TLS setup does) makes the peer port require a
//! certificate it signed; `crl_file` refuses revoked peer certificates on
//! the accepting side; `allowed_cn` refuses a certificate with another
//! common name on either side. Auto TLS (a self-signed certificate) does not
//! verify peers' server certificates, as in etcd.
//!
//! Invariants:
//! - The files are read again for every new connection, accepted or dialled
//!   (as the client port does), so rotated files take effect without a
//!   restart; [`PeerTlsConfig::check`] reads them once at start.
//! - A refused or failed handshake drops that connection alone.

use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use keel_client::tls::{
    client_tls_config, connect_tls, crypto_provider, server_config, ServingFiles, TlsOptions,
};
use keel_client::TlsError;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Uri;

use crate::tls_accept::{certificate_common_name, AcceptedConnection, HANDSHAKE_LIMIT};

/// TLS sessions remembered for resumption on the peer port.
const RESUMABLE_SESSIONS: usize = 64;

/// A member's peer TLS (etcd's `--peer-*` TLS flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsConfig {
    /// The peer certificate (PEM), served and presented to peers.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CAs that sign the peers' certificates (`None`: the system's roots
    /// verify servers, and no client certificate is asked for).
    pub trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate the trusted CAs signed.
    pub client_cert_auth: bool,
    /// Certificate revocation lists (PEM) checked on accepted connections.
    pub crl_file: Option<PathBuf>,
    /// The only common name a peer's certificate may carry.
    pub allowed_cn: Option<String>,
    /// Verify the certificates peers serve (false with auto TLS).
    pub verify_peer_servers: bool,
    /// Serve TLS on the node's peer listeners (their URLs are `https://`).
    pub serve_on_listeners: bool,
}

/// Why peer TLS cannot be set up, or a peer's certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("peer TLS files: {0}")]
    Files(#[from] TlsError),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer's certificate cannot be parsed: {0}")]
    UnparsableCertificate(String),
    #[error("CommonName authentication failed: the peer's certificate has CN {found:?}, not the allowed {allowed:?}")]
    CommonNameRefused { found: String, allowed: String },
}

impl PeerTlsConfig {
    /// Reads the files once and builds both sides' configurations.
    pub fn check(&self) -> Result<(), PeerTlsError> {
        self.server_config(ServerSessionMemoryCache::new(1))?;
        self.client_config()?;
        Ok(())
    }

    fn requires_client_certificate(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    /// The accepting side's configuration, from the files as they are now.
    fn server_config(
        &self,
        sessions: Arc<dyn StoresServerSessions>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let files = ServingFiles {
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            client_ca_file: self
                .trusted_ca_file
                .as_deref()
                .filter(|_| self.requires_client_certificate()),
            crl_file: self.crl_file.as_deref(),
        };
        server_config(&files, crypto_provider(), vec![b"h2".to_vec()], sessions)
    }

    /// The dialling side's configuration: the peer certificate as the client
    /// certificate, servers verified against the trusted CA (unless auto TLS).
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_tls_config(&TlsOptions {
            trusted_ca_file: self.trusted_ca_file.clone(),
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
            insecure_skip_verify: !self.verify_peer_servers,
            insecure_transport: false,
        })
    }

    /// Refuses a peer certificate whose common name is not `allowed_cn`.
    fn check_common_name(&self, certificates: Option<&[CertificateDer<'_>]>) -> Result<(), PeerTlsError> {
        let Some(allowed) = &self.allowed_cn else {
            return Ok(());
        };
        let end = certificates
            .and_then(|chain| chain.first())
            .ok_or(PeerTlsError::NoCertificate)?;
        let found = common_name(end)?;
        if found.as_deref() == Some(allowed.as_str()) {
            Ok(())
        } else {
            Err(PeerTlsError::CommonNameRefused {
                found: found.unwrap_or_default(),
                allowed: allowed.clone(),
            })
        }
    }

    /// Dials `uri` (given as `http://host:port`; the TLS is this
    /// connector's) with the files as they are now, and checks the peer's
    /// common name.
    pub(crate) async fn connect(
        self: Arc<Self>,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
        let config = self.client_config().map_err(std::io::Error::other)?;
        let stream = connect_tls(config, uri).await?;
        self.check_common_name(stream.inner().get_ref().1.peer_certificates())
            .map_err(|refused| std::io::Error::new(std::io::ErrorKind::PermissionDenied, refused))?;
        Ok(stream)
    }
}

/// The subject common name of a DER certificate, if it has one.
fn common_name(certificate: &CertificateDer<'_>) -> Result<Option<String>, PeerTlsError> {
    certificate_common_name(certificate)
        .map_err(|unparsable| PeerTlsError::UnparsableCertificate(unparsable.0))
}

/// Runs the peer port's TLS handshakes, with the files read anew for each.
#[derive(Clone)]
pub(crate) struct PeerTlsAcceptor {
    config: Arc<PeerTlsConfig>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl PeerTlsAcceptor {
    pub(crate) fn new(config: Arc<PeerTlsConfig>) -> PeerTlsAcceptor {
        PeerTlsAcceptor {
            config,
            sessions: ServerSessionMemoryCache::new(RESUMABLE_SESSIONS),
        }
    }

    /// The handshake on one accepted connection; `None` when it failed or
    /// the peer's certificate was refused (logged here).
    pub(crate) async fn handshake(self, tcp: TcpStream) -> Option<AcceptedConnection> {
        let peer = tcp.peer_addr().ok();
        let config = match self.config.server_config(self.sessions.clone()) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, ?peer, "peer TLS files unusable; peer connection refused");
                return None;
            }
        };
        let stream = match tokio::time::timeout(
            HANDSHAKE_LIMIT,
            TlsAcceptor::from(Arc::new(config)).accept(tcp),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::warn!(%error, ?peer, "rejected peer connection: TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::warn!(?peer, limit = ?HANDSHAKE_LIMIT, "rejected peer connection: TLS handshake too slow");
                return None;
            }
        };
        if let Err(refused) = self
            .config
            .check_common_name(stream.get_ref().1.peer_certificates())
        {
            tracing::warn!(%refused, ?peer, "rejected peer connection");
            return None;
        }
        Some(AcceptedConnection::Tls(Box::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_without_files() -> PeerTlsConfig {
        PeerTlsConfig {
            cert_file: PathBuf::from("/nonexistent/peer.pem"),
            key_file: PathBuf::from("/nonexistent/peer-key.pem"),
            trusted_ca_file: None,
            client_cert_auth: false,
            crl_file: None,
            allowed_cn: Some("member".to_string()),
            verify_peer_servers: true,
            serve_on_listeners: true,
        }
    }

    #[test]
    fn a_missing_certificate_file_is_refused_naming_it() {
        let error = config_without_files().check().unwrap_err();
        let PeerTlsError::Files(files) = &error else {
            panic!("expected a file error, got {error}");
        };
        let (path, _) = files.unreadable_file().expect("an unreadable file");
        assert_eq!(path, std::path::Path::new("/nonexistent/peer.pem"));
    }

    #[test]
    fn no_certificate_is_refused_when_a_common_name_is_required() {
        let error = config_without_files().check_common_name(None).unwrap_err();
        assert!(matches!(error, PeerTlsError::NoCertificate), "{error}");
        let unrestricted = PeerTlsConfig {
            allowed_cn: None,
            ..config_without_files()
        };
        unrestricted.check_common_name(None).unwrap();
    }
}
