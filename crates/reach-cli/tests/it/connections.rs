//! The connection daemon: warm connections across `reach` calls, shown by the real sshd's own
//! log; opting out; closing; a daemon that dies or idles out; and its refusal of other users.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reach_test::docker::ContainerFixture;
use reach_test::sshd::SshdFixture;

use crate::{reach, Reach};

/// A runtime directory of its own, so that each test has its own daemon; stops it at the end.
struct Daemon {
    dir: tempfile::TempDir,
}

impl Daemon {
    fn new() -> Daemon {
        Daemon {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The socket of the (first) daemon running here.
    fn socket(&self) -> PathBuf {
        let dir = self.dir.path().join("reach");
        sockets(&dir)
            .into_iter()
            .next()
            .unwrap_or_else(|| dir.join("no-daemon.sock"))
    }

    /// `reach ARGS...` that goes through this test's daemon.
    fn reach(&self, args: &[&str]) -> Reach {
        reach(args)
            .env_remove("REACH_NO_REUSE")
            .env("XDG_RUNTIME_DIR", self.dir.path())
    }

    /// Starts `reach ARGS...` through this test's daemon, stdout and stderr piped.
    fn spawn(&self, args: &[&str], inventory: Option<&Path>) -> std::process::Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reach"));
        command
            .args(args)
            .env_remove("REACH_NO_REUSE")
            .env("XDG_RUNTIME_DIR", self.dir.path());
        if let Some(inventory) = inventory {
            command.env("REACH_INVENTORY", inventory);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn list(&self) -> serde_json::Value {
        let out = self.reach(&["connections", "--json"]).run();
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()
    }

    /// Waits (up to `limit`) until `done` holds.
    fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.reach(&["connections", "stop"]).run();
    }
}

/// The daemon sockets in a runtime directory: one per build of reach whose daemon runs.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The connections the daemon holds to `dest`.
fn held(list: &serde_json::Value, dest: &str) -> Vec<serde_json::Value> {
    list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["destination"] == dest)
        .cloned()
        .collect()
}

/// `exec` with the fixture's key and known_hosts, `extra` flags, then `-- CMD...`.
fn exec_args<'a>(sshd: &'a Flags, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["exec", "-i", &sshd.key, "--known-hosts", &sshd.known];
    args.extend(extra);
    args.push(&sshd.dest);
    args.push("--");
    args.extend(cmd);
    args
}

struct Flags {
    key: String,
    known: String,
    dest: String,
}

impl Flags {
    fn of(sshd: &SshdFixture) -> Flags {
        Flags {
            key: sshd.client_key().display().to_string(),
            known: sshd.known_hosts().display().to_string(),
            dest: sshd.destination(),
        }
    }
}

fn logins(sshd: &SshdFixture) -> usize {
    sshd.log().matches("Accepted publickey").count()
}

/// What an error is about crosses the connection daemon with it: a missing working
/// directory exits 1, a missing command 127, as on the direct path.
#[test]
fn a_missing_working_directory_is_no_missing_command_when_warm() {
    let Some(sshd) =
        SshdFixture::start_or_skip("a_missing_working_directory_is_no_missing_command_when_warm")
    else {
        return;
    };
    let daemon = Daemon::new();
    let f = Flags::of(&sshd);
    let nowhere = daemon
        .reach(&exec_args(&f, &["-C", "/no/such/dir"], &["true"]))
        .run();
    assert_eq!(nowhere.code, 1, "{}", nowhere.stderr);
    assert!(
        nowhere.stderr.contains("/no/such/dir"),
        "{}",
        nowhere.stderr
    );
    let missing = daemon
        .reach(&exec_args(&f, &[], &["reach-no-such-command"]))
        .run();
    assert_eq!(missing.code, 127, "{}", missing.stderr);
    let list = daemon.list();
    assert_eq!(
        held(&list, &f.dest).len(),
        1,
        "went through the warm connection: {list}"
    );
}

#[test]
fn a_warm_second_call_opens_no_new_connection() {
    let Some(sshd) = SshdFixture::start_or_skip("a_warm_second_call_opens_no_new_connection")
    else {
        return;
    };
    let daemon = Daemon::new();
    let f = Flags::of(&sshd);

    let first = daemon
        .reach(&exec_args(&f, &[], &["echo one; echo two >&2; exit 3"]))
        .run();
    assert_eq!(first.code, 3, "{}", first.stderr);
    assert_eq!(first.stdout_text(), "one\n");
    assert_eq!(first.stderr, "two\n", "nothing but the command's stderr");
    assert!(
        daemon.socket().exists(),
        "the first call started the daemon"
    );
    assert_eq!(logins(&sshd), 1);

    let second = daemon
        .reach(&exec_args(&f, &[], &["cat"]))
        .stdin("through the daemon and back")
        .run();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stdout_text(), "through the daemon and back");
    let third = daemon
        .reach(&exec_args(&f, &["--json"], &["printf", "%s", "a b"]))
        .run();
    assert_eq!(third.json()["stdout"], "a b");
    assert_eq!(third.json()["status"]["code"], 0);
    let missing = daemon
        .reach(&exec_args(&f, &[], &["reach-no-such-command"]))
        .run();
    assert_eq!(missing.code, 127, "{}", missing.stderr);
    assert_eq!(
        logins(&sshd),
        1,
        "four calls, one login; sshd said:\n{}",
        sshd.log()
    );
    let list = daemon.list();
    let conns = held(&list, &f.dest);
    assert_eq!(conns.len(), 1, "{list}");
    assert_eq!(conns[0]["uses"], 4);
    assert_eq!(conns[0]["running"], 0);
    assert_eq!(conns[0]["connected"], true);
    let table = daemon.reach(&["connections"]).run();
    assert!(
        table.stdout_text().contains(&f.dest),
        "{}",
        table.stdout_text()
    );

    // Opting out connects directly, by flag or by environment.
    let direct = daemon
        .reach(&exec_args(&f, &["--no-reuse"], &["echo", "direct"]))
        .run();
    assert_eq!(direct.stdout_text(), "direct\n");
    assert_eq!(logins(&sshd), 2);
    let direct = daemon
        .reach(&exec_args(&f, &[], &["true"]))
        .env("REACH_NO_REUSE", "1")
        .run();
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(logins(&sshd), 3);

    // Another identity is another connection, kept warm on its own.
    let keys = tempfile::tempdir().unwrap();
    let other = keys.path().join("other");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    sshd.authorize(public.trim()).unwrap();
    let other = other.display().to_string();
    for _ in 0..2 {
        let out = daemon
            .reach(&[
                "exec",
                "-i",
                &other,
                "--known-hosts",
                &f.known,
                &f.dest,
                "--",
                "echo",
                "other",
            ])
            .run();
        assert_eq!(out.stdout_text(), "other\n", "{}", out.stderr);
    }
    assert_eq!(logins(&sshd), 4, "one login for the second identity");
    assert_eq!(held(&daemon.list(), &f.dest).len(), 2);

    // Closing drops them: the next call logs in again.
    let closed = daemon.reach(&["connections", "close", &f.dest]).run();
    assert_eq!(
        closed.stdout_text(),
        "closed 2 connections\n",
        "{}",
        closed.stderr
    );
    let again = daemon.reach(&exec_args(&f, &[], &["true"])).run();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(logins(&sshd), 5);

    let stopped = daemon.reach(&["connections", "stop"]).run();
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    daemon.wait_for(
        "the daemon to remove its socket",
        Duration::from_secs(10),
        || !daemon.socket().exists(),
    );
    let none = daemon.reach(&["connections"]).run();
    assert!(
        none.stdout_text().contains("not running"),
        "{}",
        none.stdout_text()
    );
}

#[test]
fn an_edited_or_new_included_ssh_config_file_makes_a_new_connection() {
    let Some(sshd) = SshdFixture::start_or_skip(
        "an_edited_or_new_included_ssh_config_file_makes_a_new_connection",
    ) else {
        return;
    };
    let daemon = Daemon::new();
    let f = Flags::of(&sshd);
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("conf.d");
    std::fs::create_dir(&parts).unwrap();
    std::fs::write(parts.join("a.conf"), "Host *\n  ConnectTimeout 10\n").unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, format!("Include {}/*.conf\n", parts.display())).unwrap();
    let config = config.display().to_string();
    let call = || {
        let out = daemon
            .reach(&exec_args(&f, &["-F", &config], &["echo", "hi"]))
            .run();
        assert_eq!(out.stdout_text(), "hi\n", "{}", out.stderr);
    };

    call();
    call();
    assert_eq!(logins(&sshd), 1, "the second call was warm");
    // The included file changes: what it says may change where or how to connect.
    std::fs::write(parts.join("a.conf"), "Host *\n  ConnectTimeout 300\n").unwrap();
    call();
    assert_eq!(
        logins(&sshd),
        2,
        "an edited included file, a new connection"
    );
    call();
    assert_eq!(logins(&sshd), 2, "and that one is warm in turn");
    // A file the Include finds that was not there before.
    std::fs::write(parts.join("b.conf"), "Host *\n  ServerAliveInterval 30\n").unwrap();
    call();
    assert_eq!(logins(&sshd), 3, "a new included file, a new connection");
}

#[test]
fn a_lost_daemon_is_an_error_and_an_idle_daemon_exits() {
    let Some(sshd) =
        SshdFixture::start_or_skip("a_lost_daemon_is_an_error_and_an_idle_daemon_exits")
    else {
        return;
    };
    let daemon = Daemon::new();
    let f = Flags::of(&sshd);
    let inventory = daemon.dir.path().join("reach.toml");
    std::fs::write(&inventory, "[connections]\nidle = \"2s\"\n").unwrap();

    let mut child = daemon.spawn(
        &exec_args(&f, &[], &["echo started; sleep 60"]),
        Some(&inventory),
    );
    let mut stdout = child.stdout.take().unwrap();
    let mut started = [0u8; 8];
    stdout.read_exact(&mut started).unwrap();
    assert_eq!(&started, b"started\n");
    let mut pid = 0;
    daemon.wait_for(
        "the command to run in the daemon",
        Duration::from_secs(20),
        || {
            let list = daemon.list();
            pid = list["pid"].as_u64().unwrap_or(0);
            held(&list, &f.dest).first().map(|c| c["running"].clone()) == Some(1.into())
        },
    );
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(255),
        "never a made-up status: {stderr}"
    );
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"", "nothing after the daemon died");
    assert!(stderr.contains("connection daemon went away"), "{stderr}");

    // The dead daemon's socket is left behind; the next call starts a new daemon anyway.
    let again = daemon
        .reach(&exec_args(&f, &[], &["echo", "again"]))
        .env("REACH_INVENTORY", &inventory)
        .run();
    assert_eq!(again.stdout_text(), "again\n", "{}", again.stderr);
    assert_eq!(again.code, 0);
    assert_ne!(daemon.list()["pid"].as_u64(), Some(pid), "a new daemon");

    // With `idle = "2s"`, the connection is closed and the daemon exits on its own.
    daemon.wait_for("the idle daemon to exit", Duration::from_secs(30), || {
        !daemon.socket().exists()
    });
    assert_eq!(daemon.list()["running"], false);

    // `reuse = false` in the inventory: no daemon at all.
    std::fs::write(&inventory, "[connections]\nreuse = false\n").unwrap();
    let before = logins(&sshd);
    let direct = daemon
        .reach(&exec_args(&f, &[], &["echo", "direct"]))
        .env("REACH_INVENTORY", &inventory)
        .run();
    assert_eq!(direct.stdout_text(), "direct\n", "{}", direct.stderr);
    assert!(!daemon.socket().exists());
    assert_eq!(logins(&sshd), before + 1);

    std::fs::write(&inventory, "[connections]\nidle = \"soon\"\n").unwrap();
    let bad = daemon
        .reach(&exec_args(&f, &[], &["true"]))
        .env("REACH_INVENTORY", &inventory)
        .run();
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("[connections] idle") && bad.stderr.contains("not a duration"),
        "{}",
        bad.stderr
    );
}

#[test]
fn docker_targets_are_kept_warm_too() {
    if !reach_test::docker::available_or_skip("docker_targets_are_kept_warm_too") {
        return;
    }
    let c = ContainerFixture::busybox().expect("busybox container");
    let daemon = Daemon::new();
    let dest = c.destination(None);
    for round in 1..=2 {
        let out = daemon
            .reach(&["exec", &dest, "--", "sh", "-c", "echo $((20 + 22)); exit 5"])
            .run();
        assert_eq!(
            (out.code, out.stdout_text()),
            (5, "42\n".into()),
            "{}",
            out.stderr
        );
        let conns = held(&daemon.list(), &dest);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0]["uses"], round);
    }

    // A Ctrl-C sent to reach travels through the daemon to the command.
    let mut child = daemon.spawn(
        &[
            "exec",
            &dest,
            "--",
            "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.1; done",
        ],
        None,
    );
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-int\n");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(held(&daemon.list(), &dest)[0]["uses"], 3);
}

/// Writes a request frame and reads the one frame that answers it.
fn ask_raw(socket: &Path, body: &[u8]) -> (u8, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    // The daemon may have answered and closed before reading the request.
    let _ = stream.write_all(&frame);
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0], String::from_utf8_lossy(&payload).into_owned())
}

#[test]
fn the_daemon_refuses_every_other_user() {
    const NOBODY: u32 = 65534;
    if !nix::unistd::getuid().is_root() {
        let why = "the_daemon_refuses_every_other_user: needs root to run a daemon as another user";
        assert!(std::env::var_os("REACH_REQUIRE_REAL").is_none(), "{why}");
        eprintln!("SKIP {why}");
        return;
    }
    // A daemon run by `nobody`, from a copy of reach that `nobody` can execute.
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = base.path().join("reach");
    std::fs::copy(env!("CARGO_BIN_EXE_reach"), &exe).unwrap();
    let runtime = base.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&runtime, Some(NOBODY), Some(NOBODY)).unwrap();
    let log = std::fs::File::create(base.path().join("daemon.log")).unwrap();
    let mut daemon = std::process::Command::new(&exe)
        .args(["connections", "daemon", "--idle", "60s"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", &runtime)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let socket = loop {
        if let Some(socket) = sockets(&runtime.join("reach")).pop() {
            break socket;
        }
        assert!(Instant::now() < deadline, "the daemon made no socket");
        std::thread::sleep(Duration::from_millis(20));
    };

    // Root can open the socket (the 0700 directory does not stop root), but the daemon
    // checks who is calling and answers only its own user.
    let (kind, body) = ask_raw(&socket, br#"{"op":"list"}"#);
    assert_eq!(kind, b'F', "{body}");
    assert!(
        body.contains("permission_denied")
            && body.contains(&format!("serves uid {NOBODY} only"))
            && body.contains("uid 0 was refused"),
        "{body}"
    );
    let (kind, body) = ask_raw(&socket, br#"{"op":"stop"}"#);
    assert_eq!(
        kind, b'F',
        "a stop from another user is refused too: {body}"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon still runs"
    );

    // reach itself, as root, will not even use another user's runtime directory.
    let out = reach(&["connections"])
        .env_remove("REACH_NO_REUSE")
        .env("XDG_RUNTIME_DIR", &runtime)
        .run();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!("belongs to uid {NOBODY}")),
        "{}",
        out.stderr
    );
    // And the daemon's directory and socket keep everyone else out.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&runtime.join("reach")), 0o700);
    assert_eq!(mode(&socket), 0o600);

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let logged = std::fs::read_to_string(base.path().join("daemon.log")).unwrap();
    assert!(
        logged.contains("refused a connection from uid 0"),
        "{logged}"
    );
}

/// A daemon serves only the build of reach that started it: after an upgrade (here, a copy of
/// the binary) the next call starts its own daemon instead of handing its command to code that
/// is not its own; both are warm for their own calls, and `connections stop` stops both.
#[test]
fn each_build_of_reach_has_its_own_daemon() {
    let Some(sshd) = SshdFixture::start_or_skip("each_build_of_reach_has_its_own_daemon") else {
        return;
    };
    let daemon = Daemon::new();
    let f = Flags::of(&sshd);
    let other = tempfile::tempdir().unwrap();
    let other_exe = other.path().join("reach");
    std::fs::copy(env!("CARGO_BIN_EXE_reach"), &other_exe).unwrap();
    let run_other = || {
        let out = Command::new(&other_exe)
            .args(exec_args(&f, &[], &["echo other"]))
            .env_remove("REACH_NO_REUSE")
            .env("XDG_RUNTIME_DIR", daemon.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(out.stdout, b"other\n");
    };
    run_other();
    assert_eq!(logins(&sshd), 1);
    let dir = daemon.dir.path().join("reach");
    assert_eq!(sockets(&dir).len(), 1, "the other build started its daemon");

    let out = daemon.reach(&exec_args(&f, &[], &["echo this"])).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "this\n");
    assert_eq!(
        logins(&sshd),
        2,
        "this build was not served by the other's daemon"
    );
    assert_eq!(sockets(&dir).len(), 2);

    let out = daemon.reach(&exec_args(&f, &[], &["true"])).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    run_other();
    assert_eq!(logins(&sshd), 2, "each build's second call was warm");

    let out = daemon.reach(&["connections", "stop"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    daemon.wait_for("both daemons to stop", Duration::from_secs(10), || {
        sockets(&dir).is_empty()
    });
}
