//! Compiles the `reach-agent` executable (std only) into a static file that this crate
//! embeds, for every backend that runs the agent. Its sources come from the `reach-agent`
//! crate (`DEP_REACH_AGENT_SRC`); `rustc` is called directly because the executable must be
//! static and built for the target with `panic=abort`, which a normal dependency is not. A
//! target the agent cannot be built for gets an empty file, and backends then do without.

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

/// The library (the protocol) as an rlib, then the executable against it.
fn build(src: &Path, out_dir: &Path, out: &Path, target: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let common = [
        "--edition",
        "2021",
        "-C",
        "opt-level=2",
        "-C",
        "panic=abort",
        "-C",
        "codegen-units=1",
        "-C",
        "target-feature=+crt-static",
        "--target",
        target,
    ];
    let rlib = out_dir.join("libreach_agent.rlib");
    let lib = Command::new(&rustc)
        .args(common)
        .args(["--crate-type", "rlib", "--crate-name", "reach_agent"])
        .arg(src.join("lib.rs"))
        .arg("-o")
        .arg(&rlib)
        .status()
        .is_ok_and(|status| status.success());
    lib && Command::new(&rustc)
        .args(common)
        .args(["--crate-type", "bin", "--crate-name", "reach_agent_bin"])
        .args(["-C", "strip=symbols"])
        .arg("--extern")
        .arg(format!("reach_agent={}", rlib.display()))
        .arg(src.join("main.rs"))
        .arg("-o")
        .arg(out)
        .status()
        .is_ok_and(|status| status.success())
}
