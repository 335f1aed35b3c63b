//! A small certificate authority, made with rcgen: what `keel local-cluster
//! --tls` gives its members and clients (a CA, a member certificate for
//! 127.0.0.1 usable to serve and as a client, a client certificate), and
//! what the TLS tests build their certificates with. Keys are written
//! readable by their owner only.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};

/// What a certificate a [`CertificateAuthority`] issues is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateUse {
    /// A client only (clientAuth).
    Client,
    /// A member on 127.0.0.1: serves (serverAuth, an IP SAN) and presents
    /// itself as a client too, as etcd's guides make member certificates.
    Member,
}

/// A certificate and its key, in PEM.
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A self-signed CA that issues certificates and revocation lists.
pub struct CertificateAuthority {
    certificate: Certificate,
    key: KeyPair,
}

impl CertificateAuthority {
    pub fn new(name: &str) -> Result<CertificateAuthority, rcgen::Error> {
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
        Ok(CertificateAuthority { certificate, key })
    }

    /// The CA's certificate, in PEM.
    pub fn certificate_pem(&self) -> String {
        self.certificate.pem()
    }

    /// A certificate for `name`, with `serial` when given (else a random one).
    pub fn issue(
        &self,
        name: &str,
        usage: CertificateUse,
        serial: Option<u64>,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        self.sign(name, usage, serial, false)
    }

    /// A certificate for `name` that expired on 2020-01-01 (for tests of
    /// what a member refuses).
    pub fn issue_expired(
        &self,
        name: &str,
        usage: CertificateUse,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        self.sign(name, usage, None, true)
    }

    fn sign(
        &self,
        name: &str,
        usage: CertificateUse,
        serial: Option<u64>,
        expired: bool,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if usage == CertificateUse::Member {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.serial_number = serial.map(SerialNumber::from);
        if expired {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.certificate, &self.key)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A revocation list revoking the certificates with these serials.
    pub fn revocation_list(&self, serials: &[u64]) -> Result<String, rcgen::Error> {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.certificate, &self.key)?
        .pem()
    }
}

/// Writes a private key, readable by its owner only.
pub fn write_private_key(path: &Path, pem: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()
}

/// Writes `issued` as `<stem>.pem` and `<stem>-key.pem` in `dir`.
pub fn write_issued(
    dir: &Path,
    stem: &str,
    issued: &IssuedCertificate,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert, &issued.certificate_pem)?;
    write_private_key(&key, &issued.key_pem)?;
    Ok((cert, key))
}

/// The files of `keel local-cluster --tls`.
#[derive(Debug, Clone)]
pub struct LocalPki {
    pub ca: PathBuf,
    pub member_cert: PathBuf,
    pub member_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The local cluster's CA, member and client certificates in `dir`, made
/// unless an earlier run left them there (so a resumed cluster keeps its CA).
pub fn local_pki(dir: &Path) -> anyhow::Result<LocalPki> {
    let pki = LocalPki {
        ca: dir.join("ca.pem"),
        member_cert: dir.join("member.pem"),
        member_key: dir.join("member-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    let files = [
        &pki.ca,
        &pki.member_cert,
        &pki.member_key,
        &pki.client_cert,
        &pki.client_key,
    ];
    if files.iter().all(|file| file.is_file()) {
        return Ok(pki);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let authority = CertificateAuthority::new("keel local-cluster CA")?;
    std::fs::write(&pki.ca, authority.certificate_pem())?;
    write_issued(
        dir,
        "member",
        &authority.issue("keel member", CertificateUse::Member, None)?,
    )?;
    write_issued(
        dir,
        "client",
        &authority.issue("keel client", CertificateUse::Client, None)?,
    )?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_pki_is_made_once_and_its_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let pki = local_pki(dir.path()).unwrap();
        let ca = std::fs::read(&pki.ca).unwrap();
        for cert in [&pki.member_cert, &pki.client_cert] {
            keel_client::tls::load_certificates(cert, "certificate").unwrap();
        }
        for key in [&pki.member_key, &pki.client_key] {
            keel_client::tls::load_private_key(key).unwrap();
            let mode = std::fs::metadata(key).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        }
        local_pki(dir.path()).unwrap();
        assert_eq!(std::fs::read(&pki.ca).unwrap(), ca, "a second run keeps the CA");
    }
}
