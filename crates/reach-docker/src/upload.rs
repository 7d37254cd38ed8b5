//! A file written through the archive API: a tar stream into `PUT /archive`, fed as the
//! caller writes (or buffered, when its size is not known up front).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bollard::query_parameters::UploadToContainerOptionsBuilder;
use bytes::Bytes;
use futures_util::Stream;
use reach_core::{Error, ErrorKind, Result};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::archive::{archive_error, first_entry};
use crate::tar::{self, Header};
use crate::Conn;

/// Bytes per chunk of a streamed upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

type UploadResult = tokio::task::JoinHandle<Result<()>>;

/// A file being written: a tar stream into `PUT /archive`, fed as the caller writes.
pub(crate) struct Upload {
    /// Streaming: the channel into the request body; `None` once finished.
    tx: Option<PollSender<std::result::Result<Bytes, std::io::Error>>>,
    /// Buffering (size unknown): everything written so far.
    buffer: Option<Vec<u8>>,
    header: Header,
    declared: Option<u64>,
    written: u64,
    task: Option<UploadResult>,
    conn: Arc<Conn>,
    dir: String,
    path: String,
    prefix: Option<u64>,
}

impl Upload {
    pub(crate) async fn new(
        conn: Arc<Conn>,
        dir: String,
        path: String,
        header: Header,
        declared: Option<u64>,
        prefix: Option<u64>,
    ) -> Result<Self> {
        let mut upload = Upload {
            tx: None,
            buffer: None,
            header,
            declared,
            written: 0,
            task: None,
            conn,
            dir,
            path,
            prefix,
        };
        match declared {
            Some(len) => upload.begin(len).await?,
            None => upload.buffer = Some(Vec::new()),
        }
        Ok(upload)
    }

    /// Starts the request for a body of `len` new bytes.
    async fn begin(&mut self, len: u64) -> Result<()> {
        let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
        let mut header = self.header.clone();
        header.size = len + self.prefix.unwrap_or(0);
        // Appending: the old contents go first, straight from the container.
        if self.prefix.is_some() {
            let (_, mut old) = first_entry(&self.conn, &self.path).await?;
            let tx = tx.clone();
            tx.send(Ok(Bytes::from(tar::header_bytes(&header))))
                .await
                .map_err(|_| self.aborted())?;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            loop {
                use tokio::io::AsyncReadExt;
                let n = old
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io(format_args!("append to `{}`", self.path), e))?;
                if n == 0 {
                    break;
                }
                tx.send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .map_err(|_| self.aborted())?;
            }
        } else {
            tx.send(Ok(Bytes::from(tar::header_bytes(&header))))
                .await
                .map_err(|_| self.aborted())?;
        }
        let body = tokio_stream_from(rx);
        let conn = self.conn.clone();
        let (dir, path) = (self.dir.clone(), self.path.clone());
        self.task = Some(tokio::spawn(async move {
            let options = UploadToContainerOptionsBuilder::new().path(&dir).build();
            conn.docker
                .upload_to_container(&conn.id, Some(options), bollard::body_try_stream(body))
                .await
                .map_err(|e| archive_error(&conn, &path, "writing", e))
        }));
        self.tx = Some(PollSender::new(tx));
        self.header.size = header.size;
        Ok(())
    }

    fn aborted(&self) -> Error {
        Error::new(
            ErrorKind::SessionDropped,
            format!("the engine stopped taking `{}`", self.path),
        )
    }

    /// The request's own error, once it has ended early.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.task.as_mut() {
            Some(task) => match Pin::new(task).poll(cx) {
                Poll::Ready(Ok(Err(e))) => Poll::Ready(e.into()),
                Poll::Ready(_) => Poll::Ready(self.aborted().into()),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(self.aborted().into()),
        }
    }
}

/// A `Stream` over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl AsyncWrite for Upload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(buffer) = self.buffer.as_mut() {
            buffer.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        if let Some(declared) = self.declared {
            if self.written + buf.len() as u64 > declared {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "more than the declared {declared} bytes written to `{}`",
                        self.path
                    ),
                )));
            }
        }
        let this = &mut *self;
        let Some(tx) = this.tx.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other("write after shutdown")));
        };
        match tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return this.poll_failure(cx).map(Err),
            Poll::Pending => return Poll::Pending,
        }
        let n = buf.len().min(UPLOAD_CHUNK);
        if tx.send_item(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
            return this.poll_failure(cx).map(Err);
        }
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(data) = this.buffer.take() {
            // Size now known: stream the buffer through the same path.
            let len = data.len() as u64;
            this.declared = Some(len);
            let conn = this.conn.clone();
            let header = this.header.clone();
            let (dir, path, prefix) = (this.dir.clone(), this.path.clone(), this.prefix);
            this.task = Some(tokio::spawn(async move {
                let mut upload = Upload::new(conn, dir, path, header, Some(len), prefix).await?;
                use tokio::io::AsyncWriteExt;
                let context = format!("write `{}`", upload.path);
                upload
                    .write_all(&data)
                    .await
                    .map_err(|e| Error::io(&context, e))?;
                upload.shutdown().await.map_err(|e| Error::io(&context, e))
            }));
            this.written = len;
            this.tx = None;
            let task = this.task.as_mut().map(Pin::new);
            return match task {
                Some(task) => match task.poll(cx) {
                    Poll::Ready(Ok(result)) => Poll::Ready(result.map_err(Into::into)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Ready(Ok(())),
            };
        }
        if let Some(tx) = this.tx.as_mut() {
            let declared = this.declared.unwrap_or(this.written);
            if this.written < declared {
                // Short: fail the request so the engine does not keep a partial file.
                let short = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "only {} of the declared {declared} bytes were written to `{}`",
                        this.written, this.path
                    ),
                );
                match tx.poll_reserve(cx) {
                    Poll::Ready(Ok(())) => {
                        let _ = tx.send_item(Err(std::io::Error::other("short write")));
                    }
                    Poll::Ready(Err(_)) => {}
                    Poll::Pending => return Poll::Pending,
                }
                this.tx = None;
                return Poll::Ready(Err(short));
            }
            match tx.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    let mut tail = tar::body_padding(this.header.size);
                    tail.extend(tar::end_of_archive());
                    let _ = tx.send_item(Ok(Bytes::from(tail)));
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
            this.tx = None;
        }
        match this.task.as_mut() {
            Some(task) => match Pin::new(task).poll(cx) {
                Poll::Ready(Ok(result)) => {
                    this.task = None;
                    Poll::Ready(result.map_err(Into::into))
                }
                Poll::Ready(Err(e)) => {
                    this.task = None;
                    Poll::Ready(Err(std::io::Error::other(e)))
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(Ok(())),
        }
    }
}
