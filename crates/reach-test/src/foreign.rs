//! A root file system of another architecture: Debian's arm64 `busybox-static`, fetched once
//! with `apt-get download` (the machine must have the arm64 architecture added, as
//! `scripts/test` does) into a cache keyed by the package's version, for proot's
//! `qemu-aarch64-static` to run.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_checked;

/// The arm64 package's name, as apt takes it.
const PACKAGE: &str = "busybox-static:arm64";

/// Where fetched fixtures are kept between runs: `REACH_TEST_CACHE`, else
/// `/var/cache/reach-test` when it can be written (as root), else the user's cache.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REACH_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let system = Path::new("/var/cache/reach-test");
    if std::fs::create_dir_all(system).is_ok() && crate::is_root() {
        return system.to_owned();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("reach-test")
}

/// The arm64 busybox binary, fetched and unpacked on first use.
pub fn arm64_busybox() -> io::Result<PathBuf> {
    // The URI names the version: `'http://…/busybox-static_1%3a1.35.0-4+b1_arm64.deb' NAME …`.
    let uris = run_checked(Command::new("apt-get").args(["download", "--print-uris", PACKAGE]))
        .map_err(|e| {
            io::Error::other(format!(
                "{e} (the arm64 architecture must be known to apt: dpkg --add-architecture \
                 arm64 && apt-get update)"
            ))
        })?;
    let listing = String::from_utf8_lossy(&uris.stdout).into_owned();
    let deb = listing
        .split_whitespace()
        .nth(1)
        .filter(|name| name.ends_with(".deb"))
        .ok_or_else(|| io::Error::other(format!("apt-get download --print-uris: {listing:?}")))?;
    let dir = cache_dir().join(deb.trim_end_matches(".deb"));
    let busybox = dir.join("bin/busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    // Fetched and unpacked beside, then renamed: a cut-off fetch leaves no half fixture.
    let parent = cache_dir();
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::tempdir_in(&parent)?;
    run_checked(
        Command::new("apt-get")
            .args(["download", "-q", PACKAGE])
            .current_dir(work.path()),
    )?;
    let unpacked = work.path().join("tree");
    run_checked(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(work.path().join(deb))
            .arg(&unpacked),
    )?;
    match std::fs::rename(&unpacked, &dir) {
        Ok(()) => {}
        // Another test got there first.
        Err(_) if busybox.is_file() => {}
        Err(e) => return Err(e),
    }
    Ok(busybox)
}
