//! A command on an SSH channel: a task drains the channel into stdout/stderr pipes and
//! publishes the exit status only after every byte before it is in those pipes.

use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    shell_quote, BoxRead, BoxWrite, CommandLine, Error, ErrorKind, ExecSpec, ExitStatus, Process,
    PtySize, Result, Signal, StdinMode, Streams,
};
use russh::client::Msg;
use russh::{ChannelMsg, ChannelWriteHalf, Sig};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Bytes buffered per stream between the channel and the reader.
const PIPE: usize = 256 * 1024;

/// A command running over SSH.
pub struct SshProcess {
    writer: Arc<ChannelWriteHalf<Msg>>,
    result: watch::Receiver<Option<Result<ExitStatus>>>,
    streams: Streams,
    pty: bool,
    addr: String,
}

impl std::fmt::Debug for SshProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshProcess")
            .field("addr", &self.addr)
            .field("pty", &self.pty)
            .finish_non_exhaustive()
    }
}

/// The remote command line: environment and working directory are set by the shell, which
/// works whatever the server's `AcceptEnv` says.
fn remote_line(spec: &ExecSpec) -> Option<String> {
    let command = spec.command.to_shell_line()?;
    let mut line = String::new();
    if let Some(dir) = &spec.cwd {
        line.push_str(&format!("cd {} || exit 1; ", shell_quote(dir)));
    }
    for (key, value) in &spec.env {
        line.push_str(&format!("export {key}={}; ", shell_quote(value)));
    }
    if matches!(spec.command, CommandLine::Argv(_)) {
        line.push_str("exec ");
    }
    line.push_str(&command);
    Some(line)
}

fn to_sig(signal: &Signal) -> Sig {
    match signal.name() {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

fn from_sig(sig: &Sig) -> Signal {
    Signal::from_name(match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name,
    })
}

impl SshProcess {
    pub(crate) async fn start(
        handle: &russh::client::Handle<crate::HostKeyCheck>,
        spec: ExecSpec,
        addr: String,
    ) -> Result<SshProcess> {
        let dropped = |what: &str, e: russh::Error| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("{what} on `{addr}` failed: {e}"),
            )
        };
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| dropped("opening a session", e))?;
        if let Some(pty) = &spec.pty {
            channel
                .request_pty(
                    false,
                    &pty.term,
                    u32::from(pty.size.cols),
                    u32::from(pty.size.rows),
                    0,
                    0,
                    &[],
                )
                .await
                .map_err(|e| dropped("requesting a terminal", e))?;
        }
        match remote_line(&spec) {
            Some(line) => channel.exec(true, line).await,
            None => {
                for (key, value) in &spec.env {
                    let _ = channel.set_env(false, key.clone(), value.clone()).await;
                }
                channel.request_shell(true).await
            }
        }
        .map_err(|e| dropped("starting the command", e))?;
        let (mut reader, writer) = channel.split();
        let writer = Arc::new(writer);
        let (mut out_tx, out_rx) = tokio::io::duplex(PIPE);
        let (mut err_tx, err_rx) = tokio::io::duplex(PIPE);
        let (result_tx, result_rx) = watch::channel(None);
        let pump_addr = addr.clone();
        tokio::spawn(async move {
            let mut status = None;
            while let Some(msg) = reader.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let _ = out_tx.write_all(&data).await;
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        let _ = err_tx.write_all(&data).await;
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(ExitStatus::Code(exit_status as i32));
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        ..
                    } => {
                        status = Some(ExitStatus::Signal {
                            signal: from_sig(&signal_name),
                            core_dumped,
                        });
                    }
                    ChannelMsg::Failure => {
                        status = None;
                        break;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = out_tx.shutdown().await;
            let _ = err_tx.shutdown().await;
            let result = status.ok_or_else(|| {
                Error::new(
                    ErrorKind::SessionDropped,
                    format!(
                        "the session on `{pump_addr}` ended without an exit status (the \
                         connection was lost or the server refused the command)"
                    ),
                )
            });
            let _ = result_tx.send(Some(result));
        });
        let stdin: Option<BoxWrite> = match spec.stdin {
            StdinMode::Piped => {
                let (tx, rx) = tokio::io::duplex(PIPE);
                let feeder = writer.clone();
                tokio::spawn(async move {
                    if feeder.data(rx).await.is_ok() {
                        let _ = feeder.eof().await;
                    }
                });
                Some(Box::pin(tx))
            }
            StdinMode::Null => {
                writer
                    .eof()
                    .await
                    .map_err(|e| dropped("closing stdin", e))?;
                None
            }
        };
        let pty = spec.pty.is_some();
        Ok(SshProcess {
            writer,
            result: result_rx,
            streams: Streams::new(
                stdin,
                Some(Box::pin(out_rx)),
                (!pty).then(|| Box::pin(err_rx) as BoxRead),
            ),
            pty,
            addr,
        })
    }
}

#[async_trait]
impl Process for SshProcess {
    fn take_stdin(&self) -> Option<BoxWrite> {
        self.streams.take_stdin()
    }

    fn take_stdout(&self) -> Option<BoxRead> {
        self.streams.take_stdout()
    }

    fn take_stderr(&self) -> Option<BoxRead> {
        self.streams.take_stderr()
    }

    async fn wait(&self) -> Result<ExitStatus> {
        let mut result = self.result.clone();
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::SessionDropped,
                format!("the session on `{}` was torn down", self.addr),
            ))
        })
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        self.writer.signal(to_sig(&signal)).await.map_err(|e| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("sending {signal} on `{}` failed: {e}", self.addr),
            )
        })
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.pty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cannot resize: the process has no terminal (start it with a PTY)",
            ));
        }
        self.writer
            .window_change(u32::from(size.cols), u32::from(size.rows), 0, 0)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::SessionDropped,
                    format!("resizing the terminal on `{}` failed: {e}", self.addr),
                )
            })
    }
}

impl Drop for SshProcess {
    fn drop(&mut self) {
        let writer = self.writer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = writer.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_lines_quote_env_and_cwd() {
        let spec = ExecSpec::argv(["printf", "%s", "a b"])
            .cwd("/tmp/x y")
            .env("K", "it's");
        assert_eq!(
            remote_line(&spec).as_deref(),
            Some(r"cd '/tmp/x y' || exit 1; export K='it'\''s'; exec printf %s 'a b'")
        );
        assert_eq!(remote_line(&ExecSpec::login_shell()), None);
    }
}
