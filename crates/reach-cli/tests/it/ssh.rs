//! `reach` against a real sshd: the same bytes and exit codes as OpenSSH's `ssh`, the
//! connection flags on every subcommand, and the messages a user sees when it goes wrong.

use std::path::Path;
use std::process::Command;

use reach_test::sshd::SshdFixture;

use crate::{reach, Outcome};

fn sshd(test: &str) -> Option<SshdFixture> {
    SshdFixture::start_or_skip(test)
}

/// `reach SUBCOMMAND ARGS...` with the fixture's key and known_hosts as flags right after
/// the subcommand.
fn run(sshd: &SshdFixture, args: &[&str]) -> Outcome {
    run_after(sshd, &[], args)
}

/// Like [`run`], with global flags before the subcommand.
fn run_after(sshd: &SshdFixture, globals: &[&str], args: &[&str]) -> Outcome {
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let mut all: Vec<&str> = globals.to_vec();
    all.extend([args[0], "-i", &key, "--known-hosts", &known]);
    all.extend(&args[1..]);
    reach(&all).run()
}

/// The signal number a `kill -NAME $$` line sends.
fn signal_of(line: &str) -> Option<i32> {
    let name = line.strip_prefix("kill -")?.strip_suffix(" $$")?;
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "KILL" => 9,
        "TERM" => 15,
        _ => return None,
    })
}

/// The conformance commands, as `ssh` runs them and as `reach exec` runs them.
#[test]
fn exec_matches_openssh_byte_for_byte_signals_included() {
    let Some(sshd) = sshd("exec_matches_openssh_byte_for_byte_signals_included") else {
        return;
    };
    let dest = sshd.destination();
    for line in [
        "printf out; printf err >&2; exit 7",
        "exit 0",
        "exit 1",
        "exit 255",
        "printf '\\000\\001\\377'",
        "echo \"$HOME\"; id -un; pwd",
        "kill -TERM $$",
        "kill -KILL $$",
        "kill -INT $$",
        "kill -HUP $$",
        "reach-no-such-command",
        "yes reach | head -c 1000000",
        "cat /etc/hostname; uname -s",
    ] {
        let ours = run(&sshd, &["exec", &dest, "--", line]);
        let theirs = sshd.ssh_command().arg(line).output().unwrap();
        assert_eq!(ours.stdout, theirs.stdout, "stdout of {line:?}");
        assert_eq!(
            ours.stderr,
            String::from_utf8_lossy(&theirs.stderr),
            "stderr of {line:?}"
        );
        match signal_of(line) {
            // OpenSSH's client ignores exit-signal and exits 255, the same code as for its
            // own connection failures; reach reports 128+N on every backend, as a shell does.
            Some(n) => {
                assert_eq!(theirs.status.code(), Some(255), "ssh on {line:?}");
                assert_eq!(ours.code, 128 + n, "reach on {line:?}: {}", ours.stderr);
            }
            None => assert_eq!(
                Some(ours.code),
                theirs.status.code(),
                "exit code of {line:?}"
            ),
        }
    }
    // stdin streams through, as `ssh host cat` does.
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &known,
        &dest,
        "--",
        "cat",
    ])
    .stdin(data.clone())
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout == data, "5 MB through cat differ");
}

#[test]
fn connection_flags_work_before_and_after_every_subcommand() {
    let Some(sshd) = sshd("connection_flags_work_before_and_after_every_subcommand") else {
        return;
    };
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let port = sshd.port().to_string();
    let user = sshd.user().to_owned();
    let dir = sshd.user_dir("cli").unwrap();
    // Host only: port and user from -p and -l.
    let flags = [
        "-i",
        key.as_str(),
        "--known-hosts",
        &known,
        "-p",
        &port,
        "-l",
        &user,
    ];
    let at = |path: &str| format!("127.0.0.1:{dir}/{path}");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "exec".into(),
            "127.0.0.1".into(),
            "--".into(),
            "id -un".into(),
        ],
        vec!["info".into(), "127.0.0.1".into()],
        vec!["mkdir".into(), "--parents".into(), at("a/b")],
        vec!["ls".into(), "--long".into(), at("a")],
        vec!["stat".into(), at("a/b")],
        vec!["chmod".into(), "700".into(), at("a/b")],
        vec!["mv".into(), at("a/b"), at("a/c")],
        vec!["rm".into(), "-r".into(), at("a")],
    ];
    for case in &cases {
        let mut before: Vec<&str> = flags.to_vec();
        before.extend(case.iter().map(String::as_str));
        let out = reach(&before).run();
        assert_eq!(out.code, 0, "flags before {case:?}: {}", out.stderr);
    }
    let mut put = vec!["put"];
    put.extend(flags);
    let file = at("f.txt");
    put.push(&file);
    let out = reach(&put).stdin("over ssh\n").run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut cat = vec!["cat", file.as_str()];
    cat.extend(flags);
    let out = reach(&cat).run();
    assert_eq!(out.stdout, b"over ssh\n", "{}", out.stderr);
    let on_disk = std::fs::read_to_string(format!("{dir}/f.txt")).unwrap();
    assert_eq!(on_disk, "over ssh\n");
    let mut exec = vec!["exec", "127.0.0.1"];
    exec.extend(flags);
    exec.extend(["--", "id -un"]);
    let out = reach(&exec).run();
    assert_eq!(out.stdout_text().trim(), user, "{}", out.stderr);
}

#[test]
fn failures_print_what_a_user_needs() {
    let Some(mut sshd) = sshd("failures_print_what_a_user_needs") else {
        return;
    };
    let dest = sshd.destination();
    let known = sshd.known_hosts().display().to_string();
    let key = sshd.client_key().display().to_string();
    let scratch = tempfile::tempdir().unwrap();

    // Wrong key.
    let wrong = scratch.path().join("wrong");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong)
        .status()
        .unwrap()
        .success());
    let wrong = wrong.display().to_string();
    let out = reach(&[
        "exec",
        "-i",
        &wrong,
        "--known-hosts",
        &known,
        &dest,
        "--",
        "true",
    ])
    .run();
    println!("wrong key: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.contains("refused every credential"),
        "{}",
        out.stderr
    );

    // Unknown host key: refused with its fingerprint and the flag that accepts it.
    let empty = scratch.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &empty,
        &dest,
        "--",
        "true",
    ])
    .run();
    println!("unknown host key: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("SHA256:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("--accept-new-host-key"),
        "{}",
        out.stderr
    );
    // ... and accepted with the flag, which records it; then known.
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &empty,
        "--accept-new-host-key",
        &dest,
        "--",
        "true",
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &empty,
        &dest,
        "--",
        "true",
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Changed host key: refused even with accept-new.
    let changed = scratch.path().join("changed");
    let other = scratch.path().join("other");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let other_pub = std::fs::read_to_string(format!("{}.pub", other.display())).unwrap();
    let mut parts = other_pub.split_whitespace();
    let (algo, blob) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        &changed,
        format!("[127.0.0.1]:{} {algo} {blob}\n", sshd.port()),
    )
    .unwrap();
    let changed = changed.display().to_string();
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &changed,
        "--accept-new-host-key",
        &dest,
        "--",
        "true",
    ])
    .run();
    println!("changed host key: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("CHANGED"), "{}", out.stderr);

    // Missing known_hosts file.
    let missing = scratch
        .path()
        .join("nope/known_hosts")
        .display()
        .to_string();
    let out = reach(&[
        "exec",
        "-i",
        &key,
        "--known-hosts",
        &missing,
        &dest,
        "--",
        "true",
    ])
    .run();
    println!("missing known_hosts: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);

    // sshd killed mid-command: an error and 255, never exit 0.
    let child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .env("REACH_NO_REUSE", "1")
        .args([
            "exec",
            "-i",
            &key,
            "--known-hosts",
            &known,
            &dest,
            "--",
            "sleep 30",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sshd.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("sshd killed: {}", stderr.trim());
    assert_eq!(out.status.code(), Some(255), "{stderr}");

    // Refused port (the server is gone now).
    let out = run(&sshd, &["exec", &dest, "--", "true"]);
    println!("refused port: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
}

/// `reach shell` over SSH on a real terminal (`script`): a remote PTY with sane modes, and
/// the local terminal restored afterwards.
#[test]
fn shell_over_ssh_gets_a_pty_with_sane_modes() {
    let Some(sshd) = sshd("shell_over_ssh_gets_a_pty_with_sane_modes") else {
        return;
    };
    if Command::new("script").arg("--version").output().is_err() {
        reach_test::skip("shell_over_ssh", "`script` (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("stty-after");
    let inner = format!(
        "{} shell -i {} --known-hosts {} {}; stty -a > {}",
        env!("CARGO_BIN_EXE_reach"),
        sshd.client_key().display(),
        sshd.known_hosts().display(),
        sshd.destination(),
        after.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"tty | grep -q pts && echo on-a-$((2*3))-pty; \
              stty -a | tr ' ;' '\\n\\n' | grep -qx iutf8 && echo modes-$((1+1))-ok; exit\n",
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "reach shell over ssh did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("on-a-6-pty"), "terminal showed: {text:?}");
    assert!(text.contains("modes-2-ok"), "terminal showed: {text:?}");
    let stty = std::fs::read_to_string(&after).unwrap();
    assert!(
        stty.contains(" icanon") && stty.contains(" echo "),
        "terminal left raw: {stty}"
    );
}

/// `HOST:~/x` and `HOST:~` name the login directory, as with scp: the file lands in the
/// user's home, and no file or directory called `~` appears there.
#[test]
fn a_tilde_path_is_the_login_directory() {
    let Some(sshd) = sshd("a_tilde_path_is_the_login_directory") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Unique names: without root the home is the tester's own.
    let (one, two) = (
        format!("reach-tilde-{}.txt", std::process::id()),
        format!("reach-tilde2-{}.txt", std::process::id()),
    );
    let file = dir.path().join(&one);
    std::fs::write(&file, "home\n").unwrap();
    let file = file.display().to_string();
    let host = format!("{}@127.0.0.1", sshd.user());
    let port = sshd.port().to_string();
    let home = std::path::Path::new(sshd.home());
    for dest in [format!("{host}:~/{two}"), format!("{host}:~")] {
        let out = run(&sshd, &["cp", "-p", &port, &file, &dest]);
        assert_eq!(out.code, 0, "{dest}: {}", out.stderr);
    }
    let landed = [
        std::fs::read(home.join(&two)),
        std::fs::read(home.join(&one)),
    ];
    let _ = std::fs::remove_file(home.join(&one));
    let out = run(&sshd, &["cat", "-p", &port, &format!("{host}:~/{two}")]);
    let _ = std::fs::remove_file(home.join(&two));
    for bytes in landed {
        assert_eq!(bytes.unwrap(), b"home\n");
    }
    assert!(!home.join("~").exists(), "a file named ~ was made");
    assert_eq!(out.stdout_text(), "home\n");
    let out = run(
        &sshd,
        &["cp", "-p", &port, &file, &format!("{host}:~nobody/x")],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("~name"), "{}", out.stderr);
}

/// `Match` blocks in the SSH config are evaluated as `ssh` evaluates them, against the real
/// sshd: an `originalhost` block supplies where and how to connect, a `host` block sees the
/// `HostName` set before it, and a block whose `exec` fails does not apply.
#[test]
fn match_blocks_in_the_ssh_config_apply() {
    let Some(sshd) = sshd("match_blocks_in_the_ssh_config_apply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "Match exec \"false\"\n  Port 1\n\
             Match originalhost reach-match-alias\n  HostName 127.0.0.1\n  User {user}\n\
             Match host 127.0.0.1 user {user}\n  Port {port}\n  IdentityFile {key}\n  \
             UserKnownHostsFile {known}\n",
            user = sshd.user(),
            port = sshd.port(),
            key = sshd.client_key().display(),
            known = sshd.known_hosts().display(),
        ),
    );
    let out = reach(&[
        "exec",
        "-F",
        &config,
        "reach-match-alias",
        "--",
        "echo",
        "matched",
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "matched\n");
    // Another user name: the `user` block no longer applies, so no port and no key.
    let out = reach(&[
        "exec",
        "-F",
        &config,
        "--connect-timeout",
        "5s",
        "someone-else@reach-match-alias",
        "--",
        "true",
    ])
    .run();
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1:22"), "{}", out.stderr);
}

/// `ProxyCommand` carries the connection, as with `ssh`: here OpenSSH's own `ssh -W` through
/// the same server (which leaves a mark, so the test knows it ran). A command that fails is
/// an error that names it, exit 255.
#[test]
fn a_proxy_command_carries_the_connection() {
    let Some(sshd) = sshd("a_proxy_command_carries_the_connection") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("proxied");
    let key = sshd.client_key().display().to_string();
    let known = sshd.known_hosts().display().to_string();
    let config = write_config(
        &dir,
        &format!(
            "Host reach-proxied\n{reach}  \
             ProxyCommand sh -c 'echo %h:%p > {mark}; exec ssh -F /dev/null -i {key} \
             -o UserKnownHostsFile={known} -o BatchMode=yes -p %p -W %h:%p %r@%h'\n\
             Host reach-broken-proxy\n  HostName 127.0.0.1\n  ProxyCommand false\n",
            reach = sshd.config_lines(),
            mark = mark.display(),
        ),
    );
    let out = reach(&[
        "exec",
        "-F",
        &config,
        "reach-proxied",
        "--",
        "echo",
        "through",
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "through\n");
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap(),
        format!("127.0.0.1:{}\n", sshd.port())
    );
    let out = reach(&["exec", "-F", &config, "reach-broken-proxy", "--", "true"]).run();
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(
        out.stderr.contains("ProxyCommand `false`"),
        "{}",
        out.stderr
    );
}

/// Host keys the administrator manages for everyone (`/etc/ssh/ssh_known_hosts`, or the
/// config's `GlobalKnownHostsFile`) are trusted as `ssh` trusts them: known there is known,
/// even without a user file; `@revoked` there is refused whatever the user's file says.
#[test]
fn system_known_hosts_files_count_as_ssh_counts_them() {
    let Some(sshd) = sshd("system_known_hosts_files_count_as_ssh_counts_them") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let entry = std::fs::read_to_string(sshd.known_hosts()).unwrap();
    let key_only = entry
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(path("global"), &entry).unwrap();
    std::fs::write(path("revoked"), format!("@revoked * {key_only}\n")).unwrap();
    std::fs::write(path("empty"), "").unwrap();
    let config = |global: &str| {
        let file = path(&format!("config-{}", global.replace('/', "_")));
        std::fs::write(&file, format!("Host *\n  GlobalKnownHostsFile {global}\n")).unwrap();
        file
    };
    let key = sshd.client_key().display().to_string();
    let dest = sshd.destination();
    let exec = |config: &str, known: &str| {
        reach(&[
            "exec",
            "-F",
            config,
            "-i",
            &key,
            "--known-hosts",
            known,
            &dest,
            "--",
            "echo",
            "in",
        ])
        .run()
    };
    let global = config(&path("global"));
    for known in [path("empty"), path("missing")] {
        let out = exec(&global, &known);
        assert_eq!(out.code, 0, "user file {known}: {}", out.stderr);
        assert_eq!(out.stdout_text(), "in\n");
    }
    let out = exec(
        &config(&path("revoked")),
        &sshd.known_hosts().display().to_string(),
    );
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(
        out.stderr.contains("@revoked") && out.stderr.contains(&path("revoked")),
        "{}",
        out.stderr
    );
    let out = exec(&config("none"), &path("empty"));
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(out.stderr.contains("is unknown"), "{}", out.stderr);
}

/// `HostKeyAlias` names the host key in known_hosts, as written, in place of `[host]:port`:
/// looked up under it, and recorded under it by --accept-new-host-key.
#[test]
fn a_host_key_alias_names_the_key() {
    let Some(sshd) = sshd("a_host_key_alias_names_the_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let entry = std::fs::read_to_string(sshd.known_hosts()).unwrap();
    let key_only = entry
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    let known = dir.path().join("known");
    std::fs::write(&known, format!("reach-key-alias {key_only}\n")).unwrap();
    let config = write_config(
        &dir,
        "Host *\n  HostKeyAlias reach-key-alias\n  GlobalKnownHostsFile none\n",
    );
    let key = sshd.client_key().display().to_string();
    let dest = sshd.destination();
    let exec = |known: &Path, extra: &[&str]| {
        let known = known.display().to_string();
        let mut args = vec!["exec", "-F", &config, "-i", &key, "--known-hosts", &known];
        args.extend(extra);
        args.extend([dest.as_str(), "--", "echo", "in"]);
        reach(&args).run()
    };
    let out = exec(&known, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "in\n");
    let fresh = dir.path().join("fresh");
    let out = exec(&fresh, &["--accept-new-host-key"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let recorded = std::fs::read_to_string(&fresh).unwrap();
    assert!(
        recorded.starts_with(&format!("reach-key-alias {key_only}")),
        "{recorded}"
    );
}

/// A client config file holding `text` in `dir`, as the argument to pass with `-F`.
fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("config");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `-A` (or `ForwardAgent yes`) forwards the ssh-agent: the command on the server lists the
/// agent's key with OpenSSH's own `ssh-add -l`. Without it there is no agent there.
#[test]
fn the_agent_is_forwarded_only_when_asked() {
    let Some(sshd) = sshd("the_agent_is_forwarded_only_when_asked") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Kill(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let key = dir.path().join("forwarded");
    let made = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "reach-forwarded-key",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let config = write_config(&dir, "Host *\n  ForwardAgent yes\n");
    let list = |extra: &[&str]| {
        let key = sshd.client_key().display().to_string();
        let known = sshd.known_hosts().display().to_string();
        let dest = sshd.destination();
        let mut args = vec!["exec", "-i", &key, "--known-hosts", &known];
        args.extend(extra);
        args.extend([dest.as_str(), "--", "ssh-add", "-l"]);
        reach(&args).env("SSH_AUTH_SOCK", &socket).run()
    };
    for extra in [&["-A"][..], &["-F", &config][..]] {
        let out = list(extra);
        assert_eq!(out.code, 0, "{extra:?}: {}", out.stderr);
        assert!(
            out.stdout_text().contains("reach-forwarded-key"),
            "{extra:?}: {}",
            out.stdout_text()
        );
    }
    let out = list(&[]);
    assert_eq!(out.code, 2, "no agent without -A: {:?}", out.stdout_text());
}

/// A server that only has an old cipher: refused (255) with the option to give, then reached
/// with `-o`, before or after the subcommand; a misspelt `-o` is a usage error (2).
#[test]
fn ssh_option_allows_an_old_servers_cipher() {
    if !SshdFixture::available_or_skip("ssh_option_allows_an_old_servers_cipher") {
        return;
    }
    let sshd = SshdFixture::start_with("Ciphers aes128-cbc\n").unwrap();
    let dest = sshd.destination();
    let refused = run(&sshd, &["exec", &dest, "--", "echo ok"]);
    assert_eq!(refused.code, 255, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("`Ciphers=+aes128-cbc`"),
        "{}",
        refused.stderr
    );
    let after = run(
        &sshd,
        &["exec", "-o", "Ciphers=+aes128-cbc", &dest, "--", "echo ok"],
    );
    assert_eq!(
        (after.code, after.stdout.as_slice()),
        (0, &b"ok\n"[..]),
        "{}",
        after.stderr
    );
    let before = run_after(
        &sshd,
        &["--ssh-option", "Ciphers +aes128-cbc"],
        &["exec", &dest, "--", "echo ok"],
    );
    assert_eq!(
        (before.code, before.stdout.as_slice()),
        (0, &b"ok\n"[..]),
        "{}",
        before.stderr
    );
    let typo = run(
        &sshd,
        &["exec", "-o", "Ciphers=+aes128-cbd", &dest, "--", "true"],
    );
    assert_eq!(typo.code, 2, "{}", typo.stderr);
    assert!(
        typo.stderr.contains("`aes128-cbd` is not one"),
        "{}",
        typo.stderr
    );
}

/// `-vv` tells a login's story: algorithms, the host key check, each method tried.
#[test]
fn verbose_shows_the_handshake_host_key_check_and_each_auth_method() {
    let Some(sshd) = sshd("verbose_shows_the_handshake_host_key_check_and_each_auth_method") else {
        return;
    };
    let dest = sshd.destination();
    let out = run_after(&sshd, &["-vv"], &["exec", &dest, "--", "echo", "hi"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "hi\n");
    let said = &out.stderr;
    println!("{said}");
    for expected in [
        "connecting to 127.0.0.1",
        "negotiated algorithms",
        "kex: ",
        "cipher: ",
        "offers host key ssh-ed25519 SHA256:",
        "accepted (known_hosts:",
        "trying publickey: `",
        "authenticated as",
    ] {
        assert!(
            said.contains(expected),
            "{expected:?} missing from:\n{said}"
        );
    }
    // Without -v, nothing but the command's own output.
    let quiet = run(&sshd, &["exec", &dest, "--", "echo", "hi"]);
    assert_eq!(quiet.stderr, "");

    // A key the server does not know: -v says which key was refused and what it accepts.
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(made.success());
    let known = sshd.known_hosts().display().to_string();
    let out = reach(&[
        "-v",
        "exec",
        &dest,
        "-i",
        stranger.to_str().unwrap(),
        "--known-hosts",
        &known,
        "--",
        "true",
    ])
    .env("SSH_AUTH_SOCK", "")
    .env_remove("REACH_SSH_PASSWORD")
    .run();
    assert_eq!(out.code, 255, "{}", out.stderr);
    println!("{}", out.stderr);
    let refused = out
        .stderr
        .lines()
        .find(|l| l.contains(" INFO ") && l.contains("was refused"))
        .unwrap_or_else(|| panic!("no refusal at -v:\n{}", out.stderr));
    assert!(refused.contains("stranger"), "{refused}");
    assert!(
        refused.contains("the server accepts: publickey"),
        "{refused}"
    );
}

/// No level of logging, from -v to RUST_LOG=trace (russh's own messages included), shows
/// the password or the private key.
#[test]
fn no_log_level_shows_a_password_or_a_key() {
    const TEST: &str = "no_log_level_shows_a_password_or_a_key";
    if !reach_test::is_root() {
        reach_test::skip(TEST, "creating a user with a password needs root");
        return;
    }
    let Some(sshd) = SshdFixture::start_or_skip(TEST) else {
        return;
    };
    drop(sshd);
    let password = "Zq7-log-canary-pw";
    reach_test::sshd::ensure_password_user("reachlog", password).unwrap();
    let sshd = SshdFixture::start_with("PasswordAuthentication yes").unwrap();
    let known = sshd.known_hosts().display().to_string();
    let key = sshd.client_key();
    // Every line of the private key's body, as it could appear if the key were printed.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_lines: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_lines.is_empty());
    let dest = format!("ssh://reachlog@127.0.0.1:{}", sshd.port());
    let key_dest = sshd.destination();
    let levels: [(&[&str], Option<&str>); 5] = [
        (&["-v"], None),
        (&["-vv"], None),
        (&["-vvv"], None),
        (&[], Some("trace")),
        (&["-vvv"], Some("russh=trace,russh_sftp=trace,reach=trace")),
    ];
    // No key of its own for the password login: HOME holds none.
    let home = tempfile::tempdir().unwrap();
    for (flags, rust_log) in levels {
        // A password login and a key login.
        let key_str = key.display().to_string();
        for (target, what) in [(&dest, "password"), (&key_dest, "key")] {
            let mut args: Vec<&str> = flags.to_vec();
            args.extend(["exec", target.as_str()]);
            if what == "key" {
                args.extend(["-i", &key_str]);
            }
            args.extend(["--known-hosts", &known, "--", "sh", "-c", "printf data"]);
            let mut cmd = reach(&args)
                .env("REACH_SSH_PASSWORD", password)
                .env("HOME", home.path())
                .env("SSH_AUTH_SOCK", "");
            cmd = match rust_log {
                Some(filter) => cmd.env("RUST_LOG", filter),
                None => cmd.env_remove("RUST_LOG"),
            };
            let out = cmd.run();
            let label = format!("{flags:?} RUST_LOG={rust_log:?} {what}");
            assert_eq!(out.code, 0, "{label}: {}", out.stderr);
            assert_eq!(out.stdout_text(), "data", "{label}");
            assert!(!out.stderr.is_empty(), "{label}: nothing was logged");
            if what == "password" && flags.len() == 1 && flags[0] != "-v" {
                assert!(
                    out.stderr.contains("trying password"),
                    "{label}: {}",
                    out.stderr
                );
            }
            assert!(
                !out.stderr.contains(password),
                "{label}: the password was logged"
            );
            for line in &key_lines {
                assert!(
                    !out.stderr.contains(line),
                    "{label}: the private key was logged"
                );
            }
        }
    }
}

/// `--ssh-agent-helper always`: the command's parent on the server is reach's agent, not the
/// server's session; a bad mode is refused naming the modes; `never` is plain SSH again.
#[test]
fn the_agent_helper_flag_runs_commands_through_the_agent() {
    let Some(sshd) = sshd("the_agent_helper_flag_runs_commands_through_the_agent") else {
        return;
    };
    let dest = sshd.destination();
    let parent = "cat /proc/$PPID/comm";
    let out = run(
        &sshd,
        &[
            "exec",
            "--ssh-agent-helper",
            "always",
            &dest,
            "--",
            "sh",
            "-c",
            parent,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout_text().starts_with("agent-"),
        "{}",
        out.stdout_text()
    );
    let out = run(
        &sshd,
        &[
            "exec",
            "--ssh-agent-helper=never",
            &dest,
            "--",
            "sh",
            "-c",
            parent,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The user's shell, which sshd started for the command line.
    assert!(
        !out.stdout_text().starts_with("agent-"),
        "{}",
        out.stdout_text()
    );
    let out = run(
        &sshd,
        &[
            "exec",
            "--ssh-agent-helper",
            "sometimes",
            &dest,
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("auto, always or never"),
        "{}",
        out.stderr
    );
}
