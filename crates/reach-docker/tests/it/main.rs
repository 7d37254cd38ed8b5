//! reach-docker against the real Docker engine, in containers of images built on the spot
//! (`reach_test::docker`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent_loss;
mod conformance;
mod lifecycle;
mod noshell;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reach_core::{
    Backend, Destination, ErrorKind, ExecSpec, ExitStatus, FileSystemExt, ProcessExt, StdinMode,
    WriteOptions,
};
use reach_docker::{DockerBackend, DockerOptions};
use reach_test::docker::ContainerFixture;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn engine(test: &str) -> bool {
    reach_test::docker::available_or_skip(test)
}

pub fn backend_for(destination: &str, options: DockerOptions) -> Arc<dyn Backend> {
    let destination = Destination::parse(destination).expect("destination");
    Arc::new(DockerBackend::new(destination, options).expect("backend"))
}

pub fn no_agent() -> DockerOptions {
    let mut options = DockerOptions::default();
    options.agent = false;
    options
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sh(container: &ContainerFixture, line: &str) -> String {
    let out = container.exec(&["sh", "-c", line]).expect("docker exec");
    assert!(out.status.success(), "`{line}`: {:?}", out);
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn empty_files_go_both_ways_without_hanging() {
    if !engine("empty files") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    let limit = Duration::from_secs(20);
    tokio::time::timeout(limit, fs.write("/tmp/empty-up", b""))
        .await
        .expect("empty upload hung")
        .unwrap();
    assert_eq!(sh(&c, "wc -c < /tmp/empty-up").trim(), "0");
    sh(&c, ": > /tmp/empty-down");
    let back = tokio::time::timeout(limit, fs.read("/tmp/empty-down"))
        .await
        .expect("empty download hung")
        .unwrap();
    assert!(back.is_empty());
    // The same without the agent: the archive API alone.
    let bare = backend_for(&c.destination(None), no_agent());
    let fs = bare.fs().await.unwrap();
    fs.write("/tmp/empty-2", b"").await.unwrap();
    assert_eq!(sh(&c, "wc -c < /tmp/empty-2").trim(), "0");
    assert!(fs.read("/tmp/empty-down").await.unwrap().is_empty());
}

/// 1 GiB of a pattern no compression or dedup could fake, streamed in and out.
#[tokio::test]
async fn one_gib_streams_in_and_out_intact() {
    if !engine("1 GiB file") {
        return;
    }
    const LEN: u64 = 1 << 30;
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    let chunk = |i: u64| -> Vec<u8> {
        let mut block = Vec::with_capacity(1 << 20);
        let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 0..(1 << 17) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        block
    };
    let options = WriteOptions {
        len: Some(LEN),
        ..WriteOptions::default()
    };
    let mut writer = fs.open_write("/tmp/big.bin", options).await.unwrap();
    let mut sent = Sha256::new();
    for i in 0..(LEN >> 20) {
        let block = chunk(i);
        sent.update(&block);
        writer.write_all(&block).await.unwrap();
    }
    writer.shutdown().await.unwrap();
    let sent = hex(&sent.finalize());
    let in_container = sh(&c, "sha256sum /tmp/big.bin");
    assert_eq!(in_container.split_whitespace().next(), Some(sent.as_str()));
    assert_eq!(fs.metadata("/tmp/big.bin").await.unwrap().len, LEN);
    let remote = fs.sha256("/tmp/big.bin").await.unwrap();
    let remote = hex(&remote);
    assert_eq!(remote, sent, "the agent's SHA-256");
    let mut reader = fs.open_read("/tmp/big.bin").await.unwrap();
    let mut got = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        total += n as u64;
    }
    assert_eq!(total, LEN);
    assert_eq!(hex(&got.finalize()), sent);
}

#[tokio::test]
async fn the_agents_sha256_is_right_at_every_padding_boundary() {
    if !engine("agent SHA-256") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    // Around the 55/56/64-byte padding edges, a million 'a' (the FIPS 180-2 long vector),
    // and a long odd length that mixes whole-block runs with a buffered tail.
    let lengths = [
        0usize,
        1,
        3,
        55,
        56,
        63,
        64,
        65,
        119,
        120,
        127,
        128,
        1_000_000,
        (3 << 20) + 77,
    ];
    for len in lengths {
        let data: Vec<u8> = if len == 1_000_000 {
            vec![b'a'; len]
        } else {
            (0..len)
                .map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8)
                .collect()
        };
        let path = format!("/tmp/sha-{len}");
        let mut writer = fs.open_write(&path, WriteOptions::default()).await.unwrap();
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
        let want = hex(&Sha256::digest(&data));
        assert_eq!(hex(&fs.sha256(&path).await.unwrap()), want, "{len} bytes");
        if len == 1_000_000 {
            assert_eq!(
                want,
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
            );
        }
    }
}

#[tokio::test]
async fn a_short_or_long_write_is_an_error_not_a_truncated_file() {
    if !engine("declared length") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let fs = backend.fs().await.unwrap();
    fs.write("/tmp/keep", b"old contents").await.unwrap();
    let options = WriteOptions {
        len: Some(100),
        ..WriteOptions::default()
    };
    let mut w = fs.open_write("/tmp/keep", options).await.unwrap();
    w.write_all(b"only ten b").await.unwrap();
    let err = w.shutdown().await.expect_err("short write accepted");
    assert!(err.to_string().contains("10 of the declared 100"), "{err}");
    let mut w = fs.open_write("/tmp/other", options).await.unwrap();
    let err = w
        .write_all(&[0u8; 101])
        .await
        .expect_err("long write accepted");
    assert!(err.to_string().contains("declared 100"), "{err}");
}

#[tokio::test]
async fn a_missing_command_is_not_found_and_a_shell_says_127() {
    if !engine("missing command") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    for options in [DockerOptions::default(), no_agent()] {
        let agent = options.agent;
        let backend = backend_for(&c.destination(None), options);
        let err = match backend.exec(ExecSpec::argv(["reach-no-such"])).await {
            Err(e) => e,
            Ok(p) => p.wait().await.expect_err("a missing command ran"),
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "agent {agent}: {err}");
        assert!(err.to_string().contains("`reach-no-such`"), "{err}");
        let err = match backend.exec(ExecSpec::argv(["/etc/passwd"])).await {
            Err(e) => e,
            Ok(p) => p.wait().await.expect_err("a non-executable ran"),
        };
        assert_eq!(
            err.kind(),
            ErrorKind::PermissionDenied,
            "agent {agent}: {err}"
        );
        let out = backend
            .exec(ExecSpec::shell("reach-no-such"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Code(127), "agent {agent}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    }
}

#[tokio::test]
async fn a_container_stopped_mid_command_is_session_dropped() {
    if !engine("stopped mid-command") {
        return;
    }
    for options in [DockerOptions::default(), no_agent()] {
        let agent = options.agent;
        let c = ContainerFixture::busybox().unwrap();
        let backend = backend_for(&c.destination(None), options);
        let process = backend
            .exec(ExecSpec::shell("echo started; sleep 60"))
            .await
            .unwrap();
        let mut stdout = process.take_stdout().unwrap();
        let mut first = [0u8; 8];
        stdout.read_exact(&mut first).await.unwrap();
        let started = Instant::now();
        c.kill().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), process.wait())
            .await
            .expect("wait hung after the container stopped")
            .expect_err("a stopped container reported an exit status");
        assert_eq!(
            err.kind(),
            ErrorKind::SessionDropped,
            "agent {agent}: {err}"
        );
        assert!(err.to_string().contains("stopped"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
        // And the next command says the container is not running.
        let err = backend
            .exec(ExecSpec::argv(["true"]))
            .await
            .expect_err("ran in a stopped container");
        assert!(err.to_string().contains("not running"), "{err}");
    }
}

#[tokio::test]
async fn a_missing_container_is_named() {
    if !engine("missing container") {
        return;
    }
    let backend = backend_for("docker://reach-no-such-container", DockerOptions::default());
    let err = backend.connect().await.expect_err("connected to nothing");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let text = err.to_string();
    assert!(text.contains("`reach-no-such-container`"), "{text}");
    assert!(text.contains("docker ps -a"), "{text}");
}

#[tokio::test]
async fn an_engine_that_is_not_there_is_unreachable() {
    let mut options = DockerOptions::default();
    options.host = Some("unix:///nonexistent/docker.sock".to_owned());
    let backend = backend_for("docker://web", options);
    let err = backend.connect().await.expect_err("connected to nothing");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let mut options = DockerOptions::default();
    options.host = Some("tcp://127.0.0.1:1".to_owned());
    let err = backend_for("docker://web", options)
        .connect()
        .await
        .expect_err("connected to a closed port");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test]
async fn docker_host_is_honoured() {
    if !engine("DOCKER_HOST") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    // This test process is its own (nextest runs one test per process).
    std::env::set_var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let result = backend_for(&c.destination(None), DockerOptions::default())
        .connect()
        .await;
    // Restored before asserting: the fixture's `docker rm` on drop needs the real engine.
    std::env::remove_var("DOCKER_HOST");
    let err = result.expect_err("DOCKER_HOST ignored");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(
        err.to_string().contains("/nonexistent/docker.sock"),
        "{err}"
    );
    std::env::set_var("DOCKER_HOST", "unix:///var/run/docker.sock");
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    backend.connect().await.unwrap();
    assert!(backend.addr().contains("unix:///var/run/docker.sock"));
    std::env::remove_var("DOCKER_HOST");
}

#[tokio::test]
async fn sixty_four_concurrent_engine_execs() {
    if !engine("64 engine execs") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), no_agent());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            let out = backend
                .exec(ExecSpec::shell(format!("echo run-{i}; exit {}", i % 7)))
                .await?
                .output()
                .await?;
            Ok::<_, reach_core::Error>((i, out))
        }));
    }
    for task in tasks {
        let (i, out) = task.await.unwrap().unwrap();
        assert_eq!(out.stdout, format!("run-{i}\n").as_bytes());
        assert_eq!(out.status, ExitStatus::Code(i % 7));
    }
}

#[tokio::test]
async fn the_engine_path_streams_env_cwd_stdin_and_codes() {
    if !engine("engine exec path") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), no_agent());
    let out = backend
        .exec(
            ExecSpec::shell("printf '%s|' \"$A\"; pwd; cat; echo err >&2; exit 9")
                .env("A", "x y ü")
                .cwd("/etc")
                .stdin(StdinMode::Piped),
        )
        .await
        .unwrap();
    let mut stdin = out.take_stdin().unwrap();
    stdin.write_all(b"fed\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let result = out.output().await.unwrap();
    assert_eq!(result.stdout, "x y ü|/etc\nfed\n".as_bytes());
    assert_eq!(result.stderr, b"err\n");
    assert_eq!(result.status, ExitStatus::Code(9));
    let err = backend
        .exec(ExecSpec::argv(["pwd"]).cwd("/nope"))
        .await
        .expect_err("a missing cwd ran");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // Without the agent a signal cannot be sent, and says so.
    let p = backend.exec(ExecSpec::argv(["sleep", "1"])).await.unwrap();
    let err = p.signal(reach_core::Signal::INT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn a_user_destination_runs_and_writes_as_that_user() {
    if !engine("docker://user@container") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    for options in [DockerOptions::default(), no_agent()] {
        let backend = backend_for(&c.destination(Some("reach")), options);
        let out = backend
            .exec(ExecSpec::shell("id -u; echo $HOME"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"1000\n/home/reach\n");
        let fs = backend.fs().await.unwrap();
        assert_eq!(fs.home_dir().await.unwrap(), "/home/reach");
        fs.write("notes.txt", b"mine").await.unwrap();
        assert_eq!(
            sh(&c, "stat -c '%u:%g %s' /home/reach/notes.txt").trim(),
            "1000:1000 4"
        );
        fs.remove_file("notes.txt").await.unwrap();
    }
}

#[tokio::test]
async fn a_large_file_is_read_whole_and_only_by_a_user_who_may() {
    if !engine("large reads") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    // Many of the agent's reads, and the last one short.
    let data: Vec<u8> = (0..(9u32 << 20) + 4321)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let root = backend_for(&c.destination(None), DockerOptions::default());
    let fs = root.fs().await.unwrap();
    fs.write("/tmp/big", &data).await.unwrap();
    sh(&c, "chmod 644 /tmp/big && ln -s big /tmp/link");
    assert!(
        fs.read("/tmp/big").await.unwrap() == data,
        "the bytes differ"
    );
    assert!(
        fs.read("/tmp/link").await.unwrap() == data,
        "through a symlink"
    );

    let user = backend_for(&c.destination(Some("reach")), DockerOptions::default());
    let user_fs = user.fs().await.unwrap();
    assert!(user_fs.read("/tmp/big").await.unwrap() == data, "as a user");
    // The engine itself would read it as root; the user may not, and is told so.
    sh(&c, "chmod 600 /tmp/big");
    let err = user_fs.read("/tmp/big").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("/tmp/big"), "{err}");
}

#[tokio::test]
async fn the_agent_is_installed_once_and_commands_outlive_no_connection() {
    if !engine("agent lifecycle") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    let backend = backend_for(&c.destination(None), DockerOptions::default());
    let p = backend
        .exec(ExecSpec::shell("echo $$; exec sleep 300"))
        .await
        .unwrap();
    let mut stdout = p.take_stdout().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let pid = String::from_utf8(line).unwrap();
    assert!(sh(&c, "ls /.reach").starts_with("agent-"));
    // Closing the backend ends the agent's exec; the agent kills what it started.
    drop(stdout);
    drop(p);
    backend.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Killed means gone or a zombie (the container's init here does not reap).
        let check = format!("grep -q '^State:.*[RSD]' /proc/{}/status", pid.trim());
        let alive = c.exec(&["sh", "-c", &check]).unwrap().status.success();
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep {pid} outlived the connection: {}",
            sh(&c, "ps -o pid,ppid,args")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second backend finds the agent in place.
    let again = backend_for(&c.destination(None), DockerOptions::default());
    let out = again
        .exec(ExecSpec::argv(["true"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(sh(&c, "ls /.reach | wc -l").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_read_does_not_lock_the_container() {
    if !engine("a read beside a new connection") {
        return;
    }
    let c = ContainerFixture::busybox().unwrap();
    // Far more than the buffers on the way hold, so that the stalled read below is still
    // streaming while the second connection starts.
    sh(&c, "dd if=/dev/zero of=/tmp/big bs=1M count=64 2>/dev/null");
    let reader = backend_for(&c.destination(None), DockerOptions::default());
    let mut file = reader
        .fs()
        .await
        .unwrap()
        .open_read("/tmp/big")
        .await
        .unwrap();
    let mut first = vec![1u8; 1 << 20];
    file.read_exact(&mut first).await.unwrap();

    // The engine holds a container's lock for as long as an archive read streams (what
    // `docker cp` out uses), and every exec into that container waits for it. A new
    // connection starts its agent with an exec; it must not wait for a reader that dawdles.
    let other = backend_for(&c.destination(None), DockerOptions::default());
    let ran = tokio::time::timeout(Duration::from_secs(30), async {
        other.exec(ExecSpec::argv(["true"])).await?.wait().await
    })
    .await
    .expect("a command on a second connection waited 30 s behind a read in progress");
    assert!(ran.unwrap().success());

    // The held read then goes on to the end.
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).await.unwrap();
    assert_eq!(first.len() + rest.len(), 64 << 20);
    assert!(
        first.iter().chain(&rest).all(|&b| b == 0),
        "the bytes differ"
    );
}
