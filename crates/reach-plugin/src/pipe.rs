//! The reading end of an adapter's stream (a command's stdout or stderr, a file being read):
//! an `AsyncRead` that acknowledges what it has read, so that the adapter sends more, and
//! tells the adapter when nobody reads any more.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::session::{Session, WINDOW};
use crate::wire::Stream;

/// One stream of request `to`, as its reader sees it.
#[derive(Debug)]
pub(crate) struct StreamReader {
    rx: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
    chunk: Bytes,
    session: Arc<Session>,
    to: u64,
    stream: Stream,
    unacked: u64,
    /// The stream reached its end (or failed): nothing needs telling on drop.
    ended: bool,
}

impl StreamReader {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
        session: Arc<Session>,
        to: u64,
        stream: Stream,
    ) -> Self {
        StreamReader {
            rx,
            chunk: Bytes::new(),
            session,
            to,
            stream,
            unacked: 0,
            ended: false,
        }
    }

    /// Acknowledge once a quarter of the window is read: few messages, and the adapter
    /// never waits while the reader keeps up.
    fn read(&mut self, n: usize) {
        self.unacked += n as u64;
        if self.unacked >= u64::from(WINDOW / 4) {
            self.session.ack(self.to, self.stream, self.unacked);
            self.unacked = 0;
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        if !self.ended {
            self.session.discard(self.to, self.stream);
        }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.chunk = chunk,
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(Ok(()));
                }
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
            match self.rx.try_recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                // An error or the end is returned by the next read.
                Ok(Err(e)) => {
                    self.chunk = Bytes::new();
                    self.rx.close();
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(Err(e));
                    self.rx = rx;
                    break;
                }
                Err(_) => break,
            }
        }
        self.read(read);
        Poll::Ready(Ok(()))
    }
}
