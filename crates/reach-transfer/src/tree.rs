//! Whole trees in one stream, where a backend offers it ([`FileSystem::write_tree`] on the
//! destination, else [`FileSystem::read_tree`] on the source): the tree is unpacked into a
//! `.NAME.reach-part` directory beside the target, flushed, hashed on the target and compared
//! file by file with the hashes of the bytes sent, then renamed into place in one step. Used
//! only when the target does not exist yet; otherwise files are copied one by one.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use reach_core::path::join;
use reach_core::{
    BoxRead, Capability, Error, ErrorKind, FileSystem, FileType, Metadata, Result, WriteOptions,
};
use reach_tar::{Event, Header, Kind};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    describe, not_as_sent, part_path, special, DirItem, Failure, FileReport, Item, Side, Summary,
    Transfer, Verified, CHUNK,
};

/// Files up to this size are read whole ahead of the stream (several at once).
const PREFETCH_MAX: u64 = 1024 * 1024;

/// Digests by path relative to a tree.
type Sums = Vec<(String, [u8; 32])>;

/// A file sent: its path relative to the tree and what was sent.
struct Sent {
    rel: String,
    src: String,
    bytes: u64,
    digest: [u8; 32],
}

/// A planned item ready to go into the stream, with its paths.
enum Ready<'i> {
    /// A symlink, and where it points.
    Link {
        to: &'i str,
        meta: Metadata,
        link: String,
    },
    /// A regular file and its contents.
    File {
        from: &'i String,
        to: &'i str,
        meta: &'i Metadata,
        data: Loaded,
    },
}

/// A file's contents, ready to go into the stream.
enum Loaded {
    /// Read whole.
    Small(Vec<u8>),
    /// Opened, to be streamed in turn.
    Big(BoxRead),
}

fn rel_of(target: &str, path: &str) -> String {
    path.strip_prefix(target)
        .unwrap_or(path)
        .trim_start_matches('/')
        .to_owned()
}

fn header(name: String, kind: Kind, meta: &Metadata, size: u64, link: String) -> Header {
    let mtime = meta
        .modified
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Header {
        name,
        kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid.unwrap_or(0),
        gid: meta.gid.unwrap_or(0),
        size,
        mtime,
        link,
    }
}

impl Transfer {
    /// Copies a planned tree in one stream when a backend can; `Ok(false)` when neither can
    /// (nothing was written then).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn bulk_tree(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        root: &str,
        target: &str,
        dirs: &[DirItem],
        items: &[Item],
        summary: &mut Summary,
    ) -> Result<bool> {
        match dst.fs.symlink_metadata(target).await {
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
            _ => return Ok(false),
        }
        let staging = part_path(target);
        // A target that lacks the tools a listed path needs says Unsupported when it is
        // tried, and the next path is taken.
        let uploaded = if dst.fs.capabilities().has(Capability::WriteTree) {
            unless_unsupported(
                self.upload_tree(src, dst, &staging, target, dirs, items, summary)
                    .await,
            )
        } else {
            None
        };
        let tried = match uploaded {
            None if src.fs.capabilities().has(Capability::ReadTree) => unless_unsupported(
                self.download_tree(src, dst, root, &staging, summary)
                    .await
                    .map(|sent| (sent, None)),
            ),
            other => other,
        };
        let Some(outcome) = tried else {
            tracing::debug!("no whole-tree stream for `{target}`: copying file by file");
            return Ok(false);
        };
        tracing::debug!("copying the tree into `{target}` as one stream");
        let finished = match outcome {
            Ok((sent, sums)) => {
                self.seal(src, dst, &staging, target, sent, sums, summary)
                    .await
            }
            Err(e) => Err(e),
        };
        if finished.is_err() {
            let _ = dst.fs.remove_dir_all(&staging).await;
        }
        finished.map(|()| true)
    }

    /// Streams the planned tree as tar into the destination's `write_tree`.
    #[allow(clippy::too_many_arguments)]
    async fn upload_tree(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        staging: &str,
        target: &str,
        dirs: &[DirItem],
        items: &[Item],
        summary: &mut Summary,
    ) -> Result<(Vec<Sent>, Option<Sums>)> {
        let _ = dst.fs.remove_dir_all(staging).await;
        let (reader, mut writer) = tokio::io::duplex(4 * CHUNK);
        let mut failures = Vec::new();
        let produce = async {
            let mut sent = Vec::new();
            for dir in dirs.iter().skip(1) {
                let name = format!("{}/", rel_of(target, &dir.dst));
                let h = header(name, Kind::Dir, &dir.meta, 0, String::new());
                writer.write_all(&reach_tar::header_bytes(&h)).await?;
            }
            let mut loaded = stream::iter(items)
                .map(|item| self.load(src, item))
                .buffered(self.options.concurrency.max(1));
            while let Some(got) = loaded.next().await {
                match got {
                    Err(error) => failures.push(error),
                    Ok(Ready::Link { to, meta, link }) => {
                        let h = header(rel_of(target, to), Kind::Symlink, &meta, 0, link);
                        writer.write_all(&reach_tar::header_bytes(&h)).await?;
                        summary.symlinks += 1;
                    }
                    Ok(Ready::File {
                        from,
                        to,
                        meta,
                        data,
                    }) => {
                        let rel = rel_of(target, to);
                        let h = header(rel.clone(), Kind::File, meta, meta.len, String::new());
                        writer.write_all(&reach_tar::header_bytes(&h)).await?;
                        let mut hasher = Sha256::new();
                        let bytes = match data {
                            Loaded::Small(bytes) => {
                                hasher.update(&bytes);
                                writer.write_all(&bytes).await?;
                                bytes.len() as u64
                            }
                            Loaded::Big(mut reader) => {
                                let mut buf = vec![0u8; CHUNK];
                                let mut total = 0u64;
                                loop {
                                    let n = reader.read(&mut buf).await?;
                                    if n == 0 {
                                        break;
                                    }
                                    hasher.update(&buf[..n]);
                                    writer.write_all(&buf[..n]).await?;
                                    total += n as u64;
                                    self.progress.advance(n as u64);
                                }
                                total
                            }
                        };
                        if bytes != meta.len {
                            return Err(std::io::Error::other(format!(
                                "`{}` changed size while it was copied ({} bytes, then {bytes})",
                                describe(src.backend, from),
                                meta.len
                            )));
                        }
                        writer.write_all(&reach_tar::body_padding(bytes)).await?;
                        self.progress
                            .done_files
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        sent.push(Sent {
                            rel,
                            src: from.clone(),
                            bytes,
                            digest: hasher.finalize().into(),
                        });
                    }
                }
            }
            writer.write_all(&reach_tar::end_of_archive()).await?;
            writer.shutdown().await?;
            Ok::<_, std::io::Error>(sent)
        };
        summary.dirs += dirs.len().saturating_sub(1) as u64;
        let options = reach_core::TreeOptions {
            preserve: self.options.preserve,
            sync: self.options.sync,
            hash: self.options.verify,
        };
        let unpack = dst.fs.write_tree(staging, Box::pin(reader), options);
        let (sent, unpacked) = tokio::join!(produce, unpack);
        let sums = unpacked?;
        let sent = sent.map_err(|e| {
            Error::io(
                format_args!("stream the tree to `{}`", describe(dst.backend, staging)),
                e,
            )
        })?;
        summary.failures.extend(failures);
        Ok((sent, sums))
    }

    /// Opens (and reads whole, when small) one planned item, ahead of its turn.
    async fn load<'i>(
        &self,
        src: &Side<'_>,
        item: &'i Item,
    ) -> std::result::Result<Ready<'i>, Failure> {
        let (Item::Link { src: from, .. } | Item::File { src: from, .. }) = item;
        let ready = async {
            match item {
                Item::Link { dst: to, .. } => {
                    let link = src.fs.read_link(from).await?;
                    let meta = src.fs.symlink_metadata(from).await?;
                    Ok(Ready::Link { to, meta, link })
                }
                Item::File { meta, .. } if meta.file_type != FileType::File => {
                    Err(special(&describe(src.backend, from)))
                }
                Item::File { dst: to, meta, .. } => {
                    let mut reader = src.fs.open_read(from).await?;
                    let data = if meta.len <= PREFETCH_MAX {
                        let mut bytes = Vec::with_capacity(meta.len as usize);
                        reader.read_to_end(&mut bytes).await.map_err(|e| {
                            Error::io(format_args!("read `{}`", describe(src.backend, from)), e)
                        })?;
                        self.progress.advance(bytes.len() as u64);
                        Loaded::Small(bytes)
                    } else {
                        Loaded::Big(reader)
                    };
                    Ok(Ready::File {
                        from,
                        to,
                        meta,
                        data,
                    })
                }
            }
        };
        ready.await.map_err(|error| Failure {
            source: describe(src.backend, from),
            error,
        })
    }

    /// Unpacks the source's `read_tree` stream into `staging` entry by entry.
    async fn download_tree(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        root: &str,
        staging: &str,
        summary: &mut Summary,
    ) -> Result<Vec<Sent>> {
        let mut archive = src.fs.read_tree(root).await?;
        let _ = dst.fs.remove_dir_all(staging).await;
        let shown = describe(src.backend, root);
        let mut reader = reach_tar::Reader::new();
        let mut buf = vec![0u8; CHUNK];
        let mut sent = Vec::new();
        let mut stamps: Vec<(String, Metadata)> = Vec::new();
        // The file being written: its writer, hasher, relative path and header.
        let mut open: Option<(reach_core::BoxWrite, Sha256, String, Header)> = None;
        let mut made_root = false;
        loop {
            let event = reader.next_event().map_err(|e| {
                Error::new(ErrorKind::Protocol, format!("the tree of `{shown}`: {e}"))
            })?;
            let event = match event {
                Some(event) => event,
                None => {
                    let n = archive
                        .read(&mut buf)
                        .await
                        .map_err(|e| Error::io(format_args!("read the tree of `{shown}`"), e))?;
                    if n == 0 {
                        return Err(Error::new(
                            ErrorKind::SessionDropped,
                            format!("the tree of `{shown}` ended early"),
                        ));
                    }
                    reader.feed(&buf[..n]);
                    continue;
                }
            };
            if let Event::Data(bytes) = &event {
                if let Some((writer, hasher, ..)) = open.as_mut() {
                    hasher.update(bytes);
                    writer.write_all(bytes).await.map_err(|e| {
                        Error::io(
                            format_args!("write into `{}`", describe(dst.backend, staging)),
                            e,
                        )
                    })?;
                    self.progress.advance(bytes.len() as u64);
                }
                continue;
            }
            if let Some((mut writer, hasher, rel, h)) = open.take() {
                let path = join(staging, &rel);
                writer.shutdown().await.map_err(|e| {
                    Error::io(format_args!("write `{}`", describe(dst.backend, &path)), e)
                })?;
                self.progress
                    .done_files
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sent.push(Sent {
                    src: join(root, &rel),
                    rel,
                    bytes: h.size,
                    digest: hasher.finalize().into(),
                });
                if self.options.preserve || h.mode & 0o600 != 0o600 {
                    stamps.push((path, tar_meta(&h)));
                }
            }
            let Event::Entry(h) = event else {
                break;
            };
            let rel = h
                .name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            if !made_root {
                dst.fs.create_dir(staging).await?;
                made_root = true;
            }
            if rel.is_empty() || rel == "." {
                if self.options.preserve {
                    stamps.push((staging.to_owned(), tar_meta(&h)));
                }
                continue;
            }
            let path = join(staging, &rel);
            match h.kind {
                Kind::Dir => {
                    dst.fs.create_dir(&path).await?;
                    summary.dirs += 1;
                    if self.options.preserve {
                        stamps.push((path, tar_meta(&h)));
                    }
                }
                Kind::File => {
                    let options = WriteOptions {
                        mode: (h.mode & 0o777) | 0o600,
                        len: Some(h.size),
                        ..WriteOptions::default()
                    };
                    let writer = dst.fs.open_write(&path, options).await?;
                    open = Some((writer, Sha256::new(), rel, h));
                }
                Kind::Symlink => {
                    dst.fs.symlink(&h.link, &path).await?;
                    summary.symlinks += 1;
                }
                Kind::Other => summary.failures.push(Failure {
                    source: describe(src.backend, &join(root, &rel)),
                    error: special(&describe(src.backend, &join(root, &rel))),
                }),
            }
        }
        // Directories last and deepest first, so that writing into them does not undo it.
        for (path, meta) in stamps.iter().rev() {
            if self.options.preserve {
                crate::stamp(dst.fs, path, meta).await?;
            } else {
                dst.fs.set_permissions(path, meta.mode & 0o777).await?;
            }
        }
        Ok(sent)
    }

    /// Flushes, verifies against the target's own hashes (`sums`, when the unpacking
    /// already did both), and renames the tree into place.
    #[allow(clippy::too_many_arguments)]
    async fn seal(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        staging: &str,
        target: &str,
        sent: Vec<Sent>,
        sums: Option<Sums>,
        summary: &mut Summary,
    ) -> Result<()> {
        if self.options.sync && sums.is_none() && dst.fs.capabilities().has(Capability::SyncTree) {
            match dst.fs.sync_tree(staging).await {
                Err(e) if e.kind() != ErrorKind::Unsupported => return Err(e),
                _ => {}
            }
        }
        let verified = if self.options.verify {
            let sums = match sums {
                Some(sums) => sums.into_iter().collect(),
                None => tree_sums(dst.fs, staging, &sent).await?,
            };
            for file in &sent {
                let got = sums.get(&file.rel).copied();
                if got != Some(file.digest) {
                    return Err(not_as_sent(
                        dst.backend,
                        &join(target, &file.rel),
                        &file.digest,
                        got.as_ref().map(|d| &d[..]),
                    ));
                }
            }
            Verified::TargetHash
        } else {
            Verified::Skipped
        };
        dst.fs.rename(staging, target).await?;
        summary.dirs += 1;
        for file in sent {
            summary.bytes += file.bytes;
            summary.files.push(FileReport {
                source: describe(src.backend, &file.src),
                dest: describe(dst.backend, &join(target, &file.rel)),
                bytes: file.bytes,
                sha256: file.digest,
                resumed_from: 0,
                verified,
            });
        }
        Ok(())
    }
}

/// The target's hashes of the files under `staging`: in one request where it can, else
/// file by file.
async fn tree_sums(
    fs: &Arc<dyn FileSystem>,
    staging: &str,
    sent: &[Sent],
) -> Result<HashMap<String, [u8; 32]>> {
    if fs.capabilities().has(Capability::Sha256Tree) {
        match fs.sha256_tree(staging).await {
            Ok(sums) => return Ok(sums.into_iter().collect()),
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {}
            Err(e) => return Err(e),
        }
    }
    let mut sums = HashMap::new();
    for file in sent {
        let path = join(staging, &file.rel);
        sums.insert(
            file.rel.clone(),
            crate::hash_target(fs, &path, file.bytes).await?.0,
        );
    }
    Ok(sums)
}

/// `None` for an outcome that says the path was not there to take, so that the next is.
fn unless_unsupported<T>(outcome: Result<T>) -> Option<Result<T>> {
    match outcome {
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => None,
        other => Some(other),
    }
}

fn tar_meta(h: &Header) -> Metadata {
    Metadata {
        file_type: match h.kind {
            Kind::Dir => FileType::Dir,
            Kind::Symlink => FileType::Symlink,
            Kind::File => FileType::File,
            Kind::Other => FileType::Other,
        },
        len: h.size,
        mode: h.mode & 0o7777,
        modified: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.mtime)),
        uid: Some(h.uid),
        gid: Some(h.gid),
    }
}
