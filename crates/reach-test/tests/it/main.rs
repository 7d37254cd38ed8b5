//! reach-test's own tests: the conformance suite on the local backend, and the proof that
//! every check fails on a backend with the defect it names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reach_local::LocalBackend;
use reach_test::broken::BrokenBackend;
use reach_test::conformance::{self, Ctx, CHECKS};
use reach_test::{Fixture, LocalFixture};

mod local {
    async fn fixture() -> Option<reach_test::LocalFixture> {
        Some(reach_test::LocalFixture::new().expect("local fixture"))
    }

    reach_test::conformance_suite!(fixture());
}

/// Each check, against the local backend broken in the way the check is meant to catch,
/// must fail. Prints what each check saw, which is the "deliberately broken backend" run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_fails_on_a_broken_backend() {
    let mut passed_anyway = Vec::new();
    for (name, defect) in CHECKS {
        let broken = BrokenBackend::new(Arc::new(LocalBackend::new()), *defect);
        let fixture = LocalFixture::with_backend(Arc::new(broken)).unwrap();
        match conformance::run(name, &Ctx::new(&fixture)).await {
            Err(failure) => println!("{name} with {defect:?}: FAILED as it must: {failure}"),
            Ok(()) => passed_anyway.push(format!("{name} with {defect:?}")),
        }
        let _ = fixture.scratch();
    }
    assert!(
        passed_anyway.is_empty(),
        "checks that passed on a broken backend: {passed_anyway:?}"
    );
}

/// The sshd fixture is a real server: the real `ssh` client runs a command through it with
/// the fixture's key and known_hosts, and gets the remote exit code and output.
#[test]
fn sshd_fixture_serves_the_real_ssh_client() {
    let Some(sshd) =
        reach_test::sshd::SshdFixture::start_or_skip("sshd_fixture_serves_the_real_ssh_client")
    else {
        return;
    };
    let out = sshd
        .ssh_command()
        .arg("printf \"$(id -un) $REACH_X\"; printf err >&2; exit 3")
        .env("REACH_X", "not sent without SendEnv")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "ssh said: {}\nsshd log: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{} ", sshd.user())
    );
    assert_eq!(out.stderr, b"err");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    let port = sshd.port();
    drop(sshd);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "sshd still listens after drop"
    );
}
