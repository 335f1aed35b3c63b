//! The tokio runtime a member runs on: multi-threaded, with tokio's LIFO
//! slot off. The `keel` binary and the in-process test members both build
//! theirs here, so tests run members the way the binary does.
//!
//! With the slot, a task woken by the running task runs next on the same
//! worker. When an applied batch answers its puts, each answer's HTTP/2
//! stream task wakes its connection's task, which then ran at once and
//! wrote that one answer: one `writev` per put (0.93 per put at 256 clients
//! over 16 connections). Without the slot, the connection's task queues
//! behind the other answers and writes them together (0.23 per put).
//! `benches/ab_put.sh`, 3 rounds against the build before (2026-12-07,
//! benches/RESULTS.md): 16 clients +10-15% writes/s, 256 clients +7-10%,
//! member CPU per put 10-19% lower, 1 client's p50 no worse.
//!
//! `disable_lifo_slot` is one of tokio's unstable settings:
//! `.cargo/config.toml` builds with `--cfg tokio_unstable`. A build without
//! it (a `RUSTFLAGS` of its own replaces the config's) keeps the slot; the
//! binary warns at start-up, and this module's test fails.

/// Whether this build turns the LIFO slot off (it was built with
/// `--cfg tokio_unstable`).
pub const LIFO_SLOT_OFF: bool = cfg!(tokio_unstable);

/// A multi-threaded runtime builder with every driver on and, when
/// [`LIFO_SLOT_OFF`], the LIFO slot off; callers may set more (the
/// in-process test members set their worker count).
pub fn member_runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Two tasks spawned by a running task, on one worker: with the LIFO
    /// slot the second runs first (it took the slot); without it they run
    /// in the order they were woken. Fails on a build that lost
    /// `--cfg tokio_unstable`.
    #[test]
    fn tasks_woken_by_a_running_task_run_in_wake_order_without_the_lifo_slot() {
        let runtime = member_runtime_builder()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawner_order = order.clone();
        runtime.block_on(async move {
            let spawner = tokio::spawn(async move {
                let mut woken = Vec::new();
                for name in ["first", "second"] {
                    let order = spawner_order.clone();
                    woken.push(tokio::spawn(async move {
                        order.lock().expect("order").push(name);
                    }));
                }
                woken
            });
            for task in spawner.await.expect("spawner") {
                task.await.expect("woken task");
            }
        });
        let order = order.lock().expect("order").clone();
        assert_eq!(order, ["first", "second"], "LIFO slot off: {LIFO_SLOT_OFF}");
    }
}
