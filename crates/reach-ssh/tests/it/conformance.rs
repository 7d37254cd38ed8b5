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

#[test]
fn every_check_is_generated() {
    let all: Vec<&str> = reach_test::conformance::CHECKS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(GENERATED_CHECKS, all.as_slice());
}

/// One connection carries every command and file operation: a command whose output nobody
/// reads stops, and the rest goes on beside it (russh, as patched in vendor/russh, reopens a
/// channel's window as its data is read, and its connection loop never waits for a reader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_command_stalls_nothing_else_on_the_connection() {
    let Some(fixture) = fixture().await else {
        return;
    };
    let cx = reach_test::conformance::Ctx::new(&fixture);
    if let Err(failure) = reach_test::conformance::unread_stalls_nothing_else(&cx).await {
        panic!("{failure}");
    }
}
