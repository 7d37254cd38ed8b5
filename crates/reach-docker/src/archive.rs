//! The engine's archive API: `HEAD` for stat, `GET` (a tar stream) to read, `PUT` (a tar
//! stream) to write. It needs nothing in the image.
//!
//! The engine reads and extracts archives with its own (root) rights: files are written
//! owned by the destination's user, but the engine does not check that user's permissions.
//! A read-only mount or root file system is refused (`PermissionDenied`).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    ContainerArchiveInfoOptions, DownloadFromContainerOptions, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reach_core::{DirEntry, Error, ErrorKind, FileType, Metadata, Result};
use tokio::io::{AsyncRead, ReadBuf};

use crate::tar::{self, Event, Header, Kind};
use crate::{engine_error, Conn};

/// Symlinks followed before giving up (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

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

pub(crate) fn archive_error(
    conn: &Conn,
    path: &str,
    doing: &str,
    err: bollard::errors::Error,
) -> Error {
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
pub(crate) async fn resolve(conn: &Conn, path: &str) -> Result<(String, Stat)> {
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
pub(crate) async fn first_entry(conn: &Conn, path: &str) -> Result<(Header, EntryReader)> {
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
pub(crate) struct EntryReader {
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

/// A small text file (resolving symlinks), or `None`.
pub(crate) async fn read_small(conn: &Conn, path: &str) -> Option<String> {
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
/// Uploads a small archive (directories, symlinks) into `dir`.
pub(crate) async fn put(conn: &Conn, dir: &str, archive: Vec<u8>, what: &str) -> Result<()> {
    let options = UploadToContainerOptionsBuilder::new().path(dir).build();
    conn.docker
        .upload_to_container(
            &conn.id,
            Some(options),
            bollard::body_full(Bytes::from(archive)),
        )
        .await
        .map_err(|e| archive_error(conn, what, "writing", e))
}

/// A listing from the archive of the whole directory (without agent): every entry's
/// header, keeping those one level down.
pub(crate) async fn list(conn: &Conn, path: &str) -> Result<Vec<DirEntry>> {
    let mut stream = download(conn, path);
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
            Some(Err(e)) => return Err(archive_error(conn, path, "listing", e)),
            None => break,
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
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
}
