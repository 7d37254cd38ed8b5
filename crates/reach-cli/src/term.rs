//! The local terminal: raw mode that is always restored, and its size.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use reach::PtySize;

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on stdout (or stdin), or 24x80.
pub fn size() -> PtySize {
    terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdin()))
        .map(|(w, h)| PtySize {
            rows: h.0,
            cols: w.0,
        })
        .unwrap_or_default()
}

/// Puts stdin's terminal in raw mode until dropped. Dropping restores the saved settings;
/// callers keep the guard on the stack of `run` so that every return path (and unwinding)
/// passes through the restore before the process exits.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enters raw mode; `None` if stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Asks for a secret on the controlling terminal (`/dev/tty`) with echo off; `None` when
/// there is no terminal (then only the environment variables can supply it).
pub fn prompt_secret(prompt: &str) -> Option<reach::ssh::zeroize::Zeroizing<String>> {
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let saved = termios::tcgetattr(tty.as_fd()).ok()?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(termios::LocalFlags::ECHO);
    quiet.local_flags.insert(termios::LocalFlags::ECHONL);
    let mut writer = &tty;
    let _ = writer.write_all(prompt.as_bytes());
    let _ = writer.flush();
    termios::tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &quiet).ok()?;
    let mut line = reach::ssh::zeroize::Zeroizing::new(String::new());
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &saved);
    read.ok()?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Some(line)
}
