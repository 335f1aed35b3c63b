//! What a run reports: throughput, latency percentiles from the merged HDR
//! histogram, errors by kind; printed for people (stderr) and as one JSON
//! line for scripts (stdout).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 600_000_000, 3) {
        Ok(histogram) => histogram,
        // The bounds are constants that hdrhistogram accepts.
        Err(error) => unreachable!("histogram bounds rejected: {error}"),
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// The result of one run (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub label: Option<String>,
    pub mode: String,
    pub target: String,
    /// The endpoints the connections went to.
    pub targets: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    /// Successful measured requests.
    pub ops: u64,
    /// Failed measured requests (gRPC errors and timeouts).
    pub errors: u64,
    /// Failed requests by gRPC code (or "timeout").
    pub error_kinds: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// txn-cas: txns whose compare failed (counted in ops, not errors).
    pub cas_conflicts: u64,
    /// Every request sent, warm-up and failed ones included.
    pub requests_sent: u64,
    /// CPU time this process (the load generator) used while sending them.
    pub client_cpu_s: f64,
    /// CPU time the servers used meanwhile (summed over members; measured
    /// by `keel-bench compare`, which knows their pids, through
    /// `run_sampling_servers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// Keys put by --preload before measuring.
    pub preloaded: u64,
    pub elapsed_s: f64,
    /// Successful requests per second over the measured time.
    pub throughput: f64,
    pub latency_ms: LatencySummary,
    /// The command line that reproduces the run.
    pub command: String,
}

impl RunReport {
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"serializing report: {e}\"}}"))
    }

    /// A few lines for people.
    pub fn human(&self) -> String {
        let l = &self.latency_ms;
        let mut text = format!(
            "{mode} via {target} ({targets}) conns={conns} clients={clients}: {ops} ok, {errors} errors in {elapsed:.2}s\n\
             throughput  {throughput:.1} ops/s\n\
             latency ms  mean {mean:.3}  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}",
            mode = self.mode,
            target = self.target,
            targets = self.targets.join(","),
            conns = self.conns,
            clients = self.clients,
            ops = self.ops,
            errors = self.errors,
            elapsed = self.elapsed_s,
            throughput = self.throughput,
            mean = l.mean,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
        );
        if self.requests_sent > 0 {
            text.push_str(&format!(
                "\nclient CPU  {:.1} µs per request",
                self.client_cpu_s * 1e6 / self.requests_sent as f64
            ));
        }
        if self.cas_conflicts > 0 {
            text.push_str(&format!("\ncas conflicts {}", self.cas_conflicts));
        }
        if let Some(error) = &self.first_error {
            text.push_str(&format!("\nerrors {:?}; first: {error}", self.error_kinds));
        }
        text
    }
}
