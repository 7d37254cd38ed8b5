//! Compiles `agent/main.rs` (std only) into a static executable that the crate embeds and
//! copies into containers. A target the agent cannot be built for gets an empty file, and the
//! backend then runs every command through the engine alone.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=agent/main.rs");
    println!("cargo:rerun-if-changed=agent/protocol.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("reach-agent");
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = target.contains("-linux-")
        && Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "--crate-name",
                "reach_agent",
                "--target",
            ])
            .arg(&target)
            .args([
                "-C",
                "opt-level=2",
                "-C",
                "panic=abort",
                "-C",
                "strip=symbols",
                "-C",
                "codegen-units=1",
                "-C",
                "target-feature=+crt-static",
                "agent/main.rs",
                "-o",
            ])
            .arg(&out)
            .status()
            .is_ok_and(|status| status.success());
    if !built {
        println!("cargo:warning=reach-agent was not built for `{target}`: commands in containers will go through the Docker engine alone (slower; no signals)");
        if let Err(e) = std::fs::write(&out, b"") {
            println!("cargo:warning=cannot write {}: {e}", out.display());
        }
    }
}
