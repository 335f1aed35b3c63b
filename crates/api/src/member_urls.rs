//! etcd's rule for a member's URLs (Go's `types.NewURLs`, which both
//! etcdctl and etcd's MemberAdd/MemberUpdate apply): each an `http`,
//! `https`, `unix` or `unixs` URL, an http(s) one of the form
//! `host:port`, none with a path. The errors carry etcdctl's exact texts.

/// Why a member URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberUrlError {
    #[error("URL scheme must be http, https, unix, or unixs: {0}")]
    Scheme(String),
    #[error("URL address does not have the form \"host:port\": {0}")]
    HostPort(String),
    #[error("URL must not contain a path: {0}")]
    Path(String),
}

/// Checks `url` by etcd's rule; answers its scheme.
pub fn check_member_url(url: &str) -> Result<&str, MemberUrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(MemberUrlError::Scheme(url.to_string()));
    };
    if !["http", "https", "unix", "unixs"].contains(&scheme) {
        return Err(MemberUrlError::Scheme(url.to_string()));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let has_host_and_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if scheme.starts_with("http") && !has_host_and_port {
        return Err(MemberUrlError::HostPort(url.to_string()));
    }
    if !path.is_empty() {
        return Err(MemberUrlError::Path(url.to_string()));
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_as_etcds_new_urls_checks_them() {
        assert_eq!(check_member_url("http://127.0.0.1:2380"), Ok("http"));
        assert_eq!(check_member_url("https://a.example:1/"), Ok("https"));
        assert_eq!(check_member_url("unix://sock"), Ok("unix"));
        for (url, expected) in [
            ("bad", MemberUrlError::Scheme("bad".into())),
            ("ftp://h:1", MemberUrlError::Scheme("ftp://h:1".into())),
            (
                "http://127.0.0.1",
                MemberUrlError::HostPort("http://127.0.0.1".into()),
            ),
            ("http://h:port", MemberUrlError::HostPort("http://h:port".into())),
            ("http://h:1/x", MemberUrlError::Path("http://h:1/x".into())),
        ] {
            assert_eq!(check_member_url(url), Err(expected), "{url}");
        }
        assert_eq!(
            MemberUrlError::HostPort("http://127.0.0.1".into()).to_string(),
            "URL address does not have the form \"host:port\": http://127.0.0.1"
        );
    }
}
