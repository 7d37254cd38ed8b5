//! The `sftp` subsystem, served from any backend's [`FileSystem`], so that `sftp` and `scp`
//! (which speaks SFTP since OpenSSH 9.0) work against the local host and containers alike.
//!
//! Files are streams in [`FileSystem`], while SFTP addresses them by offset. Reads at the
//! position the stream has reached (what every client does when copying) are served from it;
//! a jump forward skips, a jump back reopens. Writes must come in order (OpenSSH's clients
//! send them so, and requests are served one at a time); one out of order is refused with
//! `OpUnsupported` rather than written to the wrong place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use reach_core::{BoxRead, BoxWrite, ErrorKind, FileSystem, FileType, Metadata, WriteOptions};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::metrics::Metrics;

/// Largest write the gateway offers clients (`limits@openssh.com`), as OpenSSH's server.
const MAX_IO: u64 = 255 * 1024;
/// Largest read offered. OpenSSH's client keeps 64 reads in flight; with 255 KiB each (16 MiB
/// of replies queued) downloads through russh 0.65 stall for good at about 28 MB, while 12
/// MiB in flight never did here. 128 KiB reads keep 8 MiB in flight.
const MAX_READ: u64 = 128 * 1024;
/// Forward jumps up to this are skipped by reading; longer ones reopen the file too.
const SKIP_LIMIT: u64 = 1 << 20;

enum Open {
    Read {
        path: String,
        stream: Option<BufReader<BoxRead>>,
        pos: u64,
    },
    Write {
        path: String,
        /// `None` until the first write decides, for an existing file opened without
        /// `TRUNC`: from offset 0 it is rewritten, from its end appended to.
        stream: Option<BoxWrite>,
        pos: u64,
        existing: u64,
        options: WriteOptions,
    },
    Dir {
        path: String,
        sent: bool,
    },
}

/// One SFTP session's state.
pub struct Sftp {
    fs: Arc<dyn FileSystem>,
    home: String,
    handles: HashMap<String, Open>,
    next: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp")
            .field("home", &self.home)
            .field("handles", &self.handles.len())
            .finish_non_exhaustive()
    }
}

/// An SFTP failure: a status code and a message for the client.
#[derive(Debug)]
pub struct SftpError(StatusCode, String);

impl From<SftpError> for StatusReply {
    fn from(e: SftpError) -> StatusReply {
        StatusReply::new(e.0).with_message(e.1)
    }
}

impl From<reach_core::Error> for SftpError {
    fn from(e: reach_core::Error) -> SftpError {
        let code = match e.kind() {
            ErrorKind::NotFound => StatusCode::NoSuchFile,
            ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            ErrorKind::Unsupported => StatusCode::OpUnsupported,
            k if k.is_transport() => StatusCode::ConnectionLost,
            _ => StatusCode::Failure,
        };
        SftpError(code, e.message().to_owned())
    }
}

fn bad_handle(handle: &str) -> SftpError {
    SftpError(StatusCode::Failure, format!("no open handle `{handle}`"))
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

impl Sftp {
    /// A session on `fs`, with relative paths resolved against `home`.
    pub fn new(fs: Arc<dyn FileSystem>, home: String, metrics: Arc<Metrics>) -> Self {
        Sftp {
            fs,
            home,
            handles: HashMap::new(),
            next: 0,
            metrics,
        }
    }

    fn resolve(&self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else if path.is_empty() || path == "." {
            self.home.clone()
        } else {
            format!("{}/{path}", self.home.trim_end_matches('/'))
        };
        normalize(&joined)
    }

    fn add(&mut self, open: Open) -> String {
        self.next += 1;
        let handle = format!("h{}", self.next);
        self.handles.insert(handle.clone(), open);
        handle
    }

    async fn read_at(&mut self, handle: &str, offset: u64, len: u32) -> Result<Vec<u8>, SftpError> {
        let fs = self.fs.clone();
        let Some(Open::Read { path, stream, pos }) = self.handles.get_mut(handle) else {
            return Err(bad_handle(handle));
        };
        if offset < *pos || offset > *pos + SKIP_LIMIT || stream.is_none() {
            *stream = Some(BufReader::with_capacity(
                256 * 1024,
                fs.open_read(path).await?,
            ));
            *pos = 0;
        }
        let Some(reader) = stream.as_mut() else {
            return Err(bad_handle(handle));
        };
        if offset > *pos {
            let skip = offset - *pos;
            let skipped = tokio::io::copy(&mut (&mut *reader).take(skip), &mut tokio::io::sink())
                .await
                .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?;
            *pos += skipped;
            if skipped < skip {
                return Ok(Vec::new());
            }
        }
        let want = u64::from(len).min(MAX_READ) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = reader
                .read(&mut buf[filled..])
                .await
                .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        *pos += filled as u64;
        Ok(buf)
    }
}

async fn stat_of(
    fs: &dyn FileSystem,
    path: &str,
    follow: bool,
) -> Result<FileAttributes, SftpError> {
    let meta = if follow {
        fs.metadata(path).await?
    } else {
        fs.symlink_metadata(path).await?
    };
    Ok(attributes(&meta))
}

/// Collapses `.`, `..` and repeated slashes in an absolute path.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn attributes(meta: &Metadata) -> FileAttributes {
    let kind = match meta.file_type {
        FileType::File => 0o100000,
        FileType::Dir => 0o040000,
        FileType::Symlink => 0o120000,
        FileType::Other => 0o010000,
    };
    let mtime = meta
        .modified
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    FileAttributes {
        size: Some(meta.len),
        uid: meta.uid,
        user: None,
        gid: meta.gid,
        group: None,
        permissions: Some(kind | (meta.mode & 0o7777)),
        atime: mtime,
        mtime,
    }
}

/// The `ls -l` line that `sftp`'s `ls -l` prints, in OpenSSH's layout (numeric owners, the
/// time in UTC: month, day and time within half a year, else month, day and year).
fn longname(name: &str, attrs: &FileAttributes) -> String {
    let mode = attrs.permissions.unwrap_or(0);
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o100000 => '-',
        _ => '?',
    };
    let mut bits = String::with_capacity(10);
    bits.push(kind);
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        bits.push(if b & 4 != 0 { 'r' } else { '-' });
        bits.push(if b & 2 != 0 { 'w' } else { '-' });
        bits.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    let now = chrono::Utc::now().timestamp();
    let when = attrs
        .mtime
        .and_then(|t| chrono::DateTime::from_timestamp(i64::from(t), 0))
        .map(|t| {
            const HALF_YEAR: i64 = 365 * 86_400 / 2;
            if (now - t.timestamp()).abs() < HALF_YEAR {
                t.format("%b %e %H:%M").to_string()
            } else {
                t.format("%b %e  %Y").to_string()
            }
        })
        .unwrap_or_else(|| " ".repeat(12));
    format!(
        "{bits}    1 {:<8} {:<8} {:>8} {when} {name}",
        attrs.uid.unwrap_or(0),
        attrs.gid.unwrap_or(0),
        attrs.size.unwrap_or(0)
    )
}

/// Applies size, permissions and mtime from `attrs` to `path`.
async fn apply(fs: &dyn FileSystem, path: &str, attrs: &FileAttributes) -> Result<(), SftpError> {
    if let Some(size) = attrs.size {
        fs.truncate(path, size).await?;
    }
    if let Some(mode) = attrs.permissions {
        fs.set_permissions(path, mode & 0o7777).await?;
    }
    if let Some(mtime) = attrs.mtime {
        fs.set_modified(path, UNIX_EPOCH + Duration::from_secs(u64::from(mtime)))
            .await?;
    }
    Ok(())
}

fn read_string(data: &[u8], at: &mut usize) -> Option<String> {
    let len_bytes: [u8; 4] = data.get(*at..*at + 4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let text = data.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    String::from_utf8(text.to_vec()).ok()
}

impl russh_sftp::server::Handler for Sftp {
    type Error = SftpError;

    fn unimplemented(&self) -> Self::Error {
        SftpError(
            StatusCode::OpUnsupported,
            "not supported by reach serve".to_owned(),
        )
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for ext in [
            "posix-rename@openssh.com",
            "fsync@openssh.com",
            "limits@openssh.com",
        ] {
            version.extensions.insert(ext.to_owned(), "1".to_owned());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.resolve(&filename);
        let open = if pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND) {
            let existing = match self.fs.metadata(&path).await {
                Ok(meta) => Some(meta.len),
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) => None,
                Err(e) => return Err(e.into()),
            };
            if existing.is_none() && !pflags.contains(OpenFlags::CREATE) {
                return Err(SftpError(
                    StatusCode::NoSuchFile,
                    format!("{path}: no such file"),
                ));
            }
            let options = WriteOptions {
                create_new: pflags.contains(OpenFlags::EXCLUDE),
                mode: attrs.permissions.map_or(0o644, |m| m & 0o7777),
                ..WriteOptions::default()
            };
            let (stream, pos) = match existing {
                Some(len) if pflags.contains(OpenFlags::APPEND) => {
                    let append = WriteOptions {
                        append: true,
                        ..options
                    };
                    (Some(self.fs.open_write(&path, append).await?), len)
                }
                Some(_) if !pflags.contains(OpenFlags::TRUNCATE) => (None, 0),
                _ => (Some(self.fs.open_write(&path, options).await?), 0),
            };
            Open::Write {
                path,
                stream,
                pos,
                existing: existing.unwrap_or(0),
                options,
            }
        } else {
            let stream = self.fs.open_read(&path).await?;
            Open::Read {
                path,
                stream: Some(BufReader::with_capacity(256 * 1024, stream)),
                pos: 0,
            }
        };
        Ok(Handle {
            id,
            handle: self.add(open),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::Write {
                path,
                stream: Some(mut stream),
                ..
            }) => stream
                .shutdown()
                .await
                .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?,
            Some(_) => {}
            None => return Err(bad_handle(&handle)),
        }
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let data = self.read_at(&handle, offset, len).await?;
        if data.is_empty() && len > 0 {
            return Err(SftpError(StatusCode::Eof, "end of file".to_owned()));
        }
        self.metrics.bytes_out(data.len() as u64);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let fs = self.fs.clone();
        let Some(Open::Write {
            path,
            stream,
            pos,
            existing,
            options,
        }) = self.handles.get_mut(&handle)
        else {
            return Err(bad_handle(&handle));
        };
        if stream.is_none() {
            // An existing file opened without TRUNC: rewritten from 0, or appended to.
            let append = match offset {
                0 => false,
                o if o == *existing => true,
                _ => {
                    return Err(SftpError(
                        StatusCode::OpUnsupported,
                        format!(
                            "{path}: reach serve rewrites a file from its start or appends at \
                             its end (offset {offset} is neither)"
                        ),
                    ))
                }
            };
            let opened = fs
                .open_write(path, WriteOptions { append, ..*options })
                .await?;
            *stream = Some(opened);
            *pos = offset;
        }
        let Some(stream) = stream.as_mut() else {
            return Err(bad_handle(&handle));
        };
        if offset != *pos {
            return Err(SftpError(
                StatusCode::OpUnsupported,
                format!(
                    "{path}: reach serve writes files in order (expected offset {pos}, got \
                     {offset})"
                ),
            ));
        }
        stream
            .write_all(&data)
            .await
            .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?;
        *pos += data.len() as u64;
        self.metrics.bytes_in(data.len() as u64);
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let attrs = stat_of(self.fs.as_ref(), &self.resolve(&path), false).await?;
        Ok(Attrs { id, attrs })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let attrs = stat_of(self.fs.as_ref(), &self.resolve(&path), true).await?;
        Ok(Attrs { id, attrs })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let (path, pos) = match self.handles.get(&handle) {
            Some(Open::Read { path, .. }) | Some(Open::Dir { path, .. }) => (path.clone(), None),
            Some(Open::Write { path, pos, .. }) => (path.clone(), Some(*pos)),
            None => return Err(bad_handle(&handle)),
        };
        let mut attrs = stat_of(self.fs.as_ref(), &path, true).await?;
        // A file being written may not show its bytes yet (buffered, or staged by the
        // backend); its size is what was written so far.
        if let Some(pos) = pos {
            attrs.size = Some(attrs.size.unwrap_or(0).max(pos));
        }
        Ok(Attrs { id, attrs })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply(self.fs.as_ref(), &self.resolve(&path), &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let (path, written) = match self.handles.get_mut(&handle) {
            Some(Open::Write {
                path,
                stream: Some(stream),
                pos,
                ..
            }) => {
                // Make what was written visible before changing the file under it.
                stream
                    .flush()
                    .await
                    .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?;
                (path.clone(), Some(*pos))
            }
            Some(Open::Write { path, .. })
            | Some(Open::Read { path, .. })
            | Some(Open::Dir { path, .. }) => (path.clone(), None),
            None => return Err(bad_handle(&handle)),
        };
        // Truncating a file to the length just written (what scp does after a copy) is a
        // no-op; any other size change while the stream is open would race it.
        let attrs = match (attrs.size, written) {
            (Some(size), Some(pos)) if size == pos => FileAttributes {
                size: None,
                ..attrs
            },
            (Some(_), Some(_)) => {
                return Err(SftpError(
                    StatusCode::OpUnsupported,
                    format!("{path}: cannot change the size of a file while writing it"),
                ))
            }
            _ => attrs,
        };
        apply(self.fs.as_ref(), &path, &attrs).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.resolve(&path);
        let meta = self.fs.metadata(&path).await?;
        if !meta.is_dir() {
            return Err(SftpError(
                StatusCode::Failure,
                format!("{path}: not a directory"),
            ));
        }
        Ok(Handle {
            id,
            handle: self.add(Open::Dir { path, sent: false }),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { path, sent }) = self.handles.get_mut(&handle) else {
            return Err(bad_handle(&handle));
        };
        if *sent {
            return Err(SftpError(StatusCode::Eof, "end of directory".to_owned()));
        }
        *sent = true;
        let path = path.clone();
        let entries = self.fs.read_dir(&path).await?;
        let mut files = Vec::with_capacity(entries.len() + 2);
        for dot in [".", ".."] {
            let attrs = stat_of(self.fs.as_ref(), &format!("{path}/{dot}"), true).await?;
            files.push(File {
                filename: dot.to_owned(),
                longname: longname(dot, &attrs),
                attrs,
            });
        }
        for entry in entries {
            let attrs = attributes(&entry.metadata);
            files.push(File {
                longname: longname(&entry.name, &attrs),
                filename: entry.name,
                attrs,
            });
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.fs.remove_file(&self.resolve(&filename)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.resolve(&path);
        self.fs.create_dir(&path).await?;
        if let Some(mode) = attrs.permissions {
            self.fs.set_permissions(&path, mode & 0o7777).await?;
        }
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.fs.remove_dir(&self.resolve(&path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.resolve(&path);
        Ok(Name {
            id,
            files: vec![File::dummy(path)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.resolve(&oldpath), self.resolve(&newpath));
        // SFTP v3 rename must not replace an existing target (posix-rename does).
        if self.fs.symlink_metadata(&to).await.is_ok() {
            return Err(SftpError(
                StatusCode::Failure,
                format!("{to}: already exists"),
            ));
        }
        self.fs.rename(&from, &to).await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = self.fs.read_link(&self.resolve(&path)).await?;
        Ok(Name {
            id,
            files: vec![File::dummy(target)],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH's client sends the target first, against the draft's order; russh-sftp
        // names the fields by the draft, so `linkpath` here is the target.
        self.fs
            .symlink(&linkpath, &self.resolve(&targetpath))
            .await?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        let mut at = 0;
        match request.as_str() {
            "posix-rename@openssh.com" => {
                let (Some(from), Some(to)) =
                    (read_string(&data, &mut at), read_string(&data, &mut at))
                else {
                    return Err(SftpError(StatusCode::BadMessage, "bad request".to_owned()));
                };
                self.fs
                    .rename(&self.resolve(&from), &self.resolve(&to))
                    .await?;
                Ok(Packet::Status(ok(id)))
            }
            "fsync@openssh.com" => {
                let handle = read_string(&data, &mut at).unwrap_or_default();
                if let Some(Open::Write {
                    path,
                    stream: Some(stream),
                    ..
                }) = self.handles.get_mut(&handle)
                {
                    stream
                        .flush()
                        .await
                        .map_err(|e| SftpError(StatusCode::Failure, format!("{path}: {e}")))?;
                }
                Ok(Packet::Status(ok(id)))
            }
            "limits@openssh.com" => {
                let mut data = Vec::with_capacity(32);
                for value in [MAX_IO + 1024, MAX_READ, MAX_IO, 1024] {
                    data.extend_from_slice(&value.to_be_bytes());
                }
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            _ => Err(self.unimplemented()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_read_like_openssh() {
        let attrs = FileAttributes {
            size: Some(1234),
            uid: Some(1000),
            gid: Some(100),
            permissions: Some(0o100644),
            // 2001-09-09 01:46:40 UTC: more than half a year ago, so the year shows.
            mtime: Some(1_000_000_000),
            ..FileAttributes::default()
        };
        assert_eq!(
            longname("notes.txt", &attrs),
            "-rw-r--r--    1 1000     100          1234 Sep  9  2001 notes.txt"
        );
        let recent = u32::try_from(chrono::Utc::now().timestamp() - 3600).unwrap_or(0);
        let dir = FileAttributes {
            permissions: Some(0o040755),
            mtime: Some(recent),
            ..attrs
        };
        let line = longname("sub", &dir);
        let hhmm = chrono::DateTime::from_timestamp(i64::from(recent), 0)
            .map(|t| t.format("%b %e %H:%M").to_string())
            .unwrap_or_default();
        assert!(line.starts_with("drwxr-xr-x "), "{line}");
        assert!(line.ends_with(&format!(" {hhmm} sub")), "{line}");
    }
}
