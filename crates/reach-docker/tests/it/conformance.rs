//! The whole conformance suite, unchanged, in a busybox container through the real engine.

use std::sync::Arc;

use reach_core::Destination;
use reach_docker::{DockerBackend, DockerOptions};
use reach_test::docker::ContainerFixture;
use reach_test::PeerFixture;

pub async fn fixture() -> Option<PeerFixture<ContainerFixture>> {
    if !reach_test::docker::available_or_skip("reach-docker conformance") {
        return None;
    }
    let container = ContainerFixture::busybox().expect("busybox container");
    let destination = Destination::parse(&container.destination(None)).expect("destination");
    let backend =
        Arc::new(DockerBackend::new(destination, DockerOptions::default()).expect("backend"));
    Some(PeerFixture {
        backend,
        scratch: container.scratch(None).expect("scratch dir"),
        // A read-only mount: nobody, root included, may create entries there.
        denied: "/denied".to_owned(),
        peer: container,
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
