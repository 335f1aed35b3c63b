//! Descriptive numbers about a run, printed before the verdict: operations
//! by kind and outcome, latency percentiles of the acknowledged ones, and
//! the unavailability windows (stretches with no acknowledged operation,
//! over the workers' operations only: the final reads after healing do not
//! count).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::history::{Event, EventType, FINAL_PROCESS_BASE};
use crate::pairing::pair_operations;

/// A gap at least this long between two acknowledged operations counts as
/// an unavailability window.
pub const UNAVAILABLE_AFTER_NS: u64 = 1_000_000_000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunStats {
    /// (f, outcome) → count.
    pub counts: BTreeMap<(String, String), u64>,
    /// f → sorted latencies (ns) of `ok` completions.
    pub latencies: BTreeMap<String, Vec<u64>>,
    /// (start, end) ns of the windows with no `ok` completion.
    pub unavailable: Vec<(u64, u64)>,
    pub nemesis_events: u64,
}

fn outcome_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Invoke => "invoke",
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
    }
}

/// The value at quantile `q` (0..=1) of sorted `values`.
pub fn percentile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = (q * (values.len() - 1) as f64).round() as usize;
    values.get(rank.min(values.len() - 1)).copied()
}

impl RunStats {
    pub fn from_history(events: &[Event]) -> RunStats {
        let mut stats = RunStats {
            nemesis_events: events.iter().filter(|e| e.is_nemesis()).count() as u64,
            ..RunStats::default()
        };
        let Ok(pairs) = pair_operations(events) else {
            return stats;
        };
        let mut ok_ends: Vec<u64> = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0u64);
        for pair in &pairs {
            let outcome = outcome_name(pair.outcome());
            *stats
                .counts
                .entry((pair.invoke.f.clone(), outcome.to_string()))
                .or_default() += 1;
            if pair.process() >= FINAL_PROCESS_BASE {
                continue;
            }
            first = first.min(pair.invoke.start);
            last = last.max(pair.end().unwrap_or(pair.invoke.start));
            if let (EventType::Ok, Some(end)) = (pair.outcome(), pair.end()) {
                ok_ends.push(end);
                stats
                    .latencies
                    .entry(pair.invoke.f.clone())
                    .or_default()
                    .push(end.saturating_sub(pair.invoke.start));
            }
        }
        for values in stats.latencies.values_mut() {
            values.sort_unstable();
        }
        ok_ends.sort_unstable();
        if first <= last {
            let mut previous = first;
            for end in ok_ends.iter().copied().chain(std::iter::once(last)) {
                if end.saturating_sub(previous) >= UNAVAILABLE_AFTER_NS {
                    stats.unavailable.push((previous, end));
                }
                previous = previous.max(end);
            }
        }
        stats
    }

    pub fn render(&self, leader_changes: usize) -> String {
        let mut out = String::new();
        let mut by_f: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for ((f, outcome), count) in &self.counts {
            by_f.entry(f).or_default().insert(outcome, *count);
        }
        let _ = writeln!(out, "operations:");
        for (f, outcomes) in &by_f {
            let total: u64 = outcomes.values().sum();
            let parts: Vec<String> = outcomes.iter().map(|(o, c)| format!("{o} {c}")).collect();
            let _ = writeln!(out, "  {f:<9} {total:>7}  ({})", parts.join(", "));
        }
        let _ = writeln!(
            out,
            "latency of acknowledged ops (ms):   p50      p90      p99      max"
        );
        for (f, values) in &self.latencies {
            let ms = |q: f64| percentile(values, q).map_or(0.0, |ns| ns as f64 / 1e6);
            let _ = writeln!(
                out,
                "  {f:<30} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                ms(1.0)
            );
        }
        let unavailable_ns: u64 = self.unavailable.iter().map(|(a, b)| b - a).sum();
        let longest = self.unavailable.iter().map(|(a, b)| b - a).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "unavailability: {} windows of >= 1 s with no acknowledged op, {:.1} s in total, longest {:.1} s",
            self.unavailable.len(),
            unavailable_ns as f64 / 1e9,
            longest as f64 / 1e9
        );
        let mut longest_windows = self.unavailable.clone();
        longest_windows.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
        let shown: Vec<String> = longest_windows
            .iter()
            .take(3)
            .map(|(a, b)| format!("{:.1}-{:.1} s", *a as f64 / 1e9, *b as f64 / 1e9))
            .collect();
        if !shown.is_empty() {
            let _ = writeln!(out, "  longest windows: {}", shown.join(", "));
        }
        let _ = writeln!(
            out,
            "leader changes: {leader_changes}; nemesis events: {}",
            self.nemesis_events
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(51));
        assert_eq!(percentile(&values, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
