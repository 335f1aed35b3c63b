//! Finding the workspace's built binaries (`keel`, `keelctl`, ...) from a
//! test executable: `$KEEL_BIN_DIR`, else the target directory the test
//! itself was built into (`target/<profile>/deps/<test>` -> `target/<profile>/`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("binary {name:?} not found in {searched:?}; build it first (`cargo build --workspace --bins`, as test.sh does)")]
pub struct BinaryError {
    pub name: String,
    pub searched: Vec<PathBuf>,
}

/// The path of the workspace binary `name`.
pub fn built_binary(name: &str) -> Result<PathBuf, BinaryError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("KEEL_BIN_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join(name));
        }
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| BinaryError {
            name: name.to_string(),
            searched: candidates,
        })
}
