//! reach-proot against Debian's real `proot`, in a busybox root file system built on the
//! spot: the whole conformance suite, and paths that try to leave the root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod ends;
mod escape;
mod foreign;

use std::path::Path;
use std::sync::Arc;

use reach_core::Destination;
use reach_proot::{ProotBackend, ProotOptions};
use reach_test::PeerFixture;

/// A busybox root file system in a temporary directory, its `/denied` immutable (so that
/// not even root may create entries there); `chattr -i` again on drop.
#[derive(Debug)]
pub struct RootDir {
    pub dir: tempfile::TempDir,
}

impl Drop for RootDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.dir.path().join("denied"))
            .status();
    }
}

/// Whether `proot` is installed; says so when not.
pub fn proot_or_skip(test: &str) -> bool {
    let found = std::process::Command::new("proot")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        reach_test::skip(test, "proot is not installed (apt-get install proot)");
    }
    found
}

/// A proot target on a fresh busybox root file system.
pub fn fixture(test: &str) -> Option<PeerFixture<RootDir>> {
    if !proot_or_skip(test) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("reach-proot-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    reach_test::docker::busybox_rootfs(root).expect("busybox root file system");
    std::fs::create_dir(root.join("scratch")).unwrap();
    std::fs::create_dir(root.join("denied")).unwrap();
    lock_down(&root.join("denied"));
    let destination = Destination::parse(&format!("proot://{}", root.display())).unwrap();
    let backend = ProotBackend::new(destination, ProotOptions::default()).unwrap();
    Some(PeerFixture {
        backend: Arc::new(backend),
        scratch: "/scratch".to_owned(),
        denied: "/denied".to_owned(),
        peer: RootDir { dir },
    })
}

/// No one may create entries in `dir`: immutable as root, read-only otherwise.
fn lock_down(dir: &Path) {
    if reach_test::is_root() {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chattr +i {}", dir.display());
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
}
