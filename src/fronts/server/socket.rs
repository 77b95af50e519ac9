//! Listening sockets a front binds itself, when systemd passed none: a
//! stale file is replaced but never a live daemon's socket, and the mode
//! and group are applied before the first connection is accepted.
//!
//! A group is given with chown only where the process may chown
//! (`crate::may_chown`): under libvirt's virtlogd.service a chown kills the
//! process, so there the group is left and said so.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// Why a socket could not listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another guestlogd is listening on {0}")]
    InUse(PathBuf),
    #[error("socket group {0:?} does not exist")]
    NoGroup(String),
}

/// Binds the socket, replacing a stale one but never a live daemon's, and
/// applies `mode` and `group`.
pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, BindError> {
    let failed = |source| BindError::Bind {
        path: path.to_owned(),
        source,
    };
    if UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse(path.to_owned()));
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let std = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)?;
    if let Some(group) = group {
        let gid = match group.parse::<u32>() {
            Ok(gid) => nix::unistd::Gid::from_raw(gid),
            Err(_) => {
                nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| BindError::NoGroup(group.to_owned()))?
                    .gid
            }
        };
        if crate::may_chown() {
            nix::unistd::chown(path, None, Some(gid)).map_err(|e| failed(e.into()))?;
        } else {
            tracing::warn!(
                socket = %path.display(),
                group,
                "socket group not applied: this process may not chown (virtlogd.service's \
                 sandbox); it applies at the next start under guestlogd's own settings"
            );
        }
    }
    listen_on(std, path)
}

/// A listening socket, non-blocking, for tokio.
pub fn listen_on(
    std: std::os::unix::net::UnixListener,
    path: &Path,
) -> Result<UnixListener, BindError> {
    let failed = |source| BindError::Bind {
        path: path.to_owned(),
        source,
    };
    std.set_nonblocking(true).map_err(failed)?;
    UnixListener::from_std(std).map_err(failed)
}
