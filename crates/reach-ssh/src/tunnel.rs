//! TCP connections made by the server for us (`direct-tcpip` channels, what `ssh -L` opens).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use reach_core::{tcp_address, Error, ErrorKind, Result, TcpTunnel};
use russh::{ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::sftp::ChunkReader;

type Handle = russh::client::Handle<crate::HostKeyCheck>;

/// Chunks of the peer's bytes held between the channel and the reader.
const QUEUED: usize = 16;

/// Asks the server at `addr` to connect to `host:port` and carries the connection.
pub(crate) async fn open(handle: &Handle, addr: &str, host: &str, port: u16) -> Result<TcpTunnel> {
    let target = tcp_address(host, port);
    let channel = handle
        .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
        .await
        .map_err(|e| refused(addr, &target, e))?;
    let (mut read_half, write_half) = channel.split();
    let writer = write_half.make_writer();
    let (tx, rx) = mpsc::channel(QUEUED);
    let (closer, mut closed) = oneshot::channel::<()>();
    let guard = Arc::new(CloseOnDrop(Some(closer)));
    let lost = format!("the SSH connection to `{addr}` carrying {target} was lost");
    let reset = format!("`{addr}` closed the connection to {target} without ending it");
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            let msg = tokio::select! {
                msg = read_half.wait() => msg,
                // The caller dropped both ends: the server closes its TCP connection.
                _ = &mut closed => {
                    let _ = write_half.close().await;
                    return;
                }
            };
            let failure = match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(queue) = &tx {
                        // A caller that dropped the reader but still writes: drop the bytes.
                        let _ = queue.send(Ok(data.to_vec())).await;
                    }
                    continue;
                }
                Some(ChannelMsg::Eof) => {
                    tx = None;
                    continue;
                }
                Some(ChannelMsg::Close) => (std::io::ErrorKind::ConnectionReset, &reset),
                Some(_) => continue,
                None => (std::io::ErrorKind::BrokenPipe, &lost),
            };
            // Closed: after the peer's end of stream that is the end; before it, the bytes
            // stopped short and the reader says so.
            if let Some(queue) = tx.take() {
                let _ = queue
                    .send(Err(std::io::Error::new(failure.0, failure.1.clone())))
                    .await;
            }
            return;
        }
    });
    Ok(TcpTunnel {
        reader: Box::pin(Incoming {
            chunks: ChunkReader::new(rx),
            _guard: guard.clone(),
        }),
        writer: Box::pin(Outgoing {
            inner: Box::pin(writer),
            _guard: guard,
        }),
    })
}

/// Tells the channel task when the caller has dropped both ends.
struct CloseOnDrop(Option<oneshot::Sender<()>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(closer) = self.0.take() {
            let _ = closer.send(());
        }
    }
}

/// The error for a `direct-tcpip` channel the server would not open.
fn refused(addr: &str, target: &str, e: russh::Error) -> Error {
    match e {
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => Error::new(
            ErrorKind::Unreachable,
            format!("`{addr}` could not connect to {target} (is anything listening there?)"),
        ),
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited) => {
            Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "`{addr}` does not allow TCP forwarding to {target} (sshd's \
                     AllowTcpForwarding and PermitOpen decide)"
                ),
            )
        }
        russh::Error::ChannelOpenFailure(other) => Error::new(
            ErrorKind::Unreachable,
            format!("`{addr}` did not open a connection to {target}: {other:?}"),
        ),
        other => Error::new(
            ErrorKind::SessionDropped,
            format!("asking `{addr}` to connect to {target} failed: {other}"),
        ),
    }
}

/// The peer's bytes, as the channel task hands them over; an error after them when the
/// channel ended without the peer's end of stream.
struct Incoming {
    chunks: ChunkReader,
    _guard: Arc<CloseOnDrop>,
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.chunks).poll_read(cx, buf)
    }
}

/// The channel's writer; shutting it down sends the server our end of stream.
struct Outgoing {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    _guard: Arc<CloseOnDrop>,
}

impl AsyncWrite for Outgoing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}
