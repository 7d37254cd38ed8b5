//! reach-agent: the helper reach-docker copies into a container and runs once per connection.
//!
//! Starting a process through the Docker engine (`docker exec`) costs a runc exec, tens of
//! milliseconds, and the engine cannot deliver a signal to it, tell a death by signal from an
//! `exit 143`, or kill what it started. This helper is started once through the engine; after
//! that every command is a fork/exec inside the container, and those things work.
//!
//! It is one file with only `std`, compiled by `build.rs` into a static executable (it has to
//! run in images with no libc and no shell). It speaks frames on stdin/stdout:
//! `kind: u8, id: u32 BE, len: u32 BE, payload`. The frame kinds and payloads are listed in
//! `src/agent.rs`, which is the other end. Diagnostics go to stderr.
//!
//! When its stdin ends (the connection is gone), it kills the process group of every command
//! it started and exits: nothing outlives the connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;

mod protocol;
use protocol::*;

const VERSION: &str = "reach-agent 1";

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

fn set_size(fd: i32, rows: u16, cols: u16) {
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
fn open_pty(rows: u16, cols: u16) -> io::Result<(std::fs::File, String)> {
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

/// The agent's stdout, unbuffered: every frame goes out in one write (`io::Stdout` is
/// line-buffered, which split each frame into a write of its header and one of its
/// payload, and the engine passed each on as a piece of its own).
type Out = Arc<Mutex<std::fs::File>>;

fn stdout_file() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 1 stays open for the agent's whole life, and nothing else writes to it:
    // every frame goes through `send` or `send_framed`.
    unsafe { std::fs::File::from_raw_fd(1) }
}

fn header(kind: u8, id: u32, len: usize) -> [u8; 9] {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..5].copy_from_slice(&id.to_be_bytes());
    head[5..9].copy_from_slice(&(len as u32).to_be_bytes());
    head
}

fn send(out: &Out, kind: u8, id: u32, payload: &[u8]) {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&header(kind, id, payload.len()));
    frame.extend_from_slice(payload);
    send_framed(out, &frame);
}

/// Writes a whole frame, header included.
fn send_framed(out: &Out, frame: &[u8]) {
    // A write error means the client is gone; stdin's end will tear everything down.
    let _ = lock(out).write_all(frame);
}

/// Reads length-prefixed fields out of a payload.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn error_payload(err: &io::Error, what: u8) -> Vec<u8> {
    let mut buf = vec![what];
    buf.extend_from_slice(&err.raw_os_error().unwrap_or(0).to_be_bytes());
    put_bytes(&mut buf, err.to_string().as_bytes());
    buf
}

struct Running {
    /// The command's pid; 0 for a TCP connection.
    pid: i32,
    stdin: Option<Sender<Option<Vec<u8>>>>,
    /// The terminal's master, for resizing.
    pty: Option<i32>,
    /// A TCP connection's socket, to shut down on SIGNAL.
    socket: Option<TcpStream>,
}

type Table = Arc<Mutex<HashMap<u32, Running>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One output stream's flow control: what is sent and not yet acknowledged.
#[derive(Default)]
struct Window {
    /// Bytes in flight, and whether the client's reader is gone.
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

impl Window {
    /// Waits until `n` more bytes may be sent. `false`: the client's reader is gone, and the
    /// bytes are to be dropped.
    fn take(&self, n: usize) -> bool {
        let mut state = lock(&self.state);
        while state.0 >= u64::from(WINDOW) && !state.1 {
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.0 += n as u64;
        !state.1
    }

    fn ack(&self, count: u32, gone: bool) {
        let mut state = lock(&self.state);
        state.0 = state.0.saturating_sub(u64::from(count));
        state.1 |= gone;
        self.freed.notify_all();
    }
}

/// The window of every output stream being pumped, by command id and stream.
fn windows() -> &'static Mutex<HashMap<(u32, u8), Arc<Window>>> {
    static WINDOWS: OnceLock<Mutex<HashMap<(u32, u8), Arc<Window>>>> = OnceLock::new();
    WINDOWS.get_or_init(Default::default)
}

fn main() {
    let out: Out = Arc::new(Mutex::new(stdout_file()));
    let table: Table = Arc::new(Mutex::new(HashMap::new()));
    let mut hello = Vec::new();
    put_bytes(&mut hello, VERSION.as_bytes());
    let home = std::env::var("HOME").unwrap_or_default();
    put_bytes(&mut hello, home.as_bytes());
    // The agent runs as the destination's user: its ids own the files written for it.
    let (uid, gid) = std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()));
    hello.extend_from_slice(&uid.to_be_bytes());
    hello.extend_from_slice(&gid.to_be_bytes());
    send(&out, HELLO, 0, &hello);

    let mut input = io::stdin().lock();
    let mut head = [0u8; 9];
    loop {
        if input.read_exact(&mut head).is_err() {
            break;
        }
        let kind = head[0];
        let id = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut payload = vec![0u8; len];
        if input.read_exact(&mut payload).is_err() {
            break;
        }
        match kind {
            SPAWN => spawn(&out, &table, id, &payload),
            STDIN | STDIN_EOF => {
                let len = payload.len() as u32;
                let delivered = lock(&table)
                    .get(&id)
                    .and_then(|r| r.stdin.as_ref())
                    .is_some_and(|sender| sender.send((kind == STDIN).then_some(payload)).is_ok());
                // Input for a command that is gone is dropped, and still counted as taken:
                // the client's window must not shrink for it.
                if !delivered && kind == STDIN {
                    send(&out, TAKEN, id, &len.to_be_bytes());
                }
            }
            ACK => {
                let mut fields = Fields(&payload);
                let (Some(stream), Some(count), Some(gone)) = (fields.u8(), fields.u32(), fields.u8())
                else {
                    continue;
                };
                let window = lock(windows()).get(&(id, stream)).cloned();
                if let Some(window) = window {
                    window.ack(count, gone == 1);
                }
            }
            SIGNAL => {
                let mut fields = Fields(&payload);
                let (Some(signo), Some(group)) = (fields.u8(), fields.u8()) else {
                    continue;
                };
                let table = table.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(running) = table.get(&id) {
                    if let Some(socket) = &running.socket {
                        let _ = socket.shutdown(Shutdown::Both);
                    } else if running.pid > 0 {
                        let target = if group == 1 { -running.pid } else { running.pid };
                        // SAFETY: kill(2) with a pid we started and a signal number.
                        unsafe { kill(target, i32::from(signo)) };
                    }
                }
            }
            RESIZE => {
                let mut fields = Fields(&payload);
                let (Some(rows), Some(cols)) = (fields.u32(), fields.u32()) else {
                    continue;
                };
                let table = table.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(fd) = table.get(&id).and_then(|r| r.pty) {
                    set_size(fd, rows as u16, cols as u16);
                }
            }
            CONNECT => {
                let (worker, rows) = (out.clone(), table.clone());
                if let Err(err) = thread(move || connect(&worker, &rows, id, &payload)) {
                    send(&out, SPAWN_FAILED, id, &error_payload(&err, 0));
                }
            }
            FS_OP => {
                let worker = out.clone();
                if let Err(err) = thread(move || fs_op(&worker, id, &payload)) {
                    send(&out, FS_ERR, id, &error_payload(&err, 0));
                }
            }
            _ => eprintln!("reach-agent: unknown frame kind {kind}"),
        }
    }
    // The connection is gone: end everything this agent started.
    let table = table.lock().unwrap_or_else(|p| p.into_inner());
    for running in table.values().filter(|r| r.pid > 0) {
        // SAFETY: kill(2) on the process groups this agent made.
        unsafe { kill(-running.pid, 9) };
    }
}

fn spawn(out: &Out, table: &Table, id: u32, payload: &[u8]) {
    let mut fields = Fields(payload);
    let parsed = (|| {
        let argc = fields.u32()?;
        let mut argv = Vec::new();
        for _ in 0..argc {
            argv.push(fields.string()?);
        }
        let envc = fields.u32()?;
        let mut env = Vec::new();
        for _ in 0..envc {
            env.push((fields.string()?, fields.string()?));
        }
        let cwd = fields.string()?;
        let piped = fields.u8()? == 1;
        let pty = match fields.u8() {
            Some(1) => Some((fields.u32()? as u16, fields.u32()? as u16)),
            _ => None,
        };
        Some((argv, env, cwd, piped, pty))
    })();
    let Some((argv, env, cwd, piped, pty)) = parsed.filter(|(argv, ..)| !argv.is_empty()) else {
        let err = io::Error::new(io::ErrorKind::InvalidInput, "malformed spawn request");
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
        return;
    };
    if !cwd.is_empty() {
        match std::fs::metadata(&cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                let err = io::Error::from_raw_os_error(20);
                send(out, SPAWN_FAILED, id, &error_payload(&err, 1));
                return;
            }
            Err(err) => {
                send(out, SPAWN_FAILED, id, &error_payload(&err, 1));
                return;
            }
        }
    }
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).envs(env);
    if !cwd.is_empty() {
        command.current_dir(&cwd);
    }
    let mut master = None;
    match pty {
        Some((rows, cols)) => {
            let terminal = open_pty(rows, cols).and_then(|(m, slave)| {
                use std::os::unix::fs::OpenOptionsExt;
                // O_NOCTTY: the agent must not take the terminal as its own.
                let slave = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(0o400)
                    .open(slave)?;
                Ok((m, slave))
            });
            let (m, slave) = match terminal {
                Ok(pair) => pair,
                Err(err) => {
                    send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
                    return;
                }
            };
            let (Ok(a), Ok(b)) = (slave.try_clone(), slave.try_clone()) else {
                let err = io::Error::other("cannot duplicate the terminal");
                send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
                return;
            };
            command.stdin(Stdio::from(slave)).stdout(Stdio::from(a)).stderr(Stdio::from(b));
            // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the terminal
            // the new session's controlling terminal.
            unsafe {
                command.pre_exec(|| {
                    if setsid() < 0 || ioctl(0, TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            master = Some(m);
        }
        None => {
            command
                .process_group(0)
                .stdin(if piped { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let spawned = command.spawn();
    // The agent keeps no end of the terminal's slave: its master sees EOF when the
    // command's side closes.
    drop(command);
    let child = match spawned {
        Ok(child) => child,
        Err(err) => {
            send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
            return;
        }
    };
    // A command needs up to four threads here (stdin, two pumps, the waiter). Without them
    // (a pids limit reached) its process group is killed and its spawn fails; the agent
    // carries on.
    let threads = if let Some(m) = master {
        start_terminal(out, table, id, child, m)
    } else {
        start_piped(out, table, id, child)
    };
    if let Err(err) = threads {
        table.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
    }
}

/// Starts a thread, or says why the system has none to give instead of panicking.
fn thread(f: impl FnOnce() + Send + 'static) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().spawn(f)
}

/// Feeds stdin to `sink` from a channel; `None` ends the input. On a terminal, the end of
/// input only closes this thread's copy of the master: the pump keeps the terminal open.
fn feed(out: &Out, id: u32, sink: impl Write + Send + 'static) -> io::Result<Sender<Option<Vec<u8>>>> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let out = out.clone();
    let mut sink = sink;
    thread(move || forward(&out, id, &rx, &mut sink))?;
    Ok(tx)
}

/// Writes what arrives on `rx` to `sink` until the end of input, telling the client what was
/// taken (its window for this stdin) at each quarter window: the client waits only with a
/// whole window unreported, so that is soon enough, and costs few frames. Once `sink`
/// refuses (the command closed its stdin), what follows is dropped, as a pipe would, and
/// still told as taken.
fn forward(out: &Out, id: u32, rx: &Receiver<Option<Vec<u8>>>, sink: &mut impl Write) {
    let mut open = true;
    let mut taken = 0u32;
    while let Ok(Some(data)) = rx.recv() {
        if open && sink.write_all(&data).is_err() {
            open = false;
        }
        taken += data.len() as u32;
        if taken >= WINDOW / 4 {
            send(out, TAKEN, id, &taken.to_be_bytes());
            taken = 0;
        }
    }
}

/// Wires a command on a terminal: its master carries input and output. The child is
/// reaped (and its process group killed by the caller) when a thread cannot start.
fn start_terminal(out: &Out, table: &Table, id: u32, mut child: Child, m: std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let pid = child.id() as i32;
    let fd = m.as_raw_fd();
    let wired = m.try_clone().and_then(|writer| {
        let stdin = feed(out, id, writer)?;
        table.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Running {
                pid,
                stdin: Some(stdin),
                pty: Some(fd),
                socket: None,
            },
        );
        Ok([Some(pump(out.clone(), id, STDOUT, m)?), None])
    });
    finish_start(out, table, id, child_or_reap(&mut child, wired)?, child)
}

/// Wires a command on pipes: stdin (when piped), stdout and stderr.
fn start_piped(out: &Out, table: &Table, id: u32, mut child: Child) -> io::Result<()> {
    let pid = child.id() as i32;
    let wired = (|| {
        let stdin = child.stdin.take().map(|pipe| feed(out, id, pipe)).transpose()?;
        table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Running { pid, stdin, pty: None, socket: None });
        let stdout = child.stdout.take().map(|s| pump(out.clone(), id, STDOUT, s)).transpose()?;
        let stderr = child.stderr.take().map(|s| pump(out.clone(), id, STDERR, s)).transpose()?;
        Ok([stdout, stderr])
    })();
    finish_start(out, table, id, child_or_reap(&mut child, wired)?, child)
}

/// Passes the wiring on, or kills the child's process group and reaps the child when it
/// failed (in that order: once reaped, its pid may be anyone's).
fn child_or_reap<T>(child: &mut Child, wired: io::Result<T>) -> io::Result<T> {
    if wired.is_err() {
        kill_group(child.id());
        let _ = child.wait();
    }
    wired
}

/// SIGKILLs the process group `pid` leads (every command is its group's leader).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the process group of a child this agent started and has not reaped.
    unsafe { kill(-(pid as i32), 9) };
}

/// Tells the client the command started, and waits for its end in a thread.
fn finish_start(out: &Out, table: &Table, id: u32, readers: [Option<thread::JoinHandle<()>>; 2], child: Child) -> io::Result<()> {
    let pid = child.id();
    let (waiter_out, waiter_table) = (out.clone(), table.clone());
    let (tx, rx) = channel::<()>();
    // The waiter starts only once STARTED is out, so EXIT cannot overtake it.
    let waiter = thread(move || {
        if rx.recv().is_ok() {
            wait(waiter_out, waiter_table, id, child, readers);
        }
    });
    if let Err(err) = waiter {
        // The child went with the closure, unreaped: its pid is still its own.
        kill_group(pid);
        return Err(err);
    }
    send(out, STARTED, id, &pid.to_be_bytes());
    let _ = tx.send(());
    Ok(())
}

/// How long a TCP connection may take to be made.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a TCP connection for the client and carries it until both sides end: the peer's
/// bytes as STDOUT, EXIT at its end of stream, the client's STDIN to it, STDIN_EOF as a
/// shutdown of the writing side.
fn connect(out: &Out, table: &Table, id: u32, payload: &[u8]) {
    let mut fields = Fields(payload);
    let (Some(host), Some(port)) = (fields.string(), fields.u32()) else {
        let err = io::Error::new(io::ErrorKind::InvalidInput, "malformed connect request");
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
        return;
    };
    let stream = dial(&host, port as u16).and_then(|stream| {
        let _ = stream.set_nodelay(true);
        Ok((stream.try_clone()?, stream.try_clone()?, stream))
    });
    let (reader, writer, socket) = match stream {
        Ok(ends) => ends,
        Err(err) => {
            send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
            return;
        }
    };
    let rows = table.clone();
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    // The writing side: ends at STDIN_EOF with a shutdown, so the peer reads its end of
    // stream; the connection is forgotten once both sides are done.
    let feeder_out = out.clone();
    let feeder = thread(move || {
        let mut writer = writer;
        forward(&feeder_out, id, &rx, &mut writer);
        let _ = writer.shutdown(Shutdown::Write);
        rows.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    });
    if let Err(err) = feeder {
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
        return;
    }
    table.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id,
        Running {
            pid: 0,
            stdin: Some(tx),
            pty: None,
            socket: Some(socket),
        },
    );
    let close = || {
        if let Some(running) = table.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            if let Some(socket) = running.socket {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    };
    let reader = match pump(out.clone(), id, STDOUT, reader) {
        Ok(reader) => reader,
        Err(err) => {
            close();
            send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
            return;
        }
    };
    send(out, STARTED, id, &0u32.to_be_bytes());
    let waiter = out.clone();
    // EXIT (code 0) once every byte the peer sent is out: its end of stream.
    let waited = thread(move || {
        let _ = reader.join();
        send(&waiter, EXIT, id, &[0, 0, 0, 0, 0, 0]);
    });
    if waited.is_err() {
        // No thread to tell the end: cut the connection, and its end is unknown.
        close();
        send(out, EXIT, id, &[2, 0, 0, 0, 0, 0]);
    }
}

/// Connects to the first address of `host` that answers.
fn dial(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"));
    for address in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, CONNECT_LIMIT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Sends what `stream` yields as `kind` frames, within the stream's [`WINDOW`].
fn pump(out: Out, id: u32, kind: u8, mut stream: impl Read + Send + 'static) -> io::Result<thread::JoinHandle<()>> {
    let window = Arc::new(Window::default());
    lock(windows()).insert((id, kind), window.clone());
    let started = thread(move || {
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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

/// Sends the exit status once every byte of output is sent.
fn wait(out: Out, table: Table, id: u32, mut child: Child, readers: [Option<thread::JoinHandle<()>>; 2]) {
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    let status = child.wait();
    table.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let mut payload = Vec::with_capacity(6);
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => {
                payload.push(0);
                payload.extend_from_slice(&code.to_be_bytes());
                payload.push(0);
            }
            (None, Some(signal)) => {
                payload.push(1);
                payload.extend_from_slice(&signal.to_be_bytes());
                payload.push(u8::from(status.core_dumped()));
            }
            (None, None) => {
                payload.push(2);
                payload.extend_from_slice(&0i32.to_be_bytes());
                payload.push(0);
            }
        },
        Err(_) => {
            payload.push(2);
            payload.extend_from_slice(&0i32.to_be_bytes());
            payload.push(0);
        }
    }
    send(&out, EXIT, id, &payload);
}

fn fs_op(out: &Out, id: u32, payload: &[u8]) {
    let mut fields = Fields(payload);
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "malformed file request");
    let result = (|| -> io::Result<Vec<u8>> {
        let op = fields.u8().ok_or_else(bad)?;
        let path = fields.string().ok_or_else(bad)?;
        match op {
            OP_RENAME => {
                let to = fields.string().ok_or_else(bad)?;
                std::fs::rename(&path, &to).map(|()| Vec::new())
            }
            OP_CHMOD => {
                let mode = fields.u32().ok_or_else(bad)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map(|()| Vec::new())
            }
            OP_TRUNCATE => {
                let len = fields.u64().ok_or_else(bad)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(len)
                    .map(|()| Vec::new())
            }
            OP_REMOVE_FILE => std::fs::remove_file(&path).map(|()| Vec::new()),
            OP_REMOVE_DIR => std::fs::remove_dir(&path).map(|()| Vec::new()),
            OP_REMOVE_DIR_ALL => std::fs::remove_dir_all(&path).map(|()| Vec::new()),
            OP_READ_DIR => read_dir(&path),
            OP_SHA256 => sha256_file(&path).map(|digest| digest.to_vec()),
            OP_READ => {
                use std::os::unix::fs::FileExt;
                let offset = fields.u64().ok_or_else(bad)?;
                let len = fields.u32().ok_or_else(bad)? as usize;
                let file = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            }
            OP_WRITE => {
                use std::os::unix::fs::{FileExt, OpenOptionsExt};
                let flags = fields.u8().ok_or_else(bad)?;
                let mode = fields.u32().ok_or_else(bad)?;
                let offset = fields.u64().ok_or_else(bad)?;
                let data = fields.0;
                let has = |flag: u8| flags & flag != 0;
                let mut open = std::fs::OpenOptions::new();
                open.write(true).mode(mode);
                if has(WRITE_EXCLUSIVE) {
                    open.create_new(true);
                } else if has(WRITE_CREATE) {
                    open.create(true);
                }
                if has(WRITE_TRUNCATE) {
                    open.truncate(true);
                }
                if has(WRITE_APPEND) {
                    open.append(true);
                }
                let mut file = open.open(&path)?;
                if has(WRITE_APPEND) {
                    file.write_all(data)?;
                } else if !data.is_empty() {
                    file.write_all_at(data, offset)?;
                }
                if has(WRITE_SYNC) {
                    file.sync_all()?;
                }
                Ok(Vec::new())
            }
            OP_SET_MTIME => {
                let secs = fields.u64().ok_or_else(bad)?;
                let nanos = fields.u32().ok_or_else(bad)?;
                let when = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
                std::fs::File::open(&path)?
                    .set_modified(when)
                    .map(|()| Vec::new())
            }
            _ => Err(io::Error::new(io::ErrorKind::Unsupported, "unknown file operation")),
        }
    })();
    match result {
        Ok(answer) => send(out, FS_OK, id, &answer),
        Err(err) => send(out, FS_ERR, id, &error_payload(&err, 0)),
    }
}

/// Entries with their `lstat`: name, kind (0 file, 1 dir, 2 symlink, 3 other), mode, size,
/// mtime seconds, mtime nanoseconds, uid, gid.
fn read_dir(path: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue; // removed while listing
        };
        put_bytes(&mut buf, entry.file_name().as_encoded_bytes());
        let ft = meta.file_type();
        buf.push(if ft.is_symlink() {
            2
        } else if ft.is_dir() {
            1
        } else if ft.is_file() {
            0
        } else {
            3
        });
        buf.extend_from_slice(&(meta.mode() & 0o7777).to_be_bytes());
        buf.extend_from_slice(&meta.len().to_be_bytes());
        buf.extend_from_slice(&meta.mtime().to_be_bytes());
        buf.extend_from_slice(&(meta.mtime_nsec() as u32).to_be_bytes());
        buf.extend_from_slice(&meta.uid().to_be_bytes());
        buf.extend_from_slice(&meta.gid().to_be_bytes());
    }
    Ok(buf)
}

fn sha256_file(path: &str) -> io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finish())
}

/// FIPS 180-4 SHA-256 (the agent has no dependencies).
struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    total: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            total: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.filled == 0 && data.len() >= 64 {
                let whole = data.len() / 64 * 64;
                self.blocks(&data[..whole]);
                data = &data[whole..];
                continue;
            }
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 64 {
                let block = self.block;
                self.blocks(&block);
                self.filled = 0;
            }
        }
    }

    /// Compresses whole 64-byte blocks, with the CPU's SHA instructions where it has them
    /// (four to five times faster than the portable rounds).
    fn blocks(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
        {
            // SAFETY: the features `sha_ni::compress` is compiled for were just detected.
            unsafe { sha_ni::compress(&mut self.state, data) };
            return;
        }
        for block in data.chunks_exact(64) {
            if let Ok(block) = <&[u8; 64]>::try_from(block) {
                self.compress(block);
            }
        }
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut digest = [0u8; 32];
        for (chunk, word) in digest.chunks_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, chunk) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (slot, value) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *slot = slot.wrapping_add(value);
        }
    }
}

/// SHA-256 rounds with the x86 SHA extensions (`sha256rnds2`, `sha256msg1/2`), which keep the
/// state as the register pairs ABEF and CDGH.
#[cfg(target_arch = "x86_64")]
mod sha_ni {
    use std::arch::x86_64::*;

    /// Compresses every whole 64-byte block of `data` into `state`.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress(state: &mut [u32; 8], data: &[u8]) {
        let k = &super::K;
        // Big-endian words: reverse the bytes of each 32-bit lane.
        let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        let dcba = _mm_loadu_si128(state.as_ptr().cast());
        let hgfe = _mm_loadu_si128(state.as_ptr().add(4).cast());
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        let mut abef = _mm_alignr_epi8(cdab, efgh, 8);
        let mut cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
        for block in data.chunks_exact(64) {
            let (abef_before, cdgh_before) = (abef, cdgh);
            let p = block.as_ptr().cast::<__m128i>();
            // The last four groups of four message words; group i replaces group i - 4.
            let mut w = [
                _mm_shuffle_epi8(_mm_loadu_si128(p), swap),
                _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), swap),
                _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), swap),
                _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), swap),
            ];
            for i in 0..16 {
                if i >= 4 {
                    let (w0, w1, w2, w3) = (w[i % 4], w[(i + 1) % 4], w[(i + 2) % 4], w[(i + 3) % 4]);
                    let partial = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
                    w[i % 4] = _mm_sha256msg2_epu32(partial, w3);
                }
                let words = _mm_add_epi32(w[i % 4], _mm_loadu_si128(k.as_ptr().add(4 * i).cast()));
                cdgh = _mm_sha256rnds2_epu32(cdgh, abef, words);
                abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(words, 0x0E));
            }
            abef = _mm_add_epi32(abef, abef_before);
            cdgh = _mm_add_epi32(cdgh, cdgh_before);
        }
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        _mm_storeu_si128(state.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
        _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
    }
}
