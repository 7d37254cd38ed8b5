//! A backend with one deliberate defect, to show that the conformance suite can fail.
//!
//! [`BrokenBackend`] wraps a working backend and breaks exactly one behaviour, chosen by
//! [`Defect`]. `reach-test`'s own tests run each check of [`crate::conformance::CHECKS`]
//! against the wrapper with the defect the check names, and require the check to fail: a check
//! that passes on a broken backend would prove nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    Backend, BackendKind, BoxRead, BoxWrite, Capabilities, Capability, Destination, DirEntry,
    Error, ErrorKind, ExecSpec, ExitStatus, FileSystem, Metadata, Platform, Process, PtySize,
    Result, Signal, WriteOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One way to be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    /// Every exit code is reported as 0.
    ExitCodeZero,
    /// Death by signal is reported as the exit code 128 + n.
    SignalAsCode,
    /// stderr is delivered on stdout.
    MergeStderr,
    /// The last byte of stdout is lost.
    DropLastByte,
    /// Closing stdin never reaches the process.
    NoStdinEof,
    /// Environment variables are dropped.
    IgnoreEnv,
    /// The working directory is ignored.
    IgnoreCwd,
    /// Timeouts are ignored.
    NoTimeout,
    /// More than 8 processes at once are refused.
    MaxSessions,
    /// Resizing the terminal does nothing (but says it worked).
    IgnoreResize,
    /// Closing stdin closes the terminal too: the command's output ends there.
    HangUpWithStdin,
    /// File writes lose their last byte.
    TruncateWrites,
    /// File reads lose their last byte (the file's own hash, computed by the wrapped
    /// backend, still covers every byte).
    TruncateReads,
    /// Non-ASCII characters in listed names become `?`.
    LossyNames,
    /// Changing permissions does nothing (but says it worked).
    IgnoreChmod,
    /// `symlink_metadata` follows the link.
    FollowSymlinks,
    /// `read_dir` leaves out names that start with `.`, as `ls` without `-a` does.
    HideDotfiles,
    /// `create_dir` creates missing parents.
    LenientCreateDir,
    /// `rename` copies, leaving the source in place.
    RenameKeepsSource,
    /// Every file error is reported as [`ErrorKind::Io`].
    ErrorKindsIo,
    /// The platform's architecture is wrong.
    WrongArch,
    /// stdout is read ahead into memory as fast as the command writes, however much.
    UnboundedOutput,
    /// stdin takes every write at once and holds it in memory until the command reads it.
    UnboundedInput,
    /// Ending a TCP connection's writing side never reaches the peer.
    TunnelNoEof,
    /// A command waits to start until every earlier one has ended, as over a connection
    /// whose one loop waits for a reader who fell behind (published russh 0.65).
    OneAtATime,
}

/// A backend that delegates to `inner` except for its [`Defect`].
#[derive(Debug)]
pub struct BrokenBackend {
    inner: Arc<dyn Backend>,
    defect: Defect,
    live: Arc<AtomicUsize>,
}

impl BrokenBackend {
    /// Wraps `inner` with `defect`.
    pub fn new(inner: Arc<dyn Backend>, defect: Defect) -> Self {
        BrokenBackend {
            inner,
            defect,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[async_trait]
impl Backend for BrokenBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn destination(&self) -> &Destination {
        self.inner.destination()
    }
    fn addr(&self) -> String {
        self.inner.addr()
    }
    fn user(&self) -> String {
        self.inner.user()
    }
    async fn connect(&self) -> Result<()> {
        self.inner.connect().await
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    fn last_error(&self) -> Option<Error> {
        self.inner.last_error()
    }
    async fn health_check(&self) -> Result<()> {
        self.inner.health_check().await
    }

    async fn exec(&self, mut spec: ExecSpec) -> Result<Box<dyn Process>> {
        match self.defect {
            Defect::IgnoreEnv => spec.env.clear(),
            Defect::IgnoreCwd => spec.cwd = None,
            Defect::NoTimeout => spec.timeout = None,
            Defect::MaxSessions if self.live.load(Ordering::SeqCst) >= 8 => {
                return Err(Error::new(ErrorKind::Unreachable, "too many sessions"))
            }
            Defect::OneAtATime => {
                while self.live.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
            _ => {}
        }
        let inner = self.inner.exec(spec).await?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(BrokenProcess {
            inner,
            defect: self.defect,
            live: self.live.clone(),
            held_stdin: std::sync::Mutex::new(Vec::new()),
            stdin_closed: Arc::new(tokio::sync::watch::channel(false).0),
        }))
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        Ok(Arc::new(BrokenFs {
            inner: self.inner.fs().await?,
            defect: self.defect,
        }))
    }

    async fn platform(&self) -> Result<Platform> {
        let mut platform = self.inner.platform().await?;
        if self.defect == Defect::WrongArch {
            platform.arch = "unknown".to_owned();
        }
        Ok(platform)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<reach_core::TcpTunnel> {
        let mut tunnel = self.inner.connect_tcp(host, port).await?;
        if self.defect == Defect::TunnelNoEof {
            tunnel.writer = Box::pin(NoShutdown(tunnel.writer));
        }
        Ok(tunnel)
    }
}

/// A writer whose shutdown does nothing (the stream stays open).
struct NoShutdown(BoxWrite);

impl tokio::io::AsyncWrite for NoShutdown {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
}

#[derive(Debug)]
struct BrokenProcess {
    inner: Box<dyn Process>,
    defect: Defect,
    live: Arc<AtomicUsize>,
    /// Real stdin streams kept open for [`Defect::NoStdinEof`].
    held_stdin: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Set once the caller closed stdin, for [`Defect::HangUpWithStdin`].
    stdin_closed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Drop for BrokenProcess {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reader that yields everything `inner` does but its final byte.
fn without_last_byte(mut inner: BoxRead) -> BoxRead {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut pending: Option<u8> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = inner.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Some(byte) = pending.take() {
                if tx.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
            let (body, last) = buf[..n].split_at(n - 1);
            if tx.write_all(body).await.is_err() {
                return;
            }
            pending = last.first().copied();
        }
        let _ = tx.shutdown().await;
    });
    Box::pin(rx)
}

/// A reader that yields what `inner` does until `closed` turns true, then ends.
fn until_closed(mut inner: BoxRead, mut closed: tokio::sync::watch::Receiver<bool>) -> BoxRead {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let hung_up = async {
            while !*closed.borrow_and_update() {
                if closed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::pin!(hung_up);
        loop {
            tokio::select! {
                () = &mut hung_up => break,
                read = inner.read(&mut buf) => match read {
                    Ok(n) if n > 0 => {
                        if tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    _ => break,
                },
            }
        }
        let _ = tx.shutdown().await;
    });
    Box::pin(rx)
}

/// Reads `inner` ahead into an unbounded queue as fast as it yields, and hands the bytes on
/// through a small pipe: [`Defect::UnboundedOutput`] and [`Defect::UnboundedInput`].
fn read_ahead(mut inner: BoxRead) -> BoxRead {
    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = inner.read(&mut buf).await {
            if n == 0 || queue.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        while let Some(chunk) = queued.recv().await {
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = tx.shutdown().await;
    });
    Box::pin(rx)
}

#[async_trait]
impl Process for BrokenProcess {
    fn streams(&self) -> Option<&reach_core::Streams> {
        None
    }

    fn take_stdin(&self) -> Option<BoxWrite> {
        let mut real = self.inner.take_stdin()?;
        if self.defect == Defect::UnboundedInput {
            let (tx, rx) = tokio::io::duplex(64 * 1024);
            let mut queued = read_ahead(Box::pin(rx));
            tokio::spawn(async move {
                if tokio::io::copy(&mut queued, &mut real).await.is_ok() {
                    let _ = real.shutdown().await;
                }
            });
            return Some(Box::pin(tx));
        }
        if self.defect == Defect::HangUpWithStdin {
            let (tx, mut rx) = tokio::io::duplex(64 * 1024);
            let closed = self.stdin_closed.clone();
            tokio::spawn(async move {
                if tokio::io::copy(&mut rx, &mut real).await.is_ok() {
                    let _ = real.shutdown().await;
                }
                closed.send_replace(true);
            });
            return Some(Box::pin(tx));
        }
        if self.defect != Defect::NoStdinEof {
            return Some(real);
        }
        let (tx, mut rx) = tokio::io::duplex(64 * 1024);
        let (keep_tx, keep_rx) = tokio::sync::oneshot::channel::<()>();
        if let Ok(mut held) = self.held_stdin.lock() {
            held.push(keep_tx);
        }
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rx, &mut real).await;
            let _ = real.flush().await;
            // Never shut `real` down: hold it open until the process is dropped.
            let _ = keep_rx.await;
        });
        Some(Box::pin(tx))
    }

    fn take_stdout(&self) -> Option<BoxRead> {
        let stdout = self.inner.take_stdout()?;
        match self.defect {
            Defect::DropLastByte => Some(without_last_byte(stdout)),
            Defect::UnboundedOutput => Some(read_ahead(stdout)),
            Defect::HangUpWithStdin => Some(until_closed(stdout, self.stdin_closed.subscribe())),
            Defect::MergeStderr => match self.inner.take_stderr() {
                Some(stderr) => Some(Box::pin(stdout.chain(stderr))),
                None => Some(stdout),
            },
            _ => Some(stdout),
        }
    }

    fn take_stderr(&self) -> Option<BoxRead> {
        if self.defect == Defect::MergeStderr {
            return None;
        }
        self.inner.take_stderr()
    }

    async fn wait(&self) -> Result<ExitStatus> {
        let status = self.inner.wait().await?;
        Ok(match (self.defect, status) {
            (Defect::ExitCodeZero, ExitStatus::Code(_)) => ExitStatus::Code(0),
            (Defect::SignalAsCode, status @ ExitStatus::Signal { .. }) => {
                ExitStatus::Code(status.shell_code())
            }
            (_, status) => status,
        })
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        self.inner.signal(signal).await
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if self.defect == Defect::IgnoreResize {
            return Ok(());
        }
        self.inner.resize(size).await
    }
}

#[derive(Debug)]
struct BrokenFs {
    inner: Arc<dyn FileSystem>,
    defect: Defect,
}

impl BrokenFs {
    fn map<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(e) if self.defect == Defect::ErrorKindsIo => {
                Err(Error::new(ErrorKind::Io, e.message()))
            }
            other => other,
        }
    }
}

#[async_trait]
impl FileSystem for BrokenFs {
    /// The inner file system's, less `HostFiles`: a broken backend stands for a target
    /// elsewhere, so callers must not take its paths for this machine's.
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities().without(Capability::HostFiles)
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        let real = self.map(self.inner.open_read(path).await)?;
        if self.defect != Defect::TruncateReads {
            return Ok(real);
        }
        Ok(without_last_byte(real))
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        self.map(self.inner.sha256(path).await)
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        let real = self.map(self.inner.open_write(path, options).await)?;
        if self.defect != Defect::TruncateWrites {
            return Ok(real);
        }
        let (tx, rx) = tokio::io::duplex(64 * 1024);
        let mut shortened = without_last_byte(Box::pin(rx));
        let mut real = real;
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut shortened, &mut real).await;
            let _ = real.shutdown().await;
        });
        Ok(Box::pin(tx))
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        self.map(self.inner.metadata(path).await)
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        if self.defect == Defect::FollowSymlinks {
            return self.inner.metadata(path).await;
        }
        self.map(self.inner.symlink_metadata(path).await)
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut entries = self.map(self.inner.read_dir(path).await)?;
        if self.defect == Defect::LossyNames {
            for entry in &mut entries {
                entry.name = entry
                    .name
                    .chars()
                    .map(|c| if c.is_ascii() { c } else { '?' })
                    .collect();
            }
        }
        if self.defect == Defect::HideDotfiles {
            entries.retain(|e| !e.name.starts_with('.'));
        }
        Ok(entries)
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        if self.defect == Defect::LenientCreateDir {
            return self.inner.create_dir_all(path).await;
        }
        self.map(self.inner.create_dir(path).await)
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.map(self.inner.create_dir_all(path).await)
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        self.map(self.inner.remove_file(path).await)
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        self.map(self.inner.remove_dir(path).await)
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.map(self.inner.remove_dir_all(path).await)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        if self.defect == Defect::RenameKeepsSource {
            let mut reader = self.inner.open_read(from).await?;
            let mut writer = self.inner.open_write(to, WriteOptions::default()).await?;
            tokio::io::copy(&mut reader, &mut writer)
                .await
                .map_err(|e| Error::io("copy", e))?;
            return writer.shutdown().await.map_err(|e| Error::io("copy", e));
        }
        self.map(self.inner.rename(from, to).await)
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        if self.defect == Defect::IgnoreChmod {
            return Ok(());
        }
        self.map(self.inner.set_permissions(path, mode).await)
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        self.map(self.inner.truncate(path, len).await)
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        self.map(self.inner.read_link(path).await)
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.map(self.inner.symlink(target, link).await)
    }

    async fn home_dir(&self) -> Result<String> {
        self.map(self.inner.home_dir().await)
    }
}
