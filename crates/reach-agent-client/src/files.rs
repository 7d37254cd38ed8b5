//! File reads and writes through the agent: chunked `pread`/`pwrite` requests, several in
//! flight, as the target's user (so its permissions apply), with no round trip per file
//! through whatever carries the agent.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::{AgentConn, Op};

/// Bytes per request.
pub const CHUNK: usize = 512 * 1024;
/// Requests in flight per open file.
const DEPTH: usize = 6;

pub use reach_agent::protocol::{
    WRITE_APPEND, WRITE_CREATE, WRITE_EXCLUSIVE, WRITE_SYNC, WRITE_TRUNCATE,
};

type Pending<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// Starts `request` now (a request is sent when first polled; these must be in flight
/// together), returning its answer to await in order.
fn start<T: Send + 'static>(
    request: impl Future<Output = io::Result<T>> + Send + 'static,
) -> Pending<T> {
    let task = tokio::spawn(request);
    Box::pin(async move { task.await.map_err(io::Error::other)? })
}

/// One request's answer as an I/O result: the agent's errno, or the connection's loss.
async fn request(agent: Arc<AgentConn>, op: Op, path: String, args: Vec<u8>) -> io::Result<Bytes> {
    match agent.op(op, &path, &args).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(failure)) if failure.errno > 0 => Err(io::Error::from_raw_os_error(failure.errno)),
        Ok(Err(failure)) => Err(io::Error::other(failure.message)),
        Err(err) => Err(io::Error::new(io::ErrorKind::BrokenPipe, err.to_string())),
    }
}

/// Reads `len` bytes at `offset`.
pub async fn read_at(
    agent: Arc<AgentConn>,
    path: String,
    offset: u64,
    len: usize,
) -> io::Result<Bytes> {
    let mut args = offset.to_be_bytes().to_vec();
    args.extend(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    request(agent, Op::Read, path, args).await
}

/// Opens `path` with `flags` and `mode`, writes `data` at `offset`, closes.
pub async fn write_at(
    agent: Arc<AgentConn>,
    path: String,
    flags: u8,
    mode: u32,
    offset: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut args = vec![flags];
    args.extend(mode.to_be_bytes());
    args.extend(offset.to_be_bytes());
    args.extend_from_slice(data);
    request(agent, Op::Write, path, args).await.map(drop)
}

/// A file read by chunks, several requests ahead.
pub struct AgentReader {
    agent: Arc<AgentConn>,
    path: String,
    /// The offset of the next request.
    next: u64,
    /// A short answer was seen: no more requests.
    ended: bool,
    inflight: VecDeque<Pending<Bytes>>,
    current: Bytes,
}

impl AgentReader {
    /// A reader whose first chunk (read to check the file opens) is `first`.
    pub fn new(agent: Arc<AgentConn>, path: String, first: Bytes) -> Self {
        let ended = first.len() < CHUNK;
        AgentReader {
            agent,
            path,
            next: first.len() as u64,
            ended,
            inflight: VecDeque::new(),
            current: first,
        }
    }

    fn fill(&mut self) {
        while !self.ended && self.inflight.len() < DEPTH {
            let request = read_at(self.agent.clone(), self.path.clone(), self.next, CHUNK);
            self.inflight.push_back(start(request));
            self.next += CHUNK as u64;
        }
    }
}

impl AsyncRead for AgentReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let head = self.current.split_to(n);
                buf.put_slice(&head);
                return Poll::Ready(Ok(()));
            }
            self.fill();
            let Some(front) = self.inflight.front_mut() else {
                return Poll::Ready(Ok(()));
            };
            let chunk = ready!(front.as_mut().poll(cx));
            self.inflight.pop_front();
            let chunk = chunk?;
            if chunk.len() < CHUNK {
                // The end: answers still in flight are past it.
                self.ended = true;
                self.inflight.clear();
            }
            if chunk.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.current = chunk;
        }
    }
}

/// A file written by chunks, several requests in flight (one at a time when appending,
/// to keep the order).
pub struct AgentWriter {
    agent: Arc<AgentConn>,
    path: String,
    append: bool,
    sync: bool,
    /// The length the caller declared, held to as the archive path holds it.
    declared: Option<u64>,
    offset: u64,
    inflight: VecDeque<Pending<()>>,
    /// The final `fsync`, once shutdown began.
    closing: Option<Pending<()>>,
    closed: bool,
}

impl AgentWriter {
    /// A writer for a file already opened (created, truncated) by a first request.
    pub fn new(
        agent: Arc<AgentConn>,
        path: String,
        append: bool,
        sync: bool,
        declared: Option<u64>,
    ) -> Self {
        AgentWriter {
            agent,
            path,
            append,
            sync,
            declared,
            offset: 0,
            inflight: VecDeque::new(),
            closing: None,
            closed: false,
        }
    }

    /// Waits for requests until fewer than `limit` are in flight.
    fn drain_to(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<()>> {
        while self.inflight.len() > limit {
            if let Some(front) = self.inflight.front_mut() {
                let done = ready!(front.as_mut().poll(cx));
                self.inflight.pop_front();
                done?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AgentWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed || self.closing.is_some() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if let Some(declared) = self.declared {
            if self.offset + buf.len() as u64 > declared {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "writing more than the declared {declared} bytes to `{}`",
                        self.path
                    ),
                )));
            }
        }
        let limit = if self.append { 0 } else { DEPTH - 1 };
        ready!(self.drain_to(cx, limit))?;
        let n = buf.len().min(CHUNK);
        let flags = if self.append { WRITE_APPEND } else { 0 };
        let data = buf[..n].to_vec();
        let (agent, path, offset) = (self.agent.clone(), self.path.clone(), self.offset);
        self.inflight.push_back(start(async move {
            write_at(agent, path, flags, 0, offset, &data).await
        }));
        self.offset += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.drain_to(cx, 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        ready!(self.drain_to(cx, 0))?;
        if let Some(declared) = self.declared.filter(|&d| d != self.offset) {
            self.closed = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "only {} of the declared {declared} bytes were written to `{}`",
                    self.offset, self.path
                ),
            )));
        }
        if self.sync && self.closing.is_none() {
            let (agent, path) = (self.agent.clone(), self.path.clone());
            self.closing = Some(Box::pin(async move {
                write_at(agent, path, WRITE_SYNC, 0, 0, &[]).await
            }));
        }
        if let Some(closing) = self.closing.as_mut() {
            let done = ready!(closing.as_mut().poll(cx));
            self.closing = None;
            done?;
        }
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl std::fmt::Debug for AgentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AgentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
