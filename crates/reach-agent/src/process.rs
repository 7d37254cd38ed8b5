//! Commands: started on pipes or on a pseudo-terminal, in a process group of their own,
//! their input fed and their output pumped by threads, their status sent after all output.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::{lock, spawn_thread};
use reach_agent::protocol::*;

use crate::flow::pump;
use crate::frames::{error_payload, send, Fields, Out};
use crate::sys;

/// A command (or TCP connection) the agent carries.
pub(crate) struct Running {
    /// The command's pid; 0 for a TCP connection.
    pub(crate) pid: i32,
    pub(crate) stdin: Option<Sender<Option<Vec<u8>>>>,
    /// The terminal's master, for resizing.
    pub(crate) pty: Option<i32>,
    /// A TCP connection's socket, to shut down on SIGNAL.
    pub(crate) socket: Option<TcpStream>,
}

/// What runs, by the client's id.
pub(crate) type Table = Arc<Mutex<HashMap<u32, Running>>>;

/// Starts a command for a SPAWN frame.
pub(crate) fn spawn(out: &Out, table: &Table, id: u32, payload: &[u8]) {
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
            let terminal = sys::open_pty(rows, cols).and_then(|(m, slave)| {
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
            command
                .stdin(Stdio::from(slave))
                .stdout(Stdio::from(a))
                .stderr(Stdio::from(b));
            sys::take_terminal_on_start(&mut command);
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
        lock(table).remove(&id);
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
    }
}

/// Feeds stdin to `sink` from a channel; `None` ends the input. On a terminal, the end of
/// input only closes this thread's copy of the master: the pump keeps the terminal open.
fn feed(
    out: &Out,
    id: u32,
    sink: impl Write + Send + 'static,
) -> io::Result<Sender<Option<Vec<u8>>>> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let out = out.clone();
    let mut sink = sink;
    spawn_thread(move || forward(&out, id, &rx, &mut sink))?;
    Ok(tx)
}

/// Writes what arrives on `rx` to `sink` until the end of input, telling the client what was
/// taken (its window for this stdin) at each quarter window: the client waits only with a
/// whole window unreported, so that is soon enough, and costs few frames. Once `sink`
/// refuses (the command closed its stdin), what follows is dropped, as a pipe would, and
/// still told as taken.
pub(crate) fn forward(out: &Out, id: u32, rx: &Receiver<Option<Vec<u8>>>, sink: &mut impl Write) {
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
fn start_terminal(
    out: &Out,
    table: &Table,
    id: u32,
    mut child: Child,
    m: std::fs::File,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let pid = child.id() as i32;
    let fd = m.as_raw_fd();
    let wired = m.try_clone().and_then(|writer| {
        let stdin = feed(out, id, writer)?;
        lock(table).insert(
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
        let stdin = child
            .stdin
            .take()
            .map(|pipe| feed(out, id, pipe))
            .transpose()?;
        lock(table).insert(
            id,
            Running {
                pid,
                stdin,
                pty: None,
                socket: None,
            },
        );
        let stdout = child
            .stdout
            .take()
            .map(|s| pump(out.clone(), id, STDOUT, s))
            .transpose()?;
        let stderr = child
            .stderr
            .take()
            .map(|s| pump(out.clone(), id, STDERR, s))
            .transpose()?;
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
    sys::send_signal(-(pid as i32), 9);
}

/// Tells the client the command started, and waits for its end in a thread.
fn finish_start(
    out: &Out,
    table: &Table,
    id: u32,
    readers: [Option<thread::JoinHandle<()>>; 2],
    child: Child,
) -> io::Result<()> {
    let pid = child.id();
    let (waiter_out, waiter_table) = (out.clone(), table.clone());
    let (tx, rx) = channel::<()>();
    // The waiter starts only once STARTED is out, so EXIT cannot overtake it.
    let waiter = spawn_thread(move || {
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

/// Sends the exit status once every byte of output is sent.
fn wait(
    out: Out,
    table: Table,
    id: u32,
    mut child: Child,
    readers: [Option<thread::JoinHandle<()>>; 2],
) {
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    let status = child.wait();
    lock(&table).remove(&id);
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
