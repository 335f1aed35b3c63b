//! Certificates for TLS tests, made at test time (rcgen, through
//! `keel_server::local_pki`) into a
//! directory: a CA, a server certificate for 127.0.0.1 (an IP SAN; usable
//! as a client certificate too, as etcd's guides make them, so a member can
//! present it to its own port), a client certificate, a second client
//! certificate that a revocation list of the CA revokes, an expired client
//! and an expired server certificate of the CA, and a client and a
//! server certificate from another CA, and a member certificate of the
//! CA with another common name. Also the member flags and client options
//! that use them.

use std::path::{Path, PathBuf};

use keel_client::TlsOptions;
use keel_server::local_pki::{write_issued, CertificateAuthority, CertificateUse};

/// Serial number of the client certificate the CA's revocation list revokes.
const REVOKED_SERIAL: u64 = 0x7e70;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("making a test certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing a test certificate: {0}")]
    Write(#[from] std::io::Error),
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The PEM files of a test PKI (see the module comment).
#[derive(Debug, Clone)]
pub struct TestCertificates {
    pub ca: PathBuf,
    pub server: CertificateFiles,
    pub client: CertificateFiles,
    /// A client certificate of the CA that `crl` revokes.
    pub revoked_client: CertificateFiles,
    /// The CA's certificate revocation list.
    pub crl: PathBuf,
    /// A client certificate of the CA that expired in 2020.
    pub expired_client: CertificateFiles,
    /// A server certificate for 127.0.0.1 of the CA that expired in 2020.
    pub expired_server: CertificateFiles,
    /// Another CA, which signed nothing the members trust.
    pub other_ca: PathBuf,
    /// A client certificate from `other_ca`.
    pub foreign_client: CertificateFiles,
    /// A server certificate for 127.0.0.1 from `other_ca` (to rotate to).
    pub foreign_server: CertificateFiles,
    /// A member certificate of the CA with another common name ("another
    /// member"), for `--peer-cert-allowed-cn`.
    pub other_cn_member: CertificateFiles,
}

/// A certificate `issuer` signs for `name`, written as `<stem>.pem` and
/// `<stem>-key.pem` in `dir`.
fn issue(
    issuer: &CertificateAuthority,
    name: &str,
    usage: CertificateUse,
    serial: Option<u64>,
    dir: &Path,
    stem: &str,
) -> Result<CertificateFiles, CertificateError> {
    let (cert, key) = write_issued(dir, stem, &issuer.issue(name, usage, serial)?)?;
    Ok(CertificateFiles { cert, key })
}

/// Like [`issue`], a certificate that expired in 2020.
fn expired(
    issuer: &CertificateAuthority,
    name: &str,
    usage: CertificateUse,
    dir: &Path,
    stem: &str,
) -> Result<CertificateFiles, CertificateError> {
    let (cert, key) = write_issued(dir, stem, &issuer.issue_expired(name, usage)?)?;
    Ok(CertificateFiles { cert, key })
}

impl TestCertificates {
    /// Makes the PKI's keys and certificates and writes them into `dir`.
    pub fn generate(dir: &Path) -> Result<TestCertificates, CertificateError> {
        let ca = CertificateAuthority::new("keel test CA")?;
        let other = CertificateAuthority::new("another CA")?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.certificate_pem())?;
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&other_ca, other.certificate_pem())?;
        let crl = dir.join("ca.crl.pem");
        std::fs::write(&crl, ca.revocation_list(&[REVOKED_SERIAL])?)?;
        use CertificateUse::{Client, Member};
        Ok(TestCertificates {
            ca: ca_file,
            server: issue(&ca, "keel member", Member, None, dir, "server")?,
            client: issue(&ca, "keel client", Client, None, dir, "client")?,
            revoked_client: issue(
                &ca,
                "revoked client",
                Client,
                Some(REVOKED_SERIAL),
                dir,
                "revoked-client",
            )?,
            crl,
            expired_client: expired(&ca, "expired client", Client, dir, "expired-client")?,
            expired_server: expired(&ca, "expired member", Member, dir, "expired-server")?,
            other_ca,
            foreign_client: issue(&other, "foreign client", Client, None, dir, "foreign-client")?,
            foreign_server: issue(&other, "foreign member", Member, None, dir, "foreign-server")?,
            other_cn_member: issue(&ca, "another member", Member, None, dir, "other-cn-member")?,
        })
    }

    /// A member's flags for a TLS client port: its certificate, and with
    /// `client_cert_auth` the CA that client certificates must come from.
    pub fn member_flags(&self, client_cert_auth: bool) -> Vec<String> {
        let mut flags = vec![
            format!("--cert-file={}", self.server.cert.display()),
            format!("--key-file={}", self.server.key.display()),
        ];
        if client_cert_auth {
            flags.push(format!("--trusted-ca-file={}", self.ca.display()));
            flags.push("--client-cert-auth".to_string());
        }
        flags
    }

    /// A member's peer certificate flags, presenting `member` (the CA's
    /// "keel member" certificate is `self.server`).
    pub fn peer_identity_flags(member: &CertificateFiles) -> Vec<String> {
        vec![
            format!("--peer-cert-file={}", member.cert.display()),
            format!("--peer-key-file={}", member.key.display()),
        ]
    }

    /// The flags that make peers verify each other against the CA (mutual).
    pub fn peer_trust_flags(&self) -> Vec<String> {
        vec![
            format!("--peer-trusted-ca-file={}", self.ca.display()),
            "--peer-client-cert-auth".to_string(),
        ]
    }

    /// Client options trusting the CA and presenting the client certificate.
    pub fn client_options(&self) -> TlsOptions {
        TlsOptions {
            trusted_ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client.cert.clone()),
            key_file: Some(self.client.key.clone()),
            ..TlsOptions::default()
        }
    }

    /// etcdctl's and keelctl's flags for `client_options`.
    pub fn ctl_flags(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client.cert.display()),
            format!("--key={}", self.client.key.display()),
        ]
    }
}
