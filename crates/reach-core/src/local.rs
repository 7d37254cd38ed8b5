//! Facts about the machine reach itself runs on (not about a target).

use std::path::PathBuf;

/// This user's home directory: `$HOME`, or `/` when it is unset or empty (as for a daemon
/// started without one), so that `~/…` never turns into a path relative to wherever reach
/// was started.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
