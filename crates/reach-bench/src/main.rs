//! reach-bench: measures reach side by side with a reference in the same run, and reports
//! ratios (these machines are shared and noisy, so absolute times mean little on their own).
//!
//! Scenarios (samples of the things compared are interleaved so that background noise hits
//! them alike):
//! - `local`: `/bin/true` on `local`, through the library and the `reach exec` CLI, against
//!   spawning `/bin/true` directly (the physical floor).
//! - `ssh` (needs root and Debian's sshd, as the tests do): against OpenSSH on the same
//!   throwaway sshd: exec on a held connection vs `ssh` through a ControlMaster; a fresh
//!   connection + exec vs plain `ssh`; upload and download of a large file through the SFTP
//!   `FileSystem` vs `scp` and `sftp`, all with the same cipher.
//! - `docker` (needs the Docker engine and Debian's busybox-static, as the tests do): in a
//!   busybox container, exec on a held backend and `reach exec` vs `docker exec`; a large
//!   file in and out through the `FileSystem` (the agent) vs `docker cp`.
//! - `cp` (needs root, sshd, rsync and the Docker engine): `reach cp` of a large file and of
//!   10,000 small files to and from the sshd vs `scp` and `rsync`, and of a large file into
//!   and out of a container vs `docker cp`.
//! - `fanout` (needs root, sshd, parallel-ssh and ansible): `true` on 50 and 500 distinct
//!   SSH targets (32 sshd servers on 16 loopback addresses each) with `reach exec -H` vs
//!   `xargs -P` + `ssh`, parallel-ssh and `ansible -m raw`.
//! - `proot` (needs proot and busybox-static): `true` through `reach exec proot://` against
//!   proot run directly on the same root file system.
//! - `pull` (needs docker-registry, skopeo, umoci and the Docker engine): `reach pull` of a
//!   large layered image against `skopeo copy` + `umoci unpack` of it.
//! - `plugin` (needs python3): exec latency and a large stdout through the Python reference
//!   adapter against the `local` backend doing the same on the same host.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use reach::{Backend, ExecSpec, FileSystem, ProcessExt, WriteOptions};
use tokio::io::{AsyncWriteExt, BufReader};

/// Benchmarks reach and writes docs/BENCHMARKS.md.
#[derive(Debug, Parser)]
struct Args {
    /// Samples per measurement.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// The `reach` binary to measure (default: next to this one).
    #[arg(long)]
    reach_bin: Option<PathBuf>,
    /// Write the Markdown report here (for example docs/BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Which scenarios to run: `local`, `ssh`, `docker`, `cp`, `serve`, `fanout` (repeatable;
    /// default all).
    #[arg(long = "only")]
    only: Vec<String>,
    /// Size of the file moved by the SSH throughput scenario, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Samples per direction and tool in the throughput scenario.
    #[arg(long, default_value_t = 3)]
    transfers: usize,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// One table of the report.
#[derive(Debug)]
pub struct Section {
    title: String,
    text: String,
    /// Column headers after the name.
    columns: [&'static str; 3],
    rows: Vec<[String; 4]>,
}

impl Section {
    /// A latency table: median, p90 and the ratio of medians to the first series.
    fn latency(title: &str, text: String, series: &[Series]) -> Section {
        let reference = series.first().map(Series::median).unwrap_or_default();
        let rows = series
            .iter()
            .map(|s| {
                let ratio = s.median().as_secs_f64() / reference.as_secs_f64().max(f64::EPSILON);
                [
                    s.name.to_owned(),
                    format!("{:.3} ms", s.median().as_secs_f64() * 1000.0),
                    format!("{:.3} ms", s.p90().as_secs_f64() * 1000.0),
                    format!("{ratio:.2}x"),
                ]
            })
            .collect();
        Section {
            title: title.to_owned(),
            text,
            columns: ["median", "p90", "ratio to the first row (median)"],
            rows,
        }
    }
}

mod cp;
mod docker;
mod fanout;
mod plugin;
mod proot;
mod pull;
mod serve;
mod ssh;

/// Timings of one measured thing.
#[derive(Debug)]
pub struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str) -> Self {
        Series {
            name,
            samples: Vec::new(),
        }
    }

    fn median(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    fn p90(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted
            .get(sorted.len() * 9 / 10)
            .copied()
            .unwrap_or_default()
    }
}

pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let value = f();
    (start.elapsed(), value)
}

/// A connection daemon of the benchmark's own (its runtime directory is private to this run),
/// stopped when dropped.
#[derive(Debug)]
pub struct WarmDaemon {
    dir: tempfile::TempDir,
    reach_bin: PathBuf,
}

impl WarmDaemon {
    pub fn new(reach_bin: &Path) -> Result<WarmDaemon, String> {
        Ok(WarmDaemon {
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            reach_bin: reach_bin.to_owned(),
        })
    }

    /// `reach` going through this daemon.
    pub fn reach(&self) -> Command {
        let mut cmd = Command::new(&self.reach_bin);
        cmd.env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("REACH_NO_REUSE");
        cmd
    }
}

impl Drop for WarmDaemon {
    fn drop(&mut self) {
        let _ = self.reach().args(["connections", "stop"]).output();
    }
}

/// Runs `true` on `backend` to its end; an error unless it succeeded.
pub async fn exec_true(backend: &dyn Backend) -> Result<(), String> {
    exec_ok(backend, ExecSpec::argv(["true"])).await
}

/// Runs `spec` on `backend` to its end; an error unless it succeeded.
pub async fn exec_ok(backend: &dyn Backend, spec: ExecSpec) -> Result<(), String> {
    let line = format!("{:?}", spec.command);
    let out = backend
        .exec(spec)
        .await
        .map_err(|e| e.to_string())?
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{line} on `{}` gave {}",
            backend.destination(),
            out.status
        ))
    }
}

pub fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} exited with {status}"))
    }
}

fn local_exec(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let backend = reach::Registry::with_defaults()
        .resolve("local")
        .map_err(|e| e.to_string())?;
    let library_once = |backend: &dyn Backend| {
        runtime.block_on(async {
            let process = backend.exec(ExecSpec::argv(["/bin/true"])).await?;
            process.wait().await
        })
    };
    let mut floor = Series::new("spawn /bin/true directly (floor)");
    let mut library = Series::new("reach library: LocalBackend exec + wait");
    let mut cli = Series::new("reach CLI: `reach exec local -- /bin/true`");
    // Warm up caches and the page cache of the binaries.
    for _ in 0..20 {
        run_ok(&mut Command::new("/bin/true"))?;
        run_ok(Command::new(reach_bin).args(["exec", "-n", "local", "--", "/bin/true"]))?;
        library_once(backend.as_ref()).map_err(|e| e.to_string())?;
    }
    for _ in 0..args.iterations {
        let (t, r) = time(|| run_ok(&mut Command::new("/bin/true")));
        r?;
        floor.samples.push(t);
        let (t, r) = time(|| library_once(backend.as_ref()));
        let status = r.map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("library exec of /bin/true gave {status}"));
        }
        library.samples.push(t);
        let (t, r) = time(|| {
            run_ok(Command::new(reach_bin).args(["exec", "-n", "local", "--", "/bin/true"]))
        });
        r?;
        cli.samples.push(t);
    }
    let text = format!(
        "`/bin/true` on `local`, {} interleaved samples each. The floor is spawning \
         `/bin/true` directly from a Rust program; the CLI figure includes starting the \
         `reach` process itself.",
        args.iterations
    );
    Ok(vec![Section::latency(
        "local exec latency",
        text,
        &[floor, library, cli],
    )])
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // One thread, as the `reach` CLI runs: on two cores the other one is the server's.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A file of `size` bytes that does not compress.
pub fn make_source(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    file.flush().map_err(|e| e.to_string())
}

pub async fn upload(fs: &Arc<dyn FileSystem>, local: &Path, remote: &str) -> Result<(), String> {
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let len = std::fs::metadata(local).map_err(|e| e.to_string())?.len();
    let options = WriteOptions {
        len: Some(len),
        ..WriteOptions::default()
    };
    let mut writer = fs
        .open_write(remote, options)
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::copy_buf(&mut reader, &mut writer)
        .await
        .map_err(|e| e.to_string())?;
    writer.shutdown().await.map_err(|e| e.to_string())
}

/// Reads `remote` into the local file `local` through reach's own local file system, as a
/// program built on the library would.
pub async fn download(fs: &Arc<dyn FileSystem>, remote: &str, local: &Path) -> Result<(), String> {
    let reader = fs.open_read(remote).await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let here = reach::connect("local")
        .await
        .map_err(|e| e.to_string())?
        .fs()
        .await
        .map_err(|e| e.to_string())?;
    let path = local.to_str().ok_or("a local path that is not UTF-8")?;
    let mut writer = here
        .open_write(path, WriteOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::copy_buf(&mut reader, &mut writer)
        .await
        .map_err(|e| e.to_string())?;
    // No fsync of the local copy: scp and sftp do not either.
    writer.shutdown().await.map_err(|e| e.to_string())
}

pub fn same_size(a: &Path, b: &Path) -> Result<(), String> {
    let (x, y) = (
        std::fs::metadata(a).map_err(|e| e.to_string())?.len(),
        std::fs::metadata(b).map_err(|e| e.to_string())?.len(),
    );
    if x == y {
        Ok(())
    } else {
        Err(format!("{} has {y} bytes, expected {x}", b.display()))
    }
}

/// One copy step of a throughput scenario: copies and checks the result.
pub type Step<'a> = Box<dyn Fn() -> Result<(), String> + 'a>;

/// Runs every step `rounds` times, the steps interleaved within each round (so that noise
/// hits them alike), and makes one row per step: median and best rate for `bytes`, and the
/// ratio of its median to the first step of its group of `group` consecutive steps.
pub fn throughput_rounds(
    steps: &[(&'static str, Step)],
    rounds: usize,
    bytes: u64,
    group: usize,
) -> Result<Vec<[String; 4]>, String> {
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
    for _ in 0..rounds {
        for (i, (_, step)) in steps.iter().enumerate() {
            let start = Instant::now();
            step()?;
            seconds[i].push(start.elapsed().as_secs_f64());
        }
    }
    let mb = bytes as f64 / 1e6;
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::INFINITY)
    };
    let best = |v: &Vec<f64>| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mut rows = Vec::new();
    for first in (0..steps.len()).step_by(group.max(1)) {
        let reference = mb / median(&seconds[first]);
        for i in first..(first + group).min(steps.len()) {
            let rate = mb / median(&seconds[i]);
            rows.push([
                steps[i].0.to_owned(),
                format!("{rate:.0} MB/s"),
                format!("{:.0} MB/s", mb / best(&seconds[i])),
                format!("{:.2}x", rate / reference),
            ]);
        }
    }
    Ok(rows)
}

/// OpenSSH client options for a non-interactive run against a test server: no user config,
/// no prompts, the host key checked against `known_hosts`, only `key` offered.
pub fn openssh_flags(known_hosts: &Path, key: &Path) -> Vec<String> {
    let mut flags = vec!["-F".to_owned(), "/dev/null".to_owned()];
    for option in [
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        format!("IdentityFile={}", key.display()),
        "IdentitiesOnly=yes".to_owned(),
    ] {
        flags.push("-o".into());
        flags.push(option);
    }
    flags
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

fn report(args: &Args, sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Every figure comes from one run of `reach-bench`, measured side by side with its \
         reference in the same run and reported as a ratio: the machines are shared and \
         noisy, so absolute times are for orientation only.\n"
    );
    let _ = writeln!(
        out,
        "Reproduce (as root, with openssh-server, rsync, busybox-static, pssh, ansible-core \
         and a Docker engine):\n"
    );
    let _ = writeln!(
        out,
        "```sh\ncargo build --release -p reach-cli -p reach-bench\n\
         target/release/reach-bench --iterations {} --size-mib {} --transfers {} \
         --write docs/BENCHMARKS.md\n```\n",
        args.iterations, args.size_mib, args.transfers
    );
    let _ = writeln!(out, "Machine: {}.\n", machine());
    for section in sections {
        let _ = writeln!(out, "## {}\n", section.title);
        let _ = writeln!(out, "{}\n", section.text);
        let [a, b, c] = section.columns;
        let _ = writeln!(out, "| what | {a} | {b} | {c} |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for [name, x, y, z] in &section.rows {
            let _ = writeln!(out, "| {name} | {x} | {y} | {z} |");
        }
        let _ = writeln!(out);
    }
    out
}

/// A scenario: its sections of the report, or why it could not run.
type Scenario = fn(&Args, &PathBuf) -> Result<Vec<Section>, String>;

fn main() {
    let args = Args::parse();
    let reach_bin = args.reach_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("reach")))
            .unwrap_or_else(|| PathBuf::from("reach"))
    });
    let mut sections = Vec::new();
    let scenarios: [(&str, Scenario); 9] = [
        ("local", local_exec),
        ("ssh", ssh::run),
        ("docker", docker::run),
        ("cp", cp::run),
        ("serve", serve::run),
        ("fanout", fanout::run),
        ("plugin", plugin::run),
        ("proot", proot::run),
        ("pull", pull::run),
    ];
    for (name, scenario) in scenarios {
        if !args.wants(name) {
            continue;
        }
        eprintln!("reach-bench: running `{name}`");
        match scenario(&args, &reach_bin) {
            Ok(mut more) => sections.append(&mut more),
            Err(err) => {
                eprintln!("reach-bench: `{name}` failed: {err}");
                std::process::exit(1);
            }
        }
    }
    let text = report(&args, &sections);
    print!("{text}");
    if let Some(path) = &args.write {
        if let Err(err) = std::fs::write(path, &text) {
            eprintln!("reach-bench: cannot write {}: {err}", path.display());
            std::process::exit(1);
        }
    }
}
