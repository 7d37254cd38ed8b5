//! A command on an SSH channel: a task drains the channel into stdout/stderr pipes and
//! publishes the exit status only after every byte before it is in those pipes.

use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    shell_quote, BoxRead, BoxWrite, Error, ErrorKind, ExecSpec, ExitStatus, Process, PtySize,
    Result, Signal, StdinMode, Streams,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::client::Msg;
use russh::{ChannelMsg, ChannelWriteHalf, Pty, Sig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, OwnedSemaphorePermit};

type Handle = russh::client::Handle<crate::HostKeyCheck>;

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
    line.push_str(&command);
    Some(line)
}

/// A reach signal as russh's type (the names SSH sends; others as `Custom`).
pub fn signal_to_russh(signal: &Signal) -> Sig {
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

/// A russh signal as reach's type.
pub fn signal_from_russh(sig: &Sig) -> Signal {
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

/// What a command under a time limit prints first (on stderr, or on the terminal under a
/// PTY): its process group id, which the watchdog kills when the limit passes.
const PGID_MARKER: &[u8] = b"\x1ereach-pgid:";
/// How far into the stream the marker is looked for (shell start-up files may print first).
const PGID_SEARCH: usize = 4096;

/// The remote line for a command with a time limit: sshd makes the shell a session leader,
/// so `$$` is the process group of everything the command starts.
fn with_pgid_marker(line: &str) -> String {
    format!("printf '\\036reach-pgid:%s\\n' $$ >&2; {line}")
}

/// Pulls the marker out of the first bytes of one stream.
#[derive(Debug, Default)]
struct MarkerScan {
    buf: Vec<u8>,
    done: bool,
}

impl MarkerScan {
    /// Takes a chunk; returns the bytes to pass on and the process group once seen.
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, Option<u32>) {
        if self.done {
            return (data.to_vec(), None);
        }
        self.buf.extend_from_slice(data);
        let found = self
            .buf
            .windows(PGID_MARKER.len())
            .position(|w| w == PGID_MARKER);
        if let Some(at) = found {
            let rest = &self.buf[at + PGID_MARKER.len()..];
            if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let digits = String::from_utf8_lossy(&rest[..nl]);
                let pgid = digits.trim_end_matches('\r').parse().ok();
                let mut out = self.buf[..at].to_vec();
                out.extend_from_slice(&rest[nl + 1..]);
                self.buf.clear();
                self.done = true;
                return (out, pgid);
            }
        }
        if self.buf.len() > PGID_SEARCH {
            self.done = true;
            return (std::mem::take(&mut self.buf), None);
        }
        (Vec::new(), None)
    }

    /// What is still held back when the stream ends.
    fn finish(&mut self) -> Vec<u8> {
        self.done = true;
        std::mem::take(&mut self.buf)
    }
}

/// Terminal modes for a PTY: a sane cooked terminal, as `stty sane` sets it, so line
/// editing, `sudo`'s password prompt and full-screen programs behave.
const PTY_MODES: &[(Pty, u32)] = &[
    (Pty::VINTR, 3),
    (Pty::VQUIT, 28),
    (Pty::VERASE, 127),
    (Pty::VKILL, 21),
    (Pty::VEOF, 4),
    (Pty::VSUSP, 26),
    (Pty::ICRNL, 1),
    (Pty::IXON, 1),
    (Pty::IUTF8, 1),
    (Pty::ISIG, 1),
    (Pty::ICANON, 1),
    (Pty::ECHO, 1),
    (Pty::ECHOE, 1),
    (Pty::ECHOK, 1),
    (Pty::IEXTEN, 1),
    (Pty::OPOST, 1),
    (Pty::ONLCR, 1),
    (Pty::CS8, 1),
    (Pty::TTY_OP_ISPEED, 38400),
    (Pty::TTY_OP_OSPEED, 38400),
];

/// Opens a session channel. A server refuses one while it still counts a session that just
/// closed against `MaxSessions`; that refusal is retried briefly (the caller's session cap
/// keeps us below the limit, so the slot frees within moments).
pub(crate) async fn open_session(
    handle: &Handle,
) -> std::result::Result<russh::Channel<Msg>, russh::Error> {
    let mut attempt = 0u64;
    loop {
        match handle.channel_open_session().await {
            Err(russh::Error::ChannelOpenFailure(_)) if attempt < 40 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt.min(20))).await;
            }
            other => return other,
        }
    }
}

type Slot = reach_core::outcome::OutcomeSlot<ExitStatus>;

use reach_core::outcome::publish;

impl SshProcess {
    pub(crate) async fn start(
        handle: Arc<Handle>,
        spec: ExecSpec,
        addr: String,
        permit: OwnedSemaphorePermit,
        forward_agent: bool,
    ) -> Result<SshProcess> {
        let dropped = |what: &str, e: russh::Error| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("{what} on `{addr}` failed: {e}"),
            )
        };
        let channel = open_session(&handle)
            .await
            .map_err(|e| dropped("opening a session", e))?;
        if forward_agent {
            // Asked without a reply, as `ssh -A` asks: a server that refuses it runs the
            // command all the same, and the command finds no agent.
            channel
                .agent_forward(false)
                .await
                .map_err(|e| dropped("asking for agent forwarding", e))?;
        }
        if let Some(pty) = &spec.pty {
            channel
                .request_pty(
                    false,
                    &pty.term,
                    u32::from(pty.size.cols),
                    u32::from(pty.size.rows),
                    0,
                    0,
                    PTY_MODES,
                )
                .await
                .map_err(|e| dropped("requesting a terminal", e))?;
        }
        let limit = spec.timeout;
        match remote_line(&spec) {
            Some(line) if limit.is_some() => channel.exec(true, with_pgid_marker(&line)).await,
            Some(line) => channel.exec(true, line).await,
            None => {
                for (key, value) in &spec.env {
                    let _ = channel.set_env(false, key.clone(), value.clone()).await;
                }
                channel.request_shell(true).await
            }
        }
        .map_err(|e| dropped("starting the command", e))?;
        let pty = spec.pty.is_some();
        let (mut reader, writer) = channel.split();
        let writer = Arc::new(writer);
        let (mut out_tx, out_rx) = tokio::io::duplex(PIPE);
        let (mut err_tx, err_rx) = tokio::io::duplex(PIPE);
        let (result_tx, result_rx) = watch::channel(None);
        let result_tx = Arc::new(result_tx);
        let (pgid_tx, pgid_rx) = watch::channel(None::<u32>);
        // The marker comes on stderr, or on the terminal (stdout) under a PTY.
        let mut scan = limit.map(|_| (if pty { 0u32 } else { 1u32 }, MarkerScan::default()));
        let pump_addr = addr.clone();
        let pump_result = result_tx.clone();
        let timed_out = Arc::new(AtomicBool::new(false));
        let pump_timed_out = timed_out.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut status = None;
            while let Some(msg) = reader.wait().await {
                let (stream, data) = match msg {
                    ChannelMsg::Data { data } => (0u32, data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => (1, data),
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(ExitStatus::Code(exit_status as i32));
                        continue;
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        ..
                    } => {
                        status = Some(ExitStatus::Signal {
                            signal: signal_from_russh(&signal_name),
                            core_dumped,
                        });
                        continue;
                    }
                    ChannelMsg::Failure => {
                        status = None;
                        break;
                    }
                    ChannelMsg::Close => break,
                    _ => continue,
                };
                let target = if stream == 0 {
                    &mut out_tx
                } else {
                    &mut err_tx
                };
                match &mut scan {
                    Some((on, scan)) if *on == stream => {
                        let (pass, pgid) = scan.feed(&data);
                        if pgid.is_some() {
                            let _ = pgid_tx.send(pgid);
                        }
                        let _ = target.write_all(&pass).await;
                    }
                    _ => {
                        let _ = target.write_all(&data).await;
                    }
                }
            }
            if let Some((on, scan)) = &mut scan {
                let rest = scan.finish();
                let target = if *on == 0 { &mut out_tx } else { &mut err_tx };
                let _ = target.write_all(&rest).await;
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
            // Once the watchdog fired, the kill it sent is not the command's own ending.
            if !pump_timed_out.load(Ordering::SeqCst) {
                publish(&pump_result, result);
            }
        });
        if let Some(limit) = limit {
            tokio::spawn(watchdog(
                handle,
                writer.clone(),
                result_tx.clone(),
                timed_out,
                pgid_rx,
                limit,
                addr.clone(),
            ));
        }
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

/// Ends a command that outlived its time limit: kills its whole process group on the
/// server (through a second session), closes its channel and reports `Timeout`.
async fn watchdog(
    handle: Arc<Handle>,
    writer: Arc<ChannelWriteHalf<Msg>>,
    result: Arc<Slot>,
    timed_out: Arc<AtomicBool>,
    pgid: watch::Receiver<Option<u32>>,
    limit: Duration,
    addr: String,
) {
    let mut finished = result.subscribe();
    if tokio::time::timeout(limit, finished.wait_for(Option::is_some))
        .await
        .is_ok()
    {
        return;
    }
    timed_out.store(true, Ordering::SeqCst);
    let group = *pgid.borrow();
    match group {
        Some(group) if group > 1 => {
            let killer = async {
                let channel = open_session(&handle).await.ok()?;
                channel
                    .exec(true, format!("kill -s KILL -- -{group}"))
                    .await
                    .ok()?;
                let mut channel = channel;
                while let Some(msg) = channel.wait().await {
                    if matches!(msg, ChannelMsg::Close | ChannelMsg::ExitStatus { .. }) {
                        break;
                    }
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), killer).await;
        }
        _ => {
            let _ = writer.signal(Sig::KILL).await;
        }
    }
    let _ = writer.close().await;
    publish(
        &result,
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the command on `{addr}` ran longer than its limit of {limit:?} and was killed"
            ),
        )),
    );
}

#[async_trait]
impl Process for SshProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
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
        self.writer
            .signal(signal_to_russh(&signal))
            .await
            .map_err(|e| {
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
            Some(r"cd '/tmp/x y' || exit 1; export K='it'\''s'; printf %s 'a b'")
        );
        assert_eq!(remote_line(&ExecSpec::login_shell()), None);
    }

    #[test]
    fn the_pgid_marker_is_cut_out_wherever_it_lands() {
        let mut scan = MarkerScan::default();
        let (pass, pgid) = scan.feed(b"motd\n\x1ereach-pg");
        assert!(pass.is_empty() && pgid.is_none());
        let (pass, pgid) = scan.feed(b"id:4242\r\nerr text");
        assert_eq!(pgid, Some(4242));
        assert_eq!(pass, b"motd\nerr text");
        assert_eq!(scan.feed(b"more").0, b"more");

        let mut never = MarkerScan::default();
        let (pass, _) = never.feed(&[b'x'; PGID_SEARCH + 1]);
        assert_eq!(pass.len(), PGID_SEARCH + 1);
        let mut short = MarkerScan::default();
        assert!(short.feed(b"abc").0.is_empty());
        assert_eq!(short.finish(), b"abc");
    }
}
