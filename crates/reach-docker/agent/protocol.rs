//! The frame kinds and file operations of the agent protocol, shared by both ends: the agent
//! (`agent/main.rs`, `mod protocol`) and reach-docker (`src/agent.rs`, included by path), so
//! that the two cannot disagree. `src/agent.rs` documents each frame's payload.

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
