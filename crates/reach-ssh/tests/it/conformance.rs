//! The whole conformance suite, unchanged, against a real sshd.

use std::sync::Arc;

use reach_core::Destination;
use reach_ssh::{SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;
use reach_test::PeerFixture;

async fn fixture() -> Option<PeerFixture<SshdFixture>> {
    let sshd = SshdFixture::start_or_skip("reach-ssh conformance")?;
    let options = SshOptions {
        identity: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..SshOptions::default()
    };
    let destination = Destination::parse(&sshd.destination()).expect("destination");
    let backend = Arc::new(SshBackend::new(destination, options).expect("backend"));
    Some(PeerFixture {
        backend,
        scratch: sshd.user_dir("scratch").expect("scratch dir"),
        denied: sshd.denied_dir("denied").expect("denied dir"),
        peer: sshd,
    })
}

reach_test::conformance_suite!(fixture());
