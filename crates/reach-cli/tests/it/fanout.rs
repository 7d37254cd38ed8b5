//! `reach exec` on many targets: three real sshd servers listening on many loopback addresses
//! each, busybox containers, targets whose key is refused and targets nobody listens on.

use std::collections::BTreeMap;

use reach_test::docker::ContainerFixture;
use reach_test::sshd::SshdFixture;

use crate::reach;

/// What the command prints: the role the target was given (`/reach-role` in the containers;
/// none on this host), failing with 3 where that role is `failing`.
const PROBE: &str = "r=$(cat /reach-role 2>/dev/null || echo host); echo $r; \
                     case $r in failing) exit 3;; esac";

/// 50 targets: 42 sshd addresses (3 servers × 14), 3 containers (one marked to fail), 3
/// with a key the server refuses, 2 where nothing listens.
struct Fleet {
    _servers: Vec<SshdFixture>,
    _containers: Vec<ContainerFixture>,
    dir: tempfile::TempDir,
    /// Name → what it should come to: "host", "container", "failing", "auth", "refused".
    expected: BTreeMap<String, &'static str>,
}

impl Fleet {
    fn start() -> Option<Fleet> {
        if !SshdFixture::available_or_skip("reach exec on many targets") {
            return None;
        }
        if !reach_test::docker::available_or_skip("reach exec on many targets") {
            return None;
        }
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(SshdFixture::start_on(14, "").expect("sshd"));
        }
        let containers: Vec<ContainerFixture> = (0..3)
            .map(|_| ContainerFixture::busybox().expect("container"))
            .collect();
        for (i, c) in containers.iter().enumerate() {
            let role = if i == 2 { "failing" } else { "container" };
            c.exec(&["sh", "-c", &format!("echo {role} > /reach-role")])
                .expect("mark");
        }
        let dir = tempfile::tempdir().unwrap();
        let stranger = dir.path().join("stranger");
        let keygen = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .status()
            .unwrap();
        assert!(keygen.success());

        let mut expected = BTreeMap::new();
        let mut inventory = String::new();
        let mut all = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let hosts: Vec<String> = server
                .addresses()
                .iter()
                .map(|a| format!("{a}:{}", server.port()))
                .collect();
            for h in &hosts {
                expected.insert(h.clone(), "host");
            }
            inventory.push_str(&format!(
                "[groups.lab{i}]\nhosts = {hosts:?}\nuser = \"{}\"\nidentity = \"{}\"\n\
                 known_hosts = \"{}\"\n",
                server.user(),
                server.client_key().display(),
                server.known_hosts().display()
            ));
            all.push(format!("lab{i}"));
        }
        // The same server, other names, a key it does not know.
        let refused: Vec<String> = servers[0].addresses()[..3]
            .iter()
            .map(|a| format!("ssh://{}@{a}:{}", servers[0].user(), servers[0].port()))
            .collect();
        for h in &refused {
            expected.insert(h.clone(), "auth");
        }
        inventory.push_str(&format!(
            "[groups.strangers]\nhosts = {refused:?}\nidentity = \"{}\"\nknown_hosts = \"{}\"\n",
            stranger.display(),
            servers[0].known_hosts().display()
        ));
        all.push("strangers".into());
        inventory.push_str(&format!("[groups.all]\ngroups = {all:?}\n"));
        std::fs::write(dir.path().join("reach.toml"), inventory).unwrap();

        let mut hosts = String::from("# containers and dead ends\n");
        for (i, c) in containers.iter().enumerate() {
            let d = c.destination(None);
            hosts.push_str(&format!("{d}   # container {i}\n"));
            expected.insert(d, if i == 2 { "failing" } else { "container" });
        }
        for dead in ["127.0.0.1:1", "127.0.0.2:1"] {
            hosts.push_str(&format!("{dead}\n\n"));
            expected.insert(dead.to_owned(), "refused");
        }
        std::fs::write(dir.path().join("hosts"), hosts).unwrap();
        assert_eq!(expected.len(), 50);
        Some(Fleet {
            _servers: servers,
            _containers: containers,
            dir,
            expected,
        })
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "exec".into(),
            "@all".into(),
            "-H".into(),
            self.dir.path().join("hosts").display().to_string(),
            "--inventory".into(),
            self.dir.path().join("reach.toml").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.push(PROBE.into());
        args
    }

    fn run(&self, extra: &[&str]) -> crate::Outcome {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        reach(&args).run()
    }

    fn count(&self, what: &str) -> usize {
        self.expected.values().filter(|v| **v == what).count()
    }
}

#[test]
fn fifty_targets_json_prefixed_and_grouped() {
    let Some(fleet) = Fleet::start() else {
        return;
    };

    // --json: one object per target, each with the right status.
    let out = fleet.run(&["--json", "-j", "16"]);
    assert_eq!(out.code, 255, "some were unreachable: {}", out.stderr);
    let mut seen = BTreeMap::new();
    for line in out.stdout_text().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["destination"].as_str().unwrap().to_owned();
        let got = match (v["status"]["code"].as_i64(), v["error"]["kind"].as_str()) {
            (Some(0), _) => v["stdout"].as_str().unwrap().trim().to_owned(),
            (Some(3), _) if v["stdout"] == "failing\n" => "failing".to_owned(),
            (_, Some("auth_failed")) => "auth".to_owned(),
            (_, Some("unreachable")) => "refused".to_owned(),
            _ => panic!("unexpected result: {v}"),
        };
        if got == "host" || got == "container" {
            // The hash is of the bytes given.
            let sha = v["stdout_sha256"].as_str().unwrap();
            assert_eq!(sha, sha256_hex(format!("{got}\n").as_bytes()));
            assert_eq!(v["reached"], true);
        }
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(seen.insert(name.clone(), got).is_none(), "{name} twice");
    }
    let expected: BTreeMap<String, String> = fleet
        .expected
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(seen, expected);
    assert!(
        out.stderr.contains("50 targets in")
            && out.stderr.contains(": 44 ok, 1 failed, 5 unreachable"),
        "{}",
        out.stderr
    );

    // Prefixed lines: one whole line per reachable target, errors on stderr.
    let out = fleet.run(&[]);
    assert_eq!(out.code, 255);
    let mut lines = BTreeMap::new();
    for line in out.stdout_text().lines() {
        let (name, text) = line.split_once(": ").expect("NAME: line");
        assert!(
            lines
                .insert(name.trim().to_owned(), text.to_owned())
                .is_none(),
            "{line}"
        );
    }
    assert_eq!(lines.len(), 45, "{}", out.stdout_text());
    for (name, text) in &lines {
        assert_eq!(text, fleet.expected[name], "{name}");
    }
    let unreachable = out.stderr.matches("[unreachable]").count();
    assert_eq!(unreachable, 5, "{}", out.stderr);
    assert!(out.stderr.contains("[exit 3]"), "{}", out.stderr);

    // Grouped: each distinct output once, with how many produced it.
    let out = fleet.run(&["--group"]);
    assert_eq!(out.code, 255);
    let text = out.stdout_text();
    let header = |n: usize, body: &str| {
        let at = text
            .find(&format!("\n{body}\n"))
            .unwrap_or_else(|| panic!("no {body} group in:\n{text}"));
        let before = &text[..at];
        let head = before.lines().rev().nth(1).unwrap_or_default().to_owned();
        assert!(head.ends_with(&format!("({n})")), "{body}: {head}\n{text}");
        head
    };
    header(fleet.count("host"), "host");
    header(fleet.count("container"), "container");
    assert!(text.contains("(1)\nexit 3\n"), "{text}");
    assert!(text.contains("(3)\nunreachable (auth_failed)\n"), "{text}");
    assert!(text.contains("(2)\nunreachable (unreachable)\n"), "{text}");
    assert_eq!(text.matches("\nhost\n").count(), 1, "{text}");
    // Each server's addresses fold into a range.
    assert!(text.contains("127.0.0.[1-14]:"), "{text}");
}

#[test]
fn fail_fast_cancels_the_rest_and_timeouts_are_per_target() {
    if !SshdFixture::available_or_skip("reach exec --fail-fast") {
        return;
    }
    let server = SshdFixture::start_on(6, "").expect("sshd");
    let names: Vec<String> = server
        .addresses()
        .iter()
        .map(|a| format!("ssh://{}@{a}:{}", server.user(), server.port()))
        .collect();
    let key = server.client_key().display().to_string();
    let kh = server.known_hosts().display().to_string();
    let base = |extra: &[&str], command: &str| {
        let mut args: Vec<&str> = vec!["exec", "--json", "-i", &key, "--known-hosts", &kh];
        args.extend(names.iter().map(String::as_str));
        args.extend_from_slice(extra);
        args.push("--");
        args.push(command);
        reach(&args).run()
    };
    let results = |out: &crate::Outcome| -> BTreeMap<String, serde_json::Value> {
        out.stdout_text()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["destination"].as_str().unwrap().to_owned(), v)
            })
            .collect()
    };

    // The target on 127.0.0.1 fails at once; with two at a time, the other one running is
    // stopped and the four waiting never start.
    let out = base(
        &["-j", "2", "--fail-fast"],
        "case \"$SSH_CONNECTION\" in *' 127.0.0.1 '*) exit 1;; esac; sleep 30; echo finished",
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let got = results(&out);
    assert_eq!(got.len(), 6);
    assert_eq!(got[&names[0]]["status"]["code"], 1);
    for name in &names[1..] {
        assert_eq!(got[name]["error"]["kind"], "cancelled", "{}", got[name]);
    }
    assert!(
        out.stderr.contains("1 failed, 0 unreachable, 5 cancelled"),
        "{}",
        out.stderr
    );

    // A per-target limit: every target is stopped at it, and says so.
    let out = base(&["--timeout", "1s"], "sleep 30; echo finished");
    assert_eq!(out.code, 1, "{}", out.stderr);
    for (name, v) in results(&out) {
        assert_eq!(v["error"]["kind"], "timeout", "{name}: {v}");
        assert_eq!(v["stdout"], "", "{name}");
    }
}

#[test]
fn targets_come_from_words_files_and_groups_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // No inventory anywhere: the group is named, and how to make one is said.
    let out = reach(&[
        "exec",
        "@web",
        "--inventory",
        "/nonexistent/reach.toml",
        "--",
        "true",
    ])
    .run();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("/nonexistent/reach.toml"),
        "{}",
        out.stderr
    );
    let inv = dir.path().join("reach.toml");
    std::fs::write(&inv, "[groups.web]\nhosts = [\"local\"]\n").unwrap();
    let inv = inv.display().to_string();
    let out = reach(&["exec", "@db", "--inventory", &inv, "--", "true"]).run();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("no group `db`") && out.stderr.contains("(it has: web)"),
        "{}",
        out.stderr
    );
    // A group of one still reports as a fan-out.
    let out = reach(&["exec", "@web", "--inventory", &inv, "--", "echo hi"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "local: hi\n");
    assert!(out.stderr.contains("1 targets in"), "{}", out.stderr);
    // A missing host file is named.
    let out = reach(&["exec", "-H", "/nonexistent/hosts", "--", "true"]).run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/nonexistent/hosts"), "{}", out.stderr);
    // A terminal cannot be shared.
    let out = reach(&["exec", "-t", "local", "docker://x", "--", "true"]).run();
    assert_eq!(out.code, 2, "a usage error");
    assert!(
        out.stderr.contains("-t needs one destination"),
        "{}",
        out.stderr
    );
    // Partial last lines get their own line, never glued to another target's.
    let out = reach(&[
        "exec",
        "local",
        "@web",
        "--inventory",
        &inv,
        "--",
        "printf 'a\\nb'",
    ])
    .run();
    assert_eq!(out.stdout_text(), "local: a\nlocal: b\n");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// On a terminal (made by `script`) the fan-out draws a bar with the counts by verdict; on a
/// pipe it draws nothing but the summary.
#[test]
fn the_bar_shows_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("reach.toml");
    std::fs::write(&inv, "[groups.here]\nhosts = [\"local\"]\n").unwrap();
    let line = format!(
        "REACH_NO_REUSE=1 {} exec @here --inventory {} -- 'sleep 0.3; echo hi'",
        env!("CARGO_BIN_EXE_reach"),
        inv.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("[##############################] 1/1 ok 1 failed 0 unreachable 0"),
        "no bar on a terminal: {shown:?}"
    );
    let piped = reach(&[
        "exec",
        "@here",
        "--inventory",
        &inv.display().to_string(),
        "--",
        "true",
    ])
    .run();
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(
        !piped.stderr.contains("/3 ok "),
        "a bar on a pipe: {}",
        piped.stderr
    );
}
