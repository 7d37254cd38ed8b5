//! The whole conformance suite, unchanged, in a busybox container through the real engine.

use std::sync::Arc;
use std::time::Duration;

use reach_core::{Destination, ExecSpec, FileSystemExt, ProcessExt, StdinMode};
use reach_docker::{DockerBackend, DockerOptions};
use reach_test::docker::ContainerFixture;
use reach_test::PeerFixture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

#[test]
fn every_check_is_generated() {
    let all: Vec<&str> = reach_test::conformance::CHECKS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(GENERATED_CHECKS, all.as_slice());
}

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

/// One agent carries every command and file operation of a connection: a command whose
/// output nobody reads stops, and the rest goes on beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_command_stalls_nothing_else_on_the_agent() {
    let Some(fixture) = fixture().await else {
        return;
    };
    let backend = fixture.backend.clone();
    let flood = backend
        .exec(ExecSpec::shell("head -c 67108864 /dev/zero"))
        .await
        .unwrap();
    let mut flood_out = flood.take_stdout().unwrap();
    let mut first = [0u8; 1];
    flood_out.read_exact(&mut first).await.unwrap();
    let stalled_in = backend
        .exec(ExecSpec::shell("exec sleep 60").stdin(StdinMode::Piped))
        .await
        .unwrap();
    let mut stdin = stalled_in.take_stdin().unwrap();
    let filled = tokio::time::timeout(
        Duration::from_secs(2),
        stdin.write_all(&vec![0u8; 64 << 20]),
    )
    .await;
    assert!(filled.is_err(), "a stdin nobody reads took 64 MiB");

    let limit = Duration::from_secs(20);
    let echo = tokio::time::timeout(limit, async {
        backend
            .exec(ExecSpec::shell("echo beside"))
            .await?
            .output()
            .await
    })
    .await
    .expect("a command beside the stalled ones hung")
    .unwrap();
    assert_eq!(echo.stdout, b"beside\n");
    let fs = backend.fs().await.unwrap();
    let path = format!("{}/beside", fixture.scratch);
    let data = vec![7u8; 3 << 20];
    tokio::time::timeout(limit, async {
        fs.write(&path, &data).await?;
        fs.read(&path).await
    })
    .await
    .expect("a file beside the stalled commands hung")
    .map(|back| assert!(back == data, "the file came back changed"))
    .unwrap();

    // The stalled command still gives every byte once read.
    let mut rest = Vec::new();
    flood_out.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len() + 1, 64 << 20);
    assert!(flood.wait().await.unwrap().success());
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
