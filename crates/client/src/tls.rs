//! TLS for keel's clients, with etcdctl 3.4's meanings: an `https://`
//! endpoint is dialled over TLS, verifying the server's certificate against
//! `--cacert` (the system's roots without it) and presenting `--cert` and
//! `--key` when given; `--insecure-skip-tls-verify` accepts any server
//! certificate (the handshake's signatures are still checked). `http://`
//! endpoints stay plaintext. A bare `host:port` endpoint uses TLS when a
//! certificate file is named or `--insecure-transport=false` is given, as
//! etcdctl's does (its client then has a TLS configuration). Also the PEM loading that the server's TLS
//! shares, so both read certificate files one way.
//!
//! rustls with the ring provider does all the cryptography; the connector
//! here only dials TCP, runs the handshake (ALPN `h2`) and hands the stream
//! to tonic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Uri;

/// The TLS settings of a client (etcdctl's `--cacert`, `--cert`, `--key`,
/// `--insecure-skip-tls-verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CAs that sign the servers' certificates (`None`: the
    /// system's trusted roots).
    pub trusted_ca_file: Option<PathBuf>,
    /// PEM certificate this client presents (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (etcdctl's --insecure-skip-tls-verify).
    pub insecure_skip_verify: bool,
    /// etcdctl's --insecure-transport (true by default): bare `host:port`
    /// endpoints stay plaintext unless a certificate file is named.
    pub insecure_transport: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            trusted_ca_file: None,
            cert_file: None,
            key_file: None,
            insecure_skip_verify: false,
            insecure_transport: true,
        }
    }
}

impl TlsOptions {
    /// True when a certificate file is named (then they are loaded even if
    /// no endpoint is `https://`, so a wrong path is reported, as etcdctl does).
    pub fn names_files(&self) -> bool {
        self.trusted_ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// True when `endpoint` is dialled over TLS: `https://` always,
    /// `http://` never, a bare `host:port` as etcdctl decides it.
    pub fn dials_tls(&self, endpoint: &str) -> bool {
        if has_scheme(endpoint, "https://") {
            true
        } else if endpoint.contains("://") {
            false
        } else {
            self.names_files() || !self.insecure_transport
        }
    }
}

/// True when `endpoint` starts with `scheme` (in any case).
fn has_scheme(endpoint: &str, scheme: &str) -> bool {
    endpoint
        .get(..scheme.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
}

/// `endpoint` without its `https://`, `http://` or no scheme: `host:port`.
pub(crate) fn authority(endpoint: &str) -> &str {
    match endpoint.find("://") {
        Some(at) => &endpoint[at + 3..],
        None => endpoint,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {}: {source}", .path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no {what}", .path.display())]
    Empty { what: &'static str, path: PathBuf },
    /// etcd's TLSInfo message for a certificate without its key or the reverse.
    #[error("KeyFile and CertFile must both be present[key: {key}, cert: {cert}]")]
    IncompletePair { key: String, cert: String },
    #[error("the system's trusted certificates cannot be read: {0}")]
    SystemRoots(String),
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verification cannot be set up: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

impl TlsError {
    /// The file that could not be opened or read, and the I/O error.
    pub fn unreadable_file(&self) -> Option<(&Path, &std::io::Error)> {
        match self {
            TlsError::Pem {
                path,
                source: rustls::pki_types::pem::Error::Io(io),
                ..
            } => Some((path, io)),
            _ => None,
        }
    }
}

/// The process's cryptography: rustls' ring provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn load_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            what: "private key",
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Every certificate revocation list in the PEM file at `path`.
pub fn load_revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what: "certificate revocation list",
        path: path.to_path_buf(),
        source,
    };
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)
}

/// The CAs in the PEM file at `path`, as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path, "CA certificate")? {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// Verifies a connecting side's certificate against the CAs in `ca_file`
/// (a certificate is required); with `crl_file`, refuses the certificates
/// it revokes. As etcd, only the end certificate's serial is checked, and
/// issuers without a list pass.
pub fn client_certificate_verifier(
    ca_file: &Path,
    crl_file: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca_file)?), provider);
    if let Some(crl_file) = crl_file {
        verifier = verifier
            .with_crls(load_revocation_lists(crl_file)?)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    Ok(verifier.build()?)
}

/// Where a serving side's TLS configuration comes from: its certificate
/// and key, and, when it requires client certificates, the CA they must
/// chain to (and the revocation list that refuses some).
pub struct ServingFiles<'a> {
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
    /// `Some` when a client certificate is required.
    pub client_ca_file: Option<&'a Path>,
    pub crl_file: Option<&'a Path>,
}

/// A serving side's TLS configuration from its files as they are now (read
/// at each call, so rotated certificates take effect at the next
/// connection), offering `alpn_protocols` and resuming sessions from
/// `sessions`.
pub fn server_config(
    files: &ServingFiles<'_>,
    provider: Arc<CryptoProvider>,
    alpn_protocols: Vec<Vec<u8>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match files.client_ca_file {
        Some(ca_file) => {
            builder.with_client_cert_verifier(client_certificate_verifier(ca_file, files.crl_file, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = load_identity(Some(files.cert_file), Some(files.key_file))?.ok_or_else(|| {
        TlsError::IncompletePair {
            key: files.key_file.display().to_string(),
            cert: files.cert_file.display().to_string(),
        }
    })?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn_protocols;
    config.session_storage = sessions;
    Ok(config)
}

/// The certificate chain and key a side presents; both files or neither
/// (etcd's rule).
pub fn load_identity(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    match (cert_file, key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((
            load_certificates(cert, "certificate")?,
            load_private_key(key)?,
        ))),
        (cert, key) => Err(TlsError::IncompletePair {
            key: key.map(|p| p.display().to_string()).unwrap_or_default(),
            cert: cert.map(|p| p.display().to_string()).unwrap_or_default(),
        }),
    }
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let loaded = rustls_native_certs::load_native_certs();
    if loaded.certs.is_empty() {
        if let Some(error) = loaded.errors.first() {
            return Err(TlsError::SystemRoots(error.to_string()));
        }
    }
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "system root certificates rustls cannot use were skipped");
    }
    Ok(roots)
}

/// The rustls client configuration `options` ask for, offering HTTP/2 only
/// (gRPC).
pub fn client_tls_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
    } else {
        let roots = match &options.trusted_ca_file {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match load_identity(options.cert_file.as_deref(), options.key_file.as_deref())? {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// `--insecure-skip-tls-verify`: any server certificate is accepted; the
/// handshake's signatures are still verified with the provider's algorithms.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The name a server's certificate must carry for `uri`: its IP address or
/// DNS name.
fn server_name(uri: &Uri) -> Result<ServerName<'static>, std::io::Error> {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a server name: {error}"),
        )
    })
}

/// Dials `uri`'s host and port and runs the TLS handshake; what tonic's
/// channel then speaks HTTP/2 over.
pub async fn connect_tls(
    config: Arc<rustls::ClientConfig>,
    uri: Uri,
) -> Result<TokioIo<TlsStream<TcpStream>>, std::io::Error> {
    let name = server_name(&uri)?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(TokioIo::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_is_refused_with_etcds_message() {
        let error = load_identity(Some(Path::new("/nonexistent/cert.pem")), None).unwrap_err();
        assert!(matches!(error, TlsError::IncompletePair { .. }));
        assert_eq!(
            error.to_string(),
            "KeyFile and CertFile must both be present[key: , cert: /nonexistent/cert.pem]"
        );
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let options = TlsOptions {
            trusted_ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsOptions::default()
        };
        let error = client_tls_config(&options).unwrap_err();
        let (path, io) = error.unreadable_file().expect("an unreadable file");
        assert_eq!(path, Path::new("/nonexistent/ca.pem"));
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(error.to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn a_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = load_certificates(&path, "CA certificate").unwrap_err();
        assert!(matches!(error, TlsError::Empty { .. }));
    }

    #[test]
    fn bare_endpoints_use_tls_only_when_etcdctl_would() {
        let plain = TlsOptions::default();
        assert!(plain.dials_tls("https://127.0.0.1:2379"));
        assert!(plain.dials_tls("HTTPS://127.0.0.1:2379"));
        assert!(!plain.dials_tls("http://127.0.0.1:2379"));
        assert!(!plain.dials_tls("127.0.0.1:2379"));
        let with_ca = TlsOptions {
            trusted_ca_file: Some(PathBuf::from("ca.pem")),
            ..TlsOptions::default()
        };
        assert!(with_ca.dials_tls("127.0.0.1:2379"));
        assert!(!with_ca.dials_tls("http://127.0.0.1:2379"));
        let secure_transport = TlsOptions {
            insecure_transport: false,
            ..TlsOptions::default()
        };
        assert!(secure_transport.dials_tls("127.0.0.1:2379"));
        assert_eq!(authority("https://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(authority("127.0.0.1:2379"), "127.0.0.1:2379");
    }

    #[test]
    fn server_names_are_ip_addresses_or_dns_names() {
        let ip = server_name(&"http://127.0.0.1:2379".parse().unwrap()).unwrap();
        assert!(matches!(ip, ServerName::IpAddress(_)));
        let v6 = server_name(&"http://[::1]:2379".parse().unwrap()).unwrap();
        assert!(matches!(v6, ServerName::IpAddress(_)));
        let dns = server_name(&"http://etcd.example:2379".parse().unwrap()).unwrap();
        assert!(matches!(dns, ServerName::DnsName(_)));
    }
}
