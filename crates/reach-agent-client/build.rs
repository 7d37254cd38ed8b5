//! Builds the `reach-agent` executable into a static file that this crate embeds, for every
//! backend that runs the agent. The `reach-agent` crate says where it is
//! (`DEP_REACH_AGENT_SRC`); a cargo of its own builds it there with the `agent` profile
//! (`panic=abort`, stripped), for the target, with `crt-static`, into a target directory
//! under `OUT_DIR` — a normal dependency can be none of these. It runs offline and `--locked`:
//! the outer build has already fetched everything the workspace's lock file names. A target
//! the agent cannot be built for gets an empty file, and backends then do without.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var_os("DEP_REACH_AGENT_SRC").unwrap_or_default());
    println!("cargo::rerun-if-changed={}", src.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let out = out_dir.join("reach-agent");
    let target = std::env::var("TARGET").unwrap_or_default();
    let built = target.contains("-linux-") && build(&src, &out_dir, &out, &target);
    if !built {
        println!("cargo::warning=reach-agent was not built for `{target}`: backends will run commands without it (slower; no signals)");
        if let Err(e) = std::fs::write(&out, b"") {
            println!("cargo::warning=cannot write {}: {e}", out.display());
        }
    }
}

fn build(src: &Path, out_dir: &Path, out: &Path, target: &str) -> bool {
    // src/ of crates/reach-agent, in the workspace.
    let Some(crate_dir) = src.parent() else {
        return false;
    };
    let manifest = crate_dir.join("Cargo.toml");
    // What else decides the agent's bytes: its dependencies (its manifest, the lock file)
    // and the `agent` profile (the workspace's manifest).
    println!("cargo::rerun-if-changed={}", manifest.display());
    if let Some(root) = crate_dir.parent().and_then(Path::parent) {
        for file in ["Cargo.toml", "Cargo.lock"] {
            println!("cargo::rerun-if-changed={}", root.join(file).display());
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("agent-build");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--offline",
            "--profile",
            "agent",
        ])
        .args(["--bin", "reach-agent", "--target", target])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Only the target's artifacts get these flags (with --target, build scripts do not).
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    if !status.is_ok_and(|s| s.success()) {
        return false;
    }
    let built = target_dir.join(target).join("agent").join("reach-agent");
    std::fs::copy(&built, out).is_ok()
}
