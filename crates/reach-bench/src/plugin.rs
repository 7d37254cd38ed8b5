//! Plugin scenarios: the Python reference adapter against the `local` backend doing the same
//! work on the same host in the same run, so that the ratio is the protocol's cost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reach::plugin::{AdapterConfig, PluginBackend, PluginOptions, PluginSettings, Trust};
use reach::{Backend, Destination};

use crate::docker::{dd_argv, library_output};
use crate::{exec_true, runtime, throughput_rounds, time, Args, Section, Series, Step};

/// `examples/plugins/reach-backend-demo`, pinned to its digest, serving `demo://bench`.
fn demo_backend(root: &Path) -> Result<PluginBackend, String> {
    let adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/reach-backend-demo");
    let digest = reach::plugin::VerifiedProgram::open(&adapter, Trust::Unpinned)
        .map_err(|e| e.to_string())?
        .digest();
    let mut settings = PluginSettings::default();
    settings.adapters.insert(
        "demo".to_owned(),
        AdapterConfig {
            path: Some(adapter),
            sha256: Some(reach::plugin::hex(&digest)),
            args: vec!["--root".to_owned(), root.display().to_string()],
            env: Default::default(),
        },
    );
    let destination = Destination::parse("demo://bench").map_err(|e| e.to_string())?;
    PluginBackend::new(
        destination,
        PluginOptions {
            settings,
            ..PluginOptions::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// Runs every plugin scenario.
pub fn run(args: &Args, _reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let plugin: Arc<dyn Backend> = Arc::new(demo_backend(root.path())?);
    let local = reach::Registry::with_defaults()
        .resolve("local")
        .map_err(|e| e.to_string())?;
    rt.block_on(plugin.connect()).map_err(|e| e.to_string())?;
    Ok(vec![
        exec_latency(args, &rt, local.as_ref(), plugin.as_ref())?,
        output(args, &rt, local.as_ref(), plugin.as_ref())?,
    ])
}

fn exec_latency(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    local: &dyn Backend,
    plugin: &dyn Backend,
) -> Result<Section, String> {
    let mut theirs = Series::new("local backend: exec `true`");
    let mut ours = Series::new("plugin (Python reference adapter): exec `true`");
    for _ in 0..10 {
        rt.block_on(exec_true(local))?;
        rt.block_on(exec_true(plugin))?;
    }
    for _ in 0..args.iterations {
        for (series, backend) in [(&mut theirs, local), (&mut ours, plugin)] {
            let (t, r) = time(|| rt.block_on(exec_true(backend)));
            r?;
            series.samples.push(t);
        }
    }
    let extra = ours.median().saturating_sub(theirs.median());
    let within = if extra <= Duration::from_millis(1) {
        "within"
    } else {
        "over"
    };
    Ok(Section::latency(
        "plugin exec latency",
        format!(
            "`true` on this host through a held backend, {} interleaved samples each: the \
             `local` backend forks it from reach; the reference adapter \
             (`examples/plugins/reach-backend-demo`, Python, one session for all) gets an \
             `exec` request, forks it, and streams back its (empty) output and exit. The \
             plugin costs {:.3} ms more per command at the median ({within} the 1 ms target).",
            args.iterations,
            extra.as_secs_f64() * 1000.0
        ),
        &[theirs, ours],
    ))
}

fn output(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    local: &dyn Backend,
    plugin: &dyn Backend,
) -> Result<Section, String> {
    let mib = args.size_mib;
    let size = mib << 20;
    let dd = dd_argv(mib);
    let expect = |what: &str, got: u64| {
        if got == size {
            Ok(())
        } else {
            Err(format!("{what}: {got} bytes of {size}"))
        }
    };
    let steps: Vec<(&'static str, Step)> = vec![
        (
            "local backend: stdout of `dd if=/dev/zero bs=1M`",
            Box::new(|| expect("local", rt.block_on(library_output(local, dd.clone()))?)),
        ),
        (
            "plugin (Python reference adapter): the same",
            Box::new(|| expect("plugin", rt.block_on(library_output(plugin, dd.clone()))?)),
        ),
    ];
    for (_, step) in &steps {
        step()?;
    }
    let rows = throughput_rounds(&steps, args.transfers, size, 2)?;
    Ok(Section {
        title: format!("plugin stdout throughput ({mib} MiB)"),
        text: format!(
            "{mib} MiB through a command's stdout on this host, read through the library, {} \
             rounds, interleaved. The adapter reads the pipe in 256 KiB pieces and sends each \
             as one `data` line followed by its raw bytes (no base64), within a 1 MiB window \
             per stream that reach acknowledges as it reads. Target: at least half the local \
             backend's rate (a ratio of 0.50x or more).",
            args.transfers
        ),
        columns: ["median", "best", "ratio to the local backend (median)"],
        rows,
    })
}
