//! Files on a target: the [`FileSystem`] trait and its value types.
//!
//! Paths are UTF-8 strings in the target's own syntax: absolute, or relative to the login
//! directory (the current directory for `local`).

use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{BoxRead, BoxWrite, Error, Result};

/// What kind of thing a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only from [`FileSystem::symlink_metadata`] and [`FileSystem::read_dir`]).
    Symlink,
    /// Anything else: a device, a socket, a FIFO.
    Other,
}

impl FileType {
    /// A short lowercase name (`file`, `dir`, `symlink`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::Other => "other",
        }
    }
}

/// What a target tells about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The kind of thing.
    pub file_type: FileType,
    /// Size in bytes.
    pub len: u64,
    /// Permission bits (`0o755`), without the file-type bits.
    pub mode: u32,
    /// Last modification, where the target reports it.
    pub modified: Option<SystemTime>,
    /// Owner's numeric id, where the target has one.
    pub uid: Option<u32>,
    /// Group's numeric id, where the target has one.
    pub gid: Option<u32>,
}

impl Metadata {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type == FileType::File
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The file name, without the directory.
    pub name: String,
    /// The entry's metadata, not following a symlink.
    pub metadata: Metadata,
}

/// How [`FileSystem::open_write`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Fail with [`crate::ErrorKind::AlreadyExists`] if the file exists.
    pub create_new: bool,
    /// Append instead of truncating.
    pub append: bool,
    /// Permission bits for a file that is created (`0o644` by default).
    pub mode: u32,
    /// How many bytes will be written, when the caller knows. A backend that must declare
    /// the size before the data (Docker's archive API) streams with it and buffers without
    /// it; writing a different number of bytes is then an error. Others ignore it.
    pub len: Option<u64>,
    /// Flush the data to stable storage before `shutdown` returns (`fsync`), where the
    /// backend can; backends that cannot ignore it.
    pub sync: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            create_new: false,
            append: false,
            mode: 0o644,
            len: None,
            sync: false,
        }
    }
}

/// The SHA-256 of a file as its target hashed it while it was written (from
/// [`FileSystem::open_write_hashed`]); it resolves once the writer has been shut down.
pub type TargetDigest =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<[u8; 32]>> + Send>>;

/// How [`FileSystem::write_tree`] unpacks a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeOptions {
    /// Keep permission bits and mtimes from the archive.
    pub preserve: bool,
    /// Flush the tree to stable storage before returning.
    pub sync: bool,
    /// Hash every regular file on the target once written, and return the digests.
    pub hash: bool,
}

/// Files on one target.
///
/// Operations a backend cannot offer return [`crate::ErrorKind::Unsupported`] with a message
/// that says why. The optional fast paths (like [`FileSystem::sha256`]) are listed in
/// [`FileSystem::capabilities`], so that callers choose before calling; they return
/// `Unsupported` by default.
#[async_trait]
pub trait FileSystem: Send + Sync + std::fmt::Debug {
    /// The optional file operations this file system offers ([`crate::Capability::Sha256`],
    /// `HashedWrite`, the tree paths, `SetModified`) and whether its files are this
    /// machine's own (`HostFiles`). None by default.
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::none()
    }
    /// Opens a file for streaming reads.
    async fn open_read(&self, path: &str) -> Result<BoxRead>;
    /// Opens (creating or truncating, per `options`) a file for streaming writes. The data is
    /// complete on the target once the stream's `shutdown` has returned `Ok`.
    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite>;
    /// Like [`FileSystem::open_write`], and the target hashes the file (from its first byte,
    /// so a continued file's earlier part too) as the data lands in it, reading back what
    /// it wrote while the rest is still arriving. The digest resolves after the writer's
    /// `shutdown`; a digest that fails says nothing about the write (check another way).
    /// [`crate::ErrorKind::Unsupported`] unless the backend has a fast path.
    async fn open_write_hashed(
        &self,
        path: &str,
        options: WriteOptions,
    ) -> Result<(BoxWrite, TargetDigest)> {
        let _ = (path, options);
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no hashing while writing on this backend",
        ))
    }
    /// Metadata, following symlinks.
    async fn metadata(&self, path: &str) -> Result<Metadata>;
    /// Metadata of the path itself, not following a final symlink.
    async fn symlink_metadata(&self, path: &str) -> Result<Metadata>;
    /// The entries of a directory, sorted by name, without `.` and `..`.
    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>>;
    /// Creates one directory; its parent must exist.
    async fn create_dir(&self, path: &str) -> Result<()>;
    /// Creates a directory and any missing parents; succeeds if it exists already.
    async fn create_dir_all(&self, path: &str) -> Result<()>;
    /// Removes a file or symlink.
    async fn remove_file(&self, path: &str) -> Result<()>;
    /// Removes an empty directory.
    async fn remove_dir(&self, path: &str) -> Result<()>;
    /// Removes a directory and everything under it (symlinks are removed, not followed).
    async fn remove_dir_all(&self, path: &str) -> Result<()>;
    /// Renames `from` to `to`, replacing a file at `to` atomically.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Sets the permission bits.
    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()>;
    /// Cuts or extends a file to `len` bytes.
    async fn truncate(&self, path: &str, len: u64) -> Result<()>;
    /// The target of a symlink.
    async fn read_link(&self, path: &str) -> Result<String>;
    /// Creates a symlink at `link` pointing to `target`.
    async fn symlink(&self, target: &str, link: &str) -> Result<()>;
    /// The login (home) directory.
    async fn home_dir(&self) -> Result<String>;
    /// Sets the modification time (and, where the target needs both, the access time to the
    /// same value), following symlinks. [`crate::ErrorKind::Unsupported`] by default.
    async fn set_modified(&self, path: &str, modified: SystemTime) -> Result<()> {
        let _ = (path, modified);
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "this backend cannot set modification times",
        ))
    }
    /// Unpacks a tar stream into `dir`, which this call creates (it must not exist; its
    /// parent must). With [`TreeOptions::preserve`], permission bits and mtimes come from
    /// the archive; without, modes are masked by the target's umask and mtimes are the time
    /// of writing. With [`TreeOptions::sync`] the tree is on stable storage when this returns;
    /// with [`TreeOptions::hash`] the target hashes every regular file once written and
    /// returns the digests by path relative to `dir` (`None` when it cannot).
    ///
    /// A fast path for whole trees: [`crate::ErrorKind::Unsupported`] by default (callers
    /// then copy entry by entry), and returned before reading the archive.
    async fn write_tree(
        &self,
        dir: &str,
        archive: BoxRead,
        options: TreeOptions,
    ) -> Result<Option<Vec<(String, [u8; 32])>>> {
        let _ = (dir, archive, options);
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no tree upload on this backend",
        ))
    }
    /// Packs the tree under `dir` into a tar stream (entries relative to `dir`; regular files,
    /// directories, symlinks, and any special files as such). The stream fails if packing
    /// does. [`crate::ErrorKind::Unsupported`] by default.
    async fn read_tree(&self, dir: &str) -> Result<BoxRead> {
        let _ = dir;
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no tree download on this backend",
        ))
    }
    /// The root file system (or any tree) under `dir` as a tar stream that keeps what a
    /// root file system needs: owners (numeric), modes, mtimes, hard links, symbolic links,
    /// device nodes, FIFOs and extended attributes, as far as the target can read them.
    /// Entries are relative to `dir`. The stream fails if packing does.
    /// [`crate::ErrorKind::Unsupported`] by default.
    async fn export_rootfs(&self, dir: &str) -> Result<BoxRead> {
        let _ = dir;
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no root file system export on this backend",
        ))
    }
    /// Unpacks a tar stream into `dir` (made if missing) keeping what
    /// [`FileSystem::export_rootfs`] keeps, where the target allows it (owners and device
    /// nodes need root there). Entries may not leave `dir`.
    /// [`crate::ErrorKind::Unsupported`] by default, returned before reading the archive.
    async fn import_rootfs(&self, dir: &str, archive: BoxRead) -> Result<()> {
        let _ = (dir, archive);
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no root file system import on this backend",
        ))
    }
    /// The SHA-256 of every regular file under `dir`, computed on the target, with its path
    /// relative to `dir` (`sub/name`). [`crate::ErrorKind::Unsupported`] by default.
    async fn sha256_tree(&self, dir: &str) -> Result<Vec<(String, [u8; 32])>> {
        let _ = dir;
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no remote tree hashing on this backend",
        ))
    }
    /// Flushes everything written under `path` to stable storage (`syncfs`).
    /// [`crate::ErrorKind::Unsupported`] by default.
    async fn sync_tree(&self, path: &str) -> Result<()> {
        let _ = path;
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no file system sync on this backend",
        ))
    }
    /// The SHA-256 of a file computed on the target, without moving its bytes.
    /// [`crate::ErrorKind::Unsupported`] unless the backend has a fast path.
    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        let _ = path;
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "no remote SHA-256 on this backend",
        ))
    }
}

/// Whole-file helpers on top of [`FileSystem`].
#[async_trait]
pub trait FileSystemExt: FileSystem {
    /// Reads a whole file into memory.
    async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut stream = self.open_read(path).await?;
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::io(format_args!("read `{path}`"), e))?;
        Ok(buf)
    }

    /// Writes a whole file (created or truncated, mode 0644).
    async fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let options = WriteOptions {
            len: Some(data.len() as u64),
            ..WriteOptions::default()
        };
        let mut stream = self.open_write(path, options).await?;
        let context = || format!("write `{path}`");
        stream
            .write_all(data)
            .await
            .map_err(|e| Error::io(context(), e))?;
        stream.shutdown().await.map_err(|e| Error::io(context(), e))
    }
}

impl<F: FileSystem + ?Sized> FileSystemExt for F {}
