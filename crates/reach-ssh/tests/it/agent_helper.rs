//! Commands through the reach agent on a real sshd (`--ssh-agent-helper`): the whole
//! conformance suite, commands past the server's `MaxSessions`, signals to the command's
//! process group, and what happens where the agent cannot run.

use std::sync::Arc;
use std::time::Duration;

use reach_core::{Backend, Destination, ErrorKind, ExecSpec, ExitStatus, ProcessExt, Signal};
use reach_ssh::{AgentHelper, SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;

fn backend(sshd: &SshdFixture, mode: AgentHelper, dir: Option<&str>) -> SshBackend {
    let options = SshOptions {
        agent_helper: mode,
        agent_helper_dir: dir.map(str::to_owned),
        ..crate::options(sshd)
    };
    SshBackend::new(Destination::parse(&sshd.destination()).unwrap(), options).unwrap()
}

mod conformance {
    use super::*;
    use reach_test::PeerFixture;

    async fn fixture() -> Option<PeerFixture<SshdFixture>> {
        let sshd = SshdFixture::start_or_skip("reach-ssh conformance with the agent")?;
        let backend = Arc::new(backend(&sshd, AgentHelper::Always, None));
        Some(PeerFixture {
            backend,
            scratch: sshd.user_dir("scratch").expect("scratch dir"),
            denied: sshd.denied_dir("denied").expect("denied dir"),
            peer: sshd,
        })
    }

    reach_test::conformance_suite!(fixture());
}

/// 64 commands at once on a server that allows 2 sessions per connection: all through the
/// agent's one session, each with its own output and exit code. Plain SSH on the same server
/// needs its session cap at 2 and runs them two at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_commands_at_once_on_a_server_with_max_sessions_2() {
    let Some(sshd) = SshdFixture::start_with("MaxSessions 2")
        .map(Some)
        .unwrap_or_else(|e| {
            reach_test::skip("agent helper: MaxSessions", &e.to_string());
            None
        })
    else {
        return;
    };
    let backend = Arc::new(backend(&sshd, AgentHelper::Always, None));
    let started = std::time::Instant::now();
    let mut running = Vec::new();
    for i in 0..64 {
        let backend = backend.clone();
        running.push(tokio::spawn(async move {
            let line = format!("sleep 1; echo out-{i}; echo err-{i} >&2; exit {}", i % 7);
            backend
                .exec(ExecSpec::shell(line))
                .await
                .unwrap()
                .output()
                .await
                .unwrap()
        }));
    }
    for (i, task) in running.into_iter().enumerate() {
        let out = task.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("out-{i}\n"));
        assert_eq!(String::from_utf8_lossy(&out.stderr), format!("err-{i}\n"));
        assert_eq!(out.status, ExitStatus::Code((i % 7) as i32));
    }
    // Two at a time they would take 32 s; at once, about one (a generous bound, not a
    // benchmark: it tells concurrency from serialisation).
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "64 one-second commands took {:?}",
        started.elapsed()
    );
}

/// A signal reaches what the command started too (OpenSSH's own signal requests reach at
/// most the first process), and the agent sits in a private directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_reaches_the_commands_process_group() {
    let Some(sshd) = crate::fixture("agent helper: signals") else {
        return;
    };
    let backend = backend(&sshd, AgentHelper::Always, None);
    assert!(backend.capabilities().has(reach_core::Capability::Signals));
    let process = backend
        .exec(ExecSpec::shell("sleep 300 & echo $!; wait"))
        .await
        .unwrap();
    let mut stdout = process.take_stdout().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut byte)
            .await
            .unwrap();
        line.push(byte[0]);
    }
    let child: i32 = String::from_utf8_lossy(&line).trim().parse().unwrap();
    process.signal(Signal::TERM).await.unwrap();
    // The rest of the output (none) is read, as a caller does: the end comes after it.
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut rest),
    )
    .await
    .unwrap()
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), process.wait())
        .await
        .expect("the command outlived its signal")
        .unwrap();
    assert_eq!(
        status,
        ExitStatus::Signal {
            signal: Signal::TERM,
            core_dumped: false
        }
    );
    // The background sleep got it too (the server is this host).
    let mut gone = false;
    for _ in 0..50 {
        if !std::path::Path::new(&format!("/proc/{child}")).exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the command's child {child} survived the signal");

    let dir = std::path::Path::new(sshd.home()).join(".cache/reach");
    let mode = std::fs::metadata(&dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700,
        "{}",
        dir.display()
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 1 && names[0].starts_with("agent-"),
        "{names:?}"
    );
}

/// Where the agent cannot be put (a directory that cannot be made), `auto` runs commands
/// over plain SSH and keeps the reason; `always` is an error that says why and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_agent_cannot_run_auto_falls_back_and_always_says_why() {
    let Some(sshd) = crate::fixture("agent helper: fallback") else {
        return;
    };
    let nowhere = "/proc/reach-agent-cannot-be-here";
    let auto = backend(&sshd, AgentHelper::Auto, Some(nowhere));
    let out = auto
        .exec(ExecSpec::shell("echo plain"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
    let why = auto.agent_helper_status().await.unwrap().unwrap_err();
    assert!(
        why.contains(nowhere) || why.contains("private directory"),
        "{why}"
    );

    let always = backend(&sshd, AgentHelper::Always, Some(nowhere));
    let err = always.exec(ExecSpec::shell("true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("--ssh-agent-helper"), "{err}");
}

/// A directory on a `noexec` file system takes the agent's copy but cannot run it: `auto`
/// runs commands over plain SSH, `always` says the directory may not allow executing.
/// (Mounting needs root: as anyone else this is skipped, and fails under REACH_REQUIRE_REAL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noexec_directory_falls_back() {
    if !reach_test::is_root() {
        reach_test::skip("agent helper: noexec", "mounting a noexec tmpfs needs root");
        return;
    }
    let Some(sshd) = crate::fixture("agent helper: noexec") else {
        return;
    };
    struct Mounted(tempfile::TempDir);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }
    let mount = Mounted(tempfile::tempdir().unwrap());
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,mode=1777", "tmpfs"])
        .arg(mount.0.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount -o noexec");
    let dir = mount.0.path().join("reach").display().to_string();

    let always = backend(&sshd, AgentHelper::Always, Some(&dir));
    let err = always.exec(ExecSpec::shell("true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("executing"), "{err}");
    // The copy was made: it is running it that the file system refuses.
    assert!(std::fs::read_dir(&dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("agent-")));

    let auto = backend(&sshd, AgentHelper::Auto, Some(&dir));
    let out = auto
        .exec(ExecSpec::shell("echo plain"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
    assert!(auto.agent_helper_status().await.unwrap().is_err());
}
