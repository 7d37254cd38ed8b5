//! Pseudo-terminals: the only unsafe code in reach-local, kept here with its reasons.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use reach_core::PtySize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The default end-of-file character of a terminal in canonical mode (^D).
const VEOF: u8 = 0x04;

/// A new PTY pair of the given size: (master, slave).
pub(crate) fn open(size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let pair = nix::pty::openpty(&winsize(size), None)?;
    let flags = OFlag::from_bits_truncate(fcntl(pair.master.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        pair.master.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    fcntl(
        pair.master.as_raw_fd(),
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok((pair.master, pair.slave))
}

fn winsize(size: PtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the window size of the terminal behind `master`; the kernel then sends `SIGWINCH` to
/// the terminal's foreground process group.
pub(crate) fn resize(master: &OwnedFd, size: PtySize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which outlives the call;
    // the fd is owned and open.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child the leader of a new session whose controlling terminal is its stdin (the
/// PTY slave), as a login does.
pub(crate) fn make_controlling_terminal(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) and
    // ioctl(2), which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The master side of a PTY as an async byte stream. Reads end (EOF) when every slave
/// descriptor is closed, which Linux reports as `EIO`.
#[derive(Debug, Clone)]
pub(crate) struct PtyStream {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl PtyStream {
    pub(crate) fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: `OwnedFd` owns an open descriptor and returns the same one from every
        // `as_raw_fd` call until it is dropped together with the `AsyncFd`.
        let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(PtyStream { fd: Arc::new(fd) })
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        self.fd.get_ref()
    }
}

impl AsyncRead for PtyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A terminal has no half-close: closing stdin types the EOF character (^D) instead,
        // so that `echo hi | reach exec -t local -- cat` ends as it would without a PTY.
        // Errors are ignored: the program may be gone already.
        let _ = ready!(self.poll_write(cx, &[VEOF]));
        Poll::Ready(Ok(()))
    }
}
