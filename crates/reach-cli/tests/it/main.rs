//! End-to-end tests of the `reach` binary, run as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connections;
mod cp;
mod docker;
mod exec;
mod fanout;
mod files;
mod forward;
mod install;
mod plugin;
mod proot;
mod pull;
mod rootfs;
mod serve;
mod ssh;

use std::io::Write;
use std::process::{Command, Stdio};

/// What a run of `reach` left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout_text()))
    }
}

/// A `reach` invocation under construction.
#[derive(Debug)]
pub struct Reach {
    command: Command,
    stdin: Vec<u8>,
}

/// `reach ARGS...`, connecting directly: only the connection daemon's own tests
/// (`connections.rs`) go through the daemon, each with a runtime directory of its own.
pub fn reach(args: &[&str]) -> Reach {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reach"));
    command.args(args).env("REACH_NO_REUSE", "1");
    Reach {
        command,
        stdin: Vec::new(),
    }
}

impl Reach {
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = data.into();
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    pub fn run(mut self) -> Outcome {
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reach");
        let mut stdin = child.stdin.take().unwrap();
        let data = std::mem::take(&mut self.stdin);
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
