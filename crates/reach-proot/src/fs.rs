//! The files of a root file system: this host's files under the root, every path resolved
//! inside it ([`Root::resolve`]) and handed to the local file system; errors speak of the
//! guest's paths.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use reach_core::{
    BoxRead, BoxWrite, Capabilities, Capability, DirEntry, Error, FileSystem, Metadata, Result,
    WriteOptions,
};
use reach_local::LocalFs;

use crate::root::Root;

/// The files under a root, as the commands in it see them.
#[derive(Debug)]
pub(crate) struct RootFs {
    root: Arc<Root>,
    home: String,
    local: LocalFs,
}

impl RootFs {
    pub(crate) fn new(root: Arc<Root>, home: String) -> Self {
        RootFs {
            root,
            home,
            local: LocalFs::new(),
        }
    }

    /// The host path of `guest`, the last component followed.
    fn at(&self, guest: &str) -> Result<String> {
        self.host(guest, true)
    }

    /// The host path of `guest`, the last component taken as it is (a link itself).
    fn entry(&self, guest: &str) -> Result<String> {
        self.host(guest, false)
    }

    fn host(&self, guest: &str, follow: bool) -> Result<String> {
        let path = self.root.resolve(&self.home, guest, follow)?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// `error`, speaking of guest paths instead of host ones.
    fn guest<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            let text = self.root.guest_text(e.message()).replace(" on local", "");
            let again = Error::new(e.kind(), text);
            match e.subject() {
                Some(subject) => again.with_subject(subject),
                None => again,
            }
        })
    }
}

#[async_trait]
impl FileSystem for RootFs {
    fn capabilities(&self) -> Capabilities {
        // Not `HostFiles`: a path inside means another path here. No tree operations: they
        // would walk host paths without resolving each inside the root.
        Capabilities::of(&[Capability::Sha256, Capability::SetModified])
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        let host = self.at(path)?;
        self.guest(self.local.open_read(&host).await)
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        let host = self.at(path)?;
        self.guest(self.local.open_write(&host, options).await)
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        let host = self.at(path)?;
        self.guest(self.local.metadata(&host).await)
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        let host = self.entry(path)?;
        self.guest(self.local.symlink_metadata(&host).await)
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let host = self.at(path)?;
        self.guest(self.local.read_dir(&host).await)
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        let host = self.entry(path)?;
        self.guest(self.local.create_dir(&host).await)
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        let host = self.at(path)?;
        self.guest(self.local.create_dir_all(&host).await)
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        let host = self.entry(path)?;
        self.guest(self.local.remove_file(&host).await)
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        let host = self.entry(path)?;
        self.guest(self.local.remove_dir(&host).await)
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        let host = self.entry(path)?;
        self.guest(self.local.remove_dir_all(&host).await)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.entry(from)?, self.entry(to)?);
        self.guest(self.local.rename(&from, &to).await)
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        let host = self.at(path)?;
        self.guest(self.local.set_permissions(&host, mode).await)
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let host = self.at(path)?;
        self.guest(self.local.truncate(&host, len).await)
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        let host = self.entry(path)?;
        self.guest(self.local.read_link(&host).await)
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        // The target is kept as written: it is resolved inside the root when followed.
        let host = self.entry(link)?;
        self.guest(self.local.symlink(target, &host).await)
    }

    async fn export_rootfs(&self, dir: &str) -> Result<BoxRead> {
        let host = self.at(dir)?;
        self.guest(self.local.export_rootfs(&host).await)
    }

    async fn import_rootfs(&self, dir: &str, archive: BoxRead) -> Result<()> {
        let host = self.at(dir)?;
        self.guest(self.local.import_rootfs(&host, archive).await)
    }

    async fn home_dir(&self) -> Result<String> {
        Ok(self.home.clone())
    }

    async fn set_modified(&self, path: &str, modified: SystemTime) -> Result<()> {
        let host = self.at(path)?;
        self.guest(self.local.set_modified(&host, modified).await)
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        let host = self.at(path)?;
        self.guest(self.local.sha256(&host).await)
    }
}
