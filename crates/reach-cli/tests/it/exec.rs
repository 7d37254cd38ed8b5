//! `reach exec`, `reach shell` and `reach info` on `local`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::reach;

#[test]
fn stdout_stderr_and_exit_code_pass_through() {
    let out = reach(&[
        "exec",
        "local",
        "--",
        "sh",
        "-c",
        "printf out; printf err >&2; exit 7",
    ])
    .run();
    assert_eq!(out.stdout, b"out");
    assert_eq!(out.stderr, "err");
    assert_eq!(out.code, 7);
}

#[test]
fn death_by_signal_exits_128_plus_n() {
    let out = reach(&["exec", "local", "--", "sh", "-c", "kill -TERM $$"]).run();
    assert_eq!(out.code, 143, "{out:?}");
    let out = reach(&["exec", "local", "--", "sh", "-c", "kill -KILL $$"]).run();
    assert_eq!(out.code, 137, "{out:?}");
}

#[test]
fn two_hundred_megabytes_through_cat_come_back_identical() {
    let data: Vec<u8> = (0..200_000_000u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = reach(&["exec", "local", "--", "cat"])
        .stdin(data.clone())
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "bytes differ");
}

#[test]
fn malformed_and_unknown_destinations_are_usage_errors_naming_the_part() {
    let out = reach(&["exec", "nosuch://x", "--", "true"]).run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown scheme `nosuch`"),
        "{}",
        out.stderr
    );
    let out = reach(&["exec", "ssh://@:99999", "--", "true"]).run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("port `99999` is out of range"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("user name before `@` is empty"),
        "{}",
        out.stderr
    );
    let out = reach(&["exec", "local"]).run();
    assert_eq!(out.code, 2, "a missing command is a usage error: {out:?}");
    let out = reach(&["exec", "--timeout", "soon", "local", "--", "true"]).run();
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("`soon` is not a duration"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_and_unexecutable_commands_exit_like_a_shell() {
    let out = reach(&["exec", "local", "--", "reach-no-such-program", "x"]).run();
    assert_eq!(out.code, 127);
    assert!(
        out.stderr.contains("`reach-no-such-program` not found"),
        "{}",
        out.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "not a program").unwrap();
    let out = reach(&["exec", "local", "--", file.to_str().unwrap()]).run();
    assert_eq!(out.code, 126, "{out:?}");
    assert!(out.stderr.contains("not executable"), "{}", out.stderr);
}

#[test]
fn timeout_kills_and_exits_124() {
    let started = Instant::now();
    let out = reach(&["exec", "--timeout", "300ms", "local", "--", "sleep", "30"]).run();
    assert_eq!(out.code, 124, "{out:?}");
    assert!(
        out.stderr.contains("timed out after 300ms"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn env_cwd_and_shell_lines() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    let out = reach(&[
        "exec",
        "-e",
        "GREETING=hello world",
        "-C",
        dir,
        "local",
        "--",
        "printf '%s in %s' \"$GREETING\" \"$(pwd)\"",
    ])
    .run();
    assert_eq!(
        out.stdout_text(),
        format!("hello world in {dir}"),
        "{}",
        out.stderr
    );
    let out = reach(&["exec", "-C", "/no/such/dir", "local", "--", "true"]).run();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("/no/such/dir"), "{}", out.stderr);
}

#[test]
fn stdin_is_streamed_and_closed_and_n_disables_it() {
    let out = reach(&["exec", "local", "--", "wc", "-c"])
        .stdin("12345")
        .run();
    assert_eq!(out.stdout_text().trim(), "5");
    let out = reach(&["exec", "-n", "local", "--", "wc", "-c"])
        .stdin("12345")
        .run();
    assert_eq!(out.stdout_text().trim(), "0");
}

#[test]
fn tty_flag_gives_a_terminal() {
    let out = reach(&[
        "exec",
        "-t",
        "local",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo terminal",
    ])
    .run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout_text().contains("terminal"), "{out:?}");
    let out = reach(&["exec", "local", "--", "sh", "-c", "test -t 1 || echo pipe"]).run();
    assert_eq!(out.stdout_text(), "pipe\n");
}

#[test]
fn json_reports_status_and_output() {
    let out = reach(&[
        "--json",
        "exec",
        "local",
        "--",
        "sh",
        "-c",
        "printf hi; printf '\\377' >&2; exit 3",
    ])
    .run();
    assert_eq!(out.code, 3);
    let v = out.json();
    assert_eq!(v["status"]["code"], 3);
    assert_eq!(v["stdout"], "hi");
    assert_eq!(v["stderr_base64"], "/w==");
    assert_eq!(v["destination"], "local");
    let out = reach(&["--json", "exec", "local", "--", "sh", "-c", "kill -INT $$"]).run();
    assert_eq!(out.json()["status"]["signal"], "INT");
    assert_eq!(out.code, 130);
}

#[test]
fn signals_sent_to_reach_reach_the_command() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reach"))
        .args([
            "exec",
            "-n",
            "local",
            "--",
            "sh",
            "-c",
            "trap 'echo got-INT; exit 9' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-INT\n");
    assert_eq!(status.code(), Some(9));
}

#[test]
fn shell_without_a_terminal_reads_commands_from_stdin() {
    let out = reach(&["shell", "local"])
        .stdin("echo from-shell-$((6*7)); exit 5\n")
        .run();
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout_text().contains("from-shell-42"), "{out:?}");
}

/// `script` gives reach a real terminal; afterwards the terminal must be back in cooked mode.
#[test]
fn shell_on_a_terminal_uses_a_pty_and_restores_the_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        reach_test::skip(
            "shell_on_a_terminal",
            "`script` (util-linux) is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("stty-after");
    let inner = format!(
        "{} shell local; stty -a > {}",
        env!("CARGO_BIN_EXE_reach"),
        after.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"tty | grep -q pts && echo on-a-$((2*3))-pty; exit\n")
        .unwrap();
    let output = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reach shell under script did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("on-a-6-pty"), "terminal showed: {text:?}");
    let stty = std::fs::read_to_string(&after).unwrap();
    assert!(
        stty.contains(" icanon") && stty.contains(" echo "),
        "terminal left raw: {stty}"
    );
}

#[test]
fn info_describes_local() {
    let out = reach(&["info", "local"]).run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout_text().contains("backend      local"));
    let out = reach(&["--json", "info", "local"]).run();
    let v = out.json();
    assert_eq!(v["backend"], "local");
    assert_eq!(v["os"], std::env::consts::OS);
    assert_eq!(v["arch"], std::env::consts::ARCH);
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    assert_eq!(v["user"], me.trim());
    // What local can do: its files are this machine's, it signals process groups, and no
    // connection is worth keeping.
    let caps = &v["capabilities"];
    for (name, has) in [
        ("host_files", true),
        ("signals", true),
        ("pty", true),
        ("tcp", true),
        ("sha256", true),
        ("agent", false),
        ("keep_connection", false),
        ("write_tree", false),
    ] {
        assert_eq!(caps[name], has, "{name} in {caps}");
    }
}

#[test]
fn end_of_piped_stdin_ends_a_pty_command_too() {
    let out = reach(&["exec", "-t", "--timeout", "20s", "local", "--", "cat"])
        .stdin("hi\n")
        .run();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout_text().contains("hi"), "{out:?}");
}

#[test]
fn a_closed_stdout_stops_the_command_instead_of_hanging() {
    // `yes` dies of SIGPIPE once `head` leaves, and reach passes that on as 128+13; a reach
    // that kept the pipe open would hang until `timeout` ended it with 124.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; timeout 20 {} exec local -- yes | head -n 2",
            env!("CARGO_BIN_EXE_reach")
        ))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"y\ny\n");
    assert_eq!(out.status.code(), Some(141), "{out:?}");
}
