//! One running agent: frames routed to the commands and file operations waiting for them,
//! stdin windows, and the end of the connection failing whatever was in flight.
//!
//! Flow control: each output stream and each stdin has a window of
//! [`reach_agent::protocol::WINDOW`] bytes. The agent sends a stream's output only while
//! less than that is unacknowledged, and [`PipeReader`] acknowledges what its reader has
//! read; the stdin writer sends only while less than that is not yet taken. So a reader that
//! stops reading stops its command, holds at most a window in memory, and stalls nothing
//! else on the connection: the task that routes frames never waits for a reader.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reach_core::sync::lock;
use reach_core::{Error, ErrorKind, ExitStatus, Result, Signal};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use reach_agent::protocol::*;

use crate::pipe::{Acker, PipeReader};
use crate::wire::{frame, next_frame, put_bytes, Fields};

/// File operations the agent performs.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Op {
    /// Rename to a second path.
    Rename = OP_RENAME,
    /// Set permission bits.
    Chmod = OP_CHMOD,
    /// Cut or extend to a length.
    Truncate = OP_TRUNCATE,
    /// Remove a file or symlink.
    RemoveFile = OP_REMOVE_FILE,
    /// Remove an empty directory.
    RemoveDir = OP_REMOVE_DIR,
    /// Remove a tree, not following symlinks.
    RemoveDirAll = OP_REMOVE_DIR_ALL,
    /// List a directory with each entry's lstat.
    ReadDir = OP_READ_DIR,
    /// SHA-256 of a file.
    Sha256 = OP_SHA256,
    /// Set the modification time.
    SetMtime = OP_SET_MTIME,
    /// Read a range.
    Read = OP_READ,
    /// Write a range.
    Write = OP_WRITE,
}

/// Why a spawn failed, as the agent reported it.
#[derive(Debug)]
pub struct SpawnFailure {
    /// 0: the command; 1: the working directory.
    pub what: u8,
    /// The errno (0 when there was none).
    pub errno: i32,
    /// The agent's words for it.
    pub message: String,
}

/// The kind of error an errno means.
pub fn errno_kind(errno: i32) -> ErrorKind {
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

/// Where a command's outcome is published.
pub type Slot = reach_core::outcome::OutcomeSlot<ExitStatus>;

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

/// Where frames to the agent go: its stdin, as the transport carries it.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// One running agent.
pub struct AgentConn {
    writer: tokio::sync::Mutex<Writer>,
    waiters: Mutex<Option<HashMap<u32, Waiter>>>,
    next: AtomicU32,
    /// Why the connection ended, once it has.
    lost: Mutex<Option<String>>,
    home: String,
    owner: (u32, u32),
    target: String,
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
            .field("target", &self.target)
            .finish_non_exhaustive()
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

pub use reach_core::outcome::publish;

/// What a transport delivers from the agent: its stdout carries the frames, its stderr its
/// diagnostics (kept to explain its end).
#[derive(Debug)]
pub enum Chunk {
    /// Bytes of the agent's stdout.
    Frames(Bytes),
    /// Bytes of the agent's stderr.
    Diagnostics(Bytes),
}

/// The agent's output as a transport delivers it; an `Err` is the transport's failure.
pub type Output = Pin<Box<dyn Stream<Item = std::result::Result<Chunk, String>> + Send>>;

impl AgentConn {
    /// Waits for the agent's hello on a started agent's output, then routes its frames in a
    /// task. `target` names where it runs in messages (``container `web` ``); `on_lost`
    /// explains a lost connection (a backend checks whether its target still runs), given
    /// the end of what the agent wrote to stderr.
    pub async fn start<F, Fut>(
        mut output: Output,
        input: Writer,
        target: String,
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
                    Some(Ok(Chunk::Frames(bytes))) => buf.extend_from_slice(&bytes),
                    Some(Ok(Chunk::Diagnostics(bytes))) => diagnostics.extend_from_slice(&bytes),
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
            target,
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
                    Some(Ok(Chunk::Frames(bytes))) => buf.extend_from_slice(&bytes),
                    Some(Ok(Chunk::Diagnostics(bytes))) => {
                        said.extend_from_slice(&bytes);
                        let excess = said.len().saturating_sub(SAID_KEPT);
                        said.drain(..excess);
                    }
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
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The uid and gid the agent (and every command) runs as.
    pub fn owner(&self) -> (u32, u32) {
        self.owner
    }

    /// Why the agent's connection ended, if it has.
    pub fn lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    fn dropped(&self, why: &str) -> Error {
        Error::new(ErrorKind::SessionDropped, why.to_owned())
    }

    fn route(&self, kind: u8, id: u32, payload: Bytes) {
        let mut guard = lock(&self.waiters);
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
                            "the agent in {} could not tell how the command ended",
                            self.target
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
        *lock(&self.lost) = Some(why.clone());
        // Writers waiting for room in a stdin window give up.
        for (_, credit) in lock(&self.credits).drain() {
            credit.close();
        }
        let waiters = lock(&self.waiters).take();
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
        let mut guard = lock(&self.waiters);
        match guard.as_mut() {
            Some(waiters) => {
                waiters.insert(id, waiter);
                Ok(id)
            }
            None => Err(self.dropped(&self.lost().unwrap_or_default())),
        }
    }

    fn forget(&self, id: u32) {
        if let Some(waiters) = lock(&self.waiters).as_mut() {
            waiters.remove(&id);
        }
    }

    /// Sends one frame.
    pub async fn send(&self, kind: u8, id: u32, payload: &[u8]) -> Result<()> {
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
                format!("the connection to the agent in {} broke: {e}", self.target)
            });
            self.dropped(&why)
        })
    }

    /// Starts a command; returns its id, pid, output pipes and exit slot.
    pub async fn spawn(
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

    /// Opens a TCP connection from the target to `host:port`, carried as a command
    /// whose stdin goes to the peer and whose stdout comes from it.
    pub async fn connect(
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
    pub fn stdin_window(&self, id: u32) -> Arc<Semaphore> {
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
    pub async fn stdin(&self, id: u32, window: &Semaphore, data: &[u8]) -> Result<()> {
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
    pub async fn end_stdin(&self, id: u32) -> Result<()> {
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
    pub async fn signal(&self, id: u32, signo: u8, group: bool) -> Result<()> {
        self.send(SIGNAL, id, &[signo, u8::from(group)]).await
    }

    /// Resizes a command's terminal.
    pub async fn resize(&self, id: u32, size: reach_core::PtySize) -> Result<()> {
        let mut payload = u32::from(size.rows).to_be_bytes().to_vec();
        payload.extend_from_slice(&u32::from(size.cols).to_be_bytes());
        self.send(RESIZE, id, &payload).await
    }

    /// Runs a file operation; `Err` inside is the agent's errno and message.
    pub async fn op(
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
#[derive(Debug)]
pub struct Spawned {
    /// The command's id on this connection.
    pub id: u32,
    /// Its process id on the target (0 for a TCP connection).
    pub pid: u32,
    /// Its stdout (all terminal output, under a PTY).
    pub stdout: PipeReader,
    /// Its stderr.
    pub stderr: PipeReader,
    /// Its outcome, once known.
    pub exit: watch::Receiver<Option<Result<ExitStatus>>>,
    /// Where the outcome is published (a timeout publishes there too).
    pub slot: Arc<Slot>,
}
