//! One regular file: filled into its temporary (resumed where it can be), hashed as it
//! streams, verified, renamed into place.

use std::sync::Arc;

use reach_core::{
    BoxRead, Capability, Error, ErrorKind, FileSystem, Metadata, Result, WriteOptions,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::*;

/// Chunks read ahead of the writer.
const READ_AHEAD: usize = 8;
/// Files at least this large are verified with the target's own hash when it has one; a
/// smaller file is cheaper to read back than to start a hashing command for.
const REMOTE_HASH_MIN: u64 = 8 * 1024 * 1024;
/// How much of the end of an interrupted part `resume` distrusts and writes again: more than
/// any backend keeps in flight (SFTP 16 × 256 KiB, the Docker agent 6 × 512 KiB).
const RESUME_DISTRUST: u64 = 8 * 1024 * 1024;
/// How long a failed write waits for the target's hasher to let go of the part.
const HASHER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A filled temporary: the digest of the whole source, its length, and the bytes kept from
/// an interrupted copy.
struct Filled {
    digest: [u8; 32],
    bytes: u64,
    kept: u64,
    /// The destination's hash of the file, computed while it was written, where it can.
    landed: Option<reach_core::TargetDigest>,
}

/// What a filled temporary is checked against: the digest of the bytes sent, and the
/// source's own hash of the file when it computed one.
struct Check<'s, 'a> {
    src: &'s Side<'a>,
    from: &'s str,
    digest: [u8; 32],
    theirs: Option<[u8; 32]>,
    landed: Option<reach_core::TargetDigest>,
}

impl Transfer {
    /// Copies one regular file through its temporary.
    #[tracing::instrument(name = "copy", level = "debug", skip_all, fields(from = %from))]
    pub(crate) async fn copy_file(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        from: &str,
        to: &str,
        meta: &Metadata,
    ) -> Result<FileReport> {
        let part = part_path(to);
        let id = self.temps.add(dst.fs, &part);
        // Into this machine from a remote one: the source hashes the file on its own machine
        // while it streams, instead of this machine reading the whole copy back afterwards.
        let source_hash = self.options.verify
            && meta.len >= REMOTE_HASH_MIN
            && src.fs.capabilities().has(Capability::Sha256)
            && !src.fs.capabilities().has(Capability::HostFiles)
            && dst.fs.capabilities().has(Capability::HostFiles);
        tracing::debug!(
            "copying `{from}` ({} bytes) to `{to}` through `{part}`{}",
            meta.len,
            if source_hash {
                ", hashed at the source as it streams"
            } else {
                ""
            }
        );
        let filled = self.fill_part(src, dst, from, &part, meta);
        let (outcome, theirs) = if source_hash {
            // A failed fill drops the hash at once; a hash that fails is no failure of the
            // copy, which is then checked the usual way.
            let hash = async { Ok(src.fs.sha256(from).await.ok()) };
            match tokio::try_join!(filled, hash) {
                Ok((filled, theirs)) => (Ok(filled), theirs),
                Err(e) => (Err(e), None),
            }
        } else {
            (filled.await, None)
        };
        let outcome = match outcome {
            Ok(Filled {
                digest,
                bytes,
                kept: resumed_from,
                landed,
            }) => {
                let check = Check {
                    src,
                    from,
                    digest,
                    theirs,
                    landed,
                };
                self.finish(dst, &part, to, meta, check)
                    .await
                    .map(|verified| FileReport {
                        source: describe(src.backend, from),
                        dest: describe(dst.backend, to),
                        bytes,
                        sha256: digest,
                        resumed_from,
                        verified,
                    })
            }
            Err(e) => Err(e),
        };
        if outcome.is_err() && !self.options.resume {
            let _ = dst.fs.remove_file(&part).await;
        }
        self.temps.done(id);
        outcome
    }

    /// Writes the source into the temporary (continuing a verified prefix with `resume`);
    /// returns the digest of the whole source, its length and the bytes kept.
    async fn fill_part(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        from: &str,
        part: &str,
        meta: &Metadata,
    ) -> Result<Filled> {
        let mut reader = src.fs.open_read(from).await?;
        let mut hasher = Sha256::new();
        let mut kept = 0;
        if self.options.resume {
            if let Some(len) = self.resumable(dst, part, meta.len).await {
                // Pipelined writes land out of order: a writer killed mid-copy can leave
                // holes in the last few chunks. Keep the part only up to well before its end.
                let len = len.saturating_sub(RESUME_DISTRUST);
                tracing::info!("resuming `{part}`: keeping its first {len} bytes");
                if len > 0 {
                    dst.fs.truncate(part, len).await?;
                }
                // Exactly `len` bytes, read back: a writer killed a moment ago may leave a
                // server still appending what it had received, so the whole file is no
                // stable measure.
                let mut prefix = dst.fs.open_read(part).await?;
                let mut sum = Sha256::new();
                hash_prefix(&mut prefix, &mut sum, len).await.map_err(|e| {
                    Error::io(format_args!("read `{}`", describe(dst.backend, part)), e)
                })?;
                drop(prefix);
                let wanted: [u8; 32] = sum.finalize().into();
                let read = hash_prefix(&mut reader, &mut hasher, len)
                    .await
                    .map_err(|e| {
                        Error::io(format_args!("read `{}`", describe(src.backend, from)), e)
                    })?;
                if len > 0 && read == len && hasher.clone().finalize().as_slice() == wanted {
                    kept = len;
                    self.progress.advance(len);
                } else {
                    reader = src.fs.open_read(from).await?;
                    hasher = Sha256::new();
                }
            }
        }
        let options = WriteOptions {
            append: kept > 0,
            mode: (meta.mode & 0o777) | 0o600,
            len: Some(meta.len - kept),
            sync: self.options.sync,
            ..WriteOptions::default()
        };
        let shown_from = describe(src.backend, from);
        let shown_to = describe(dst.backend, part);
        // A large file is hashed by the destination as it lands, where it can, rather than
        // read back in full once it is there.
        let (writer, landed) = if self.options.verify
            && meta.len >= REMOTE_HASH_MIN
            && dst.fs.capabilities().has(Capability::HashedWrite)
        {
            match dst.fs.open_write_hashed(part, options).await {
                Ok((writer, landed)) => (writer, Some(landed)),
                Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {
                    (dst.fs.open_write(part, options).await?, None)
                }
                Err(e) => return Err(e),
            }
        } else {
            (dst.fs.open_write(part, options).await?, None)
        };
        let pumped = pump(
            reader,
            writer,
            &mut hasher,
            meta.len - kept >= REMOTE_HASH_MIN,
            &self.progress,
            &shown_from,
            &shown_to,
        )
        .await;
        let sent = match pumped {
            Ok(sent) => sent,
            Err(e) => {
                // The target's hasher may still hold the part open: its input ended with the
                // writer, so let it finish, and the part's space is free once the failure is
                // reported (a full disk must not stay full after reach has exited).
                if let Some(landed) = landed {
                    let _ = tokio::time::timeout(HASHER_GRACE, landed).await;
                }
                return Err(e);
            }
        };
        Ok(Filled {
            digest: hasher.finalize().into(),
            bytes: kept + sent,
            kept,
            landed,
        })
    }

    /// The length of a temporary worth continuing: a file no longer than the source.
    async fn resumable(&self, dst: &Side<'_>, part: &str, len: u64) -> Option<u64> {
        let meta = dst.fs.symlink_metadata(part).await.ok()?;
        (meta.is_file() && meta.len > 0 && meta.len <= len).then_some(meta.len)
    }

    /// Verifies, stamps and renames a filled temporary into place.
    async fn finish(
        &self,
        dst: &Side<'_>,
        part: &str,
        to: &str,
        meta: &Metadata,
        check: Check<'_, '_>,
    ) -> Result<Verified> {
        let digest = check.digest;
        let verified = match check.theirs {
            _ if !self.options.verify => Verified::Skipped,
            Some(theirs) if theirs == digest => Verified::SourceHash,
            Some(theirs) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "the bytes received for `{}` do not match `{}` (sha256 {} on the \
                         source, {} received): it changed while it was copied, or the \
                         bytes were damaged on the way; the destination was left as it was",
                        describe(dst.backend, to),
                        describe(check.src.backend, check.from),
                        hex(&theirs),
                        hex(&digest)
                    ),
                ))
            }
            None => {
                // Hashed as it landed; a hasher that failed is no verdict, so read it instead.
                let landed = match check.landed {
                    Some(landed) => landed.await.ok(),
                    None => None,
                };
                let (got, how) = match landed {
                    Some(got) => (got, Verified::TargetHash),
                    None => hash_target(dst.fs, part, meta.len).await?,
                };
                if got != digest {
                    return Err(not_as_sent(dst.backend, to, &digest, Some(&got)));
                }
                how
            }
        };
        if self.options.preserve {
            stamp(dst.fs, part, meta).await?;
        } else if meta.mode & 0o600 != 0o600 {
            dst.fs.set_permissions(part, meta.mode & 0o777).await?;
        }
        dst.fs.rename(part, to).await?;
        Ok(verified)
    }
}

/// The SHA-256 of a file on a target: its own hash for big files where it has one, else
/// read back.
pub(crate) async fn hash_target(
    fs: &Arc<dyn FileSystem>,
    path: &str,
    len: u64,
) -> Result<([u8; 32], Verified)> {
    if len >= REMOTE_HASH_MIN && fs.capabilities().has(Capability::Sha256) {
        match fs.sha256(path).await {
            Ok(digest) => return Ok((digest, Verified::TargetHash)),
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {}
            Err(e) => return Err(e),
        }
    }
    let mut reader = fs.open_read(path).await?;
    let mut hasher = Sha256::new();
    hash_prefix(&mut reader, &mut hasher, u64::MAX)
        .await
        .map_err(|e| Error::io(format_args!("read back `{path}`"), e))?;
    Ok((hasher.finalize().into(), Verified::ReadBack))
}

/// Hashes up to `len` bytes of `reader`; returns how many there were.
async fn hash_prefix(reader: &mut BoxRead, hasher: &mut Sha256, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
        let n = reader.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// Streams `reader` into `writer`, hashing what is read; the reads run ahead of the writes
/// so that both sides stay busy. Returns the bytes written; the writer is shut down (the
/// data complete on the target) on success.
async fn pump(
    mut reader: BoxRead,
    mut writer: reach_core::BoxWrite,
    hasher: &mut Sha256,
    large: bool,
    progress: &Progress,
    from: &str,
    to: &str,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<u8>>>(READ_AHEAD);
    // A large file is hashed on a thread of its own, beside the reads and writes, so that
    // the hash does not hold up the writer's task.
    // The thread ends when the read future, which owns `to_hash`, is done.
    let (to_hash, hashed) = large
        .then(|| {
            let (to_hash, mut chunks) = tokio::sync::mpsc::channel::<Arc<Vec<u8>>>(READ_AHEAD);
            let mut own = hasher.clone();
            let hashed = tokio::task::spawn_blocking(move || {
                while let Some(chunk) = chunks.blocking_recv() {
                    own.update(chunk.as_slice());
                }
                own
            });
            (to_hash, hashed)
        })
        .unzip();
    let inline = &mut *hasher;
    let read = async move {
        loop {
            // Read into spare capacity: no zeroing of each fresh chunk.
            let mut buf = Vec::with_capacity(CHUNK);
            // Fill whole chunks: fewer, larger writes on the other side.
            while buf.len() < CHUNK {
                if reader.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            let filled = buf.len();
            if filled == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let buf = Arc::new(buf);
            match &to_hash {
                Some(to_hash) => {
                    if to_hash.send(buf.clone()).await.is_err() {
                        return Err(std::io::Error::other("the hashing thread stopped"));
                    }
                }
                None => inline.update(buf.as_slice()),
            }
            if tx.send(buf).await.is_err() {
                return Ok(());
            }
            if filled < CHUNK {
                return Ok(());
            }
        }
    };
    // Owns the receiver: when a write fails, the reader's next send fails and it stops.
    let write = async move {
        let mut sent = 0u64;
        while let Some(buf) = rx.recv().await {
            writer.write_all(&buf).await?;
            sent += buf.len() as u64;
            progress.advance(buf.len() as u64);
        }
        writer.shutdown().await?;
        Ok::<u64, std::io::Error>(sent)
    };
    let (read, write) = tokio::join!(read, write);
    read.map_err(|e| Error::io(format_args!("read `{from}`"), e))?;
    let sent = write.map_err(|e| Error::io(format_args!("write `{to}`"), e))?;
    if let Some(hashed) = hashed {
        *hasher = hashed
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("the hashing thread failed: {e}")))?;
    }
    Ok(sent)
}
