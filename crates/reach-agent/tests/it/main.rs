//! The `reach-agent` executable, driven over its stdin/stdout as a client would: frames in,
//! frames out, with real commands, files and process groups on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use reach_agent::protocol::*;

struct Agent {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
}

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn spawn_payload(argv: &[&str], piped: bool) -> Vec<u8> {
    let mut payload = (argv.len() as u32).to_be_bytes().to_vec();
    for arg in argv {
        put(&mut payload, arg.as_bytes());
    }
    payload.extend_from_slice(&0u32.to_be_bytes());
    put(&mut payload, b"");
    payload.push(u8::from(piped));
    payload.push(0);
    payload
}

impl Agent {
    fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reach-agent"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the agent starts");
        let input = child.stdin.take().expect("stdin");
        let output = child.stdout.take().expect("stdout");
        let mut agent = Agent {
            child,
            input,
            output,
        };
        let (kind, id, hello) = agent.next();
        assert_eq!((kind, id), (HELLO, 0));
        let len = u32::from_be_bytes(hello[..4].try_into().expect("len")) as usize;
        assert_eq!(&hello[4..4 + len], VERSION.as_bytes());
        agent
    }

    fn send(&mut self, kind: u8, id: u32, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.input.write_all(&frame).expect("write a frame");
    }

    fn next(&mut self) -> (u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.output.read_exact(&mut head).expect("a frame header");
        let id = u32::from_be_bytes(head[1..5].try_into().expect("id"));
        let len = u32::from_be_bytes(head[5..9].try_into().expect("len")) as usize;
        let mut payload = vec![0u8; len];
        self.output
            .read_exact(&mut payload)
            .expect("a frame payload");
        (head[0], id, payload)
    }

    /// Every frame for `id` up to its EXIT: (stdout, stderr, exit payload).
    fn run_to_exit(&mut self, id: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let (kind, got, payload) = self.next();
            assert_eq!(got, id, "frame {kind} for another id");
            match kind {
                STARTED => {}
                STDOUT => out.extend(payload),
                STDERR => err.extend(payload),
                EXIT => return (out, err, payload),
                other => panic!("unexpected frame {other}: {payload:?}"),
            }
        }
    }
}

fn exit_code(payload: &[u8]) -> i32 {
    assert_eq!(payload[0], 0, "a code, not a signal: {payload:?}");
    i32::from_be_bytes(payload[1..5].try_into().expect("code"))
}

#[test]
fn a_command_s_output_comes_before_its_status() {
    let mut agent = Agent::start();
    agent.send(
        SPAWN,
        1,
        &spawn_payload(&["sh", "-c", "printf out; printf err >&2; exit 3"], false),
    );
    let (out, err, exit) = agent.run_to_exit(1);
    assert_eq!((&out[..], &err[..]), (&b"out"[..], &b"err"[..]));
    assert_eq!(exit_code(&exit), 3);
}

#[test]
fn stdin_reaches_the_command_and_its_end_ends_it() {
    let mut agent = Agent::start();
    agent.send(SPAWN, 4, &spawn_payload(&["wc", "-c"], true));
    agent.send(STDIN, 4, &[b'x'; 1000]);
    agent.send(STDIN_EOF, 4, &[]);
    let (out, _, exit) = agent.run_to_exit(4);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "1000");
    assert_eq!(exit_code(&exit), 0);
}

#[test]
fn a_missing_command_fails_to_start_with_its_errno() {
    let mut agent = Agent::start();
    agent.send(SPAWN, 2, &spawn_payload(&["reach-no-such-command"], false));
    let (kind, id, payload) = agent.next();
    assert_eq!((kind, id), (SPAWN_FAILED, 2));
    assert_eq!(payload[0], 0, "the command, not the directory");
    assert_eq!(
        i32::from_be_bytes(payload[1..5].try_into().expect("errno")),
        2
    );
}

#[test]
fn a_signal_to_the_group_ends_the_command_by_that_signal() {
    let mut agent = Agent::start();
    agent.send(SPAWN, 3, &spawn_payload(&["sh", "-c", "sleep 30"], false));
    let (kind, _, _) = agent.next();
    assert_eq!(kind, STARTED);
    agent.send(SIGNAL, 3, &[15, 1]);
    let (_, _, exit) = agent.run_to_exit(3);
    assert_eq!(exit[0], 1, "died by a signal: {exit:?}");
    assert_eq!(
        i32::from_be_bytes(exit[1..5].try_into().expect("signal")),
        15
    );
}

#[test]
fn files_are_written_read_and_hashed_on_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let path = path.to_str().expect("utf-8");
    let mut agent = Agent::start();
    let mut write = vec![OP_WRITE];
    put(&mut write, path.as_bytes());
    write.push(WRITE_CREATE | WRITE_TRUNCATE);
    write.extend_from_slice(&0o644u32.to_be_bytes());
    write.extend_from_slice(&0u64.to_be_bytes());
    write.extend_from_slice(b"abc");
    agent.send(FS_OP, 5, &write);
    assert_eq!(agent.next(), (FS_OK, 5, Vec::new()));
    assert_eq!(std::fs::read(path).expect("written"), b"abc");
    let mut hash = vec![OP_SHA256];
    put(&mut hash, path.as_bytes());
    agent.send(FS_OP, 6, &hash);
    let (kind, _, digest) = agent.next();
    assert_eq!(kind, FS_OK);
    let expected: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        b"abc",
    ))
    .into();
    assert_eq!(digest, expected);
    let mut missing = vec![OP_READ];
    put(
        &mut missing,
        dir.path().join("nope").to_str().expect("utf-8").as_bytes(),
    );
    missing.extend_from_slice(&0u64.to_be_bytes());
    missing.extend_from_slice(&16u32.to_be_bytes());
    agent.send(FS_OP, 7, &missing);
    let (kind, id, payload) = agent.next();
    assert_eq!((kind, id), (FS_ERR, 7));
    assert_eq!(
        i32::from_be_bytes(payload[1..5].try_into().expect("errno")),
        2
    );
}

/// When the connection goes, so does everything the agent started.
#[test]
fn the_end_of_stdin_kills_every_command_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let mut agent = Agent::start();
    let line = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    agent.send(SPAWN, 8, &spawn_payload(&["sh", "-c", &line], false));
    assert_eq!(agent.next().0, STARTED);
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    let Agent {
        mut child, input, ..
    } = agent;
    drop(input);
    child.wait().expect("the agent exits once its stdin ends");
    let proc = format!("/proc/{pid}");
    while std::path::Path::new(&proc).exists()
        && !std::fs::read_to_string(format!("{proc}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "sleep {pid} outlived its agent");
        std::thread::sleep(Duration::from_millis(20));
    }
}
