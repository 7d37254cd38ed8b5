//! A command run by the agent, as a [`Process`]: its streams, its end, signals to it or its
//! process group, terminal resizes, and a time limit that kills its whole group. Whatever
//! carries the agent (an engine exec, an SSH channel), a command behaves the same.

use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    BoxRead, BoxWrite, CommandLine, Error, ErrorKind, ExecSpec, ExitStatus, Process, PtySize,
    Result, Signal, StdinMode, Streams, Subject,
};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use reach_core::outcome::spawn_time_limit;

use crate::conn::{errno_kind, AgentConn, SpawnFailure};

/// Bytes buffered between a caller's stdin writes and the agent.
const PIPE: usize = 256 * 1024;
/// The largest stdin frame sent to the agent.
const STDIN_CHUNK: usize = 64 * 1024;

/// The argv a command line runs as.
pub fn argv(command: &CommandLine) -> Vec<String> {
    match command {
        CommandLine::Argv(argv) => argv.clone(),
        CommandLine::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        CommandLine::LoginShell => vec!["/bin/sh".into(), "-l".into()],
    }
}

/// A command started by the agent; `target` says where in messages ("in container `web`").
pub struct AgentProcess {
    agent: Arc<AgentConn>,
    id: u32,
    streams: Streams,
    exit: watch::Receiver<Option<Result<ExitStatus>>>,
    target: String,
    pty: bool,
}

impl std::fmt::Debug for AgentProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProcess")
            .field("target", &self.target)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AgentProcess {
    /// Starts `spec` through `agent`; `target` says where, in errors ("in container `web`",
    /// "on `host:22`").
    pub async fn start(agent: Arc<AgentConn>, spec: ExecSpec, target: &str) -> Result<Self> {
        let argv = argv(&spec.command);
        let pty = spec.pty.as_ref().map(|p| p.size);
        let piped = spec.stdin == StdinMode::Piped || pty.is_some();
        let mut env = spec.env.clone();
        if let Some(p) = &spec.pty {
            env.push(("TERM".to_owned(), p.term.clone()));
        }
        let program = argv.first().cloned().unwrap_or_default();
        let spawned = agent
            .spawn(&argv, &env, spec.cwd.as_deref(), piped, pty)
            .await?
            .map_err(|f| spawn_error(target, &program, spec.cwd.as_deref(), f))?;
        let id = spawned.id;
        let stdin = piped.then(|| stdin_writer(agent.clone(), id));
        if let Some(limit) = spec.timeout {
            let killer = agent.clone();
            spawn_time_limit(
                limit,
                spawned.slot.clone(),
                format!("the command {target}"),
                async move {
                    let _ = killer.signal(id, 9, true).await;
                },
            );
        }
        Ok(AgentProcess {
            agent,
            id,
            streams: Streams::new(
                stdin,
                Some(Box::pin(spawned.stdout)),
                pty.is_none().then(|| Box::pin(spawned.stderr) as BoxRead),
            ),
            exit: spawned.exit,
            target: target.to_owned(),
            pty: pty.is_some(),
        })
    }
}

/// `signal`'s number on Linux, as the agent takes it.
fn signal_number(signal: Signal) -> Result<u8> {
    signal
        .number()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{signal} has no number on Linux"),
            )
        })
}

/// The error for a command the agent could not start on `target`.
fn spawn_error(target: &str, argv0: &str, cwd: Option<&str>, failure: SpawnFailure) -> Error {
    let kind = errno_kind(failure.errno);
    if failure.what == 1 {
        let dir = cwd.unwrap_or("");
        let message = if failure.errno == 20 {
            format!("working directory `{dir}` {target} is not a directory")
        } else {
            format!("working directory `{dir}` {target}: {}", failure.message)
        };
        return Error::new(kind, message).with_subject(Subject::WorkingDirectory);
    }
    Error::new(
        kind,
        format!("cannot run `{argv0}` {target}: {}", failure.message),
    )
    .with_subject(Subject::Command)
}

/// A writer whose bytes become STDIN frames for the agent's command (or connection) `id`;
/// shutting it down or dropping it sends the end of input.
pub fn stdin_writer(agent: Arc<AgentConn>, id: u32) -> BoxWrite {
    let (tx, mut rx) = tokio::io::duplex(PIPE);
    let window = agent.stdin_window(id);
    tokio::spawn(async move {
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if agent.stdin(id, &window, &buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = agent.end_stdin(id).await;
    });
    Box::pin(tx)
}

/// The outcome published in `exit`, once there is one; a slot dropped without one is a
/// command torn down with its connection (`target`: "in container `web`").
pub async fn wait_slot(
    exit: &watch::Receiver<Option<Result<ExitStatus>>>,
    target: &str,
) -> Result<ExitStatus> {
    let mut exit = exit.clone();
    let outcome = match exit.wait_for(Option::is_some).await {
        Ok(done) => done.clone(),
        Err(_) => None,
    };
    outcome.unwrap_or_else(|| {
        Err(Error::new(
            ErrorKind::SessionDropped,
            format!("the command {target} was torn down"),
        ))
    })
}

#[async_trait]
impl Process for AgentProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        wait_slot(&self.exit, &self.target).await
    }

    /// To the command's whole process group, as the local backend signals: what the command
    /// started gets it too.
    async fn signal(&self, signal: Signal) -> Result<()> {
        self.agent
            .signal(self.id, signal_number(signal)?, true)
            .await
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.pty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cannot resize: the process has no terminal (start it with a PTY)",
            ));
        }
        self.agent.resize(self.id, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_run_under_bin_sh() {
        assert_eq!(
            argv(&CommandLine::Shell("echo hi".into())),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(argv(&CommandLine::Argv(vec!["ls".into()])), ["ls"]);
    }
}
