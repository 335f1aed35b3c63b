//! What etcd's peer TLS flags turn into: the node's [`PeerTlsConfig`]
//! (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//! `--peer-client-cert-auth`, `--peer-crl-file`, `--peer-cert-allowed-cn`,
//! `--peer-auto-tls`), and the start-time refusal of peer URLs whose scheme
//! the flags cannot serve or dial.
//!
//! Invariant: a member starts only if every `https://` peer URL it listens
//! on or dials (`--listen-peer-urls`, `--initial-advertise-peer-urls`,
//! `--initial-cluster`) has a peer certificate to go with it, and its peer
//! listeners are all `https://` or all `http://`.

use std::path::PathBuf;

use anyhow::bail;
use keel_node::PeerTlsConfig;

use crate::config::{split_urls, url_host, MemberFlags};
use crate::tls_options::self_signed_certificate;

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The peer TLS the flags ask for (`None`: no peer certificate and no
/// `--peer-auto-tls`); refuses a half-given pair, client authentication
/// without CAs, and `https://` peer URLs without a certificate.
pub fn peer_tls_from_flags(flags: &MemberFlags) -> anyhow::Result<Option<PeerTlsConfig>> {
    let given = |value: &Option<String>| value.as_deref().filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut cert_file = given(&flags.peer_cert_file);
    let mut key_file = given(&flags.peer_key_file);
    let mut trusted_ca_file = given(&flags.peer_trusted_ca_file);
    let mut client_cert_auth = flags.peer_client_cert_auth.unwrap_or(false);
    let mut verify_peer_servers = true;
    let listen_urls = split_urls(&flags.listen_peer_urls);
    if flags.peer_auto_tls == Some(true) {
        if cert_file.is_some() || key_file.is_some() {
            tracing::warn!("ignoring --peer-auto-tls since --peer-cert-file and --peer-key-file are given");
        } else {
            // As in etcd: a self-signed certificate, peers' server
            // certificates not verified, no client certificate asked for.
            if trusted_ca_file.is_some() || client_cert_auth {
                tracing::warn!(
                    "--peer-auto-tls: ignoring --peer-trusted-ca-file and --peer-client-cert-auth"
                );
            }
            let hosts: Vec<String> = listen_urls.iter().map(|url| url_host(url).to_string()).collect();
            let fixtures = flags.data_dir().join("fixtures").join("peer");
            let (cert, key) = self_signed_certificate(&fixtures, &hosts)?;
            (cert_file, key_file) = (Some(cert), Some(key));
            (trusted_ca_file, client_cert_auth, verify_peer_servers) = (None, false, false);
        }
    }
    let mut https_urls = listen_urls
        .iter()
        .chain(split_urls(&flags.initial_advertise_peer_urls).iter())
        .cloned()
        .collect::<Vec<_>>();
    for member in flags.initial_members()? {
        https_urls.extend(member.peer_urls);
    }
    https_urls.retain(|url| is_https(url));
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if trusted_ca_file.is_some() || client_cert_auth || given(&flags.peer_crl_file).is_some() {
                bail!("--peer-trusted-ca-file, --peer-client-cert-auth and --peer-crl-file need --peer-cert-file and --peer-key-file");
            }
            if let Some(url) = https_urls.first() {
                bail!(
                    "peer URL {url} is https:// but no peer TLS is configured: give --peer-cert-file and --peer-key-file, or --peer-auto-tls"
                );
            }
            return Ok(None);
        }
        (cert, key) => bail!(
            "--peer-cert-file and --peer-key-file must both be given (cert: {:?}, key: {:?})",
            cert.unwrap_or_default(),
            key.unwrap_or_default()
        ),
    };
    if client_cert_auth && trusted_ca_file.is_none() {
        bail!("--peer-client-cert-auth needs --peer-trusted-ca-file to verify peer certificates against");
    }
    let https_listeners = listen_urls.iter().filter(|url| is_https(url)).count();
    if https_listeners != 0 && https_listeners != listen_urls.len() {
        bail!(
            "--listen-peer-urls mixes http:// and https:// URLs ({}); keel serves peer TLS on all of them or none",
            listen_urls.join(",")
        );
    }
    if https_listeners == 0 {
        tracing::warn!(
            "peer listen URLs are http://: the peer certificate is used only to dial https:// peers"
        );
    }
    Ok(Some(PeerTlsConfig {
        cert_file,
        key_file,
        trusted_ca_file,
        client_cert_auth,
        crl_file: given(&flags.peer_crl_file),
        allowed_cn: flags.peer_cert_allowed_cn.clone().filter(|cn| !cn.is_empty()),
        verify_peer_servers,
        serve_on_listeners: https_listeners > 0,
    }))
}
