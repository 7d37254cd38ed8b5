//! Paths inside a root file system, resolved the way the kernel resolves them for a process
//! whose root is that directory: `..` stops at the root, and a symbolic link with an
//! absolute target starts again from the root, so that no path leads outside it.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use reach_core::{Error, ErrorKind, Result};

/// How many symbolic links one resolution follows (the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// A root file system on this host.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    dir: PathBuf,
}

impl Root {
    /// `dir` (made absolute and canonical), which must be a directory.
    pub(crate) fn open(dir: &Path) -> Result<Root> {
        let canonical = std::fs::canonicalize(dir)
            .map_err(|e| Error::io(format!("the root file system `{}`", dir.display()), e))?;
        if !canonical.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the root file system `{}` is not a directory",
                    canonical.display()
                ),
            ));
        }
        Ok(Root { dir: canonical })
    }

    /// The directory on this host.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host path of `guest` (relative paths start at `base`), following symbolic links
    /// inside the root; the last component only with `follow`. Parts that do not exist are
    /// taken as written, so that a path about to be made resolves too.
    pub(crate) fn resolve(&self, base: &str, guest: &str, follow: bool) -> Result<PathBuf> {
        let start = if guest.starts_with('/') {
            guest.to_owned()
        } else {
            format!("{base}/{guest}")
        };
        let mut todo: Vec<OsString> = components(Path::new(&start));
        todo.reverse();
        let mut done: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                done.pop();
                continue;
            }
            done.push(name);
            if todo.is_empty() && !follow {
                break;
            }
            let host = self.host(&done);
            let target = match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => std::fs::read_link(&host)
                    .map_err(|e| Error::io(format!("read link `{guest}`"), e))?,
                _ => continue,
            };
            links += 1;
            if links > MAX_LINKS {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("`{guest}`: more than {MAX_LINKS} symbolic links to follow"),
                ));
            }
            done.pop();
            if target.is_absolute() {
                done.clear();
            }
            let mut more = components(&target);
            more.reverse();
            todo.extend(more);
        }
        Ok(self.host(&done))
    }

    fn host(&self, parts: &[OsString]) -> PathBuf {
        let mut path = self.dir.clone();
        path.extend(parts);
        path
    }

    /// A message about host path `host` as the guest sees it (the root's prefix removed).
    pub(crate) fn guest_text(&self, message: &str) -> String {
        let prefix = self.dir.to_string_lossy();
        if prefix == "/" {
            return message.to_owned();
        }
        message.replace(prefix.as_ref(), "")
    }
}

/// The named components of `path` (`.` and the root dropped; `..` kept).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn nothing_resolves_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let top = root.dir().to_owned();
        std::fs::create_dir_all(top.join("etc/sub")).unwrap();
        symlink("/", top.join("etc/to-root")).unwrap();
        symlink("../../../../..", top.join("etc/up")).unwrap();
        symlink("/etc/sub", top.join("abs")).unwrap();
        symlink("loop", top.join("loop")).unwrap();
        let at = |p: &str, follow: bool| root.resolve("/", p, follow).unwrap();
        assert_eq!(at("/../../etc/passwd", true), top.join("etc/passwd"));
        assert_eq!(at("/etc/to-root/etc/shadow", true), top.join("etc/shadow"));
        assert_eq!(at("/etc/up/etc/shadow", true), top.join("etc/shadow"));
        assert_eq!(at("/abs/x", true), top.join("etc/sub/x"));
        assert_eq!(at("/abs", false), top.join("abs"));
        assert_eq!(at("/abs", true), top.join("etc/sub"));
        assert_eq!(at("sub/../x", true), top.join("x"));
        assert_eq!(
            root.resolve("/etc", "sub", true).unwrap(),
            top.join("etc/sub")
        );
        assert_eq!(at("/etc/to-root", true), top);
        let err = root.resolve("/", "/loop", true).unwrap_err();
        assert!(err.message().contains("symbolic links"), "{err}");
    }
}
