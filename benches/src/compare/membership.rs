//! Scenario 11, membership (issue 13): on a fresh 3-member cluster of each
//! system holding N keys (8-byte keys, 100-byte values), (a) the time from
//! `MemberAdd` of a voter until the new member answers a serializable get
//! of the last-written key, and (b) `Maintenance.Snapshot` streamed to a
//! file (time, size) and `keelctl` / `etcdctl snapshot restore` of that file
//! into a fresh data dir (time until the command exits).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::{Client, ClientConfig};
use keel_tests::Flavor;
use tokio::io::AsyncWriteExt;

use crate::compare::cluster::{order, BenchCluster};
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{Ctx, Scenario, Table};
use crate::load::{open_connections, put_all, KeyLayout, PutAll};

const CLIENTS: usize = 256;
const CONNS: usize = 16;
const VALUE_BYTES: usize = 100;
pub const LAST_KEY: &[u8] = b"membership-last";
/// How long an added member may take to serve before the rep fails (etcd
/// takes about a second at 200,000 keys; a member stuck behind is a failure).
const SERVE_LIMIT: Duration = Duration::from_secs(120);
/// How long MemberAdd is retried while etcd calls the cluster unhealthy.
const UNHEALTHY_LIMIT: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let keys = ctx.scale.membership_keys;
    let method = format!(
        "A fresh 3-member cluster per system and repetition (alternating which goes first), preloaded with \
         {keys} distinct keys (8-byte keys, {VALUE_BYTES}-byte values; {CLIENTS} clients over {CONNS} \
         connections) and then one more put of `{}`. **Add member**: from the MemberAdd call (a voter; \
         retried untimed while the cluster answers \"unhealthy cluster\" or \"not enough started members\") to the first serializable get of that \
         last key on the new member that returns it; the new member is started right after MemberAdd \
         answers, with the `--initial-cluster` built from the response's members. **Snapshot save**: \
         `Maintenance.Snapshot` of member 1 streamed to a file (time until the file is written and \
         synced). **Snapshot restore**: `keelctl snapshot restore` vs `etcdctl snapshot restore` of that \
         file into a fresh data dir, until the command exits.",
        String::from_utf8_lossy(LAST_KEY)
    );
    let mut report = ctx.new_report(
        Scenario::Membership,
        "11. Membership: add a member, snapshot save and restore",
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::Membership, &mut report);
    }
    if keys < 1_000_000 {
        report.notes.push(format!(
            "run with --keys {keys}, fewer than the issue's 1,000,000 keys (to fit the machine's time)"
        ));
    }
    let keelctl = keel_tests::built_binary("keelctl").context("keelctl is not built next to keel-bench")?;
    let etcdctl = keel_tests::which("etcdctl").context("etcdctl is not on $PATH")?;
    let mut table = Table::default();
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            let tool = match flavor {
                Flavor::Etcd => &etcdctl,
                Flavor::Keel => &keelctl,
            };
            match BenchCluster::start(flavor, 3, &ctx.data_root).await {
                Ok(mut cluster) => one_rep(ctx, &mut report, &mut table, &mut cluster, tool, rep).await,
                Err(error) => report
                    .failures
                    .push(format!("{flavor:?} ×3 did not start (rep {rep}): {error:#}")),
            }
            report.rows = table.rows();
            ctx.publish(Scenario::Membership, &mut report)?;
        }
    }
    Ok(())
}

async fn one_rep(
    ctx: &Ctx,
    report: &mut ScenarioReport,
    table: &mut Table,
    cluster: &mut BenchCluster,
    tool: &Path,
    rep: usize,
) {
    let (name, flavor) = (cluster.name(), cluster.flavor);
    let keys = ctx.scale.membership_keys;
    let case = format!("{keys} keys");
    let mut add = |metric: &str, better: Better, value: Option<f64>| {
        table.add(3, &case, None, metric, better, flavor, value)
    };
    if let Err(error) = preload(ctx, cluster, keys).await {
        report
            .failures
            .push(format!("{name} ×3 rep {rep}: preloading: {error:#}"));
        return;
    }
    match add_member(cluster).await {
        Ok(took) => add(
            "add member until it serves, s",
            Better::Lower,
            Some(took.as_secs_f64()),
        ),
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×3 rep {rep}: adding a member: {error:#}"));
            if let Some(exited) = cluster.exited_report() {
                report.failures.push(exited);
            }
        }
    }
    let file = cluster.cluster().dir().join("snapshot.db");
    match save_snapshot(&cluster.endpoints()[0], &file).await {
        Ok((took, bytes)) => {
            add("snapshot save, s", Better::Lower, Some(took.as_secs_f64()));
            add(
                "snapshot file, MiB",
                Better::Lower,
                Some(bytes as f64 / 1048576.0),
            );
        }
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×3 rep {rep}: snapshot save: {error:#}"));
            return;
        }
    }
    match restore(tool, &file, &cluster.cluster().dir().join("restored")).await {
        Ok(took) => add("snapshot restore, s", Better::Lower, Some(took.as_secs_f64())),
        Err(error) => report
            .failures
            .push(format!("{name} ×3 rep {rep}: snapshot restore: {error:#}")),
    }
}

/// Puts `keys` keys, then [`LAST_KEY`].
async fn preload(ctx: &Ctx, cluster: &BenchCluster, keys: u64) -> anyhow::Result<()> {
    let layout = KeyLayout::new("", 8, keys)?;
    let stubs = open_connections(&cluster.endpoints(), CONNS, &cluster.access()).await?;
    let plan = PutAll {
        clients: CLIENTS,
        count: keys,
        val_size: VALUE_BYTES,
        request_timeout: Duration::from_secs(10),
        time_limit: Some(ctx.scale.load_time_limit),
        max_failures: 100,
        progress: false,
    };
    tracing::info!(
        system = cluster.name(),
        keys,
        "preloading for the membership scenario"
    );
    let loaded = put_all(&stubs, plan, move |index| layout.key(index)).await;
    if let Some(shortfall) = loaded.shortfall(&format!("{} keys", keys)) {
        anyhow::bail!(shortfall);
    }
    let client = Client::connect(ClientConfig::new(cluster.endpoints())).await?;
    client
        .put(PutRequest {
            key: LAST_KEY.to_vec(),
            value: b"last".to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Adds a voter and starts it; the time from the (successful) MemberAdd
/// call until the new member serves [`LAST_KEY`] from its own state.
pub async fn add_member(cluster: &mut BenchCluster) -> anyhow::Result<Duration> {
    let client = Client::connect(ClientConfig::new(cluster.endpoints())).await?;
    let fixture = cluster.cluster_mut();
    let new_name = "added";
    let index = fixture.prepare_member(new_name)?;
    let peer_url = fixture.peer_url(index);
    // Asked again while refused before anything was proposed (a member
    // not yet connected to the leader, or not yet started); timed from the
    // call that was accepted.
    let (started, added) = keel_client::membership_change_when_ready(UNHEALTHY_LIMIT, || async {
        let started = Instant::now();
        client
            .member_add(vec![peer_url.clone()], false)
            .await
            .map(|added| (started, added))
    })
    .await
    .context("MemberAdd")?;
    let initial_cluster = keel_client::launch::initial_cluster_after_add(&added, new_name);
    fixture.start_joining(index, &initial_cluster)?;
    let endpoint = fixture.endpoint(index);
    let reader = Client::connect_lazy(
        ClientConfig::new([endpoint.as_str()]).with_request_timeout(Duration::from_secs(2)),
    )?;
    let request = RangeRequest {
        key: LAST_KEY.to_vec(),
        serializable: true,
        ..Default::default()
    };
    loop {
        if let Ok(answer) = reader.range(request.clone()).await {
            if !answer.kvs.is_empty() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > SERVE_LIMIT {
            anyhow::bail!(
                "the added member did not serve {} within {SERVE_LIMIT:?}; its log ends: {}",
                String::from_utf8_lossy(LAST_KEY),
                fixture.log_tail(index, 10).replace('\n', " | ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Streams `endpoint`'s snapshot into `file`; the time and the bytes written.
pub async fn save_snapshot(endpoint: &str, file: &Path) -> anyhow::Result<(Duration, u64)> {
    let client = Client::connect(ClientConfig::new([endpoint])).await?;
    let started = Instant::now();
    let mut stream = client.snapshot(endpoint).await?;
    let mut out = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("creating {}", file.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.blob).await?;
        bytes += chunk.blob.len() as u64;
    }
    out.sync_all().await?;
    let took = started.elapsed();
    anyhow::ensure!(bytes > 0, "the snapshot was empty");
    Ok((took, bytes))
}

/// Runs `<tool> snapshot restore` of `file` into `data_dir`; the time until it exits.
async fn restore(tool: &Path, file: &Path, data_dir: &PathBuf) -> anyhow::Result<Duration> {
    let peer = "http://127.0.0.1:2380";
    let started = Instant::now();
    let output = tokio::process::Command::new(tool)
        .arg("snapshot")
        .arg("restore")
        .arg(file)
        .args(["--name", "restored", "--initial-cluster"])
        .arg(format!("restored={peer}"))
        .args(["--initial-advertise-peer-urls", peer, "--data-dir"])
        .arg(data_dir)
        .env("ETCDCTL_API", "3")
        .output()
        .await
        .with_context(|| format!("running {}", tool.display()))?;
    let took = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "{} snapshot restore exited with {}: {}",
        tool.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(took)
}
