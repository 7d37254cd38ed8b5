//! Local files: `tokio::fs`, with streaming writes through [`LocalWriter`].

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::SystemTime;

use async_trait::async_trait;
use reach_core::{
    BoxRead, BoxWrite, Capabilities, Capability, DirEntry, Error, ErrorKind, FileSystem, FileType,
    Metadata, Result, WriteOptions,
};

use crate::write::LocalWriter;

/// This machine's files.
#[derive(Debug, Clone, Default)]
pub struct LocalFs {}

impl LocalFs {
    /// The local file system, as the current user.
    pub fn new() -> Self {
        LocalFs {}
    }
}

fn err(op: &str, path: &str, e: std::io::Error) -> Error {
    Error::io(format_args!("{op} `{path}` on local"), e)
}

fn convert(m: &std::fs::Metadata) -> Metadata {
    let ft = m.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    Metadata {
        file_type,
        len: m.len(),
        mode: m.mode() & 0o7777,
        modified: m.modified().ok(),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
    }
}

#[async_trait]
impl FileSystem for LocalFs {
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::HostFiles,
            Capability::Sha256,
            Capability::Sha256Tree,
            Capability::SyncTree,
            Capability::SetModified,
        ])
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| err("open", path, e))?;
        let meta = file.metadata().await.map_err(|e| err("stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("cannot read `{path}` on local: it is a directory"),
            ));
        }
        Ok(Box::pin(file))
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        let mut open = tokio::fs::OpenOptions::new();
        open.write(true).mode(options.mode);
        if options.create_new {
            open.create_new(true);
        } else {
            open.create(true);
        }
        if options.append {
            open.append(true);
        } else {
            open.truncate(true);
        }
        let file = open
            .open(path)
            .await
            .map_err(|e| err("open for writing", path, e))?
            .into_std()
            .await;
        Ok(Box::pin(LocalWriter::new(file, options.sync)))
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        let m = tokio::fs::metadata(path)
            .await
            .map_err(|e| err("stat", path, e))?;
        Ok(convert(&m))
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        let m = tokio::fs::symlink_metadata(path)
            .await
            .map_err(|e| err("lstat", path, e))?;
        Ok(convert(&m))
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut dir = tokio::fs::read_dir(path)
            .await
            .map_err(|e| err("list", path, e))?;
        let mut entries = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(|e| err("list", path, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let m = match entry.metadata().await {
                Ok(m) => m,
                // Removed while we listed it: not an entry any more.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => continue,
                Err(e) => return Err(err("stat", &format!("{path}/{name}"), e)),
            };
            entries.push(DirEntry {
                name,
                metadata: convert(&m),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        tokio::fs::create_dir(path)
            .await
            .map_err(|e| err("create directory", path, e))
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        tokio::fs::create_dir_all(path)
            .await
            .map_err(|e| err("create directory", path, e))
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        tokio::fs::remove_file(path)
            .await
            .map_err(|e| err("remove", path, e))
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        tokio::fs::remove_dir(path)
            .await
            .map_err(|e| err("remove directory", path, e))
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        tokio::fs::remove_dir_all(path)
            .await
            .map_err(|e| err("remove directory tree", path, e))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        tokio::fs::rename(from, to)
            .await
            .map_err(|e| err("rename", &format!("{from}` to `{to}"), e))
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|e| err("chmod", path, e))
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(|e| err("open for truncating", path, e))?;
        file.set_len(len)
            .await
            .map_err(|e| err("truncate", path, e))
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        tokio::fs::read_link(path)
            .await
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| err("read link", path, e))
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        tokio::fs::symlink(target, link)
            .await
            .map_err(|e| err("create symlink", link, e))
    }

    async fn export_rootfs(&self, dir: &str) -> Result<BoxRead> {
        crate::rootfs::export(std::path::Path::new(dir))
    }

    async fn import_rootfs(&self, dir: &str, archive: BoxRead) -> Result<()> {
        crate::rootfs::import(std::path::Path::new(dir), archive).await
    }

    async fn home_dir(&self) -> Result<String> {
        Ok(crate::current_user().dir.to_string_lossy().into_owned())
    }

    async fn set_modified(&self, path: &str, modified: SystemTime) -> Result<()> {
        let since = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mtime = nix::sys::time::TimeSpec::from(since);
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || {
            nix::sys::stat::utimensat(
                None,
                owned.as_str(),
                &nix::sys::time::TimeSpec::UTIME_OMIT,
                &mtime,
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("set the time of `{path}`: {e}")))?
        .map_err(|e| err("set the modification time of", path, e.into()))
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || hash_file(std::path::Path::new(&owned)))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("hash `{path}`: {e}")))?
            .map_err(|e| err("hash", path, e))
    }

    async fn sha256_tree(&self, dir: &str) -> Result<Vec<(String, [u8; 32])>> {
        let root = std::path::PathBuf::from(dir);
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(String, [u8; 32])>> {
            let mut out = Vec::new();
            let mut pending = vec![root.clone()];
            while let Some(at) = pending.pop() {
                for entry in std::fs::read_dir(&at)? {
                    let entry = entry?;
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        pending.push(entry.path());
                    } else if kind.is_file() {
                        let path = entry.path();
                        let rel = path.strip_prefix(&root).unwrap_or(&path);
                        out.push((rel.to_string_lossy().into_owned(), hash_file(&path)?));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("hash the tree `{dir}`: {e}")))?
        .map_err(|e| err("hash the tree", dir, e))
    }

    async fn sync_tree(&self, path: &str) -> Result<()> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = std::fs::File::open(&owned)?;
            use std::os::fd::AsRawFd;
            nix::unistd::syncfs(file.as_raw_fd()).map_err(std::io::Error::from)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("sync `{path}`: {e}")))?
        .map_err(|e| err("sync the file system of", path, e))
    }
}

/// The SHA-256 of a file's contents.
fn hash_file(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}
