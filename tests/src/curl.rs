//! HTTP requests from tests through the real `curl` (Debian's package,
//! which `.ci/run` installs), as an operator's scripts and probes send them.

/// What curl got: the HTTP status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlAnswer {
    pub http_status: u16,
    pub body: String,
}

/// Runs `curl -s <args> <url>`; the answer's status comes from curl's
/// `%{http_code}` (0 when nothing answered).
pub async fn curl(url: &str, args: &[&str]) -> CurlAnswer {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs (Debian's curl package)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    CurlAnswer {
        http_status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}
