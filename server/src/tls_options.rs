//! What two of etcd's TLS flags turn into: `--cipher-suites` (etcd's Go
//! names mapped to rustls' suites) and `--auto-tls` / `--peer-auto-tls` (a self-signed
//! certificate made at start, as etcd's `transport.SelfCert` makes it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
use rustls::crypto::ring::cipher_suite;
use rustls::SupportedCipherSuite;

use crate::local_pki::write_private_key;

/// How long an `--auto-tls` certificate is valid (etcd 3.4: one year).
const SELF_SIGNED_VALIDITY: time::Duration = time::Duration::days(365);

/// The TLS 1.2 suites `--cipher-suites` names (Go's names, as etcd takes
/// them; TLS 1.3's suites are not configurable, in Go or here).
/// etcd also knows CBC, RC4, 3DES and RSA key-exchange suites, which
/// rustls does not implement: naming one refuses the start.
pub fn cipher_suites_from_names(list: &str) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let mut suites = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let suite = match name {
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            }
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            }
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
                cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
                cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
            "TLS_RSA_WITH_RC4_128_SHA"
            | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
            | "TLS_RSA_WITH_AES_128_CBC_SHA"
            | "TLS_RSA_WITH_AES_256_CBC_SHA"
            | "TLS_RSA_WITH_AES_128_CBC_SHA256"
            | "TLS_RSA_WITH_AES_128_GCM_SHA256"
            | "TLS_RSA_WITH_AES_256_GCM_SHA384"
            | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
            | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
            | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
            | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
            | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
            | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
            | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
            | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
            | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => {
                bail!("TLS cipher suite {name:?} is not served by keel (only ECDHE with AES-GCM or ChaCha20-Poly1305)")
            }
            // etcd's own message for a name it does not know.
            _ => bail!("unexpected TLS cipher suite {name:?}"),
        };
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    Ok(suites)
}

/// `--auto-tls`: the certificate and key in `dir` (`cert.pem`, `key.pem`),
/// made self-signed for `hosts` unless both are there from an earlier
/// start, as etcd reuses them.
pub fn self_signed_certificate(dir: &Path, hosts: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    if cert_file.is_file() && key_file.is_file() {
        tracing::info!(cert = %cert_file.display(), "reusing the automatically generated certificate");
        return Ok((cert_file, key_file));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::OrganizationName, "etcd");
    for host in hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + SELF_SIGNED_VALIDITY;
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    write_private_key(&key_file, &key.serialize_pem())
        .with_context(|| format!("writing {}", key_file.display()))?;
    std::fs::write(&cert_file, certificate.pem())
        .with_context(|| format!("writing {}", cert_file.display()))?;
    tracing::info!(cert = %cert_file.display(), ?hosts, "generated a self-signed certificate (--auto-tls or --peer-auto-tls)");
    Ok((cert_file, key_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_names_map_to_rustls_suites_and_others_are_refused() {
        let suites = cipher_suites_from_names(
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        )
        .unwrap();
        assert_eq!(
            suites,
            vec![
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            ]
        );
        let unknown = cipher_suites_from_names("FOO_BAR").unwrap_err();
        assert_eq!(unknown.to_string(), r#"unexpected TLS cipher suite "FOO_BAR""#);
        let unserved = cipher_suites_from_names("TLS_RSA_WITH_RC4_128_SHA").unwrap_err();
        assert!(unserved.to_string().contains("not served by keel"), "{unserved}");
    }

    #[test]
    fn a_self_signed_certificate_is_made_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = dir.path().join("fixtures/client");
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, key) = self_signed_certificate(&fixtures, &hosts).unwrap();
        let first = std::fs::read(&cert).unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let (again, _) = self_signed_certificate(&fixtures, &hosts).unwrap();
        assert_eq!(std::fs::read(again).unwrap(), first);
        keel_client::tls::load_certificates(&cert, "certificate").unwrap();
        keel_client::tls::load_private_key(&key).unwrap();
    }
}
