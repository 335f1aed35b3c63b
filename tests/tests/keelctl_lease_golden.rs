//! Golden tests for `keelctl lease` (and `put --lease`): keelctl prints
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
//! proves them, not only equality. The keel flavor is its own test: it
//! passes once keel serves the Lease service.

mod keelctl_support;

use std::collections::BTreeSet;
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::{Client, KeepAliveInterval, LeaseError};
use keel_tests::{Cluster, ClusterOptions};
use keelctl_support::{args, etcdctl_path, keelctl_path, run, without_client_logs, Ran, ReplayProxy};

const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

/// Marks a case whose etcdctl output is expected to be empty.
const SILENT: &str = "(silent) ";

/// `lease_hex`: Go's `%016x` of a positive lease ID.
fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// `text` with every run of digits (and a leading '-') after each `marker`
/// replaced by `N`.
fn mask_number_after(text: &[u8], marker: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
        let after = at + marker.len();
        out.extend_from_slice(&rest[..after]);
        let mut end = after;
        while end < rest.len() && (rest[end].is_ascii_digit() || (end == after && rest[end] == b'-')) {
            end += 1;
        }
        out.push(b'N');
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

fn replace(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8_lossy(text).replace(from, to).into_bytes()
}

/// `ran` with lease `id` masked in hex and decimal.
fn mask_id(ran: &Ran, id: i64) -> Ran {
    let stdout = replace(&ran.stdout, &hex(id), "<ID>");
    let stdout = replace(&stdout, &id.to_string(), "<ID>");
    Ran {
        stdout,
        ..ran.clone()
    }
}

/// `ran` with a time-to-live's remaining TTL masked in every format.
fn mask_remaining(ran: &Ran) -> Ran {
    let stdout = mask_number_after(&ran.stdout, b"remaining(");
    let stdout = mask_number_after(&stdout, b"\"ttl\":");
    let stdout = mask_number_after(&stdout, b"\"TTL\" : ");
    Ran {
        stdout,
        ..ran.clone()
    }
}

/// `ran` with its stdout's lines, and a json list's `{"id":N}` entries, sorted.
fn with_sorted_leases(ran: &Ran) -> Ran {
    let text = ran.stdout_text();
    let stdout = if let Some(start) = text.find("\"leases\":[") {
        let open = start + "\"leases\":[".len();
        let close = open + text[open..].find(']').unwrap_or(0);
        let mut entries: Vec<&str> = text[open..close].split(',').collect();
        entries.sort();
        format!("{}{}{}", &text[..open], entries.join(","), &text[close..])
    } else {
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.sort();
        lines.join("\n")
    };
    Ran {
        stdout: stdout.into_bytes(),
        ..ran.clone()
    }
}

struct Suite {
    endpoint: String,
    client: Client,
    proxy: ReplayProxy,
    proxy_endpoint: String,
    compared: usize,
    mismatches: Vec<String>,
}

impl Suite {
    fn check(&mut self, label: &str, etcdctl: &Ran, keelctl: &Ran) {
        self.compared += 1;
        let expected = Ran {
            stderr: without_client_logs(&etcdctl.stderr),
            ..etcdctl.clone()
        };
        if expected.stdout.is_empty() && expected.stderr.is_empty() && !label.starts_with(SILENT) {
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
            self.mismatches.push(format!(
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
                self.mismatches
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
        compared: 0,
        mismatches: Vec::new(),
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
        s.mismatches
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
        s.mismatches.push("revoking the lease left its key".to_string());
    }

    (s.compared, s.mismatches)
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

fn report(flavor: &str, compared: usize, mismatches: &[String]) {
    assert!(
        mismatches.is_empty(),
        "{} of {compared} keelctl lease outputs differ from etcdctl's against {flavor}:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    assert!(compared > 80, "the suite compared only {compared} outputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lease_prints_what_etcdctl_prints_against_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    lease_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = lease_suite(&cluster).await;
    report("etcd", compared, &mismatches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_lease_prints_what_etcdctl_prints_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    lease_client_checks(&cluster.member_client(0).expect("client")).await;
    let (compared, mismatches) = lease_suite(&cluster).await;
    report("keel", compared, &mismatches);
}
