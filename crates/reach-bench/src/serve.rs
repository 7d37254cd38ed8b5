//! `reach serve` (local backend) against the Debian sshd, with the same OpenSSH clients: exec
//! latency on a new connection, 1 GiB sftp both ways, and the gateway's memory while it holds
//! 200 idle sessions.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reach_test::sshd::SshdFixture;

use crate::ssh::{server_flags as flags, CIPHER};
use crate::{make_source, run_ok, same_size, throughput_rounds, time, Args, Section, Series, Step};

/// A running `reach serve`, killed on drop.
struct Serve {
    child: Child,
    port: u16,
    known_hosts: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(reach_bin: &Path, dir: &Path, authorized: &Path) -> Result<Serve, String> {
    let mut child = Command::new(reach_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--authorized-keys"])
        .arg(authorized)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start reach serve: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .ok_or("reach serve printed nothing")?;
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let port = first
        .split("\"addr\":\"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| format!("no address in `{first}`"))?;
    let known_hosts = dir.join("gateway_known_hosts");
    reach_test::sshd::write_known_hosts(
        &dir.join("state/ssh_host_ed25519_key.pub"),
        port,
        &known_hosts,
    )
    .map_err(|e| e.to_string())?;
    Ok(Serve {
        child,
        port,
        known_hosts,
    })
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_owned())
}

#[allow(clippy::ptr_arg)] // the signature every scenario has
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    if !SshdFixture::available() {
        return Err(
            "the serve scenarios need /usr/sbin/sshd (apt-get install openssh-server)".into(),
        );
    }
    let sshd = SshdFixture::start().map_err(|e| format!("start sshd: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(sshd.client_key().with_extension("pub"), &authorized)
        .map_err(|e| e.to_string())?;
    let serve = start(reach_bin, dir.path(), &authorized)?;
    let direct = flags(
        sshd.port(),
        sshd.user(),
        &sshd.known_hosts(),
        &sshd.client_key(),
    );
    let gateway = flags(serve.port, "bench", &serve.known_hosts, &sshd.client_key());
    Ok(vec![
        latency(args, &direct, &gateway)?,
        sftp(args, &sshd, &direct, &gateway, dir.path())?,
        memory(&serve, &gateway)?,
    ])
}

fn latency(args: &Args, direct: &[String], gateway: &[String]) -> Result<Section, String> {
    let exec =
        |flags: &[String]| run_ok(Command::new("ssh").args(flags).args(["127.0.0.1", "true"]));
    let samples = (args.iterations / 3).max(10);
    let mut theirs = Series::new("OpenSSH `ssh host true` → Debian sshd");
    let mut ours = Series::new("OpenSSH `ssh host true` → reach serve (local backend)");
    for _ in 0..5 {
        exec(direct)?;
        exec(gateway)?;
    }
    for _ in 0..samples {
        let (t, r) = time(|| exec(direct));
        r?;
        theirs.samples.push(t);
        let (t, r) = time(|| exec(gateway));
        r?;
        ours.samples.push(t);
    }
    Ok(Section::latency(
        "gateway: exec latency (new connection)",
        format!(
            "The same OpenSSH client, key and cipher ({CIPHER}): TCP connect, key exchange, \
             host key check, public key authentication, `true` run by a shell, exit status; \
             {samples} interleaved samples each. sshd forks a privilege-separated child per \
             connection; reach serve runs as root here, sessions as its own user."
        ),
        &[theirs, ours],
    ))
}

fn sftp(
    args: &Args,
    sshd: &SshdFixture,
    direct: &[String],
    gateway: &[String],
    dir: &Path,
) -> Result<Section, String> {
    let size = args.size_mib << 20;
    let source = dir.join("source");
    let back = dir.join("back");
    make_source(&source, size)?;
    let sshd_remote = format!(
        "{}/copy",
        sshd.user_dir("bench-serve").map_err(|e| e.to_string())?
    );
    let gateway_dir = dir.join("gateway-side");
    std::fs::create_dir_all(&gateway_dir).map_err(|e| e.to_string())?;
    let gateway_remote = gateway_dir.join("copy").display().to_string();
    let batch = dir.join("batch");
    let transfer = |flags: &[String], command: String| -> Result<(), String> {
        std::fs::write(&batch, command).map_err(|e| e.to_string())?;
        run_ok(
            Command::new("sftp")
                .args(flags)
                .arg("-b")
                .arg(&batch)
                .arg("127.0.0.1"),
        )
    };
    let put = |flags: &[String], remote: &str| {
        transfer(flags, format!("put {} {remote}\n", source.display()))?;
        same_size(&source, Path::new(remote))
    };
    let get = |flags: &[String], remote: &str| {
        transfer(flags, format!("get {remote} {}\n", back.display()))?;
        same_size(&source, &back)
    };
    let steps: Vec<(&'static str, Step)> = vec![
        (
            "upload: sftp → Debian sshd",
            Box::new(|| put(direct, &sshd_remote)),
        ),
        (
            "upload: sftp → reach serve",
            Box::new(|| put(gateway, &gateway_remote)),
        ),
        (
            "download: sftp ← Debian sshd",
            Box::new(|| get(direct, &sshd_remote)),
        ),
        (
            "download: sftp ← reach serve",
            Box::new(|| get(gateway, &gateway_remote)),
        ),
    ];
    let rows = throughput_rounds(&steps, args.transfers, size, 2)?;
    // What came back through the gateway is what went in.
    run_ok(Command::new("cmp").arg(&source).arg(&back))?;
    Ok(Section {
        title: format!("gateway: sftp throughput ({} MiB)", args.size_mib),
        text: format!(
            "`sftp -b` put and get of one {} MiB file of incompressible bytes, {} rounds, \
             interleaved; cipher {CIPHER}. The gateway serves SFTP itself from the local \
             backend's FileSystem (no sftp-server process).",
            args.size_mib, args.transfers
        ),
        columns: ["median", "best", "ratio to sshd (median)"],
        rows,
    })
}

const SESSIONS: usize = 200;

fn memory(serve: &Serve, gateway: &[String]) -> Result<Section, String> {
    let pid = serve.child.id();
    // One connection first, so that what is measured is sessions, not first-use setup.
    run_ok(
        Command::new("ssh")
            .args(gateway)
            .args(["127.0.0.1", "true"]),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid)?;
    struct Clients(Vec<Child>);
    impl Drop for Clients {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut clients = Clients(Vec::new());
    let ready = std::env::temp_dir().join(format!("reach-bench-sessions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ready);
    std::fs::create_dir_all(&ready).map_err(|e| e.to_string())?;
    for i in 0..SESSIONS {
        // Each session marks itself ready, then idles.
        let command = format!("touch {}/{i}; exec sleep 600", ready.display());
        let child = Command::new("ssh")
            .args(gateway)
            .args(["127.0.0.1", &command])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        clients.0.push(child);
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let started = Instant::now();
    loop {
        let n = std::fs::read_dir(&ready)
            .map_err(|e| e.to_string())?
            .count();
        if n >= SESSIONS {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {n} of {SESSIONS} sessions started"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let held = rss_kib(pid)?;
    drop(clients);
    let _ = std::fs::remove_dir_all(&ready);
    let per = (held.saturating_sub(before)) as f64 / SESSIONS as f64;
    Ok(Section {
        title: format!("gateway: memory with {SESSIONS} idle sessions"),
        text: format!(
            "Resident memory (VmRSS) of the `reach serve` process after one warm-up \
             connection, then with {SESSIONS} OpenSSH clients connected, each with one \
             session running `sleep` (local backend). The sessions' own processes are not \
             counted (they are the backend's, as sshd's children would be)."
        ),
        columns: ["value", "", ""],
        rows: vec![
            [
                "gateway RSS before".to_owned(),
                format!("{:.1} MiB", before as f64 / 1024.0),
                String::new(),
                String::new(),
            ],
            [
                format!("gateway RSS holding {SESSIONS} sessions"),
                format!("{:.1} MiB", held as f64 / 1024.0),
                String::new(),
                String::new(),
            ],
            [
                "memory per idle session".to_owned(),
                format!("{per:.0} KiB"),
                String::new(),
                String::new(),
            ],
        ],
    })
}
