//! Output streams of commands as `AsyncRead`s: an agent's (acknowledged as read, reopening
//! the agent's window) or one fed through a bounded channel (a transport that flow-controls
//! itself, such as an engine exec).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use reach_agent::protocol::{ACK, WINDOW};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::wire::frame;

/// Acknowledges what a reader of an agent's output stream has read, so that the agent sends
/// more (see the module's flow control).
#[derive(Debug)]
pub(crate) struct Acker {
    pub(crate) acks: mpsc::UnboundedSender<Vec<u8>>,
    pub(crate) id: u32,
    pub(crate) stream: u8,
    pub(crate) unacked: u32,
    /// The stream reached its end: the agent's pump is gone, and nothing needs telling.
    pub(crate) ended: bool,
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

/// An output stream fed by a reader task: an agent's (with its acknowledgements), or one
/// fed through a bounded channel (its sender waits for room).
#[derive(Debug)]
pub struct PipeReader {
    rx: Source,
    chunk: Bytes,
}

#[derive(Debug)]
enum Source {
    Agent(mpsc::UnboundedReceiver<Bytes>, Acker),
    Engine(mpsc::Receiver<Bytes>),
}

impl PipeReader {
    /// A stream whose sender waits for room in a bounded channel.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        PipeReader {
            rx: Source::Engine(rx),
            chunk: Bytes::new(),
        }
    }

    /// An agent's stream: bounded by the agent's window, which `acker` reopens.
    pub(crate) fn acked(rx: mpsc::UnboundedReceiver<Bytes>, acker: Acker) -> Self {
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
