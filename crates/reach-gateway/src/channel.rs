//! One SSH session channel: gathers `pty-req`, `env` and agent requests, then runs `exec`,
//! `shell` or the `sftp` subsystem on the connection's backend, and passes back output, then
//! `exit-status` or `exit-signal`, then EOF and close — in that order, so a client never sees
//! an exit before the last byte.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use reach_core::{
    Backend, CommandLine, ExecSpec, ExitStatus, Process, PtyRequest, PtySize, Signal, StdinMode,
};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::backends::{public_reason, AgentDir, Container};
use crate::conn::Conn;
use crate::log::Level;

/// What the client asked for before starting something.
#[derive(Debug, Default)]
struct Requests {
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    agent: bool,
    /// Input that arrived before the command started.
    early_input: Vec<u8>,
    early_eof: bool,
}

/// What to start.
enum Start {
    Command(CommandLine, &'static str),
    Sftp,
}

/// Serves one channel until it closes.
#[tracing::instrument(
    name = "session",
    skip_all,
    fields(conn = %conn.id(), channel = %u32::from(channel.id()))
)]
pub(crate) async fn run(mut channel: Channel<Msg>, conn: Arc<Conn>, handle: Handle) {
    let id = channel.id();
    let mut requests = Requests::default();
    let start = loop {
        let Some(msg) = channel.wait().await else {
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                let allowed = conn.permissions().pty;
                if allowed {
                    requests.pty = Some(PtyRequest {
                        term,
                        size: size(col_width, row_height),
                    });
                }
                reply(&handle, id, allowed).await;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                let allowed = conn.accepts_env(&variable_name);
                if allowed {
                    requests.env.push((variable_name, variable_value));
                } else {
                    crate::log!(Level::Info, conn.id(), "env.refused", name = variable_name);
                }
                reply(&handle, id, allowed).await;
            }
            // russh answers this one itself, from `Handler::agent_request`.
            ChannelMsg::AgentForward { .. } => requests.agent = conn.agent_allowed(),
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(pty) = requests.pty.as_mut() {
                    pty.size = size(col_width, row_height);
                }
            }
            ChannelMsg::Exec { command, .. } => {
                let line = String::from_utf8_lossy(&command).into_owned();
                break Start::Command(CommandLine::Shell(line), "exec");
            }
            ChannelMsg::RequestShell { .. } => {
                break Start::Command(CommandLine::LoginShell, "shell")
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                if name == "sftp" {
                    break Start::Sftp;
                }
                crate::log!(Level::Info, conn.id(), "subsystem.refused", name = name);
                reply(&handle, id, false).await;
            }
            ChannelMsg::Data { data } => requests.early_input.extend_from_slice(&data),
            ChannelMsg::Eof => requests.early_eof = true,
            ChannelMsg::Close => return,
            _ => {}
        }
    };
    match start {
        Start::Command(command, op) => {
            run_command(channel, &conn, &handle, command, op, requests).await;
        }
        Start::Sftp => {
            let asked = Instant::now();
            let place = match conn.backend(id).await {
                Ok(place) => place,
                Err(err) => {
                    conn.metrics().backend("sftp", false);
                    refuse(&conn, &handle, id, &err).await;
                    return;
                }
            };
            let _active = Active::new(&conn, asked);
            run_sftp(channel, &conn, &handle, place.backend.clone()).await;
            if let Some(container) = place.own {
                conn.release(container, Some(place.backend)).await;
            }
        }
    }
}

/// A session counted as active while this lives.
struct Active(Arc<crate::metrics::Metrics>);

impl Active {
    /// The session runs; it was asked for at `asked`.
    fn new(conn: &Conn, asked: Instant) -> Self {
        let metrics = conn.metrics();
        metrics.session_started(asked.elapsed());
        Active(metrics)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.session_ended();
    }
}

/// A started command and what goes when it ends.
struct Started {
    process: Box<dyn Process>,
    /// The channel's own container (session mode), with the backend made for it, if any.
    own: Option<(Container, Option<Arc<dyn Backend>>)>,
    agent: Option<crate::agent::Forward>,
}

/// Starts `spec` where the connection's sessions run: as the main process of a container of
/// its own (Docker session mode), or on the connection's backend. With `agent`, a forwarded
/// agent socket is made where the session can reach it first.
async fn start(
    conn: &Arc<Conn>,
    handle: &Handle,
    id: ChannelId,
    mut spec: ExecSpec,
    agent: bool,
) -> reach_core::Result<Started> {
    let forward = |dir: Option<AgentDir>| {
        let handle = handle.clone();
        async move {
            if !agent {
                return None;
            }
            match crate::agent::forward(handle, conn.id(), dir.as_ref()).await {
                Ok(forward) => Some(forward),
                Err(e) => {
                    crate::log!(Level::Warn, conn.id(), "agent.failed", error = e);
                    None
                }
            }
        }
    };
    let with_agent = |spec: &mut ExecSpec, forward: &Option<crate::agent::Forward>| {
        if let Some(forward) = forward {
            spec.env
                .push(("SSH_AUTH_SOCK".to_owned(), forward.socket().to_owned()));
        }
    };
    if let Some(prepared) = conn.prepare(id)? {
        let agent = forward(prepared.agent.clone()).await;
        with_agent(&mut spec, &agent);
        let (container, process) = conn.run(prepared, spec).await?;
        return Ok(Started {
            process,
            own: Some((container, None)),
            agent,
        });
    }
    let place = conn.backend(id).await?;
    let agent = forward(place.agent.clone()).await;
    with_agent(&mut spec, &agent);
    let own = place.own.map(|c| (c, Some(place.backend.clone())));
    match place.backend.exec(spec).await {
        Ok(process) => Ok(Started {
            process,
            own,
            agent,
        }),
        Err(e) => {
            if let Some((container, backend)) = own {
                conn.release(container, backend).await;
            }
            Err(e)
        }
    }
}

fn size(cols: u32, rows: u32) -> PtySize {
    PtySize {
        rows: u16::try_from(rows).unwrap_or(u16::MAX).max(1),
        cols: u16::try_from(cols).unwrap_or(u16::MAX).max(1),
    }
}

async fn reply(handle: &Handle, id: ChannelId, ok: bool) {
    let _ = if ok {
        handle.channel_success(id).await
    } else {
        handle.channel_failure(id).await
    };
}

/// The backend took the request: counted, answered, logged.
async fn started(conn: &Conn, handle: &Handle, id: ChannelId, op: &str) {
    conn.metrics().backend(op, true);
    reply(handle, id, true).await;
    crate::log!(
        Level::Info,
        conn.id(),
        "session.started",
        channel = id,
        op = op
    );
}

/// Tells the client, in words it can show, that its session did not start; the full error
/// goes to the log only. The request is answered with success so that the client shows the
/// message (OpenSSH's exits at once on a failed exec), then the channel closes without an
/// exit status, which the client reports as 255.
async fn refuse(conn: &Conn, handle: &Handle, id: ChannelId, err: &reach_core::Error) {
    crate::log!(Level::Error, conn.id(), "session.failed", error = err);
    let message = format!(
        "Failed to initialize SSH session. {}\r\n",
        public_reason(err)
    );
    reply(handle, id, true).await;
    let _ = handle.extended_data(id, 1, message.into_bytes()).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

async fn run_command(
    channel: Channel<Msg>,
    conn: &Arc<Conn>,
    handle: &Handle,
    command: CommandLine,
    op: &'static str,
    requests: Requests,
) {
    let asked = Instant::now();
    let id = channel.id();
    let mut spec = ExecSpec::new(command).stdin(StdinMode::Piped);
    spec.env = requests.env;
    spec.pty = requests.pty;
    let metrics = conn.metrics();
    let Started {
        process,
        own,
        agent,
    } = match start(conn, handle, id, spec, requests.agent).await {
        Ok(started) => started,
        Err(err) => {
            metrics.backend(op, false);
            refuse(conn, handle, id, &err).await;
            return;
        }
    };
    let _active = Active::new(conn, asked);
    started(conn, handle, id, op).await;
    serve_process(
        channel,
        conn,
        handle,
        &*process,
        op,
        requests.early_input,
        requests.early_eof,
    )
    .await;
    drop(agent);
    if let Some((container, backend)) = own {
        conn.release(container, backend).await;
    }
}

/// Passes the channel's input, window changes and signals to `process`, and its output and
/// then its exit back.
async fn serve_process(
    channel: Channel<Msg>,
    conn: &Arc<Conn>,
    handle: &Handle,
    process: &dyn Process,
    op: &'static str,
    early_input: Vec<u8>,
    early_eof: bool,
) {
    let id = channel.id();
    let metrics = conn.metrics();
    let (mut rx, tx) = channel.split();
    // The client's window reopens as its input reaches the command's stdin (or is dropped
    // because stdin is gone), not as it arrives: a command that reads slowly holds the
    // client back instead of having its input pile up here.
    let credit = rx.take_window_credit();
    let stdin = process.take_stdin();
    let queue = Arc::new(InputQueue::default());
    let (input, input_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let feeder = tokio::spawn(feed(
        stdin,
        input_rx,
        queue.clone(),
        conn.metrics(),
        credit.clone(),
    ));
    if !early_input.is_empty() {
        // Already given back as window when it arrived (before the command started); a
        // second credit for it is capped at the window by russh.
        let _ = queue.push(&input, early_input);
    }
    let mut input = (!early_eof).then_some(input);

    let out = pump(process.take_stdout(), tx.make_writer(), conn.clone());
    let err = pump(
        process.take_stderr(),
        tx.make_writer_ext(Some(1)),
        conn.clone(),
    );
    let finished = async {
        let _ = tokio::join!(out, err);
        process.wait().await
    };
    tokio::pin!(finished);
    let status = loop {
        tokio::select! {
            status = &mut finished => break Some(status),
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => match &input {
                    // Nowhere to go: dropped, and the client keeps flowing.
                    None => give_back(&credit, data.len()),
                    Some(sender) => match queue.push(sender, data.to_vec()) {
                        Ok(true) => {}
                        Ok(false) => {
                            give_back(&credit, data.len());
                            input = None;
                        }
                        Err(queued) => break Some(Err(reach_core::Error::new(
                            reach_core::ErrorKind::InvalidInput,
                            format!("the command fell {} MiB behind its input", queued >> 20),
                        ))),
                    },
                },
                Some(ChannelMsg::Eof) => input = None,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let _ = process.resize(size(col_width, row_height)).await;
                }
                Some(ChannelMsg::Signal { signal }) => {
                    let name = reach_ssh::signal_from_russh(&signal).name().to_owned();
                    crate::log!(Level::Info, conn.id(), "session.signal", channel = id, signal = name);
                    let _ = process.signal(Signal::from_name(&name)).await;
                }
                // The client closed the channel or went away: stop the command.
                Some(ChannelMsg::Close) | None => break None,
                Some(_) => {}
            },
        }
    };
    drop(input);
    feeder.abort();
    match status {
        Some(Ok(status)) => {
            crate::log!(
                Level::Info,
                conn.id(),
                "session.ended",
                channel = id,
                status = status
            );
            match &status {
                ExitStatus::Code(code) => {
                    let _ = tx.exit_status(u32::try_from(*code).unwrap_or(255)).await;
                }
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => {
                    let _ = handle
                        .exit_signal_request(
                            id,
                            reach_ssh::signal_to_russh(signal),
                            *core_dumped,
                            String::new(),
                            "en".to_owned(),
                        )
                        .await;
                }
            }
            let _ = tx.eof().await;
            let _ = tx.close().await;
        }
        Some(Err(err)) => {
            // No exit status is invented: the client sees the channel close without one
            // (ssh exits 255), after a line saying why.
            metrics.backend(op, false);
            crate::log!(
                Level::Error,
                conn.id(),
                "session.lost",
                channel = id,
                error = err
            );
            // Our own limits say what they are; backend failures get the safe summary.
            let why = if matches!(err.kind(), reach_core::ErrorKind::InvalidInput) {
                err.message()
            } else {
                public_reason(&err)
            };
            let line = format!("reach serve: the session was lost: {why}\r\n");
            let _ = handle.extended_data(id, 1, line.into_bytes()).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
        }
        None => {
            crate::log!(
                Level::Info,
                conn.id(),
                "session.closed_by_client",
                channel = id
            );
            // Dropping the process kills it (and what it started).
            let _ = process.signal(Signal::HUP).await;
        }
    }
}

/// Client input waiting for the command's stdin.
///
/// Every message of a connection reaches its channel through the connection's one session
/// loop, so the channel task never blocks on a command's stdin: blocking there would stop
/// the loop, and with it the window adjustments for the command's output that the command
/// may be waiting on (a deadlock, seen with `ssh gw cat < 300MB`). Input queues here
/// instead, and the client's window reopens only as the feeder writes it to stdin (the
/// patched russh in `vendor/russh`), so a well-behaved client is at most one window
/// (8 MiB) ahead of the command. A client that sends past its window anyway, and falls
/// more than [`InputQueue::LIMIT`] ahead, has its session ended with a message.
#[derive(Debug, Default)]
struct InputQueue {
    queued: std::sync::atomic::AtomicUsize,
}

impl InputQueue {
    const LIMIT: usize = 256 << 20;

    /// Queues a chunk: `Ok(false)` once the command's stdin is gone, `Err` when the command
    /// is too far behind.
    fn push(&self, sender: &mpsc::UnboundedSender<Vec<u8>>, chunk: Vec<u8>) -> Result<bool, usize> {
        let queued = self.queued.fetch_add(chunk.len(), Ordering::SeqCst) + chunk.len();
        if queued > Self::LIMIT {
            return Err(queued);
        }
        Ok(sender.send(chunk).is_ok())
    }

    fn done(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::SeqCst);
    }
}

/// Reopens the client's window by `len` bytes of its input, consumed (see [`InputQueue`]).
fn give_back(credit: &Option<russh::WindowCredit>, len: usize) {
    if let Some(credit) = credit {
        credit(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// Copies client input to the command's stdin; EOF when the sender goes.
async fn feed(
    stdin: Option<reach_core::BoxWrite>,
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
    queue: Arc<InputQueue>,
    metrics: Arc<crate::metrics::Metrics>,
    credit: Option<russh::WindowCredit>,
) {
    let mut stdin = stdin;
    while let Some(chunk) = input.recv().await {
        metrics.bytes_in(chunk.len() as u64);
        if let Some(pipe) = stdin.as_mut() {
            let written = pipe.write_all(&chunk).await.is_ok() && pipe.flush().await.is_ok();
            if !written {
                // The command closed its stdin: drop the rest, keep the client flowing.
                stdin = None;
            }
        }
        queue.done(chunk.len());
        give_back(&credit, chunk.len());
    }
    if let Some(mut pipe) = stdin {
        let _ = pipe.shutdown().await;
    }
}

/// Copies one output stream to the channel.
async fn pump(
    source: Option<reach_core::BoxRead>,
    mut sink: impl AsyncWrite + Unpin,
    conn: Arc<Conn>,
) {
    let Some(mut source) = source else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        conn.metrics().bytes_out(n as u64);
        if sink.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = sink.flush().await;
}

async fn run_sftp(
    channel: Channel<Msg>,
    conn: &Arc<Conn>,
    handle: &Handle,
    backend: Arc<dyn Backend>,
) {
    let id = channel.id();
    let metrics = conn.metrics();
    let fs = match backend.fs().await {
        Ok(fs) => fs,
        Err(err) => {
            metrics.backend("sftp", false);
            refuse(conn, handle, id, &err).await;
            return;
        }
    };
    let home = fs.home_dir().await.unwrap_or_else(|_| "/".to_owned());
    started(conn, handle, id, "sftp").await;
    let (done, ended) = tokio::sync::oneshot::channel();
    let exit_handle = handle.clone();
    let stream = SubsystemStream {
        inner: channel.into_stream(),
        done: Some(done),
        // As sshd does when sftp-server exits: scp takes a missing status as failure. It
        // must go out before the stream's drop closes the channel.
        exit: Some(Box::pin(async move {
            let _ = exit_handle.exit_status_request(id, 0).await;
            let _ = exit_handle.eof(id).await;
        })),
    };
    russh_sftp::server::run(stream, crate::sftp::Sftp::new(fs, home, metrics)).await;
    let _ = ended.await;
    crate::log!(
        Level::Info,
        conn.id(),
        "session.ended",
        channel = id,
        op = "sftp"
    );
}

/// The subsystem's end of the channel: at the client's EOF it sends exit status 0 before
/// passing the EOF on, and says when the SFTP server (in its own task) let go of it.
struct SubsystemStream<S> {
    inner: S,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    exit: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl<S> Drop for SubsystemStream<S> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SubsystemStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            if let Some(exit) = self.exit.as_mut() {
                std::task::ready!(exit.as_mut().poll(cx));
                self.exit = None;
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SubsystemStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
