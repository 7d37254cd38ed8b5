//! TCP connections the client asks the target to make (`ssh -L`), carried like commands.

use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::mpsc::channel;

use crate::lock;
use reach_agent::protocol::*;

use crate::flow::pump;
use crate::frames::{error_payload, send, Fields, Out};
use crate::process::{forward, Running, Table};
use crate::spawn_thread;

/// How long a TCP connection may take to be made.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a TCP connection for the client and carries it until both sides end: the peer's
/// bytes as STDOUT, EXIT at its end of stream, the client's STDIN to it, STDIN_EOF as a
/// shutdown of the writing side.
pub(crate) fn connect(out: &Out, table: &Table, id: u32, payload: &[u8]) {
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
    let feeder = spawn_thread(move || {
        let mut writer = writer;
        forward(&feeder_out, id, &rx, &mut writer);
        let _ = writer.shutdown(Shutdown::Write);
        lock(&rows).remove(&id);
    });
    if let Err(err) = feeder {
        send(out, SPAWN_FAILED, id, &error_payload(&err, 0));
        return;
    }
    lock(table).insert(
        id,
        Running {
            pid: 0,
            stdin: Some(tx),
            pty: None,
            socket: Some(socket),
        },
    );
    let close = || {
        if let Some(running) = lock(table).remove(&id) {
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
    let waited = spawn_thread(move || {
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
