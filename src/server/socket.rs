//! The socket file: its directory, stale-socket replacement, owner group and mode.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::unistd::Gid;
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::access::{lookup_gid, DEFAULT_GROUP};

/// Binds the socket at `path` for [`serve`](super::serve): creates the parent directory (0755) if missing,
/// replaces a stale socket (never a live one, never another kind of file), then makes it
/// `root:<group>` 0660. When the group does not exist it warns and leaves the socket 0600, so
/// only root can connect: failing closed rather than opening it to gid 0.
/// Must be called inside a tokio runtime.
pub fn bind(path: &Path, group: Option<&str>) -> io::Result<UnixListener> {
    let group_name = group.unwrap_or(DEFAULT_GROUP);
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .and_then(|()| std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| context(e, "cannot create the socket directory", parent))?;
    }
    remove_stale(path)?;
    let listener = UnixListener::bind(path).map_err(|e| context(e, "cannot bind", path))?;
    let mode = match lookup_gid(group_name) {
        Some(gid) => {
            nix::unistd::chown(path, None, Some(Gid::from_raw(gid))).map_err(|e| {
                context(
                    e.into(),
                    &format!("cannot chown to group {group_name}:"),
                    path,
                )
            })?;
            0o660
        }
        None => {
            warn!(
                path = %path.display(),
                group = group_name,
                "group does not exist: socket left root-only (0600); create the group to let operators read status"
            );
            0o600
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| context(e, "cannot chmod", path))?;
    info!(path = %path.display(), group = group_name, mode = format!("{mode:o}"), "socket ready");
    Ok(listener)
}

/// Removes a socket left by a daemon that is gone; refuses a live socket or any other file.
fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(context(e, "cannot inspect", path)),
        // Never followed: binding or removing through it could reach any file on the host.
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is a symlink; refusing to follow or replace it",
                path.display()
            ),
        )),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another oomguard daemon is listening there",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| context(e, "cannot remove the stale socket", path))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        )),
    }
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
