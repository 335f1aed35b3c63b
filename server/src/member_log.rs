//! A member's log: what an operator reads. keel's own events at the chosen
//! level, openraft's at error only. A vote request to a peer that is not up
//! yet (as at every cluster start) is expected: openraft 0.10 reports it at
//! WARN, below that default, and keel logs it itself at debug (`network.rs`).

use tracing_subscriber::filter::EnvFilter;

/// Installs the member's log: plain text unless on a terminal, at `level`
/// (or `RUST_LOG`).
pub fn init_member_logging(level: &str) {
    let default = format!("{level},openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}
