//! The real `etcdctl` 3.4 against a 3-member keel cluster gives what it gives
//! against a 3-member etcd cluster for the same data: the same commands run
//! against both, side by side, and the outputs are compared after blanking
//! only what must differ (member and cluster ids, ports, terms, versions,
//! sizes, timings).

use std::io::Write;
use std::process::{Command, Stdio};

use keel_tests::{which, Cluster, ClusterOptions};

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> Ran {
    let binary = which("etcdctl").expect("etcdctl 3.4 on PATH (Debian's etcd-client)");
    let mut child = Command::new(binary)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl runs");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("etcdctl output");
    Ran {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// etcdctl's own error lines (its client's retry logs carry timestamps and ports).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|line| line.starts_with("Error:")).collect()
}

/// Blanks the header fields that necessarily differ between two clusters.
fn normalize_json(text: &str) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("json {text:?}: {e}"));
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for field in ["cluster_id", "member_id", "raft_term"] {
                    if map.contains_key(field) {
                        map.insert(field.to_string(), serde_json::Value::from(0));
                    }
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// Replaces ports, 16-digit hex ids and durations by placeholders.
fn normalize_text(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_inclusive([' ', ',', '\n', ':', '/']) {
        let core = word.trim_end_matches([' ', ',', '\n', ':', '/']);
        let tail = &word[core.len()..];
        let is_port = core.len() >= 4
            && core.chars().all(|c| c.is_ascii_digit())
            && core.parse::<u32>().is_ok_and(|p| p > 1024);
        let is_id = core.len() >= 12 && core.chars().all(|c| c.is_ascii_hexdigit());
        let is_duration = core.ends_with("ms")
            || core.ends_with("µs")
            || (core.ends_with('s') && core.starts_with(|c: char| c.is_ascii_digit()));
        if is_port {
            out.push_str("PORT");
        } else if is_id {
            out.push_str("ID");
        } else if is_duration {
            out.push_str("DURATION");
        } else {
            out.push_str(core);
        }
        out.push_str(tail);
    }
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// The commands both clusters get, in order; `(args, stdin)`.
fn script() -> Vec<(Vec<&'static str>, Option<&'static str>)> {
    vec![
        (vec!["put", "foo", "bar"], None),
        (vec!["put", "foo1", "bar1"], None),
        (vec!["put", "foo2", "bar2"], None),
        (vec!["put", "zoo", "z"], None),
        (vec!["put", "foo", "bar-again", "--prev-kv"], None),
        (vec!["get", "foo"], None),
        (vec!["get", "foo", "--prefix"], None),
        (vec!["get", "foo", "--prefix", "--keys-only"], None),
        (vec!["get", "foo1", "--from-key"], None),
        (vec!["get", "foo", "--prefix", "--limit", "2"], None),
        (vec!["get", "foo", "--rev", "2"], None),
        (vec!["get", "foo", "--prefix", "--count-only", "-w", "json"], None),
        (vec!["get", "foo", "-w", "json"], None),
        (
            vec![
                "get",
                "foo",
                "--prefix",
                "--sort-by",
                "VALUE",
                "--order",
                "DESCEND",
            ],
            None,
        ),
        (
            vec!["txn"],
            Some("mod(\"foo\") > \"0\"\n\nput foo txn-success\nget zoo\n\nput foo txn-failure\n\n"),
        ),
        (
            vec!["txn", "-w", "json"],
            Some("value(\"zoo\") = \"nope\"\n\nput zoo never\n\nget foo\n\n"),
        ),
        (vec!["get", "foo"], None),
        (vec!["compaction", "3"], None),
        (vec!["get", "foo", "--rev", "2"], None),
        (vec!["del", "foo", "--prefix"], None),
        (vec!["get", "a", "--from-key", "-w", "json"], None),
        (vec!["del", "nothing-here"], None),
    ]
}

#[tokio::test]
async fn etcdctl_gives_the_same_answers_from_keel_as_from_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(3))
        .await
        .expect("etcd starts");
    let keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    for (args, stdin) in script() {
        let from_etcd = etcdctl(&etcd.endpoints(), &args, stdin);
        let from_keel = etcdctl(&keel.endpoints(), &args, stdin);
        assert_eq!(
            from_keel.ok, from_etcd.ok,
            "etcdctl {args:?} success: keel stderr {}",
            from_keel.stderr
        );
        if args.contains(&"json") && from_etcd.ok {
            assert_eq!(
                normalize_json(&from_keel.stdout),
                normalize_json(&from_etcd.stdout),
                "etcdctl {args:?} -w json"
            );
        } else {
            assert_eq!(from_keel.stdout, from_etcd.stdout, "etcdctl {args:?}");
        }
        assert_eq!(
            error_lines(&from_keel.stderr),
            error_lines(&from_etcd.stderr),
            "etcdctl {args:?} stderr"
        );
    }

    // Cluster-level commands: the same shape once ids, ports and timings are blanked.
    for args in [
        vec!["member", "list"],
        vec!["endpoint", "health"],
        vec!["endpoint", "health", "--cluster"],
    ] {
        let from_etcd = etcdctl(&etcd.endpoints(), &args, None);
        let from_keel = etcdctl(&keel.endpoints(), &args, None);
        assert!(
            from_keel.ok,
            "etcdctl {args:?} against keel: {}",
            from_keel.stderr
        );
        assert_eq!(
            normalize_text(&(from_keel.stdout + &from_keel.stderr)),
            normalize_text(&(from_etcd.stdout + &from_etcd.stderr)),
            "etcdctl {args:?}"
        );
    }
    // endpoint status: versions, sizes, indexes and terms differ by nature;
    // the columns and exactly one leader must not.
    for (cluster, name) in [(&etcd, "etcd"), (&keel, "keel")] {
        let status = etcdctl(
            &cluster.endpoints(),
            &["endpoint", "status", "--cluster", "-w", "json"],
            None,
        );
        assert!(status.ok, "{name}: {}", status.stderr);
        let statuses: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
        let statuses = statuses.as_array().expect("one status per endpoint");
        assert_eq!(statuses.len(), 3, "{name}");
        let leaders: std::collections::BTreeSet<u64> = statuses
            .iter()
            .filter_map(|s| s["Status"]["leader"].as_u64())
            .collect();
        assert_eq!(
            leaders.len(),
            1,
            "{name}: every member names the same leader: {statuses:?}"
        );
        let table = etcdctl(&cluster.endpoints(), &["endpoint", "status", "-w", "table"], None);
        assert!(
            table.ok && table.stdout.contains("IS LEADER"),
            "{name}: {}",
            table.stdout
        );
        assert_eq!(
            table.stdout.matches(" true |").count(),
            1,
            "{name}: exactly one leader row:\n{}",
            table.stdout
        );
    }
}

/// etcd's auth through the real etcdctl: users, roles, a prefix permission,
/// auth enable, then allowed and refused requests by user, a wrong
/// password, no user, a revoked lease's keys, and auth disable, side by
/// side with etcd (exit status, stdout and etcdctl's error lines equal).
#[tokio::test]
async fn etcdctl_auth_gives_the_same_answers_from_keel_as_from_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    let keel = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let script: Vec<Vec<&str>> = vec![
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec!["user", "add", "alice", "--new-user-password=alicepw"],
        vec!["user", "add", "alice", "--new-user-password=again"],
        vec!["role", "add", "reader"],
        vec![
            "role",
            "grant-permission",
            "reader",
            "read",
            "/pub/",
            "--prefix=true",
        ],
        vec!["role", "grant-permission", "reader", "readwrite", "/alice/x"],
        vec!["user", "grant-role", "alice", "reader"],
        vec!["user", "grant-role", "alice", "nosuchrole"],
        vec!["user", "list"],
        vec!["role", "list"],
        vec!["role", "get", "reader"],
        vec!["user", "get", "alice"],
        vec!["auth", "enable"],
        vec!["--user=root:rootpw", "put", "/pub/a", "1"],
        vec!["--user=alice:alicepw", "get", "/pub/a"],
        vec!["--user=alice:alicepw", "get", "/pub/", "--prefix"],
        vec!["--user=alice:alicepw", "put", "/pub/b", "2"],
        vec!["--user=alice:alicepw", "put", "/alice/x", "mine"],
        vec!["--user=alice:alicepw", "get", "/secret"],
        vec!["--user=alice:wrong", "get", "/pub/a"],
        vec!["--user=nobody:pw", "get", "/pub/a"],
        vec!["get", "/pub/a"],
        vec!["--user=alice:alicepw", "user", "list"],
        vec!["--user=alice:alicepw", "compact", "1"],
        vec!["--user=root:rootpw", "user", "revoke-role", "alice", "reader"],
        vec!["--user=alice:alicepw", "get", "/pub/a"],
        vec!["--user=root:rootpw", "user", "delete", "alice"],
        vec!["--user=alice:alicepw", "get", "/pub/a"],
        vec![
            "--user=root:rootpw",
            "role",
            "revoke-permission",
            "reader",
            "/pub/",
            "--prefix=true",
        ],
        vec!["--user=root:rootpw", "role", "get", "reader"],
        vec!["--user=root:rootpw", "role", "delete", "reader"],
        vec!["--user=root:rootpw", "auth", "disable"],
        vec!["get", "/pub/a"],
    ];
    let mut refused = Vec::new();
    for args in script {
        let from_etcd = etcdctl(&etcd.endpoints(), &args, None);
        let from_keel = etcdctl(&keel.endpoints(), &args, None);
        if !from_keel.ok {
            refused.push(args.join(" "));
        }
        if args == ["--user=alice:alicepw", "get", "/pub/a"] && refused.len() < 8 {
            assert_eq!(from_keel.stdout, "/pub/a\n1\n", "alice reads under her prefix");
        }
        assert_eq!(
            from_keel.ok, from_etcd.ok,
            "etcdctl {args:?} success: keel stdout {:?} stderr {}, etcd stdout {:?} stderr {}",
            from_keel.stdout, from_keel.stderr, from_etcd.stdout, from_etcd.stderr
        );
        assert_eq!(from_keel.stdout, from_etcd.stdout, "etcdctl {args:?}");
        assert_eq!(
            error_lines(&from_keel.stderr),
            error_lines(&from_etcd.stderr),
            "etcdctl {args:?} stderr"
        );
    }
    // What the script must have refused (on both), so that equal answers
    // are not equal failures of everything.
    assert_eq!(
        refused,
        [
            "user add alice --new-user-password=again",
            "user grant-role alice nosuchrole",
            "--user=alice:alicepw put /pub/b 2",
            "--user=alice:alicepw get /secret",
            "--user=alice:wrong get /pub/a",
            "--user=nobody:pw get /pub/a",
            "get /pub/a",
            "--user=alice:alicepw user list",
            "--user=alice:alicepw get /pub/a",
            "--user=alice:alicepw get /pub/a",
        ]
    );
}
