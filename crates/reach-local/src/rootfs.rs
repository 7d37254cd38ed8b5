//! Root file systems on this host as tar streams: what `reach rootfs export` and `import` do
//! for local (and proot) targets. Written with the `tar` crate on a blocking thread: it packs
//! owners, device numbers and PAX extended attributes, and its unpacking keeps every entry
//! inside the target directory. (reach's own `reach-tar` is a streaming codec for copies; it
//! does not carry devices, hard links or attributes.)

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use reach_core::{BoxRead, Error, Result};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// The size of the pieces a packed stream is handed out in.
const PIECE: usize = 256 * 1024;

/// The tree under `dir` (a host path) as a tar stream; an error in packing fails the stream
/// rather than ending it early.
pub fn export(dir: &Path) -> Result<BoxRead> {
    let meta =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("export `{}`", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::new(
            reach_core::ErrorKind::InvalidInput,
            format!("export `{}`: not a directory", dir.display()),
        ));
    }
    let (tx, rx) = mpsc::channel(8);
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Sender {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE),
        };
        let packed = pack(&dir, &mut out).and_then(|()| out.flush());
        if let Err(e) = packed {
            let what = format!("export `{}`: {e}", dir.display());
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), what)));
        }
    });
    Ok(Box::pin(Receiver {
        rx,
        chunk: Bytes::new(),
    }))
}

/// Unpacks `archive` into `dir` (a host path, made if missing), keeping owners only when
/// running as root (as `tar` does).
pub async fn import(dir: &Path, archive: BoxRead) -> Result<()> {
    let dir = dir.to_owned();
    let shown = dir.display().to_string();
    let reader = tokio_util::io::SyncIoBridge::new(archive);
    tokio::task::spawn_blocking(move || unpack(&dir, reader))
        .await
        .map_err(|e| Error::io(format!("import into `{shown}`"), io::Error::other(e)))?
        .map_err(|e| Error::io(format!("import into `{shown}`"), e))
}

fn unpack(dir: &Path, reader: impl io::Read) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(running_as_root());
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let root = running_as_root();
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            // Their modes and times last, once what they hold is in (a read-only
            // directory would refuse its own contents).
            directories.push(entry);
        } else {
            unpack_entry(dir, &mut entry, root)?;
        }
    }
    for mut entry in directories.into_iter().rev() {
        entry.unpack_in(dir)?;
    }
    Ok(())
}

/// Whether this process may keep owners and make device nodes.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Unpacks one entry of an archive into `dir` (kept inside it): device nodes and FIFOs with
/// `mknod` (the `tar` crate writes them as empty files), everything else by the `tar`
/// crate, with the options of its archive. `root`: keep the entry's owner on a node.
pub fn unpack_entry<R: io::Read>(
    dir: &Path,
    entry: &mut tar::Entry<'_, R>,
    root: bool,
) -> io::Result<()> {
    let kind = entry.header().entry_type();
    if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        special(dir, entry, root)
    } else {
        entry.unpack_in(dir).map(drop)
    }
}

/// A device node or FIFO, made with `mknod` (devices need root), with its owner (as root),
/// mode and mtime.
fn special<R: io::Read>(dir: &Path, entry: &tar::Entry<'_, R>, root: bool) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let header = entry.header();
    let relative = entry.path()?.into_owned();
    if relative.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}` would leave the directory", relative.display()),
        ));
    }
    let path = dir.join(&relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kind = header.entry_type();
    let flag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    let mode = header.mode()? & 0o7777;
    match std::fs::symlink_metadata(&path) {
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    mknod(
        &path,
        flag,
        Mode::from_bits_truncate(mode),
        makedev(u64::from(major), u64::from(minor)),
    )?;
    if root {
        let (uid, gid) = (header.uid()?, header.gid()?);
        std::os::unix::fs::lchown(&path, u32::try_from(uid).ok(), u32::try_from(gid).ok())?;
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let mtime = nix::sys::time::TimeSpec::new(i64::try_from(header.mtime()?).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        None,
        &path,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

fn pack(dir: &Path, out: &mut Sender) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links = HashMap::new();
    add_dir(&mut builder, dir, Path::new("."), &mut links)?;
    builder.finish()
}

/// Adds `host` as `name`, then what it holds, in name order.
fn add_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    host: &Path,
    name: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    add(builder, host, name, links)?;
    let mut children: Vec<_> = std::fs::read_dir(host)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    children.sort();
    for child in children {
        let (host, name) = (host.join(&child), name.join(&child));
        if std::fs::symlink_metadata(&host)?.is_dir() {
            add_dir(builder, &host, &name, links)?;
        } else {
            add(builder, &host, &name, links)?;
        }
    }
    Ok(())
}

/// One entry: its extended attributes first (PAX `SCHILY.xattr.*`), then its header with
/// numeric owners, mode and mtime, then its data.
fn add<W: Write>(
    builder: &mut tar::Builder<W>,
    host: &Path,
    name: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(host)?;
    let mut attributes = Vec::new();
    if let Ok(names) = xattr::list(host) {
        for key in names {
            if let Ok(Some(value)) = xattr::get(host, &key) {
                let key = format!("SCHILY.xattr.{}", key.to_string_lossy());
                attributes.push((key, value));
            }
        }
    }
    if !attributes.is_empty() {
        builder
            .append_pax_extensions(attributes.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    let kind = meta.file_type();
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() || kind.is_block_device() {
            let rdev = meta.rdev();
            let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            header.set_device_major(u32::try_from(major).unwrap_or(0))?;
            header.set_device_minor(u32::try_from(minor).unwrap_or(0))?;
        }
    }
    if kind.is_file() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            return builder.append_link(&mut header, name, first);
        }
        links.insert(key, name.to_owned());
    }
    if kind.is_file() {
        return builder.append_data(&mut header, name, std::fs::File::open(host)?);
    }
    header.set_size(0);
    if kind.is_symlink() {
        return builder.append_link(&mut header, name, std::fs::read_link(host)?);
    }
    // Directories, devices and FIFOs: the header is all (the device numbers are in it).
    builder.append_data(&mut header, name, io::empty())
}

/// The blocking side of a packed stream: bytes gathered into pieces and sent.
struct Sender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for Sender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "nobody reads the export"))
    }
}

/// The reading side of a packed stream.
struct Receiver {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl AsyncRead for Receiver {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.chunk.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.chunk = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk.split_to(n));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// A tree with every kind of entry goes out and comes back the same: a hard link still
    /// one inode, a FIFO, an attribute, modes; owners and a device node when run as root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_round_trips_whole() {
        let root = nix::unistd::geteuid().is_root();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"data").unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("d/hard")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("link")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let has_xattr = xattr::set(src.join("d/f"), "user.reach", b"kept").is_ok();
        if root {
            // Before the mode: a change of owner clears the set-user-id bit.
            std::os::unix::fs::chown(src.join("d/f"), Some(1234), Some(4321)).unwrap();
            nix::sys::stat::mknod(
                &src.join("null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        }
        std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
        let dst = dir.path().join("dst");
        import(&dst, export(&src).unwrap()).await.unwrap();

        let (f, hard) = (dst.join("d/f"), dst.join("d/hard"));
        assert_eq!(std::fs::read(&f).unwrap(), b"data");
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(
            meta.ino(),
            std::fs::metadata(&hard).unwrap().ino(),
            "not one inode"
        );
        assert_eq!(meta.mode() & 0o7777, 0o4751);
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("d/f")
        );
        let fifo = std::fs::symlink_metadata(dst.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo() && fifo.mode() & 0o777 == 0o640);
        if has_xattr {
            assert_eq!(xattr::get(&f, "user.reach").unwrap().unwrap(), b"kept");
        }
        if root {
            assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
            let null = std::fs::symlink_metadata(dst.join("null")).unwrap();
            assert!(
                null.file_type().is_char_device() && null.rdev() == nix::sys::stat::makedev(1, 3)
            );
        }
        let err = match export(&dir.path().join("missing")) {
            Err(e) => e,
            Ok(_) => panic!("exported a missing directory"),
        };
        assert!(err.message().contains("missing"), "{err}");
    }
}
