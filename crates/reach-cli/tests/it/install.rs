//! What installing reach gives a user: shell completions that load, manual pages, and a
//! Debian package that installs and runs.

use std::path::Path;
use std::process::Command;

use crate::reach;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn bash_completions_load_and_complete_subcommands_and_flags() {
    let out = reach(&["completions", "bash"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("reach.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Loaded into a real bash: `complete -p` shows the registration, and the completion
    // function offers `cp` for `reach c` and `--recursive` for `reach cp --rec`.
    let probe = format!(
        "source '{}'\ncomplete -p reach\n\
         COMP_WORDS=(reach c); COMP_CWORD=1; _reach reach c reach; echo \"words: ${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(reach cp --rec); COMP_CWORD=2; _reach reach --rec cp; echo \"flags: ${{COMPREPLY[*]}}\"\n",
        script.display()
    );
    let run = Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    let said = text(&run.stdout);
    assert!(run.status.success(), "{said}{}", text(&run.stderr));
    assert!(said.contains("-F _reach reach\n"), "{said}");
    let words = said.lines().find(|l| l.starts_with("words:")).unwrap();
    for word in ["cp", "cat", "chmod", "connections", "completions"] {
        assert!(
            words.split_whitespace().any(|w| w == word),
            "{word}: {said}"
        );
    }
    assert!(!words.contains("exec"), "{said}");
    let flags = said.lines().find(|l| l.starts_with("flags:")).unwrap();
    assert!(flags.contains("--recursive"), "{said}");
}

#[test]
fn zsh_and_fish_completions_and_a_bad_shell_name() {
    let zsh = reach(&["completions", "zsh"]).run();
    assert_eq!(zsh.code, 0);
    assert!(zsh.stdout_text().starts_with("#compdef reach"));
    let fish = reach(&["completions", "fish"]).run();
    assert_eq!(fish.code, 0);
    assert!(fish.stdout_text().contains("complete -c reach"));
    let bad = reach(&["completions", "tcsh"]).run();
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("bash"), "{}", bad.stderr);
}

#[test]
fn manual_pages_name_every_subcommand() {
    let page = reach(&["manpage"]).run();
    assert_eq!(page.code, 0, "{}", page.stderr);
    let roff = page.stdout_text();
    assert!(roff.contains(".TH reach 1"), "{roff}");
    for sub in ["exec", "cp", "serve", "forward", "completions"] {
        assert!(roff.contains(&format!("reach\\-{sub}(1)")), "{sub}: {roff}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let out = reach(&["manpage", "--out-dir", out_dir.to_str().unwrap()]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cp = std::fs::read_to_string(out_dir.join("reach-cp.1")).unwrap();
    assert!(cp.contains(".TH reach-cp 1"), "{cp}");
    assert!(cp.contains("reach\\-part"), "{cp}");
}

/// `scripts/package` (cargo deb), then a real `dpkg --install` into a scratch root, then the
/// installed binary run from there.
#[test]
fn the_debian_package_installs_into_a_root_and_runs() {
    let have_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_deb {
        reach_test::skip(
            "the_debian_package_installs_into_a_root_and_runs",
            "cargo-deb is not installed (scripts/test installs it)",
        );
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new(workspace.join("scripts/package"))
        .args(["--profile", "dev"])
        .current_dir(&workspace)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    let deb = text(&built.stdout).trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");

    let root = tempfile::tempdir().unwrap();
    let admin = root.path().join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    // The scratch root has no libc6 package of its own: the host's libraries serve.
    let install = Command::new("dpkg")
        .arg(format!("--root={}", root.path().display()))
        .args([
            "--force-depends",
            "--force-not-root",
            "--force-script-chrootless",
            "--install",
            &deb,
        ])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}{}",
        text(&install.stdout),
        text(&install.stderr)
    );
    let listed = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${Package} ${Version} ${Status}", "reach"])
        .output()
        .unwrap();
    assert_eq!(
        text(&listed.stdout),
        format!("reach {}-1 install ok installed", env!("CARGO_PKG_VERSION"))
    );
    let installed = root.path().join("usr/bin/reach");
    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert_eq!(
        text(&version.stdout).trim(),
        format!("reach {}", env!("CARGO_PKG_VERSION"))
    );
    let exec = Command::new(&installed)
        .args(["exec", "local", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(0), "{}", text(&exec.stderr));
    let exec = Command::new(&installed)
        .args(["exec", "local", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(7));
    for file in [
        "usr/share/bash-completion/completions/reach",
        "usr/share/zsh/vendor-completions/_reach",
        "usr/share/fish/vendor_completions.d/reach.fish",
        "usr/share/man/man1/reach.1.gz",
        "usr/share/man/man1/reach-cp.1.gz",
    ] {
        assert!(root.path().join(file).is_file(), "{file} is not installed");
    }
}
