//! The caller's side: find (or start) the daemon, hand it a command, and present the running
//! command as a [`Process`] so that `reach exec` wires it to the terminal exactly as it does a
//! direct one.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reach::ssh::zeroize::Zeroizing;
use reach::{BoxRead, BoxWrite, Error, ErrorKind, ExitStatus, Process, PtySize, Signal, Streams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{frame, read_frame, write_frame, ExecRequest, Request, LOG};

/// What became of handing a command to the daemon.
pub enum Handed {
    /// It runs on a warm (or newly made) connection.
    Started(Box<dyn Process>),
    /// The daemon tried and failed: nothing ran. `true` when connecting failed (unreachable,
    /// refused key), `false` when the command could not start (missing program...).
    Failed(Error, bool),
    /// No daemon could take it (none could be started, or it cannot serve this call); the
    /// caller connects directly. The text says why.
    Unavailable(String),
}

/// Hands `request` to the daemon, starting one (idle time `idle`) if none runs.
pub async fn exec(request: ExecRequest, idle: Duration) -> Handed {
    let destination = request.destination.clone();
    let stdin = request.stdin;
    let dir = match super::runtime_dir() {
        Ok(dir) => dir,
        Err(why) => return Handed::Unavailable(why),
    };
    let stream = match connect_or_start(&dir, idle).await {
        Ok(stream) => stream,
        Err(why) => return Handed::Unavailable(why),
    };
    let body = match serde_json::to_vec(&Request::Exec(Box::new(request))) {
        Ok(body) => Zeroizing::new(body),
        Err(e) => return Handed::Unavailable(format!("cannot encode the request: {e}")),
    };
    let (mut from, mut to) = stream.into_split();
    if let Err(e) = write_frame(&mut to, frame::REQUEST, &body).await {
        return Handed::Unavailable(format!(
            "the connection daemon did not take the request: {e}"
        ));
    }
    drop(body);
    // From here on the command may have started: a vanished daemon is an error, not a reason
    // to run it a second time.
    let lost = || {
        Error::new(
            ErrorKind::SessionDropped,
            format!(
                "the reach connection daemon went away while starting the command on `{}` \
                 (its log: {}); run with --no-reuse to connect directly",
                destination,
                dir.join(LOG).display()
            ),
        )
    };
    match read_frame(&mut from).await {
        Ok(Some((frame::STARTED, _))) => {}
        Ok(Some((frame::FAILED, body))) => {
            let connecting = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("connecting").and_then(Value::as_bool))
                .unwrap_or(false);
            return Handed::Failed(failure(&body), connecting);
        }
        Ok(Some((frame::UNAVAILABLE, why))) => {
            return Handed::Unavailable(String::from_utf8_lossy(&why).into_owned())
        }
        Ok(Some(_)) | Ok(None) | Err(_) => return Handed::Failed(lost(), true),
    }
    Handed::Started(Box::new(WarmProcess::start(from, to, stdin, destination)))
}

fn failure(body: &[u8]) -> Error {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => super::error_from_json(&value),
        Err(_) => Error::new(
            ErrorKind::Protocol,
            "the connection daemon sent a malformed error",
        ),
    }
}

/// Connects to the running daemon, or starts one and waits (up to 3 s) for its socket.
async fn connect_or_start(dir: &Path, idle: Duration) -> Result<UnixStream, String> {
    let socket = dir.join(super::socket_name());
    if let Ok(stream) = connect(&socket).await {
        return Ok(stream);
    }
    spawn_daemon(dir, idle)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        match connect(&socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the connection daemon did not start within 3 s ({e}); see {}",
                    dir.join(LOG).display()
                ))
            }
            Err(_) => {}
        }
    }
}

/// Connects to the daemon's socket and checks that the daemon is this user's.
async fn connect(socket: &Path) -> Result<UnixStream, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("`{}`: {e}", socket.display()))?;
    let me = super::uid();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => Ok(stream),
        Ok(cred) => Err(format!(
            "`{}` is served by uid {}, not by this user (uid {me})",
            socket.display(),
            cred.uid()
        )),
        Err(e) => Err(format!(
            "`{}`: cannot check its owner: {e}",
            socket.display()
        )),
    }
}

/// Starts `reach connections daemon` in the background: its own process group (a Ctrl-C at
/// the terminal is not for it), no terminal, stdout closed, stderr to its log, and none of
/// the secrets this call has in its environment.
fn spawn_daemon(dir: &Path, idle: Duration) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find reach itself: {e}"))?;
    let log_path = dir.join(LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("cannot open `{}`: {e}", log_path.display()))?;
    std::process::Command::new(exe)
        .args(["connections", "daemon", "--idle"])
        .arg(format!("{}ms", idle.as_millis()))
        .env_remove("REACH_SSH_PASSWORD")
        .env_remove("REACH_SSH_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the connection daemon: {e}"))
}

/// Sends a list or close request to this build's daemon, or a stop request to every build's;
/// `None` when none runs.
pub async fn ask(request: &Request) -> reach::Result<Option<Value>> {
    let dir = super::runtime_dir().map_err(|e| Error::new(ErrorKind::PermissionDenied, e))?;
    if !matches!(request, Request::Stop) {
        return ask_at(&dir.join(super::socket_name()), request).await;
    }
    let mut stopped = None;
    for socket in super::daemon_sockets(&dir) {
        if let Some(reply) = ask_at(&socket, request).await? {
            stopped = Some(reply);
        }
    }
    Ok(stopped)
}

/// Sends one request to the daemon at `socket`; `None` when none listens there.
async fn ask_at(socket: &Path, request: &Request) -> reach::Result<Option<Value>> {
    let mut stream = match connect(socket).await {
        Ok(stream) => stream,
        Err(_) if !socket.exists() => return Ok(None),
        Err(why) => {
            // A socket left by a daemon that is gone refuses connections: nothing runs.
            if UnixStream::connect(socket)
                .await
                .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::ConnectionRefused))
            {
                return Ok(None);
            }
            return Err(Error::new(ErrorKind::PermissionDenied, why));
        }
    };
    let body = serde_json::to_vec(request)
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("encode the request: {e}")))?;
    let talk = async {
        write_frame(&mut stream, frame::REQUEST, &body).await?;
        read_frame(&mut stream).await
    };
    let context = format!("ask the connection daemon at `{}`", socket.display());
    match talk.await.map_err(|e| Error::io(&context, e))? {
        Some((frame::REPLY, body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("{context}: {e}"))),
        Some((frame::FAILED, body)) => Err(failure(&body)),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            format!("{context}: it closed the connection without an answer"),
        )),
    }
}

/// A command running through the daemon.
struct WarmProcess {
    streams: Streams,
    status: watch::Receiver<Option<reach::Result<ExitStatus>>>,
    signals: mpsc::UnboundedSender<Signal>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WarmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmProcess").finish_non_exhaustive()
    }
}

/// Room for output between the socket and the caller's reader.
const BUFFER: usize = 256 * 1024;

impl WarmProcess {
    fn start(
        mut from: tokio::net::unix::OwnedReadHalf,
        mut to: tokio::net::unix::OwnedWriteHalf,
        stdin: bool,
        destination: String,
    ) -> WarmProcess {
        let (out_writer, out_reader) = tokio::io::duplex(BUFFER);
        let (err_writer, err_reader) = tokio::io::duplex(BUFFER);
        let (signals, mut signal_queue) = mpsc::unbounded_channel::<Signal>();
        let (chunks, mut chunk_queue) = mpsc::channel::<Option<Vec<u8>>>(8);
        let (stdin_writer, stdin_task) = if stdin {
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match theirs.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if chunks.send(Some(buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = chunks.send(None).await;
            });
            (Some(Box::pin(ours) as BoxWrite), Some(task))
        } else {
            drop(chunks);
            (None, None)
        };
        // Signals go first, so a Ctrl-C is not stuck behind stdin the command does not read.
        let writer = tokio::spawn(async move {
            loop {
                let sent = tokio::select! {
                    biased;
                    Some(signal) = signal_queue.recv() => {
                        write_frame(&mut to, frame::SIGNAL, signal.name().as_bytes()).await
                    }
                    Some(chunk) = chunk_queue.recv() => match chunk {
                        Some(bytes) => write_frame(&mut to, frame::STDIN, &bytes).await,
                        None => write_frame(&mut to, frame::STDIN_EOF, b"").await,
                    },
                    else => break,
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        let (report, status) = watch::channel(None);
        let reader = tokio::spawn(async move {
            let ended = demux(&mut from, out_writer, err_writer).await;
            let result = ended.unwrap_or_else(|why| {
                Err(Error::new(
                    ErrorKind::SessionDropped,
                    format!(
                        "the reach connection daemon went away before the command on \
                         `{destination}` finished ({why}); its status is unknown"
                    ),
                ))
            });
            let _ = report.send(Some(result));
        });
        let mut tasks = vec![writer, reader];
        tasks.extend(stdin_task);
        WarmProcess {
            streams: Streams::new(
                stdin_writer,
                Some(Box::pin(out_reader) as BoxRead),
                Some(Box::pin(err_reader) as BoxRead),
            ),
            status,
            signals,
            tasks,
        }
    }
}

/// Copies output frames to their streams until the exit frame; the streams end (EOF) when
/// this returns. `Err` when the daemon closed the connection first.
async fn demux(
    from: &mut tokio::net::unix::OwnedReadHalf,
    out: DuplexStream,
    err: DuplexStream,
) -> Result<reach::Result<ExitStatus>, String> {
    let (mut out, mut err) = (Some(out), Some(err));
    loop {
        let (kind, bytes) = match read_frame(from).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err("connection closed".into()),
            Err(e) => return Err(e.to_string()),
        };
        let sink = match kind {
            frame::STDOUT => &mut out,
            frame::STDERR => &mut err,
            frame::EXIT => return Ok(exit_status(&bytes)),
            _ => continue,
        };
        // A reader that went away (our stdout closed) drops the rest of its stream only.
        if let Some(stream) = sink.as_mut() {
            if stream.write_all(&bytes).await.is_err() {
                *sink = None;
            }
        }
    }
}

fn exit_status(body: &[u8]) -> reach::Result<ExitStatus> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("the connection daemon sent a malformed exit status: {e}"),
        )
    })?;
    if let Some(code) = value.get("code").and_then(Value::as_i64) {
        return Ok(ExitStatus::Code(i32::try_from(code).unwrap_or(i32::MAX)));
    }
    if let Some(name) = value.get("signal").and_then(Value::as_str) {
        return Ok(ExitStatus::Signal {
            signal: Signal::from_name(name),
            core_dumped: value
                .get("core_dumped")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    match value.get("error") {
        Some(error) => Err(super::error_from_json(error)),
        None => Err(Error::new(
            ErrorKind::Protocol,
            "the connection daemon sent an exit frame without a status",
        )),
    }
}

#[async_trait]
impl Process for WarmProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> reach::Result<ExitStatus> {
        let mut status = self.status.clone();
        let ended = match status.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => None,
        };
        ended.unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::SessionDropped,
                "the reach connection daemon went away before the command finished",
            ))
        })
    }

    async fn signal(&self, signal: Signal) -> reach::Result<()> {
        self.signals.send(signal).map_err(|_| {
            Error::new(
                ErrorKind::SessionDropped,
                "the connection to the reach connection daemon is closed",
            )
        })
    }

    async fn resize(&self, _size: PtySize) -> reach::Result<()> {
        Err(Error::new(
            ErrorKind::InvalidInput,
            "this command has no terminal to resize",
        ))
    }
}

impl Drop for WarmProcess {
    fn drop(&mut self) {
        // Closing the socket tells the daemon to drop (kill) the command if it still runs.
        for task in &self.tasks {
            task.abort();
        }
    }
}
