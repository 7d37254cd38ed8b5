//! One image layer applied to a root file system: decompressed (gzip, zstd or none, told by
//! its first bytes), its whiteouts applied (`.wh.NAME` removes what lower layers left at
//! NAME; `.wh..wh..opq` empties a directory of what lower layers put in it), and its entries
//! unpacked with owners (as root), modes, links, device nodes and extended attributes.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// The whiteout prefix of the OCI image layer format.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

/// The layer in `blob` (a verified blob file), decompressed as its first bytes say.
fn open(blob: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::new(std::fs::File::open(blob)?);
    let head = file.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
    } else {
        Box::new(file)
    })
}

/// A path from a layer, relative and without `..`; `None` for one that would leave the root.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Removes whatever is at `path` (a directory with all it holds; a link, not its target).
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies the layer in `blob` to the root file system at `root`.
pub(crate) fn apply(root: &Path, blob: &Path) -> io::Result<()> {
    let as_root = reach_local_root();
    let mut archive = tar::Archive::new(open(blob)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(as_root);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // What this layer itself made: an opaque marker hides only what lower layers left.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(path) = clean(&raw) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the layer names `{}`, which leaves the root", raw.display()),
            ));
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match name.as_deref() {
            Some(OPAQUE) => {
                let dir = root.join(&parent);
                if let Ok(children) = std::fs::read_dir(&dir) {
                    for child in children {
                        let child = child?;
                        if !made.contains(&parent.join(child.file_name())) {
                            remove(&child.path())?;
                        }
                    }
                }
                continue;
            }
            Some(name) if name.starts_with(WHITEOUT) => {
                remove(&root.join(&parent).join(&name[WHITEOUT.len()..]))?;
                continue;
            }
            _ => {}
        }
        let target = root.join(&path);
        let kind = entry.header().entry_type();
        // A directory stays (and takes the new metadata); anything else is replaced.
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !(meta.is_dir() && kind.is_dir()) {
                remove(&target)?;
            }
        }
        reach_local::rootfs::unpack_entry(root, &mut entry, as_root)?;
        made.insert(path);
    }
    Ok(())
}

fn reach_local_root() -> bool {
    reach_local::rootfs::running_as_root()
}
