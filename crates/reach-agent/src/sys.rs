//! Every call into libc the agent makes, each behind a safe function: this is the only
//! module with `unsafe` code besides the SHA instructions in `hash`. The agent links no
//! crates (it must build as one static executable with `rustc` alone), so the few libc
//! functions it needs are declared here.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn posix_openpt(flags: i32) -> i32;
    fn grantpt(fd: i32) -> i32;
    fn unlockpt(fd: i32) -> i32;
    fn ptsname_r(fd: i32, buf: *mut u8, len: usize) -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn setsid() -> i32;
}

// Linux's generic ioctl numbers (x86_64 and aarch64 alike).
const TIOCSCTTY: u64 = 0x540E;
const TIOCSWINSZ: u64 = 0x5414;
const O_RDWR_NOCTTY: i32 = 0o2 | 0o400;

#[repr(C)]
struct WinSize {
    rows: u16,
    cols: u16,
    xpixel: u16,
    ypixel: u16,
}

/// Sets the window size of the terminal whose master (or slave) is `fd`.
pub(crate) fn set_size(fd: i32, rows: u16, cols: u16) {
    let size = WinSize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    unsafe { ioctl(fd, TIOCSWINSZ, &size as *const WinSize) };
}

/// A new pseudo-terminal of `rows` x `cols`: the master, and the path of its slave.
pub(crate) fn open_pty(rows: u16, cols: u16) -> io::Result<(std::fs::File, String)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at most
    // `len` bytes into `buf`.
    unsafe {
        let fd = posix_openpt(O_RDWR_NOCTTY);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = std::fs::File::from_raw_fd(fd);
        if grantpt(fd) != 0 || unlockpt(fd) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 128];
        let err = ptsname_r(fd, buf.as_mut_ptr(), buf.len());
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        set_size(fd, rows, cols);
        Ok((master, String::from_utf8_lossy(&buf[..end]).into_owned()))
    }
}

/// The agent's stdout as a file, for unbuffered frame writes.
pub(crate) fn stdout_file() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 1 stays open for the agent's whole life, and nothing else writes to it:
    // every frame goes through `send` or `send_framed`.
    unsafe { std::fs::File::from_raw_fd(1) }
}

/// Sends `signal` to `pid` (a negative pid: its whole process group). An error (the process
/// is gone) changes nothing for the caller, so none is returned.
pub(crate) fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers; a stale pid at worst signals nobody (commands
    // are reaped only after their group is done with).
    unsafe { kill(pid, signal) };
}

/// Makes `command` start a new session whose controlling terminal is its stdin (the slave
/// of a pseudo-terminal), as a login on a terminal does.
pub(crate) fn take_terminal_on_start(command: &mut Command) {
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe, so they may run between fork and
    // exec; they touch only the child.
    unsafe {
        command.pre_exec(|| {
            if setsid() < 0 || ioctl(0, TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
