//! keel started as an operator starts etcd: from a Debian-style environment
//! file (`ETCD_*` variables, a command-line flag winning over its variable),
//! from etcd's YAML configuration file, with etcd-only flags accepted and
//! logged as without effect, and with a flag asking for what keel does not
//! serve yet (discovery, forcing a new cluster) refused.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use keel_tests::{built_binary, curl, free_port};
use serde_json::Value;

/// A `keel` process, killed when dropped; its log goes to `log`.
struct KeelProcess {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl KeelProcess {
    fn start(args: &[String], environment: &[(String, String)], dir: &Path) -> KeelProcess {
        let log = dir.join("keel.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(built_binary("keel").expect("keel is built"))
            .args(args)
            .envs(environment.iter().cloned())
            // A refused start must not spend seconds symbolizing a backtrace
            // of the debug binary (CI sets RUST_BACKTRACE).
            .env("RUST_LIB_BACKTRACE", "0")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("keel starts");
        KeelProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` at `endpoint` is true.
    async fn wait_healthy(&mut self, endpoint: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if get(&format!("http://{endpoint}/health"))
                .await
                .contains(r#""health":"true""#)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keel exited ({status}) before serving:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn get(url: &str) -> String {
    curl(url, &["--max-time", "5"]).await.body
}

/// The member names etcdctl lists at `endpoint`.
async fn member_names(endpoint: &str) -> Vec<String> {
    let output = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={endpoint}"), "member", "list", "-w", "json"])
        .output()
        .await
        .expect("etcdctl runs");
    let listed: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("member list ({e}): {}", String::from_utf8_lossy(&output.stderr)));
    listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|member| member["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `KEY=VALUE` lines, as in Debian's `/etc/default/etcd`.
fn environment_file_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
        .collect()
}

#[tokio::test]
async fn keel_starts_from_a_debian_environment_file_and_a_flag_wins_over_its_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer, metrics) = (
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    let environment_file = format!(
        "# /etc/default/etcd\n\
         ETCD_NAME=from-environment\n\
         ETCD_DATA_DIR={data}\n\
         ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:{client}\n\
         ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:{client}\n\
         ETCD_LISTEN_PEER_URLS=http://127.0.0.1:{peer}\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:{peer}\n\
         ETCD_INITIAL_CLUSTER=from-command-line=http://127.0.0.1:{peer}\n\
         ETCD_INITIAL_CLUSTER_STATE=new\n\
         ETCD_INITIAL_CLUSTER_TOKEN=debian-cluster\n\
         ETCD_LISTEN_METRICS_URLS=http://127.0.0.1:{metrics}\n\
         ETCD_ENABLE_V2=false\n\
         ETCD_MAX_WALS=5\n\
         ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK=true\n\
         ETCD_PEER_CLIENT_CERT_AUTH=false\n\
         ETCD_LOGGER=zap\n\
         ETCD_LOG_OUTPUTS=stderr\n",
        data = dir.path().join("data").display(),
    );
    let environment = environment_file_lines(&environment_file);
    let mut keel = KeelProcess::start(
        &["--name=from-command-line".to_string()],
        &environment,
        dir.path(),
    );
    let endpoint = format!("127.0.0.1:{client}");
    keel.wait_healthy(&endpoint).await;
    assert_eq!(member_names(&endpoint).await, vec!["from-command-line"]);
    let scraped = get(&format!("http://127.0.0.1:{metrics}/metrics")).await;
    assert!(scraped.contains("etcd_server_has_leader 1"), "{scraped}");
    assert!(get(&format!("http://127.0.0.1:{metrics}/health"))
        .await
        .contains("true"));
    let log = keel.log();
    for flag in [
        "--max-wals",
        "--enable-v2",
        "--experimental-initial-corrupt-check",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains("no effect in keel") && line.contains(flag)),
            "{flag} not logged as without effect:\n{log}"
        );
    }
    let first_line: Value = serde_json::from_str(log.lines().next().expect("a log line"))
        .unwrap_or_else(|e| panic!("zap logs JSON lines ({e}):\n{log}"));
    assert!(
        first_line["fields"].is_object() || first_line["level"].is_string(),
        "{first_line}"
    );
}

#[tokio::test]
async fn keel_starts_from_an_etcd_yaml_configuration_file_which_replaces_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port().expect("port"), free_port().expect("port"));
    let config = dir.path().join("etcd.conf.yml");
    std::fs::write(
        &config,
        format!(
            "name: 'from-file'\n\
             data-dir: {data}\n\
             listen-client-urls: http://127.0.0.1:{client}\n\
             advertise-client-urls: http://127.0.0.1:{client}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\n\
             initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
             initial-cluster: from-file=http://127.0.0.1:{peer}\n\
             initial-cluster-state: 'new'\n\
             heartbeat-interval: 50\n\
             election-timeout: 500\n\
             snapshot-count: 10000\n\
             enable-v2: false\n\
             max-snapshots: 5\n\
             log-outputs: [stderr]\n\
             client-transport-security:\n  cert-file:\n  client-cert-auth: false\n\
             peer-transport-security:\n  client-cert-auth: false\n",
            data = dir.path().join("data").display(),
        ),
    )
    .expect("config file");
    let args = vec![
        format!("--config-file={}", config.display()),
        "--name=ignored".to_string(),
    ];
    let mut keel = KeelProcess::start(&args, &[], dir.path());
    let endpoint = format!("127.0.0.1:{client}");
    keel.wait_healthy(&endpoint).await;
    assert_eq!(member_names(&endpoint).await, vec!["from-file"]);
    assert!(keel.log().contains("--max-snapshots"), "{}", keel.log());
}

#[tokio::test]
async fn a_flag_asking_for_what_keel_does_not_serve_yet_is_refused_not_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, environment) in [
        ("--discovery=https://discovery.example/abc", vec![]),
        ("--force-new-cluster", vec![]),
        (
            "",
            vec![("ETCD_FORCE_NEW_CLUSTER".to_string(), "true".to_string())],
        ),
    ] {
        let args: Vec<String> = [flag]
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| f.to_string())
            .collect();
        let mut keel = KeelProcess::start(&args, &environment, dir.path());
        // Generous: a loaded CI machine starts a debug binary slowly; a
        // member that did not refuse would serve forever and fail this.
        let status = tokio::time::timeout(Duration::from_secs(60), keel.child.wait())
            .await
            .expect("exits instead of serving")
            .expect("status");
        assert!(!status.success(), "{flag} {environment:?} was not refused");
        assert!(keel.log().contains("does not serve this yet"), "{}", keel.log());
    }
}
