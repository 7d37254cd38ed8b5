//! SSH scenarios, each against OpenSSH on the same throwaway sshd in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

use reach::ssh::{SshBackend, SshOptions};
use reach::{Backend, Destination};
use reach_test::sshd::SshdFixture;

use crate::{
    download, exec_true, make_source, run_ok, runtime, same_size, throughput_rounds, time, upload,
    Args, Section, Series, Step,
};

/// The cipher both sides use in the throughput scenario (reach prefers it; OpenSSH is told).
pub const CIPHER: &str = "aes256-gcm@openssh.com";

fn options(sshd: &SshdFixture) -> SshOptions {
    SshOptions {
        identity: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        use_agent: false,
        no_config: true,
        ..SshOptions::default()
    }
}

fn backend(sshd: &SshdFixture) -> Result<SshBackend, String> {
    let destination = Destination::parse(&sshd.destination()).map_err(|e| e.to_string())?;
    SshBackend::new(destination, options(sshd)).map_err(|e| e.to_string())
}

/// OpenSSH's options for this server, as `-o` flags (for ssh, scp and sftp alike).
pub fn openssh_flags(sshd: &SshdFixture) -> Vec<String> {
    server_flags(
        sshd.port(),
        sshd.user(),
        &sshd.known_hosts(),
        &sshd.client_key(),
    )
}

/// OpenSSH's options for a server at 127.0.0.1:`port`, logging in `user` with `key`, with
/// reach's cipher, as `-o` flags.
pub fn server_flags(port: u16, user: &str, known_hosts: &Path, key: &Path) -> Vec<String> {
    let mut flags = vec!["-q".to_owned()];
    flags.extend(crate::openssh_flags(known_hosts, key));
    for option in [
        format!("Port={port}"),
        format!("User={user}"),
        format!("Ciphers={CIPHER}"),
    ] {
        flags.push("-o".into());
        flags.push(option);
    }
    flags
}

/// Runs every SSH scenario.
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    if !SshdFixture::available() {
        return Err(
            "the ssh scenarios need /usr/sbin/sshd (apt-get install openssh-server)".into(),
        );
    }
    let sshd = SshdFixture::start().map_err(|e| format!("start sshd: {e}"))?;
    let rt = runtime()?;
    Ok(vec![
        held_connection(args, &sshd, &rt, reach_bin)?,
        fresh_connection(args, &sshd, &rt, reach_bin)?,
        throughput(args, &sshd, &rt)?,
    ])
}

fn held_connection(
    args: &Args,
    sshd: &SshdFixture,
    rt: &tokio::runtime::Runtime,
    reach_bin: &Path,
) -> Result<Section, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let control = dir.path().join("ctl");
    let flags = openssh_flags(sshd);
    run_ok(
        Command::new("ssh")
            .args(&flags)
            .args(["-M", "-N", "-f", "-o", "ControlPersist=yes", "-S"])
            .arg(&control)
            .arg("127.0.0.1"),
    )?;
    let through_master = || {
        run_ok(
            Command::new("ssh")
                .args(&flags)
                .args(["-o", "ControlMaster=no", "-S"])
                .arg(&control)
                .args(["127.0.0.1", "true"]),
        )
    };
    let ssh = backend(sshd)?;
    rt.block_on(ssh.connect()).map_err(|e| e.to_string())?;
    let destination = Destination::parse(&sshd.destination()).map_err(|e| e.to_string())?;
    let with_agent = SshBackend::new(
        destination,
        SshOptions {
            agent_helper: reach::ssh::AgentHelper::Always,
            ..options(sshd)
        },
    )
    .map_err(|e| e.to_string())?;
    let daemon = crate::WarmDaemon::new(reach_bin)?;
    let (key, known, dest) = (sshd.client_key(), sshd.known_hosts(), sshd.destination());
    let warm_cli = || {
        run_ok(
            daemon
                .reach()
                .args(["exec", "-n", "-i"])
                .arg(&key)
                .arg("--known-hosts")
                .arg(&known)
                .args(["-F", "/dev/null", &dest, "--", "true"]),
        )
    };
    let mut theirs = Series::new("OpenSSH: `ssh -S ctl host true` through a ControlMaster");
    let mut ours_cli =
        Series::new("reach CLI: `reach exec host -- true` through its connection daemon");
    let mut ours = Series::new("reach library: exec `true` on a held connection");
    let mut ours_agent = Series::new(
        "reach library, `--ssh-agent-helper always`: exec `true` through the agent on the server",
    );
    for _ in 0..20 {
        through_master()?;
        warm_cli()?;
        rt.block_on(exec_true(&ssh))?;
        rt.block_on(exec_true(&with_agent))?;
    }
    for _ in 0..args.iterations {
        let (t, r) = time(through_master);
        r?;
        theirs.samples.push(t);
        let (t, r) = time(warm_cli);
        r?;
        ours_cli.samples.push(t);
        let (t, r) = time(|| rt.block_on(exec_true(&ssh)));
        r?;
        ours.samples.push(t);
        let (t, r) = time(|| rt.block_on(exec_true(&with_agent)));
        r?;
        ours_agent.samples.push(t);
    }
    let _ = Command::new("ssh")
        .args(&flags)
        .args(["-O", "exit", "-S"])
        .arg(&control)
        .arg("127.0.0.1")
        .output();
    Ok(Section::latency(
        "ssh exec latency on a held connection",
        format!(
            "`true` on a loopback sshd over a connection that is already open, {} interleaved \
             samples each. OpenSSH's figure includes starting the `ssh` client, which then \
             asks its ControlMaster (opened by hand: `ssh -M -o ControlPersist=yes`) for a \
             new session. reach's CLI figure includes starting `reach`, which hands the \
             command to its per-user connection daemon (started by the first call, no setup); \
             the library figures are a call that opens a session on a held connection, and \
             one that asks reach's agent on the server, running on one session of that \
             connection, to start the command (issue 29's target: at most half the time \
             of the plain session).",
            args.iterations
        ),
        &[theirs, ours_cli, ours, ours_agent],
    ))
}

fn fresh_connection(
    args: &Args,
    sshd: &SshdFixture,
    rt: &tokio::runtime::Runtime,
    reach_bin: &PathBuf,
) -> Result<Section, String> {
    let flags = openssh_flags(sshd);
    let plain = || run_ok(Command::new("ssh").args(&flags).args(["127.0.0.1", "true"]));
    let library = || {
        rt.block_on(async {
            let ssh = backend(sshd)?;
            exec_true(&ssh).await?;
            ssh.close().await.map_err(|e| e.to_string())
        })
    };
    let key = sshd.client_key();
    let known = sshd.known_hosts();
    let dest = sshd.destination();
    let cli = || {
        run_ok(
            Command::new(reach_bin)
                .args(["exec", "-n", "--no-reuse", "-i"])
                .arg(&key)
                .arg("--known-hosts")
                .arg(&known)
                .args(["-F", "/dev/null", &dest, "--", "true"]),
        )
    };
    let samples = (args.iterations / 3).max(10);
    let mut theirs = Series::new("OpenSSH: `ssh host true` (new connection)");
    let mut ours = Series::new("reach library: connect, auth, exec `true`, close");
    let mut ours_cli = Series::new("reach CLI: `reach exec host -- true` (new connection)");
    for _ in 0..5 {
        plain()?;
        library()?;
        cli()?;
    }
    for _ in 0..samples {
        let (t, r) = time(plain);
        r?;
        theirs.samples.push(t);
        let (t, r) = time(library);
        r?;
        ours.samples.push(t);
        let (t, r) = time(cli);
        r?;
        ours_cli.samples.push(t);
    }
    Ok(Section::latency(
        "ssh new connection + exec",
        format!(
            "TCP connect, key exchange, host key check, public key authentication and `true`, \
             {samples} interleaved samples each (ed25519 keys, both sides' default key \
             exchange)."
        ),
        &[theirs, ours, ours_cli],
    ))
}

fn throughput(
    args: &Args,
    sshd: &SshdFixture,
    rt: &tokio::runtime::Runtime,
) -> Result<Section, String> {
    let size = args.size_mib << 20;
    let remote_dir = sshd.user_dir("bench").map_err(|e| e.to_string())?;
    let local_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = local_dir.path().join("source");
    let back = local_dir.path().join("back");
    make_source(&source, size)?;
    let remote = format!("{remote_dir}/copy");
    let remote_path = PathBuf::from(&remote);
    let flags = openssh_flags(sshd);
    let target = |path: &str| format!("127.0.0.1:{path}");
    let ssh = backend(sshd)?;
    let fs = rt.block_on(ssh.fs()).map_err(|e| e.to_string())?;
    let sftp_batch = local_dir.path().join("batch");

    let steps: Vec<(&'static str, Step)> = vec![
        (
            "upload: OpenSSH scp",
            Box::new(|| {
                run_ok(
                    Command::new("scp")
                        .args(&flags)
                        .arg(&source)
                        .arg(target(&remote)),
                )?;
                same_size(&source, &remote_path)
            }),
        ),
        (
            "upload: OpenSSH sftp (batch put)",
            Box::new(|| {
                std::fs::write(&sftp_batch, format!("put {} {remote}\n", source.display()))
                    .map_err(|e| e.to_string())?;
                run_ok(
                    Command::new("sftp")
                        .args(&flags)
                        .arg("-b")
                        .arg(&sftp_batch)
                        .arg("127.0.0.1"),
                )?;
                same_size(&source, &remote_path)
            }),
        ),
        (
            "upload: reach FileSystem::open_write",
            Box::new(|| {
                rt.block_on(upload(&fs, &source, &remote))?;
                same_size(&source, &remote_path)
            }),
        ),
        (
            "download: OpenSSH scp",
            Box::new(|| {
                run_ok(
                    Command::new("scp")
                        .args(&flags)
                        .arg(target(&remote))
                        .arg(&back),
                )?;
                same_size(&source, &back)
            }),
        ),
        (
            "download: OpenSSH sftp (batch get)",
            Box::new(|| {
                std::fs::write(&sftp_batch, format!("get {remote} {}\n", back.display()))
                    .map_err(|e| e.to_string())?;
                run_ok(
                    Command::new("sftp")
                        .args(&flags)
                        .arg("-b")
                        .arg(&sftp_batch)
                        .arg("127.0.0.1"),
                )?;
                same_size(&source, &back)
            }),
        ),
        (
            "download: reach FileSystem::open_read",
            Box::new(|| {
                rt.block_on(download(&fs, &remote, &back))?;
                same_size(&source, &back)
            }),
        ),
    ];
    // The remote copy must exist before any download.
    steps[2].1()?;
    let rows = throughput_rounds(&steps, args.transfers, size, 3)?;
    // What reach downloaded is what was uploaded, byte for byte.
    run_ok(Command::new("cmp").arg(&source).arg(&back))?;
    Ok(Section {
        title: format!("ssh file throughput ({} MiB)", args.size_mib),
        text: format!(
            "One {} MiB file of incompressible bytes to and from the loopback sshd's disk, \
             {} rounds, the tools interleaved within each round; cipher {CIPHER} for all \
             (reach prefers it; OpenSSH is given `Ciphers={CIPHER}`). Debian 12's `scp` \
             speaks SFTP. reach's rows use the library alone: the SSH backend's \
             `FileSystem`, and for the download's local file the local backend's \
             `open_write` (no fsync, as scp and sftp do none). Every copy is checked for \
             size, and reach's last download is compared byte for byte with the source.",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to scp (median)"],
        rows,
    })
}
