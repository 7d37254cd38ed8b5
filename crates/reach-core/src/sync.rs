//! Locking shared by every crate of reach.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over from a thread that panicked while holding it: reach's
/// critical sections leave their data consistent at every step, so a panic elsewhere is no
/// reason to fail (or panic) here too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
