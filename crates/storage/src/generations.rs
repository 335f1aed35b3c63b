//! The generations of a named database, so that a database can be replaced
//! whole at runtime by a fresh copy (the keyspace's defragmentation: sled
//! never gives a file's free space back, a fresh database holds only what
//! was copied into it).
//!
//! Layout for a database named `<parent>/<name>`: generation 0 lives in
//! `<parent>/<name>`, generation n > 0 in `<parent>/<name>.<n>`, and the
//! pointer file `<parent>/<name>.current` holds the number of the generation
//! in use (no pointer file: generation 0).
//!
//! Invariant (the switch is atomic and durable): the pointer is replaced
//! only by writing `<name>.current.tmp`, syncing it, renaming it over the
//! pointer and syncing the parent directory, and callers switch only to a
//! generation whose contents they made durable first. A crash therefore
//! leaves the pointer naming either the old generation or the new, complete
//! one. Opening uses only the generation the pointer names and deletes every
//! other (a half-made copy, or a replaced generation whose deletion a crash
//! cut off).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// One generation of a named database.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    parent: PathBuf,
    name: String,
    number: u64,
}

impl Generation {
    /// The generation the pointer next to `path` names (0 without one).
    pub fn current(path: &Path) -> Result<Generation, StorageError> {
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut generation = Generation {
            parent,
            name,
            number: 0,
        };
        let pointer = generation.pointer_path();
        match std::fs::read_to_string(&pointer) {
            Ok(text) => {
                generation.number =
                    text.trim()
                        .parse()
                        .map_err(|_| StorageError::GenerationPointerUnreadable {
                            path: pointer.clone(),
                            found: text.clone(),
                        })?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::io("reading", pointer, error)),
        }
        Ok(generation)
    }

    /// The generation after this one.
    pub fn next(&self) -> Generation {
        Generation {
            number: self.number + 1,
            ..self.clone()
        }
    }

    /// Where this generation's files are.
    pub fn dir(&self) -> PathBuf {
        self.dir_of(self.number)
    }

    fn dir_of(&self, number: u64) -> PathBuf {
        if number == 0 {
            self.parent.join(&self.name)
        } else {
            self.parent.join(format!("{}.{number}", self.name))
        }
    }

    fn pointer_path(&self) -> PathBuf {
        self.parent.join(format!("{}.current", self.name))
    }

    /// The generation number a directory entry of the parent is, if it is
    /// one of this name's.
    fn number_of(&self, entry: &str) -> Option<u64> {
        if entry == self.name {
            return Some(0);
        }
        let suffix = entry.strip_prefix(&self.name)?.strip_prefix('.')?;
        suffix.parse().ok()
    }

    /// Deletes this generation's files, if any.
    pub fn delete_dir(&self) -> Result<(), StorageError> {
        let dir = self.dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "deleted a replaced database generation");
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StorageError::io("deleting", dir, error)),
        }
    }

    /// Deletes every generation of the name but this one, and a pointer
    /// write a crash cut off.
    pub fn delete_the_others(&self) -> Result<(), StorageError> {
        let entries = match std::fs::read_dir(&self.parent) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(StorageError::io("listing", &self.parent, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| StorageError::io("listing", &self.parent, error))?;
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            match self.number_of(&entry_name) {
                Some(number) if number != self.number => Generation {
                    number,
                    ..self.clone()
                }
                .delete_dir()?,
                _ => {}
            }
        }
        let unfinished = self.parent.join(format!("{}.current.tmp", self.name));
        match std::fs::remove_file(&unfinished) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StorageError::io("deleting", unfinished, error)),
        }
    }

    /// Points the name at this generation (the invariant at the top).
    pub fn make_current(&self) -> Result<(), StorageError> {
        let pointer = self.pointer_path();
        let unfinished = self.parent.join(format!("{}.current.tmp", self.name));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&unfinished)?;
            file.write_all(format!("{}\n", self.number).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&unfinished, &pointer)?;
            File::open(&self.parent)?.sync_all()
        };
        write().map_err(|error| StorageError::io("switching to", self.dir(), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Database;

    fn count_in(database: &Database) -> usize {
        database.sled().open_tree("t").expect("tree").len()
    }

    fn reopen(path: &Path) -> Database {
        for _ in 0..200 {
            match Database::open(path, 1024 * 1024) {
                Ok(database) => return database,
                Err(StorageError::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(error) => panic!("reopen: {error}"),
            }
        }
        panic!("the database stayed locked");
    }

    #[test]
    fn a_replacement_is_opened_by_name_only_once_current_and_the_rest_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mvcc");
        let first = Database::open(&path, 1024 * 1024).expect("open");
        let tree = first.sled().open_tree("t").expect("tree");
        for i in 0..100u32 {
            tree.insert(i.to_be_bytes(), vec![1u8; 1000]).expect("insert");
        }
        first.make_durable().expect("durable");

        let second = first.open_next_generation().expect("next generation");
        assert_eq!(second.path(), Some(dir.path().join("mvcc.1").as_path()));
        second
            .sled()
            .open_tree("t")
            .expect("tree")
            .insert(b"only", &b"one"[..])
            .expect("insert");
        second.make_durable().expect("durable");
        drop(tree);
        drop((first, second));
        // Not current yet: the name still opens generation 0, and the
        // half-made generation 1 is deleted.
        let first = reopen(&path);
        assert_eq!(count_in(&first), 100);
        assert!(!dir.path().join("mvcc.1").exists());

        let second = first.open_next_generation().expect("next generation");
        second
            .sled()
            .open_tree("t")
            .expect("tree")
            .insert(b"only", &b"one"[..])
            .expect("insert");
        second.make_durable().expect("durable");
        second.make_current().expect("switch");
        first.retire().expect("retire");
        assert!(!path.exists(), "the replaced generation's files are gone");
        drop(second);
        let reopened = reopen(&path);
        assert_eq!(count_in(&reopened), 1);
        assert_eq!(reopened.path(), Some(dir.path().join("mvcc.1").as_path()));
    }

    #[test]
    fn a_pointer_without_a_number_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mvcc.current"), "junk").expect("write");
        match Database::open(&dir.path().join("mvcc"), 1024 * 1024) {
            Err(StorageError::GenerationPointerUnreadable { found, .. }) => assert_eq!(found, "junk"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("opened a database its pointer does not name"),
        }
    }
}
