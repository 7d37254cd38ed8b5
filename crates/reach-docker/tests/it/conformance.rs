//! The whole conformance suite, unchanged, in a busybox container through the real engine.

use std::sync::Arc;
use std::time::Duration;

use reach_core::{Destination, ExecSpec};
use reach_docker::{DockerBackend, DockerOptions};
use reach_test::docker::ContainerFixture;
use reach_test::PeerFixture;
use tokio::io::AsyncReadExt;

pub async fn fixture() -> Option<PeerFixture<ContainerFixture>> {
    fixture_with("reach-docker conformance", DockerOptions::default())
}

/// A busybox container and a backend for it with `options`; `None` (said why) without an
/// engine.
fn fixture_with(test: &str, options: DockerOptions) -> Option<PeerFixture<ContainerFixture>> {
    if !reach_test::docker::available_or_skip(test) {
        return None;
    }
    let container = ContainerFixture::busybox().expect("busybox container");
    let destination = Destination::parse(&container.destination(None)).expect("destination");
    let backend = Arc::new(DockerBackend::new(destination, options).expect("backend"));
    Some(PeerFixture {
        backend,
        scratch: container.scratch(None).expect("scratch dir"),
        // A read-only mount: nobody, root included, may create entries there.
        denied: "/denied".to_owned(),
        peer: container,
    })
}

reach_test::conformance_suite!(fixture());

/// The engine path (no agent) holds to the checks where it differs most from the agent:
/// flow control (its output and input each go through one exec's own connection to the
/// engine), and a terminal that is not hung up when stdin closes (the engine ends an
/// attached exec's output when its stdin closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_the_agent() {
    let Some(fixture) = fixture_with("reach-docker streams without the agent", crate::no_agent())
    else {
        return;
    };
    for check in [
        "output_flow_control",
        "input_flow_control",
        "pty_stdin_close",
    ] {
        reach_test::conformance::assert_check(check, &fixture).await;
    }
}

/// A reader dropped unread tells the agent, which then drops that output instead of waiting
/// for room: the command runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_output_stream_does_not_hold_its_command() {
    let Some(fixture) = fixture().await else {
        return;
    };
    let process = fixture
        .backend
        .exec(ExecSpec::shell(
            "head -c 67108864 /dev/zero && echo written >&2",
        ))
        .await
        .unwrap();
    drop(process.take_stdout());
    let mut stderr = process.take_stderr().unwrap();
    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stderr.read_to_end(&mut said))
        .await
        .expect("the command waited for a reader that was gone")
        .unwrap();
    assert_eq!(said, b"written\n");
    assert!(process.wait().await.unwrap().success());
}
