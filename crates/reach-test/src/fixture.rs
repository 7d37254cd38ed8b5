//! Fixtures: a backend under test and a scratch directory on its target.

use std::sync::Arc;

use reach_core::Backend;
use reach_local::LocalBackend;

/// What a conformance check needs from a backend's test setup.
pub trait Fixture: Send + Sync {
    /// The backend under test.
    fn backend(&self) -> Arc<dyn Backend>;
    /// An empty directory on the target, writable by the backend's user, removed on drop.
    fn scratch(&self) -> String;
    /// A directory on the target in which the backend's user may not create entries.
    fn denied_dir(&self) -> String;
}

/// The local host, with a temporary scratch directory.
#[derive(Debug)]
pub struct LocalFixture {
    backend: Arc<dyn Backend>,
    scratch: tempfile::TempDir,
    denied: tempfile::TempDir,
}

impl LocalFixture {
    /// A fresh fixture.
    ///
    /// For the "permission denied" checks it needs a directory the current user cannot write
    /// to. Root ignores permission bits, so as root the directory is made immutable
    /// (`chattr +i`, which needs `CAP_LINUX_IMMUTABLE` and a file system that supports it);
    /// otherwise it is mode 0555.
    pub fn new() -> std::io::Result<Self> {
        Self::with_backend(Arc::new(LocalBackend::new()))
    }

    /// A fixture around another backend that works on local files (the broken wrapper).
    pub fn with_backend(backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let scratch = tempfile::Builder::new().prefix("reach-test-").tempdir()?;
        let denied = tempfile::Builder::new().prefix("reach-denied-").tempdir()?;
        if crate::is_root() {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(denied.path())
                .status()?;
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "`chattr +i {}` failed: as root, the permission-denied checks need an \
                     immutable directory (ext4/xfs/btrfs and CAP_LINUX_IMMUTABLE)",
                    denied.path().display()
                )));
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(denied.path(), std::fs::Permissions::from_mode(0o555))?;
        }
        Ok(LocalFixture {
            backend,
            scratch,
            denied,
        })
    }
}

impl Drop for LocalFixture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.denied.path())
            .stderr(std::process::Stdio::null())
            .status();
        use std::os::unix::fs::PermissionsExt;
        let _ =
            std::fs::set_permissions(self.denied.path(), std::fs::Permissions::from_mode(0o755));
    }
}

impl Fixture for LocalFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    fn scratch(&self) -> String {
        self.scratch.path().to_string_lossy().into_owned()
    }

    fn denied_dir(&self) -> String {
        self.denied.path().to_string_lossy().into_owned()
    }
}

/// A backend whose real peer (a server process, a container) is kept alive by `peer`, with
/// the directories the checks use. Fields drop in order, so the peer outlives the backend.
#[derive(Debug)]
pub struct PeerFixture<P> {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// [`Fixture::scratch`].
    pub scratch: String,
    /// [`Fixture::denied_dir`].
    pub denied: String,
    /// Whatever must live as long as the backend (removed or stopped on drop).
    pub peer: P,
}

impl<P: Send + Sync> Fixture for PeerFixture<P> {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    fn scratch(&self) -> String {
        self.scratch.clone()
    }

    fn denied_dir(&self) -> String {
        self.denied.clone()
    }
}
