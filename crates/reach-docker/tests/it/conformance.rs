//! The whole conformance suite, unchanged, in a busybox container through the real engine.

use std::sync::Arc;

use reach_core::{Backend, Destination};
use reach_docker::{DockerBackend, DockerOptions};
use reach_test::docker::ContainerFixture;
use reach_test::Fixture;

/// A busybox container, a backend for it, and directories in it for the checks.
pub struct DockerFixture {
    backend: Arc<dyn Backend>,
    scratch: String,
    // Last, so that the container outlives the backend while dropping.
    _container: ContainerFixture,
}

impl Fixture for DockerFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    fn scratch(&self) -> String {
        self.scratch.clone()
    }

    fn denied_dir(&self) -> String {
        // A read-only mount: nobody, root included, may create entries there.
        "/denied".to_owned()
    }
}

pub async fn fixture() -> Option<DockerFixture> {
    if !reach_test::docker::available_or_skip("reach-docker conformance") {
        return None;
    }
    let container = ContainerFixture::busybox().expect("busybox container");
    let destination = Destination::parse(&container.destination(None)).expect("destination");
    let backend =
        Arc::new(DockerBackend::new(destination, DockerOptions::default()).expect("backend"));
    Some(DockerFixture {
        backend,
        scratch: container.scratch(None).expect("scratch dir"),
        _container: container,
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
