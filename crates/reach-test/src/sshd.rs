//! A real OpenSSH server for tests: the Debian `sshd` binary on a random loopback port, with
//! a throwaway host key, a client key in `authorized_keys`, and a `known_hosts` file that
//! trusts the host key. Stopped and removed on `Drop`, even when a test fails.
//!
//! Run as root, the server logs in a dedicated unprivileged user (`reachtest`, created on first
//! use with `/bin/sh` as its fast-starting login shell), so that permission checks mean
//! something; run as anyone else, it logs in that user.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary from Debian's `openssh-server`.
pub const SSHD: &str = "/usr/sbin/sshd";
/// The user the fixture logs in when the tests run as root.
pub const TEST_USER: &str = "reachtest";

/// A running sshd.
#[derive(Debug)]
pub struct SshdFixture {
    dir: tempfile::TempDir,
    child: Child,
    /// sshd has been waited for: its pid is free for any process to take, so nothing may be
    /// signalled by it any more.
    reaped: bool,
    port: u16,
    user: String,
    home: String,
    addresses: Vec<String>,
}

fn run(cmd: &mut Command) -> io::Result<std::process::Output> {
    crate::run_checked(cmd.stdin(Stdio::null()))
}

/// Creates [`TEST_USER`] if it does not exist; tolerates another test process doing the same
/// at the same moment.
fn ensure_test_user() -> io::Result<String> {
    for _ in 0..20 {
        if let Ok(out) = run(Command::new("getent").args(["passwd", TEST_USER])) {
            // sshd refuses accounts whose password is locked (`!`); `*` only disables
            // password logins.
            let _ = Command::new("usermod")
                .args(["--password", "*", TEST_USER])
                .status();
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let fields: Vec<&str> = line.trim_end().split(':').collect();
            if let [_, _, uid, gid, _, home, ..] = fields[..] {
                let (uid, gid) = (uid.parse().unwrap_or(0), gid.parse().unwrap_or(0));
                settled_home(home, uid, gid)?;
                return Ok(home.to_owned());
            }
        }
        let status = Command::new("useradd")
            .args([
                "--create-home",
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                TEST_USER,
            ])
            .stderr(Stdio::null())
            .status()?;
        // 9: the name is taken (another process won the race); 10: /etc/passwd was locked.
        if !(status.success() || matches!(status.code(), Some(9) | Some(10))) {
            return Err(io::Error::other(format!(
                "useradd {TEST_USER} failed: {status}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(io::Error::other(format!(
        "could not create the user {TEST_USER}"
    )))
}

/// Waits for `home` to be the user's own directory. A `useradd --create-home` racing in
/// another test process has the user in /etc/passwd before it has made the home and given
/// it to them; a test that started then found it root's ("permission denied").
fn settled_home(home: &str, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::metadata(home) {
            Ok(meta) if meta.is_dir() && meta.uid() == uid => return Ok(()),
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            // No useradd is finishing it: make it the user's.
            _ => {
                std::fs::create_dir_all(home)?;
                return std::os::unix::fs::chown(home, Some(uid), Some(gid));
            }
        }
    }
}

/// Writes a `known_hosts` file at `out` that trusts the host key in `public_key` (an
/// OpenSSH `.pub` file) for `[127.0.0.1]:port`.
pub fn write_known_hosts(public_key: &Path, port: u16, out: &Path) -> io::Result<()> {
    write_known_hosts_for(public_key, &["127.0.0.1".to_owned()], port, out)
}

/// Like [`write_known_hosts`], for every address in `addresses`.
pub fn write_known_hosts_for(
    public_key: &Path,
    addresses: &[String],
    port: u16,
    out: &Path,
) -> io::Result<()> {
    let text = std::fs::read_to_string(public_key)?;
    let mut words = text.split_whitespace();
    let (algo, key) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let hosts: Vec<String> = addresses.iter().map(|a| format!("[{a}]:{port}")).collect();
    std::fs::write(out, format!("{} {algo} {key}\n", hosts.join(",")))
}

/// Creates (if needed) the local user `name` with login shell `/bin/sh` and sets its
/// password, for password-authentication tests. Needs root.
pub fn ensure_password_user(name: &str, password: &str) -> io::Result<()> {
    if run(Command::new("getent").args(["passwd", name])).is_err() {
        let status = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", name])
            .stderr(Stdio::null())
            .status()?;
        if !(status.success() || status.code() == Some(9)) {
            return Err(io::Error::other(format!("useradd {name} failed: {status}")));
        }
    }
    use std::io::Write;
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{name}:{password}")?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chpasswd for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl SshdFixture {
    /// Whether the sshd binary is installed.
    pub fn available() -> bool {
        Path::new(SSHD).exists()
    }

    /// For a test called `test`: a started server, or `None` after [`crate::skip`] said
    /// that sshd is missing (which panics under `REACH_REQUIRE_REAL=1`).
    ///
    /// # Panics
    ///
    /// When sshd is installed but does not start.
    #[allow(clippy::expect_used)]
    pub fn start_or_skip(test: &str) -> Option<SshdFixture> {
        if !Self::available_or_skip(test) {
            return None;
        }
        Some(Self::start().expect("start sshd"))
    }

    /// For a test called `test` that starts its own server: whether sshd is installed;
    /// when it is not, [`crate::skip`] has said so (which panics under
    /// `REACH_REQUIRE_REAL=1`).
    pub fn available_or_skip(test: &str) -> bool {
        if Self::available() {
            return true;
        }
        crate::skip(
            test,
            "/usr/sbin/sshd is missing (apt-get install openssh-server)",
        );
        false
    }

    /// Starts a server; fails if sshd is missing or does not come up within 10 s.
    pub fn start() -> io::Result<SshdFixture> {
        Self::start_with("")
    }

    /// Starts a server with `extra` sshd_config lines, which take precedence over the
    /// fixture's own (sshd keeps the first value it reads for each keyword).
    pub fn start_with(extra: &str) -> io::Result<SshdFixture> {
        Self::start_on(1, extra)
    }

    /// Starts a server listening on `count` loopback addresses (127.0.0.1, 127.0.0.2, ...)
    /// with one port, so that each address is a target of its own; `known_hosts` trusts the
    /// host key on all of them. At most 16: sshd's own limit on listening sockets.
    pub fn start_on(count: usize, extra: &str) -> io::Result<SshdFixture> {
        Self::start_on_with_args(count, extra, &[])
    }

    /// [`SshdFixture::start_on`], with more sshd command-line `args` (such as `-r`, which
    /// stops sshd re-executing itself for every connection).
    pub fn start_on_with_args(count: usize, extra: &str, args: &[&str]) -> io::Result<SshdFixture> {
        let addresses: Vec<String> = (1..=count.clamp(1, 16))
            .map(|i| format!("127.0.0.{i}"))
            .collect();
        let listen: String = addresses
            .iter()
            .map(|a| format!("ListenAddress {a}\n"))
            .collect();
        let dir = tempfile::Builder::new().prefix("reach-sshd-").tempdir()?;
        use std::os::unix::fs::PermissionsExt;

        // by others; the user must be able to read it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let path = |name: &str| dir.path().join(name);
        for (kind, name) in [("ed25519", "host_ed25519"), ("ed25519", "id_ed25519")] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-C", "reach-test", "-f"])
                .arg(path(name)))?;
        }
        std::fs::copy(path("id_ed25519.pub"), path("authorized_keys"))?;
        std::fs::set_permissions(
            path("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        let (user, home) = if crate::is_root() {
            std::fs::create_dir_all("/run/sshd")?;
            (TEST_USER.to_owned(), ensure_test_user()?)
        } else {
            let name = run(Command::new("id").arg("-un"))?;
            let name = String::from_utf8_lossy(&name.stdout).trim().to_owned();
            (name, std::env::var("HOME").unwrap_or_else(|_| "/".into()))
        };
        let mut last_error = io::Error::other("sshd did not start");
        for _attempt in 0..3 {
            let port = free_port()?;
            let config = format!(
                "{extra}\nPort {port}\n{listen}HostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n\
                 AcceptEnv REACH_* LANG LC_*\nMaxStartups 100:30:200\nLogLevel VERBOSE\n\
                 PrintMotd no\nPrintLastLog no\n",
                host = path("host_ed25519").display(),
                pid = path("sshd.pid").display(),
                keys = path("authorized_keys").display(),
            );
            std::fs::write(path("sshd_config"), config)?;
            write_known_hosts_for(
                &path("host_ed25519.pub"),
                &addresses,
                port,
                &path("known_hosts"),
            )?;
            let log = std::fs::File::create(path("sshd.log"))?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .args(args)
                .arg("-f")
                .arg(path("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            match wait_for_banner(port, &mut child) {
                Ok(()) => {
                    return Ok(SshdFixture {
                        dir,
                        child,
                        reaped: false,
                        port,
                        user,
                        home,
                        addresses,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(path("sshd.log")).unwrap_or_default();
                    last_error = io::Error::other(format!("{e}; sshd said: {}", log.trim()));
                }
            }
        }
        Err(last_error)
    }

    /// The port sshd listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The addresses it listens on (see [`SshdFixture::start_on`]).
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The user to log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// That user's home directory.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The client's private key (its `.pub` is in `authorized_keys`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A `known_hosts` file that trusts this server's host key as `[127.0.0.1]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The server's host key files (`host_ed25519` and `.pub`).
    pub fn host_key(&self) -> PathBuf {
        self.dir.path().join("host_ed25519")
    }

    /// sshd's log so far (connections, authentications).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A fresh directory named `name` that the SSH user owns (for scratch files); it is
    /// removed with the fixture.
    pub fn user_dir(&self, name: &str) -> io::Result<String> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir)?;
        if crate::is_root() {
            run(Command::new("chown").arg(&self.user).arg(&dir))?;
        }
        Ok(dir.to_string_lossy().into_owned())
    }

    /// A directory in which the SSH user may not create entries: owned by root with mode
    /// 0755 (as root), or mode 0555 otherwise.
    pub fn denied_dir(&self, name: &str) -> io::Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir)?;
        let mode = if crate::is_root() { 0o755 } else { 0o555 };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        Ok(dir.to_string_lossy().into_owned())
    }

    /// `ssh://USER@127.0.0.1:PORT`.
    pub fn destination(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// The `ssh_config` lines of a `Host` block that reaches this server: address, port,
    /// user, key and known_hosts, each indented and ending in a newline.
    pub fn config_lines(&self) -> String {
        format!(
            "  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n",
            self.port,
            self.user,
            self.client_key().display(),
            self.known_hosts().display()
        )
    }

    /// The real OpenSSH client, set up to reach this server non-interactively; append the
    /// remote command.
    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-q",
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            self.known_hosts().display()
        ))
        .arg("-i")
        .arg(self.client_key())
        .args(["-p", &self.port.to_string(), "-l", &self.user, "127.0.0.1"]);
        cmd
    }

    /// Adds a public key line (`ssh-ed25519 AAAA... comment`) to `authorized_keys`.
    pub fn authorize(&self, public_key_line: &str) -> io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))?;
        writeln!(file, "{}", public_key_line.trim())
    }

    /// Stops (SIGSTOP) every process serving a connection, as a peer that vanished from
    /// the network would look: nothing answers, nothing closes. `kill` (and drop) ends them.
    pub fn freeze_connections(&self) {
        if self.reaped {
            return;
        }
        for pid in descendants(self.child.id()) {
            if pid != self.child.id() {
                let _ = Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Kills sshd and every process it started (each connection's processes call `setsid`,
    /// so a process-group kill would miss them) at once, as a crash of the host's sshd would:
    /// open connections drop.
    ///
    /// Only the first call signals anything. The pid of a reaped sshd can soon be another
    /// process's (pids wrap at 32768 here): killing it again, as the drop after an explicit
    /// `kill` did, would SIGKILL whatever had taken the pid, and its children, in any test
    /// running beside this one.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let mut victims = descendants(self.child.id());
        victims.push(self.child.id());
        for pid in victims {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
        self.reaped = true;
    }
}

/// Every process below `root`, from the parent ids in `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The command name is in parentheses and may hold spaces; the parent id is the
            // second field after it.
            let after = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn wait_for_banner(port: u16, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("sshd exited with {status}")));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut banner = [0u8; 4];
            let mut reader = &stream;
            if reader.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "sshd did not answer on 127.0.0.1:{port} within 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for SshdFixture {
    fn drop(&mut self) {
        self.kill();
    }
}
