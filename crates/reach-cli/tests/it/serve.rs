//! `reach serve` driven by the real OpenSSH clients (`ssh`, `sftp`, `scp`, `ssh-agent`), on
//! the local backend and on Docker containers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `reach serve` process with its own keys, state and config.
pub struct Gateway {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    metrics: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    instance: String,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

impl Gateway {
    /// Starts a gateway whose config is `config` (TOML) with `{dir}` replaced by its
    /// directory. The client key `client` is in `{dir}/authorized_keys`.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("client"));
        keygen(&dir.path().join("stranger"));
        std::fs::copy(
            dir.path().join("client.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let text = config.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("serve.toml"), text).unwrap();
        let mut gateway = Gateway {
            dir,
            child: None,
            port: 0,
            metrics: None,
            log: Arc::new(Mutex::new(Vec::new())),
            instance: String::new(),
        };
        gateway.launch();
        gateway
    }

    fn launch(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(self.path("serve.toml"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reach serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"gateway.listening\"") {
                    let _ = tx.send(line.clone());
                }
                log.lock().unwrap().push(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("reach serve did not start: {}", self.log_text());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
        self.port = addr.port();
        self.instance = v["instance"].as_str().unwrap().to_owned();
        self.metrics = v["metrics"]
            .as_str()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        reach_test::sshd::write_known_hosts(
            &self.path("state/ssh_host_ed25519_key.pub"),
            self.port,
            &self.path("known_hosts"),
        )
        .unwrap();
        self.child = Some(child);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `ssh` with the client key and strict host checking against the persisted host key.
    pub fn ssh_with(&self, key: &str, user: &str, extra: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        // ssh keeps the first value of an option: the caller's go first.
        cmd.args(["-F", "/dev/null"])
            .args(extra)
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(self.path(key))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.path("known_hosts").display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "LogLevel=ERROR", "-p", &self.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .args(command);
        cmd
    }

    pub fn ssh(&self, command: &[&str]) -> Command {
        self.ssh_with("client", "tester", &[], command)
    }

    /// Options for `sftp`/`scp` (`-P` port).
    pub fn copy_options(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-i".into(),
            self.path("client").display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-P".into(),
            self.port.to_string(),
        ]
    }

    pub fn metrics_text(&self) -> String {
        let addr = self.metrics.as_ref().expect("metrics configured");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of one metric line (`name{labels}`).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// This gateway's containers (`docker ps -a` by its instance label).
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label=reach.gateway={}", self.instance))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if !self.instance.is_empty() && reach_test::docker::cli_available() {
            for id in self.containers() {
                let _ = Command::new("docker").args(["rm", "-f", &id]).output();
            }
        }
    }
}

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = wait_output(child, Duration::from_secs(120));
    feeder.join().unwrap();
    out
}

/// Waits for a child with a limit (a hung client is a failure, not a hung test run),
/// draining its output meanwhile.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "client hung for {limit:?}: {} bytes of stdout, stderr {:?}",
                out.len(),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` for up to `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

const LOCAL: &str = r#"
[auth]
authorized_keys = "{dir}/authorized_keys"
[session]
accept_env = ["LANG", "LC_*", "REACH_OK"]
[metrics]
listen = "127.0.0.1:0"
"#;

#[test]
fn exec_passes_output_codes_signals_env_and_stdin() {
    let gw = Gateway::start(LOCAL);
    let out = run(gw.ssh(&["echo out; echo err >&2; exit 7"]), b"");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    // stdin streams through and its EOF arrives, both directions at once: 40 MB is past
    // where a gateway that blocks its session loop on stdin deadlocked (about 22 MB here).
    let data: Vec<u8> = (0..40_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = run(gw.ssh(&["cat"]), &data);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data, "stdin came back changed");

    // env requests: accepted names set, others refused (as sshd's AcceptEnv).
    let out = run(
        gw.ssh_with(
            "client",
            "tester",
            &["-o", "SetEnv=REACH_OK=yes REACH_NOT=no"],
            &["echo \"ok=$REACH_OK not=$REACH_NOT\""],
        ),
        b"",
    );
    assert_eq!(text(&out.stdout), "ok=yes not=\n", "{}", text(&out.stderr));

    // exit-signal: reach's own client shows a death by SIGTERM as 143, as a shell would.
    let kh = gw.path("known_hosts");
    let key = gw.path("client");
    let dest = format!("ssh://tester@127.0.0.1:{}", gw.port);
    let outcome = crate::reach(&[
        "exec",
        "--known-hosts",
        kh.to_str().unwrap(),
        "-i",
        key.to_str().unwrap(),
        &dest,
        "--",
        "echo before; kill -TERM $$",
    ])
    .run();
    assert_eq!(outcome.code, 143, "{}", outcome.stderr);
    assert_eq!(outcome.stdout_text(), "before\n");
    assert!(
        gw.log_text().contains("killed by SIGTERM"),
        "{}",
        gw.log_text()
    );
    assert!(gw.metric("reach_gateway_sessions_total") >= 4.0);
    assert!(gw.metric("reach_gateway_bytes_total{direction=\"in\"}") >= 3_000_000.0);
}

/// Input for a command that is not reading yet waits in the client, not in the gateway:
/// 320 MB piped into `sleep 8; wc -c` all arrive, counted, although the gateway ends a
/// session whose command falls 256 MiB behind input that it had to take (the client's window
/// now reopens only as input reaches the command's stdin).
#[test]
fn input_waits_in_the_client_for_a_command_that_reads_late() {
    let gw = Gateway::start(LOCAL);
    let data = vec![b'x'; 320_000_000];
    let out = run(gw.ssh(&["sleep 8; wc -c"]), &data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "320000000",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_pty_shell_in_tmux_resizes_and_ends() {
    let gw = Gateway::start(LOCAL);
    let session = format!("reach-serve-{}", std::process::id());
    let ssh = gw.ssh_with("client", "tester", &["-tt"], &[]);
    let line = format!(
        "{} {}",
        ssh.get_program().to_string_lossy(),
        ssh.get_args()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let started = tmux(&["new-session", "-d", "-x", "100", "-y", "30", &line]);
    assert!(started.status.success(), "tmux: {started:?}");
    let screen = || text(&tmux(&["capture-pane", "-p"]).stdout);
    let typed = |keys: &str| {
        tmux(&["send-keys", keys, "Enter"]);
    };
    // The gateway's PTY: a terminal, TERM from the client, tmux's size.
    assert!(
        eventually(Duration::from_secs(20), || {
            typed("echo T=$TERM; stty size");
            std::thread::sleep(Duration::from_millis(300));
            screen().contains("30 100")
        }),
        "{}",
        screen()
    );
    assert!(
        screen().contains("T=tmux") || screen().contains("T=screen"),
        "{}",
        screen()
    );
    // window-change: tmux resizes the window, ssh sends the new size.
    tmux(&["resize-window", "-x", "120", "-y", "40"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            typed("stty size");
            std::thread::sleep(Duration::from_millis(300));
            screen().contains("40 120")
        }),
        "{}",
        screen()
    );
    typed("exit");
    assert!(
        eventually(Duration::from_secs(20), || {
            !tmux(&["has-session"]).status.success()
        }),
        "the shell did not end: {}",
        screen()
    );
    let _ = tmux(&["kill-server"]);
    assert!(
        gw.log_text().contains("\"op\":\"shell\""),
        "{}",
        gw.log_text()
    );
}

#[test]
fn sftp_batch_and_scp_both_ways() {
    let gw = Gateway::start(LOCAL);
    let work = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let src = work.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let rdir = remote.path().display().to_string();
    let batch = format!(
        "put {src} {rdir}/put.bin\nls -l {rdir}\nget {rdir}/put.bin {back}\nmkdir {rdir}/sub\n\
         rename {rdir}/put.bin {rdir}/sub/moved.bin\nrm {rdir}/sub/moved.bin\nrmdir {rdir}/sub\n",
        src = src.display(),
        back = work.path().join("back.bin").display(),
    );
    let mut sftp = Command::new("sftp");
    sftp.args(gw.copy_options())
        .args(["-b", "-", "tester@127.0.0.1"]);
    let out = run(sftp, batch.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // `ls -l` shows the file with its size and when it was written, as OpenSSH's does.
    let month = Command::new("date").args(["-u", "+%b"]).output().unwrap();
    let month = text(&month.stdout).trim().to_owned();
    let listed = text(&out.stdout);
    assert!(
        listed.lines().any(|l| l.ends_with(" put.bin")
            && l.starts_with("-rw")
            && l.contains(&format!(" {} {month} ", data.len()))),
        "{listed}"
    );
    assert!(std::fs::read(work.path().join("back.bin")).unwrap() == data);
    assert_eq!(std::fs::read_dir(remote.path()).unwrap().count(), 0);

    // A missing remote file is an error naming it, and sftp -b fails.
    let mut sftp = Command::new("sftp");
    sftp.args(gw.copy_options())
        .args(["-b", "-", "tester@127.0.0.1"]);
    let out = run(
        sftp,
        format!("get {rdir}/nothing.bin {rdir}/x\n").as_bytes(),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("nothing.bin"),
        "{}",
        text(&out.stderr)
    );

    // scp (the SFTP protocol since OpenSSH 9) up, over an existing file, and down.
    let target = format!("tester@127.0.0.1:{rdir}/scp.bin");
    std::fs::write(remote.path().join("scp.bin"), vec![b'x'; 9_000_000]).unwrap();
    let mut scp = Command::new("scp");
    scp.args(gw.copy_options()).arg(&src).arg(&target);
    let out = run(scp, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(remote.path().join("scp.bin")).unwrap() == data);
    let down = work.path().join("down.bin");
    let mut scp = Command::new("scp");
    scp.args(gw.copy_options()).arg(&target).arg(&down);
    let out = run(scp, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(&down).unwrap() == data);
    // An empty file over a full one.
    let empty = work.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let mut scp = Command::new("scp");
    scp.args(gw.copy_options()).arg(&empty).arg(&target);
    let out = run(scp, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(remote.path().join("scp.bin"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn the_host_key_survives_a_restart() {
    let mut gw = Gateway::start(LOCAL);
    let out = run(gw.ssh(&["true"]), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = std::fs::read(gw.path("state/ssh_host_ed25519_key.pub")).unwrap();
    let known = std::fs::read_to_string(gw.path("known_hosts")).unwrap();
    gw.restart();
    assert_eq!(
        std::fs::read(gw.path("state/ssh_host_ed25519_key.pub")).unwrap(),
        key
    );
    // The old known_hosts line (new port aside) still matches: StrictHostKeyChecking=yes.
    let old_key = known.split_once(' ').unwrap().1;
    assert!(std::fs::read_to_string(gw.path("known_hosts"))
        .unwrap()
        .ends_with(old_key));
    let out = run(gw.ssh(&["true"]), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(gw.path("state/ssh_host_ed25519_key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // SIGTERM is a clean stop.
    assert!(gw.terminate().success());
}

/// A one-shot HTTP server answering every request with `body` (or nothing, when `None`).
fn webhook(body: Option<&'static str>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            match body {
                Some(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                // A webhook that hangs: the gateway must time out and deny.
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        }
    });
    (format!("http://{addr}/auth"), seen)
}

#[test]
fn auth_refuses_wrong_keys_unknown_users_and_webhook_denials() {
    let password = "s3cret pass";
    let hash = {
        let out = crate::reach(&["serve", "--hash-password"])
            .stdin(format!("{password}\n"))
            .run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout_text().trim().to_owned()
    };
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let (allow_url, allow_seen) = webhook(Some("{\"allow\": true}"));
    let config = format!(
        r#"
[auth]
authorized_keys = "{{dir}}/keys/%u"
max_failures = 100
[auth.users.pat]
password = "{hash}"
[auth.webhook]
url = "{allow_url}"
timeout_ms = 1000
[metrics]
listen = "127.0.0.1:0"
"#
    );
    let gw = Gateway::start(&config);
    std::fs::create_dir(gw.path("keys")).unwrap();
    std::fs::copy(gw.path("client.pub"), gw.path("keys/alice")).unwrap();

    // The key in alice's file lets alice in; the webhook is not asked.
    let out = run(gw.ssh_with("client", "alice", &[], &["echo in"]), b"");
    assert_eq!(text(&out.stdout), "in\n", "{}", text(&out.stderr));
    assert!(allow_seen.lock().unwrap().is_empty());
    // A key no file lists goes to the webhook, which sees user, fingerprint and address.
    let out = run(gw.ssh_with("stranger", "bob", &[], &["echo hooked"]), b"");
    assert_eq!(text(&out.stdout), "hooked\n", "{}", text(&out.stderr));
    let request = allow_seen.lock().unwrap().join("\n");
    assert!(request.contains("\"user\":\"bob\""), "{request}");
    assert!(
        request.contains("\"key_fingerprint\":\"SHA256:"),
        "{request}"
    );
    assert!(
        request.contains("\"remote_address\":\"127.0.0.1:"),
        "{request}"
    );

    // Passwords: the right one in, a wrong one out.
    let askpass = gw.path("askpass");
    let with_password = |pw: &str| {
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{pw}'\n")).unwrap();
        std::fs::set_permissions(
            &askpass,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut cmd = gw.ssh_with(
            "client",
            "pat",
            &[
                "-o",
                "BatchMode=no",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
            ],
            &["echo pw-in"],
        );
        cmd.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        run(cmd, b"")
    };
    let out = with_password(password);
    assert_eq!(text(&out.stdout), "pw-in\n", "{}", text(&out.stderr));
    let out = with_password("Tr0ub4dor-not-it");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(gw.metric("reach_gateway_auth_failures_total{method=\"password\"}") >= 1.0);
    assert!(
        !gw.log_text().contains("Tr0ub4dor"),
        "a password reached the log"
    );
    assert!(
        !gw.log_text().contains(password),
        "a password reached the log"
    );
    drop(gw);

    // Deny, and a webhook that does not answer: refused (deny on error).
    for (body, why) in [(Some("{\"allow\": false}"), "deny"), (None, "timeout")] {
        let (url, seen) = webhook(body);
        let config = format!(
            "[auth]\nauthorized_keys = \"{{dir}}/keys/%u\"\n[auth.webhook]\nurl = \"{url}\"\n\
             timeout_ms = 1000\n"
        );
        let gw = Gateway::start(&config);
        let out = run(gw.ssh_with("stranger", "bob", &[], &["echo in"]), b"");
        assert_eq!(out.status.code(), Some(255), "{why}: {}", text(&out.stdout));
        assert!(out.stdout.is_empty(), "{why}");
        assert!(
            !seen.lock().unwrap().is_empty(),
            "{why}: the webhook was not asked"
        );
        assert!(
            gw.log_text().contains("auth.refused"),
            "{why}: {}",
            gw.log_text()
        );
    }
    // A webhook that is down.
    let gw = Gateway::start(
        "[auth]\nauthorized_keys = \"{dir}/keys/%u\"\n[auth.webhook]\n\
         url = \"http://127.0.0.1:9/auth\"\n",
    );
    let out = run(gw.ssh_with("stranger", "bob", &[], &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(gw.log_text().contains("webhook error"), "{}", gw.log_text());
}

/// Runs `openssl` (the certificates of the HTTPS webhook test), failing the test if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A certificate `name` (`name.pem`, `name.key`) signed by the CA in `dir`, for `san` and
/// `usage` (`serverAuth` or `clientAuth`).
fn signed(dir: &Path, name: &str, cn: &str, san: &str, usage: &str) {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
}

/// A CA and the certificates the HTTPS webhook test needs, in `dir`.
fn webhook_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reach test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    signed(
        dir,
        "hook",
        "127.0.0.1",
        "IP:127.0.0.1,DNS:localhost",
        "serverAuth",
    );
    signed(
        dir,
        "impostor",
        "elsewhere.example",
        "DNS:elsewhere.example",
        "serverAuth",
    );
    signed(
        dir,
        "gateway",
        "reach-gateway",
        "DNS:reach-gateway",
        "clientAuth",
    );
}

/// The HTTPS webhook (`webhook_server.py`, CPython's ssl): its port and the requests it saw.
struct HttpsHook {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl HttpsHook {
    fn start(dir: &Path, cert: &str, client_ca: Option<&str>) -> HttpsHook {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/webhook_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(dir.join(format!("{cert}.pem")))
            .arg(dir.join(format!("{cert}.key")));
        if let Some(ca) = client_ca {
            cmd.arg(dir.join(ca));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (apt-get install python3)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        HttpsHook { child, port, seen }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpsHook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_webhook_speaks_https_with_its_own_ca_a_client_certificate_and_a_secret() {
    let pki = tempfile::tempdir().unwrap();
    webhook_pki(pki.path());
    let secret = "hook-secret-5b1c9e";
    let secret_file = pki.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let p = |name: &str| pki.path().join(name).display().to_string();
    let hook_config = |port: u16, ca: bool| {
        let ca = if ca {
            format!("ca_file = \"{}\"\n", p("ca.pem"))
        } else {
            String::new()
        };
        format!(
            "[auth]\nauthorized_keys = \"{{dir}}/keys/%u\"\n[auth.webhook]\n\
             url = \"https://127.0.0.1:{port}/auth\"\ntimeout_ms = 3000\n{ca}\
             client_cert = \"{}\"\nclient_key = \"{}\"\nsecret_file = \"{}\"\n",
            p("gateway.pem"),
            p("gateway.key"),
            secret_file.display()
        )
    };

    // The webhook's certificate chains to the configured CA and names 127.0.0.1; it wants
    // the gateway's client certificate.
    let hook = HttpsHook::start(pki.path(), "hook", Some("ca.pem"));
    let gw = Gateway::start(&hook_config(hook.port, true));
    for round in ["first", "second"] {
        let out = run(gw.ssh_with("stranger", "bob", &[], &["echo hooked"]), b"");
        assert_eq!(text(&out.stdout), "hooked\n", "{round}: {}", gw.log_text());
    }
    let seen = hook.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert_eq!(request["path"], "/auth");
        assert_eq!(request["authorization"], format!("Bearer {secret}"));
        assert_eq!(request["client_cn"], "reach-gateway");
        assert!(request["body"]
            .as_str()
            .unwrap()
            .contains("\"user\":\"bob\""));
    }
    // Both logins asked over one TLS connection.
    assert_eq!(seen[0]["client_port"], seen[1]["client_port"], "{seen:?}");
    assert!(
        !gw.log_text().contains(secret),
        "the secret reached the log"
    );
    drop(gw);

    // The system's roots do not know the test CA: refused, and the log says why.
    let gw = Gateway::start(&hook_config(hook.port, false));
    let out = run(gw.ssh_with("stranger", "bob", &[], &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(out.stdout.is_empty());
    let log = gw.log_text();
    assert!(log.contains("webhook error"), "{log}");
    assert!(log.to_ascii_lowercase().contains("certificate"), "{log}");
    assert_eq!(
        hook.requests().len(),
        2,
        "an unverified webhook was sent a query"
    );
    drop(gw);

    // A server whose certificate is signed by the CA but for another name: refused.
    let impostor = HttpsHook::start(pki.path(), "impostor", None);
    let gw = Gateway::start(&hook_config(impostor.port, true));
    let out = run(gw.ssh_with("stranger", "bob", &[], &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stdout));
    assert!(out.stdout.is_empty());
    let log = gw.log_text();
    assert!(log.contains("webhook error"), "{log}");
    assert!(log.contains("not valid for name"), "{log}");
    assert!(
        impostor.requests().is_empty(),
        "the impostor was sent a query"
    );
}

#[test]
fn a_plain_http_webhook_off_loopback_and_a_readable_secret_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |config: &str| {
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_reach"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    let (code, stderr) = start("[auth.webhook]\nurl = \"http://192.0.2.1/auth\"\n");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("http://192.0.2.1/auth"), "{stderr}");
    assert!(stderr.contains("allow_plain_http"), "{stderr}");

    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, stderr) = start(&format!(
        "[auth.webhook]\nurl = \"https://hook.example/auth\"\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn wrong_keys_unknown_users_and_then_the_rate_limit() {
    let gw = Gateway::start(
        "[auth]\nauthorized_keys = \"{dir}/keys/%u\"\nmax_failures = 3\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    std::fs::create_dir(gw.path("keys")).unwrap();
    std::fs::copy(gw.path("client.pub"), gw.path("keys/alice")).unwrap();
    let out = run(gw.ssh_with("client", "alice", &[], &["echo in"]), b"");
    assert_eq!(text(&out.stdout), "in\n", "{}", text(&out.stderr));
    // A key that is not alice's; a user with no key file; a name that tries to climb out.
    for (key, user) in [
        ("stranger", "alice"),
        ("client", "mallory"),
        ("client", ".."),
    ] {
        let out = run(gw.ssh_with(key, user, &[], &["echo in"]), b"");
        assert_eq!(out.status.code(), Some(255), "{key} as {user}");
        assert!(out.stdout.is_empty(), "{key} as {user}");
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );
    }
    // Three failures from 127.0.0.1: now even the right key is turned away.
    let out = run(gw.ssh_with("client", "alice", &[], &["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(gw.metric("reach_gateway_auth_failures_total{method=\"rate_limit\"}") >= 1.0);
    assert!(gw.metric("reach_gateway_auth_failures_total{method=\"publickey\"}") >= 3.0);
    assert!(
        gw.log_text().contains("too many failed logins"),
        "{}",
        gw.log_text()
    );
}

/// An `ssh-agent` holding the gateway's `stranger` key, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    fingerprint: String,
}

impl Agent {
    fn start(gw: &Gateway) -> Agent {
        let socket = gw.path("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut agent = Agent {
            child,
            socket,
            fingerprint: String::new(),
        };
        assert!(eventually(Duration::from_secs(10), || agent
            .socket
            .exists()));
        let add = Command::new("ssh-add")
            .arg(gw.path("stranger"))
            .env("SSH_AUTH_SOCK", &agent.socket)
            .output()
            .unwrap();
        assert!(add.status.success(), "{add:?}");
        let listed = text(
            &Command::new("ssh-keygen")
                .arg("-lf")
                .arg(gw.path("stranger.pub"))
                .output()
                .unwrap()
                .stdout,
        );
        agent.fingerprint = listed.split_whitespace().nth(1).unwrap().to_owned();
        agent
    }

    /// Runs `command` through the gateway with `ssh -A` and this agent.
    fn ssh(&self, gw: &Gateway, command: &str) -> Output {
        let mut cmd = gw.ssh_with("client", "tester", &["-A"], &[command]);
        cmd.env("SSH_AUTH_SOCK", &self.socket);
        run(cmd, b"")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_forwarding_reaches_the_session() {
    let gw = Gateway::start(LOCAL);
    let agent = Agent::start(&gw);
    let out = agent.ssh(&gw, "ssh-add -l");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&agent.fingerprint),
        "{}",
        text(&out.stdout)
    );
    // Without -A the session has no agent.
    let mut cmd = gw.ssh_with("client", "tester", &[], &["echo \"[$SSH_AUTH_SOCK]\""]);
    cmd.env("SSH_AUTH_SOCK", &agent.socket);
    let out = run(cmd, b"");
    assert_eq!(text(&out.stdout), "[]\n");
}

/// `ssh -N -L SPEC` to the gateway, killed on drop.
struct SshTunnel(Child);

impl SshTunnel {
    /// Opens the forward and waits until its local port `local` accepts connections.
    fn open(gw: &Gateway, spec: &str, local: u16, command: &[&str]) -> SshTunnel {
        let mut extra = vec!["-L", spec, "-o", "ExitOnForwardFailure=yes"];
        if command.is_empty() {
            extra.push("-N");
        }
        let child = gw
            .ssh_with("client", "tester", &extra, command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::forward::wait_listening(local);
        SshTunnel(child)
    }
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes through an `ssh -L` forward: both ways, with the end of stream passed on (the
/// server answers only after it).
fn through_forward(local: u16) -> (String, String) {
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let answer = crate::forward::try_send_then_read(local, &data).unwrap_or_default();
    (
        answer.split_whitespace().next().unwrap_or("").to_owned(),
        sha_hex(&data),
    )
}

/// An `ssh -L` forward to 127.0.0.1:`port` that the gateway refuses: the client's
/// connection is closed with nothing in it, and the gateway's log says `why`.
fn refused_forward(gw: &Gateway, port: u16, why: &str) {
    let local = crate::forward::free_port();
    let _tunnel = SshTunnel::open(gw, &format!("{local}:127.0.0.1:{port}"), local, &[]);
    assert_eq!(
        crate::forward::try_send_then_read(local, b"x").unwrap_or_default(),
        ""
    );
    assert!(
        eventually(Duration::from_secs(10), || gw.log_text().contains(why)),
        "no `{why}` in: {}",
        gw.log_text()
    );
}

#[test]
fn ssh_dash_l_through_the_gateway_and_who_may_not() {
    let gw = Gateway::start(LOCAL);
    let server = crate::forward::host_sha_server();
    let local = crate::forward::free_port();
    let tunnel = SshTunnel::open(&gw, &format!("{local}:127.0.0.1:{server}"), local, &[]);
    let (got, want) = through_forward(local);
    assert_eq!(got, want, "{}", gw.log_text());
    assert!(
        gw.log_text().contains("\"forward.closed\""),
        "{}",
        gw.log_text()
    );
    // (Waiting for ssh's port made a forward too.)
    assert!(gw.metric("reach_gateway_backend_requests_total{op=\"forward\"}") >= 1.0);
    assert_eq!(
        gw.metric("reach_gateway_backend_failures_total{op=\"forward\"}"),
        0.0
    );
    drop(tunnel);
    // Nothing listens at the far end: the client's connection is closed, the log says why.
    let dead = crate::forward::free_port();
    refused_forward(&gw, dead, &format!("could not connect to 127.0.0.1:{dead}"));
    // A key with no-port-forwarding may log in but not forward.
    let line = std::fs::read_to_string(gw.path("client.pub")).unwrap();
    std::fs::write(
        gw.path("authorized_keys"),
        format!("no-port-forwarding {line}"),
    )
    .unwrap();
    refused_forward(&gw, server, "no-port-forwarding option");
    let out = run(gw.ssh(&["echo in"]), b"");
    assert_eq!(text(&out.stdout), "in\n", "the key still logs in");
}

// ---- Docker backends ----

fn docker_config(mode: &str, extra: &str) -> Option<String> {
    if !reach_test::docker::available_or_skip(&format!("reach serve --mode {mode}")) {
        return None;
    }
    let image = reach_test::docker::busybox_image().expect("busybox image");
    Some(docker_config_for(&image, mode, extra))
}

fn docker_config_for(image: &str, mode: &str, extra: &str) -> String {
    format!(
        "keepalive_secs = 1\nkeepalive_max = 2\n[auth]\nauthorized_keys = \"{{dir}}/authorized_keys\"\n\
         [backend]\nkind = \"docker\"\nmode = \"{mode}\"\nimage = \"{image}\"\n\
         labels = {{ \"reach-test\" = \"\" }}\n{extra}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// The busybox image with `ssh-add` (and its libraries) in it, and a command of its own that
/// says it ran before handing over to a shell.
fn session_image() -> Option<String> {
    if !reach_test::docker::available_or_skip("reach serve: agent and image command in containers")
    {
        return None;
    }
    let base = reach_test::docker::busybox_image().expect("busybox image");
    let ssh_add = Path::new("/usr/bin/ssh-add");
    let mut files = vec![ssh_add.to_path_buf()];
    files.extend(reach_test::docker::libraries_of(ssh_add).expect("ldd ssh-add"));
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let image = reach_test::docker::derived_image(
        &base,
        "gateway-session",
        &files,
        &[r#"CMD ["/bin/sh", "-c", "echo image-command; exec /bin/sh"]"#],
    )
    .expect("derived image");
    Some(image)
}

/// An OpenSSH control master, so that several channels share one connection.
struct Master {
    socket: PathBuf,
    gw_port: u16,
}

impl Master {
    fn open(gw: &Gateway) -> Master {
        Master::named(gw, "ctl.sock")
    }

    /// A master connection whose control socket is `name` in the gateway's directory.
    fn named(gw: &Gateway, name: &str) -> Master {
        let socket = gw.path(name);
        let cmd = gw.ssh_with(
            "client",
            "tester",
            &[
                "-o",
                "ControlMaster=yes",
                "-o",
                &format!("ControlPath={}", socket.display()),
                "-fN",
            ],
            &[],
        );
        let out = run(cmd, b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        Master {
            socket,
            gw_port: gw.port,
        }
    }

    fn ssh(&self, gw: &Gateway, command: &[&str]) -> Output {
        run(
            gw.ssh_with(
                "client",
                "tester",
                &["-o", &format!("ControlPath={}", self.socket.display())],
                command,
            ),
            b"",
        )
    }

    fn close(&self) {
        let _ = Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", self.socket.display()))
            .args(["-p", &self.gw_port.to_string(), "-O", "exit", "127.0.0.1"])
            .output();
    }
}

#[test]
fn docker_connection_mode_one_container_per_connection() {
    let Some(config) = docker_config("connection", "") else {
        return;
    };
    let gw = Gateway::start(&config);
    let master = Master::open(&gw);
    let a = master.ssh(&gw, &["hostname; exit 3"]);
    assert_eq!(a.status.code(), Some(3), "{}", text(&a.stderr));
    let b = master.ssh(&gw, &["hostname"]);
    assert_eq!(
        text(&a.stdout),
        text(&b.stdout),
        "two channels, one container"
    );
    assert_eq!(gw.containers().len(), 1);
    // sftp in the container.
    let mut sftp = Command::new("sftp");
    sftp.args(gw.copy_options())
        .args(["-b", "-", "tester@127.0.0.1"]);
    let local = gw.path("up.txt");
    std::fs::write(&local, b"into the container\n").unwrap();
    let out = run(
        sftp,
        format!("put {} /tmp/up.txt\nls /tmp\n", local.display()).as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("up.txt"),
        "{}",
        text(&out.stdout)
    );
    master.close();
    // Both connections ended: no container of this gateway is left.
    assert!(
        eventually(Duration::from_secs(20), || gw.containers().is_empty()),
        "left: {:?}\n{}",
        gw.containers(),
        gw.log_text()
    );
    assert!(gw.metric("reach_gateway_container_seconds_count{phase=\"create\"}") >= 2.0);
}

#[test]
fn docker_session_mode_one_container_per_channel() {
    let Some(config) = docker_config("session", "") else {
        return;
    };
    let gw = Gateway::start(&config);
    let master = Master::open(&gw);
    let a = master.ssh(&gw, &["hostname"]);
    let b = master.ssh(&gw, &["hostname"]);
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    assert_ne!(
        text(&a.stdout),
        text(&b.stdout),
        "each channel its own container"
    );
    // Each channel's container went with it, though the connection stays.
    assert!(eventually(Duration::from_secs(20), || gw
        .containers()
        .is_empty()));
    master.close();
}

#[test]
fn docker_session_mode_runs_the_command_or_the_images_as_the_main_process() {
    let Some(image) = session_image() else {
        return;
    };
    let gw = Gateway::start(&docker_config_for(&image, "session", ""));
    // The requested command is the container's main process (under docker-init).
    let out = run(gw.ssh(&["tr '\\0' ' ' < /proc/1/cmdline"]), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("/bin/sh -c tr '\\0' ' ' < /proc/1/cmdline"),
        "{}",
        text(&out.stdout)
    );
    // stdin reaches it and ends; stdout and stderr stay apart; its code comes back.
    let out = run(
        gw.ssh(&["cat; echo to-stderr >&2; exit 4"]),
        b"piped input\n",
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped input\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");
    // A shell request runs the image's own command.
    let out = run(
        gw.ssh_with("client", "tester", &["-T"], &[]),
        b"echo hi; exit 6\n",
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "image-command\nhi\n");
    // Under a terminal.
    let out = run(
        gw.ssh_with("client", "tester", &["-tt"], &["tty; echo \"$TERM\""]),
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    // A signal request reaches it.
    interrupt_through(&gw);
    // A forwarded agent reaches it.
    let agent = Agent::start(&gw);
    let out = agent.ssh(&gw, "echo \"$SSH_AUTH_SOCK\"; ssh-add -l");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(listed.starts_with("/run/reach-agent/"), "{listed}");
    assert!(listed.contains(&agent.fingerprint), "{listed}");
    // Each went with its channel.
    assert!(
        eventually(Duration::from_secs(20), || gw.containers().is_empty()),
        "left: {:?}",
        gw.containers()
    );
    assert_agent_dirs_gone(&gw);
}

#[test]
fn docker_connection_mode_forwards_the_agent_into_the_container() {
    let Some(image) = session_image() else {
        return;
    };
    let gw = Gateway::start(&docker_config_for(&image, "connection", ""));
    let agent = Agent::start(&gw);
    let out = agent.ssh(&gw, "ssh-add -l; ls /run/reach-agent");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&agent.fingerprint),
        "{}",
        text(&out.stdout)
    );
    // Without -A: no socket, no variable.
    let mut cmd = gw.ssh_with(
        "client",
        "tester",
        &[],
        &["echo \"[$SSH_AUTH_SOCK]\"; ssh-add -l"],
    );
    cmd.env("SSH_AUTH_SOCK", &agent.socket);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(2), "ssh-add -l with no agent");
    assert!(
        text(&out.stdout).starts_with("[]\n"),
        "{}",
        text(&out.stdout)
    );
    assert!(eventually(Duration::from_secs(20), || gw
        .containers()
        .is_empty()));
    assert_agent_dirs_gone(&gw);
}

/// No container's agent directory is left on this host.
fn assert_agent_dirs_gone(gw: &Gateway) {
    let root = std::env::temp_dir().join(format!("reach-agent-{}", gw.instance));
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(&root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)),
        "left: {left:?}"
    );
}

/// `ssh -L` into the connection's own container: a server the session started there, on the
/// container's loopback, reached from this host. A container per session refuses it.
#[test]
fn docker_ssh_dash_l_reaches_the_connections_container() {
    let Some(config) = docker_config("connection", "") else {
        return;
    };
    let gw = Gateway::start(&config);
    let local = crate::forward::free_port();
    let server = crate::forward::container_sha_server(9000).join(" ");
    let _tunnel = SshTunnel::open(&gw, &format!("{local}:127.0.0.1:9000"), local, &[&server]);
    // The session's server may not listen yet: the first tries can find nothing there.
    let mut tries = 0;
    let (got, want) = loop {
        let (got, want) = through_forward(local);
        tries += 1;
        if got == want || tries == 50 {
            break (got, want);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got, want, "{}", gw.log_text());
    assert_eq!(
        gw.containers().len(),
        1,
        "the forward made a container of its own"
    );

    let Some(config) = docker_config("session", "") else {
        return;
    };
    let gw = Gateway::start(&config);
    refused_forward(&gw, 9000, "a container per session has no place");
    assert!(gw.containers().is_empty());
}

#[test]
fn docker_persistent_mode_keeps_a_users_container_until_idle() {
    let Some(config) = docker_config("persistent", "idle_timeout_secs = 3") else {
        return;
    };
    let gw = Gateway::start(&config);
    let a = run(gw.ssh(&["hostname; echo kept > /tmp/mark"]), b"");
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    let b = run(gw.ssh(&["hostname; cat /tmp/mark"]), b"");
    assert_eq!(
        text(&b.stdout),
        format!("{}kept\n", text(&a.stdout)),
        "the second connection found the first one's container"
    );
    assert_eq!(gw.containers().len(), 1);
    assert!(
        eventually(Duration::from_secs(30), || gw.containers().is_empty()),
        "not removed after the idle timeout"
    );
}

/// A user's container is held by connections, however many channels each opens, and only
/// by connections that used it.
#[test]
fn docker_persistent_mode_counts_connections_not_channels() {
    let Some(config) = docker_config("persistent", "idle_timeout_secs = 2") else {
        return;
    };
    let gw = Gateway::start(&config);
    // Two channels on one connection, then the connection ends: the container idles out.
    let master = Master::open(&gw);
    for _ in 0..2 {
        let out = master.ssh(&gw, &["true"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    master.close();
    assert!(
        eventually(Duration::from_secs(30), || gw.containers().is_empty()),
        "a connection of two channels left its container held: {}",
        gw.log_text()
    );
    // A connection that opens no channel ends while another's session runs: the running
    // session keeps its container past the idle timeout.
    let mut long = gw
        .ssh(&["echo started; sleep 6; echo alive"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = [0u8; 8];
    long.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut started)
        .unwrap();
    assert_eq!(&started, b"started\n");
    let bare = Master::open(&gw);
    bare.close();
    let out = long.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "alive\n".to_owned()),
        "the session's container was taken away: {}",
        gw.log_text()
    );
}

/// A user's container that was removed by hand is replaced, and every connection of the
/// user still holding the lost one holds the replacement once it uses it: one of them
/// leaving does not idle it out from under the other.
#[test]
fn docker_persistent_mode_a_replaced_container_keeps_its_holders() {
    let Some(config) = docker_config("persistent", "idle_timeout_secs = 2") else {
        return;
    };
    let gw = Gateway::start(&config);
    let (a, b) = (Master::named(&gw, "a.sock"), Master::named(&gw, "b.sock"));
    for master in [&a, &b] {
        let out = master.ssh(&gw, &["true"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let lost = gw.containers();
    assert_eq!(lost.len(), 1);
    let removed = Command::new("docker")
        .args(["rm", "-f", &lost[0]])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    // Both connections use the replacement; then one of them leaves.
    let out = a.ssh(&gw, &["echo kept > /tmp/mark"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = b.ssh(&gw, &["cat /tmp/mark"]);
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    b.close();
    // Past the idle timeout, the other still has it.
    std::thread::sleep(Duration::from_secs(5));
    let out = a.ssh(&gw, &["cat /tmp/mark"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "kept\n".to_owned()),
        "the replacement container idled out under a connection that holds it: {}",
        gw.log_text()
    );
    a.close();
    assert!(
        eventually(Duration::from_secs(30), || gw.containers().is_empty()),
        "not removed once both connections left"
    );
}

#[test]
fn docker_cleanup_after_a_killed_client_and_a_killed_gateway() {
    let Some(config) = docker_config("connection", "") else {
        return;
    };
    let mut gw = Gateway::start(&config);
    // A client killed with SIGKILL mid-session: its container goes.
    let mut client = idle_client(&gw);
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || gw.containers().is_empty()),
        "container of a killed client left: {}",
        gw.log_text()
    );

    // The gateway killed with SIGKILL: its container is an orphan until the next start.
    let mut client = idle_client(&gw);
    gw.kill();
    let _ = client.kill();
    let _ = client.wait();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gw.containers().len(), 1, "the orphan should still be there");
    gw.restart();
    assert!(
        gw.containers().is_empty(),
        "not reaped at start: {}",
        gw.log_text()
    );
    assert!(gw.log_text().contains("containers.reaped"));
    assert_eq!(gw.metric("reach_gateway_containers_reaped_total"), 1.0);
}

/// A client idling in `sleep 600` through `gw`, once its container is up.
fn idle_client(gw: &Gateway) -> Child {
    let client = gw
        .ssh(&["sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || gw
        .containers()
        .len()
        == 1));
    client
}

#[test]
fn docker_a_backend_that_cannot_start_says_so() {
    if !reach_test::docker::available_or_skip("reach serve with a missing image") {
        return;
    }
    let gw = Gateway::start(
        "[auth]\nauthorized_keys = \"{dir}/authorized_keys\"\n[backend]\nkind = \"docker\"\n\
         image = \"reach-test-no-such-image:none\"\n",
    );
    let out = run(gw.ssh(&["echo in"]), b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("Failed to initialize SSH session."), "{err}");
    assert!(err.contains("not available"), "{err}");
    assert!(
        !err.contains("docker.sock"),
        "the reason leaks the engine address: {err}"
    );
    assert!(gw.containers().is_empty());
}

#[test]
fn a_signal_request_reaches_the_command() {
    let gw = Gateway::start(LOCAL);
    interrupt_through(&gw);
}

/// Runs a command through `gw` with `reach exec` (which forwards the SIGINT it gets as an SSH
/// `signal` request), interrupts it, and checks that the command's trap ran and its code came
/// back.
fn interrupt_through(gw: &Gateway) {
    let kh = gw.path("known_hosts");
    let key = gw.path("client");
    let dest = format!("ssh://tester@127.0.0.1:{}", gw.port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .env("REACH_NO_REUSE", "1")
        .args(["exec", "--known-hosts", kh.to_str().unwrap(), "-i"])
        .arg(&key)
        .args([
            &dest,
            "--",
            "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-int\n", "{}", gw.log_text());
    assert_eq!(status.code(), Some(3));
    assert!(
        gw.log_text().contains("\"signal\":\"INT\""),
        "{}",
        gw.log_text()
    );
}

#[test]
fn with_no_flags_it_uses_the_users_keys_and_state_dir() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    keygen(&home.path().join("key"));
    std::fs::copy(
        home.path().join("key.pub"),
        home.path().join(".ssh/authorized_keys"),
    )
    .unwrap();
    // Only the port is chosen here (2222 may be taken on a shared machine).
    let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["backend"], "local");
    let port = v["addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let state = home
        .path()
        .join(".local/state/reach/serve/ssh_host_ed25519_key.pub");
    let kh = home.path().join("kh");
    reach_test::sshd::write_known_hosts(&state, port.parse().unwrap(), &kh)
        .expect("host key in the default state dir");
    let mut ssh = Command::new("ssh");
    ssh.args([
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-i",
    ])
    .arg(home.path().join("key"))
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", kh.display()))
    .args([
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        &port,
        "anyone@127.0.0.1",
        "echo in",
    ]);
    let out = run(ssh, b"");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(text(&out.stdout), "in\n", "{}", text(&out.stderr));
}

#[test]
fn docker_a_silent_client_is_dropped_by_keepalive() {
    let Some(config) = docker_config("connection", "") else {
        return;
    };
    let gw = Gateway::start(&config);
    let mut client = idle_client(&gw);
    // SIGSTOP: the TCP connection stays open but nothing answers (a vanished laptop).
    Command::new("kill")
        .args(["-STOP", &client.id().to_string()])
        .status()
        .unwrap();
    // keepalive_secs = 1, keepalive_max = 2: gone within a few seconds.
    let gone = eventually(Duration::from_secs(20), || gw.containers().is_empty());
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        gone,
        "a silent client's container stayed: {}",
        gw.log_text()
    );
}

/// The gateway config for the reference plugin adapter serving `demo://gw`, rooted in the
/// gateway's directory; `pin` is its SHA-256.
fn plugin_config(pin: &str) -> String {
    let adapter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/plugins/reach-backend-demo");
    format!(
        "[auth]\nauthorized_keys = \"{{dir}}/authorized_keys\"\n[backend]\nkind = \"plugin\"\n\
         destination = \"demo://gw\"\n[backend.plugin]\npath = \"{}\"\nsha256 = \"{pin}\"\n\
         args = [\"--root\", \"{{dir}}\"]\n",
        adapter.display()
    )
}

/// `[backend] kind = "plugin"`: ssh, sftp and scp reach the reference adapter's target
/// through the gateway, exit codes and files intact; a wrong pin stops the gateway at its
/// start, naming both digests.
#[test]
fn the_gateway_serves_a_plugin_target() {
    let adapter = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/plugins/reach-backend-demo");
    let pin = sha_hex(&std::fs::read(&adapter).unwrap());
    let gw = Gateway::start(&plugin_config(&pin));
    let root = std::fs::canonicalize(gw.path("")).unwrap();
    let out = run(gw.ssh(&["pwd; echo err >&2; exit 7"]), b"");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}\n", root.display()));
    assert_eq!(text(&out.stderr), "err\n");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let out = run(gw.ssh(&["cat"]), &data);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == data, "stdin came back changed");

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let rdir = root.display();
    let batch = format!(
        "put {src} {rdir}/put.bin\nget {rdir}/put.bin {back}\nmkdir {rdir}/sub\n\
         rename {rdir}/put.bin {rdir}/sub/moved.bin\n",
        src = src.display(),
        back = work.path().join("back.bin").display(),
    );
    let mut sftp = Command::new("sftp");
    sftp.args(gw.copy_options())
        .args(["-b", "-", "tester@127.0.0.1"]);
    let out = run(sftp, batch.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(work.path().join("back.bin")).unwrap() == data);
    assert!(std::fs::read(root.join("sub/moved.bin")).unwrap() == data);
    let mut scp = Command::new("scp");
    scp.args(gw.copy_options())
        .arg(format!("tester@127.0.0.1:{rdir}/sub/moved.bin"))
        .arg(work.path().join("scp.bin"));
    let out = run(scp, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(work.path().join("scp.bin")).unwrap() == data);

    // A pin that is not the adapter's: the gateway does not start.
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_config(&"0".repeat(64)).replace("{dir}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("serve.toml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("serve.toml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0));
    let said = text(&out.stderr);
    assert!(
        said.contains(&pin) && said.contains(&"0".repeat(64)),
        "{said}"
    );
}
