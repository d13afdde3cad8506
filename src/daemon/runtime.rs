//! The runtime directory (the socket's directory, RuntimeDirectory= under systemd) and the
//! state.json kept in it across daemon restarts.
//!
//! The directory is opened once, without following a symlink, and refused unless root owns it
//! and nobody else may write to it; state.json is then only ever reached through that open
//! directory (openat/renameat/unlinkat, never a path), created with O_EXCL|O_NOFOLLOW. A local
//! user who could plant a symlink there could otherwise make the root daemon write or read
//! any file on the host.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use tracing::warn;

use crate::supervisor::SavedState;

const STATE: &str = "state.json";
/// Written first, then renamed over STATE, so a crash never leaves half a file.
const STATE_TMP: &str = "state.json.tmp";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("cannot create the runtime directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot open the runtime directory {path} (a symlink is refused): {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "refusing the runtime directory {path}: owned by uid {uid} with mode {mode:o}; it must be \
         owned by root and writable by root only (0755 or stricter)"
    )]
    Unsafe { path: PathBuf, uid: u32, mode: u32 },
}

/// Opens a directory for reading, refusing a symlink in its last component (ELOOP).
pub(super) fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// The open runtime directory.
pub struct RuntimeDir {
    dir: File,
    path: PathBuf,
}

impl RuntimeDir {
    /// Opens `path` (creating it 0755 when missing) and checks who may write to it.
    pub fn open(path: &Path) -> Result<RuntimeDir, RuntimeDirError> {
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|source| RuntimeDirError::Create {
                    path: path.into(),
                    source,
                })?;
        }
        let dir = open_dir(path).map_err(|source| RuntimeDirError::Open {
            path: path.into(),
            source,
        })?;
        let meta = dir.metadata().map_err(|source| RuntimeDirError::Open {
            path: path.into(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 || mode & 0o022 != 0 {
            return Err(RuntimeDirError::Unsafe {
                path: path.into(),
                uid: meta.uid(),
                mode,
            });
        }
        Ok(RuntimeDir {
            dir,
            path: path.into(),
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE)
    }

    /// The state a previous daemon saved. Missing: empty. Unreadable or not a regular file
    /// (a symlink is refused): logged, and empty, so every counter starts again; the workers
    /// are still found in their groups.
    pub fn load_state(&self) -> SavedState {
        let text = match self.read_state() {
            Ok(Some(text)) => text,
            Ok(None) => return SavedState::new(),
            Err(e) => {
                warn!("ignoring {}: {e}", self.state_path().display());
                return SavedState::new();
            }
        };
        serde_json::from_slice(&text).unwrap_or_else(|e| {
            warn!("ignoring unreadable {}: {e}", self.state_path().display());
            SavedState::new()
        })
    }

    fn read_state(&self) -> io::Result<Option<Vec<u8>>> {
        self.read_named(STATE)
    }

    /// The path of a file in this directory, for messages.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads `name` in this directory (never through a symlink); None when it does not exist.
    pub fn read_named(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = match openat(Some(self.dir.as_raw_fd()), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // SAFETY: openat just returned this fd and nothing else owns it.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Writes state.json: a new temporary file (never an existing one, never through a
    /// symlink), then renamed over the old state. 0600: it lists every worker's pids and
    /// children, which is nobody else's business (the CLI reads status over the socket).
    pub fn save_state(&self, state: &SavedState) -> io::Result<()> {
        let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
        self.write_named(STATE, STATE_TMP, &bytes, 0o600)
    }

    /// Moves `name` aside to `name.corrupt` (replacing an older one), so a file the daemon could
    /// not read is kept for a person to look at and never read again.
    pub fn set_aside(&self, name: &str) -> io::Result<PathBuf> {
        let dirfd = Some(self.dir.as_raw_fd());
        let aside = format!("{name}.corrupt");
        renameat(dirfd, name, dirfd, aside.as_str())?;
        Ok(self.path.join(aside))
    }

    /// Writes `name` atomically: a new `tmp` (never an existing file, never through a
    /// symlink), then renamed over `name`.
    pub fn write_named(&self, name: &str, tmp: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let dirfd = Some(self.dir.as_raw_fd());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(mode);
        let fd = match openat(dirfd, tmp, flags, mode) {
            // Left by a crash (or planted): unlinkat removes the name itself, never a target.
            Err(Errno::EEXIST) => {
                unlinkat(dirfd, tmp, UnlinkatFlags::NoRemoveDir)?;
                openat(dirfd, tmp, flags, mode)?
            }
            other => other?,
        };
        // SAFETY: openat just returned this fd and nothing else owns it.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The data reaches the disk before the rename does: after a power cut the name holds
        // the old state or the new one, never an empty file (ext4/xfs may reorder otherwise).
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        drop(file);
        if let Err(e) = written.and_then(|()| Ok(renameat(dirfd, tmp, dirfd, name)?)) {
            let _ = unlinkat(dirfd, tmp, UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        // And the rename itself: a failure here only loses this save, never the old file.
        if let Err(e) = self.dir.sync_all() {
            warn!("cannot sync {}: {e}", self.path.display());
        }
        Ok(())
    }

    /// After a full stop: nothing to adopt, nothing to restore.
    pub fn remove_state(&self) {
        match unlinkat(
            Some(self.dir.as_raw_fd()),
            STATE,
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => warn!("cannot remove {}: {e}", self.state_path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn state(n: u32) -> SavedState {
        let json = format!(
            r#"{{"web/0":{{"state":"running","main_pid":{n},"restarts":1,"restarts_by_reason":{{}},
            "last_restart_reason":null,"last_restart_at":null,"oom_kills":0}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn state_round_trips_and_a_leftover_temp_file_is_replaced() {
        if !is_root() {
            crate::testing::skip_without_root("needs root (the directory must be root-owned)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::open(tmp.path()).unwrap();
        assert!(dir.load_state().is_empty());
        std::fs::write(tmp.path().join(STATE_TMP), b"half").unwrap();
        dir.save_state(&state(42)).unwrap();
        assert_eq!(dir.load_state(), state(42));
        assert!(!tmp.path().join(STATE_TMP).exists());
        // Pids and children are nobody else's business.
        let mode = std::fs::metadata(dir.state_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "state.json mode {mode:o}");
        dir.remove_state();
        assert!(!dir.state_path().exists());
    }

    #[test]
    fn symlinks_are_never_followed() {
        if !is_root() {
            crate::testing::skip_without_root("needs root (the directory must be root-owned)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The runtime directory itself as a symlink: refused.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        let e = RuntimeDir::open(&link)
            .err()
            .expect("a symlinked directory");
        assert!(e.to_string().contains("symlink"), "{e}");

        let dir = RuntimeDir::open(&run).unwrap();
        // Planted symlinks at both names: the victim is neither read nor written.
        std::os::unix::fs::symlink(&victim, run.join(STATE)).unwrap();
        std::os::unix::fs::symlink(&victim, run.join(STATE_TMP)).unwrap();
        assert!(dir.load_state().is_empty());
        dir.save_state(&state(7)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(run.join(STATE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(dir.load_state(), state(7));
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        if !is_root() {
            crate::testing::skip_without_root("needs root (chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = RuntimeDir::open(&open).err().expect("a 1777 directory");
        assert!(e.to_string().contains("mode 1777"), "{e}");
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), None).unwrap();
        let e = RuntimeDir::open(&theirs)
            .err()
            .expect("a directory owned by uid 1000");
        assert!(e.to_string().contains("uid 1000"), "{e}");
        // Created when missing, 0755, and accepted.
        let fresh = tmp.path().join("a/b");
        RuntimeDir::open(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }
}
