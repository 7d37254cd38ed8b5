//! The client end of `reach-agent` (see `agent/main.rs`): one engine exec per connection,
//! over which every command is a frame.
//!
//! Frames: `kind: u8, id: u32 BE, len: u32 BE, payload`.
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 0 HELLO | agent → | version, home directory (each `u32 len + bytes`), uid, gid (`u32`) |
//! | 1 SPAWN | → agent | argc, argv…, envc, (key, value)…, cwd (empty: none), stdin piped `u8`, terminal `u8` (+ rows, cols `u32`) |
//! | 2 STDIN / 3 STDIN_EOF | → agent | bytes / nothing |
//! | 4 SIGNAL | → agent | signal number `u8`, whole process group `u8` |
//! | 5 FS_OP | → agent | op `u8`, path, op arguments |
//! | 6 RESIZE | → agent | rows, cols (`u32`) |
//! | 7 CONNECT | → agent | host, port `u32`: a TCP connection, then carried as a command (STDIN, STDOUT, EXIT at its end, SIGNAL shuts it) |
//! | 8 ACK | → agent | stream (12 or 13) `u8`, bytes read `u32`, reader gone `u8` |
//! | 10 STARTED / 11 SPAWN_FAILED | agent → | pid `u32` / what `u8` (0 command, 1 cwd), errno `i32`, message |
//! | 12 STDOUT / 13 STDERR | agent → | bytes |
//! | 14 EXIT | agent → | 0 code / 1 signal, value `i32`, core dumped `u8` (after all output) |
//! | 15 FS_OK / 16 FS_ERR | agent → | op result / what, errno, message |
//! | 17 TAKEN | agent → | stdin bytes the command took (or that were dropped) `u32` |
//!
//! Flow control: each output stream and each stdin has a window of `WINDOW` bytes (see
//! `agent/protocol.rs`). The agent sends a stream's output only while less than that is
//! unacknowledged, and [`PipeReader`] acknowledges what its reader has read; the stdin
//! writer sends only while less than that is not yet taken. So a reader that stops reading
//! stops its command, holds at most a window in memory, and stalls nothing else on the
//! connection: the task that routes frames never waits for a reader.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::container::LogOutput;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reach_core::{Error, ErrorKind, ExitStatus, Result, Signal};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// The agent executable, built by `build.rs` for the target this crate is compiled for
/// (empty when it could not be built).
pub(crate) static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reach-agent"));

#[path = "../agent/protocol.rs"]
pub(crate) mod protocol;
use protocol::*;

/// File operations the agent performs.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Op {
    Rename = OP_RENAME,
    Chmod = OP_CHMOD,
    Truncate = OP_TRUNCATE,
    RemoveFile = OP_REMOVE_FILE,
    RemoveDir = OP_REMOVE_DIR,
    RemoveDirAll = OP_REMOVE_DIR_ALL,
    ReadDir = OP_READ_DIR,
    Sha256 = OP_SHA256,
    SetMtime = OP_SET_MTIME,
    Read = OP_READ,
    Write = OP_WRITE,
}

/// Where the agent lives in a container: a name that changes with its contents, so a
/// container that holds an older agent gets the new one beside it.
pub(crate) fn install_path() -> String {
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

/// Whether an agent was built, and for this container's architecture (`amd64`, `arm64`).
pub(crate) fn runs_on(arch: &str) -> bool {
    let ours = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    !AGENT.is_empty() && std::env::consts::OS == "linux" && arch == ours
}

/// Why a spawn failed, as the agent reported it.
#[derive(Debug)]
pub(crate) struct SpawnFailure {
    /// 0: the command; 1: the working directory.
    pub what: u8,
    pub errno: i32,
    pub message: String,
}

/// The kind of error an errno means.
pub(crate) fn errno_kind(errno: i32) -> ErrorKind {
    match errno {
        2 | 20 => ErrorKind::NotFound,
        1 | 13 | 30 => ErrorKind::PermissionDenied,
        17 => ErrorKind::AlreadyExists,
        21 | 22 | 39 => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    }
}

/// How much of the agent's stderr is kept to explain its end.
const SAID_KEPT: usize = 1024;

type Slot = watch::Sender<Option<Result<ExitStatus>>>;

/// What the reader routes to a running command.
struct Route {
    started: Option<oneshot::Sender<std::result::Result<u32, SpawnFailure>>>,
    stdout: Option<mpsc::UnboundedSender<Bytes>>,
    stderr: Option<mpsc::UnboundedSender<Bytes>>,
    exit: Arc<Slot>,
}

enum Waiter {
    Process(Route),
    Op(oneshot::Sender<std::result::Result<Bytes, SpawnFailure>>),
}

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// One running agent.
pub(crate) struct AgentConn {
    writer: tokio::sync::Mutex<Writer>,
    waiters: Mutex<Option<HashMap<u32, Waiter>>>,
    next: AtomicU32,
    /// Why the connection ended, once it has.
    lost: Mutex<Option<String>>,
    home: String,
    owner: (u32, u32),
    container: String,
    /// Frames that acknowledge output, queued by readers (which cannot wait) for a task
    /// that writes them.
    acks: mpsc::UnboundedSender<Vec<u8>>,
    /// What each command's stdin may still send: permits are bytes, returned by `TAKEN`.
    credits: Mutex<HashMap<u32, Arc<Semaphore>>>,
    /// Dropped with the connection: ends the reader task, which closes the exec, and the
    /// agent, seeing its stdin end, kills what it started.
    _closer: oneshot::Sender<()>,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

fn frame(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Reads fields of a payload.
pub(crate) struct Fields(pub Bytes);

impl Fields {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
    }
    pub(crate) fn i32(&mut self) -> Option<i32> {
        (self.0.remaining() >= 4).then(|| self.0.get_i32())
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64())
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        (self.0.remaining() >= 8).then(|| self.0.get_i64())
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        (self.0.remaining() >= len)
            .then(|| String::from_utf8_lossy(&self.0.split_to(len)).into_owned())
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn failure(payload: Bytes) -> SpawnFailure {
    let mut fields = Fields(payload);
    SpawnFailure {
        what: fields.u8().unwrap_or(0),
        errno: fields.i32().unwrap_or(0),
        message: fields.string().unwrap_or_default(),
    }
}

/// Publishes a command's outcome unless one is already there (a timeout wins over the kill it
/// caused).
pub(crate) fn publish(slot: &Slot, outcome: Result<ExitStatus>) {
    slot.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(outcome);
            true
        } else {
            false
        }
    });
}

type Output =
    Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, bollard::errors::Error>> + Send>>;

impl AgentConn {
    /// Waits for the agent's hello on a started exec, then routes its frames in a task.
    /// `on_lost` explains a lost connection (it checks whether the container still runs);
    /// it is given the end of what the agent wrote to stderr.
    pub(crate) async fn start<F, Fut>(
        mut output: Output,
        input: Writer,
        container: String,
        on_lost: F,
    ) -> std::result::Result<Arc<AgentConn>, String>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = String> + Send,
    {
        let mut buf = BytesMut::new();
        let mut diagnostics = Vec::new();
        let hello = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Some((kind, _, payload)) = next_frame(&mut buf) {
                    return if kind == HELLO {
                        Ok(payload)
                    } else {
                        Err(format!(
                            "the agent spoke before saying hello (frame {kind})"
                        ))
                    };
                }
                match output.next().await {
                    Some(Ok(LogOutput::StdOut { message })) => buf.extend_from_slice(&message),
                    Some(Ok(LogOutput::StdErr { message })) => {
                        diagnostics.extend_from_slice(&message)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("reading from the agent: {e}")),
                    None => {
                        let said = String::from_utf8_lossy(&diagnostics).trim().to_owned();
                        let said = if said.is_empty() {
                            String::from_utf8_lossy(&buf).trim().to_owned()
                        } else {
                            said
                        };
                        return Err(format!("the agent exited at once: {said}"));
                    }
                }
            }
        })
        .await
        .map_err(|_| "the agent did not answer within 15 s".to_owned())??;
        let mut fields = Fields(hello);
        let _version = fields.string();
        let home = fields.string().unwrap_or_default();
        let owner = (fields.u32().unwrap_or(0), fields.u32().unwrap_or(0));
        let (closer, mut closed) = oneshot::channel::<()>();
        let (acks, mut queued_acks) = mpsc::unbounded_channel::<Vec<u8>>();
        let conn = Arc::new(AgentConn {
            writer: tokio::sync::Mutex::new(input),
            waiters: Mutex::new(Some(HashMap::new())),
            next: AtomicU32::new(1),
            lost: Mutex::new(None),
            home,
            owner,
            container,
            acks,
            credits: Mutex::new(HashMap::new()),
            _closer: closer,
        });
        let acker = Arc::downgrade(&conn);
        tokio::spawn(async move {
            while let Some(ack) = queued_acks.recv().await {
                let Some(conn) = acker.upgrade() else { return };
                if conn.write_frame(&ack).await.is_err() {
                    return;
                }
            }
        });
        let reader = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut ended = String::new();
            // The end of the agent's diagnostics (a panic's message, say), for the reason.
            let mut said = Vec::new();
            loop {
                while let Some((kind, id, payload)) = next_frame(&mut buf) {
                    let Some(conn) = reader.upgrade() else { return };
                    conn.route(kind, id, payload);
                }
                let next = tokio::select! {
                    next = output.next() => next,
                    _ = &mut closed => return,
                };
                match next {
                    Some(Ok(LogOutput::StdOut { message })) => buf.extend_from_slice(&message),
                    Some(Ok(LogOutput::StdErr { message })) => {
                        said.extend_from_slice(&message);
                        let excess = said.len().saturating_sub(SAID_KEPT);
                        said.drain(..excess);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ended = e.to_string();
                        break;
                    }
                    None => break,
                }
            }
            let Some(conn) = reader.upgrade() else { return };
            let said = String::from_utf8_lossy(&said);
            let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut why = on_lost(said).await;
            if !ended.is_empty() {
                why = format!("{why} ({ended})");
            }
            conn.fail_all(why);
        });
        Ok(conn)
    }

    /// The user's home directory, as the agent's environment says.
    pub(crate) fn home(&self) -> &str {
        &self.home
    }

    /// The uid and gid the agent (and every command) runs as.
    pub(crate) fn owner(&self) -> (u32, u32) {
        self.owner
    }

    /// Why the agent's connection ended, if it has.
    pub(crate) fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn dropped(&self, why: &str) -> Error {
        Error::new(ErrorKind::SessionDropped, why.to_owned())
    }

    fn route(&self, kind: u8, id: u32, payload: Bytes) {
        let mut guard = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(waiters) = guard.as_mut() else {
            return;
        };
        match kind {
            STARTED | SPAWN_FAILED => {
                let Some(Waiter::Process(route)) = waiters.get_mut(&id) else {
                    return;
                };
                if let Some(started) = route.started.take() {
                    if kind == STARTED {
                        let pid = Fields(payload).u32().unwrap_or(0);
                        let _ = started.send(Ok(pid));
                    } else {
                        let _ = started.send(Err(failure(payload)));
                        waiters.remove(&id);
                    }
                }
            }
            STDOUT | STDERR => {
                let Some(Waiter::Process(route)) = waiters.get_mut(&id) else {
                    return;
                };
                let pipe = if kind == STDOUT {
                    &mut route.stdout
                } else {
                    &mut route.stderr
                };
                if let Some(tx) = pipe {
                    if tx.send(payload).is_err() {
                        // Nobody reads this stream any more: drop what follows.
                        *pipe = None;
                    }
                }
            }
            EXIT => {
                let Some(Waiter::Process(route)) = waiters.remove(&id) else {
                    return;
                };
                let mut fields = Fields(payload);
                let (how, value, core) = (fields.u8(), fields.i32(), fields.u8());
                let status = match (how, value) {
                    (Some(0), Some(code)) => Ok(ExitStatus::Code(code)),
                    (Some(1), Some(signal)) => Ok(ExitStatus::Signal {
                        signal: Signal::from_number(signal),
                        core_dumped: core == Some(1),
                    }),
                    _ => Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "the agent in container `{}` could not tell how the command ended",
                            self.container
                        ),
                    )),
                };
                // Output pipes close before the status is published.
                drop(route.stdout);
                drop(route.stderr);
                publish(&route.exit, status);
            }
            TAKEN => {
                let count = Fields(payload).u32().unwrap_or(0);
                let credit = lock(&self.credits).get(&id).cloned();
                if let Some(credit) = credit {
                    credit.add_permits(count as usize);
                }
            }
            FS_OK | FS_ERR => {
                if let Some(Waiter::Op(tx)) = waiters.remove(&id) {
                    let _ = tx.send(if kind == FS_OK {
                        Ok(payload)
                    } else {
                        Err(failure(payload))
                    });
                }
            }
            _ => {}
        }
    }

    fn fail_all(&self, why: String) {
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        // Writers waiting for room in a stdin window give up.
        for (_, credit) in lock(&self.credits).drain() {
            credit.close();
        }
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for (_, waiter) in waiters.into_iter().flatten() {
            if let Waiter::Process(route) = waiter {
                drop(route.stdout);
                drop(route.stderr);
                publish(&route.exit, Err(self.dropped(&why)));
            }
        }
    }

    fn register(&self, waiter: Waiter) -> Result<u32> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(waiters) => {
                waiters.insert(id, waiter);
                Ok(id)
            }
            None => Err(self.dropped(&self.lost().unwrap_or_default())),
        }
    }

    fn forget(&self, id: u32) {
        if let Some(waiters) = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            waiters.remove(&id);
        }
    }

    pub(crate) async fn send(&self, kind: u8, id: u32, payload: &[u8]) -> Result<()> {
        self.write_frame(&frame(kind, id, payload)).await
    }

    async fn write_frame(&self, bytes: &[u8]) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let sent = async {
            writer.write_all(bytes).await?;
            writer.flush().await
        }
        .await;
        sent.map_err(|e| {
            let why = self.lost().unwrap_or_else(|| {
                format!(
                    "the connection to the agent in container `{}` broke: {e}",
                    self.container
                )
            });
            self.dropped(&why)
        })
    }

    /// Starts a command; returns its id, pid, output pipes and exit slot.
    pub(crate) async fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&str>,
        piped: bool,
        pty: Option<reach_core::PtySize>,
    ) -> Result<std::result::Result<Spawned, SpawnFailure>> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(argv.len() as u32).to_be_bytes());
        for arg in argv {
            put_bytes(&mut payload, arg.as_bytes());
        }
        payload.extend_from_slice(&(env.len() as u32).to_be_bytes());
        for (key, value) in env {
            put_bytes(&mut payload, key.as_bytes());
            put_bytes(&mut payload, value.as_bytes());
        }
        put_bytes(&mut payload, cwd.unwrap_or("").as_bytes());
        payload.push(u8::from(piped));
        if let Some(size) = pty {
            payload.push(1);
            payload.extend_from_slice(&u32::from(size.rows).to_be_bytes());
            payload.extend_from_slice(&u32::from(size.cols).to_be_bytes());
        }
        self.launch(SPAWN, &payload).await
    }

    /// Opens a TCP connection from the container to `host:port`, carried as a command
    /// whose stdin goes to the peer and whose stdout comes from it.
    pub(crate) async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<std::result::Result<Spawned, SpawnFailure>> {
        let mut payload = Vec::new();
        put_bytes(&mut payload, host.as_bytes());
        payload.extend_from_slice(&u32::from(port).to_be_bytes());
        self.launch(CONNECT, &payload).await
    }

    /// Sends a SPAWN or CONNECT request and waits for the agent to start it.
    async fn launch(
        &self,
        kind: u8,
        payload: &[u8],
    ) -> Result<std::result::Result<Spawned, SpawnFailure>> {
        let (started_tx, started_rx) = oneshot::channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (err_tx, err_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit = Arc::new(exit_tx);
        let id = self.register(Waiter::Process(Route {
            started: Some(started_tx),
            stdout: Some(out_tx),
            stderr: Some(err_tx),
            exit: exit.clone(),
        }))?;
        if let Err(e) = self.send(kind, id, payload).await {
            self.forget(id);
            return Err(e);
        }
        match started_rx.await {
            Ok(Ok(pid)) => Ok(Ok(Spawned {
                id,
                pid,
                stdout: PipeReader::acked(out_rx, self.acker(id, STDOUT)),
                stderr: PipeReader::acked(err_rx, self.acker(id, STDERR)),
                exit: exit_rx,
                slot: exit,
            })),
            Ok(Err(failure)) => Ok(Err(failure)),
            Err(_) => Err(self.dropped(&self.lost().unwrap_or_default())),
        }
    }

    /// The stdin window of command `id`, for [`AgentConn::stdin`]; [`AgentConn::end_stdin`]
    /// gives it up.
    pub(crate) fn stdin_window(&self, id: u32) -> Arc<Semaphore> {
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        // Under the lock that `fail_all` drains with, so that a window made while the
        // connection is being lost is closed by one or the other.
        let mut credits = lock(&self.credits);
        if self.lost().is_some() {
            credit.close();
        } else {
            credits.insert(id, credit.clone());
        }
        credit
    }

    /// Sends stdin bytes to a command once its window has room for them.
    pub(crate) async fn stdin(&self, id: u32, window: &Semaphore, data: &[u8]) -> Result<()> {
        // At most a window at once, so that a large write cannot wait forever.
        for piece in data.chunks(WINDOW as usize) {
            window
                .acquire_many(piece.len() as u32)
                .await
                .map_err(|_| self.dropped(&self.lost().unwrap_or_default()))?
                .forget();
            self.send(STDIN, id, piece).await?;
        }
        Ok(())
    }

    /// Ends a command's stdin, and forgets its window.
    pub(crate) async fn end_stdin(&self, id: u32) -> Result<()> {
        lock(&self.credits).remove(&id);
        self.send(STDIN_EOF, id, &[]).await
    }

    fn acker(&self, id: u32, stream: u8) -> Acker {
        Acker {
            acks: self.acks.clone(),
            id,
            stream,
            unacked: 0,
            ended: false,
        }
    }

    /// Sends a signal to a command, or to its whole process group.
    pub(crate) async fn signal(&self, id: u32, signo: u8, group: bool) -> Result<()> {
        self.send(SIGNAL, id, &[signo, u8::from(group)]).await
    }

    /// Resizes a command's terminal.
    pub(crate) async fn resize(&self, id: u32, size: reach_core::PtySize) -> Result<()> {
        let mut payload = u32::from(size.rows).to_be_bytes().to_vec();
        payload.extend_from_slice(&u32::from(size.cols).to_be_bytes());
        self.send(RESIZE, id, &payload).await
    }

    /// Runs a file operation; `Err` inside is the agent's errno and message.
    pub(crate) async fn op(
        &self,
        op: Op,
        path: &str,
        args: &[u8],
    ) -> Result<std::result::Result<Bytes, SpawnFailure>> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Waiter::Op(tx))?;
        let mut payload = vec![op as u8];
        put_bytes(&mut payload, path.as_bytes());
        payload.extend_from_slice(args);
        if let Err(e) = self.send(FS_OP, id, &payload).await {
            self.forget(id);
            return Err(e);
        }
        rx.await
            .map_err(|_| self.dropped(&self.lost().unwrap_or_default()))
    }
}

/// A started command's handles.
pub(crate) struct Spawned {
    pub id: u32,
    pub pid: u32,
    pub stdout: PipeReader,
    pub stderr: PipeReader,
    pub exit: watch::Receiver<Option<Result<ExitStatus>>>,
    pub slot: Arc<Slot>,
}

fn next_frame(buf: &mut BytesMut) -> Option<(u8, u32, Bytes)> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if buf.len() < 9 + len {
        buf.reserve(9 + len - buf.len());
        return None;
    }
    let kind = buf[0];
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    buf.advance(9);
    Some((kind, id, buf.split_to(len).freeze()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Acknowledges what a reader of an agent's output stream has read, so that the agent sends
/// more (see the module's flow control).
#[derive(Debug)]
pub(crate) struct Acker {
    acks: mpsc::UnboundedSender<Vec<u8>>,
    id: u32,
    stream: u8,
    unacked: u32,
    /// The stream reached its end: the agent's pump is gone, and nothing needs telling.
    ended: bool,
}

impl Acker {
    /// Acknowledge once a quarter of the window is read: few frames, and the agent never
    /// waits while the reader has caught up.
    const EVERY: u32 = WINDOW / 4;

    fn read(&mut self, n: usize) {
        self.unacked += n as u32;
        if self.unacked >= Self::EVERY {
            self.flush(false);
        }
    }

    fn flush(&mut self, gone: bool) {
        let mut payload = vec![self.stream];
        payload.extend_from_slice(&self.unacked.to_be_bytes());
        payload.push(u8::from(gone));
        // The connection being gone is no error here: nothing waits for these bytes then.
        let _ = self.acks.send(frame(ACK, self.id, &payload));
        self.unacked = 0;
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if !self.ended {
            self.flush(true);
        }
    }
}

/// An output stream fed by a reader task: an agent's (with its [`Acker`]), or an engine
/// exec's (bounded: the task waits for room).
#[derive(Debug)]
pub(crate) struct PipeReader {
    rx: Source,
    chunk: Bytes,
}

#[derive(Debug)]
enum Source {
    Agent(mpsc::UnboundedReceiver<Bytes>, Acker),
    Engine(mpsc::Receiver<Bytes>),
}

/// How many pieces of an engine exec's output may wait for their reader (the engine sends
/// what each read of the command's pipe gave, typically up to 32 KiB): after that the task routing the exec's output waits, the engine
/// stops reading the command's pipes, and the command waits.
pub(crate) const ENGINE_PIECES: usize = 64;

impl PipeReader {
    /// A stream whose sender waits for room in a bounded channel.
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        PipeReader {
            rx: Source::Engine(rx),
            chunk: Bytes::new(),
        }
    }

    /// An agent's stream: bounded by the agent's window, which `acker` reopens.
    fn acked(rx: mpsc::UnboundedReceiver<Bytes>, acker: Acker) -> Self {
        PipeReader {
            rx: Source::Agent(rx, acker),
            chunk: Bytes::new(),
        }
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            let next = match &mut self.rx {
                Source::Agent(rx, acker) => {
                    let next = rx.poll_recv(cx);
                    acker.ended |= matches!(next, Poll::Ready(None));
                    next
                }
                Source::Engine(rx) => rx.poll_recv(cx),
            };
            match next {
                Poll::Ready(Some(chunk)) => self.chunk = chunk,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut read = 0;
        // What has already arrived, as far as `buf` has room: fewer, larger reads.
        loop {
            let n = self.chunk.len().min(buf.remaining());
            buf.put_slice(&self.chunk.split_to(n));
            read += n;
            if buf.remaining() == 0 || !self.chunk.is_empty() {
                break;
            }
            let next = match &mut self.rx {
                Source::Agent(rx, _) => rx.try_recv().ok(),
                Source::Engine(rx) => rx.try_recv().ok(),
            };
            match next {
                Some(chunk) => self.chunk = chunk,
                None => break,
            }
        }
        if let Source::Agent(_, acker) = &mut self.rx {
            acker.read(read);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut wire = frame(STDOUT, 7, b"hello");
        wire.extend(frame(EXIT, 7, &[0, 0, 0, 0, 3, 0]));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(f) = next_frame(&mut buf) {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, got[0].1, &got[0].2[..]),
            (STDOUT, 7, &b"hello"[..])
        );
        assert_eq!(got[1].0, EXIT);
    }

    #[test]
    fn the_install_path_names_the_agent_by_its_contents() {
        assert!(install_path().starts_with("/.reach/agent-"));
        assert_eq!(install_path(), install_path());
        assert!(!AGENT.is_empty(), "build.rs did not build the agent");
    }
}
