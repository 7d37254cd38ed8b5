//! Docker scenarios, each against the docker CLI on the same container in the same run.

use std::path::PathBuf;
use std::process::Command;

use reach::docker::{DockerBackend, DockerOptions};
use reach::{Backend, Destination, ExecSpec, ProcessExt};
use reach_test::docker::ContainerFixture;

use crate::{
    download, make_source, run_ok, runtime, same_size, throughput_rounds, time, upload, Args,
    Section, Series, Step,
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
    ])
}

async fn exec_true(backend: &dyn Backend) -> Result<(), String> {
    let out = backend
        .exec(ExecSpec::argv(["true"]))
        .await
        .map_err(|e| e.to_string())?
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`true` in the container gave {}", out.status))
    }
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
    let agent = crate::WarmAgent::new(reach_bin)?;
    let warm = || run_ok(agent.reach().args(["exec", "-n", &dest, "--", "true"]));
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
    let mut ours_warm = Series::new("reach CLI: `reach exec docker://NAME -- true` (warm agent)");
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
             A `reach` CLI run goes through the per-user connection agent, which holds the \
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
             with the source.",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to docker cp (median)"],
        rows,
    })
}
