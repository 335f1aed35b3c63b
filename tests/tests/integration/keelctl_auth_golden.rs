//! Golden tests for `keelctl user`, `role` and `auth` and the global
//! `--user`/`--password` flags: keelctl prints what etcdctl 3.4 prints
//! (stdout, stderr less etcdctl's JSON client logs, exit code), both tools
//! pointed at the same one-member server, in every `-w` format etcdctl has
//! for each command, with etcdctl's argument errors, its password prompts
//! (stdin is a pipe, so both tools' `stty` complain alike on stderr) and
//! its refusals once auth is on (wrong password, no user, permission
//! denied).
//!
//! Nothing is masked. A change (user add, grant, revoke, ...) is run by
//! etcdctl, undone, then run by keelctl and undone again, so that both
//! tools meet the same state; auth changes do not move the revision, so
//! the headers printed by json, fields and protobuf are the same.
//!
//! `auth status` is etcdctl 3.5's (3.4 has none, and etcd 3.4 serves no
//! AuthStatus), so keelctl's is checked against keel only, by expectation.

use crate::keelctl_support;

use keel_tests::{Cluster, ClusterOptions};
use keelctl_support::verdicts::Verdicts;
use keelctl_support::{args, etcdctl_path, keelctl_path, run_with_variables, Ran};

const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];
const ROOT: &str = "--user=root:rootpw";

struct Suite {
    endpoint: String,
    verdicts: Verdicts,
}

impl Suite {
    async fn tool(&self, keelctl: bool, list: &[&str], stdin: &str, variables: &[(&str, &str)]) -> Ran {
        let mut full = vec![format!("--endpoints={}", self.endpoint).into_bytes()];
        full.extend(args(list));
        let program = if keelctl { keelctl_path() } else { etcdctl_path() };
        run_with_variables(&program, &full, stdin.as_bytes(), variables).await
    }

    /// Runs `list` with etcdctl, insisting that it succeeds (set-up and undo steps).
    async fn setup(&mut self, list: &[&str]) {
        let ran = self.tool(false, list, "", &[]).await;
        if ran.code != 0 {
            self.verdicts.mismatches.push(format!(
                "set-up step {} failed: {}",
                list.join(" "),
                ran.stderr_text()
            ));
        }
    }

    async fn undo(&self, steps: &[&[&str]]) {
        for step in steps {
            self.tool(false, step, "", &[]).await;
        }
    }

    fn check(&mut self, label: &str, etcdctl: &Ran, keelctl: &Ran) {
        let may_print_nothing = label.contains("-w=protobuf");
        self.verdicts.check(label, etcdctl, keelctl, may_print_nothing);
    }

    fn expect(&mut self, what: &str, holds: bool, seen: &Ran) {
        self.verdicts.expect(what, holds, seen);
    }

    /// Both tools run `list` with `stdin` and `variables`; each run is
    /// followed by the `undo` steps (etcdctl's; one may fail where the
    /// change failed: a difference then shows in the next comparisons).
    async fn same_full(
        &mut self,
        list: &[&str],
        stdin: &str,
        variables: &[(&str, &str)],
        undo: &[&[&str]],
    ) -> Ran {
        let etcdctl = self.tool(false, list, stdin, variables).await;
        self.undo(undo).await;
        let keelctl = self.tool(true, list, stdin, variables).await;
        self.undo(undo).await;
        let label = format!("{} (stdin {stdin:?}, env {variables:?})", list.join(" "));
        self.check(&label, &etcdctl, &keelctl);
        etcdctl
    }

    async fn same(&mut self, list: &[&str]) -> Ran {
        self.same_full(list, "", &[], &[]).await
    }

    async fn same_write(&mut self, list: &[&str], undo: &[&[&str]]) -> Ran {
        self.same_full(list, "", &[], undo).await
    }

    /// `list` in every format, each run followed by `undo`.
    async fn every_format(&mut self, list: &[&str], undo: &[&[&str]]) {
        for format in FORMATS {
            let flag = format!("-w={format}");
            let mut full = vec![flag.as_str()];
            full.extend_from_slice(list);
            self.same_write(&full, undo).await;
        }
    }
}

async fn auth_suite(endpoint: String) -> (usize, Vec<String>) {
    let mut s = Suite {
        endpoint,
        verdicts: Verdicts::default(),
    };
    for step in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["user", "add", "nopw", "--no-password"],
        &["role", "add", "r1"],
        &["role", "add", "r2"],
        &["role", "add", "r3"],
        &["role", "add", "r4"],
        &["role", "grant-permission", "r1", "readwrite", "a", "z"],
        &["role", "grant-permission", "r1", "read", "--prefix", "p/"],
        &["role", "grant-permission", "r1", "write", "--from-key", "k"],
        &["role", "grant-permission", "r1", "read", "single"],
        &["user", "grant-role", "alice", "r1"],
        &["user", "grant-role", "alice", "r2"],
        &["put", "b", "bee"],
    ] {
        s.setup(step).await;
    }

    // Reads, in every format.
    for read in [
        &["user", "get", "alice"][..],
        &["user", "get", "alice", "--detail"],
        &["user", "get", "nopw"],
        &["user", "get", "nopw", "--detail"],
        &["user", "list"],
        &["role", "get", "r1"],
        &["role", "get", "r2"],
        &["role", "list"],
    ] {
        s.every_format(read, &[]).await;
    }
    let detail = s.same(&["user", "get", "alice", "--detail"]).await;
    s.expect(
        "user get --detail lists each role's permissions",
        detail.stdout_text().contains("Role r1\nKV Read:\n\t[a, z)\n\t[p/, p0) (prefix p/)\n\tsingle\nKV Write:\n\t[a, z)\n\t[k, <open ended>\n"),
        &detail,
    );

    // Changes, in every format, each undone after each tool.
    let delete_u1: &[&[&str]] = &[&["user", "delete", "u1"]];
    s.every_format(&["user", "add", "u1", "--new-user-password=pw"], delete_u1)
        .await;
    s.every_format(&["user", "add", "u1:pw"], delete_u1).await;
    s.every_format(&["user", "add", "u1", "--no-password"], delete_u1)
        .await;
    s.every_format(
        &["user", "delete", "nopw"],
        &[&["user", "add", "nopw", "--no-password"]],
    )
    .await;
    s.every_format(
        &["user", "grant-role", "alice", "r3"],
        &[&["user", "revoke-role", "alice", "r3"]],
    )
    .await;
    s.every_format(
        &["user", "revoke-role", "alice", "r2"],
        &[&["user", "grant-role", "alice", "r2"]],
    )
    .await;
    s.every_format(&["role", "add", "r5"], &[&["role", "delete", "r5"]])
        .await;
    s.every_format(&["role", "delete", "r4"], &[&["role", "add", "r4"]])
        .await;
    for (grant, revoke) in [
        (&["READ", "x"][..], &["x"][..]),
        (&["write", "x", "y"], &["x", "y"]),
        (&["ReadWrite", "x", "--prefix"], &["x", "--prefix"]),
        (&["read", "x", "--from-key"], &["x", "--from-key"]),
    ] {
        let mut list = vec!["role", "grant-permission", "r2"];
        list.extend_from_slice(grant);
        let mut undo = vec!["role", "revoke-permission", "r2"];
        undo.extend_from_slice(revoke);
        s.every_format(&list, &[&undo]).await;
    }
    for (revoke, grant) in [
        (&["single"][..], &["read", "single"][..]),
        (&["a", "z"], &["readwrite", "a", "z"]),
        (&["p/", "--prefix"], &["read", "p/", "--prefix"]),
        (&["k", "--from-key"], &["write", "k", "--from-key"]),
    ] {
        let mut list = vec!["role", "revoke-permission", "r1"];
        list.extend_from_slice(revoke);
        let mut undo = vec!["role", "grant-permission", "r1"];
        undo.extend_from_slice(grant);
        s.every_format(&list, &[&undo]).await;
    }
    for format in FORMATS {
        let flag = format!("-w={format}");
        s.same_full(
            &[&flag, "user", "passwd", "alice", "--interactive=false"],
            "alicepw\n",
            &[],
            &[],
        )
        .await;
    }

    // Passwords from prompts and stdin.
    s.same_full(&["user", "add", "u1"], "pw\npw\n", &[], delete_u1)
        .await;
    s.same_full(&["user", "add", "u1"], "pw\nother\n", &[], delete_u1)
        .await;
    s.same_full(&["user", "add", "u1"], "", &[], delete_u1).await;
    s.same_full(
        &["user", "add", "u1", "--interactive=false"],
        " pw rest\n",
        &[],
        delete_u1,
    )
    .await;
    s.same_full(&["user", "passwd", "alice"], "alicepw\nalicepw\n", &[], &[])
        .await;
    s.same_full(&["user", "passwd", "alice"], "alicepw\nx\n", &[], &[])
        .await;

    // Argument errors and the server's refusals.
    for list in [
        &["user", "add"][..],
        &["user", "add", "a", "b"],
        &["user", "delete"],
        &["user", "get"],
        &["user", "passwd"],
        &["user", "passwd", "a", "b"],
        &["user", "grant-role", "alice"],
        &["user", "revoke-role", "alice"],
        &["user", "list", "x"],
        &["role", "add"],
        &["role", "add", "a", "b"],
        &["role", "delete"],
        &["role", "get"],
        &["role", "list", "x"],
        &["role", "grant-permission", "r1", "read"],
        &["role", "grant-permission", "r1", "bogus", "a"],
        &[
            "role",
            "grant-permission",
            "r1",
            "read",
            "a",
            "--prefix",
            "--from-key",
        ],
        &["role", "grant-permission", "r1", "read", "a", "b", "--prefix"],
        &["role", "grant-permission", "r1", "read", "a", "b", "--from-key"],
        &["role", "revoke-permission", "r1"],
        &["role", "revoke-permission", "r1", "a", "b", "--prefix"],
        &["auth", "enable", "x"],
        &["auth", "disable", "x"],
        &["user", "get", "nosuch"],
        &["user", "delete", "nosuch"],
        &["user", "grant-role", "nosuch", "r1"],
        &["user", "grant-role", "alice", "nosuch"],
        &["user", "revoke-role", "alice", "r4"],
        &["user", "add", "alice", "--new-user-password=x"],
        &["role", "get", "nosuch"],
        &["role", "delete", "nosuch"],
        &["role", "add", "r1"],
        &["role", "add", ""],
        &["role", "revoke-permission", "r1", "nokey"],
        &["-w=table", "auth", "disable"],
    ] {
        s.same(list).await;
    }
    let unknown = s.same(&["user", "get", "nosuch"]).await;
    s.expect(
        "an unknown user is etcd's error",
        unknown.code == 1
            && unknown
                .stderr_text()
                .contains("Error: etcdserver: user name not found\n"),
        &unknown,
    );

    // Credentials while auth is off are not used.
    s.same(&[ROOT, "get", "b"]).await;
    s.same(&["--user=root:wrong", "get", "b"]).await;

    // auth enable: root gets the root role first (each tool's run is
    // undone: auth off, the root role deleted).
    let undo_enable: &[&[&str]] = &[&[ROOT, "auth", "disable"], &["role", "delete", "root"]];
    s.same_write(&["auth", "enable"], undo_enable).await;
    s.same_write(&["-w=json", "auth", "enable"], undo_enable).await;
    let enabled = s.tool(true, &["auth", "enable"], "", &[]).await;
    s.expect(
        "keelctl auth enable",
        enabled.stdout == b"Authentication Enabled\n",
        &enabled,
    );
    let root = s.tool(false, &[ROOT, "user", "get", "root"], "", &[]).await;
    s.expect(
        "keelctl's auth enable granted root the root role",
        root.stdout == b"User: root\nRoles: root\n",
        &root,
    );

    // With auth on.
    let got = s.same(&[ROOT, "get", "b"]).await;
    s.expect("--user root:pass get works", got.stdout == b"b\nbee\n", &got);
    s.same(&["--user=root", "--password=rootpw", "get", "b"]).await;
    s.same(&["--user=root:rootpw", "--password=rootpw", "get", "b"])
        .await;
    let wrong = s.same(&["--user=root:wrong", "get", "b"]).await;
    s.expect(
        "a wrong password fails at connect (exit 2)",
        wrong.code == 2
            && wrong
                .stderr_text()
                .ends_with("Error: etcdserver: authentication failed, invalid user ID or password\n"),
        &wrong,
    );
    s.same(&["--user=nosuch:pw", "get", "b"]).await;
    let nobody = s.same(&["get", "b"]).await;
    s.expect(
        "no user: user name is empty",
        nobody
            .stderr_text()
            .ends_with("Error: etcdserver: user name is empty\n"),
        &nobody,
    );
    s.same(&["--password=rootpw", "get", "b"]).await;
    s.same(&["--user=alice:alicepw", "get", "b"]).await;
    let denied = s.same(&["--user=alice:alicepw", "get", "zz"]).await;
    s.expect(
        "a read outside alice's roles is denied",
        denied.code == 1
            && denied
                .stderr_text()
                .ends_with("Error: etcdserver: permission denied\n"),
        &denied,
    );
    s.same(&["--user=alice:alicepw", "user", "list"]).await;
    s.same(&["user", "list"]).await;
    s.same(&["auth", "disable"]).await;
    s.same_full(&["--user=root", "get", "b"], "rootpw\n", &[], &[])
        .await;
    s.same_full(&["--user=root", "get", "b"], "", &[], &[]).await;
    s.same_full(&["get", "b"], "", &[("ETCDCTL_USER", "root:rootpw")], &[])
        .await;
    s.same_full(
        &["get", "b"],
        "",
        &[("ETCDCTL_USER", "root"), ("ETCDCTL_PASSWORD", "rootpw")],
        &[],
    )
    .await;
    for read in [
        &[ROOT, "user", "get", "alice", "--detail"][..],
        &[ROOT, "role", "list"],
    ] {
        s.every_format(read, &[]).await;
    }
    s.same_write(
        &[ROOT, "user", "add", "u2:pw"],
        &[&[ROOT, "user", "delete", "u2"]],
    )
    .await;
    s.same_write(&[ROOT, "auth", "disable"], &[&["auth", "enable"]])
        .await;
    s.setup(&[ROOT, "auth", "disable"]).await;
    (s.verdicts.compared, s.verdicts.mismatches)
}

/// keelctl's `auth status` (etcdctl 3.5's), against keel.
async fn auth_status_checks(endpoint: String) -> Vec<String> {
    let s = Suite {
        endpoint,
        verdicts: Verdicts::default(),
    };
    let mut failures = Vec::new();
    let off = s.tool(true, &["auth", "status"], "", &[]).await;
    if !off
        .stdout_text()
        .starts_with("Authentication Status: false\nAuthRevision: ")
    {
        failures.push(format!("auth status while off: {off:?}"));
    }
    for step in [&["user", "add", "root:rootpw"][..], &["auth", "enable"]] {
        let ran = s.tool(true, step, "", &[]).await;
        if ran.code != 0 {
            failures.push(format!("{step:?}: {ran:?}"));
        }
    }
    let on = s.tool(true, &[ROOT, "auth", "status"], "", &[]).await;
    if !on
        .stdout_text()
        .starts_with("Authentication Status: true\nAuthRevision: ")
    {
        failures.push(format!("auth status while on: {on:?}"));
    }
    let json = s.tool(true, &[ROOT, "-w=json", "auth", "status"], "", &[]).await;
    if !json.stdout_text().contains("\"enabled\":true") {
        failures.push(format!("auth status -w json: {json:?}"));
    }
    let table = s.tool(true, &[ROOT, "-w=table", "auth", "status"], "", &[]).await;
    if table.code != 4 {
        failures.push(format!("auth status -w table: {table:?}"));
    }
    failures
}

fn report(flavor: &str, compared: usize, mismatches: &[String], at_least: usize) {
    assert!(
        mismatches.is_empty(),
        "against {flavor}: {} of {compared} cases differ:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    assert!(compared >= at_least, "the suite compared only {compared} outputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_auth_prints_what_etcdctl_prints_against_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    let (compared, mismatches) = auth_suite(cluster.endpoint(0)).await;
    report("etcd", compared, &mismatches, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_auth_prints_what_etcdctl_prints_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let (compared, mismatches) = auth_suite(cluster.endpoint(0)).await;
    report("keel", compared, &mismatches, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_auth_status_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let failures = auth_status_checks(cluster.endpoint(0)).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
