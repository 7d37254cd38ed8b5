//! reach-ssh against the real Debian sshd (`reach_test::sshd::SshdFixture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent_helper;
mod algorithms;
mod auth;
mod conformance;

use std::process::Command;
use std::time::Duration;

use reach_core::{
    Backend, Destination, ErrorKind, ExecSpec, ExitStatus, ProcessExt, Signal, StdinMode,
};
use reach_ssh::{SshBackend, SshOptions};
use reach_test::sshd::SshdFixture;
use tokio::io::AsyncWriteExt;

pub fn fixture(test: &str) -> Option<SshdFixture> {
    SshdFixture::start_or_skip(test)
}

pub fn options(sshd: &SshdFixture) -> SshOptions {
    SshOptions {
        identity: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..SshOptions::default()
    }
}

/// A fresh ed25519 key pair at `path` (and `path.pub`); returns the public key's base64.
pub fn keygen(path: &std::path::Path) -> String {
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success());
    let public = std::fs::read_to_string(format!("{}.pub", path.display())).unwrap();
    public.split_whitespace().nth(1).unwrap().to_owned()
}

pub fn backend(sshd: &SshdFixture, options: SshOptions) -> SshBackend {
    SshBackend::new(Destination::parse(&sshd.destination()).unwrap(), options).unwrap()
}

/// What the real `ssh` client reports for a command: (stdout, stderr, exit code).
fn openssh(sshd: &SshdFixture, line: &str) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let out = sshd.ssh_command().arg(line).output().unwrap();
    (out.stdout, out.stderr, out.status.code())
}

#[tokio::test]
async fn exec_gives_what_openssh_gives() {
    let Some(sshd) = fixture("exec_gives_what_openssh_gives") else {
        return;
    };
    let ssh = backend(&sshd, options(&sshd));
    for line in [
        "printf out; printf err >&2; exit 7",
        "echo $HOME; id -un",
        "printf '\\000\\377'; exit 255",
        "exit 0",
    ] {
        let ours = ssh
            .exec(ExecSpec::shell(line))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        let (stdout, stderr, code) = openssh(&sshd, line);
        assert_eq!(ours.stdout, stdout, "stdout of {line:?}");
        assert_eq!(ours.stderr, stderr, "stderr of {line:?}");
        assert_eq!(Some(ours.status.shell_code()), code, "status of {line:?}");
    }
    let ours = ssh
        .exec(ExecSpec::shell("kill -TERM $$"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        ours.status,
        ExitStatus::Signal {
            signal: Signal::TERM,
            core_dumped: false
        }
    );
}

#[tokio::test]
async fn stdin_env_and_cwd() {
    let Some(sshd) = fixture("stdin_env_and_cwd") else {
        return;
    };
    let ssh = backend(&sshd, options(&sshd));
    let data: Vec<u8> = (0..=255u8).cycle().take(3_000_000).collect();
    let process = ssh
        .exec(ExecSpec::argv(["cat"]).stdin(StdinMode::Piped))
        .await
        .unwrap();
    let mut stdin = process.take_stdin().unwrap();
    let feed = data.clone();
    tokio::spawn(async move {
        stdin.write_all(&feed).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let out = process.output().await.unwrap();
    assert!(
        out.stdout == data,
        "cat returned {} bytes",
        out.stdout.len()
    );
    let out = ssh
        .exec(
            ExecSpec::shell("printf '%s in %s' \"$REACH_V\" \"$(pwd)\"")
                .env("REACH_V", "a b'c")
                .cwd("/tmp"),
        )
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b'c in /tmp");
}

#[tokio::test]
async fn unknown_host_key_is_refused_with_its_fingerprint() {
    let Some(sshd) = fixture("unknown_host_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let ssh = backend(
        &sshd,
        SshOptions {
            known_hosts: Some(empty),
            ..options(&sshd)
        },
    );
    let err = ssh.connect().await.unwrap_err();
    println!("user sees: {err}");
    assert_eq!(err.kind(), ErrorKind::HostKeyRejected);
    assert!(err.to_string().contains("SHA256:"), "{err}");
    assert!(err.to_string().contains("--accept-new-host-key"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("[127.0.0.1]:{}", sshd.port())),
        "{err}"
    );
}

#[tokio::test]
async fn missing_known_hosts_is_an_error_unless_accept_new() {
    let Some(sshd) = fixture("missing_known_hosts") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("sub").join("known_hosts");
    let ssh = backend(
        &sshd,
        SshOptions {
            known_hosts: Some(missing.clone()),
            ..options(&sshd)
        },
    );
    let err = ssh.connect().await.unwrap_err();
    println!("user sees: {err}");
    assert_eq!(err.kind(), ErrorKind::HostKeyRejected);
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists());

    let ssh = backend(
        &sshd,
        SshOptions {
            known_hosts: Some(missing.clone()),
            accept_new_host_key: true,
            ..options(&sshd)
        },
    );
    ssh.connect().await.unwrap();
    let recorded = std::fs::read_to_string(&missing).unwrap();
    let host_key = std::fs::read_to_string(format!("{}.pub", sshd.host_key().display())).unwrap();
    let blob = host_key.split_whitespace().nth(1).unwrap();
    assert_eq!(
        recorded,
        format!("[127.0.0.1]:{} ssh-ed25519 {blob}\n", sshd.port())
    );
    // The recorded key is now trusted without accept-new.
    let ssh = backend(
        &sshd,
        SshOptions {
            known_hosts: Some(missing),
            ..options(&sshd)
        },
    );
    ssh.connect().await.unwrap();
}

#[tokio::test]
async fn changed_host_key_is_always_refused() {
    let Some(sshd) = fixture("changed_host_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let blob = keygen(&dir.path().join("other"));
    let known = dir.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} ssh-ed25519 {blob}\n", sshd.port()),
    )
    .unwrap();
    for accept_new in [false, true] {
        let ssh = backend(
            &sshd,
            SshOptions {
                known_hosts: Some(known.clone()),
                accept_new_host_key: accept_new,
                ..options(&sshd)
            },
        );
        let err = ssh.connect().await.unwrap_err();
        println!("user sees: {err}");
        assert_eq!(err.kind(), ErrorKind::HostKeyRejected);
        assert!(err.to_string().contains("CHANGED"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}

#[tokio::test]
async fn wrong_key_is_auth_failed() {
    let Some(sshd) = fixture("wrong_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger");
    keygen(&stranger);
    let ssh = backend(
        &sshd,
        SshOptions {
            identity: Some(stranger),
            ..options(&sshd)
        },
    );
    let err = ssh.connect().await.unwrap_err();
    println!("user sees: {err}");
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert!(err.to_string().contains("stranger"), "{err}");
    assert!(
        sshd.log()
            .contains("Connection closed by authenticating user")
            || sshd.log().contains("Failed publickey")
    );
}

#[tokio::test]
async fn refused_port_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ssh = SshBackend::new(
        Destination::parse(&format!("ssh://u@127.0.0.1:{port}")).unwrap(),
        SshOptions::default(),
    )
    .unwrap();
    let err = ssh.connect().await.unwrap_err();
    println!("user sees: {err}");
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn sshd_killed_mid_command_is_session_dropped_not_exit_0() {
    let Some(mut sshd) = fixture("sshd_killed") else {
        return;
    };
    let ssh = backend(&sshd, options(&sshd));
    let process = ssh
        .exec(ExecSpec::shell("echo started; sleep 60"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sshd.kill();
    let err = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("wait returned after the server died")
        .unwrap_err();
    println!("user sees: {err}");
    assert_eq!(err.kind(), ErrorKind::SessionDropped);
}

#[tokio::test]
async fn platform_from_uname() {
    let Some(sshd) = fixture("platform") else {
        return;
    };
    let ssh = backend(&sshd, options(&sshd));
    let platform = ssh.platform().await.unwrap();
    assert_eq!(platform.os, std::env::consts::OS);
    assert_eq!(platform.arch, std::env::consts::ARCH);
}

/// A server that accepts TCP and never speaks: the connect timeout ends the wait.
#[tokio::test]
async fn a_silent_server_times_out_instead_of_hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let ssh = SshBackend::new(
        Destination::parse(&format!("ssh://nobody@127.0.0.1:{port}")).unwrap(),
        SshOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            no_config: true,
            use_agent: false,
            ..SshOptions::default()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = ssh.connect().await.unwrap_err();
    println!("silent server: {err}");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    hold.abort();
}

/// An sshd whose sessions find `name` first on PATH as this shell script, with the usual
/// tools after it (a stand-in that shows which of the server's tools a command used), and
/// `env` (`NAME=VALUE ...`) set too. Kept with the directory that holds the script.
fn sshd_with_stand_in(
    test: &str,
    name: &str,
    script: &str,
    env: &str,
) -> Option<(SshdFixture, tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    if !SshdFixture::available_or_skip(test) {
        return None;
    }
    let bin = tempfile::Builder::new()
        .prefix("reach-stand-in-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = bin.path().join(name);
    std::fs::write(&tool, script).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = SshdFixture::start_with(&format!(
        "SetEnv PATH={}:/usr/bin:/bin {env}",
        bin.path().display()
    ))
    .unwrap();
    Some((sshd, bin))
}

/// A 40 MiB file written with `open_write_hashed`, then continued: each digest must be the
/// SHA-256 of the whole file as it is on disk.
async fn hashed_as_written(sshd: &SshdFixture) {
    use sha2::{Digest, Sha256};
    let ssh = backend(sshd, options(sshd));
    let fs = ssh.fs().await.unwrap();
    let dir = sshd.user_dir("hashed").unwrap();
    let path = format!("{dir}/file");
    // Past one report interval (32 MiB), not a whole number of chunks.
    let mut data: Vec<u8> = (0..(40u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let options = reach_core::WriteOptions {
        sync: true,
        ..reach_core::WriteOptions::default()
    };
    let (mut writer, digest) = fs.open_write_hashed(&path, options).await.unwrap();
    writer.write_all(&data).await.unwrap();
    writer.shutdown().await.unwrap();
    let digest = digest.await.unwrap();
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    assert_eq!(std::fs::read(&path).unwrap(), data);

    // Continued: the digest covers the file from its first byte.
    let more = b"and the rest\n".repeat(1000);
    let (mut writer, digest) = fs
        .open_write_hashed(
            &path,
            reach_core::WriteOptions {
                append: true,
                ..options
            },
        )
        .await
        .unwrap();
    writer.write_all(&more).await.unwrap();
    writer.shutdown().await.unwrap();
    data.extend_from_slice(&more);
    assert_eq!(
        digest.await.unwrap(),
        <[u8; 32]>::from(Sha256::digest(&data))
    );
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

#[tokio::test]
async fn a_file_is_hashed_on_the_server_by_python_as_it_is_written() {
    let test = "a_file_is_hashed_on_the_server_by_python_as_it_is_written";
    if Command::new("python3").arg("--version").output().is_err() {
        reach_test::skip(test, "python3 is missing (apt-get install python3)");
        return;
    }
    // A dd that fails: the digest can only have come from Python. And a `hashlib` on
    // PYTHONPATH that would hash nothing: the standard library's must be the one used.
    let fake = tempfile::Builder::new()
        .prefix("reach-pythonpath-")
        .tempdir()
        .unwrap();
    std::fs::write(
        fake.path().join("hashlib.py"),
        "class sha256:\n    def update(self, data): pass\n    def hexdigest(self): return 64 * \"0\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = format!("PYTHONPATH={}", fake.path().display());
    let Some((sshd, _bin)) =
        sshd_with_stand_in(test, "dd", "#!/bin/sh\necho 'dd ran' >&2\nexit 1\n", &env)
    else {
        return;
    };
    hashed_as_written(&sshd).await;
}

#[tokio::test]
async fn a_file_is_hashed_on_the_server_by_dd_and_openssl_where_python_cannot() {
    let test = "a_file_is_hashed_on_the_server_by_dd_and_openssl_where_python_cannot";
    // A python3 without hashlib, as the follower tells it (exit 98 before reading stdin).
    let Some((sshd, _bin)) = sshd_with_stand_in(test, "python3", "#!/bin/sh\nexit 98\n", "") else {
        return;
    };
    hashed_as_written(&sshd).await;
}

/// A synced write of a declared length from 64 MiB on is flushed on the server while it is
/// written (`sync -d` each time another 32 MiB has landed), so that the final fsync finds
/// little left to do; a small one is not; and the flushing ends with the write.
#[tokio::test]
async fn a_large_synced_write_is_flushed_while_it_is_written() {
    let test = "a_large_synced_write_is_flushed_while_it_is_written";
    // A `sync` that notes each `sync -d -- FILE` beside FILE, then syncs.
    let script = "#!/bin/sh\n[ \"$1\" = -d ] && echo \"$*\" >> \"$(dirname \"$3\")/flushes\"\n\
                  exec /bin/sync \"$@\"\n";
    let Some((sshd, _bin)) = sshd_with_stand_in(test, "sync", script, "") else {
        return;
    };
    let ssh = backend(&sshd, options(&sshd));
    let fs = ssh.fs().await.unwrap();
    let dir = sshd.user_dir("flushed").unwrap();
    for (name, len) in [("small", 1u64 << 20), ("large", 96 << 20)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let path = format!("{dir}/{name}");
        let options = reach_core::WriteOptions {
            sync: true,
            len: Some(len),
            ..reach_core::WriteOptions::default()
        };
        let mut writer = fs.open_write(&path, options).await.unwrap();
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
        assert!(
            std::fs::read(&path).unwrap() == data,
            "{name}: the bytes differ"
        );
    }
    let large = format!("{dir}/large");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let flushes = std::fs::read_to_string(format!("{dir}/flushes")).unwrap_or_default();
        let lines: Vec<&str> = flushes.lines().collect();
        // The flushing command on the server names the file; it must be gone.
        let flushing = Command::new("pgrep")
            .args(["-f", "--", &large])
            .output()
            .unwrap()
            .status
            .success();
        let expected = format!("-d -- {large}");
        if lines.len() >= 2 && lines.iter().all(|l| *l == expected) && !flushing {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 10 s: flushes {lines:?} (two or more of `{expected}` wanted, none of the \
             small file), and the flushing command still running: {flushing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An `ssh-agent` listening on `socket`, killed when dropped.
#[derive(Debug)]
pub struct SshAgent(std::process::Child);

impl SshAgent {
    /// Starts it and waits (up to 5 s) for its socket.
    pub fn start(socket: &std::path::Path) -> SshAgent {
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        let agent = SshAgent(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        agent
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
