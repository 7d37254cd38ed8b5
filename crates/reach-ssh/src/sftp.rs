//! Files over SFTP (protocol version 3 with OpenSSH's extensions).
//!
//! Built on russh-sftp's request layer, with our own pipelining: a read keeps
//! [`DEPTH`] requests of [`CHUNK`] bytes in flight and delivers them in order; a write sends
//! chunks without waiting for each acknowledgement, and its `shutdown` waits for all of them,
//! fsyncs (where the server offers `fsync@openssh.com`) and closes, so `Ok` from `shutdown`
//! means the bytes are on the server's disk. Renames use `posix-rename@openssh.com`, which
//! replaces the destination atomically as [`FileSystem::rename`] promises. A write opened
//! with [`FileSystem::open_write_hashed`] also tells a hashing command on the same
//! connection (`tree.rs`) how far the file is complete, every [`REPORT_EVERY`] bytes of
//! acknowledged writes, so the server hashes what landed while the rest arrives; a large
//! synced write tells a flushing command the same way ([`FLUSH_AHEAD_FROM`]), so that the
//! disk is busy while the rest arrives instead of only at the final fsync.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use crate::tree::RemoteExec;
use async_trait::async_trait;
use reach_core::{
    BoxRead, BoxWrite, Capabilities, Capability, DirEntry, Error, ErrorKind, FileSystem, FileType,
    Metadata, Result, WriteOptions,
};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes per read or write request (OpenSSH's sftp-server takes up to 255 KiB).
const CHUNK: usize = 255 * 1024;
/// Requests kept in flight per open file.
const DEPTH: usize = 16;
/// How long one request may wait for its answer.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The SFTP file system of one SSH connection.
pub struct SftpFs {
    raw: Arc<RawSftpSession>,
    addr: String,
    chunk: usize,
    fsync: bool,
    posix_rename: bool,
    /// Runs commands on the same connection, for the remote SHA-256 and tree fast paths.
    exec: Option<RemoteExec>,
    /// Whether the server has GNU tar, find and sha256sum (asked once).
    tree_tools: tokio::sync::OnceCell<bool>,
}

impl std::fmt::Debug for SftpFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpFs")
            .field("addr", &self.addr)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

/// A path in the server's syntax: Windows OpenSSH wants drive paths as `/C:/x`.
fn remote(path: &str) -> String {
    let bytes = path.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        format!("/{}", path.replace('\\', "/"))
    } else {
        path.to_owned()
    }
}

impl SftpFs {
    /// Starts the SFTP protocol on `stream` (a channel with the `sftp` subsystem running).
    pub(crate) async fn start<S>(
        stream: S,
        addr: String,
        exec: Option<RemoteExec>,
    ) -> Result<SftpFs>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let config = russh_sftp::client::Config {
            max_packet_len: 512 * 1024,
            request_timeout_secs: REQUEST_TIMEOUT_SECS,
            ..Default::default()
        };
        let mut raw = RawSftpSession::new_with_config(stream, config);
        let version = raw.init().await.map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the SFTP server on `{addr}` did not start: {e}"),
            )
        })?;
        let has = |name: &str| version.extensions.contains_key(name);
        let mut chunk = CHUNK;
        if has(russh_sftp::extensions::LIMITS) {
            if let Ok(limits) = raw.limits().await {
                let limits = russh_sftp::client::rawsession::Limits::from(limits);
                for limit in [limits.read_len, limits.write_len].into_iter().flatten() {
                    chunk = chunk.min(usize::try_from(limit).unwrap_or(CHUNK));
                }
                raw.set_limits(limits);
            }
        } else {
            // Servers without the limits extension must accept 32 KiB (RFC draft minimum).
            chunk = 32 * 1024;
        }
        Ok(SftpFs {
            fsync: has(russh_sftp::extensions::FSYNC),
            posix_rename: has("posix-rename@openssh.com"),
            raw: Arc::new(raw),
            addr,
            chunk: chunk.max(1024),
            exec,
            tree_tools: tokio::sync::OnceCell::new(),
        })
    }

    /// The command channel, when the server has the tools the tree fast paths use.
    async fn tree_exec(&self) -> Result<&RemoteExec> {
        let unsupported = || {
            Error::new(
                ErrorKind::Unsupported,
                format!("`{}` lacks GNU tar, find or sha256sum", self.addr),
            )
        };
        let exec = self.exec.as_ref().ok_or_else(unsupported)?;
        let has = self
            .tree_tools
            .get_or_init(|| crate::tree::available(exec, &self.addr))
            .await;
        if *has {
            Ok(exec)
        } else {
            Err(unsupported())
        }
    }

    /// Opens `path` for a write as `options` ask.
    async fn open_handle(&self, path: &str, options: &WriteOptions) -> Result<String> {
        let mut flags = OpenFlags::WRITE | OpenFlags::CREATE;
        if options.append {
            flags |= OpenFlags::APPEND;
        } else {
            flags |= OpenFlags::TRUNCATE;
        }
        if options.create_new {
            flags |= OpenFlags::EXCLUDE;
        }
        let attrs = FileAttributes {
            permissions: Some(options.mode),
            ..FileAttributes::empty()
        };
        match self.open(path, flags, attrs).await {
            Ok(handle) => Ok(handle),
            Err(e) if options.create_new => Err(self.refine_create(e, path).await),
            Err(e) => Err(e),
        }
    }

    fn writer(&self, handle: String, path: &str, options: &WriteOptions) -> ChunkWriter {
        ChunkWriter {
            raw: self.raw.clone(),
            handle,
            addr: self.addr.clone(),
            what: format!("write `{path}`"),
            chunk: self.chunk,
            depth: if options.append { 1 } else { DEPTH },
            buf: Vec::new(),
            offset: 0,
            acks: VecDeque::new(),
            report: None,
            fsync: self.fsync && options.sync,
            closing: None,
            closed: false,
        }
    }

    /// Maps an SFTP failure of `what` (which names the path) to an [`Error`].
    fn error(&self, e: SftpError, what: &str) -> Error {
        sftp_error(&self.addr, e, what)
    }

    async fn lstat_kind(&self, path: &str) -> Option<FileType> {
        self.raw
            .lstat(remote(path))
            .await
            .ok()
            .map(|a| convert(&a.attrs).file_type)
    }

    /// A generic SFTP `Failure` for creating `path`: `AlreadyExists` if something is there.
    async fn refine_create(&self, err: Error, path: &str) -> Error {
        if matches!(err.kind(), ErrorKind::Io) && self.lstat_kind(path).await.is_some() {
            return Error::new(
                ErrorKind::AlreadyExists,
                format!("`{path}` already exists on `{}`", self.addr),
            );
        }
        err
    }

    /// Sets the given attributes of `path`; `verb` names the operation in errors.
    async fn setstat(&self, path: &str, attrs: FileAttributes, verb: &str) -> Result<()> {
        self.raw
            .setstat(remote(path), attrs)
            .await
            .map(drop)
            .map_err(|e| self.error(e, &format!("{verb} `{path}`")))
    }

    async fn open(&self, path: &str, flags: OpenFlags, attrs: FileAttributes) -> Result<String> {
        self.raw
            .open(remote(path), flags, attrs)
            .await
            .map(|h| h.handle)
            .map_err(|e| self.error(e, &format!("open `{path}`")))
    }
}

pub(crate) fn sftp_error(addr: &str, e: SftpError, what: &str) -> Error {
    match e {
        SftpError::Status(status) => {
            let (kind, why) = match status.status_code {
                StatusCode::NoSuchFile => (ErrorKind::NotFound, "no such file or directory"),
                StatusCode::PermissionDenied => (ErrorKind::PermissionDenied, "permission denied"),
                StatusCode::OpUnsupported => (
                    ErrorKind::Unsupported,
                    "the SFTP server does not support this operation",
                ),
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    (ErrorKind::SessionDropped, "the SFTP session was lost")
                }
                StatusCode::BadMessage => (ErrorKind::InvalidInput, "the server rejected the request"),
                _ => (ErrorKind::Io, "the server reported a failure"),
            };
            let detail = status.error_message.trim();
            Error::new(
                kind,
                if detail.is_empty() || detail.eq_ignore_ascii_case(why) {
                    format!("{what} on `{addr}`: {why}")
                } else {
                    format!("{what} on `{addr}`: {why} ({detail})")
                },
            )
        }
        SftpError::Timeout => Error::new(
            ErrorKind::Timeout,
            format!("{what} on `{addr}`: the SFTP server did not answer within {REQUEST_TIMEOUT_SECS} s"),
        ),
        SftpError::Limited(msg) => Error::new(
            ErrorKind::InvalidInput,
            format!("{what} on `{addr}`: over the server's limit: {msg}"),
        ),
        SftpError::UnexpectedPacket => Error::new(
            ErrorKind::Protocol,
            format!("{what} on `{addr}`: the SFTP server sent an unexpected answer"),
        ),
        SftpError::IO(msg) | SftpError::UnexpectedBehavior(msg) => Error::new(
            ErrorKind::SessionDropped,
            format!("{what} on `{addr}`: the SFTP session broke ({msg})"),
        ),
    }
}

fn convert(attrs: &FileAttributes) -> Metadata {
    let file_type = match attrs.file_type() {
        russh_sftp::protocol::FileType::Dir => FileType::Dir,
        russh_sftp::protocol::FileType::File => FileType::File,
        russh_sftp::protocol::FileType::Symlink => FileType::Symlink,
        russh_sftp::protocol::FileType::Other => FileType::Other,
    };
    Metadata {
        file_type,
        len: attrs.size.unwrap_or(0),
        mode: attrs.permissions.unwrap_or(0) & 0o7777,
        modified: attrs
            .mtime
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(t))),
        uid: attrs.uid,
        gid: attrs.gid,
    }
}

fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[async_trait]
impl FileSystem for SftpFs {
    /// The hashing and tree paths run the server's own tools (`tar`, `sha256sum` or
    /// `openssl`, Python 3); a server without them answers `Unsupported` when one is used.
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::Sha256,
            Capability::HashedWrite,
            Capability::WriteTree,
            Capability::ReadTree,
            Capability::Sha256Tree,
            Capability::SyncTree,
            Capability::SetModified,
        ])
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        let handle = self
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?;
        let (tx, rx) = mpsc::channel(DEPTH);
        let raw = self.raw.clone();
        let addr = self.addr.clone();
        let what = format!("read `{path}`");
        let chunk = u32::try_from(self.chunk).unwrap_or(32 * 1024);
        tokio::spawn(read_ahead(raw, handle, chunk, tx, addr, what));
        Ok(Box::pin(ChunkReader::new(rx)))
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        let handle = self.open_handle(path, &options).await?;
        let mut writer = self.writer(handle, path, &options);
        let large = options.len.is_some_and(|len| len >= FLUSH_AHEAD_FROM);
        if let (true, true, Some(exec)) = (writer.fsync, large, &self.exec) {
            if let Some(tx) = crate::tree::follow_flush(exec, &self.addr, &remote(path)).await {
                writer.report = Some(Report {
                    tx,
                    acked: 0,
                    sent: 0,
                });
            }
        }
        Ok(Box::pin(writer))
    }

    async fn open_write_hashed(
        &self,
        path: &str,
        options: WriteOptions,
    ) -> Result<(BoxWrite, reach_core::TargetDigest)> {
        let Some(exec) = &self.exec else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "no hashing while writing without a command channel",
            ));
        };
        // A continued file is hashed from its first byte: the writer reports offsets from
        // where it starts.
        let start = if options.append {
            match self.metadata(path).await {
                Ok(meta) => meta.len,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        // The file first: a path that cannot be opened starts no command on the server (and
        // a command that cannot start drops the writer, which closes the handle).
        let handle = self.open_handle(path, &options).await?;
        let mut writer = self.writer(handle, path, &options);
        let (tx, digest) =
            crate::tree::follow_sha256(exec, &self.addr, &remote(path), writer.fsync).await?;
        writer.report = Some(Report {
            tx,
            acked: start,
            sent: start,
        });
        Ok((Box::pin(writer), digest))
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        self.raw
            .stat(remote(path))
            .await
            .map(|a| convert(&a.attrs))
            .map_err(|e| self.error(e, &format!("stat `{path}`")))
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        self.raw
            .lstat(remote(path))
            .await
            .map(|a| convert(&a.attrs))
            .map_err(|e| self.error(e, &format!("lstat `{path}`")))
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let what = format!("list `{path}`");
        let handle = self
            .raw
            .opendir(remote(path))
            .await
            .map_err(|e| self.error(e, &what))?
            .handle;
        let mut entries = Vec::new();
        let outcome = loop {
            match self.raw.readdir(handle.as_str()).await {
                Ok(name) => entries.extend(
                    name.files
                        .into_iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| DirEntry {
                            metadata: convert(&f.attrs),
                            name: f.filename,
                        }),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(()),
                Err(e) => break Err(self.error(e, &what)),
            }
        };
        let _ = self.raw.close(handle).await;
        outcome?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        match self.raw.mkdir(remote(path), FileAttributes::empty()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.error(e, &format!("create directory `{path}`"));
                Err(self.refine_create(err, path).await)
            }
        }
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        // Walk up to the deepest existing ancestor, then create downwards.
        let mut missing = Vec::new();
        let mut current = path.trim_end_matches('/').to_owned();
        loop {
            if current.is_empty() {
                break;
            }
            match self.raw.stat(remote(&current)).await {
                Ok(attrs) if convert(&attrs.attrs).is_dir() => break,
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!(
                            "cannot create directory `{path}` on `{}`: `{current}` exists and is \
                             not a directory",
                            self.addr
                        ),
                    ))
                }
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                    missing.push(current.clone());
                    match reach_core::path::parent(&current) {
                        Some(up) => current = up.to_owned(),
                        None => break,
                    }
                }
                Err(e) => return Err(self.error(e, &format!("stat `{current}`"))),
            }
        }
        for dir in missing.iter().rev() {
            match self.create_dir(dir).await {
                Ok(()) => {}
                // Someone else made it in the meantime.
                Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        self.raw
            .remove(remote(path))
            .await
            .map(drop)
            .map_err(|e| self.error(e, &format!("remove `{path}`")))
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        match self.raw.rmdir(remote(path)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.error(e, &format!("remove directory `{path}`"));
                if matches!(err.kind(), ErrorKind::Io) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("{err} (is the directory empty?)"),
                    ));
                }
                Err(err)
            }
        }
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        let mut stack = vec![(path.to_owned(), false)];
        while let Some((dir, listed)) = stack.pop() {
            if listed {
                self.remove_dir(&dir).await?;
                continue;
            }
            let entries = self.read_dir(&dir).await?;
            stack.push((dir.clone(), true));
            for entry in entries {
                let child = format!("{}/{}", dir.trim_end_matches('/'), entry.name);
                if entry.metadata.is_dir() {
                    stack.push((child, false));
                } else {
                    self.remove_file(&child).await?;
                }
            }
        }
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let what = format!("rename `{from}` to `{to}`");
        if !self.posix_rename {
            return self
                .raw
                .rename(remote(from), remote(to))
                .await
                .map(drop)
                .map_err(|e| self.error(e, &what));
        }
        let mut data = Vec::new();
        ssh_string(&mut data, &remote(from));
        ssh_string(&mut data, &remote(to));
        match self.raw.extended("posix-rename@openssh.com", data).await {
            Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
            Ok(Packet::Status(s)) => Err(self.error(SftpError::Status(s), &what)),
            Ok(_) => Err(self.error(SftpError::UnexpectedPacket, &what)),
            Err(e) => Err(self.error(e, &what)),
        }
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        let attrs = FileAttributes {
            permissions: Some(mode & 0o7777),
            ..FileAttributes::empty()
        };
        self.setstat(path, attrs, "chmod").await
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let attrs = FileAttributes {
            size: Some(len),
            ..FileAttributes::empty()
        };
        self.setstat(path, attrs, "truncate").await
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        let name = self
            .raw
            .readlink(remote(path))
            .await
            .map_err(|e| self.error(e, &format!("read link `{path}`")))?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "read link `{path}` on `{}`: the server sent no name",
                        self.addr
                    ),
                )
            })
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        // OpenSSH's sftp-server takes the two paths in the opposite order to the draft
        // (target first); every OpenSSH-compatible server followed it.
        let result = self.raw.symlink(target, remote(link)).await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.error(e, &format!("create symlink `{link}`"));
                Err(self.refine_create(err, link).await)
            }
        }
    }

    async fn set_modified(&self, path: &str, modified: std::time::SystemTime) -> Result<()> {
        // SFTP v3 carries seconds as u32 and sets both times together.
        let secs = modified
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let attrs = FileAttributes {
            atime: Some(secs),
            mtime: Some(secs),
            ..FileAttributes::empty()
        };
        self.setstat(path, attrs, "set the modification time of")
            .await
    }

    async fn write_tree(
        &self,
        dir: &str,
        archive: BoxRead,
        options: reach_core::TreeOptions,
    ) -> Result<Option<Vec<(String, [u8; 32])>>> {
        let exec = self.tree_exec().await?;
        crate::tree::write_tree(exec, &self.addr, &remote(dir), archive, options).await
    }

    async fn read_tree(&self, dir: &str) -> Result<BoxRead> {
        let exec = self.tree_exec().await?;
        crate::tree::read_tree(exec, &self.addr, &remote(dir)).await
    }

    async fn export_rootfs(&self, dir: &str) -> Result<BoxRead> {
        let exec = self.tree_exec().await?;
        crate::tree::export_rootfs(exec, &self.addr, &remote(dir)).await
    }

    async fn import_rootfs(&self, dir: &str, archive: BoxRead) -> Result<()> {
        let exec = self.tree_exec().await?;
        crate::tree::import_rootfs(exec, &self.addr, &remote(dir), archive).await
    }

    async fn sha256_tree(&self, dir: &str) -> Result<Vec<(String, [u8; 32])>> {
        let exec = self.tree_exec().await?;
        crate::tree::sha256_tree(exec, &self.addr, &remote(dir)).await
    }

    async fn sync_tree(&self, path: &str) -> Result<()> {
        let exec = self.tree_exec().await?;
        crate::tree::sync_tree(exec, &self.addr, &remote(path)).await
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        let Some(exec) = &self.exec else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "no remote SHA-256 without a command channel",
            ));
        };
        crate::tree::sha256(exec, &self.addr, &remote(path)).await
    }

    async fn home_dir(&self) -> Result<String> {
        let name = self
            .raw
            .realpath(".")
            .await
            .map_err(|e| self.error(e, "find the home directory"))?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("`{}` did not name its home directory", self.addr),
                )
            })
    }
}

type ReadReply = std::result::Result<russh_sftp::protocol::Data, SftpError>;

/// Keeps [`DEPTH`] reads in flight and sends their data, in order, to the reader.
async fn read_ahead(
    raw: Arc<RawSftpSession>,
    handle: String,
    chunk: u32,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
    addr: String,
    what: String,
) {
    let mut inflight: VecDeque<(u64, JoinHandle<ReadReply>)> = VecDeque::new();
    let mut next = 0u64;
    let mut eof = false;
    loop {
        while !eof && inflight.len() < DEPTH {
            let (raw, handle) = (raw.clone(), handle.clone());
            let offset = next;
            inflight.push_back((
                offset,
                tokio::spawn(async move { raw.read(handle, offset, chunk).await }),
            ));
            next += u64::from(chunk);
        }
        let Some((offset, request)) = inflight.pop_front() else {
            break;
        };
        let reply = match request.await {
            Ok(reply) => reply,
            Err(e) => Err(SftpError::IO(e.to_string())),
        };
        match reply {
            Ok(data) if data.data.is_empty() => eof = true,
            Ok(data) => {
                let got = data.data.len() as u64;
                if got < u64::from(chunk) {
                    // A short read: ask again from where it stopped. Later answers are for
                    // offsets we will request again, so drop them (their tasks finish alone).
                    inflight.clear();
                    next = offset + got;
                }
                if tx.send(Ok(data.data)).await.is_err() {
                    break; // the reader is gone
                }
            }
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                eof = true;
                inflight.clear();
            }
            Err(e) => {
                let err = sftp_error(&addr, e, &what);
                let _ = tx.send(Err(std::io::Error::other(err))).await;
                break;
            }
        }
        if eof && inflight.is_empty() {
            break;
        }
    }
    let _ = raw.close(handle).await;
}

/// The reading end of a task that sends chunks ([`read_ahead`], a TCP tunnel's channel):
/// errors arrive in order with the data, and the sender's end is the end of the stream.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    pub(crate) fn new(rx: mpsc::Receiver<std::io::Result<Vec<u8>>>) -> Self {
        ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pos >= self.current.len() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(data)) => {
                    self.current = data;
                    self.pos = 0;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(self.current.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.current[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

type Ack = JoinHandle<std::result::Result<(), SftpError>>;
type Closing = Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// Bytes between two reports of how far a file hashed (or flushed) as it is written is
/// complete.
const REPORT_EVERY: u64 = 32 << 20;

/// A synced write of a declared length from this size on is flushed on the server while it
/// is written ([`crate::tree::follow_flush`]); below it the final fsync is short anyway.
const FLUSH_AHEAD_FROM: u64 = 2 * REPORT_EVERY;

/// How far a written file is complete (every request up to there acknowledged), and what
/// the server's hasher was last told.
struct Report {
    tx: mpsc::UnboundedSender<u64>,
    acked: u64,
    sent: u64,
}

impl Report {
    fn acked(&mut self, len: u64) {
        self.acked += len;
        if self.acked - self.sent >= REPORT_EVERY {
            self.send();
        }
    }

    fn send(&mut self) {
        if self.acked > self.sent {
            // A hasher that went away only leaves its digest unusable.
            let _ = self.tx.send(self.acked);
            self.sent = self.acked;
        }
    }
}

/// Writes in chunks with up to `depth` unacknowledged requests.
struct ChunkWriter {
    raw: Arc<RawSftpSession>,
    handle: String,
    addr: String,
    what: String,
    chunk: usize,
    depth: usize,
    buf: Vec<u8>,
    offset: u64,
    /// Requests in flight, oldest first, with their lengths.
    acks: VecDeque<(u64, Ack)>,
    /// Where the server is told how far the file is complete, for hashing (or flushing) as
    /// it is written.
    report: Option<Report>,
    fsync: bool,
    closing: Option<Closing>,
    closed: bool,
}

impl ChunkWriter {
    fn io_error(&self, e: SftpError) -> std::io::Error {
        std::io::Error::other(sftp_error(&self.addr, e, &self.what))
    }

    fn send_buffer(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.buf);
        let offset = self.offset;
        let len = data.len() as u64;
        self.offset += len;
        let (raw, handle) = (self.raw.clone(), self.handle.clone());
        self.acks.push_back((
            len,
            tokio::spawn(async move { raw.write(handle, offset, data).await.map(drop) }),
        ));
    }

    /// Waits for the oldest acknowledgement.
    fn poll_oldest(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some((len, ack)) = self.acks.front_mut() else {
            return Poll::Ready(Ok(()));
        };
        let len = *len;
        let result = ready!(Pin::new(ack).poll(cx));
        self.acks.pop_front();
        match result {
            Ok(Ok(())) => {
                if let Some(report) = &mut self.report {
                    report.acked(len);
                }
                Poll::Ready(Ok(()))
            }
            Ok(Err(e)) => Poll::Ready(Err(self.io_error(e))),
            Err(e) => Poll::Ready(Err(self.io_error(SftpError::IO(e.to_string())))),
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.send_buffer();
        while !self.acks.is_empty() {
            ready!(self.poll_oldest(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

use std::future::Future;

impl AsyncWrite for ChunkWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed || self.closing.is_some() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        while self.acks.len() >= self.depth {
            ready!(self.poll_oldest(cx))?;
        }
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send_buffer();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        if self.closing.is_none() {
            ready!(self.poll_drain(cx))?;
            // All of it is there: the last report, and the end of the hasher's input.
            if let Some(mut report) = self.report.take() {
                report.send();
            }
            let (raw, handle, fsync) = (self.raw.clone(), self.handle.clone(), self.fsync);
            let (addr, what) = (self.addr.clone(), self.what.clone());
            self.closing = Some(Box::pin(async move {
                let synced = if fsync {
                    raw.fsync(handle.as_str()).await.map(drop)
                } else {
                    Ok(())
                };
                let closed = raw.close(handle).await.map(drop);
                synced
                    .and(closed)
                    .map_err(|e| std::io::Error::other(sftp_error(&addr, e, &what)))
            }));
        }
        let result = match self.closing.as_mut() {
            Some(closing) => ready!(closing.as_mut().poll(cx)),
            None => Ok(()),
        };
        self.closing = None;
        self.closed = true;
        Poll::Ready(result)
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if !self.closed {
            let (raw, handle) = (self.raw.clone(), std::mem::take(&mut self.handle));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = raw.close(handle).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drive_paths_get_a_leading_slash() {
        assert_eq!(remote("C:/Users/x"), "/C:/Users/x");
        assert_eq!(remote(r"D:\data\f.txt"), "/D:/data/f.txt");
        assert_eq!(remote("/home/x"), "/home/x");
        assert_eq!(remote("rel/x"), "rel/x");
    }
}
