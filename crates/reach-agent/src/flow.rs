//! Flow control of output: each stream may have [`WINDOW`] bytes sent and not yet
//! acknowledged by the client; its pump waits for room, so a reader that stops reading stops
//! its command and nothing else.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

use reach_agent::protocol::WINDOW;

use crate::frames::{header, send_framed, Out};
use crate::lock;
use crate::spawn_thread;

/// One output stream's flow control: what is sent and not yet acknowledged.
#[derive(Default)]
pub(crate) struct Window {
    /// Bytes in flight, and whether the client's reader is gone.
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

impl Window {
    /// Waits until `n` more bytes may be sent. `false`: the client's reader is gone, and the
    /// bytes are to be dropped.
    pub(crate) fn take(&self, n: usize) -> bool {
        let mut state = lock(&self.state);
        while state.0 >= u64::from(WINDOW) && !state.1 {
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.0 += n as u64;
        !state.1
    }

    /// Frees `count` bytes of the window; `gone`: the reader will read no more.
    pub(crate) fn ack(&self, count: u32, gone: bool) {
        let mut state = lock(&self.state);
        state.0 = state.0.saturating_sub(u64::from(count));
        state.1 |= gone;
        self.freed.notify_all();
    }
}

/// Output windows by command id and stream kind.
pub(crate) type Windows = Mutex<HashMap<(u32, u8), Arc<Window>>>;

/// The window of every output stream being pumped, by command id and stream.
pub(crate) fn windows() -> &'static Windows {
    static WINDOWS: OnceLock<Windows> = OnceLock::new();
    WINDOWS.get_or_init(Default::default)
}

/// Sends what `stream` yields as `kind` frames, within the stream's [`WINDOW`].
pub(crate) fn pump(
    out: Out,
    id: u32,
    kind: u8,
    mut stream: impl Read + Send + 'static,
) -> io::Result<thread::JoinHandle<()>> {
    let window = Arc::new(Window::default());
    lock(windows()).insert((id, kind), window.clone());
    let started = spawn_thread(move || {
        // Read after room for the header, so that a frame is one write with no copy.
        let mut buf = vec![0u8; 9 + 64 * 1024];
        loop {
            match stream.read(&mut buf[9..]) {
                Ok(0) => break,
                Ok(n) => {
                    if window.take(n) {
                        buf[..9].copy_from_slice(&header(kind, id, n));
                        send_framed(&out, &buf[..9 + n]);
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => continue,
                // EIO: a terminal whose other side is closed.
                Err(_) => break,
            }
        }
        lock(windows()).remove(&(id, kind));
    });
    if started.is_err() {
        lock(windows()).remove(&(id, kind));
    }
    started
}
