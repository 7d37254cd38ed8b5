//! Files in a container: reads and writes through the agent when it runs (`reach-agent-client`),
//! else through the archive API ([`crate::archive`], [`crate::upload`]). What the archive API
//! cannot do goes through the agent, or else a shell ([`crate::ops`]).

use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    shell_quote, BoxRead, BoxWrite, Capabilities, Capability, DirEntry, Error, ErrorKind,
    FileSystem, FileType, Metadata, Result, WriteOptions,
};

use crate::archive::{self, first_entry, resolve, stat_follow, stat_raw, unix_now};
use crate::ops::{self, parse_listing};
use crate::tar::{self, Header, Kind};
use crate::upload::Upload;
use crate::Conn;
use reach_agent_client::Op;

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

    async fn home(&self) -> String {
        self.home
            .get_or_init(|| async {
                if let Some(agent) = self.conn.agent().await {
                    if agent.home().starts_with('/') {
                        return agent.home().to_owned();
                    }
                }
                match crate::image::passwd(&self.conn).await {
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
                    _ => match crate::image::passwd(&self.conn).await {
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

    /// The header of an entry written as the destination's user, stamped now.
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

    async fn export_rootfs(&self, dir: &str) -> Result<BoxRead> {
        crate::rootfs::export(&self.conn, dir)
    }

    async fn import_rootfs(&self, dir: &str, archive: BoxRead) -> Result<()> {
        let abs = self.abs(dir).await;
        self.create_dir_all(&abs).await?;
        crate::rootfs::import(&self.conn, &abs, archive).await
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
            .map_err(|e| ops::agent_io_error(&self.conn, "read", &abs, e))?;
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
                .map_err(|e| ops::agent_io_error(&self.conn, "open for writing", &abs, e))?;
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
            let listing = ops::op(&self.conn, Op::ReadDir, &abs, &[], None).await?;
            return Ok(parse_listing(listing));
        }
        archive::list(&self.conn, &real).await
    }

    async fn create_dir(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let dir = self.need_parent(&abs).await?;
        self.must_not_exist(&abs).await?;
        let (_, name) = parent_and_name(&abs);
        let mut archive = tar::header_bytes(&self.header(&name, Kind::Dir, 0o755, 0, "").await);
        archive.extend(tar::end_of_archive());
        archive::put(&self.conn, &dir, archive, &abs).await
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
        archive::put(&self.conn, &current, archive, &abs).await
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("rm -- {}", shell_quote(&abs));
        ops::op(&self.conn, Op::RemoveFile, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn remove_dir(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("rmdir -- {}", shell_quote(&abs));
        ops::op(&self.conn, Op::RemoveDir, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn remove_dir_all(&self, path: &str) -> Result<()> {
        let abs = self.abs(path).await;
        // `rm -rf` is silent about a missing path; the agent's remove_dir_all is not.
        stat_raw(&self.conn, &abs).await?;
        let line = format!("rm -rf -- {}", shell_quote(&abs));
        ops::op(&self.conn, Op::RemoveDirAll, &abs, &[], Some(line))
            .await
            .map(drop)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.abs(from).await, self.abs(to).await);
        let mut args = Vec::new();
        reach_agent_client::put_bytes(&mut args, to.as_bytes());
        let line = format!("mv -f -- {} {}", shell_quote(&from), shell_quote(&to));
        ops::op(&self.conn, Op::Rename, &from, &args, Some(line))
            .await
            .map(drop)
    }

    async fn set_permissions(&self, path: &str, mode: u32) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("chmod {:o} -- {}", mode & 0o7777, shell_quote(&abs));
        ops::op(
            &self.conn,
            Op::Chmod,
            &abs,
            &(mode & 0o7777).to_be_bytes(),
            Some(line),
        )
        .await
        .map(drop)
    }

    async fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let abs = self.abs(path).await;
        let line = format!("truncate -s {len} -- {}", shell_quote(&abs));
        ops::op(
            &self.conn,
            Op::Truncate,
            &abs,
            &len.to_be_bytes(),
            Some(line),
        )
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
        archive::put(&self.conn, &dir, archive, &abs).await
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
        ops::op(&self.conn, Op::SetMtime, &abs, &args, Some(line))
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
        let digest = ops::op(&self.conn, Op::Sha256, &abs, &[], None).await?;
        <[u8; 32]>::try_from(digest.as_ref())
            .map_err(|_| Error::new(ErrorKind::Protocol, "the agent sent a malformed SHA-256"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(parent_and_name("/a/b c"), ("/a".into(), "b c".into()));
        assert_eq!(parent_and_name("/top"), ("/".into(), "top".into()));
        assert_eq!(parent_and_name("/a/dir/"), ("/a".into(), "dir".into()));
    }
}
