//! The comparison's results: per scenario a table of medians for etcd and
//! keel with their ratio, rendered into `RESULTS.md` between per-scenario
//! markers (`<!-- BEGIN scenario:put -->` .. `<!-- END scenario:put -->`),
//! so rerunning one scenario replaces only its section and the hand-written
//! parts of the file (the improvements log) are never touched. The raw
//! numbers go to `results/<scenario>.json` beside it, which the plot reads.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::load::RunReport;
use crate::machine::{FsyncLatency, MachineFacts};

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Better {
    Higher,
    Lower,
}

/// One line of a scenario's table: a metric of one case, for both systems
/// (medians over the repetitions; `None` when the system failed it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub size: usize,
    /// The configuration a case ran in, for scenarios that compare several
    /// (the secure scenario's plain / tls / auth); a column of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub case: String,
    /// Concurrent clients, for the throughput plot.
    pub clients: Option<usize>,
    pub metric: String,
    pub better: Better,
    pub etcd: Option<f64>,
    pub keel: Option<f64>,
    /// Number of values each median was taken over (etcd, keel).
    pub samples: (usize, usize),
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        match (self.etcd, self.keel) {
            (Some(etcd), Some(keel)) if etcd > 0.0 => Some(keel / etcd),
            _ => None,
        }
    }
}

/// One measurement kept raw, for later digging.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawRun {
    pub system: String,
    pub size: usize,
    pub case: String,
    pub rep: usize,
    pub report: RunReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub id: String,
    pub title: String,
    /// What the scenario measures and how, in a sentence or two.
    pub method: String,
    pub command: String,
    pub date: String,
    pub quick: bool,
    pub repetitions: usize,
    pub facts: MachineFacts,
    pub load_average_end: f64,
    pub fsync: Option<FsyncLatency>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// keel (or etcd) failures: the exact command and the symptom.
    pub failures: Vec<String>,
    pub raw: Vec<RawRun>,
}

/// Median of `values` (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

fn format_value(value: Option<f64>) -> String {
    match value {
        None => "failed".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// keel/etcd with a mark saying whether keel did better.
fn format_ratio(row: &Row) -> String {
    match row.ratio() {
        None => "–".into(),
        Some(ratio) => {
            let keel_better = match row.better {
                Better::Higher => ratio > 1.0,
                Better::Lower => ratio < 1.0,
            };
            let mark = if (ratio - 1.0).abs() < 0.05 {
                "≈"
            } else if keel_better {
                "keel better"
            } else {
                "etcd better"
            };
            if ratio < 0.1 {
                format!("{ratio:.4}× ({mark})")
            } else {
                format!("{ratio:.2}× ({mark})")
            }
        }
    }
}

impl ScenarioReport {
    /// The markdown section (without its markers).
    pub fn markdown(&self) -> String {
        let mut md = format!("### {}\n\n{}\n\n", self.title, self.method);
        if self.quick {
            md.push_str(
                "**Quick smoke run (`--quick`): scaled down, one repetition; not a measurement.**\n\n",
            );
        }
        let with_modes = self.rows.iter().any(|row| row.mode.is_some());
        if with_modes {
            md.push_str(
                "| members | mode | case | metric | etcd | keel | keel/etcd |\n|---:|---|---|---|---:|---:|---:|\n",
            );
        } else {
            md.push_str(
                "| members | case | metric | etcd | keel | keel/etcd |\n|---:|---|---|---:|---:|---:|\n",
            );
        }
        for row in &self.rows {
            let arrow = match row.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let mode = match (with_modes, &row.mode) {
                (false, _) => String::new(),
                (true, mode) => format!(" {} |", mode.as_deref().unwrap_or("")),
            };
            md.push_str(&format!(
                "| {} |{mode} {} | {} {} | {} | {} | {} |\n",
                row.size,
                row.case,
                row.metric,
                arrow,
                format_value(row.etcd),
                format_value(row.keel),
                format_ratio(row)
            ));
        }
        md.push_str("\n↑ higher is better, ↓ lower is better; values are medians over the repetitions.\n");
        if !self.failures.is_empty() {
            md.push_str("\n**Failures** (exact command, symptom):\n\n");
            for failure in &self.failures {
                md.push_str(&format!("- {failure}\n"));
            }
        }
        if !self.notes.is_empty() {
            md.push('\n');
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        let f = &self.facts;
        let fsync = self.fsync.map_or_else(
            || "not measured".to_string(),
            |l| {
                format!(
                    "p50 {:.3} ms, p99 {:.3} ms ({} samples)",
                    l.p50_ms, l.p99_ms, l.samples
                )
            },
        );
        md.push_str(&format!(
            "\nProduced by `{}` on {} ({} repetition(s), etcd and keel alternating). \
             Machine: {} cores ({}), kernel {}, data on {}; disk fdatasync of 4 KiB: {}; \
             load average {:.2} at start, {:.2} at end. {}; keel {}.\n",
            self.command,
            self.date,
            self.repetitions,
            f.cores,
            f.cpu,
            f.kernel,
            f.filesystem,
            fsync,
            f.load_average,
            self.load_average_end,
            f.etcd_version,
            f.keel_commit,
        ));
        if f.load_average > 0.5 * f.cores as f64 || self.load_average_end > 0.5 * f.cores as f64 {
            md.push_str(
                "\n*The machine was not quiet (load average above half the cores): \
                 these numbers are preliminary.*\n",
            );
        }
        let commands: Vec<&RawRun> = {
            let mut seen = std::collections::BTreeSet::new();
            self.raw
                .iter()
                .filter(|run| seen.insert((run.system.clone(), run.size, run.case.clone())))
                .collect()
        };
        if !commands.is_empty() {
            md.push_str("\n<details><summary>One measurement's load command per case</summary>\n\n```\n");
            for run in commands {
                md.push_str(&format!(
                    "# {} members={} {}\n{}\n",
                    run.system, run.size, run.case, run.report.command
                ));
            }
            md.push_str("```\n</details>\n");
        }
        md
    }
}

/// Where the results live: `RESULTS.md` and `results/` beside it.
#[derive(Debug, Clone)]
pub struct ResultsFile {
    pub markdown: PathBuf,
}

const IMPROVEMENTS_HEADING: &str = "## Improvements";

fn skeleton(section_ids: &[&str]) -> String {
    let mut text = String::from(
        "# keel against etcd: side-by-side results\n\n\
         Written by `benches/compare.sh` (see `benches/README.md`). Each section below is \
         replaced when its scenario is run again, and says the exact command, the date, the \
         machine and its load, and the disk's own fdatasync latency. keel/etcd is the ratio \
         of the medians; never compare an absolute time without its etcd column.\n\n",
    );
    for id in section_ids {
        text.push_str(&format!(
            "<!-- BEGIN {id} -->\n_not run yet_\n<!-- END {id} -->\n\n"
        ));
    }
    text.push_str(&format!(
        "{IMPROVEMENTS_HEADING} (before/after)\n\n\
         Filled in by hand for each profile-driven fix: what changed (commit), the scenario \
         and the exact command, and the keel numbers before and after from the same script \
         on the same machine, with etcd's beside them.\n\n\
         | fix | scenario | metric | before | after | etcd |\n|---|---|---|---:|---:|---:|\n"
    ));
    text
}

impl ResultsFile {
    pub fn new(markdown: PathBuf) -> Self {
        ResultsFile { markdown }
    }

    pub fn raw_dir(&self) -> PathBuf {
        self.markdown
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(if self.is_quick_file() {
                "results-quick"
            } else {
                "results"
            })
    }

    fn is_quick_file(&self) -> bool {
        self.markdown
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains("quick"))
    }

    /// Replaces the section `id` (creating the file from the skeleton).
    pub fn update_section(&self, all_ids: &[&str], id: &str, body: &str) -> anyhow::Result<()> {
        let mut text = match std::fs::read_to_string(&self.markdown) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => skeleton(all_ids),
            Err(error) => return Err(error).with_context(|| format!("reading {}", self.markdown.display())),
        };
        let begin = format!("<!-- BEGIN {id} -->");
        let end = format!("<!-- END {id} -->");
        let replacement = format!("{begin}\n{}\n{end}", body.trim_end());
        match (text.find(&begin), text.find(&end)) {
            (Some(start), Some(stop)) if stop > start => {
                text.replace_range(start..stop + end.len(), &replacement);
            }
            _ => {
                let at = text.find(IMPROVEMENTS_HEADING).unwrap_or(text.len());
                text.insert_str(at, &format!("{replacement}\n\n"));
            }
        }
        if let Some(parent) = self.markdown.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&self.markdown, text).with_context(|| format!("writing {}", self.markdown.display()))
    }

    pub fn save_raw(&self, report: &ScenarioReport) -> anyhow::Result<PathBuf> {
        let dir = self.raw_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", report.id));
        std::fs::write(&path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn load_raw(&self, id: &str) -> Option<ScenarioReport> {
        let text = std::fs::read_to_string(self.raw_dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = ResultsFile::new(dir.path().join("RESULTS.md"));
        let ids = ["scenario:a", "scenario:b"];
        file.update_section(&ids, "scenario:b", "first b").unwrap();
        file.update_section(&ids, "scenario:a", "first a").unwrap();
        file.update_section(&ids, "scenario:b", "second b").unwrap();
        let text = std::fs::read_to_string(&file.markdown).unwrap();
        assert!(text.contains("first a") && text.contains("second b") && !text.contains("first b"));
        assert!(text.find("first a").unwrap() < text.find("second b").unwrap());
        assert!(text.contains(IMPROVEMENTS_HEADING));
    }
}
