//! Certificates for TLS tests, made with rcgen at test time into a
//! directory: a CA, a server certificate for 127.0.0.1 (an IP SAN; usable
//! as a client certificate too, as etcd's guides make them, so a member can
//! present it to its own port), a client certificate, a second client
//! certificate that a revocation list of the CA revokes, and a client and a
//! server certificate from another CA. Also the member flags and client options
//! that use them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use keel_client::TlsOptions;
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};

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
    /// Another CA, which signed nothing the members trust.
    pub other_ca: PathBuf,
    /// A client certificate from `other_ca`.
    pub foreign_client: CertificateFiles,
    /// A server certificate for 127.0.0.1 from `other_ca` (to rotate to).
    pub foreign_server: CertificateFiles,
}

struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

fn authority(name: &str) -> Result<Authority, CertificateError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok(Authority { certificate, key })
}

/// A certificate `issuer` signs for `name`, written as `<file_stem>.pem`
/// and `<file_stem>-key.pem` in `dir`.
fn issue(
    issuer: &Authority,
    name: &str,
    serve: bool,
    serial: Option<u64>,
    dir: &Path,
    file_stem: &str,
) -> Result<CertificateFiles, CertificateError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if serve {
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.serial_number = serial.map(SerialNumber::from);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer.certificate, &issuer.key)?;
    let files = CertificateFiles {
        cert: dir.join(format!("{file_stem}.pem")),
        key: dir.join(format!("{file_stem}-key.pem")),
    };
    std::fs::write(&files.cert, certificate.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

impl TestCertificates {
    /// Makes the PKI's keys and certificates and writes them into `dir`.
    pub fn generate(dir: &Path) -> Result<TestCertificates, CertificateError> {
        let ca = authority("keel test CA")?;
        let other = authority("another CA")?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.certificate.pem())?;
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&other_ca, other.certificate.pem())?;
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(REVOKED_SERIAL),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.certificate, &ca.key)?;
        let crl_file = dir.join("ca.crl.pem");
        std::fs::write(&crl_file, crl.pem()?)?;
        Ok(TestCertificates {
            ca: ca_file,
            server: issue(&ca, "keel member", true, None, dir, "server")?,
            client: issue(&ca, "keel client", false, None, dir, "client")?,
            revoked_client: issue(
                &ca,
                "revoked client",
                false,
                Some(REVOKED_SERIAL),
                dir,
                "revoked-client",
            )?,
            crl: crl_file,
            other_ca,
            foreign_client: issue(&other, "foreign client", false, None, dir, "foreign-client")?,
            foreign_server: issue(&other, "foreign member", true, None, dir, "foreign-server")?,
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
