//! How far the state machine's applied state is on disk: published by the
//! state machine whenever it makes the keyspace durable, awaited by the log
//! store before it purges.
//!
//! Invariant kept with `log_store.rs`: the Raft log is purged up to index i
//! only after a keyspace state with `last_applied >= i` is durable. openraft
//! issues the purge behind a received snapshot at the same time as it queues
//! the snapshot's install, and the install can take far longer; purging
//! first would let a crash in between leave a keyspace at A and a log that
//! starts after the snapshot's index S > A: the entries A+1..=S are then
//! nowhere, and the member can never start again. For a received
//! snapshot, "durable" includes its meta file: the install publishes only
//! once the snapshot is current on disk, since a log purged past the index
//! of the snapshot that the meta file still names is a state openraft
//! refuses to start from (found by the watch workload's kill-during-snapshot
//! runs). A crash between the install's keyspace and its meta file is
//! finished at start-up (`KeelStateMachine::finish_interrupted_install`).

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The highest log index whose applied state is known to be on disk.
    DurableUpto(Option<u64>),
    /// Making the state machine durable failed; it will not progress.
    Failed,
}

/// Shared between a member's state machine (which publishes) and log store
/// (which waits); clones share the same progress.
#[derive(Clone)]
pub struct DurableApplied {
    progress: Arc<watch::Sender<Progress>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the state machine failed to make its applied state durable; the log is not purged")]
pub struct StateMachineNotDurable;

impl DurableApplied {
    /// Starts at `durable_upto`: what the state machine found on disk.
    pub fn starting_at(durable_upto: Option<u64>) -> Self {
        let (progress, _) = watch::channel(Progress::DurableUpto(durable_upto));
        DurableApplied {
            progress: Arc::new(progress),
        }
    }

    /// Records that the applied state up to `index` is now on disk.
    pub fn advance_to(&self, index: Option<u64>) {
        self.progress.send_if_modified(|progress| match *progress {
            Progress::DurableUpto(known) if index > known => {
                *progress = Progress::DurableUpto(index);
                true
            }
            _ => false,
        });
    }

    /// Records that the state machine failed and will not become durable.
    pub fn fail(&self) {
        self.progress.send_replace(Progress::Failed);
    }

    /// The highest index known durable, if the state machine has not failed.
    pub fn durable_upto(&self) -> Result<Option<u64>, StateMachineNotDurable> {
        match *self.progress.borrow() {
            Progress::DurableUpto(index) => Ok(index),
            Progress::Failed => Err(StateMachineNotDurable),
        }
    }

    /// Waits until the applied state up to `index` is on disk.
    pub async fn wait_until_durable(&self, index: u64) -> Result<(), StateMachineNotDurable> {
        let mut progress = self.progress.subscribe();
        let reached = progress
            .wait_for(|progress| match progress {
                Progress::DurableUpto(known) => *known >= Some(index),
                Progress::Failed => true,
            })
            .await
            .map_err(|_| StateMachineNotDurable)?;
        match *reached {
            Progress::DurableUpto(_) => Ok(()),
            Progress::Failed => Err(StateMachineNotDurable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_returns_once_the_index_is_durable_or_the_state_machine_failed() {
        let durable = DurableApplied::starting_at(Some(3));
        durable.wait_until_durable(3).await.expect("already durable");
        let waiting = tokio::spawn({
            let durable = durable.clone();
            async move { durable.wait_until_durable(10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        durable.advance_to(Some(9));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        durable.advance_to(Some(12));
        assert!(waiting.await.expect("join").is_ok());
        // Never moves back.
        durable.advance_to(Some(5));
        assert_eq!(durable.durable_upto().expect("ok"), Some(12));
        let failing = tokio::spawn({
            let durable = durable.clone();
            async move { durable.wait_until_durable(20).await }
        });
        durable.fail();
        assert!(failing.await.expect("join").is_err());
    }
}
