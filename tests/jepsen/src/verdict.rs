//! The suite's verdict: one result per check (pass, fail = anomaly found,
//! unknown = no verdict could be reached), the closing `N passed, N failed`
//! line, and the exit code: 0 all valid, 1 an anomaly, 2 the run broke or a
//! check was unknown (an unknown check is never counted as passed).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Unknown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Unknown => "UNKNOWN",
        })
    }
}

/// The result of one check, with the lines that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
    /// One-line summary shown next to the outcome.
    pub summary: String,
    /// Further lines (anomaly excerpts), printed indented.
    pub details: Vec<String>,
}

impl CheckResult {
    pub fn new(name: &str, outcome: Outcome, summary: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            outcome,
            summary: summary.into(),
            details: Vec::new(),
        }
    }

    pub fn with_details(mut self, details: Vec<String>) -> CheckResult {
        self.details = details;
        self
    }
}

/// All checks of a run, plus whether the run itself broke.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub checks: Vec<CheckResult>,
    /// Why the run could not complete as designed, if it could not.
    pub broken: Option<String>,
}

impl Verdict {
    pub fn push(&mut self, check: CheckResult) {
        self.checks.push(check);
    }

    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.outcome == Outcome::Pass).count()
    }

    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }

    pub fn has_anomaly(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// 1 when any check found an anomaly; otherwise 2 when the run broke or a
    /// check is unknown (or there were no checks at all); 0 when all passed.
    pub fn exit_code(&self) -> i32 {
        if self.has_anomaly() {
            1
        } else if self.broken.is_some() || self.checks.is_empty() || self.failed() > 0 {
            2
        } else {
            0
        }
    }

    /// The closing line: `N passed, N failed` (unknown checks count as failed).
    pub fn final_line(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }

    /// The per-check lines and the closing line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!(
                "{:<8} {:<20} {}\n",
                check.outcome.to_string(),
                check.name,
                check.summary
            ));
            for line in &check.details {
                out.push_str(&format!("         {line}\n"));
            }
        }
        if let Some(reason) = &self.broken {
            out.push_str(&format!("BROKEN   the run itself failed: {reason}\n"));
        }
        out.push_str(&self.final_line());
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_worst_outcome() {
        let mut verdict = Verdict::default();
        assert_eq!(verdict.exit_code(), 2, "no checks is not a pass");
        verdict.push(CheckResult::new("a", Outcome::Pass, ""));
        assert_eq!(verdict.exit_code(), 0);
        verdict.push(CheckResult::new("b", Outcome::Unknown, ""));
        assert_eq!(verdict.exit_code(), 2);
        assert_eq!(verdict.final_line(), "1 passed, 1 failed");
        verdict.push(CheckResult::new("c", Outcome::Fail, ""));
        assert_eq!(verdict.exit_code(), 1);
    }

    #[test]
    fn a_broken_run_is_never_valid() {
        let mut verdict = Verdict::default();
        verdict.push(CheckResult::new("a", Outcome::Pass, ""));
        verdict.broken = Some("cluster never elected a leader".into());
        assert_eq!(verdict.exit_code(), 2);
    }
}
