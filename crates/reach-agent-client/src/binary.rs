//! The agent executable this crate embeds, and where it is put on a target.

/// The static `reach-agent` executable, built by this crate's build step for the target this
/// crate is compiled for (empty when it could not be built: backends then do without).
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reach-agent"));

/// Where the agent lives on a target: a name that changes with its contents, so a target
/// that holds an older agent gets the new one beside it.
pub fn install_path() -> String {
    // FNV-1a: a fingerprint, not a security check.
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in AGENT {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("/.reach/agent-{hash:016x}")
    })
    .clone()
}

/// Whether an agent was built, and for a target of this architecture (as Go names them:
/// `amd64`, `arm64`).
pub fn runs_on(arch: &str) -> bool {
    let ours = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    !AGENT.is_empty() && std::env::consts::OS == "linux" && arch == ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_path_names_the_agent_by_its_contents() {
        assert!(install_path().starts_with("/.reach/agent-"));
        assert_eq!(install_path(), install_path());
        assert!(!AGENT.is_empty(), "build.rs did not build the agent");
        // A static executable: no interpreter to find in an image without libc.
        assert_eq!(&AGENT[..4], b"\x7fELF");
        assert!(runs_on(match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }));
        assert!(!runs_on("s390x-not-this-one"));
    }
}
