//! The progress bar: drawn on stderr only when stderr is a terminal (never
//! when piped or in the comparison's logs), fed by a ticker that samples a
//! counter, so the hot loop never touches the bar.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// `Some(length)` when the bar counts time (ms) rather than requests.
    timed: Option<Duration>,
}

impl Progress {
    pub fn hidden() -> Self {
        Progress {
            bar: None,
            timed: None,
        }
    }

    /// A bar of `total` requests.
    pub fn counting(label: &str, total: u64) -> Self {
        Progress {
            bar: terminal_bar(
                label,
                total,
                "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            ),
            timed: None,
        }
    }

    /// A bar of `length` of time; the message shows requests done.
    pub fn timed(label: &str, length: Duration) -> Self {
        let millis = length.as_millis() as u64;
        Progress {
            bar: terminal_bar(label, millis, "{msg} [{bar:40}] {elapsed}"),
            timed: Some(length),
        }
    }

    /// Samples `done()` every 100 ms until aborted.
    pub fn tick_from(&self, done: Arc<dyn Fn() -> u64 + Send + Sync>) -> JoinHandle<()> {
        let Some(bar) = self.bar.clone() else {
            return tokio::spawn(async {});
        };
        let timed = self.timed;
        let label = bar.message();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let count = done();
                match timed {
                    Some(length) => {
                        bar.set_position(started.elapsed().min(length).as_millis() as u64);
                        bar.set_message(format!("{label}: {count} requests"));
                    }
                    None => bar.set_position(count),
                }
            }
        })
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn terminal_bar(label: &str, length: u64, template: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    Some(bar)
}
