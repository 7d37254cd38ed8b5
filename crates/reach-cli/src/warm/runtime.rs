//! Where the daemon lives: this build's socket, lock and log in a private runtime directory.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The name of this build's daemon socket in the runtime directory.
pub(crate) fn socket_name() -> String {
    format!("daemon-{}.sock", build_id())
}

/// Held (flock) by this build's running daemon, so that two starting at once do not both
/// serve.
pub(crate) fn lock_name() -> String {
    format!("daemon-{}.lock", build_id())
}

/// Names this build of reach: its version and the executable file (device, inode, size,
/// modification time). The daemon's socket and lock carry it, so a daemon started by another
/// build (before an upgrade, or a development build beside the installed one) never serves
/// this one: each build has its own daemon, and an old one exits once idle.
pub fn build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut hasher = Sha256::new();
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        if let Some(meta) = std::env::current_exe()
            .ok()
            .and_then(|exe| std::fs::metadata(exe).ok())
        {
            let mtime = meta.mtime_nsec() as u128 + (meta.mtime() as u128) * 1_000_000_000;
            hasher.update(format!(
                "{}:{}:{}:{mtime}",
                meta.dev(),
                meta.ino(),
                meta.len()
            ));
        }
        hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// The sockets of every build's daemon in `dir` (this build's among them, if it runs).
pub(crate) fn daemon_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("daemon") && n.ends_with(".sock"))
                })
                .collect()
        })
        .unwrap_or_default();
    sockets.sort();
    sockets
}
/// The daemon's stderr: its start, stop and refusals.
pub(crate) const LOG: &str = "daemon.log";

/// This process's user id.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The private directory holding the daemon's socket: `$XDG_RUNTIME_DIR/reach`, else
/// `/run/user/UID/reach`, else `$TMPDIR/reach-UID`. Created 0700; refused unless it is a
/// directory of ours that no one else can enter.
pub fn runtime_dir() -> Result<PathBuf, String> {
    let me = uid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base).join("reach"),
        None => {
            let run = PathBuf::from(format!("/run/user/{me}"));
            match std::fs::metadata(&run) {
                Ok(meta) if meta.is_dir() && meta.uid() == me => run.join("reach"),
                _ => std::env::temp_dir().join(format!("reach-{me}")),
            }
        }
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists) => {}
        Err(e) => return Err(format!("cannot create `{}`: {e}", dir.display())),
    }
    check_private(&dir, me)?;
    Ok(dir)
}

/// Refuses a directory that is a symlink, not ours, or open to others.
pub(crate) fn check_private(dir: &Path, me: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect `{}`: {e}", dir.display()))?;
    let fix = "remove it, or set XDG_RUNTIME_DIR to a private directory";
    if !meta.is_dir() {
        return Err(format!("`{}` is not a directory: {fix}", dir.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "`{}` belongs to uid {}, not to this user (uid {me}): {fix}",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "`{}` has mode {mode:o}, open to other users: {fix} (it must be 0700)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_or_foreign_runtime_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&open)
            .expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = check_private(&open, uid()).expect_err("0755 refused");
        assert!(err.contains("mode 755"), "{err}");
        let err = check_private(&open, uid() + 1).expect_err("foreign refused");
        assert!(err.contains("belongs to uid"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let err = check_private(&link, uid()).expect_err("symlink refused");
        assert!(err.contains("not a directory"), "{err}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(check_private(&open, uid()), Ok(()));
    }
}
