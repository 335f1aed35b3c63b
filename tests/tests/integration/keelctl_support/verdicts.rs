//! The verdicts of a golden suite: how many outputs of etcdctl and keelctl
//! were compared, and every case that differed or expectation that failed,
//! reported together at the end so one run shows all of them.

use super::{without_client_logs, Ran};

#[derive(Debug, Default)]
pub struct Verdicts {
    pub compared: usize,
    pub mismatches: Vec<String>,
}

impl Verdicts {
    /// keelctl must print what etcdctl printed (stdout, exit code, and
    /// stderr less etcdctl's client logs). A case where etcdctl printed
    /// nothing proves nothing, unless `may_print_nothing`.
    pub fn check(&mut self, label: &str, etcdctl: &Ran, keelctl: &Ran, may_print_nothing: bool) {
        self.compared += 1;
        let expected = Ran {
            stderr: without_client_logs(&etcdctl.stderr),
            ..etcdctl.clone()
        };
        if expected.stdout.is_empty() && expected.stderr.is_empty() && !may_print_nothing {
            self.mismatches.push(format!(
                "{label}\n  etcdctl printed nothing: the case proves nothing"
            ));
        }
        if &expected != keelctl {
            self.mismatches.push(format!(
                "{label}\n  etcdctl: exit {} stdout {:?} stderr {:?}\n  keelctl: exit {} stdout {:?} stderr {:?}",
                expected.code,
                expected.stdout_text(),
                expected.stderr_text(),
                keelctl.code,
                keelctl.stdout_text(),
                keelctl.stderr_text()
            ));
        }
    }

    /// An expectation about one run (`seen`), beside the comparisons.
    pub fn expect(&mut self, what: &str, holds: bool, seen: &Ran) {
        if !holds {
            self.mismatches.push(format!(
                "expectation failed: {what}\n  seen: exit {} stdout {:?} stderr {:?}",
                seen.code,
                seen.stdout_text(),
                seen.stderr_text()
            ));
        }
    }
}
