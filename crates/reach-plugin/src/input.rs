//! The writing end of an adapter's input (a command's stdin, a TCP connection's outgoing
//! bytes, a file being written): bytes written go out as `input` messages as the adapter's
//! credit allows, and the end of them as `input` with `eof`.
//!
//! A file's writer also waits, in `shutdown`, for the adapter to say the file is complete
//! (`closed`), so that a write that returned is on the target.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use reach_core::{BoxWrite, Error, ErrorKind, Result, TargetDigest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::session::{publish, Session, Slot, WINDOW};

/// Bytes buffered between the caller's writes and the input messages.
const PIPE: usize = 256 * 1024;

/// Copies what is written into `tx` to request `to` as input, then ends its input.
async fn pump(
    session: Arc<Session>,
    to: u64,
    credit: Arc<Semaphore>,
    mut rx: impl AsyncRead + Unpin,
) {
    let mut buf = vec![0u8; WINDOW as usize / 4];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if session.input(to, &credit, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = session.end_input(to);
}

/// A command's (or TCP connection's) input: closing it ends the input.
pub(crate) fn stdin(session: Arc<Session>, to: u64, credit: Arc<Semaphore>) -> BoxWrite {
    let (tx, rx) = tokio::io::duplex(PIPE);
    tokio::spawn(pump(session, to, credit, rx));
    Box::pin(tx)
}

type Closed = watch::Receiver<Option<Result<Option<String>>>>;

/// The wait for a write's `closed`, once its input has ended.
type Finish = Pin<Box<dyn Future<Output = Result<Option<String>>> + Send>>;

/// A file being written: `shutdown` returns once the adapter reported it complete.
pub(crate) struct FileWriter {
    tx: DuplexStream,
    closed: Closed,
    finish: Option<Finish>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter").finish_non_exhaustive()
    }
}

async fn outcome(mut closed: Closed) -> Result<Option<String>> {
    match closed.wait_for(Option::is_some).await {
        Ok(done) => done.clone().unwrap_or_else(|| Ok(None)),
        Err(_) => Err(Error::new(
            ErrorKind::SessionDropped,
            "the write was abandoned before the adapter finished it",
        )),
    }
}

impl FileWriter {
    /// The writer for write request `to`, whose `closed` answer arrives on `closed`; also
    /// what resolves to the adapter's SHA-256 of what landed, when it was asked for one.
    pub(crate) fn start(
        session: Arc<Session>,
        to: u64,
        credit: Arc<Semaphore>,
        closed: oneshot::Receiver<Result<Option<String>>>,
    ) -> (FileWriter, TargetDigest) {
        let (tx, rx) = tokio::io::duplex(PIPE);
        let (slot, watched): (Slot<Option<String>>, Closed) = watch::channel(None);
        let name = session.name().to_owned();
        tokio::spawn(async move {
            let sent = pump(session, to, credit, rx);
            tokio::pin!(sent);
            tokio::pin!(closed);
            // The adapter may close early (a full disk): its answer ends the pump.
            let answer = tokio::select! {
                answer = &mut closed => answer,
                () = &mut sent => closed.await,
            };
            publish(
                &slot,
                answer.unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::SessionDropped,
                        format!("the session with {name} ended before the write was complete"),
                    ))
                }),
            );
        });
        let digest = outcome(watched.clone());
        let digest: TargetDigest = Box::pin(async move {
            match digest.await? {
                Some(hex) => digest_from_hex(&hex),
                None => Err(Error::new(
                    ErrorKind::Protocol,
                    "the adapter closed a hashed write without its sha256",
                )),
            }
        });
        (
            FileWriter {
                tx,
                closed: watched,
                finish: None,
            },
            digest,
        )
    }

    /// The adapter's error, when it gave up on the write; else `err`.
    fn why(&self, err: std::io::Error) -> std::io::Error {
        match &*self.closed.borrow() {
            Some(Err(e)) => std::io::Error::other(e.clone()),
            _ => err,
        }
    }
}

pub(crate) fn digest_from_hex(hex: &str) -> Result<[u8; 32]> {
    let mut digest = [0u8; 32];
    let valid = hex.len() == 64
        && digest.iter_mut().enumerate().all(|(i, byte)| {
            u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
                .map(|b| *byte = b)
                .is_ok()
        });
    if valid {
        Ok(digest)
    } else {
        Err(Error::new(
            ErrorKind::Protocol,
            format!("the adapter sent `{hex}` as a SHA-256 (64 hex digits expected)"),
        ))
    }
}

impl AsyncWrite for FileWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(Err(e)) = &*self.closed.borrow() {
            return Poll::Ready(Err(std::io::Error::other(e.clone())));
        }
        match Pin::new(&mut self.tx).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.why(e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.finish.is_none() {
            match Pin::new(&mut self.tx).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.why(e))),
                Poll::Pending => return Poll::Pending,
            }
            self.finish = Some(Box::pin(outcome(self.closed.clone())));
        }
        match self.finish.as_mut().map(|f| f.as_mut().poll(cx)) {
            Some(Poll::Ready(Ok(_))) => Poll::Ready(Ok(())),
            Some(Poll::Ready(Err(e))) => Poll::Ready(Err(std::io::Error::other(e))),
            _ => Poll::Pending,
        }
    }
}
