//! `reach cp` against `scp`, `rsync` (over the same sshd, same cipher) and `docker cp`: one
//! large file and a tree of 10,000 small files, each way. Every step starts from an empty
//! destination (made ready untimed), and every result is checked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use reach_test::docker::ContainerFixture;
use reach_test::sshd::SshdFixture;

use crate::ssh::openssh_flags;
use crate::{make_source, run_ok, same_size, Args, Section, Step};

use crate::ssh::CIPHER;
/// Files in the tree scenario, and their size.
const TREE_FILES: usize = 10_000;
const TREE_FILE_SIZE: usize = 4096;

/// A copy: made ready (untimed), then run (timed) and checked (untimed).
struct Copy<'a> {
    name: &'static str,
    prepare: Step<'a>,
    run: Step<'a>,
    check: Step<'a>,
}

/// Medians and bests in seconds of `rounds` interleaved rounds.
fn rounds(copies: &[Copy], rounds: usize) -> Result<Vec<(f64, f64)>, String> {
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); copies.len()];
    for _ in 0..rounds {
        for (i, copy) in copies.iter().enumerate() {
            (copy.prepare)()?;
            let start = Instant::now();
            (copy.run)().map_err(|e| format!("{}: {e}", copy.name))?;
            seconds[i].push(start.elapsed().as_secs_f64());
            (copy.check)().map_err(|e| format!("{}: {e}", copy.name))?;
        }
    }
    Ok(seconds
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            let median = v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY);
            (median, v.first().copied().unwrap_or(f64::INFINITY))
        })
        .collect())
}

/// Rows of rate (`unit` per second of `amount`) and ratio to the first of each `group`.
fn rows(
    copies: &[Copy],
    times: &[(f64, f64)],
    amount: f64,
    unit: &str,
    group: usize,
) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    for first in (0..copies.len()).step_by(group) {
        let reference = times[first].0;
        for i in first..(first + group).min(copies.len()) {
            let (median, best) = times[i];
            rows.push([
                copies[i].name.to_owned(),
                format!("{:.0} {unit}/s", amount / median),
                format!("{:.0} {unit}/s", amount / best),
                format!("{:.2}x", reference / median),
            ]);
        }
    }
    rows
}

/// What a user of scp does for the check reach cp makes: the copy, then the SHA-256 of the
/// file on the server and here (the two at once), which must match.
fn scp_then_hashes(
    flags: &[String],
    from: &str,
    to: &str,
    local: &Path,
    remote: &str,
) -> Result<(), String> {
    use std::process::Stdio;
    run_ok(Command::new("scp").args(flags).arg(from).arg(to))?;
    let theirs = Command::new("ssh")
        .args(flags)
        .arg("127.0.0.1")
        .arg(format!("openssl dgst -sha256 -r {remote}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ssh: {e}"))?;
    let ours = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(local)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let theirs = theirs.wait_with_output().map_err(|e| format!("ssh: {e}"))?;
    let hex = |out: &[u8]| String::from_utf8_lossy(out.get(..64).unwrap_or_default()).into_owned();
    if !ours.status.success() || !theirs.status.success() || hex(&ours.stdout).len() != 64 {
        return Err(format!(
            "hashing failed: {} / {}",
            ours.status, theirs.status
        ));
    }
    if hex(&ours.stdout) != hex(&theirs.stdout) {
        return Err("the two SHA-256 differ".into());
    }
    Ok(())
}

fn reach_cp(reach_bin: &Path, sshd: &SshdFixture) -> Command {
    let mut cmd = Command::new(reach_bin);
    cmd.arg("cp")
        .arg("-q")
        .arg("-i")
        .arg(sshd.client_key())
        .arg("--known-hosts")
        .arg(sshd.known_hosts());
    cmd
}

fn remove(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| e.to_string()),
        Ok(_) => std::fs::remove_file(path).map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    }
}

/// Same file names and sizes under both trees.
fn same_tree(a: &Path, b: &Path) -> Result<(), String> {
    let list = |root: &Path| -> Result<Vec<(String, u64)>, String> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                let entry = entry.map_err(|e| e.to_string())?;
                let meta = entry.metadata().map_err(|e| e.to_string())?;
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else {
                    let rel = entry
                        .path()
                        .strip_prefix(root)
                        .map_err(|e| e.to_string())?
                        .display()
                        .to_string();
                    out.push((rel, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    };
    let (x, y) = (list(a)?, list(b)?);
    if x == y {
        Ok(())
    } else {
        Err(format!(
            "{} holds {} files, {} holds {}",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        ))
    }
}

fn make_tree(root: &Path) -> Result<(), String> {
    for d in 0..10 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for f in 0..TREE_FILES / 10 {
            let mut data = vec![0u8; TREE_FILE_SIZE];
            let mut state = (d * 100_000 + f) as u64 | 1;
            for chunk in data.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(dir.join(format!("f{f:04}")), data).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Runs the copy scenarios (the signature every scenario shares).
#[allow(clippy::ptr_arg)]
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    if !SshdFixture::available() {
        return Err("the cp scenarios need /usr/sbin/sshd (apt-get install openssh-server)".into());
    }
    for tool in ["rsync", "scp"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "the cp scenarios need `{tool}` (apt-get install rsync)"
            ));
        }
    }
    let sshd = SshdFixture::start().map_err(|e| format!("start sshd: {e}"))?;
    let mut sections = vec![
        big_file(args, reach_bin, &sshd)?,
        tree(args, reach_bin, &sshd)?,
    ];
    if reach_test::docker::ensure_engine().is_ok() {
        sections.push(docker_file(args, reach_bin)?);
    } else {
        return Err("the cp scenarios need a Docker engine".into());
    }
    Ok(sections)
}

fn big_file(args: &Args, reach_bin: &Path, sshd: &SshdFixture) -> Result<Section, String> {
    let size = args.size_mib << 20;
    let remote_dir = sshd.user_dir("cp-bench").map_err(|e| e.to_string())?;
    let local = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = local.path().join("source");
    let back = local.path().join("back");
    make_source(&source, size)?;
    let remote = PathBuf::from(format!("{remote_dir}/copy"));
    let remote_s = remote.display().to_string();
    let (source_s, back_s) = (source.display().to_string(), back.display().to_string());
    let flags = openssh_flags(sshd);
    let rsh = format!("ssh {}", flags.join(" "));
    let scp_target = format!("127.0.0.1:{remote_s}");
    let reach_target = format!("{}{remote_s}", sshd.destination());
    let clear_remote = || remove(&remote);
    let clear_back = || remove(&back);
    let remote_ok = || same_size(&source, &remote);
    let back_ok = || same_size(&source, &back);
    // Downloads need the remote copy; each upload's check leaves it there.
    let copies = vec![
        Copy {
            name: "upload: OpenSSH scp",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    Command::new("scp")
                        .args(&flags)
                        .arg(&source)
                        .arg(&scp_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: OpenSSH scp, then SHA-256 here and on the server",
            prepare: Box::new(clear_remote),
            run: Box::new(|| scp_then_hashes(&flags, &source_s, &scp_target, &source, &remote_s)),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: rsync over ssh",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    Command::new("rsync")
                        .arg("-e")
                        .arg(&rsh)
                        .arg(&source)
                        .arg(&scp_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: reach cp (hashed, verified, fsynced)",
            prepare: Box::new(clear_remote),
            run: Box::new(|| run_ok(reach_cp(reach_bin, sshd).arg(&source).arg(&reach_target))),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: reach cp --no-verify (hashed while sent, fsynced, not checked)",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    reach_cp(reach_bin, sshd)
                        .arg("--no-verify")
                        .arg(&source)
                        .arg(&reach_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "download: OpenSSH scp",
            prepare: Box::new(clear_back),
            run: Box::new(|| run_ok(Command::new("scp").args(&flags).arg(&scp_target).arg(&back))),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: OpenSSH scp, then SHA-256 here and on the server",
            prepare: Box::new(clear_back),
            run: Box::new(|| scp_then_hashes(&flags, &scp_target, &back_s, &back, &remote_s)),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: rsync over ssh",
            prepare: Box::new(clear_back),
            run: Box::new(|| {
                run_ok(
                    Command::new("rsync")
                        .arg("-e")
                        .arg(&rsh)
                        .arg(&scp_target)
                        .arg(&back),
                )
            }),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: reach cp (hashed, verified, fsynced)",
            prepare: Box::new(clear_back),
            run: Box::new(|| run_ok(reach_cp(reach_bin, sshd).arg(&reach_target).arg(&back))),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: reach cp --no-verify (hashed while received, fsynced, not checked)",
            prepare: Box::new(clear_back),
            run: Box::new(|| {
                run_ok(
                    reach_cp(reach_bin, sshd)
                        .arg("--no-verify")
                        .arg(&reach_target)
                        .arg(&back),
                )
            }),
            check: Box::new(back_ok),
        },
    ];
    let times = rounds(&copies, args.transfers)?;
    run_ok(Command::new("cmp").arg(&source).arg(&back))?;
    Ok(Section {
        title: format!("reach cp: one {} MiB file over ssh", args.size_mib),
        text: format!(
            "One {} MiB file of incompressible bytes to and from the loopback sshd, {} rounds, \
             the tools interleaved within each round, every destination removed (untimed) \
             before each copy; cipher {CIPHER} for all. reach cp streams through a \
             `.NAME.reach-part` temporary and hashes what it sends or receives; the other \
             side hashes too, over the same connection and while the bytes stream (uploads: \
             Python maps each acknowledged 32 MiB of the part into hashlib, or GNU dd \
             feeds it to `openssl dgst` where there is no Python; \
             downloads: `openssl dgst` of the source), and the two must match; then fsync \
             and rename. Two SHA-256 passes over every byte, on the same two cores as \
             everything else; scp and rsync do none of the hashing or syncing. The rows \
             `scp, then SHA-256 here and on the server` add what a user of scp does for the \
             same check: once the copy is done, `openssl dgst` of the file on the server \
             (over a new ssh connection) and here, the two at once, compared (no fsync).",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to scp (median)"],
        rows: rows(&copies, &times, size as f64 / 1e6, "MB", 5),
    })
}

/// A tmpfs mounted for the tree scenario, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1g,mode=1777", "reach-bench"])
                .arg(dir.path()),
        )?;
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn tree(args: &Args, reach_bin: &Path, sshd: &SshdFixture) -> Result<Section, String> {
    // On a tmpfs: on this ext4, creating files after the previous rounds deleted thousands
    // costs the kernel ~0.9 ms each (inode allocation skipping recently deleted inodes),
    // which drowned every tool's own cost and varied with the deletion history.
    let disk = Tmpfs::mount()?;
    let local = disk.0.path().join("local");
    std::fs::create_dir(&local).map_err(|e| e.to_string())?;
    let remote_dir = disk.0.path().join("remote");
    std::fs::create_dir(&remote_dir).map_err(|e| e.to_string())?;
    run_ok(Command::new("chown").arg(sshd.user()).arg(&remote_dir))?;
    let remote_dir = remote_dir.display().to_string();
    let source = local.join("tree");
    make_tree(&source)?;
    let back = local.join("back");
    let remote = PathBuf::from(format!("{remote_dir}/tree"));
    let remote_s = remote.display().to_string();
    let flags = openssh_flags(sshd);
    let rsh = format!("ssh {}", flags.join(" "));
    let scp_target = format!("127.0.0.1:{remote_s}");
    let reach_target = format!("{}{remote_s}", sshd.destination());
    let clear_remote = || remove(&remote);
    let clear_back = || remove(&back);
    let remote_ok = || same_tree(&source, &remote);
    let back_ok = || same_tree(&source, &back);
    let source_slash = format!("{}/", source.display());
    let copies = vec![
        Copy {
            name: "upload: OpenSSH scp -r",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    Command::new("scp")
                        .args(&flags)
                        .arg("-r")
                        .arg(&source)
                        .arg(&scp_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: rsync -r over ssh",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    Command::new("rsync")
                        .arg("-r")
                        .arg("-e")
                        .arg(&rsh)
                        .arg(&source_slash)
                        .arg(&scp_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "upload: reach cp -r (each file hashed, verified, fsynced, renamed)",
            prepare: Box::new(clear_remote),
            run: Box::new(|| {
                run_ok(
                    reach_cp(reach_bin, sshd)
                        .arg("-r")
                        .arg(&source)
                        .arg(&reach_target),
                )
            }),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "download: OpenSSH scp -r",
            prepare: Box::new(clear_back),
            run: Box::new(|| {
                run_ok(
                    Command::new("scp")
                        .args(&flags)
                        .arg("-r")
                        .arg(&scp_target)
                        .arg(&back),
                )
            }),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: rsync -r over ssh",
            prepare: Box::new(clear_back),
            run: Box::new(|| {
                run_ok(
                    Command::new("rsync")
                        .arg("-r")
                        .arg("-e")
                        .arg(&rsh)
                        .arg(format!("{scp_target}/"))
                        .arg(&back),
                )
            }),
            check: Box::new(back_ok),
        },
        Copy {
            name: "download: reach cp -r (each file hashed, verified, fsynced, renamed)",
            prepare: Box::new(clear_back),
            run: Box::new(|| {
                run_ok(
                    reach_cp(reach_bin, sshd)
                        .arg("-r")
                        .arg(&reach_target)
                        .arg(&back),
                )
            }),
            check: Box::new(back_ok),
        },
    ];
    let times = rounds(&copies, args.transfers)?;
    Ok(Section {
        title: format!(
            "reach cp -r: {TREE_FILES} files of {} KiB over ssh",
            TREE_FILE_SIZE / 1024
        ),
        text: format!(
            "A tree of {TREE_FILES} files of {TREE_FILE_SIZE} bytes in 10 directories to and \
             from the loopback sshd, {} rounds, interleaved, each destination removed \
             (untimed) first; cipher {CIPHER}; source and destinations on a tmpfs (on this \
             ext4, creating files after earlier rounds deleted thousands cost the kernel \
             ~0.9 ms each, for every tool, and drowned what the tools themselves do). Rates \
             are files per second. reach cp sends the tree as one tar stream that the server \
             unpacks into `.tree.reach-part/`, syncs and hashes file by file in the same \
             command (GNU tar, sha256sum), compares every hash, then renames the directory \
             into place; downloads unpack the server's tar stream here and compare with the \
             server's hashes.",
            args.transfers
        ),
        columns: ["median", "best", "speed-up over scp -r (median)"],
        rows: rows(&copies, &times, TREE_FILES as f64, "files", 3),
    })
}

fn docker_file(args: &Args, reach_bin: &Path) -> Result<Section, String> {
    let size = args.size_mib << 20;
    let container = ContainerFixture::busybox().map_err(|e| e.to_string())?;
    let local = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = local.path().join("source");
    let back = local.path().join("back");
    make_source(&source, size)?;
    let remote = "/tmp/copy";
    let reach_remote = format!("{}{remote}", container.destination(None));
    let clear_remote = || {
        container
            .exec(&["rm", "-f", remote])
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let remote_ok = || crate::docker::container_file_size(&container, remote, size);
    let clear_back = || remove(&back);
    let back_ok = || same_size(&source, &back);
    let cp = || {
        let mut cmd = Command::new(reach_bin);
        cmd.args(["cp", "-q"]);
        cmd
    };
    let copies = vec![
        Copy {
            name: "copy in: docker cp",
            prepare: Box::new(clear_remote),
            run: Box::new(|| container.cp_to(&source, remote).map_err(|e| e.to_string())),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "copy in: reach cp (hashed, verified, fsynced)",
            prepare: Box::new(clear_remote),
            run: Box::new(|| run_ok(cp().arg(&source).arg(&reach_remote))),
            check: Box::new(remote_ok),
        },
        Copy {
            name: "copy out: docker cp",
            prepare: Box::new(clear_back),
            run: Box::new(|| container.cp_from(remote, &back).map_err(|e| e.to_string())),
            check: Box::new(back_ok),
        },
        Copy {
            name: "copy out: reach cp (hashed, verified, fsynced)",
            prepare: Box::new(clear_back),
            run: Box::new(|| run_ok(cp().arg(&reach_remote).arg(&back))),
            check: Box::new(back_ok),
        },
    ];
    let times = rounds(&copies, args.transfers)?;
    run_ok(Command::new("cmp").arg(&source).arg(&back))?;
    Ok(Section {
        title: format!(
            "reach cp: one {} MiB file into and out of a container",
            args.size_mib
        ),
        text: format!(
            "One {} MiB file of incompressible bytes to and from a busybox container on the \
             local engine, {} rounds, interleaved, destinations removed (untimed) first. \
             `docker cp` streams a tar through the engine's archive API; reach cp goes \
             through its agent in the container (started by each `reach` process with one \
             engine exec), hashing, verifying against the agent's SHA-256 (of the part \
             once written, copying in; of the source while it streams, copying out), \
             fsyncing and renaming. While an archive read streams, the engine holds the \
             container's lock and every exec into that container waits for \
             it; reach reads through its agent to avoid that, and the agent's output crosses \
             containerd-shim and dockerd, which costs the engine more per byte than an archive \
             read.",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to docker cp (median)"],
        rows: rows(&copies, &times, size as f64 / 1e6, "MB", 2),
    })
}
