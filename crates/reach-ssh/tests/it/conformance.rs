//! The whole conformance suite, unchanged, against a real sshd.

use std::sync::Arc;

use reach_core::{Backend, Destination};
use reach_ssh::{SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;
use reach_test::Fixture;

/// An sshd, a backend connected to it, and directories on the server for the checks.
struct SshFixture {
    backend: Arc<dyn Backend>,
    scratch: String,
    denied: String,
    // Last, so that it outlives the backend's connection while dropping.
    _sshd: SshdFixture,
}

impl Fixture for SshFixture {
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

async fn fixture() -> Option<SshFixture> {
    let sshd = SshdFixture::start_or_skip("reach-ssh conformance")?;
    let options = SshOptions {
        identity: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..SshOptions::default()
    };
    let destination = Destination::parse(&sshd.destination()).expect("destination");
    let backend = Arc::new(SshBackend::new(destination, options).expect("backend"));
    Some(SshFixture {
        backend,
        scratch: sshd.user_dir("scratch").expect("scratch dir"),
        denied: sshd.denied_dir("denied").expect("denied dir"),
        _sshd: sshd,
    })
}

reach_test::conformance_suite!(fixture());

#[test]
fn every_check_is_generated() {
    let all: Vec<&str> = reach_test::conformance::CHECKS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(GENERATED_CHECKS, all.as_slice());
}
