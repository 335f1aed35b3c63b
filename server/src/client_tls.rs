//! TLS on the client port, as etcd 3.4 serves it: a `https://` listen URL
//! takes TLS (`--cert-file`, `--key-file`), an `http://` one stays plaintext
//! even when certificates are given. `--trusted-ca-file` or
//! `--client-cert-auth` make the port require a client certificate signed by
//! the trusted CAs (etcd requires one as soon as a trusted CA file is given),
//! and `--client-crl-file` refuses the certificates it revokes;
//! `--auto-tls` serves a self-signed certificate instead, and
//! `--cipher-suites` limits TLS 1.2's suites (see tls_options.rs). ALPN offers
//! `h2` and `http/1.1`, so gRPC, the JSON gateway, /health, /version and
//! /metrics all work over TLS on the one port.
//!
//! Invariants:
//! - A connection whose handshake fails, stalls or is refused is dropped
//!   alone (logged at debug); the listener and the member go on serving.
//! - The certificate, key, CA and CRL files are read again for each new
//!   connection (as etcd does), so rotated files take effect without a
//!   restart; a file that cannot be read fails that handshake only (logged
//!   as a warning). The files are checked once at start, which refuses to
//!   start on a broken set.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::bail;
use futures::{Stream, StreamExt};
use keel_client::tls::{crypto_provider, server_config, ServingFiles};
use keel_client::TlsError;
use keel_node::node::accepted_without_nagle;
use keel_node::tls_accept::{handshaken_connections, AcceptedConnection, HANDSHAKE_LIMIT};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::SupportedCipherSuite;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{split_urls, url_host, MemberFlags};
use crate::tls_options::{cipher_suites_from_names, self_signed_certificate};

/// TLS sessions remembered for resumption, shared by every connection's
/// configuration.
const RESUMABLE_SESSIONS: usize = 256;

/// The files and switches of the client port's TLS.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// The TLS 1.2 suites allowed (`--cipher-suites`; empty: rustls'
    /// defaults). TLS 1.3's suites are always on, as in Go.
    pub cipher_suites: Vec<SupportedCipherSuite>,
}

impl ClientTlsFiles {
    /// The client TLS the flags ask for (`None`: no certificate given and
    /// no `--auto-tls`). Refuses a half-given pair and client
    /// authentication without CAs.
    pub fn from_flags(flags: &MemberFlags) -> anyhow::Result<Option<ClientTlsFiles>> {
        let given = |value: &Option<String>| value.as_deref().filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut cert_file = given(&flags.cert_file);
        let mut key_file = given(&flags.key_file);
        let mut trusted_ca_file = given(&flags.trusted_ca_file);
        let mut crl_file = given(&flags.client_crl_file);
        let mut client_cert_auth = flags.client_cert_auth.unwrap_or(false);
        let cipher_suites = match &flags.cipher_suites {
            Some(names) => cipher_suites_from_names(names)?,
            None => Vec::new(),
        };
        if flags.auto_tls == Some(true) {
            if cert_file.is_some() || key_file.is_some() {
                tracing::warn!("ignoring --auto-tls since --cert-file and --key-file are given");
            } else {
                // etcd's self-signed TLS replaces the whole client TLS
                // setting: no client certificates are asked for.
                if trusted_ca_file.is_some() || client_cert_auth || crl_file.is_some() {
                    tracing::warn!(
                        "--auto-tls: ignoring --trusted-ca-file, --client-cert-auth and --client-crl-file"
                    );
                }
                let hosts: Vec<String> = split_urls(&flags.listen_client_urls)
                    .iter()
                    .map(|url| url_host(url).to_string())
                    .collect();
                let fixtures = flags.data_dir().join("fixtures").join("client");
                let (cert, key) = self_signed_certificate(&fixtures, &hosts)?;
                (cert_file, key_file) = (Some(cert), Some(key));
                (trusted_ca_file, crl_file, client_cert_auth) = (None, None, false);
            }
        }
        let (cert_file, key_file) = match (cert_file, key_file) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                if trusted_ca_file.is_some() || client_cert_auth || crl_file.is_some() {
                    bail!("--trusted-ca-file, --client-cert-auth and --client-crl-file need --cert-file and --key-file");
                }
                return Ok(None);
            }
            (cert, key) => bail!(
                "--cert-file and --key-file must both be given (cert: {:?}, key: {:?})",
                cert.unwrap_or_default(),
                key.unwrap_or_default()
            ),
        };
        if client_cert_auth && trusted_ca_file.is_none() {
            bail!("--client-cert-auth needs --trusted-ca-file to verify client certificates against");
        }
        Ok(Some(ClientTlsFiles {
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            crl_file,
            cipher_suites,
        }))
    }

    /// True when clients must present a certificate the trusted CAs signed.
    fn requires_client_certificate(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    /// Reads the files into a server configuration.
    fn server_config(
        &self,
        sessions: Arc<dyn StoresServerSessions>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = match self.cipher_suites.as_slice() {
            [] => crypto_provider(),
            chosen => {
                let mut provider = rustls::crypto::ring::default_provider();
                provider.cipher_suites.retain(|suite| suite.tls13().is_some());
                provider.cipher_suites.extend_from_slice(chosen);
                Arc::new(provider)
            }
        };
        let files = ServingFiles {
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            client_ca_file: self
                .trusted_ca_file
                .as_deref()
                .filter(|_| self.requires_client_certificate()),
            crl_file: self.crl_file.as_deref(),
        };
        server_config(
            &files,
            provider,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            sessions,
        )
    }
}

/// Runs the client port's TLS handshakes, with the files read anew for each.
#[derive(Clone)]
pub struct ClientTlsAcceptor {
    files: Arc<ClientTlsFiles>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl ClientTlsAcceptor {
    /// Checks that the files make a working configuration now.
    pub fn new(files: ClientTlsFiles) -> Result<ClientTlsAcceptor, TlsError> {
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(RESUMABLE_SESSIONS);
        files.server_config(sessions.clone())?;
        Ok(ClientTlsAcceptor {
            files: Arc::new(files),
            sessions,
        })
    }

    /// The client certificate the member presents to its own TLS port (its
    /// server certificate, as etcd's gateway does) and the files' CA.
    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    /// The handshake on one accepted connection; `None` when it failed
    /// (logged here).
    async fn handshake(self, tcp: TcpStream) -> Option<AcceptedConnection> {
        let peer = tcp.peer_addr().ok();
        let config = match self.files.server_config(self.sessions.clone()) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, ?peer, "client TLS files unusable; connection refused");
                return None;
            }
        };
        match tokio::time::timeout(HANDSHAKE_LIMIT, TlsAcceptor::from(Arc::new(config)).accept(tcp)).await {
            Ok(Ok(stream)) => Some(AcceptedConnection::Tls(Box::new(stream))),
            Ok(Err(error)) => {
                tracing::debug!(%error, ?peer, "rejected client connection: TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, limit = ?HANDSHAKE_LIMIT, "rejected client connection: TLS handshake too slow");
                None
            }
        }
    }
}

/// Accepted connections on `listener`, Nagle off; with `tls`, only those
/// whose handshake succeeded. Handshakes run concurrently, so one slow
/// client delays nobody.
pub fn accepted_connections(
    listener: TcpListener,
    tls: Option<ClientTlsAcceptor>,
) -> Pin<Box<dyn Stream<Item = io::Result<AcceptedConnection>> + Send>> {
    let accepted = accepted_without_nagle(listener);
    match tls {
        None => Box::pin(accepted.map(|accepted| accepted.map(AcceptedConnection::Plain))),
        Some(acceptor) => handshaken_connections(accepted, move |tcp| acceptor.clone().handshake(tcp)),
    }
}
