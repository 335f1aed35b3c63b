//! A member's log: what an operator reads. keel's own events at the chosen
//! level, openraft's at error only. A vote request to a peer that is not up
//! yet (as at every cluster start) is expected: openraft 0.10 reports it at
//! WARN, below that default, and keel logs it itself at debug (`network.rs`).
//!
//! etcd's flags choose the form and the place: `--logger capnslog` (etcd
//! 3.4's default) writes plain text lines, `--logger zap` JSON lines;
//! `--log-outputs` is `default` or `stderr` (etcd's default), `stdout`, or
//! file paths (appended to), several separated by commas.

use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

use crate::config::MemberFlags;

/// Installs the member's log as its flags ask (`RUST_LOG` overrides the level).
pub fn init_member_logging(flags: &MemberFlags) -> anyhow::Result<()> {
    let level = match flags.log_level.as_str() {
        "panic" | "fatal" => "error",
        level => level,
    };
    // openraft's heartbeat workers log at error only that the Raft core has
    // closed, which a heartbeat answer arriving during a normal shutdown
    // hits; keel logs its own stop.
    let default = format!(
        "{level},openraft=error,openraft::core::heartbeat=off,sled=warn,h2=warn,tower=warn,hyper=warn"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, to_terminal) = log_writer(&flags.log_outputs)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    if flags.logger == "zap" {
        builder.json().init();
    } else {
        builder.with_ansi(to_terminal).init();
    }
    Ok(())
}

/// The writer for `--log-outputs`, and whether it is only a terminal.
fn log_writer(outputs: &str) -> anyhow::Result<(BoxMakeWriter, bool)> {
    let mut writer: Option<BoxMakeWriter> = None;
    let mut to_terminal = true;
    for output in outputs.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let next = match output {
            "default" | "stderr" => {
                to_terminal &= std::io::IsTerminal::is_terminal(&std::io::stderr());
                BoxMakeWriter::new(std::io::stderr)
            }
            "stdout" => {
                to_terminal &= std::io::IsTerminal::is_terminal(&std::io::stdout());
                BoxMakeWriter::new(std::io::stdout)
            }
            path => {
                to_terminal = false;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("--log-outputs: cannot open {path}"))?;
                BoxMakeWriter::new(Arc::new(file))
            }
        };
        writer = Some(match writer {
            Some(earlier) => BoxMakeWriter::new(earlier.and(next)),
            None => next,
        });
    }
    match writer {
        Some(writer) => Ok((writer, to_terminal)),
        None => anyhow::bail!("--log-outputs names no output"),
    }
}
