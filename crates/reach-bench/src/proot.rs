//! proot scenarios: `reach exec proot://DIR` against `proot` run directly on the same busybox
//! root file system, in the same run.

use std::path::PathBuf;
use std::process::Command;

use reach::proot::{ProotBackend, ProotOptions};
use reach::{Backend, Destination};

use crate::{exec_ok, exec_true, run_ok, runtime, time, Args, Section, Series};

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
    // proot's command line for `/bin/true`, as it would be typed; `-v 1` is what reach adds
    // to read the command's own end.
    let argv = |verbose: bool| {
        let mut argv = vec!["-r", root.as_str(), "-w", "/", "-b", "/dev", "-b", "/proc"];
        argv.extend(["-b", "/sys"]);
        if verbose {
            argv.extend(["-v", "1"]);
        }
        argv.push("/bin/true");
        argv.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let direct = |verbose: bool| run_ok(Command::new("proot").args(argv(verbose)));
    let plain = || direct(false);
    let verbose = || direct(true);
    let library = || rt.block_on(exec_true(&backend as &dyn Backend));
    // The `-v 1` command line spawned by the local backend: what the local backend's spawn
    // costs, apart from the proot backend's own work.
    let local = reach::Registry::with_defaults()
        .resolve("local")
        .map_err(|e| e.to_string())?;
    let through_local = || {
        let mut words = vec!["proot".to_owned()];
        words.extend(argv(true));
        rt.block_on(exec_ok(&*local, reach::ExecSpec::argv(words)))
    };
    let cli =
        || run_ok(Command::new(reach_bin).args(["exec", "-n", "--no-reuse", &dest, "--", "true"]));
    let mut theirs =
        Series::new("proot directly: `proot -r DIR -w / -b /dev -b /proc -b /sys /bin/true`");
    let mut theirs_verbose = Series::new("proot directly, with `-v 1` added");
    let mut spawned = Series::new("proot with `-v 1`, spawned by reach's local backend");
    let mut ours = Series::new("reach library: exec `true` on proot://DIR");
    let mut ours_cli = Series::new("reach CLI: `reach exec proot://DIR -- true`");
    for _ in 0..5 {
        plain()?;
        verbose()?;
        through_local()?;
        library()?;
        cli()?;
    }
    let samples = (args.iterations / 3).max(10);
    for _ in 0..samples {
        for (series, step) in [
            (&mut theirs, &plain as &dyn Fn() -> Result<(), String>),
            (&mut theirs_verbose, &verbose),
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
        &[theirs, theirs_verbose, spawned, ours, ours_cli],
    )])
}
