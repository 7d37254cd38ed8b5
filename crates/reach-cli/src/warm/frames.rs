//! Frames between the client and the daemon: `[kind: u8][length: u32 big-endian][payload]`.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Larger frames are a protocol error (data frames are at most 64 KiB).
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// Frame kinds.
pub mod frame {
    /// Client → daemon: the JSON request, first and once.
    pub const REQUEST: u8 = b'Q';
    /// Client → daemon: bytes for the command's stdin.
    pub const STDIN: u8 = b'I';
    /// Client → daemon: stdin ended.
    pub const STDIN_EOF: u8 = b'E';
    /// Client → daemon: a signal name for the command.
    pub const SIGNAL: u8 = b'S';
    /// Daemon → client: the command started.
    pub const STARTED: u8 = b'K';
    /// Daemon → client: the request failed (JSON `{kind, message}`); nothing runs.
    pub const FAILED: u8 = b'F';
    /// Daemon → client: this daemon cannot serve the request; connect directly instead.
    pub const UNAVAILABLE: u8 = b'U';
    /// Daemon → client: bytes the command wrote to stdout.
    pub const STDOUT: u8 = b'O';
    /// Daemon → client: bytes the command wrote to stderr.
    pub const STDERR: u8 = b'R';
    /// Daemon → client: how the command ended (JSON), after all of its output.
    pub const EXIT: u8 = b'X';
    /// Daemon → client: the JSON answer to a list, close or stop request.
    pub const REPLY: u8 = b'J';
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    to: &mut W,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut bytes = Vec::with_capacity(5 + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(payload);
    to.write_all(&bytes).await?;
    to.flush().await
}

/// Reads one frame; `None` when the peer closed the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match from.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof) => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (the limit is {MAX_FRAME})"),
        ));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, frame::STDOUT, b"hello")
            .await
            .expect("write");
        write_frame(&mut a, frame::STDIN_EOF, b"")
            .await
            .expect("write");
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((frame::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((frame::STDIN_EOF, Vec::new()))
        );
        assert_eq!(read_frame(&mut b).await.expect("read"), None);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[frame::STDOUT, 0xff, 0xff, 0xff, 0xff])
            .await
            .expect("write");
        let err = read_frame(&mut b).await.expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
