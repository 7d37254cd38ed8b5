//! A command run by an adapter: `exec`, then its streams, signals, resizes and exit.

use std::sync::Arc;

use async_trait::async_trait;
use reach_core::outcome::spawn_time_limit;
use reach_core::{
    BoxRead, CommandLine, Error, ErrorKind, ExecSpec, ExitStatus, Process, PtySize, Result, Signal,
    StdinMode, Streams,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::input;
use crate::pipe::StreamReader;
use crate::session::Session;
use crate::wire::Stream;

/// A running command.
#[derive(Debug)]
pub(crate) struct PluginProcess {
    session: Arc<Session>,
    id: u64,
    streams: Streams,
    exit: watch::Receiver<Option<Result<ExitStatus>>>,
    pty: bool,
}

/// The `exec` request for `spec`.
fn request(spec: &ExecSpec) -> Value {
    let mut fields = json!({
        "env": spec.env,
        "stdin": matches!(spec.stdin, StdinMode::Piped),
    });
    match &spec.command {
        CommandLine::Argv(argv) => fields["argv"] = json!(argv),
        CommandLine::Shell(line) => fields["shell"] = json!(line),
        CommandLine::LoginShell => fields["login_shell"] = json!(true),
    }
    if let Some(cwd) = &spec.cwd {
        fields["cwd"] = json!(cwd);
    }
    if let Some(pty) = &spec.pty {
        fields["pty"] = json!({"term": pty.term, "rows": pty.size.rows, "cols": pty.size.cols});
    }
    fields
}

impl PluginProcess {
    /// Starts `spec` through `session`.
    pub(crate) async fn start(session: Arc<Session>, spec: ExecSpec) -> Result<PluginProcess> {
        let (id, _started, pipes) = session.open("exec", request(&spec)).await?;
        let stdin = matches!(spec.stdin, StdinMode::Piped)
            .then(|| input::stdin(session.clone(), id, pipes.credit.clone()));
        let stdout = StreamReader::new(pipes.stdout, session.clone(), id, Stream::Stdout);
        let stderr = spec.pty.is_none().then(|| {
            Box::pin(StreamReader::new(
                pipes.stderr,
                session.clone(),
                id,
                Stream::Stderr,
            )) as BoxRead
        });
        if let Some(limit) = spec.timeout {
            let killer = session.clone();
            spawn_time_limit(
                limit,
                pipes.slot.clone(),
                format!("the command run by {}", session.name()),
                async move {
                    killer.notify("signal", json!({"proc": id, "signal": "KILL"}));
                },
            );
        }
        Ok(PluginProcess {
            session,
            id,
            streams: Streams::new(stdin, Some(Box::pin(stdout)), stderr),
            exit: pipes.exit,
            pty: spec.pty.is_some(),
        })
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        // Not waited for: its whole process group goes.
        if self.exit.borrow().is_none() {
            self.session
                .notify("signal", json!({"proc": self.id, "signal": "KILL"}));
        }
    }
}

#[async_trait]
impl Process for PluginProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        let mut exit = self.exit.clone();
        let outcome = match exit.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::SessionDropped,
                format!("the session with {} ended", self.session.name()),
            ))
        })
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        self.session
            .request(
                "signal",
                json!({"proc": self.id, "signal": signal.name()}),
                None,
            )
            .await
            .map(drop)
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.pty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "resize needs a command started with a terminal (a PTY)",
            ));
        }
        self.session
            .request(
                "resize",
                json!({"proc": self.id, "rows": size.rows, "cols": size.cols}),
                None,
            )
            .await
            .map(drop)
    }
}
