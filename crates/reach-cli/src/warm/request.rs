//! The requests a client sends the daemon.

use std::time::Duration;

use reach::{CommandLine, ExecSpec, StdinMode};
use serde::{Deserialize, Serialize};

use super::ConnWire;

/// A request to the daemon.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a command on a warm connection (made first if needed).
    Exec(Box<ExecRequest>),
    /// Describe the daemon and its connections.
    List,
    /// Close the connections to these destinations (every one when empty).
    Close {
        /// Destinations, in their canonical form.
        destinations: Vec<String>,
    },
    /// Close everything and exit.
    Stop,
}

/// What to run, where, and how to connect.
#[derive(Serialize, Deserialize)]
pub struct ExecRequest {
    /// Which connection serves this: a hash of the destination and every setting.
    pub key: String,
    /// The destination, canonical.
    pub destination: String,
    /// How to connect.
    pub conn: ConnWire,
    /// The command.
    pub command: CommandWire,
    /// Variables added to the environment.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: Option<String>,
    /// The command's time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether stdin frames follow.
    pub stdin: bool,
}

/// [`CommandLine`] on the wire.
#[derive(Serialize, Deserialize)]
pub enum CommandWire {
    /// A program and its arguments.
    Argv(Vec<String>),
    /// A shell command line.
    Shell(String),
    /// The login shell.
    LoginShell,
}

impl ExecRequest {
    /// The request for running `spec` on `destination` with `conn`.
    pub fn new(destination: String, conn: ConnWire, spec: &ExecSpec) -> ExecRequest {
        ExecRequest {
            key: conn.key(&destination),
            destination,
            conn,
            command: match &spec.command {
                CommandLine::Argv(argv) => CommandWire::Argv(argv.clone()),
                CommandLine::Shell(line) => CommandWire::Shell(line.clone()),
                _ => CommandWire::LoginShell,
            },
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            timeout_ms: spec
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            stdin: spec.stdin == StdinMode::Piped,
        }
    }

    /// The spec to run.
    pub fn spec(&self) -> ExecSpec {
        let mut spec = ExecSpec::new(match &self.command {
            CommandWire::Argv(argv) => CommandLine::Argv(argv.clone()),
            CommandWire::Shell(line) => CommandLine::Shell(line.clone()),
            CommandWire::LoginShell => CommandLine::LoginShell,
        });
        spec.env = self.env.clone();
        spec.cwd = self.cwd.clone();
        spec.timeout = self.timeout_ms.map(Duration::from_millis);
        if self.stdin {
            spec.stdin = StdinMode::Piped;
        }
        spec
    }
}
