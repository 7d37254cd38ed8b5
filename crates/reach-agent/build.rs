//! Tells the crates that embed the agent where its sources are (`DEP_REACH_AGENT_SRC`), so
//! that one build step, in `reach-agent-client`, compiles them into a static executable.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo::metadata=src={dir}/src");
    println!("cargo::rerun-if-changed=build.rs");
}
