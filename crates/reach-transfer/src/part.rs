//! The temporary sibling each file is written to, and the registry of those in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reach_core::path::{file_name, join};
use reach_core::FileSystem;

/// The temporary's suffix.
pub const PART_SUFFIX: &str = ".reach-part";

/// The directory holding `path` (`""` for a bare name, relative to the login directory).
pub(crate) fn parent_of(path: &str) -> &str {
    reach_core::path::parent(path).unwrap_or("")
}

/// The temporary sibling a file is written to: `.NAME.reach-part`.
pub fn part_path(path: &str) -> String {
    let name = file_name(path);
    join(parent_of(path), &format!(".{name}{PART_SUFFIX}"))
}

pub(crate) type Temp = (Arc<dyn FileSystem>, String);

#[derive(Debug, Default)]
pub(crate) struct TempRegistry {
    pub(crate) next: AtomicU64,
    pub(crate) live: Mutex<HashMap<u64, Temp>>,
}

impl TempRegistry {
    pub(crate) fn add(&self, fs: &Arc<dyn FileSystem>, path: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, (fs.clone(), path.to_owned()));
        }
        id
    }
    pub(crate) fn done(&self, id: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
    }
    pub(crate) fn drain(&self) -> Vec<Temp> {
        match self.live.lock() {
            Ok(mut live) => live.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reach_core::path::{file_name, join};

    #[test]
    fn paths() {
        assert_eq!(part_path("/a/b.txt"), "/a/.b.txt.reach-part");
        assert_eq!(part_path("b.txt"), ".b.txt.reach-part");
        assert_eq!(part_path("/b"), "/.b.reach-part");
        assert_eq!(file_name("/a/dir/"), "dir");
        assert_eq!(join("/a/", "b"), "/a/b");
        assert_eq!(join("", "b"), "b");
        assert_eq!(parent_of("x"), "");
        assert_eq!(parent_of("/x"), "/");
        assert_eq!(parent_of("a/b/c"), "a/b");
    }
}
