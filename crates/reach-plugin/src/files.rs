//! An adapter's files: each [`FileSystem`] operation is one request; reads and writes
//! stream, flow-controlled like a command's output and input.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reach_core::{
    BoxRead, BoxWrite, Capabilities, DirEntry, Error, ErrorKind, FileSystem, FileType, Metadata,
    Result, TargetDigest, WriteOptions,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::input::{digest_from_hex, FileWriter};
use crate::pipe::StreamReader;
use crate::session::Session;
use crate::wire::Stream;

/// The files of an adapter's target.
#[derive(Debug)]
pub(crate) struct PluginFs {
    session: Arc<Session>,
    capabilities: Capabilities,
    /// The adapter's features: each file operation is asked only if it claims it.
    features: Arc<BTreeSet<String>>,
}

/// A file's metadata as adapters send it.
#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(rename = "type")]
    file_type: String,
    len: u64,
    mode: u32,
    #[serde(default)]
    mtime_ns: Option<i64>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    #[serde(flatten)]
    meta: Meta,
}

impl Meta {
    fn into_metadata(self) -> Metadata {
        let file_type = match self.file_type.as_str() {
            "file" => FileType::File,
            "dir" => FileType::Dir,
            "symlink" => FileType::Symlink,
            _ => FileType::Other,
        };
        let modified = self.mtime_ns.and_then(|ns| {
            let ns = u64::try_from(ns).ok()?;
            UNIX_EPOCH.checked_add(Duration::from_nanos(ns))
        });
        Metadata {
            file_type,
            len: self.len,
            mode: self.mode,
            modified,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

impl PluginFs {
    pub(crate) fn new(
        session: Arc<Session>,
        capabilities: Capabilities,
        features: Arc<BTreeSet<String>>,
    ) -> Self {
        PluginFs {
            session,
            capabilities,
            features,
        }
    }

    /// `Unsupported`, without asking, for an operation the adapter did not claim.
    fn claims(&self, op: &str) -> Result<()> {
        if self.features.contains(op) {
            Ok(())
        } else {
            Err(Error::unsupported(
                self.session.name(),
                &format!("the file operation `{op}`"),
            ))
        }
    }

    async fn call(&self, op: &str, fields: Value) -> Result<Value> {
        self.claims(op)?;
        self.session.request(op, fields, None).await
    }

    fn answer<T: for<'de> Deserialize<'de>>(&self, op: &str, value: Value) -> Result<T> {
        serde_json::from_value(value).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("{} answered `{op}` with {e}", self.session.name()),
            )
        })
    }

    async fn stat(&self, path: &str, follow: bool) -> Result<Metadata> {
        let value = self
            .call("metadata", json!({"path": path, "follow": follow}))
            .await?;
        Ok(self.answer::<Meta>("metadata", value)?.into_metadata())
    }

    async fn write(
        &self,
        path: &str,
        options: WriteOptions,
        hash: bool,
    ) -> Result<(BoxWrite, TargetDigest)> {
        self.claims("write")?;
        let (id, _, pipes) = self
            .session
            .open(
                "write",
                json!({
                    "path": path,
                    "create_new": options.create_new,
                    "append": options.append,
                    "mode": options.mode,
                    "sync": options.sync,
                    "hash": hash,
                }),
            )
            .await?;
        let (writer, digest) =
            FileWriter::start(self.session.clone(), id, pipes.credit, pipes.closed);
        Ok((Box::pin(writer), digest))
    }
}

#[async_trait]
impl FileSystem for PluginFs {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn open_read(&self, path: &str) -> Result<BoxRead> {
        self.claims("read")?;
        let (id, _, pipes) = self.session.open("read", json!({"path": path})).await?;
        Ok(Box::pin(StreamReader::new(
            pipes.file,
            self.session.clone(),
            id,
            Stream::File,
        )))
    }

    async fn open_write(&self, path: &str, options: WriteOptions) -> Result<BoxWrite> {
        Ok(self.write(path, options, false).await?.0)
    }

    async fn open_write_hashed(
        &self,
        path: &str,
        options: WriteOptions,
    ) -> Result<(BoxWrite, TargetDigest)> {
        if !self.capabilities.has(reach_core::Capability::HashedWrite) {
            return Err(Error::unsupported(self.session.name(), "hashed writes"));
        }
        self.write(path, options, true).await
    }

    async fn metadata(&self, path: &str) -> Result<Metadata> {
        self.stat(path, true).await
    }

    async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        self.stat(path, false).await
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        #[derive(Deserialize)]
        struct Listing {
            entries: Vec<Entry>,
        }
        let value = self.call("read_dir", json!({"path": path})).await?;
        let mut entries: Vec<DirEntry> = self
            .answer::<Listing>("read_dir", value)?
            .entries
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                metadata: e.meta.into_metadata(),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        self.call("create_dir", json!({"path": path}))
            .await
            .map(drop)
    }

    async fn create_dir_all(&self, path: &str) -> Result<()> {
        self.call("create_dir_all", json!({"path": path}))
            .await
            .map(drop)
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        self.call("remove_file", json!({"path": path}))
            .await
            .map(drop)
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        self.call("remove_dir", json!({"path": path}))
            .await
            .map(drop)
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.call("remove_dir_all", json!({"path": path}))
            .await
            .map(drop)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.call("rename", json!({"from": from, "to": to}))
            .await
            .map(drop)
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        self.call("set_permissions", json!({"path": path, "mode": mode}))
            .await
            .map(drop)
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        self.call("truncate", json!({"path": path, "size": len}))
            .await
            .map(drop)
    }

    async fn read_link(&self, path: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct Link {
            target: String,
        }
        let value = self.call("read_link", json!({"path": path})).await?;
        Ok(self.answer::<Link>("read_link", value)?.target)
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.call("symlink", json!({"target": target, "link": link}))
            .await
            .map(drop)
    }

    async fn home_dir(&self) -> Result<String> {
        #[derive(Deserialize)]
        struct Home {
            path: String,
        }
        let value = self.call("home_dir", json!({})).await?;
        Ok(self.answer::<Home>("home_dir", value)?.path)
    }

    async fn set_modified(&self, path: &str, modified: SystemTime) -> Result<()> {
        if !self.capabilities.has(reach_core::Capability::SetModified) {
            return Err(Error::unsupported(
                self.session.name(),
                "setting modification times",
            ));
        }
        let ns = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.call("set_modified", json!({"path": path, "mtime_ns": ns}))
            .await
            .map(drop)
    }

    async fn sha256(&self, path: &str) -> Result<[u8; 32]> {
        if !self.capabilities.has(reach_core::Capability::Sha256) {
            return Err(Error::unsupported(self.session.name(), "hashing files"));
        }
        #[derive(Deserialize)]
        struct Hash {
            sha256: String,
        }
        let value = self.call("sha256", json!({"path": path})).await?;
        digest_from_hex(&self.answer::<Hash>("sha256", value)?.sha256)
    }
}
