//! Files in a container: reads and writes through the agent when it runs (`reach-agent-client`),
//! else through the archive API: `GET` (a tar stream) to read, `PUT` (a tar stream) to write;
//! `HEAD` for stat either way. The archive API needs nothing in the image. What it cannot do
//! goes through the agent, or else a shell.
//!
//! The engine reads and extracts archives with its own (root) rights: files are written
//! owned by the destination's user, but the engine does not check that user's permissions.
//! A read-only mount or root file system is refused (`PermissionDenied`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::query_parameters::{
    ContainerArchiveInfoOptions, DownloadFromContainerOptions, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reach_core::{
    shell_quote, BoxRead, BoxWrite, Capabilities, Capability, DirEntry, Error, ErrorKind, ExecSpec,
    FileSystem, FileType, Metadata, ProcessExt, Result, WriteOptions,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::tar::{self, Event, Header, Kind};
use crate::{engine_error, Conn};
use reach_agent_client::{errno_kind, Fields, Op};

/// Symlinks followed before giving up (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;
/// Bytes per chunk of a streamed upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the archive `HEAD` says about a path (not following a final symlink).
#[derive(Debug, Clone)]
pub(crate) struct Stat {
    pub meta: Metadata,
    /// For a symlink: the absolute path it resolves to in the container.
    pub link_target: String,
}

/// Go's `os.FileMode` bits, as the engine reports modes.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const IRREGULAR: u32 = 1 << 19;
}

fn from_go_mode(mode: u32) -> (FileType, u32) {
    use go_mode::*;
    let kind = if mode & DIR != 0 {
        FileType::Dir
    } else if mode & SYMLINK != 0 {
        FileType::Symlink
    } else if mode & (DEVICE | NAMED_PIPE | SOCKET | CHAR_DEVICE | IRREGULAR) != 0 {
        FileType::Other
    } else {
        FileType::File
    };
    let mut bits = mode & 0o777;
    if mode & SETUID != 0 {
        bits |= 0o4000;
    }
    if mode & SETGID != 0 {
        bits |= 0o2000;
    }
    if mode & STICKY != 0 {
        bits |= 0o1000;
    }
    (kind, bits)
}

/// Parses the RFC 3339 times the engine sends (`2026-11-21T07:02:54.123Z`, or with an
/// offset).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(char::is_ascii_digit).count();
        let mut value: i64 = frac[..digits.min(9)].parse().ok()?;
        for _ in digits.min(9)..9 {
            value *= 10;
        }
        nanos = value;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos as u32))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

fn archive_error(conn: &Conn, path: &str, doing: &str, err: bollard::errors::Error) -> Error {
    let e = engine_error(&conn.address, doing, err);
    // The engine answers 500 for a read-only mount or root file system.
    let kind = if e.message().contains("read-only") {
        ErrorKind::PermissionDenied
    } else {
        e.kind()
    };
    let message = match kind {
        ErrorKind::NotFound => format!("`{path}` does not exist in container `{}`", conn.name),
        ErrorKind::PermissionDenied => format!(
            "`{path}` in container `{}` cannot be written: {}",
            conn.name,
            e.message()
        ),
        _ => format!("{} (`{path}` in container `{}`)", e.message(), conn.name),
    };
    Error::new(kind, message).with_source(e)
}

/// `HEAD /containers/ID/archive?path=…`.
pub(crate) async fn stat_raw(conn: &Conn, path: &str) -> Result<Stat> {
    let options = ContainerArchiveInfoOptions {
        path: path.to_owned(),
    };
    let info = conn
        .docker
        .get_container_archive_info(&conn.id, Some(options))
        .await
        .map_err(|e| archive_error(conn, path, "stat", e))?;
    let (file_type, mode) = from_go_mode(info.file_mode);
    Ok(Stat {
        meta: Metadata {
            file_type,
            len: u64::try_from(info.size).unwrap_or(0),
            mode,
            modified: info.modification_time.as_deref().and_then(parse_time),
            uid: None,
            gid: None,
        },
        link_target: info.link_target,
    })
}

/// Follows symlinks to the final path and its stat.
async fn resolve(conn: &Conn, path: &str) -> Result<(String, Stat)> {
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        let stat = stat_raw(conn, &current).await.map_err(|e| {
            if matches!(e.kind(), ErrorKind::NotFound) && current != path {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "`{path}` in container `{}` is a symlink to `{current}`, which does \
                         not exist",
                        conn.name
                    ),
                )
            } else {
                e
            }
        })?;
        if stat.meta.file_type != FileType::Symlink || stat.link_target.is_empty() {
            return Ok((current, stat));
        }
        current = stat.link_target.clone();
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "`{path}` in container `{}`: too many levels of symlinks",
            conn.name
        ),
    ))
}

/// Metadata following symlinks.
pub(crate) async fn stat_follow(conn: &Conn, path: &str) -> Result<Metadata> {
    resolve(conn, path).await.map(|(_, stat)| stat.meta)
}

type ArchiveStream =
    Pin<Box<dyn Stream<Item = std::result::Result<Bytes, bollard::errors::Error>> + Send>>;

fn download(conn: &Conn, path: &str) -> ArchiveStream {
    let options = DownloadFromContainerOptions {
        path: path.to_owned(),
    };
    Box::pin(conn.docker.download_from_container(&conn.id, Some(options)))
}

/// The first entry of an archive stream: its header, and a reader of its body.
async fn first_entry(conn: &Conn, path: &str) -> Result<(Header, EntryReader)> {
    let mut stream = download(conn, path);
    let mut reader = tar::Reader::new();
    loop {
        match reader.next_event() {
            Ok(Some(Event::Entry(header))) => {
                return Ok((
                    header,
                    EntryReader {
                        stream,
                        reader,
                        chunk: Bytes::new(),
                        done: false,
                    },
                ))
            }
            Ok(Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("the engine sent an empty archive for `{path}`"),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(Error::new(ErrorKind::Protocol, format!("`{path}`: {e}"))),
        }
        match stream.next().await {
            Some(Ok(bytes)) => reader.feed(&bytes),
            Some(Err(e)) => return Err(archive_error(conn, path, "reading", e)),
            None => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("the engine's archive of `{path}` ended early"),
                ))
            }
        }
    }
}

/// Streams one archive entry's body.
struct EntryReader {
    stream: ArchiveStream,
    reader: tar::Reader,
    chunk: Bytes,
    done: bool,
}

impl AsyncRead for EntryReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                let part = self.chunk.split_to(n);
                buf.put_slice(&part);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match self.reader.next_event() {
                Ok(Some(Event::Data(data))) => {
                    self.chunk = data;
                    continue;
                }
                Ok(Some(Event::Entry(_) | Event::End)) => {
                    self.done = true;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
            match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.reader.feed(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        e,
                    )))
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the engine's archive ended in the middle of the file",
                    )))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The distribution, from `/etc/os-release` (`debian 12`), where the image has one.
pub(crate) async fn os_release(conn: &Conn) -> Option<String> {
    let text = read_small(conn, "/etc/os-release").await?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let id = field("ID")?;
    Some(match field("VERSION_ID") {
        Some(version) => format!("{id} {version}"),
        None => id,
    })
}

/// A small text file (resolving symlinks), or `None`.
async fn read_small(conn: &Conn, path: &str) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let (real, stat) = resolve(conn, path).await.ok()?;
    if !stat.meta.is_file() || stat.meta.len > 1 << 20 {
        return None;
    }
    let (_, mut body) = first_entry(conn, &real).await.ok()?;
    let mut text = String::new();
    body.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// Refuses a `user[:group]` named in the destination that the container does not have: the
/// engine would run every command with an error of its own as output and status 126, and
/// files would be written for a user that does not exist. Numeric ids need no entry.
pub(crate) async fn check_user(conn: &Conn) -> Result<()> {
    let mut parts = conn.user.splitn(2, ':');
    let named = [
        (parts.next().unwrap_or(""), "/etc/passwd", "user"),
        (parts.next().unwrap_or(""), "/etc/group", "group"),
    ];
    for (name, file, what) in named {
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let known = read_small(conn, file).await.is_some_and(|text| {
            text.lines()
                .any(|line| line.split(':').next() == Some(name))
        });
        if !known {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "container `{}` has no {what} `{name}` (not in its {file}): name one it \
                     has, or give a numeric uid (`docker://1000@{}`)",
                    conn.name, conn.name
                ),
            ));
        }
    }
    Ok(())
}

fn parent_and_name(path: &str) -> (String, String) {
    let parent = reach_core::path::parent(path).unwrap_or(".");
    (
        parent.to_owned(),
        reach_core::path::file_name(path).to_owned(),
    )
}

/// The container's files.
#[derive(Debug)]
pub(crate) struct DockerFs {
    conn: Arc<Conn>,
    home: tokio::sync::OnceCell<String>,
    owner: tokio::sync::OnceCell<(u32, u32)>,
}

impl DockerFs {
    pub(crate) fn new(conn: Arc<Conn>) -> Self {
        DockerFs {
            conn,
            home: tokio::sync::OnceCell::new(),
            owner: tokio::sync::OnceCell::new(),
        }
    }

    fn name(&self) -> &str {
        &self.conn.name
    }

    /// The user's `/etc/passwd` entry: (uid, gid, home).
    async fn passwd(&self) -> Option<(u32, u32, String)> {
        let user = self.conn.user.split(':').next().unwrap_or("");
        let text = read_small(&self.conn, "/etc/passwd").await?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let matches = if user.is_empty() {
                f.get(2) == Some(&"0")
            } else {
                f.first() == Some(&user) || f.get(2) == Some(&user)
            };
            if !matches || f.len() < 6 {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_owned()))
        })
    }

    async fn home(&self) -> String {
        self.home
            .get_or_init(|| async {
                if let Some(agent) = self.conn.agent().await {
                    if agent.home().starts_with('/') {
                        return agent.home().to_owned();
                    }
                }
                match self.passwd().await {
                    Some((_, _, home)) if home.starts_with('/') => home,
                    _ => "/".to_owned(),
                }
            })
            .await
            .clone()
    }

    /// Who owns what is written: the destination's user.
    async fn owner(&self) -> (u32, u32) {
        *self
            .owner
            .get_or_init(|| async {
                if let Some(agent) = self.conn.agent().await {
                    return agent.owner();
                }
                let user = &self.conn.user;
                let mut ids = user.split(':').map(str::parse::<u32>);
                match (ids.next(), ids.next()) {
                    (Some(Ok(uid)), Some(Ok(gid))) => (uid, gid),
                    _ => match self.passwd().await {
                        Some((uid, gid, _)) => (uid, gid),
                        None => (0, 0),
                    },
                }
            })
            .await
    }

    async fn abs(&self, path: &str) -> String {
        if path.starts_with('/') {
            return path.to_owned();
        }
        let home = self.home().await;
        let rel = path.trim_start_matches("./");
        if rel.is_empty() || rel == "." {
            home
        } else if home.ends_with('/') {
            format!("{home}{rel}")
        } else {
            format!("{home}/{rel}")
        }
    }

    /// Uploads a small archive (directories, symlinks) into `dir`.
    async fn put(&self, dir: &str, archive: Vec<u8>, what: &str) -> Result<()> {
        let options = UploadToContainerOptionsBuilder::new().path(dir).build();
        self.conn
            .docker
            .upload_to_container(
                &self.conn.id,
                Some(options),
                bollard::body_full(Bytes::from(archive)),
            )
            .await
            .map_err(|e| archive_error(&self.conn, what, "writing", e))
    }

    async fn header(&self, name: &str, kind: Kind, mode: u32, size: u64, link: &str) -> Header {
        let (uid, gid) = self.owner().await;
        Header {
            name: name.to_owned(),
            kind,
            mode,
            uid,
            gid,
            size,
            mtime: unix_now(),
            link: link.to_owned(),
        }
    }

    /// The parent of `path` must be an existing directory.
    async fn need_parent(&self, path: &str) -> Result<String> {
        let (parent, _) = parent_and_name(path);
        match stat_follow(&self.conn, &parent).await {
            Ok(meta) if meta.is_dir() => Ok(parent),
            Ok(_) => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "`{path}` in container `{}`: `{parent}` is not a directory",
                    self.name()
                ),
            )),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "`{path}` in container `{}`: directory `{parent}` does not exist",
                    self.name()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    async fn must_not_exist(&self, path: &str) -> Result<()> {
        match stat_raw(&self.conn, path).await {
            Ok(_) => Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("`{path}` already exists in container `{}`", self.name()),
            )),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An agent read or write that failed, named.
    fn agent_io_error(&self, verb: &str, path: &str, e: std::io::Error) -> Error {
        let kind = e
            .raw_os_error()
            .map_or(ErrorKind::SessionDropped, errno_kind);
        Error::new(
            kind,
            format!("{verb} `{path}` in container `{}`: {e}", self.name()),
        )
    }

    /// Runs an operation the archive API lacks: through the agent, else a shell command.
    async fn op(&self, op: Op, path: &str, args: &[u8], shell: Option<String>) -> Result<Bytes> {
        let verb = op_verb(op);
        if let Some(agent) = self.conn.agent().await {
            return agent.op(op, path, args).await?.map_err(|f| {
                Error::new(
                    errno_kind(f.errno),
                    format!(
                        "{verb} `{path}` in container `{}`: {}",
                        self.name(),
                        f.message
                    ),
                )
            });
        }
        let Some(line) = shell else {
            return Err(self.unsupported(verb, path));
        };
        if !self.conn.has_shell().await {
            return Err(self.unsupported(verb, path));
        }
        let process = crate::process::exec(self.conn.clone(), ExecSpec::shell(line)).await?;
        let out = process.output().await?;
        if out.status.success() {
            return Ok(Bytes::from(out.stdout));
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let lower = said.to_ascii_lowercase();
        let kind = if lower.contains("no such file") {
            ErrorKind::NotFound
        } else if lower.contains("permission denied")
            || lower.contains("read-only")
            || lower.contains("not permitted")
        {
            ErrorKind::PermissionDenied
        } else if lower.contains("file exists") {
            ErrorKind::AlreadyExists
        } else if lower.contains("not empty") || lower.contains("not a directory") {
            ErrorKind::InvalidInput
        } else {
            ErrorKind::Io
        };
        Err(Error::new(
            kind,
            format!("{verb} `{path}` in container `{}`: {said}", self.name()),
        ))
    }

    fn unsupported(&self, verb: &str, path: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot {verb} `{path}` in container `{}`: the Docker archive API has no such \
                 operation, image `{}` has no shell (/bin/sh) to do it, and the reach agent is \
                 not available ({})",
                self.name(),
                self.conn.image,
                self.conn.agent_absence()
            ),
        )
    }

    /// A listing from the archive of the whole directory (without agent): every entry's
    /// header, keeping those one level down.
    async fn read_dir_archive(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut stream = download(&self.conn, path);
        let mut reader = tar::Reader::new();
        let mut entries = Vec::new();
        let mut root: Option<String> = None;
        loop {
            match reader.next_event() {
                Ok(Some(Event::Entry(h))) => {
                    let name = h.name.trim_end_matches('/').to_owned();
                    let Some(root) = &root else {
                        root = Some(name);
                        continue;
                    };
                    let Some(rest) = name
                        .strip_prefix(root.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                    else {
                        continue;
                    };
                    if rest.is_empty() || rest.contains('/') {
                        continue;
                    }
                    entries.push(DirEntry {
                        name: rest.to_owned(),
                        metadata: Metadata {
                            file_type: match h.kind {
                                Kind::File => FileType::File,
                                Kind::Dir => FileType::Dir,
                                Kind::Symlink => FileType::Symlink,
                                Kind::Other => FileType::Other,
                            },
                            len: h.size,
                            mode: h.mode,
                            modified: Some(UNIX_EPOCH + Duration::from_secs(h.mtime)),
                            uid: Some(h.uid),
                            gid: Some(h.gid),
                        },
                    });
                    continue;
                }
                Ok(Some(Event::Data(_))) => continue,
                Ok(Some(Event::End)) => break,
                Ok(None) => {}
                Err(e) => return Err(Error::new(ErrorKind::Protocol, format!("`{path}`: {e}"))),
            }
            match stream.next().await {
                Some(Ok(bytes)) => reader.feed(&bytes),
                Some(Err(e)) => return Err(archive_error(&self.conn, path, "listing", e)),
                None => break,
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

fn op_verb(op: Op) -> &'static str {
    match op {
        Op::Rename => "rename",
        Op::Chmod => "chmod",
        Op::Truncate => "truncate",
        Op::RemoveFile => "remove",
        Op::RemoveDir => "remove directory",
        Op::RemoveDirAll => "remove tree",
        Op::ReadDir => "list",
        Op::Sha256 => "hash",
        Op::SetMtime => "set the modification time of",
        Op::Read => "read",
        Op::Write => "write",
    }
}

fn parse_listing(payload: Bytes) -> Vec<DirEntry> {
    let mut fields = Fields(payload);
    let mut entries = Vec::new();
    while !fields.is_empty() {
        let entry = (|| {
            let name = fields.string()?;
            let kind = fields.u8()?;
            let mode = fields.u32()?;
            let len = fields.u64()?;
            let secs = fields.i64()?;
            let nanos = fields.u32()?;
            let uid = fields.u32()?;
            let gid = fields.u32()?;
            Some(DirEntry {
                name,
                metadata: Metadata {
                    file_type: match kind {
                        0 => FileType::File,
                        1 => FileType::Dir,
                        2 => FileType::Symlink,
                        _ => FileType::Other,
                    },
                    len,
                    mode,
                    modified: u64::try_from(secs)
                        .ok()
                        .map(|s| UNIX_EPOCH + Duration::new(s, nanos.min(999_999_999))),
                    uid: Some(uid),
                    gid: Some(gid),
                },
            })
        })();
        match entry {
            Some(entry) => entries.push(entry),
            None => break,
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

#[async_trait]
impl FileSystem for DockerFs {
    fn capabilities(&self) -> Capabilities {
        if self.conn.agent_running() {
            Capabilities::of(&[Capability::Sha256, Capability::SetModified])
        } else if self.conn.shell_known() {
            Capabilities::of(&[Capability::SetModified])
        } else {
            Capabilities::none()
        }
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        let abs = self.abs(path).await;
        if let Some(agent) = self.conn.agent().await {
            let first = reach_agent_client::read_at(
                agent.clone(),
                abs.clone(),
                0,
                reach_agent_client::CHUNK,
            )
            .await
            .map_err(|e| self.agent_io_error("read", &abs, e))?;
            return Ok(Box::pin(reach_agent_client::AgentReader::new(
                agent, abs, first,
            )));
        }
        let (real, stat) = resolve(&self.conn, &abs).await?;
        if !stat.meta.is_file() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "`{abs}` in container `{}` is a {}, not a file",
                    self.name(),
                    stat.meta.file_type.as_str()
                ),
            ));
        }
        let (_, body) = first_entry(&self.conn, &real).await?;
        Ok(Box::pin(body))
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        let abs = self.abs(path).await;
        if let Some(agent) = self.conn.agent().await {
            let mut flags = reach_agent_client::WRITE_CREATE;
            if options.append {
                flags |= reach_agent_client::WRITE_APPEND;
            } else {
                flags |= reach_agent_client::WRITE_TRUNCATE;
            }
            if options.create_new {
                flags |= reach_agent_client::WRITE_EXCLUSIVE;
            }
            reach_agent_client::write_at(agent.clone(), abs.clone(), flags, options.mode, 0, &[])
                .await
                .map_err(|e| self.agent_io_error("open for writing", &abs, e))?;
            return Ok(Box::pin(reach_agent_client::AgentWriter::new(
                agent,
                abs,
                options.append,
                options.sync,
                options.len,
            )));
        }
        // Write through a symlink to its target, as open(2) does.
        let target = match resolve(&self.conn, &abs).await {
            Ok((real, stat)) => Some((real, stat)),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => None,
            Err(e) => return Err(e),
        };
        let (real, mode, prefix) = match target {
            Some((real, stat)) => {
                if options.create_new {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("`{abs}` already exists in container `{}`", self.name()),
                    ));
                }
                if !stat.meta.is_file() {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "`{abs}` in container `{}` is a {}, not a file",
                            self.name(),
                            stat.meta.file_type.as_str()
                        ),
                    ));
                }
                let prefix = options.append.then_some(stat.meta.len);
                (real, stat.meta.mode, prefix)
            }
            None => {
                // A dangling symlink: create its target.
                let real = match stat_raw(&self.conn, &abs).await {
                    Ok(s) if s.meta.file_type == FileType::Symlink => s.link_target,
                    _ => abs.clone(),
                };
                (real, options.mode, None)
            }
        };
        let dir = self.need_parent(&real).await?;
        let (_, name) = parent_and_name(&real);
        let header = self.header(&name, Kind::File, mode, 0, "").await;
        Ok(Box::pin(
            Upload::new(self.conn.clone(), dir, real, header, options.len, prefix).await?,
        ))
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        let abs = self.abs(path).await;
        stat_follow(&self.conn, &abs).await
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        let abs = self.abs(path).await;
        stat_raw(&self.conn, &abs).await.map(|s| s.meta)
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let abs = self.abs(path).await;
        let (real, stat) = resolve(&self.conn, &abs).await?;
        if !stat.meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{abs}` in container `{}` is not a directory", self.name()),
            ));
        }
        if self.conn.agent().await.is_some() {
            let listing = self.op(Op::ReadDir, &abs, &[], None).await?;
            return Ok(parse_listing(listing));
        }
        self.read_dir_archive(&real).await
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let dir = self.need_parent(&abs).await?;
        self.must_not_exist(&abs).await?;
        let (_, name) = parent_and_name(&abs);
        let mut archive = tar::header_bytes(&self.header(&name, Kind::Dir, 0o755, 0, "").await);
        archive.extend(tar::end_of_archive());
        self.put(&dir, archive, &abs).await
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let mut missing = Vec::new();
        let mut current = abs.trim_end_matches('/').to_owned();
        loop {
            if current.is_empty() {
                current = "/".to_owned();
            }
            match stat_follow(&self.conn, &current).await {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!(
                            "`{current}` in container `{}` exists and is not a directory",
                            self.name()
                        ),
                    ))
                }
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) && current != "/" => {
                    let (parent, name) = parent_and_name(&current);
                    missing.push(name);
                    current = parent;
                }
                Err(e) => return Err(e),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut archive = Vec::new();
        let mut name = String::new();
        for part in missing.iter().rev() {
            if !name.is_empty() {
                name.push('/');
            }
            name.push_str(part);
            archive.extend(tar::header_bytes(
                &self
                    .header(&format!("{name}/"), Kind::Dir, 0o755, 0, "")
                    .await,
            ));
        }
        archive.extend(tar::end_of_archive());
        self.put(&current, archive, &abs).await
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("rm -- {}", shell_quote(&abs));
        self.op(Op::RemoveFile, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("rmdir -- {}", shell_quote(&abs));
        self.op(Op::RemoveDir, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        // `rm -rf` is silent about a missing path; the agent's remove_dir_all is not.
        stat_raw(&self.conn, &abs).await?;
        let line = format!("rm -rf -- {}", shell_quote(&abs));
        self.op(Op::RemoveDirAll, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.abs(from).await, self.abs(to).await);
        let mut args = Vec::new();
        reach_agent_client::put_bytes(&mut args, to.as_bytes());
        let line = format!("mv -f -- {} {}", shell_quote(&from), shell_quote(&to));
        self.op(Op::Rename, &from, &args, Some(line))
            .await
            .map(drop)
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("chmod {:o} -- {}", mode & 0o7777, shell_quote(&abs));
        self.op(Op::Chmod, &abs, &(mode & 0o7777).to_be_bytes(), Some(line))
            .await
            .map(drop)
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("truncate -s {len} -- {}", shell_quote(&abs));
        self.op(Op::Truncate, &abs, &len.to_be_bytes(), Some(line))
            .await
            .map(drop)
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        let abs = self.abs(path).await;
        let stat = stat_raw(&self.conn, &abs).await?;
        if stat.meta.file_type != FileType::Symlink {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{abs}` in container `{}` is not a symlink", self.name()),
            ));
        }
        let (header, _) = first_entry(&self.conn, &abs).await?;
        Ok(header.link)
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let abs = self.abs(link).await;
        let dir = self.need_parent(&abs).await?;
        self.must_not_exist(&abs).await?;
        let (_, name) = parent_and_name(&abs);
        let mut archive =
            tar::header_bytes(&self.header(&name, Kind::Symlink, 0o777, 0, target).await);
        archive.extend(tar::end_of_archive());
        self.put(&dir, archive, &abs).await
    }

    async fn home_dir(&self) -> Result<String> {
        Ok(self.home().await)
    }

    async fn set_modified(&self, path: &str, modified: std::time::SystemTime) -> Result<()> {
        let abs = self.abs(path).await;
        let since = modified
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut args = since.as_secs().to_be_bytes().to_vec();
        args.extend(since.subsec_nanos().to_be_bytes());
        let line = format!(
            "touch -c -m -d @{} -- {}",
            since.as_secs(),
            shell_quote(&abs)
        );
        self.op(Op::SetMtime, &abs, &args, Some(line))
            .await
            .map(drop)
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        let abs = self.abs(path).await;
        if self.conn.agent().await.is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "no SHA-256 of `{abs}` in container `{}` without the reach agent ({})",
                    self.name(),
                    self.conn.agent_absence()
                ),
            ));
        }
        let digest = self.op(Op::Sha256, &abs, &[], None).await?;
        <[u8; 32]>::try_from(digest.as_ref())
            .map_err(|_| Error::new(ErrorKind::Protocol, "the agent sent a malformed SHA-256"))
    }
}

type UploadResult = tokio::task::JoinHandle<Result<()>>;

/// A file being written: a tar stream into `PUT /archive`, fed as the caller writes.
struct Upload {
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
    async fn new(
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

use std::future::Future;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_times_parse_with_fractions_and_offsets() {
        let t = |s: &str| {
            parse_time(s)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| (d.as_secs(), d.subsec_nanos()))
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(t("2026-11-21T07:02:54Z"), Some((1_795_244_574, 0)));
        assert_eq!(
            t("2026-11-21T07:02:54.5Z"),
            Some((1_795_244_574, 500_000_000))
        );
        assert_eq!(t("2026-11-21T08:02:54+01:00"), Some((1_795_244_574, 0)));
        assert_eq!(t("not a time"), None);
    }

    #[test]
    fn go_modes_become_types_and_bits() {
        assert_eq!(from_go_mode(go_mode::DIR | 0o755), (FileType::Dir, 0o755));
        assert_eq!(from_go_mode(134_218_239), (FileType::Symlink, 0o777));
        assert_eq!(
            from_go_mode(go_mode::SETUID | 0o711),
            (FileType::File, 0o4711)
        );
    }

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(parent_and_name("/a/b c"), ("/a".into(), "b c".into()));
        assert_eq!(parent_and_name("/top"), ("/".into(), "top".into()));
        assert_eq!(parent_and_name("/a/dir/"), ("/a".into(), "dir".into()));
    }
}
