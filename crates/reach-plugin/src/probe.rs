//! `reach-backend-x --capabilities`: what an adapter says it is and can do, asked before it
//! serves anything. One JSON object on stdout; its `protocol` list must hold the version this
//! reach speaks.

use std::process::Stdio;
use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};
use serde::Deserialize;

use crate::resolve::Adapter;
use crate::verified::VerifiedProgram;

/// The protocol version this reach speaks (docs/PLUGINS.md).
pub const PROTOCOL: u32 = 1;

/// The most of a `--capabilities` answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What an adapter says about itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AdapterInfo {
    /// The protocol versions it speaks.
    pub protocol: Vec<u32>,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it can do (`exec`, `pty`, `signals`, `stdin`, `tcp`, file operations, hashing):
    /// each present and `true` when it can.
    #[serde(default)]
    pub features: serde_json::Map<String, serde_json::Value>,
    /// Its limits (`max_sessions`, ...).
    #[serde(default)]
    pub limits: serde_json::Map<String, serde_json::Value>,
}

impl AdapterInfo {
    /// The features it claims, by name.
    pub fn feature_names(&self) -> Vec<&str> {
        self.features
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Runs the verified `program` (as `adapter` configures it) with `--capabilities`, within
/// `timeout`, and checks what it says.
pub async fn probe(
    adapter: &Adapter,
    program: &VerifiedProgram,
    timeout: Duration,
) -> Result<AdapterInfo> {
    let shown = program.path().display().to_string();
    let mut command = program.command()?;
    command
        .args(&adapter.args)
        .arg("--capabilities")
        .envs(&adapter.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| Error::io(format!("start adapter `{shown}`"), e))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| Error::io(format!("run adapter `{shown}`"), e))?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "adapter `{shown}` did not answer --capabilities within {timeout:?} (raise \
                     --connect-timeout if it is slow to start)"
                ),
            ))
        }
    };
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "adapter `{shown}` --capabilities failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    parse(&shown, &out.stdout)
}

/// Checks an answer to `--capabilities`.
pub fn parse(adapter: &str, stdout: &[u8]) -> Result<AdapterInfo> {
    let garbage = |why: String| {
        Error::new(
            ErrorKind::Protocol,
            format!("adapter `{adapter}` answered --capabilities with {why}"),
        )
    };
    if stdout.len() > MAX_ANSWER {
        return Err(garbage(format!(
            "{} bytes (at most {MAX_ANSWER})",
            stdout.len()
        )));
    }
    let text = String::from_utf8_lossy(stdout);
    let first = text.lines().next().unwrap_or("").trim();
    let info: AdapterInfo = serde_json::from_str(text.trim()).map_err(|e| {
        let shown: String = first.chars().take(120).collect();
        garbage(format!(
            "something that is not its JSON object ({e}): `{shown}`"
        ))
    })?;
    if !info.protocol.contains(&PROTOCOL) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "adapter `{adapter}` ({} {}) speaks protocol version(s) {:?}; this reach speaks \
                 {PROTOCOL}: upgrade the one that is behind",
                info.name, info.version, info.protocol
            ),
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_are_checked() {
        let ok = br#"{"protocol":[1],"name":"demo","version":"0.1","features":{"exec":true,"pty":false}}"#;
        let info = parse("demo", ok).unwrap();
        assert_eq!(info.feature_names(), vec!["exec"]);
        let err = parse("demo", br#"{"protocol":[2,3],"name":"demo","version":"9"}"#).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Unsupported));
        assert!(err.message().contains("[2, 3]") && err.message().contains("speaks 1"));
        let err = parse("demo", b"hello\n{").unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Protocol));
        assert!(err.message().contains("`hello`"), "{err}");
    }
}
