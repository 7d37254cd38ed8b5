//! Docker scenarios, each against the docker CLI on the same container in the same run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use reach::docker::{DockerBackend, DockerOptions};
use reach::{Backend, Destination, ExecSpec, ProcessExt, StdinMode};
use reach_test::docker::ContainerFixture;
use tokio::io::AsyncWriteExt;

use crate::{
    download, exec_true, make_source, run_ok, runtime, same_size, throughput_rounds, time, upload,
    Args, Section, Series, Step,
};

/// Runs every Docker scenario in one busybox container.
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    reach_test::docker::ensure_engine().map_err(|e| format!("no Docker engine: {e}"))?;
    let container = ContainerFixture::busybox().map_err(|e| format!("busybox container: {e}"))?;
    let rt = runtime()?;
    let destination =
        Destination::parse(&container.destination(None)).map_err(|e| e.to_string())?;
    let backend =
        DockerBackend::new(destination, DockerOptions::default()).map_err(|e| e.to_string())?;
    Ok(vec![
        exec_latency(args, &container, &backend, &rt, reach_bin)?,
        throughput(args, &container, &backend, &rt)?,
        exec_streams(args, &container, &backend, &rt, reach_bin)?,
    ])
}

fn exec_latency(
    args: &Args,
    container: &ContainerFixture,
    backend: &DockerBackend,
    rt: &tokio::runtime::Runtime,
    reach_bin: &PathBuf,
) -> Result<Section, String> {
    let name = container.name().to_owned();
    let dest = container.destination(None);
    let docker = || run_ok(Command::new("docker").args(["exec", &name, "true"]));
    let library = || rt.block_on(exec_true(backend));
    let daemon = crate::WarmDaemon::new(reach_bin)?;
    let warm = || run_ok(daemon.reach().args(["exec", "-n", &dest, "--", "true"]));
    let cli =
        || run_ok(Command::new(reach_bin).args(["exec", "-n", "--no-reuse", &dest, "--", "true"]));
    let cli_bare = || {
        run_ok(Command::new(reach_bin).args([
            "exec",
            "-n",
            "--no-reuse",
            "--no-agent",
            &dest,
            "--",
            "true",
        ]))
    };
    let samples = (args.iterations / 3).max(10);
    let mut theirs = Series::new("docker CLI: `docker exec NAME true`");
    let mut ours = Series::new("reach library: exec `true` on a held backend");
    let mut ours_warm =
        Series::new("reach CLI: `reach exec docker://NAME -- true` (connection daemon)");
    let mut ours_cli = Series::new("reach CLI, direct: `reach exec --no-reuse ...`");
    let mut ours_bare = Series::new("reach CLI, direct, engine only: `... --no-agent ...`");
    for _ in 0..5 {
        docker()?;
        library()?;
        warm()?;
        cli()?;
        cli_bare()?;
    }
    for _ in 0..samples {
        for (series, step) in [
            (&mut theirs, &docker as &dyn Fn() -> Result<(), String>),
            (&mut ours, &library),
            (&mut ours_warm, &warm),
            (&mut ours_cli, &cli),
            (&mut ours_bare, &cli_bare),
        ] {
            let (t, r) = time(step);
            r?;
            series.samples.push(t);
        }
    }
    Ok(Section::latency(
        "docker exec latency",
        format!(
            "`true` in a running busybox container on the local engine, {samples} interleaved \
             samples each. The library keeps its backend, whose in-container agent (started \
             once, through one engine exec) forks the command: no runc exec per command. \
             A `reach` CLI run goes through the per-user connection daemon, which holds the \
             backend between runs (warm); with `--no-reuse` each run is on its own and must \
             start the in-container agent (or, with `--no-agent`, run an engine exec) before \
             the command, so it pays the same runc exec as `docker exec`."
        ),
        &[theirs, ours, ours_warm, ours_cli, ours_bare],
    ))
}

/// Checks that `path` in the container holds `size` bytes (with the container's own `stat`).
pub fn container_file_size(
    container: &ContainerFixture,
    path: &str,
    size: u64,
) -> Result<(), String> {
    let out = container
        .exec(&["stat", "-c", "%s", path])
        .map_err(|e| e.to_string())?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if got == size.to_string() {
        Ok(())
    } else {
        Err(format!(
            "{path} in the container has {got} bytes, expected {size}"
        ))
    }
}

fn throughput(
    args: &Args,
    container: &ContainerFixture,
    backend: &DockerBackend,
    rt: &tokio::runtime::Runtime,
) -> Result<Section, String> {
    let size = args.size_mib << 20;
    let local_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = local_dir.path().join("source");
    let back = local_dir.path().join("back");
    make_source(&source, size)?;
    let remote = "/tmp/copy";
    let fs = rt.block_on(backend.fs()).map_err(|e| e.to_string())?;
    let remote_size = || container_file_size(container, remote, size);
    let steps: Vec<(&'static str, Step)> = vec![
        (
            "copy in: `docker cp FILE NAME:PATH`",
            Box::new(|| {
                container
                    .cp_to(&source, remote)
                    .map_err(|e| e.to_string())?;
                remote_size()
            }),
        ),
        (
            "copy in: reach FileSystem::open_write",
            Box::new(|| {
                rt.block_on(upload(&fs, &source, remote))?;
                remote_size()
            }),
        ),
        (
            "copy out: `docker cp NAME:PATH FILE`",
            Box::new(|| {
                let _ = std::fs::remove_file(&back);
                container
                    .cp_from(remote, &back)
                    .map_err(|e| e.to_string())?;
                same_size(&source, &back)
            }),
        ),
        (
            "copy out: reach FileSystem::open_read",
            Box::new(|| {
                rt.block_on(download(&fs, remote, &back))?;
                same_size(&source, &back)
            }),
        ),
    ];
    steps[1].1()?;
    let rows = throughput_rounds(&steps, args.transfers, size, 2)?;
    // What reach read back is what was written, byte for byte.
    run_ok(Command::new("cmp").arg(&source).arg(&back))?;
    Ok(Section {
        title: format!("docker file throughput ({} MiB)", args.size_mib),
        text: format!(
            "One {} MiB file of incompressible bytes into and out of a busybox container on \
             the local engine, {} rounds, the tools interleaved within each round. `docker cp` \
             streams a tar through the engine's archive API; reach reads and writes through \
             its agent in the container (chunked requests, several in flight). \
             Every copy is checked for size, and reach's last read is compared byte for byte \
             with the source. While an archive read streams, the engine holds the container's \
             lock and every exec into that container waits for \
             it; reach reads through its agent to avoid that, and the agent's output crosses \
             containerd-shim and dockerd, which costs the engine more per byte than an archive \
             read.",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to docker cp (median)"],
        rows,
    })
}

/// What the output scenarios run in the container: `mib` MiB of zeros in 1 MiB writes.
pub fn dd_argv(mib: u64) -> Vec<String> {
    ["dd", "if=/dev/zero", "bs=1048576", &format!("count={mib}")]
        .map(str::to_owned)
        .to_vec()
}

/// Runs `cmd` with its stdout counted (stderr dropped) and `feed` bytes of zeros on its
/// stdin; the count of stdout bytes, or why the command failed.
fn counted(cmd: &mut Command, feed: Option<u64>) -> Result<(u64, Vec<u8>), String> {
    let mut child = cmd
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let writer = child.stdin.take().zip(feed).map(|(mut stdin, bytes)| {
        std::thread::spawn(move || {
            let zeros = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                stdin.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            Ok::<(), std::io::Error>(())
        })
    });
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        if head.len() < 64 {
            head.extend_from_slice(&buf[..n.min(64)]);
        }
        total += n as u64;
    }
    if let Some(writer) = writer {
        writer
            .join()
            .map_err(|_| "the stdin writer panicked".to_owned())?
            .map_err(|e| format!("writing stdin: {e}"))?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{cmd:?}: {status}"));
    }
    Ok((total, head))
}

fn expect_count(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} bytes, expected {want}"))
    }
}

/// `wc -c`'s answer must be `want`.
fn expect_wc(what: &str, said: &[u8], want: u64) -> Result<(), String> {
    let text = String::from_utf8_lossy(said);
    if text.trim() == want.to_string() {
        Ok(())
    } else {
        Err(format!("{what}: `wc -c` said {text:?}, expected {want}"))
    }
}

/// Output through the library: stdout read to its end and counted.
pub async fn library_output(backend: &dyn Backend, argv: Vec<String>) -> Result<u64, String> {
    let process = backend
        .exec(ExecSpec::argv(argv))
        .await
        .map_err(|e| e.to_string())?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    let total = tokio::io::copy(&mut stdout, &mut tokio::io::sink())
        .await
        .map_err(|e| e.to_string())?;
    let status = process.wait().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("dd in the container: {status}"));
    }
    Ok(total)
}

/// Input through the library: `bytes` of zeros into `wc -c`, and its answer.
async fn library_input(backend: &dyn Backend, bytes: u64) -> Result<Vec<u8>, String> {
    let process = backend
        .exec(ExecSpec::argv(["wc", "-c"]).stdin(StdinMode::Piped))
        .await
        .map_err(|e| e.to_string())?;
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let zeros = vec![0u8; 1 << 20];
    let feed = async {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            stdin.write_all(&zeros[..n]).await?;
            left -= n as u64;
        }
        stdin.shutdown().await
    };
    let (fed, out) = tokio::join!(feed, process.output());
    fed.map_err(|e| format!("writing stdin: {e}"))?;
    let out = out.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("wc in the container: {}", out.status));
    }
    Ok(out.stdout)
}

fn exec_streams(
    args: &Args,
    container: &ContainerFixture,
    backend: &DockerBackend,
    rt: &tokio::runtime::Runtime,
    reach_bin: &Path,
) -> Result<Section, String> {
    let mib = args.size_mib;
    let size = mib << 20;
    let name = container.name().to_owned();
    let dest = container.destination(None);
    let daemon = crate::WarmDaemon::new(reach_bin)?;
    let dd = dd_argv(mib);
    let steps: Vec<(&'static str, Step)> = vec![
        (
            "output: `docker exec NAME dd …`",
            Box::new(|| {
                let (got, _) =
                    counted(Command::new("docker").args(["exec", &name]).args(&dd), None)?;
                expect_count("docker exec dd", got, size)
            }),
        ),
        (
            "output: reach library, stdout read",
            Box::new(|| {
                let got = rt.block_on(library_output(backend, dd.clone()))?;
                expect_count("library dd", got, size)
            }),
        ),
        (
            "output: `reach exec docker://NAME -- dd …` (connection daemon)",
            Box::new(|| {
                let (got, _) = counted(daemon.reach().args(["exec", &dest, "--"]).args(&dd), None)?;
                expect_count("reach exec dd", got, size)
            }),
        ),
        (
            "input: `docker exec -i NAME wc -c`",
            Box::new(|| {
                let (_, said) = counted(
                    Command::new("docker").args(["exec", "-i", &name, "wc", "-c"]),
                    Some(size),
                )?;
                expect_wc("docker exec -i", &said, size)
            }),
        ),
        (
            "input: reach library, stdin written",
            Box::new(|| {
                let said = rt.block_on(library_input(backend, size))?;
                expect_wc("library stdin", &said, size)
            }),
        ),
        (
            "input: `reach exec docker://NAME -- wc -c` (connection daemon)",
            Box::new(|| {
                let (_, said) = counted(
                    daemon.reach().args(["exec", &dest, "--", "wc", "-c"]),
                    Some(size),
                )?;
                expect_wc("reach exec stdin", &said, size)
            }),
        ),
    ];
    // Once each first: the agents start, and a failure shows before any timing.
    for (_, step) in &steps {
        step()?;
    }
    let rows = throughput_rounds(&steps, args.transfers, size, 3)?;
    Ok(Section {
        title: format!("docker exec streams ({mib} MiB)"),
        text: format!(
            "{mib} MiB through a command's stdout (`dd if=/dev/zero bs=1048576`) and into its \
             stdin (`wc -c`, whose count is checked) in a busybox container on the local \
             engine, {} rounds, interleaved. The docker CLI streams through one engine exec; \
             reach through its in-container agent, under flow control (a 2 MiB window per \
             stream), and the CLI also through the connection daemon (warm).",
            args.transfers
        ),
        columns: ["median", "best", "ratio to the docker CLI (median)"],
        rows,
    })
}
