//! The frame kinds and file operations of the agent protocol, shared by both ends (the agent,
//! and `reach-agent-client`), so that the two cannot disagree.
//!
//! Frames: `kind: u8, id: u32 BE, len: u32 BE, payload`.
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 0 HELLO | agent → | version, home directory (each `u32 len + bytes`), uid, gid (`u32`) |
//! | 1 SPAWN | → agent | argc, argv…, envc, (key, value)…, cwd (empty: none), stdin piped `u8`, terminal `u8` (+ rows, cols `u32`) |
//! | 2 STDIN / 3 STDIN_EOF | → agent | bytes / nothing |
//! | 4 SIGNAL | → agent | signal number `u8`, whole process group `u8` |
//! | 5 FS_OP | → agent | op `u8`, path, op arguments |
//! | 6 RESIZE | → agent | rows, cols (`u32`) |
//! | 7 CONNECT | → agent | host, port `u32`: a TCP connection, then carried as a command (STDIN, STDOUT, EXIT at its end, SIGNAL shuts it) |
//! | 8 ACK | → agent | stream (12 or 13) `u8`, bytes read `u32`, reader gone `u8` |
//! | 10 STARTED / 11 SPAWN_FAILED | agent → | pid `u32` / what `u8` (0 command, 1 cwd), errno `i32`, message |
//! | 12 STDOUT / 13 STDERR | agent → | bytes |
//! | 14 EXIT | agent → | 0 code / 1 signal / 2 unknown, value `i32`, core dumped `u8` (after all output) |
//! | 15 FS_OK / 16 FS_ERR | agent → | op result / what, errno, message |
//! | 17 TAKEN | agent → | stdin bytes the command took (or that were dropped) `u32` |
//!
//! Strings and byte fields are `u32 BE` length, then the bytes.

/// What the agent says it is in its hello.
pub const VERSION: &str = "reach-agent 1";

/// Agent → client, once at start: version, home, uid, gid.
pub const HELLO: u8 = 0;
/// Client → agent: start a command.
pub const SPAWN: u8 = 1;
/// Client → agent: bytes for a command's stdin.
pub const STDIN: u8 = 2;
/// Client → agent: end of a command's stdin.
pub const STDIN_EOF: u8 = 3;
/// Client → agent: send a signal.
pub const SIGNAL: u8 = 4;
/// Client → agent: a file operation.
pub const FS_OP: u8 = 5;
/// Client → agent: resize a command's terminal.
pub const RESIZE: u8 = 6;
/// Client → agent: open a TCP connection (host, port), carried like a command: STDIN to
/// it, STDOUT from it, EXIT (code 0) at its end of stream, SIGNAL to shut it down.
pub const CONNECT: u8 = 7;
/// Client → agent: the client has read `count` bytes of a command's output: stream
/// ([`STDOUT`] or [`STDERR`]) `u8`, count `u32`, and `u8` 1 when the client's reader is
/// gone (the agent then drops that stream's output instead of sending it).
pub const ACK: u8 = 8;
/// Agent → client: the command runs (its pid).
pub const STARTED: u8 = 10;
/// Agent → client: the command could not start (errno, message).
pub const SPAWN_FAILED: u8 = 11;
/// Agent → client: stdout bytes (all terminal output, under a PTY).
pub const STDOUT: u8 = 12;
/// Agent → client: stderr bytes.
pub const STDERR: u8 = 13;
/// Agent → client: how the command ended, after all its output.
pub const EXIT: u8 = 14;
/// Agent → client: a file operation's result.
pub const FS_OK: u8 = 15;
/// Agent → client: a file operation's errno and message.
pub const FS_ERR: u8 = 16;
/// Agent → client: the command (or connection) took `count` (`u32`) bytes of its stdin, or
/// they were dropped because nothing takes them any more.
pub const TAKEN: u8 = 17;

/// Flow control: the bytes of one stream that may be on their way, sent and not yet
/// acknowledged (by [`ACK`] for output, [`TAKEN`] for stdin). A reader that stops reading
/// stops its command once this much waits for it, and nothing else on the connection.
pub const WINDOW: u32 = 2 * 1024 * 1024;

/// File operation: rename `path` to a second path.
pub const OP_RENAME: u8 = 1;
/// File operation: set permission bits.
pub const OP_CHMOD: u8 = 2;
/// File operation: cut or extend to a length.
pub const OP_TRUNCATE: u8 = 3;
/// File operation: remove a file or symlink.
pub const OP_REMOVE_FILE: u8 = 4;
/// File operation: remove an empty directory.
pub const OP_REMOVE_DIR: u8 = 5;
/// File operation: remove a tree, not following symlinks.
pub const OP_REMOVE_DIR_ALL: u8 = 6;
/// File operation: list a directory with each entry's lstat.
pub const OP_READ_DIR: u8 = 7;
/// File operation: SHA-256 of a file.
pub const OP_SHA256: u8 = 8;
/// File operation: set the modification time (seconds, nanoseconds), following symlinks.
pub const OP_SET_MTIME: u8 = 9;
/// File operation: read up to a length (u32) at an offset (u64); the answer is the bytes,
/// shorter only at the end of the file.
pub const OP_READ: u8 = 10;
/// File operation: open with flags (u8, `WRITE_*`) and a creation mode (u32), write the
/// rest of the payload at an offset (u64) (at the end with `WRITE_APPEND`), close.
pub const OP_WRITE: u8 = 11;
/// [`OP_WRITE`] flag: create the file if it is missing.
pub const WRITE_CREATE: u8 = 1;
/// [`OP_WRITE`] flag: cut the file to nothing first.
pub const WRITE_TRUNCATE: u8 = 2;
/// [`OP_WRITE`] flag: fail if the file exists.
pub const WRITE_EXCLUSIVE: u8 = 4;
/// [`OP_WRITE`] flag: write at the end, whatever the offset.
pub const WRITE_APPEND: u8 = 8;
/// [`OP_WRITE`] flag: `fsync` before answering.
pub const WRITE_SYNC: u8 = 16;
