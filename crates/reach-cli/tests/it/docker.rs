//! `reach exec docker://NAME` against `docker exec NAME` on the same container.

use std::process::Command;

use reach_test::docker::ContainerFixture;

use crate::reach;

fn container(test: &str) -> Option<ContainerFixture> {
    if !reach_test::docker::available_or_skip(test) {
        return None;
    }
    Some(ContainerFixture::busybox().expect("busybox container"))
}

fn docker_exec(args: &[&str], stdin: &[u8]) -> (Vec<u8>, String, i32) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .arg("exec")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The conformance suite's commands, through both, with the same bytes and codes.
#[test]
fn exec_matches_docker_exec_byte_for_byte() {
    let Some(c) = container("exec_matches_docker_exec_byte_for_byte") else {
        return;
    };
    let dest = c.destination(None);
    let name = c.name().to_owned();
    let lines = [
        "printf out; printf err >&2; printf out2; exit 3",
        "exit 0",
        "exit 1",
        "exit 255",
        "printf '\\000\\377\\r\\n\\001'",
        "yes 0123456789abcde | head -c 1000000",
        "echo \"$HOME\"; id -un; pwd",
        "uname -s; uname -m",
        "kill -TERM $$",
        "kill -KILL $$",
        "while read -r line; do echo \"got $line\"; done; echo eof; exit 4",
        "cat",
    ];
    let input: Vec<u8> = b"one\ntwo\n"
        .iter()
        .copied()
        .chain((0..300_000u32).map(|i| (i % 251) as u8))
        .collect();
    for line in lines {
        let ours = reach(&["exec", &dest, "--", "sh", "-c", line])
            .stdin(input.clone())
            .run();
        let (stdout, stderr, code) = docker_exec(&["-i", &name, "sh", "-c", line], &input);
        assert_eq!(ours.stdout, stdout, "stdout of {line:?}");
        assert_eq!(ours.stderr, stderr, "stderr of {line:?}");
        assert_eq!(ours.code, code, "exit code of {line:?}");
    }
    // Environment, working directory and user, as flags.
    let ours = reach(&[
        "exec",
        "-e",
        "A=x y",
        "-C",
        "/etc",
        &c.destination(Some("reach")),
        "--",
        "sh",
        "-c",
        "printf '%s|' \"$A\"; pwd; id -u",
    ])
    .run();
    let (stdout, _, code) = docker_exec(
        &[
            "-e",
            "A=x y",
            "-w",
            "/etc",
            "-u",
            "reach",
            &name,
            "sh",
            "-c",
            "printf '%s|' \"$A\"; pwd; id -u",
        ],
        b"",
    );
    assert_eq!((ours.stdout, ours.code), (stdout, code));
}

#[test]
fn failures_name_the_container_and_the_command() {
    let Some(c) = container("failures_name_the_container_and_the_command") else {
        return;
    };
    let dest = c.destination(None);
    let out = reach(&["exec", &dest, "--", "reach-no-such-command"]).run();
    eprintln!("missing command: {}", out.stderr.trim());
    assert_eq!(out.code, 127);
    assert!(
        out.stderr.contains("`reach-no-such-command`"),
        "{}",
        out.stderr
    );
    // A user the container does not have: an error naming it, for commands and files alike
    // (the engine alone would print its complaint as the command's output, status 126).
    let nobody = c.destination(Some("reach-no-such-user"));
    for args in [
        vec!["exec", nobody.as_str(), "--", "id"],
        vec!["--no-agent", "exec", nobody.as_str(), "--", "id"],
    ] {
        let out = reach(&args).run();
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("has no user `reach-no-such-user`") && out.stdout.is_empty(),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = reach(&["cat", &format!("{nobody}:/etc/hostname")]).run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("reach-no-such-user"), "{}", out.stderr);
    // A numeric uid needs no entry, as with docker exec -u.
    let out = reach(&["exec", &c.destination(Some("4242")), "--", "id", "-u"]).run();
    assert_eq!(
        (out.code, out.stdout_text()),
        (0, "4242\n".to_owned()),
        "{}",
        out.stderr
    );
    let out = reach(&["exec", "docker://reach-no-such-container", "--", "true"]).run();
    eprintln!("missing container: {}", out.stderr.trim());
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("docker ps -a"), "{}", out.stderr);
    c.stop().unwrap();
    let out = reach(&["exec", &dest, "--", "true"]).run();
    eprintln!("stopped container: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("docker start"), "{}", out.stderr);
    let out = reach(&[
        "--docker-host",
        "unix:///nonexistent.sock",
        "exec",
        &dest,
        "--",
        "true",
    ])
    .run();
    eprintln!("no engine: {}", out.stderr.trim());
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("/nonexistent.sock"), "{}", out.stderr);
}

#[test]
fn files_commands_work_in_a_container() {
    let Some(c) = container("files_commands_work_in_a_container") else {
        return;
    };
    let dest = c.destination(None);
    let out = reach(&["mkdir", "--parents", &format!("{dest}:/tmp/a/b")]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = reach(&["put", &format!("{dest}:/tmp/a/b/f")])
        .stdin(b"hello".to_vec())
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = reach(&["cat", &format!("{dest}:/tmp/a/b/f")]).run();
    assert_eq!(out.stdout, b"hello");
    let out = reach(&["ls", &format!("{dest}:/tmp/a/b")]).run();
    assert_eq!(out.stdout_text(), "f\n");
    let out = c.exec(&["cat", "/tmp/a/b/f"]).unwrap();
    assert_eq!(out.stdout, b"hello");
    // `docker://name:~/PATH`, scp style after the scheme: in the user's home.
    let out = reach(&["put", &format!("{dest}:~/tilde")])
        .stdin(b"at home".to_vec())
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = c.exec(&["sh", "-c", "cat ~/tilde"]).unwrap();
    assert_eq!(out.stdout, b"at home");
    let out = reach(&["cat", &format!("{dest}:tilde")]).run();
    assert_eq!(out.stdout, b"at home");
    // Who commands run as: the image's default user, which the engine makes root.
    let out = reach(&["--json", "info", &dest]).run();
    let info = out.json();
    assert_eq!(info["user"], "root", "{}", out.stderr);
    // With the agent, signals, TCP and hashing in the container; without it, none of them.
    let caps = &info["capabilities"];
    for name in [
        "agent",
        "signals",
        "tcp",
        "sha256",
        "pty",
        "keep_connection",
    ] {
        assert_eq!(caps[name], true, "{name} in {caps}");
    }
    assert_eq!(caps["host_files"], false, "{caps}");
    let out = reach(&["--json", "--no-agent", "info", &dest]).run();
    let caps = &out.json()["capabilities"];
    for name in ["agent", "signals", "tcp", "sha256"] {
        assert_eq!(caps[name], false, "{name} without the agent in {caps}");
    }
    assert_eq!(caps["pty"], true, "{caps}");
    let out = c.exec(&["id", "-un"]).unwrap();
    assert_eq!(out.stdout, b"root\n");
}
