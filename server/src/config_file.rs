//! etcd's YAML configuration file (`--config-file`): its keys are etcd's
//! flag names (`name`, `data-dir`, `initial-cluster`, ...), and the TLS
//! settings sit in the `client-transport-security` and
//! `peer-transport-security` maps. As in etcd, a configuration file
//! replaces the command line: keel turns the file into the member's flags
//! (`--key=value`; a list becomes a comma-separated value) and parses only
//! those. Keys that are no flag of keel's are reported, as etcd ignores them.
//! Unlike etcd, an `ETCD_*` environment variable still fills a setting the
//! file leaves out.

use std::path::Path;

use anyhow::{anyhow, Context};
use yaml_rust2::{Yaml, YamlLoader};

/// The member's flags from a configuration file, and the keys it ignored.
pub struct FlagsFromFile {
    pub arguments: Vec<String>,
    pub ignored_keys: Vec<String>,
}

/// Reads `path` into `--key=value` arguments for the flags named in
/// `known_flags` (long names without dashes).
pub fn flags_from_config_file(path: &Path, known_flags: &[String]) -> anyhow::Result<FlagsFromFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading --config-file {}", path.display()))?;
    let documents = YamlLoader::load_from_str(&text)
        .map_err(|e| anyhow!("--config-file {}: not YAML: {e}", path.display()))?;
    let mut flags = FlagsFromFile {
        arguments: Vec::new(),
        ignored_keys: Vec::new(),
    };
    let Some(document) = documents.into_iter().next() else {
        return Ok(flags);
    };
    let Yaml::Hash(settings) = document else {
        return Err(anyhow!("--config-file {}: not a map of settings", path.display()));
    };
    for (key, value) in settings {
        let key =
            scalar_text(&key).ok_or_else(|| anyhow!("--config-file: a key that is not text: {key:?}"))?;
        match (key.as_str(), value) {
            ("client-transport-security", Yaml::Hash(security)) => {
                add_security(&mut flags, "", security, known_flags)?;
            }
            ("peer-transport-security", Yaml::Hash(security)) => {
                add_security(&mut flags, "peer-", security, known_flags)?;
            }
            (_, value) => add_setting(&mut flags, &key, &value, known_flags)?,
        }
    }
    Ok(flags)
}

fn add_security(
    flags: &mut FlagsFromFile,
    prefix: &str,
    security: yaml_rust2::yaml::Hash,
    known_flags: &[String],
) -> anyhow::Result<()> {
    for (key, value) in security {
        let key =
            scalar_text(&key).ok_or_else(|| anyhow!("--config-file: a key that is not text: {key:?}"))?;
        // `client-cert-auth` is `--client-cert-auth` / `--peer-client-cert-auth`,
        // and so on for the other settings of the map.
        let flag = format!("{prefix}{key}");
        add_setting(flags, &flag, &value, known_flags)?;
    }
    Ok(())
}

fn add_setting(
    flags: &mut FlagsFromFile,
    flag: &str,
    value: &Yaml,
    known_flags: &[String],
) -> anyhow::Result<()> {
    if !known_flags.iter().any(|known| known == flag) {
        flags.ignored_keys.push(flag.to_string());
        return Ok(());
    }
    let text = match value {
        Yaml::Null => return Ok(()),
        Yaml::Array(items) => items
            .iter()
            .map(|item| scalar_text(item).ok_or_else(|| anyhow!("--config-file: {flag}: a list of lists")))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(","),
        other => scalar_text(other).ok_or_else(|| anyhow!("--config-file: {flag}: not a plain value"))?,
    };
    flags.arguments.push(format!("--{flag}={text}"));
    Ok(())
}

fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(number) => Some(number.to_string()),
        Yaml::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "name",
            "data-dir",
            "log-outputs",
            "heartbeat-interval",
            "cert-file",
            "peer-client-cert-auth",
            "enable-v2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn settings_become_flags_and_unknown_keys_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(
            &path,
            "name: 'infra0'\ndata-dir: /var/lib/etcd\nheartbeat-interval: 100\nenable-v2: false\n\
             log-outputs: [stderr, /tmp/x.log]\nwal-dir:\nsomething-else: 3\n\
             client-transport-security:\n  cert-file: ''\npeer-transport-security:\n  client-cert-auth: false\n",
        )
        .expect("write");
        let flags = flags_from_config_file(&path, &known()).expect("parses");
        assert_eq!(
            flags.arguments,
            vec![
                "--name=infra0",
                "--data-dir=/var/lib/etcd",
                "--heartbeat-interval=100",
                "--enable-v2=false",
                "--log-outputs=stderr,/tmp/x.log",
                "--cert-file=",
                "--peer-client-cert-auth=false",
            ]
        );
        assert_eq!(flags.ignored_keys, vec!["wal-dir", "something-else"]);
    }

    #[test]
    fn a_file_that_is_not_a_map_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yml");
        std::fs::write(&path, "- a\n- b\n").expect("write");
        assert!(flags_from_config_file(&path, &known()).is_err());
        std::fs::write(&path, "name: [unclosed\n").expect("write");
        assert!(flags_from_config_file(&path, &known()).is_err());
    }
}
