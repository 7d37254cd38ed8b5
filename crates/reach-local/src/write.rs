//! Streaming writes to a local file: each buffer the caller hands over is written on a
//! blocking thread while the caller prepares the next one.
//!
//! The write(2) calls are kept to [`WRITE_CALL`] bytes: the kernel backs a large write with
//! large page cache folios, which on virtual machines can cost several times more kernel
//! time to fill than small ones, while small calls cost little more when it does not
//! (docs/BENCHMARKS.md, under "where the time of the 1 GiB copy goes", has the figures).

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

/// The most one write(2) call is given.
const WRITE_CALL: usize = 64 * 1024;

/// The most taken from the caller at once (it waits for the write before).
const TAKE_MAX: usize = 1024 * 1024;

/// Bytes written between two background `fdatasync`s of a synced file.
const FLUSH_EVERY: u64 = 32 << 20;

type Written = JoinHandle<(std::io::Result<()>, Vec<u8>)>;

/// A local file open for streaming writes. With `sync`, `shutdown` returns once the file
/// is on stable storage; while it is written, every [`FLUSH_EVERY`] bytes a background
/// `fdatasync` (at most one at a time) starts the disk on what is there, so that the final
/// `fsync` does not wait for the whole file after the last byte arrived.
pub(crate) struct LocalWriter {
    file: Arc<std::fs::File>,
    sync: bool,
    /// The write in flight; it gives its buffer back for the next one.
    writing: Option<Written>,
    spare: Vec<u8>,
    /// Bytes written since the last background flush started.
    unflushed: u64,
    /// The background flush in flight; its result does not matter, the final `fsync`'s does.
    flushing: Option<JoinHandle<()>>,
    syncing: Option<JoinHandle<std::io::Result<()>>>,
}

impl LocalWriter {
    pub(crate) fn new(file: std::fs::File, sync: bool) -> Self {
        LocalWriter {
            file: Arc::new(file),
            sync,
            writing: None,
            spare: Vec::new(),
            unflushed: 0,
            flushing: None,
            syncing: None,
        }
    }

    /// Waits for the write in flight; its error is this call's.
    fn poll_written(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(writing) = self.writing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let joined = ready!(Pin::new(writing).poll(cx));
        self.writing = None;
        let (result, buf) = joined.map_err(std::io::Error::other)?;
        self.spare = buf;
        Poll::Ready(result)
    }

    /// Starts a background flush once enough was written and the last one is done.
    fn flush_behind(&mut self, written: usize) {
        if !self.sync {
            return;
        }
        self.unflushed += written as u64;
        if self.unflushed < FLUSH_EVERY || self.flushing.as_ref().is_some_and(|f| !f.is_finished())
        {
            return;
        }
        let file = self.file.clone();
        self.unflushed = 0;
        self.flushing = Some(tokio::task::spawn_blocking(move || {
            let _ = file.sync_data();
        }));
    }
}

/// Writes all of `data` in calls of at most [`WRITE_CALL`] bytes.
fn write_in_calls(mut file: &std::fs::File, data: &[u8]) -> std::io::Result<()> {
    for piece in data.chunks(WRITE_CALL) {
        file.write_all(piece)?;
    }
    Ok(())
}

impl AsyncWrite for LocalWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_written(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(TAKE_MAX);
        let mut data = std::mem::take(&mut self.spare);
        data.clear();
        data.extend_from_slice(&buf[..n]);
        let file = self.file.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result = write_in_calls(&file, &data);
            (result, data)
        }));
        self.flush_behind(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_written(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_written(cx))?;
        if !self.sync {
            return Poll::Ready(Ok(()));
        }
        if self.syncing.is_none() {
            let file = self.file.clone();
            self.flushing = None;
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_all()));
        }
        let Some(syncing) = self.syncing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let done = ready!(Pin::new(syncing).poll(cx))
            .map_err(std::io::Error::other)
            .and_then(|synced| synced);
        self.syncing = None;
        // Once on disk, a second shutdown has nothing to do; a failed sync fails again.
        if done.is_ok() {
            self.sync = false;
        }
        Poll::Ready(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[tokio::test]
    async fn every_byte_lands_in_order_whatever_the_sizes_handed_over() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let file = std::fs::File::create(&path).unwrap();
            let mut writer = LocalWriter::new(file, sync);
            let data = pattern(3 * TAKE_MAX + 12_345);
            // Pieces smaller, equal and larger than one call and than what is taken at once.
            let mut at = 0;
            for size in [
                1,
                WRITE_CALL - 1,
                WRITE_CALL + 1,
                3 * TAKE_MAX / 2,
                5,
                usize::MAX,
            ] {
                let end = at + size.min(data.len() - at);
                writer.write_all(&data[at..end]).await.unwrap();
                at = end;
            }
            writer.shutdown().await.unwrap();
            writer.shutdown().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "sync={sync}");
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_not_lost() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut writer = LocalWriter::new(full, false);
        // The first write is taken and fails in the background; the error comes with the
        // next call, at the latest at shutdown.
        let wrote = writer.write_all(&pattern(100_000)).await;
        let shut = writer.shutdown().await;
        let err = wrote
            .err()
            .or(shut.err())
            .expect("a write to /dev/full fails");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
