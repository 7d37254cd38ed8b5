//! The agent's main loop: hello, then one frame at a time from stdin until it ends, when
//! every process group the agent started is killed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use reach_agent::protocol::*;

use crate::files::fs_op;
use crate::flow::windows;
use crate::frames::{error_payload, put_bytes, send, Fields, Out};
use crate::process::{spawn, Table};
use crate::spawn_thread;
use crate::tcp::connect;
use crate::{lock, sys};

/// Serves the client on stdin/stdout until stdin ends.
pub(crate) fn run() {
    let out: Out = Arc::new(Mutex::new(sys::stdout_file()));
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
                let (Some(stream), Some(count), Some(gone)) =
                    (fields.u8(), fields.u32(), fields.u8())
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
                let table = lock(&table);
                if let Some(running) = table.get(&id) {
                    if let Some(socket) = &running.socket {
                        let _ = socket.shutdown(Shutdown::Both);
                    } else if running.pid > 0 {
                        let target = if group == 1 {
                            -running.pid
                        } else {
                            running.pid
                        };
                        sys::send_signal(target, i32::from(signo));
                    }
                }
            }
            RESIZE => {
                let mut fields = Fields(&payload);
                let (Some(rows), Some(cols)) = (fields.u32(), fields.u32()) else {
                    continue;
                };
                let table = lock(&table);
                if let Some(fd) = table.get(&id).and_then(|r| r.pty) {
                    sys::set_size(fd, rows as u16, cols as u16);
                }
            }
            CONNECT => {
                let (worker, rows) = (out.clone(), table.clone());
                if let Err(err) = spawn_thread(move || connect(&worker, &rows, id, &payload)) {
                    send(&out, SPAWN_FAILED, id, &error_payload(&err, 0));
                }
            }
            FS_OP => {
                let worker = out.clone();
                if let Err(err) = spawn_thread(move || fs_op(&worker, id, &payload)) {
                    send(&out, FS_ERR, id, &error_payload(&err, 0));
                }
            }
            _ => eprintln!("reach-agent: unknown frame kind {kind}"),
        }
    }
    // The connection is gone: end everything this agent started.
    let table = lock(&table);
    for running in table.values().filter(|r| r.pid > 0) {
        sys::send_signal(-running.pid, 9);
    }
}
