//! proot scenarios: `reach exec proot://DIR` against `proot` run directly on the same busybox
//! root file system, in the same run.

use std::path::PathBuf;
use std::process::Command;

use reach::proot::{ProotBackend, ProotOptions};
use reach::{Backend, Destination, ProcessExt};

use crate::{exec_true, run_ok, runtime, time, Args, Section, Series};

/// Runs every proot scenario.
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    reach_test::docker::busybox_rootfs(dir.path()).map_err(|e| e.to_string())?;
    let root = dir.path().display().to_string();
    let dest = format!("proot://{root}");
    let backend = ProotBackend::new(
        Destination::parse(&dest).map_err(|e| e.to_string())?,
        ProotOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let direct = || {
        run_ok(Command::new("proot").args([
            "-r",
            &root,
            "-w",
            "/",
            "-b",
            "/dev",
            "-b",
            "/proc",
            "-b",
            "/sys",
            "/bin/true",
        ]))
    };
    let library = || rt.block_on(exec_true(&backend as &dyn Backend));
    // The same proot command line, spawned by the local backend: what reach adds to proot
    // itself, apart from what the local backend's spawn costs.
    let local = reach::Registry::with_defaults()
        .resolve("local")
        .map_err(|e| e.to_string())?;
    let through_local = || {
        rt.block_on(async {
            let spec = reach::ExecSpec::argv([
                "proot",
                "-r",
                &root,
                "-w",
                "/",
                "-b",
                "/dev",
                "-b",
                "/proc",
                "-b",
                "/sys",
                "/bin/true",
            ]);
            let out = local
                .exec(spec)
                .await
                .map_err(|e| e.to_string())?
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("proot through the local backend: {}", out.status))
            }
        })
    };
    let cli =
        || run_ok(Command::new(reach_bin).args(["exec", "-n", "--no-reuse", &dest, "--", "true"]));
    let mut theirs =
        Series::new("proot directly: `proot -r DIR -b /dev -b /proc -b /sys /bin/true`");
    let mut spawned = Series::new("the same proot command, run by reach's local backend");
    let mut ours = Series::new("reach library: exec `true` on proot://DIR");
    let mut ours_cli = Series::new("reach CLI: `reach exec proot://DIR -- true`");
    for _ in 0..5 {
        direct()?;
        through_local()?;
        library()?;
        cli()?;
    }
    let samples = (args.iterations / 3).max(10);
    for _ in 0..samples {
        for (series, step) in [
            (&mut theirs, &direct as &dyn Fn() -> Result<(), String>),
            (&mut spawned, &through_local),
            (&mut ours, &library),
            (&mut ours_cli, &cli),
        ] {
            let (t, r) = time(step);
            r?;
            series.samples.push(t);
        }
    }
    Ok(vec![Section::latency(
        "proot exec latency",
        format!(
            "`true` in a busybox root file system, {samples} interleaved samples each. reach \
             runs proot with `-v 1`, so that the command's own end can be read from proot's \
             report of every process's end (proot's exit status is the last normal exit of \
             any process), and checks the program and the working directory inside the root \
             first. The CLI adds its own start. Target: the library at most 1.1x proot's \
             time."
        ),
        &[theirs, spawned, ours, ours_cli],
    )])
}
