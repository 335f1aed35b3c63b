//! A member's log: what an operator reads. keel's own events at the chosen
//! level; openraft's at error only, less the errors it raises for expected
//! conditions (a vote request to a peer that is not up yet, as at every
//! cluster start), which keel logs itself at debug (`network.rs`).

use tracing::metadata::Metadata;
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// openraft 0.9.25 reported a failed or timed-out vote request as an ERROR
/// event of its core with exactly these fields; 0.10 reports it at WARN,
/// below the `openraft=error` default, and the filter stays for a RUST_LOG
/// that lets openraft's errors through.
const OPENRAFT_CORE_TARGET: &str = "openraft::core::raft_core";
const VOTE_REQUEST_FAILURE_FIELDS: [&str; 3] = ["message", "error", "target"];

/// True for openraft's "while requesting vote" / "timeout" errors: a peer
/// that did not answer a vote request, which is expected while it is down.
pub fn is_openraft_vote_request_failure(metadata: &Metadata<'_>) -> bool {
    metadata.target() == OPENRAFT_CORE_TARGET
        && *metadata.level() == Level::ERROR
        && metadata.fields().len() == VOTE_REQUEST_FAILURE_FIELDS.len()
        && VOTE_REQUEST_FAILURE_FIELDS
            .iter()
            .all(|name| metadata.fields().field(name).is_some())
}

/// Installs the member's log: plain text unless on a terminal, at `level`
/// (or `RUST_LOG`).
pub fn init_member_logging(level: &str) {
    let default = format!("{level},openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let format = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_filter(filter_fn(|metadata| !is_openraft_vote_request_failure(metadata)));
    tracing_subscriber::registry().with(filter).with(format).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::subscriber::with_default;

    /// Records the messages of the events a filter lets through.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut line = format!("{} {}", event.metadata().level(), event.metadata().target());
            struct Message<'a>(&'a mut String);
            impl tracing::field::Visit for Message<'_> {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0.push_str(&format!(" {value:?}"));
                    }
                }
            }
            event.record(&mut Message(&mut line));
            self.0.lock().expect("lock").push(line);
        }
    }

    #[test]
    fn openraft_vote_request_failures_are_dropped_and_its_other_errors_kept() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(Recorder(seen.clone()).with_filter(filter_fn(|m| !is_openraft_vote_request_failure(m))));
        with_default(subscriber, || {
            tracing::error!(target: "openraft::core::raft_core", error = "Connection refused", target = 2, "while requesting vote");
            tracing::error!(target: "openraft::core::raft_core", error = "quit", "quit RaftCore::main on error");
            tracing::error!(target: "keel", error = "x", target = 2, "a keel error");
        });
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].contains("quit RaftCore::main"));
        assert!(seen[1].contains("a keel error"));
    }
}
