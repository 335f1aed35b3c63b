//! Named steps of keel's storage at which a test can stop a member: the
//! step waits until the test lets it go on, or tells it to crash there (the
//! step fails without doing anything more, as a process killed at that
//! point would). Each member owns its own set, so members that share one
//! test process are stopped one at a time.
//!
//! A step nobody armed costs one uncontended lock; production members never
//! arm any.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// After a received snapshot is on disk and before the keyspace is
/// replaced by it.
pub const BEFORE_SNAPSHOT_INSTALL_SWITCH: &str = "before-snapshot-install-switch";
/// After a received snapshot's keyspace is installed and durable, and
/// before the snapshot becomes the current one (its meta file).
pub const BEFORE_SNAPSHOT_INSTALL_META_COMMIT: &str = "before-snapshot-install-meta-commit";
/// After a snapshot's dump is written and before it becomes the current
/// snapshot.
pub const BEFORE_SNAPSHOT_BUILD_COMMIT: &str = "before-snapshot-build-commit";

/// The test's decision for a step that stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    Armed,
    Reached,
    Continue,
    Crash,
}

#[derive(Default)]
struct Step {
    state: Mutex<Option<StepState>>,
    changed: Condvar,
}

/// A member's fail points (cheap to clone; clones share the points).
#[derive(Clone, Default)]
pub struct FailPoints {
    steps: Arc<Mutex<HashMap<&'static str, Arc<Step>>>>,
}

/// The member was told to crash at a fail point.
#[derive(Debug, thiserror::Error)]
#[error("crashed at fail point {0}")]
pub struct CrashedAtFailPoint(pub &'static str);

impl FailPoints {
    /// Makes the next pass through `name` stop until the returned handle
    /// lets it go on or crash.
    pub fn arm(&self, name: &'static str) -> StoppedStep {
        let step = Arc::new(Step::default());
        *lock(&step.state) = Some(StepState::Armed);
        lock(&self.steps).insert(name, step.clone());
        StoppedStep { name, step }
    }

    /// Passes through step `name`: returns at once unless it is armed, else
    /// blocks the calling thread until the test decides.
    pub fn pass(&self, name: &'static str) -> Result<(), CrashedAtFailPoint> {
        let Some(step) = lock(&self.steps).remove(name) else {
            return Ok(());
        };
        let mut state = lock(&step.state);
        *state = Some(StepState::Reached);
        step.changed.notify_all();
        loop {
            match *state {
                Some(StepState::Continue) => return Ok(()),
                Some(StepState::Crash) => return Err(CrashedAtFailPoint(name)),
                _ => state = step.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// A test's handle on an armed step.
pub struct StoppedStep {
    name: &'static str,
    step: Arc<Step>,
}

impl StoppedStep {
    /// Waits (blocking) up to `limit` for a member to reach the step.
    pub fn wait_reached(&self, limit: Duration) -> bool {
        let state = lock(&self.step.state);
        let (state, _) = self
            .step
            .changed
            .wait_timeout_while(state, limit, |s| *s == Some(StepState::Armed))
            .unwrap_or_else(|p| p.into_inner());
        *state != Some(StepState::Armed)
    }

    /// Lets the stopped step go on.
    pub fn release(self) {
        self.decide(StepState::Continue);
    }

    /// Makes the stopped step fail as if the process died there.
    pub fn crash(self) {
        self.decide(StepState::Crash);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn decide(&self, decision: StepState) {
        *lock(&self.step.state) = Some(decision);
        self.step.changed.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unarmed_step_passes_and_an_armed_one_waits_for_the_decision() {
        let points = FailPoints::default();
        assert!(points.pass(BEFORE_SNAPSHOT_BUILD_COMMIT).is_ok());
        let stopped = points.arm(BEFORE_SNAPSHOT_BUILD_COMMIT);
        assert!(!stopped.wait_reached(Duration::from_millis(10)));
        let member = points.clone();
        let passing = std::thread::spawn(move || member.pass(BEFORE_SNAPSHOT_BUILD_COMMIT).is_ok());
        assert!(stopped.wait_reached(Duration::from_secs(5)));
        stopped.crash();
        assert!(!passing.join().expect("thread"));
        // Disarmed once passed.
        assert!(points.pass(BEFORE_SNAPSHOT_BUILD_COMMIT).is_ok());
    }
}
