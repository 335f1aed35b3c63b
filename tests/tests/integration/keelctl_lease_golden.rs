//! Golden tests for `keelctl lease` (and `put --lease`), `lock` and
//! `elect`: keelctl prints
//! what etcdctl 3.4 prints (stdout, stderr less etcdctl's JSON client logs,
//! exit code), both tools pointed at the same one-member server, in every
//! `-w` format etcdctl has for each command, with etcdctl's argument errors.
//!
//! What is masked, and why (everything else is compared byte for byte):
//! - a granted lease's ID, in `lease grant` and `lease revoke` (each tool
//!   grants or revokes its own lease: the server picks a new ID per grant).
//!   The ID is found as the one lease the command added, and masked in hex
//!   (simple) and decimal (json, fields);
//! - the remaining TTL of `lease timetolive` (`remaining(599s)`, `"ttl":599`,
//!   `"TTL" : 599`): it counts down between the two tools' runs;
//! - the order of `lease list`'s IDs: etcd orders them by expiry, which
//!   moves when a lease is renewed; lines (json: entries) are sorted.
//!
//! A few expectations are also spelled out (an unknown lease "already
//! expired", a keep-alive's renewals then its end line, the minimum TTL a
//! grant of 0 gets, keys attached by `put --lease`), so that the etcd flavor
//! proves them, not only equality.
//!
//! `lock` and `elect` run until interrupted, so they run in the background
//! in deterministic scenarios: one holder at a time, each step waiting for
//! the previous one's output; masked there: the session's lease ID in a
//! lock's or candidate's key (`name/<lease hex>`, each tool has its own
//! session). Observers (`elect -l`) watch the same elections, so their
//! output is compared unmasked. Interop (an etcdctl holder and a keelctl
//! waiter and the reverse), the loss of a session, and the leader elector's
//! step-down and takeover timings are checked as expectations.
//!
//! The keel flavors are their own tests: they pass once keel serves the
//! Lease service.

use crate::keelctl_support;

use std::collections::BTreeSet;
use std::time::Duration;

use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp};
use keel_client::leader_elector::{ElectionTimings, LeaderElector};
use keel_client::session::ConcurrencyError;
use keel_client::{Client, KeepAliveInterval, LeaseError};
use keel_tests::{Cluster, ClusterOptions};
use keelctl_support::background::Background;
use keelctl_support::masks::{hex, mask_id, mask_remaining, masked_lease, with_sorted_leases};
use keelctl_support::verdicts::Verdicts;
use keelctl_support::watch_runner::first_error;
use keelctl_support::{args, etcdctl_path, keelctl_path, run, without_client_logs, Ran, ReplayProxy};

const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

/// Marks a case whose etcdctl output is expected to be empty.
const SILENT: &str = "(silent) ";

struct Suite {
    endpoint: String,
    client: Client,
    proxy: ReplayProxy,
    proxy_endpoint: String,
    verdicts: Verdicts,
}

impl Suite {
    fn check(&mut self, label: &str, etcdctl: &Ran, keelctl: &Ran) {
        let may_print_nothing = label.starts_with(SILENT);
        self.verdicts.check(label, etcdctl, keelctl, may_print_nothing);
    }

    fn expect(&mut self, what: &str, holds: bool, seen: &Ran) {
        self.verdicts.expect(what, holds, seen);
    }

    fn with_endpoint(endpoint: &str, list: &[&str]) -> Vec<Vec<u8>> {
        let mut full = vec![format!("--endpoints={endpoint}").into_bytes()];
        full.extend(args(list));
        full
    }

    async fn etcdctl(&self, list: &[&str]) -> Ran {
        run(&etcdctl_path(), &Self::with_endpoint(&self.endpoint, list), b"").await
    }

    async fn keelctl(&self, list: &[&str]) -> Ran {
        run(&keelctl_path(), &Self::with_endpoint(&self.endpoint, list), b"").await
    }

    /// Both tools run `list`; `normalize` is applied to both results.
    async fn same_with(&mut self, list: &[&str], normalize: fn(&Ran) -> Ran) -> Ran {
        let etcdctl = self.etcdctl(list).await;
        let keelctl = self.keelctl(list).await;
        self.check(&list.join(" "), &normalize(&etcdctl), &normalize(&keelctl));
        etcdctl
    }

    async fn same(&mut self, list: &[&str]) -> Ran {
        self.same_with(list, Ran::clone).await
    }

    /// A command etcdctl runs without printing anything: compared, and
    /// expected silent with exit 0.
    async fn same_silent(&mut self, list: &[&str]) {
        let etcdctl = self.etcdctl(list).await;
        let keelctl = self.keelctl(list).await;
        self.check(&format!("{SILENT}{}", list.join(" ")), &etcdctl, &keelctl);
        let silent =
            etcdctl.code == 0 && etcdctl.stdout.is_empty() && without_client_logs(&etcdctl.stderr).is_empty();
        self.expect(&format!("{} prints nothing", list.join(" ")), silent, &etcdctl);
    }

    /// A write through the replaying proxy: one request reaches the server.
    async fn same_write(&mut self, list: &[&str]) -> Ran {
        self.proxy.reset();
        let full = Self::with_endpoint(&self.proxy_endpoint, list);
        let etcdctl = run(&etcdctl_path(), &full, b"").await;
        let keelctl = run(&keelctl_path(), &full, b"").await;
        if self.proxy.forwarded() > 1 {
            self.verdicts.mismatches.push(format!(
                "write {}: keelctl's request differs from etcdctl's",
                list.join(" ")
            ));
        }
        self.check(&format!("write: {}", list.join(" ")), &etcdctl, &keelctl);
        etcdctl
    }

    async fn leases(&self) -> BTreeSet<i64> {
        let response = self.client.lease_leases().await.expect("lease list");
        response.leases.iter().map(|l| l.id).collect()
    }

    /// Runs `list` with one tool; returns its result with the one lease it
    /// granted masked (and revokes that lease).
    async fn granting(&mut self, keelctl: bool, list: &[&str]) -> Ran {
        let before = self.leases().await;
        let ran = if keelctl {
            self.keelctl(list).await
        } else {
            self.etcdctl(list).await
        };
        let added: Vec<i64> = self.leases().await.difference(&before).copied().collect();
        match added.as_slice() {
            [] => ran,
            [id] => {
                let _ = self.client.lease_revoke(*id).await;
                mask_id(&ran, *id)
            }
            more => {
                self.verdicts
                    .mismatches
                    .push(format!("{}: granted {} leases", list.join(" "), more.len()));
                ran
            }
        }
    }

    async fn grant(&self, ttl: i64) -> i64 {
        self.client.lease_grant(ttl, 0).await.expect("grant").id
    }
}

async fn lease_suite(cluster: &Cluster) -> (usize, Vec<String>) {
    let endpoint = cluster.endpoint(0);
    let client = cluster.member_client(0).expect("client");
    let (proxy, proxy_endpoint) = ReplayProxy::start(&endpoint).await;
    let mut s = Suite {
        endpoint,
        client: client.clone(),
        proxy,
        proxy_endpoint,
        verdicts: Verdicts::default(),
    };

    // grant: each tool's own lease, its ID masked.
    for format in FORMATS {
        for ttl in ["600", "0"] {
            let list = ["lease", "grant", ttl, "-w", format];
            let etcdctl = s.granting(false, &list).await;
            let keelctl = s.granting(true, &list).await;
            s.check(&format!("{} (ID masked)", list.join(" ")), &etcdctl, &keelctl);
            if format == "simple" && ttl == "0" {
                // The server raises a TTL below its minimum (etcd: 1.5 election timeouts, at least 1s).
                let text = etcdctl.stdout_text();
                s.expect(
                    "a grant of 0 gets the minimum TTL",
                    text.starts_with("lease <ID> granted with TTL(") && !text.contains("TTL(0s)"),
                    &etcdctl,
                );
            }
        }
    }
    for bad in [
        &["lease", "grant"][..],
        &["lease", "grant", "1", "2"],
        &["lease", "grant", "x"],
        &["lease", "grant", "1.5"],
        &["lease", "grant", "0x10"],
        &["lease", "grant", ""],
        &["lease", "grant", "99999999999999999999"],
        &["lease", "grant", "9999999999"],
    ] {
        s.same(bad).await;
    }

    // Leases granted beforehand: one with a key, one without.
    let with_key = s.grant(600).await;
    let without_keys = s.grant(600).await;
    client
        .put(PutRequest {
            key: b"lease/k<&>".to_vec(),
            value: b"v".to_vec(),
            lease: with_key,
            ..Default::default()
        })
        .await
        .expect("put with lease");
    let (with_key_hex, without_keys_hex) = (hex(with_key), hex(without_keys));

    for format in FORMATS {
        for id in [&with_key_hex, &without_keys_hex] {
            s.same_with(&["lease", "timetolive", id, "-w", format], mask_remaining)
                .await;
            s.same_with(
                &["lease", "timetolive", id, "--keys", "-w", format],
                mask_remaining,
            )
            .await;
        }
        let unknown = s.same(&["lease", "timetolive", "1234", "-w", format]).await;
        if format == "simple" {
            s.expect(
                "an unknown lease is already expired",
                unknown.stdout_text() == "lease 0000000000001234 already expired\n",
                &unknown,
            );
        }
        s.same_with(&["lease", "list", "-w", format], with_sorted_leases)
            .await;
        s.same(&["lease", "keep-alive", "--once", &with_key_hex, "-w", format])
            .await;
        s.same(&["lease", "keep-alive", "--once", "1234", "-w", format])
            .await;
        // Renewing an unknown lease ends at once: the end line in simple,
        // nothing at all in the other formats (table included: nothing is printed).
        if format == "simple" {
            s.same(&["lease", "keep-alive", "1234", "-w", format]).await;
        } else {
            s.same_silent(&["lease", "keep-alive", "1234", "-w", format])
                .await;
        }
        s.same(&["lease", "revoke", "1234", "-w", format]).await;
    }
    let keys = s
        .same_with(&["lease", "timetolive", &with_key_hex, "--keys"], mask_remaining)
        .await;
    s.expect(
        "timetolive --keys lists the attached key",
        keys.stdout_text().ends_with(", attached keys([lease/k<&>])\n"),
        &keys,
    );
    for bad in [
        &["lease", "revoke"][..],
        &["lease", "revoke", "1", "2"],
        &["lease", "revoke", "zz"],
        &["lease", "revoke", "8000000000000000"],
        &["lease", "revoke", "0"],
        &["lease", "timetolive"],
        &["lease", "timetolive", "g"],
        &["lease", "keep-alive"],
        &["lease", "keep-alive", "--once"],
        &["lease", "keep-alive", "xyz"],
    ] {
        s.same(bad).await;
    }

    // keep-alive until the lease is revoked: both tools at once on one
    // lease of 6s (renewed every 2s), revoked between the second and third
    // renewal, so both print two renewals and the end.
    for format in ["simple", "json"] {
        let id = s.grant(6).await;
        let id_hex = hex(id);
        let list = ["lease", "keep-alive", id_hex.as_str(), "-w", format];
        let revoke_later = async {
            tokio::time::sleep(Duration::from_millis(3000)).await;
            client.lease_revoke(id).await.expect("revoke");
        };
        let (etcdctl, keelctl, ()) = tokio::join!(s.etcdctl(&list), s.keelctl(&list), revoke_later);
        s.check(&list.join(" "), &etcdctl, &keelctl);
        if format == "simple" {
            let expected = format!(
                "lease {id_hex} keepalived with TTL(6)\nlease {id_hex} keepalived with TTL(6)\nlease {id_hex} expired or revoked.\n"
            );
            s.expect(
                "keep-alive prints each renewal, then its end",
                etcdctl.stdout_text() == expected && etcdctl.code == 0,
                &etcdctl,
            );
        }
    }

    // revoke: each tool revokes a lease of its own (the ID masked in simple).
    for format in FORMATS {
        let (first, second) = (s.grant(600).await, s.grant(600).await);
        let etcdctl = s.etcdctl(&["lease", "revoke", &hex(first), "-w", format]).await;
        let keelctl = s.keelctl(&["lease", "revoke", &hex(second), "-w", format]).await;
        s.check(
            &format!("lease revoke <ID> -w {format} (ID masked)"),
            &mask_id(&etcdctl, first),
            &mask_id(&keelctl, second),
        );
    }

    // put --lease: the same request from both tools, the key attached.
    let attach = s.grant(600).await;
    s.same_write(&["put", "lease/attached", "v", "--lease", &hex(attach)])
        .await;
    s.same_write(&["put", "lease/attached", "v", "--lease", "1234"])
        .await;
    s.same_write(&["put", "lease/attached", "v", "--lease", "xyz"])
        .await;
    let attached = client
        .range(RangeRequest {
            key: b"lease/attached".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range");
    let lease_of_key = attached.kvs.first().map_or(0, |kv| kv.lease);
    if lease_of_key != attach {
        s.verdicts
            .mismatches
            .push(format!("put --lease attached lease {lease_of_key}, not {attach}"));
    }
    s.client.lease_revoke(attach).await.expect("revoke");
    let gone = client
        .range(RangeRequest {
            key: b"lease/attached".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range");
    if !gone.kvs.is_empty() {
        s.verdicts
            .mismatches
            .push("revoking the lease left its key".to_string());
    }

    (s.verdicts.compared, s.verdicts.mismatches)
}

/// The client half keelctl stands on: grant, time-to-live, a keeper's
/// renewals and its report of the lease's loss, typed errors.
async fn lease_client_checks(client: &Client) {
    let granted = client.lease_grant(30, 0).await.expect("grant");
    assert_eq!(granted.ttl, 30);
    let alive = client.lease_time_to_live(granted.id, true).await.expect("ttl");
    assert_eq!(alive.granted_ttl, 30);
    assert!(alive.ttl > 0 && alive.ttl <= 30, "{alive:?}");
    let mut keeper = client.keep_lease_alive(
        granted.id,
        KeepAliveInterval::Every(Duration::from_millis(200)),
        None,
    );
    for _ in 0..2 {
        let renewal = tokio::time::timeout(Duration::from_secs(5), keeper.next_renewal())
            .await
            .expect("a renewal within 5s")
            .expect("renewed");
        assert_eq!(renewal.response.ttl, 30);
    }
    assert!(keeper.renewed_at().is_some());
    client.lease_revoke(granted.id).await.expect("revoke");
    let lost = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
        .await
        .expect("the keeper sees the revoke");
    assert_eq!(lost, keel_client::LeaseLost::Expired);
    let gone = client.lease_time_to_live(granted.id, false).await.expect("ttl");
    assert_eq!((gone.ttl, gone.granted_ttl), (-1, 0));
    let again = client.lease_revoke(granted.id).await.expect_err("revoked twice");
    assert!(matches!(again, LeaseError::NotFound { .. }), "{again:?}");
    let huge = client.lease_grant(i64::MAX / 2, 0).await.expect_err("too large");
    assert!(matches!(huge, LeaseError::TtlTooLarge(_)), "{huge:?}");
    let once = client.lease_keep_alive_stream().renew(granted.id).await;
    assert!(matches!(once, Err(LeaseError::NotFound { .. })), "{once:?}");
}

const SETTLE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

/// Runs `list` with both tools in the background, one after the other:
/// each until it printed `lines` lines, then interrupted; masked results.
async fn hold_then_interrupt(s: &mut Suite, list: &[&str], lines: usize, marker: &str) {
    let mut ran = Vec::new();
    for program in [etcdctl_path(), keelctl_path()] {
        let mut tool = Background::spawn(&program, &s.endpoint, list);
        tool.wait_for_lines(lines, SETTLE).await;
        tool.interrupt();
        ran.push(masked_lease(&tool.finish(SETTLE).await, marker));
    }
    s.check(
        &format!("{} (interrupted, lease masked)", list.join(" ")),
        &ran[0],
        &ran[1],
    );
}

/// `holder` holds lock `name` (or leads election `name`) while `waiter`
/// waits: the waiter prints nothing until the holder is interrupted, then
/// its own key.
async fn one_after_the_other(
    s: &mut Suite,
    holder: &std::path::Path,
    waiter: &std::path::Path,
    list: &[&str],
    what: &str,
) {
    let mut first = Background::spawn(holder, &s.endpoint, list);
    let first_holds = first.wait_for_lines(1, SETTLE).await;
    let mut second = Background::spawn(waiter, &s.endpoint, list);
    let second_early = second.wait_for_lines(1, QUIET).await;
    first.interrupt();
    let first = first.finish(SETTLE).await;
    let second_holds = second.wait_for_lines(1, SETTLE).await;
    second.interrupt();
    let second = second.finish(SETTLE).await;
    let fine = first_holds && !second_early && second_holds && first.code == 0 && second.code == 0;
    if !fine {
        s.verdicts.mismatches.push(format!(
            "{what}: {} then {}: first {first:?} (held: {first_holds}); second {second:?} (early: {second_early}, then: {second_holds})",
            holder.display(),
            waiter.display()
        ));
    }
}

/// A waiter interrupted while `list`'s lock or election is held by
/// etcdctl: both tools fail alike and withdraw their keys.
async fn interrupted_while_waiting(s: &mut Suite, list: &[&str], prefix: &[u8]) {
    let mut holder = Background::spawn(&etcdctl_path(), &s.endpoint, list);
    holder.wait_for_lines(1, SETTLE).await;
    let mut ran = Vec::new();
    for program in [etcdctl_path(), keelctl_path()] {
        let waiter = Background::spawn(&program, &s.endpoint, list);
        tokio::time::sleep(QUIET).await;
        waiter.interrupt();
        ran.push(waiter.finish(SETTLE).await);
    }
    s.check(
        &format!("{} (interrupted while waiting)", list.join(" ")),
        &ran[0],
        &ran[1],
    );
    let mut end = prefix.to_vec();
    end.push(0xff);
    let keys = s
        .client
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: end,
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range");
    if keys.count != 1 {
        s.verdicts.mismatches.push(format!(
            "{}: {} keys left after the waiters were interrupted, not only the holder's",
            list.join(" "),
            keys.count
        ));
    }
    holder.interrupt();
    let _ = holder.finish(SETTLE).await;
}

async fn concurrency_suite(cluster: &mut Cluster) -> (usize, Vec<String>) {
    let endpoint = cluster.endpoint(0);
    let client = cluster.member_client(0).expect("client");
    let (proxy, proxy_endpoint) = ReplayProxy::start(&endpoint).await;
    let mut s = Suite {
        endpoint,
        client: client.clone(),
        proxy,
        proxy_endpoint,
        verdicts: Verdicts::default(),
    };

    // lock: bad input, then a command run holding the lock.
    s.same(&["lock"]).await;
    s.same_with(&["lock", "--ttl", "x", "lk"], first_error).await;
    s.same_with(&["lock", "lk", "sh", "-c", "true"], first_error)
        .await;
    let script = r#"echo "${ETCD_LOCK_KEY%/*}"; test "$ETCD_LOCK_REV" -gt 0 && echo rev-ok"#;
    let ran = s.same(&["lock", "lk", "--", "sh", "-c", script]).await;
    s.expect(
        "the command sees the lock's key and revision",
        ran.stdout_text() == "lk\nrev-ok\n" && ran.code == 0,
        &ran,
    );
    s.same(&["lock", "lk", "--ttl", "0", "--", "sh", "-c", "exit 3"])
        .await;
    s.same(&["lock", "lk", "--", "no-such-command-anywhere"]).await;
    // Holding until interrupted prints the key (a get of it).
    hold_then_interrupt(&mut s, &["lock", "lock-hold"], 2, "lock-hold/").await;
    // Interop: either tool waits for the other's lock.
    let (etcdctl, keelctl) = (etcdctl_path(), keelctl_path());
    one_after_the_other(&mut s, &etcdctl, &keelctl, &["lock", "queue"], "lock").await;
    one_after_the_other(&mut s, &keelctl, &etcdctl, &["lock", "queue"], "lock").await;
    interrupted_while_waiting(&mut s, &["lock", "busy"], b"busy/").await;
    // A session lost (its lease revoked) ends the holder with an error.
    let mut ran = Vec::new();
    for program in [&etcdctl, &keelctl] {
        let mut holder = Background::spawn(program, &s.endpoint, &["lock", "lost"]);
        holder.wait_for_lines(1, SETTLE).await;
        let key = String::from_utf8_lossy(&holder.stdout())
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let lease = i64::from_str_radix(key.trim_start_matches("lost/"), 16).unwrap_or(0);
        let _ = client.lease_revoke(lease).await;
        ran.push(masked_lease(&holder.finish(SETTLE).await, "lost/"));
    }
    s.check("lock lost (its lease revoked, lease masked)", &ran[0], &ran[1]);
    s.expect(
        "a lock whose session is lost ends with an error",
        ran[0].stderr_text() == "Error: session expired\n" && ran[0].code == 1,
        &ran[0],
    );

    // elect: bad input.
    for bad in [
        &["elect"][..],
        &["elect", "e"],
        &["elect", "e", "p", "q"],
        &["elect", "-l", "e", "p"],
    ] {
        s.same(bad).await;
    }
    hold_then_interrupt(&mut s, &["elect", "elect-hold", "p<&>"], 2, "elect-hold/").await;
    one_after_the_other(&mut s, &etcdctl, &keelctl, &["elect", "queue", "p"], "elect").await;
    one_after_the_other(&mut s, &keelctl, &etcdctl, &["elect", "queue", "p"], "elect").await;
    interrupted_while_waiting(&mut s, &["elect", "contested", "p"], b"contested/").await;

    // Observers of one election see the same leaders: etcdctl's leader,
    // then (when it resigns) keelctl's.
    let mut observers = Vec::new();
    for format in ["simple", "json", "fields"] {
        for program in [&etcdctl, &keelctl] {
            let list = ["elect", "-l", "observed", "-w", format];
            observers.push((format, Background::spawn(program, &s.endpoint, &list)));
        }
    }
    tokio::time::sleep(QUIET).await;
    let mut first = Background::spawn(&etcdctl, &s.endpoint, &["elect", "observed", "one"]);
    first.wait_for_lines(2, SETTLE).await;
    let mut second = Background::spawn(&keelctl, &s.endpoint, &["elect", "observed", "two"]);
    tokio::time::sleep(QUIET).await;
    first.interrupt();
    second.wait_for_lines(2, SETTLE).await;
    second.interrupt();
    let _ = (first.finish(SETTLE).await, second.finish(SETTLE).await);
    tokio::time::sleep(QUIET).await;
    let mut seen = Vec::new();
    for (format, observer) in observers {
        observer.interrupt();
        seen.push((format, observer.finish(SETTLE).await));
    }
    for pair in seen.chunks(2) {
        let (format, etcdctl_saw) = &pair[0];
        s.check(&format!("elect -l observed -w {format}"), etcdctl_saw, &pair[1].1);
        if *format == "simple" {
            let lines: Vec<String> = etcdctl_saw.stdout_text().lines().map(str::to_string).collect();
            let values: Vec<&str> = lines.iter().skip(1).step_by(2).map(String::as_str).collect();
            s.expect(
                "observers see each leader in turn",
                values == ["one", "two"],
                etcdctl_saw,
            );
        }
    }

    // The leader elector: a leader that cannot renew steps down before its
    // lease can expire; a candidate takes over within lease duration +
    // retry period of the leader's death.
    let timings = [
        "--lease-duration",
        "3s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "500ms",
    ];
    let elect = |name: &'static str, value: &'static str| {
        let mut list = vec!["elect", name, value];
        list.extend(timings);
        list
    };
    let mut leader = Background::spawn(&keelctl, &s.endpoint, &elect("stepdown", "a"));
    leader.wait_for_lines(2, SETTLE).await;
    cluster.pause(0).expect("pause");
    let paused_at = std::time::Instant::now();
    let stepped_down = leader.exited_within(Duration::from_secs(5)).await;
    cluster.resume(0).expect("resume");
    let ran = leader.finish(SETTLE).await;
    let after = stepped_down.map(|at| at.duration_since(paused_at));
    let in_time = after.is_some_and(|d| d < Duration::from_millis(3000));
    // The renew deadline ends it (not the lease's own end, 1s later).
    let stepped = "Error: elect: leadership lost: not renewed within the renew deadline (2s)\n";
    if !in_time || ran.code != 1 || ran.stderr_text() != stepped {
        s.verdicts.mismatches.push(format!(
            "a leader that cannot renew steps down within the renew deadline, before its lease (3s) can expire: after {after:?}: exit {} stdout {:?} stderr {:?}",
            ran.code,
            ran.stdout_text(),
            ran.stderr_text()
        ));
    }

    let mut dying = Background::spawn(&keelctl, &s.endpoint, &elect("takeover", "a"));
    dying.wait_for_lines(2, SETTLE).await;
    let mut candidate = Background::spawn(&keelctl, &s.endpoint, &elect("takeover", "b"));
    let early = candidate.wait_for_lines(1, QUIET).await;
    dying.kill();
    let killed_at = std::time::Instant::now();
    let took_over = candidate.wait_for_lines(2, SETTLE).await;
    let took = killed_at.elapsed();
    candidate.interrupt();
    let ran = candidate.finish(SETTLE).await;
    let _ = dying.finish(SETTLE).await;
    // 3s lease + 500ms retry period, and a second for the server's expiry sweep.
    if early || !took_over || took > Duration::from_millis(4500) || !ran.stdout_text().ends_with("\nb\n") {
        s.verdicts.mismatches.push(format!(
            "a candidate takes over within lease duration + retry period: early {early}, took over {took_over} after {took:?}: exit {} stdout {:?} stderr {:?}",
            ran.code,
            ran.stdout_text(),
            ran.stderr_text()
        ));
    }

    (s.verdicts.compared, s.verdicts.mismatches)
}

/// The elector's client API: a fencing token, guarded writes that apply
/// only while leading, and a stale leader's write refused.
async fn election_client_checks(client: &Client) {
    let timings = ElectionTimings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
    };
    let first = LeaderElector::new(client, b"fenced", b"one", timings).expect("timings");
    let leading = first.campaign().await.expect("elected");
    assert!(leading.fencing_token() > 0);
    assert!(leading.stepped_down().is_none());
    let put = |value: &str| {
        vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b"fenced-data".to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }]
    };
    leading
        .guarded_write(put("by-one"))
        .await
        .expect("the leader writes");
    let stale = leading.guarded_txn(put("stale"), Vec::new());
    // Another candidate waits, and leads once the first key is gone.
    let second = LeaderElector::new(client, b"fenced", b"two", timings).expect("timings");
    let campaign = tokio::spawn(async move { second.campaign().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !campaign.is_finished(),
        "the second candidate waits for the first"
    );
    client
        .delete_range(DeleteRangeRequest {
            key: leading.key().to_vec(),
            ..Default::default()
        })
        .await
        .expect("depose the first leader");
    let next = tokio::time::timeout(Duration::from_secs(5), campaign)
        .await
        .expect("the second candidate leads")
        .expect("task")
        .expect("elected");
    assert!(next.fencing_token() > leading.fencing_token());
    // A candidate that stops waiting withdraws its key.
    let quitter = LeaderElector::new(client, b"fenced", b"three", timings).expect("timings");
    let stop = tokio::time::sleep(Duration::from_millis(300));
    let quit = quitter.campaign_until(stop).await;
    assert!(
        matches!(quit, Err(ConcurrencyError::Canceled)),
        "{:?}",
        quit.err()
    );
    let candidates = client
        .range(RangeRequest {
            key: b"fenced/".to_vec(),
            range_end: b"fenced0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(candidates.count, 1, "only the leader's key is left");
    let refused = leading.guarded_write(put("late")).await;
    assert!(matches!(refused, Err(ConcurrencyError::NotLeader)), "{refused:?}");
    assert!(!client.txn(stale).await.expect("txn").succeeded);
    next.guarded_write(put("by-two"))
        .await
        .expect("the new leader writes");
    let data = client
        .range(RangeRequest {
            key: b"fenced-data".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(data.kvs[0].value, b"by-two");
    next.resign().await.expect("resign");
    let _ = leading.resign().await;
}

fn report(flavor: &str, compared: usize, mismatches: &[String], at_least: usize) {
    assert!(
        mismatches.is_empty(),
        "{} of {compared} keelctl lease outputs differ from etcdctl's against {flavor}:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    assert!(compared >= at_least, "the suite compared only {compared} outputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lease_prints_what_etcdctl_prints_against_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    lease_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = lease_suite(&cluster).await;
    report("etcd", compared, &mismatches, 85);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lease_prints_what_etcdctl_prints_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    lease_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = lease_suite(&cluster).await;
    report("keel", compared, &mismatches, 85);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lock_and_elect_print_what_etcdctl_prints_against_etcd() {
    let mut cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    election_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = concurrency_suite(&mut cluster).await;
    report("etcd", compared, &mismatches, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lock_and_elect_print_what_etcdctl_prints_against_keel() {
    let mut cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    election_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = concurrency_suite(&mut cluster).await;
    report("keel", compared, &mismatches, 15);
}
