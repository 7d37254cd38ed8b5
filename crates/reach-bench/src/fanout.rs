//! `true` on 50 and 500 distinct SSH targets: 32 Debian sshd servers, each listening on 16
//! loopback addresses (sshd's limit; every target is a connection of its own), against
//! `xargs -P` + `ssh`, parallel-ssh and `ansible -m raw`, all at the same parallelism, each
//! with its own default key exchange; parallel-ssh and Ansible once more with reach's.

use std::path::{Path, PathBuf};
use std::process::Command;

use reach_test::sshd::SshdFixture;

use crate::{run_ok, time, Args, Section, Series};

/// How many connections every tool opens at once.
const PARALLEL: usize = 32;
/// Lifted so that sshd never drops the waves of new connections.
const SSHD_EXTRA: &str = "MaxStartups 2000:30:4000\nMaxSessions 100\n";
/// `-r`: sshd serves each connection from a fork of itself instead of executing itself anew,
/// which takes about a third off what the servers spend per connection. Every tool is served
/// by the same servers; what is left is the machine's share that no client can remove.
const SSHD_ARGS: &[&str] = &["-r"];
/// The key exchange reach makes with Debian 12's sshd (OpenSSH 9.2), given to the OpenSSH
/// clients in the same-exchange rows. Their default, sntrup761x25519-sha512@openssh.com, is
/// post-quantum and costs the client far more CPU per connection.
const REACH_KEX: &str = "KexAlgorithms=curve25519-sha256";

/// One target, as each tool needs it.
struct Host {
    address: String,
    port: u16,
}

#[allow(clippy::ptr_arg)] // the signature every scenario has
pub fn run(args: &Args, reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    if !SshdFixture::available() {
        return Err(
            "the fanout scenario needs /usr/sbin/sshd (apt-get install openssh-server)".into(),
        );
    }
    for (tool, package) in [("parallel-ssh", "pssh"), ("ansible", "ansible-core")] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "the fanout scenario needs `{tool}` (apt-get install {package})"
            ));
        }
    }
    let servers = (0..32)
        .map(|_| {
            SshdFixture::start_on_with_args(16, SSHD_EXTRA, SSHD_ARGS)
                .map_err(|e| format!("start sshd: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // One key and one known_hosts for all.
    let key = servers[0].client_key();
    let public = std::fs::read_to_string(key.with_extension("pub")).map_err(|e| e.to_string())?;
    for server in &servers[1..] {
        server.authorize(&public).map_err(|e| e.to_string())?;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let known_hosts = dir.path().join("known_hosts");
    let mut known = String::new();
    for s in &servers {
        known.push_str(&std::fs::read_to_string(s.known_hosts()).map_err(|e| e.to_string())?);
    }
    std::fs::write(&known_hosts, known).map_err(|e| e.to_string())?;
    let hosts: Vec<Host> = servers
        .iter()
        .flat_map(|s| {
            s.addresses().iter().map(|a| Host {
                address: a.clone(),
                port: s.port(),
            })
        })
        .collect();
    let user = servers[0].user().to_owned();
    let rounds = (args.iterations / 100).clamp(1, 3);
    let mut sections = Vec::new();
    for count in [50, 500] {
        let setup = Setup::write(dir.path(), &hosts[..count], &user, &key, &known_hosts)?;
        sections.push(measure(&setup, reach_bin, count, rounds)?);
    }
    Ok(sections)
}

/// The host lists and inventories for one size.
struct Setup {
    reach_hosts: PathBuf,
    pssh_hosts: PathBuf,
    ansible_inventory: PathBuf,
    ssh_flags: Vec<String>,
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Setup {
    fn write(
        dir: &Path,
        hosts: &[Host],
        user: &str,
        key: &Path,
        known_hosts: &Path,
    ) -> Result<Setup, String> {
        let n = hosts.len();
        let path = |name: &str| dir.join(format!("{name}-{n}"));
        let mut reach = String::new();
        let mut pssh = String::new();
        let mut ansible = String::from("[targets]\n");
        for (i, h) in hosts.iter().enumerate() {
            reach.push_str(&format!("ssh://{user}@{}:{}\n", h.address, h.port));
            pssh.push_str(&format!("{user}@{}:{}\n", h.address, h.port));
            ansible.push_str(&format!(
                "t{i} ansible_host={} ansible_port={} ansible_user={user}\n",
                h.address, h.port
            ));
        }
        let write = |p: &Path, text: &str| std::fs::write(p, text).map_err(|e| e.to_string());
        write(&path("reach"), &reach)?;
        write(&path("pssh"), &pssh)?;
        write(&path("ansible"), &ansible)?;
        let mut ssh_flags = crate::openssh_flags(known_hosts, key);
        ssh_flags.extend(["-o".into(), "ControlMaster=no".into()]);
        Ok(Setup {
            reach_hosts: path("reach"),
            pssh_hosts: path("pssh"),
            ansible_inventory: path("ansible"),
            ssh_flags,
            key: key.to_owned(),
            known_hosts: known_hosts.to_owned(),
        })
    }

    fn reach(&self, reach_bin: &Path) -> Command {
        let mut cmd = Command::new(reach_bin);
        cmd.args(["exec", "-j", &PARALLEL.to_string(), "-H"])
            .arg(&self.reach_hosts)
            .arg("-i")
            .arg(&self.key)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .args(["--", "true"]);
        cmd
    }

    fn xargs(&self) -> Command {
        // Each line is user@address:port; ssh wants the port apart.
        let script = format!(
            "h=${{0%:*}}; p=${{0##*:}}; exec ssh {} -p \"$p\" \"$h\" true",
            self.ssh_flags.join(" ")
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "xargs -P {PARALLEL} -n 1 sh -c '{script}' < {}",
            self.pssh_hosts.display()
        ));
        cmd
    }

    /// OpenSSH's flags, plus `-o` and each of `options`.
    fn flags_with(&self, options: &[&str]) -> String {
        let mut flags = self.ssh_flags.clone();
        for option in options {
            flags.extend(["-o".to_owned(), (*option).to_owned()]);
        }
        flags.join(" ")
    }

    fn pssh(&self, options: &[&str]) -> Command {
        let mut cmd = Command::new("parallel-ssh");
        cmd.args(["-p", &PARALLEL.to_string(), "-t", "60", "-h"])
            .arg(&self.pssh_hosts)
            .arg("-x")
            .arg(self.flags_with(options))
            .arg("true");
        cmd
    }

    fn ansible(&self, options: &[&str]) -> Command {
        let mut cmd = Command::new("ansible");
        cmd.args([
            "targets",
            "-m",
            "raw",
            "-a",
            "true",
            "-f",
            &PARALLEL.to_string(),
            "-i",
        ])
        .arg(&self.ansible_inventory)
        .arg("--private-key")
        .arg(&self.key)
        // Fresh connections, as the others make: no ControlPersist left from a round.
        .env("ANSIBLE_SSH_ARGS", self.flags_with(options))
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOAD_CALLBACK_PLUGINS", "0");
        cmd
    }
}

fn measure(
    setup: &Setup,
    reach_bin: &Path,
    count: usize,
    rounds: usize,
) -> Result<Section, String> {
    // Each with the label its CPU figures go under.
    type Step<'a> = (Series, &'static str, Box<dyn Fn() -> Command + 'a>);
    let mut steps: Vec<Step> = vec![
        (
            Series::new("reach exec -H hosts -j 32 -- true"),
            "reach",
            Box::new(|| setup.reach(reach_bin)),
        ),
        (
            Series::new("xargs -P 32 + ssh (one process per target)"),
            "xargs",
            Box::new(|| setup.xargs()),
        ),
        (
            Series::new("parallel-ssh -p 32 true"),
            "parallel-ssh",
            Box::new(|| setup.pssh(&[])),
        ),
        (
            Series::new("ansible targets -m raw -a true -f 32"),
            "ansible",
            Box::new(|| setup.ansible(&[])),
        ),
        (
            Series::new(
                "parallel-ssh with reach's key exchange (-o KexAlgorithms=curve25519-sha256)",
            ),
            "parallel-ssh (curve25519)",
            Box::new(|| setup.pssh(&[REACH_KEX])),
        ),
        (
            Series::new("ansible with reach's key exchange (the same option in ANSIBLE_SSH_ARGS)"),
            "ansible (curve25519)",
            Box::new(|| setup.ansible(&[REACH_KEX])),
        ),
    ];
    // A first pass that must succeed everywhere: every tool reaches every target.
    for (series, _, make) in &steps {
        run_ok(&mut make()).map_err(|e| format!("{}: {e}", series.name))?;
    }
    // CPU seconds per round: the tool's own (with the processes it waited for) and the whole
    // machine's (the sshd servers share it).
    let mut cpu = vec![(0.0f64, 0.0f64); steps.len()];
    for _ in 0..rounds {
        for ((series, _, make), used) in steps.iter_mut().zip(cpu.iter_mut()) {
            let before = CpuTicks::now();
            let (t, r) = time(|| run_ok(&mut make()));
            r.map_err(|e| format!("{}: {e}", series.name))?;
            let spent = CpuTicks::now().since(&before);
            used.0 += spent.0 / rounds as f64;
            used.1 += spent.1 / rounds as f64;
            series.samples.push(t);
        }
    }
    let labels: Vec<&str> = steps.iter().map(|(_, label, _)| *label).collect();
    let series: Vec<Series> = steps.into_iter().map(|(s, _, _)| s).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_text: Vec<String> = series
        .iter()
        .zip(&cpu)
        .zip(&labels)
        .map(|((s, (own, machine)), label)| {
            let wall: f64 = s.samples.iter().map(|d| d.as_secs_f64()).sum::<f64>()
                / s.samples.len().max(1) as f64;
            format!(
                "{label}: {own:.2} s of its own, machine busy {machine:.2} s ({:.0}% of {cores} cores)",
                100.0 * machine / (wall * cores).max(f64::EPSILON)
            )
        })
        .collect();
    let text = format!(
        "`true` on {count} distinct targets (32 Debian sshd servers, each on 16 loopback \
         addresses 127.0.0.x with `MaxStartups` raised and started with `-r`, so that every \
         target is its own connection and no connection re-executes sshd), {PARALLEL} at a \
         time for every tool, fresh connections every round (no ControlMaster), ed25519 keys; \
         each tool's own default key exchange (reach: curve25519-sha256; OpenSSH 9.2: \
         sntrup761x25519-sha512@openssh.com), and the last two rows give parallel-ssh and \
         Ansible reach's. {rounds} interleaved rounds after a first pass that must reach every \
         target. Each figure is the whole run's wall time. CPU per round (from /proc): {}.",
        cpu_text.join("; ")
    );
    Ok(Section::latency(
        &format!("fan-out: `true` on {count} targets"),
        text,
        &series,
    ))
}

/// CPU time so far, in seconds: this process's waited-for children (a tool and everything
/// it waited for), and the whole machine's busy time (all cores, idle and iowait excluded).
struct CpuTicks(f64, f64);

impl CpuTicks {
    fn now() -> CpuTicks {
        // Linux counts both in USER_HZ, which is 100 on every architecture it runs on.
        const HZ: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name; cutime and cstime are fields 16 and 17.
        let fields: Vec<f64> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        let children =
            fields.get(13).copied().unwrap_or(0.0) + fields.get(14).copied().unwrap_or(0.0);
        let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<f64> = all
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
        CpuTicks(children / HZ, (cpu.iter().sum::<f64>() - idle) / HZ)
    }

    fn since(&self, before: &CpuTicks) -> (f64, f64) {
        (self.0 - before.0, self.1 - before.1)
    }
}
