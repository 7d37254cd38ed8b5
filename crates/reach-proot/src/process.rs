//! A command under proot: the local process of `proot` itself, its stderr (or terminal)
//! passed through [`StatusFilter`], whose report of the command's end `wait` returns.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use reach_core::sync::lock;
use reach_core::{BoxRead, ExitStatus, Process, PtySize, Result, Signal, Streams};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::status::{Ended, StatusFilter};

/// A stream of proot's (its command's stderr, or the terminal) with proot's status lines
/// taken out.
struct Filtered {
    inner: BoxRead,
    filter: StatusFilter,
    out: Vec<u8>,
    at: usize,
    buf: Vec<u8>,
    ended: bool,
    /// Where the end proot reported is left for `wait`.
    report: Arc<Mutex<Option<Ended>>>,
    /// Set once the stream has ended (dropped with it), for a `wait` that needs the report.
    done: tokio::sync::watch::Sender<bool>,
}

impl AsyncRead for Filtered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.at < this.out.len() {
                let n = (this.out.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.out[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.at = 0;
            let mut read = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.ended = true;
                    this.filter.finish(&mut this.out);
                    this.done.send_replace(true);
                }
                Poll::Ready(Ok(())) => {
                    let filled = read.filled().len();
                    this.filter.feed(&this.buf[..filled], &mut this.out);
                }
            }
            if let Some(ended) = this.filter.ended() {
                *lock(&this.report) = Some(ended);
            }
        }
    }
}

/// A command running under proot.
pub(crate) struct ProotProcess {
    inner: Box<dyn Process>,
    streams: Streams,
    report: Arc<Mutex<Option<Ended>>>,
    /// Whether the filtered stream has ended; its sender went with the stream.
    done: tokio::sync::watch::Receiver<bool>,
    pty: bool,
}

impl std::fmt::Debug for ProotProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProotProcess").finish_non_exhaustive()
    }
}

impl ProotProcess {
    /// Wraps the local process of `proot`; `pty`: its terminal output (stdout) carries
    /// proot's lines, else its stderr does.
    pub(crate) fn new(inner: Box<dyn Process>, pty: bool) -> Self {
        let report = Arc::new(Mutex::new(None));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let filtered = |stream: Option<BoxRead>| {
            stream.map(|inner| {
                Box::pin(Filtered {
                    inner,
                    filter: StatusFilter::default(),
                    out: Vec::new(),
                    at: 0,
                    buf: vec![0u8; 64 * 1024],
                    ended: false,
                    report: report.clone(),
                    done: done_tx.clone(),
                }) as BoxRead
            })
        };
        let stdin = inner.take_stdin();
        let (stdout, stderr) = if pty {
            (filtered(inner.take_stdout()), None)
        } else {
            (inner.take_stdout(), filtered(inner.take_stderr()))
        };
        ProotProcess {
            inner,
            streams: Streams::new(stdin, stdout, stderr),
            report,
            done,
            pty,
        }
    }
}

#[async_trait]
impl Process for ProotProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        let status = self.inner.wait().await?;

        // proot has exited: its report is in the stream it shares with the command, whose
        // end it is (the last line is the last process's end), unless something the command
        // started keeps the stream open (not waited for long).
        let untaken = if self.pty {
            self.streams.take_stdout()
        } else {
            self.streams.take_stderr()
        };
        let limit = std::time::Duration::from_secs(2);
        match untaken {
            // Nobody took it: read it here, for the report.
            Some(mut stream) => {
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(limit, stream.read_to_end(&mut sink)).await;
            }
            // Its reader is reading it: wait for the end it reaches.
            None => {
                let mut done = self.done.clone();
                let _ = tokio::time::timeout(limit, done.wait_for(|ended| *ended)).await;
            }
        }
        Ok(match *lock(&self.report) {
            Some(Ended::Signal(number)) => ExitStatus::Signal {
                signal: Signal::from_number(number),
                core_dumped: false,
            },
            Some(Ended::Code(code)) => ExitStatus::Code(code),
            None => status,
        })
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        self.inner.signal(signal).await
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        self.inner.resize(size).await
    }
}
