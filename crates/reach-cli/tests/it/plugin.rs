//! `reach plugin list` and `reach plugin pin`, with adapters that are real executables on a
//! PATH of their own and a configuration directory of their own.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::{reach, Outcome};

const GOOD: &str = r#"{"protocol":[1],"name":"demo","version":"0.3","features":{"exec":true,"pty":false,"read":true}}"#;

/// A scratch user: a config directory, a bin directory on PATH, and a working directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let scratch = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        for sub in ["config", "bin", "work"] {
            std::fs::create_dir(scratch.path(sub)).unwrap();
        }
        scratch
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An adapter in `bin/` that prints `answer` for --capabilities (and leaves a mark in
    /// `ran-<name>` whenever it runs).
    fn adapter(&self, name: &str, answer: &str) -> PathBuf {
        let path = self.path("bin").join(name);
        let mark = self.path(&format!("ran-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ntouch '{}'\n[ \"$1\" = --capabilities ] || exit 2\ncat <<'EOF'\n{answer}\nEOF\n",
                mark.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn ran(&self, name: &str) -> bool {
        self.path(&format!("ran-{name}")).exists()
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let path = format!("{}:/usr/bin:/bin", self.path("bin").display());
        reach(args)
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("PATH", path)
            .current_dir(self.path("work"))
            .run()
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.path("config/reach/reach.toml")).unwrap_or_default()
    }
}

fn entry<'a>(out: &'a serde_json::Value, scheme: &str) -> &'a serde_json::Value {
    out["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["scheme"] == scheme)
        .unwrap_or_else(|| panic!("no {scheme} in {out}"))
}

#[test]
fn an_unpinned_adapter_is_listed_but_not_run_until_pinned_or_allowed() {
    let s = Scratch::new();
    s.adapter("reach-backend-demo", GOOD);
    let out = s.run(&["plugin", "list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let demo = entry(&out.json(), "demo").clone();
    assert_eq!(demo["sha256"], "unpinned");
    assert_eq!(demo["source"], "PATH");
    assert_eq!(demo["error"]["kind"], "permission_denied", "{demo}");
    assert!(!s.ran("reach-backend-demo"), "an unpinned adapter was run");

    // Allowed for this call: run, and its answer shown.
    let out = s.run(&["plugin", "list", "--json", "--allow-unpinned-plugin"]);
    let demo = entry(&out.json(), "demo").clone();
    assert_eq!(demo["adapter"]["name"], "demo", "{demo}");
    assert!(s.ran("reach-backend-demo"));
}

#[test]
fn pinning_records_the_digest_and_a_changed_adapter_is_refused() {
    let s = Scratch::new();
    let path = s.adapter("reach-backend-demo", GOOD);
    std::fs::create_dir_all(s.path("config/reach")).unwrap();
    std::fs::write(
        s.path("config/reach/reach.toml"),
        "# my settings\n[groups.web]\nhosts = [\"local\"]\n",
    )
    .unwrap();
    let out = s.run(&["plugin", "pin", "demo"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let digest = {
        use sha2::Digest;
        let bytes = std::fs::read(&path).unwrap();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let config = s.config();
    assert!(config.starts_with("# my settings\n"), "{config}");
    assert!(config.contains("[groups.web]"), "{config}");
    assert!(
        config.contains(&format!("sha256 = \"{digest}\"")),
        "{config}"
    );
    assert!(
        config.contains(&format!("path = \"{}\"", path.display())),
        "{config}"
    );

    let out = s.run(&["plugin", "list", "--json"]);
    let demo = entry(&out.json(), "demo").clone();
    assert_eq!(demo["sha256"], digest.as_str());
    assert_eq!(demo["adapter"]["version"], "0.3", "{demo}");
    assert_eq!(demo["adapter"]["features"]["exec"], true);

    // The adapter changes: refused, naming both digests, and not run.
    s.adapter("reach-backend-demo", &GOOD.replace("0.3", "0.4"));
    std::fs::remove_file(s.path("ran-reach-backend-demo")).unwrap();
    let out = s.run(&["plugin", "list", "--json"]);
    let demo = entry(&out.json(), "demo").clone();
    assert_eq!(demo["error"]["kind"], "permission_denied", "{demo}");
    let message = demo["error"]["message"].as_str().unwrap();
    assert!(message.contains(&digest), "{message}");
    assert!(!s.ran("reach-backend-demo"), "a changed adapter was run");
}

#[test]
fn a_reach_toml_in_the_working_directory_names_no_adapter() {
    let s = Scratch::new();
    let evil = s.adapter("evil", GOOD);
    std::fs::write(
        s.path("work/reach.toml"),
        format!(
            "[plugins]\nallow_unpinned = true\n[plugins.demo]\npath = \"{}\"\n",
            evil.display()
        ),
    )
    .unwrap();
    let out = s.run(&["plugin", "list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["plugins"],
        serde_json::json!([]),
        "{}",
        out.stdout_text()
    );
    assert!(!s.ran("evil"));
    let out = s.run(&["plugin", "pin", "demo"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("reach-backend-demo"), "{}", out.stderr);
    assert!(
        out.stderr.contains("reach plugin pin demo"),
        "{}",
        out.stderr
    );
}

fn answer_error(s: &Scratch, name: &str, extra: &[&str]) -> serde_json::Value {
    // Every adapter is asked on each call; the silent one must not hold each up long.
    let mut args = vec![
        "plugin",
        "list",
        "--json",
        "--allow-unpinned-plugin",
        "--connect-timeout",
        "1s",
    ];
    args.extend(extra);
    let out = s.run(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    entry(&out.json(), name)["error"].clone()
}

#[test]
fn a_wrong_version_garbage_and_silence_are_errors_that_name_the_adapter() {
    let s = Scratch::new();
    s.adapter(
        "reach-backend-future",
        r#"{"protocol":[2],"name":"future","version":"2.0"}"#,
    );
    s.adapter("reach-backend-noise", "hello there\nnot json");
    let silent = s.path("bin").join("reach-backend-silent");
    std::fs::write(&silent, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).unwrap();

    let err = answer_error(&s, "future", &[]);
    assert_eq!(err["kind"], "unsupported", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("[2]") && message.contains("speaks 1"),
        "{message}"
    );

    let err = answer_error(&s, "noise", &[]);
    assert_eq!(err["kind"], "protocol", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("reach-backend-noise") && message.contains("`hello there`"),
        "{message}"
    );

    let started = std::time::Instant::now();
    let err = answer_error(&s, "silent", &[]);
    assert_eq!(err["kind"], "timeout", "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// The reference adapter, pinned with `reach plugin pin`, is a target like any other: a
/// command's output and exit code, fan-out beside `local`, a verified copy both ways, and a
/// dead adapter reported as a lost connection (exit 255), never as the command's exit.
#[test]
fn the_reference_adapter_serves_exec_fan_out_and_cp() {
    let s = Scratch::new();
    let adapter = s.path("bin").join("reach-backend-demo");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/plugins/reach-backend-demo"),
        &adapter,
    )
    .unwrap();
    let work = s.path("work");
    std::fs::create_dir_all(s.path("config/reach")).unwrap();
    std::fs::write(
        s.path("config/reach/reach.toml"),
        format!(
            "[plugins.demo]\nargs = [\"--root\", \"{}\"]\n",
            work.display()
        ),
    )
    .unwrap();
    // Not pinned yet: refused, with the way to pin.
    let out = s.run(&["exec", "demo://box", "--", "true"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("reach plugin pin demo"),
        "{}",
        out.stderr
    );
    let out = s.run(&["plugin", "pin", "demo"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        s.config().contains("--root"),
        "the pin kept the args: {}",
        s.config()
    );

    let out = s.run(&[
        "exec",
        "demo://box",
        "--",
        "sh",
        "-c",
        "pwd; echo err >&2; exit 7",
    ]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.stdout_text(), format!("{}\n", work.display()));
    assert_eq!(out.stderr, "err\n");

    let out = s.run(&["exec", "demo://box", "local", "--", "echo", "both"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout_text();
    assert!(text.contains("demo://box: both"), "{text}");
    assert!(
        text.contains("local") && text.matches("both").count() == 2,
        "{text}"
    );

    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.path("up.bin"), &data).unwrap();
    let remote = format!("demo://box:{}/landed.bin", work.display());
    let out = s.run(&["cp", s.path("up.bin").to_str().unwrap(), &remote]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(work.join("landed.bin")).unwrap(), data);
    let back = s.path("back.bin");
    let out = s.run(&["cp", &remote, back.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // The adapter is the command's parent: killing it loses the session.
    let out = s.run(&[
        "exec",
        "demo://box",
        "--",
        "sh",
        "-c",
        "kill -KILL $PPID; sleep 3",
    ]);
    assert_eq!(out.code, 255, "{}", out.stderr);
    assert!(out.stderr.contains("reach-backend-demo"), "{}", out.stderr);
}
