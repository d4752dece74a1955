//! Group files: how members on one host, or sharing a file system, find
//! each other (Mochi's SSG and Flock group files, in JSON).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::error::{MembershipError, Result};
use super::wire::WIRE_VERSION;

/// The contents of a group file:
///
/// ```json
/// {"group": "kv", "wire_version": 1, "members": ["tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000"]}
/// ```
///
/// `members` are the live members as the file's last writer saw them, in
/// the form `Engine::lookup` takes (address sets included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// The group's name.
    pub group: String,
    /// The wire version of the members that wrote it
    /// ([`crate::WIRE_VERSION`]).
    pub wire_version: u16,
    /// The members' addresses, as known when it was written.
    pub members: Vec<String>,
}

impl GroupFile {
    /// Reads and checks the group file at `path`.
    ///
    /// # Errors
    /// [`MembershipError::FileMissing`], [`MembershipError::FileUnreadable`],
    /// [`MembershipError::FileMalformed`] (not JSON, not a group file, an
    /// empty group name, another wire version), each naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MembershipError::FileMissing {
                    path: path.to_owned(),
                })
            }
            Err(source) => {
                return Err(MembershipError::FileUnreadable {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let malformed = |reason: String| MembershipError::FileMalformed {
            path: path.to_owned(),
            reason,
        };
        let file: Self = serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?;
        if file.wire_version != WIRE_VERSION {
            return Err(malformed(format!(
                "it was written by members of wire version {}, and this one speaks {WIRE_VERSION}",
                file.wire_version
            )));
        }
        if file.group.is_empty() {
            return Err(malformed("the group's name is empty".to_owned()));
        }
        Ok(file)
    }

    /// Writes the file at `path` atomically: into a temporary file beside
    /// it, then renamed over it, so that a reader sees the old or the new
    /// contents, never a part.
    ///
    /// # Errors
    /// [`MembershipError::FileWrite`], naming the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let temp = self.write_temp(path)?;
        std::fs::rename(&temp, path).map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            MembershipError::FileWrite {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Writes the file at `path` only if there is none, atomically (a
    /// temporary file, then a hard link, which fails if `path` exists).
    /// `Ok(false)` when another wrote it first.
    ///
    /// # Errors
    /// [`MembershipError::FileWrite`], naming the file.
    pub(crate) fn create_new(&self, path: &Path) -> Result<bool> {
        let temp = self.write_temp(path)?;
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(MembershipError::FileWrite {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The contents in a new temporary file beside `path`, flushed to disk.
    fn write_temp(&self, path: &Path) -> Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let failed = |source| MembershipError::FileWrite {
            path: path.to_owned(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| failed(e.into()))?;
        json.push(b'\n');
        let written = std::fs::File::create(&temp).and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(failed(e));
        }
        Ok(temp)
    }
}

/// The name of the group a new group file at `path` makes: the file's
/// name without its extension (`/tmp/kv.json` makes group `kv`).
pub(crate) fn group_name_of(path: &Path) -> Result<String> {
    match path.file_stem().map(|s| s.to_string_lossy().into_owned()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(MembershipError::FileMalformed {
            path: path.to_owned(),
            reason: "a new group takes its name from the file's, and this path names no file"
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("courier-group-file-{}-{name}", std::process::id()))
    }

    #[test]
    fn written_files_read_back_and_create_new_does_not_overwrite() {
        let path = temp_path("rw.json");
        let _ = std::fs::remove_file(&path);
        let file = GroupFile {
            group: "kv".into(),
            wire_version: WIRE_VERSION,
            members: vec!["mem://a".into(), "tcp://127.0.0.1:1,mem://b".into()],
        };
        assert!(file.create_new(&path).unwrap());
        let other = GroupFile {
            members: vec![],
            ..file.clone()
        };
        assert!(!other.create_new(&path).unwrap());
        assert_eq!(GroupFile::read(&path).unwrap(), file);
        other.write(&path).unwrap();
        assert_eq!(GroupFile::read(&path).unwrap(), other);
        // No temporary file left behind.
        let dir = path.parent().unwrap();
        let stem = path.file_name().unwrap().to_string_lossy().into_owned();
        let leftovers = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&format!(".{stem}.")) && n.ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let missing = temp_path("missing.json");
        let e = GroupFile::read(&missing).unwrap_err();
        assert!(matches!(e, MembershipError::FileMissing { .. }));
        assert!(e.to_string().contains(&missing.display().to_string()));

        let path = temp_path("bad.json");
        for (text, says) in [
            ("not json", "expected"),
            (r#"{"group": "g", "wire_version": 1}"#, "members"),
            (
                r#"{"group": "", "wire_version": 1, "members": []}"#,
                "empty",
            ),
            (
                r#"{"group": "g", "wire_version": 99, "members": []}"#,
                "wire version 99",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = GroupFile::read(&path).unwrap_err();
            let message = e.to_string();
            assert!(
                matches!(e, MembershipError::FileMalformed { .. }),
                "{message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(says), "{message}");
        }
        std::fs::remove_file(&path).unwrap();

        // A directory is no file.
        let dir = temp_path("dir.json");
        std::fs::create_dir_all(&dir).unwrap();
        let e = GroupFile::read(&dir).unwrap_err();
        assert!(matches!(e, MembershipError::FileUnreadable { .. }), "{e}");
        assert!(e.to_string().contains(&dir.display().to_string()));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_new_group_is_named_after_its_file() {
        assert_eq!(group_name_of(Path::new("/tmp/kv.json")).unwrap(), "kv");
        assert_eq!(group_name_of(Path::new("members")).unwrap(), "members");
        assert!(group_name_of(Path::new("/")).is_err());
    }
}
