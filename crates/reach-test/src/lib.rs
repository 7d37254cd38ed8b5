//! Test support for reach: fixtures for real peers and the conformance suite.
//!
//! - [`Fixture`]: a backend under test plus a scratch directory on its target; [`LocalFixture`]
//!   is the local host's. Fixtures clean up on `Drop`, even when a test fails.
//! - [`conformance`]: the behaviours every backend must show, written once. The
//!   [`conformance_suite!`] macro turns them into one `#[tokio::test]` per check for a fixture.
//! - [`sshd::SshdFixture`]: a real OpenSSH `sshd` on a random loopback port.
//! - [`docker`]: the Docker engine, test images built on the spot, throwaway containers.
//! - [`foreign`]: an arm64 busybox from Debian, for a root file system of another
//!   architecture.
//! - [`registry`]: Debian's `docker-registry` on a loopback port, layered images pushed to it.
//! - [`broken`]: a backend wrapper with one deliberate defect, used to show that every check
//!   can fail.
//! - [`require_real`] / [`skip`]: a test whose real peer is missing fails when
//!   `REACH_REQUIRE_REAL=1` (as in CI) and otherwise says loudly what it skipped and why.
#![deny(missing_docs)]

pub mod broken;
pub mod conformance;
pub mod docker;
mod fixture;
pub mod foreign;
pub mod registry;
pub mod sshd;

pub use fixture::{Fixture, LocalFixture, PeerFixture};

/// Whether the tests run as root (who ignores permission bits, and whom sshd fixtures replace
/// by an unprivileged user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs a command to its end; its output if it succeeded, else an error with the command,
/// its status and its stderr.
pub(crate) fn run_checked(
    cmd: &mut std::process::Command,
) -> std::io::Result<std::process::Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether missing real peers must fail the run (`REACH_REQUIRE_REAL=1`, set by `.ci/run`).
pub fn require_real() -> bool {
    std::env::var("REACH_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

/// Reports a test that cannot run here. Under `REACH_REQUIRE_REAL=1` this is a failure;
/// otherwise the skip is printed (to stderr, which the test runner shows) with its reason.
///
/// # Panics
///
/// When `REACH_REQUIRE_REAL=1`: a missing peer must fail the run.
#[allow(clippy::panic)]
pub fn skip(what: &str, why: &str) {
    if require_real() {
        panic!("{what}: cannot run ({why}) and REACH_REQUIRE_REAL=1 forbids skipping");
    }
    eprintln!("SKIPPED {what}: {why}");
}
