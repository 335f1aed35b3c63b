//! Golden tests for `keelctl watch`: keelctl prints what etcdctl 3.4 prints
//! (stdout, stderr less etcdctl's JSON client logs, exit code), both tools
//! pointed at the same server, for every watch flag and format, the exec
//! form, `-i` with `watch` and `progress` lines, a compacted `--rev` and bad
//! usage.
//!
//! A watch runs until the server ends it, so each case runs as a child
//! (`keelctl_support::watch_runner`): etcdctl until its output is quiet or
//! it exits, then keelctl until it has caught up, then both are killed. A
//! killed tool's exit is recorded as -1, so both must have been killed, or
//! both exited with the same code.
//!
//! Determinism: every case that prints events replays a history written
//! once at the start (`--rev`), so both tools see the same events in the
//! same responses, and nothing is written between the two tools' runs.
//!
//! A few expectations are also spelled out (the events of one key, the
//! compaction message, the exec variables, the progress revision), so that
//! the etcd flavor proves the expectations themselves, not only equality.
//! The keel flavor is its own test: it passes once keel serves Watch.
//!
//! Also here, the client half keelctl stands on: keel-client's watch API
//! against etcd's fragmented responses, progress and cancel answers.

use crate::keelctl_support;

use std::time::{Duration, Instant};

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::WatchCreateRequest;
use keel_api::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_client::watch::{is_progress_notify, STREAM_WATCH_ID};
use keel_client::{Client, WatchStreamOptions};
use keel_tests::{Cluster, ClusterOptions};
use keelctl_support::watch_runner::{
    end_of_input, first_error, line, run_both, Case, Comparison, Expect, Step, Watcher, STEP_DEADLINE,
};
use keelctl_support::{args, etcdctl_path, keelctl_path, run, without_client_logs, Ran};

const FORMATS: [&str; 4] = ["simple", "json", "fields", "protobuf"];

/// `ran` with its stdout's lines sorted.
fn with_sorted_stdout(ran: &Ran) -> Ran {
    let mut lines: Vec<&[u8]> = ran.stdout.split(|byte| *byte == b'\n').collect();
    lines.sort();
    Ran {
        stdout: lines.join(&b'\n'),
        ..ran.clone()
    }
}

struct Suite {
    endpoint: String,
    compared: usize,
    mismatches: Vec<String>,
}

impl Suite {
    /// Runs `case` with both tools, compares them, and returns etcdctl's
    /// result (for the spelled-out expectations).
    async fn case(&mut self, case: Case) -> Ran {
        let (etcdctl, keelctl) = run_both(&self.endpoint, &case).await;
        let expected = Ran {
            stderr: without_client_logs(&etcdctl.stderr),
            ..etcdctl.clone()
        };
        let (expected, got) = match case.compare {
            Comparison::Everything => (expected, keelctl),
            Comparison::FirstError => (first_error(&expected), first_error(&keelctl)),
            Comparison::LinesInAnyOrder => (with_sorted_stdout(&expected), with_sorted_stdout(&keelctl)),
        };
        self.compared += 1;
        if expected.stdout.is_empty() && expected.stderr.is_empty() {
            self.mismatches.push(format!(
                "{}\n  etcdctl printed nothing: the case proves nothing",
                case.label()
            ));
        }
        if expected != got {
            self.mismatches.push(format!(
                "{}\n  etcdctl: exit {} stdout {:?} stderr {:?}\n  keelctl: exit {} stdout {:?} stderr {:?}",
                case.label(),
                expected.code,
                expected.stdout_text(),
                expected.stderr_text(),
                got.code,
                got.stdout_text(),
                got.stderr_text()
            ));
        }
        etcdctl
    }

    fn expect(&mut self, what: &str, holds: bool, seen: &Ran) {
        if !holds {
            self.mismatches.push(format!(
                "expectation failed: {what}\n  etcdctl: exit {} stdout {:?} stderr {:?}",
                seen.code,
                seen.stdout_text(),
                seen.stderr_text()
            ));
        }
    }
}

async fn put(client: &Client, key: &[u8], value: &[u8]) -> i64 {
    client
        .put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
        .expect("put")
        .header
        .map_or(0, |h| h.revision)
}

/// Writes the history every case replays; returns its first revision.
async fn write_history(client: &Client) -> i64 {
    let first = put(client, b"w/a", b"1").await;
    put(client, b"w/b", b"x<y&z \"q\"").await;
    put(client, b"w/a", b"2").await;
    put(client, b"other", b"o").await;
    client
        .delete_range(DeleteRangeRequest {
            key: b"w/b".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let op = |request| RequestOp {
        request: Some(request),
    };
    client
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"w/a".to_vec(),
                result: CompareResult::Greater as i32,
                target: CompareTarget::Mod as i32,
                target_union: Some(TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![
                op(Request::RequestPut(PutRequest {
                    key: b"w/c".to_vec(),
                    value: b"c1".to_vec(),
                    ..Default::default()
                })),
                op(Request::RequestPut(PutRequest {
                    key: b"w/d".to_vec(),
                    value: b"d1".to_vec(),
                    ..Default::default()
                })),
                op(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: b"w/a".to_vec(),
                    ..Default::default()
                })),
            ],
            failure: vec![],
        })
        .await
        .expect("txn");
    put(client, b"w/bin\x01", b"\xff\xfe").await;
    put(client, b"w/a", b"3").await;
    first
}

async fn current_revision(client: &Client) -> i64 {
    client
        .range(RangeRequest {
            key: b"w/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .header
        .map_or(0, |h| h.revision)
}

const EXEC_ECHO: &str =
    "echo \"$ETCD_WATCH_REVISION|$ETCD_WATCH_EVENT_TYPE|$ETCD_WATCH_KEY|$ETCD_WATCH_VALUE\"";

async fn watch_suite(cluster: &Cluster) -> (usize, Vec<String>) {
    let client = cluster.member_client(0).expect("client");
    let first = write_history(&client).await;
    let current = current_revision(&client).await;
    let mut s = Suite {
        endpoint: cluster.endpoint(0),
        compared: 0,
        mismatches: Vec::new(),
    };
    let rev = first.to_string();
    let from_delete = (first + 4).to_string();

    // Replays of the history: one key, a range, a prefix, everything; with
    // and without the previous key-values; every format.
    for format in FORMATS {
        for case in [
            vec!["--rev", &rev, "w/a"],
            vec!["--rev", &rev, "w/a", "w/c"],
            vec!["--rev", &rev, "w/", "--prefix"],
            vec!["--rev", &rev, "w/", "--prefix", "--prev-kv"],
            vec!["--rev", &from_delete, "w/", "--prefix", "--prev-kv"],
            vec!["--rev", &rev, "", "--prefix"],
            vec!["--rev", &rev, "w/", "--prefix", "--hex", "--prev-kv"],
        ] {
            let mut args = case.clone();
            args.extend(["-w", format]);
            s.case(Case::new(&args)).await;
        }
    }
    let one_key = s.case(Case::new(&["--rev", &rev, "w/a"])).await;
    s.expect(
        "etcdctl prints w/a's puts and its delete (the txn's), key then value",
        one_key.stdout_text() == "PUT\nw/a\n1\nPUT\nw/a\n2\nDELETE\nw/a\n\nPUT\nw/a\n3\n",
        &one_key,
    );
    // A third key is ignored (etcdctl watches the first only); flags first.
    s.case(Case::new(&["--rev", &rev, "w/a", "w/c", "w/z"])).await;
    s.case(Case::new(&["--prev-kv=true", "--prefix", "--rev", &rev, "w/"]))
        .await;
    // The variables for the key and range end.
    s.case(Case::new(&["--rev", &rev, "--prefix"]).with_variable("ETCDCTL_WATCH_KEY", "w/"))
        .await;
    s.case(
        Case::new(&["--rev", &rev])
            .with_variable("ETCDCTL_WATCH_KEY", "w/a")
            .with_variable("ETCDCTL_WATCH_RANGE_END", "w/c"),
    )
    .await;

    // The exec form: the command runs for every event, with the variables.
    let exec = s
        .case(Case::new(&[
            "--rev", &rev, "w/", "--prefix", "--", "sh", "-c", EXEC_ECHO,
        ]))
        .await;
    s.expect(
        "the exec command sees the response's revision and %q-quoted type, key and value",
        exec.stdout_text()
            .contains(&format!("\n{current}|\"PUT\"|\"w/b\"|\"x<y&z \\\"q\\\"\"\n"))
            && exec
                .stdout_text()
                .contains(&format!("\n{current}|\"DELETE\"|\"w/a\"|\"\"\n")),
        &exec,
    );
    s.case(Case::new(&[
        "--rev", &rev, "w/a", "-w", "json", "--", "sh", "-c", EXEC_ECHO,
    ]))
    .await;
    s.case(
        Case::new(&["--rev", &rev, "--", "sh", "-c", EXEC_ECHO]).with_variable("ETCDCTL_WATCH_KEY", "w/c"),
    )
    .await;
    let failing = s
        .case(Case::new(&["--rev", &rev, "w/a", "--", "sh", "-c", "exit 3"]))
        .await;
    s.expect(
        "a failing command ends etcdctl with exit 1",
        failing.code == 1
            && failing
                .stderr_text()
                .contains("command [\"sh\" \"-c\" \"exit 3\"] error (exit status 3)"),
        &failing,
    );
    s.case(Case::new(&[
        "--rev",
        &rev,
        "w/a",
        "--",
        "no-such-program-for-keel",
    ]))
    .await;
    s.case(Case::new(&[
        "--rev",
        &rev,
        "w/a",
        "--",
        "/nonexistent/program",
        "x",
    ]))
    .await;

    // Formats etcdctl does not print a watch in.
    s.case(Case::new(&["--rev", &rev, "w/a", "-w", "table"])).await;
    s.case(Case::new(&["--rev", &rev, "w/a", "-w", "bogus"])).await;

    // Bad usage.
    s.case(Case::new(&[])).await;
    s.case(Case::new(&["--prefix"])).await;
    s.case(Case::new(&["w/a", "w/c", "--prefix"])).await;
    s.case(Case::new(&["w/a", "--"])).await;
    s.case(Case::new(&["--", "echo", "x"])).await;
    s.case(Case::new(&["w/a"]).with_variable("ETCDCTL_WATCH_KEY", "w/b"))
        .await;
    s.case(Case::new(&["w/a", "--", "echo"]).with_variable("ETCDCTL_WATCH_KEY", "w/b"))
        .await;
    s.case(Case::new(&["w/a"]).with_variable("ETCDCTL_WATCH_RANGE_END", "w/z"))
        .await;
    s.case(Case::new(&["w/a", "--rev", "abc"]).first_error_only())
        .await;
    s.case(Case::new(&["w/a", "--bogus"]).first_error_only()).await;
    // A range that is empty: the server refuses the create.
    let empty = s.case(Case::new(&["w/z", "w/a"])).await;
    s.expect("an empty range is canceled, exit 5", empty.code == 5, &empty);

    // -i: watch and progress lines, bad lines, the end of input.
    for format in ["simple", "json", "fields"] {
        let steps = vec![
            line(&format!("watch --rev {rev} w/ --prefix --prev-kv")),
            line("progress"),
            line(""),
            line("get w/a"),
            line("watch"),
            line("watch w/a w/c --prefix"),
            line(&format!(
                "watch w/a --rev={rev} -- printenv ETCD_WATCH_KEY ETCD_WATCH_VALUE"
            )),
            line("progress"),
            end_of_input(),
        ];
        let interactive = s
            .case(
                Case::new(&["-i", "-w", format])
                    .interactive(steps)
                    .lines_in_any_order(),
            )
            .await;
        if format == "simple" {
            s.expect(
                "a progress line prints the current revision for each watch; the end of input exits 3",
                interactive
                    .stdout_text()
                    .contains(&format!("progress notify: {current}\n"))
                    && interactive.code == 3
                    && interactive
                        .stderr_text()
                        .ends_with("Error: Error reading watch request line: EOF\n"),
                &interactive,
            );
        }
    }
    for fatal in [
        "watch w/a --bogus",
        "watch w/a -w json",
        "watch --prefix",
        "watch w/a --",
    ] {
        s.case(Case::new(&["-i"]).interactive(vec![Step {
            input: Some(format!("{fatal}\n")),
            expect: Expect::Exit,
        }]))
        .await;
    }
    // A last line without its newline is not read.
    s.case(Case::new(&["--interactive"]).interactive(vec![
        Step {
            input: Some(format!("watch --rev {rev} w/a")),
            expect: Expect::Silence,
        },
        end_of_input(),
    ]))
    .await;
    s.case(
        Case::new(&["-i"])
            .with_variable("ETCDCTL_WATCH_KEY", "w/c")
            .interactive(vec![line(&format!("watch --rev {rev}")), end_of_input()]),
    )
    .await;

    // Compaction: a watch from before the compacted revision is canceled.
    let compacted = first + 3;
    client
        .compact(CompactionRequest {
            revision: compacted,
            physical: true,
        })
        .await
        .expect("compact");
    for format in FORMATS {
        let canceled = s.case(Case::new(&["--rev", &rev, "w/a", "-w", format])).await;
        if format == "simple" {
            s.expect(
                "a compacted start revision: etcdctl prints the compaction error and exits 5",
                canceled.code == 5
                    && canceled.stdout.is_empty()
                    && without_client_logs(&canceled.stderr)
                        == b"watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
                             Error: watch is canceled by the server\n",
                &canceled,
            );
        }
    }
    s.case(Case::new(&["--rev", "-1", "w/a"])).await;
    // The compacted revision itself is still there.
    s.case(Case::new(&["--rev", &compacted.to_string(), "w/", "--prefix"]))
        .await;
    s.case(Case::new(&["-i", "-w", "json"]).interactive(vec![
        line(&format!("watch --rev {rev} w/a")),
        line(&format!("watch --rev {compacted} w/a")),
        end_of_input(),
    ]))
    .await;

    (s.compared, s.mismatches)
}

fn report(flavor: &str, compared: usize, mismatches: &[String]) {
    assert!(
        mismatches.is_empty(),
        "{} of {compared} keelctl watch runs differ from etcdctl's against {flavor}:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    assert!(compared > 60, "the suite compared only {compared} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_watch_prints_what_etcdctl_prints_against_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd cluster starts");
    let (compared, mismatches) = watch_suite(&cluster).await;
    report("etcd", compared, &mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_watch_prints_what_etcdctl_prints_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel cluster starts");
    let (compared, mismatches) = watch_suite(&cluster).await;
    report("keel", compared, &mismatches);
}

/// keel-client's watch API against etcd: a replay larger than etcd's limit
/// (`--max-request-bytes`, 1.5 MiB, plus 512 KiB for gRPC: 3 MB here) comes
/// in fragments when the create asks for them;
/// `message` yields each fragment, `response` the joined whole; a progress
/// request is answered for the stream (watch id -1) at the current
/// revision; a cancel is answered with the watch's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_client_reads_etcds_fragments_progress_and_cancels() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd cluster starts");
    let client = cluster.member_client(0).expect("client");
    let value = vec![b'v'; 300 * 1024];
    let mut first = 0;
    for index in 0..10 {
        let revision = put(&client, format!("f/{index}").as_bytes(), &value).await;
        if first == 0 {
            first = revision;
        }
    }
    let current = current_revision(&client).await;
    let create = WatchCreateRequest {
        key: b"f/".to_vec(),
        range_end: b"f0".to_vec(),
        start_revision: first,
        fragment: true,
        ..Default::default()
    };
    let options = WatchStreamOptions { require_leader: true };

    // Message by message: the replay arrives in fragments.
    let (sender, mut receiver) = client.watch_stream(options);
    sender.create(create.clone()).expect("create");
    let created = receiver.message().await.expect("created").expect("a message");
    assert!(created.created && !created.canceled, "{created:?}");
    let mut fragments = Vec::new();
    loop {
        let message = receiver.message().await.expect("message").expect("a message");
        assert_eq!(message.watch_id, created.watch_id);
        let last = !message.fragment;
        fragments.push(message);
        if last {
            break;
        }
    }
    assert!(
        fragments.len() > 1,
        "etcd fragmented the replay: {} messages",
        fragments.len()
    );
    assert_eq!(fragments.iter().map(|m| m.events.len()).sum::<usize>(), 10);

    // Whole responses: one, with every event in order.
    let (sender, mut receiver) = client.watch_stream(options);
    sender.create(create).expect("create");
    let created = receiver.response().await.expect("created").expect("a response");
    assert!(created.created);
    let whole = receiver.response().await.expect("replay").expect("a response");
    assert!(!whole.fragment);
    let revisions: Vec<i64> = whole
        .events
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect();
    assert_eq!(revisions, (first..first + 10).collect::<Vec<_>>());

    sender.request_progress().expect("progress");
    let progress = receiver.response().await.expect("progress").expect("a response");
    assert!(is_progress_notify(&progress), "{progress:?}");
    assert_eq!(progress.watch_id, STREAM_WATCH_ID);
    assert_eq!(progress.header.map(|h| h.revision), Some(current));

    sender.cancel(created.watch_id).expect("cancel");
    let canceled = receiver.response().await.expect("canceled").expect("a response");
    assert!(
        canceled.canceled && canceled.watch_id == created.watch_id,
        "{canceled:?}"
    );
}

/// A watch outlives its member's restart: etcdctl's client, and keelctl's
/// session, reopen the stream and create the watch again from the revision
/// after the last event seen, so the event before the restart and the one
/// after it are each printed once, by both tools alike.
async fn watch_across_a_restart(mut cluster: Cluster) {
    let endpoint = cluster.endpoint(0);
    let case = Case::new(&["k"]);
    let mut etcdctl = Watcher::spawn(&etcdctl_path(), &endpoint, &case);
    let mut keelctl = Watcher::spawn(&keelctl_path(), &endpoint, &case);
    // Nothing shows when a watch is created: write until both print.
    let client = cluster.member_client(0).expect("client");
    let before = b"PUT\nk\nbefore\n".to_vec();
    let deadline = Instant::now() + STEP_DEADLINE;
    while Instant::now() < deadline
        && [&etcdctl, &keelctl]
            .iter()
            .any(|w| !w.stdout.lock().expect("lock").starts_with(&before))
    {
        put(&client, b"k", b"before").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let printed = |w: &Watcher| w.stdout.lock().expect("lock").clone();
    let (etcdctl_before, keelctl_before) = (printed(&etcdctl), printed(&keelctl));

    cluster.stop(0).await.expect("stop");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(0).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("leader after the restart");
    let client = cluster.member_client(0).expect("client");
    put(&client, b"k", b"after").await;
    for watcher in [&mut etcdctl, &mut keelctl] {
        let after = [printed(watcher), b"PUT\nk\nafter\n".to_vec()].concat();
        watcher.catch_up((after.len(), 0), false).await;
    }
    let etcdctl = etcdctl.finish().await;
    let keelctl = keelctl.finish().await;
    let expected = [etcdctl_before, b"PUT\nk\nafter\n".to_vec()].concat();
    assert_eq!(
        etcdctl.stdout_text(),
        String::from_utf8_lossy(&expected),
        "etcdctl resumes after the restart"
    );
    let expected = [keelctl_before, b"PUT\nk\nafter\n".to_vec()].concat();
    assert_eq!(
        keelctl.stdout_text(),
        String::from_utf8_lossy(&expected),
        "keelctl resumes after the restart, nothing lost or repeated; stderr {}",
        keelctl.stderr_text()
    );
    assert_eq!(keelctl.stderr_text(), "", "keelctl retries without a word");
    assert_eq!((etcdctl.code, keelctl.code), (-1, -1), "both still watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_its_member_restarts_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd cluster starts");
    watch_across_a_restart(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_its_member_restarts_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel cluster starts");
    watch_across_a_restart(cluster).await;
}

/// No endpoint at all (`--endpoints=`): etcdctl's client refuses before
/// dialling, exit 2, for watch as for every command.
#[tokio::test]
async fn no_endpoint_is_refused_as_etcdctl_refuses_it() {
    for list in [["--endpoints=", "watch", "a"], ["--endpoints=", "get", "a"]] {
        let etcdctl = run(&etcdctl_path(), &args(&list), b"").await;
        let keelctl = run(&keelctl_path(), &args(&list), b"").await;
        assert_eq!(etcdctl.code, 2, "{list:?}: {etcdctl:?}");
        assert_eq!(
            etcdctl.stderr_text(),
            "Error: etcdclient: no available endpoints\n"
        );
        assert_eq!(
            (keelctl.code, keelctl.stdout_text(), keelctl.stderr_text()),
            (etcdctl.code, etcdctl.stdout_text(), etcdctl.stderr_text()),
            "{list:?}"
        );
    }
}
