//! The session protocol's messages on the wire (docs/PLUGINS.md): one JSON object per line,
//! and, when the object has `len`, exactly that many raw bytes right after its newline.
//!
//! This module reads and classifies what an adapter writes and encodes what reach writes; it
//! knows nothing of commands or files.

use bytes::Bytes;
use reach_core::{Error, ErrorKind, ExitStatus, Signal, Subject};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The longest control line accepted (a `read_dir` of a large directory fits).
pub(crate) const MAX_LINE: usize = 16 << 20;
/// The most payload one message may carry.
pub(crate) const MAX_PAYLOAD: u64 = 4 << 20;

/// Which of a command's (or a read's) streams a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
    /// The bytes of a file being read.
    File,
}

impl Stream {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::File => "file",
        }
    }

    fn parse(name: Option<&str>) -> Option<Stream> {
        match name? {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            "file" => Some(Stream::File),
            _ => None,
        }
    }
}

/// An error as an adapter reports it: `{code, message, retryable, hint, subject}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Failure {
    code: String,
    message: String,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    retryable: Option<bool>,
}

impl Failure {
    /// The error a caller sees: the adapter's code as an [`ErrorKind`] (an unknown code is
    /// `Io`), its message, and its hint after it.
    pub(crate) fn into_error(self) -> Error {
        let kind = ErrorKind::from_name(&self.code).unwrap_or(ErrorKind::Io);
        let mut message = self.message;
        if let Some(hint) = self.hint.filter(|h| !h.trim().is_empty()) {
            message = format!("{message} ({hint})");
        }
        let error = Error::new(kind, message);
        match self.subject.as_deref().and_then(Subject::from_name) {
            Some(subject) => error.with_subject(subject),
            None => error,
        }
    }
}

/// One message from an adapter.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The answer to request `id`.
    Answer {
        id: u64,
        result: std::result::Result<Value, Failure>,
    },
    /// Bytes of a stream.
    Data {
        to: u64,
        stream: Stream,
        bytes: Bytes,
    },
    /// The end of a stream, or its failure.
    Eof {
        to: u64,
        stream: Stream,
        error: Option<Failure>,
    },
    /// How a command ended.
    Exit { to: u64, status: ExitStatus },
    /// Input bytes the adapter has passed on.
    Taken { to: u64, bytes: u64 },
    /// A write is complete (or failed).
    Closed {
        to: u64,
        sha256: Option<String>,
        error: Option<Failure>,
    },
}

/// Every field any adapter message may have; which of them is set says what it is.
#[derive(Debug, Deserialize)]
struct Line {
    id: Option<u64>,
    ok: Option<Value>,
    error: Option<Failure>,
    data: Option<u64>,
    eof: Option<u64>,
    exit: Option<u64>,
    taken: Option<u64>,
    closed: Option<u64>,
    stream: Option<String>,
    len: Option<u64>,
    code: Option<i32>,
    signal: Option<String>,
    core_dumped: Option<bool>,
    bytes: Option<u64>,
    sha256: Option<String>,
}

/// Reads the next message: `Ok(None)` at a clean end of the adapter's output, `Err` with
/// what was wrong (the caller names the adapter and the line number).
pub(crate) async fn read<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::result::Result<Option<Incoming>, String> {
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .await
        .map_err(|e| format!("reading its output failed: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE {
            format!("a line longer than {MAX_LINE} bytes")
        } else {
            format!("output that ended inside a line: `{}`", shown(line))
        });
    }
    let parsed: Line = serde_json::from_slice(line)
        .map_err(|e| format!("`{}`, which is not a message ({e})", shown(line)))?;
    let payload = match parsed.len {
        Some(len) if len > MAX_PAYLOAD => {
            return Err(format!(
                "`{}`, whose len is over the {MAX_PAYLOAD} allowed",
                shown(line)
            ))
        }
        Some(len) => {
            let mut bytes = vec![0u8; len as usize];
            reader.read_exact(&mut bytes).await.map_err(|e| {
                format!(
                    "`{}`, whose {len} bytes did not all come ({e})",
                    shown(line)
                )
            })?;
            Some(Bytes::from(bytes))
        }
        None => None,
    };
    classify(parsed, payload)
        .map(Some)
        .map_err(|why| format!("`{}`: {why}", shown(line)))
}

fn classify(line: Line, payload: Option<Bytes>) -> std::result::Result<Incoming, String> {
    let stream = || Stream::parse(line.stream.as_deref()).ok_or("no known `stream`");
    let kinds = [
        line.id,
        line.data,
        line.eof,
        line.exit,
        line.taken,
        line.closed,
    ];
    if kinds.iter().flatten().count() != 1 {
        return Err("a message has exactly one of id, data, eof, exit, taken, closed".into());
    }
    if let Some(id) = line.id {
        let result = match (line.ok, line.error) {
            (Some(ok), None) => Ok(ok),
            (None, Some(error)) => Err(error),
            _ => return Err("an answer has exactly one of ok and error".into()),
        };
        return Ok(Incoming::Answer { id, result });
    }
    if let Some(to) = line.data {
        let bytes = payload.ok_or("data without len")?;
        return Ok(Incoming::Data {
            to,
            stream: stream()?,
            bytes,
        });
    }
    if let Some(to) = line.eof {
        return Ok(Incoming::Eof {
            to,
            stream: stream()?,
            error: line.error,
        });
    }
    if let Some(to) = line.exit {
        let status = match (line.code, line.signal) {
            (Some(code), None) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal {
                signal: Signal::from_name(&signal),
                core_dumped: line.core_dumped.unwrap_or(false),
            },
            _ => return Err("an exit has exactly one of code and signal".into()),
        };
        return Ok(Incoming::Exit { to, status });
    }
    if let Some(to) = line.taken {
        return Ok(Incoming::Taken {
            to,
            bytes: line.bytes.ok_or("taken without bytes")?,
        });
    }
    if let Some(to) = line.closed {
        return Ok(Incoming::Closed {
            to,
            sha256: line.sha256,
            error: line.error,
        });
    }
    Err("no message kind".into())
}

/// A line as shown in an error: at most 200 characters, lossily decoded, newline trimmed.
fn shown(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\n');
    let mut shown: String = text.chars().take(200).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

/// A message to the adapter: `object` on one line, then `payload` when there is one (its
/// length is put in the object as `len`).
pub(crate) fn encode(mut object: Value, payload: Option<&[u8]>) -> Vec<u8> {
    if let (Some(bytes), Value::Object(map)) = (payload, &mut object) {
        map.insert("len".into(), Value::from(bytes.len()));
    }
    let mut out = object.to_string().into_bytes();
    out.push(b'\n');
    if let Some(bytes) = payload {
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    async fn one(input: &[u8]) -> std::result::Result<Option<Incoming>, String> {
        let mut reader = tokio::io::BufReader::new(input);
        read(&mut reader, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn messages_are_classified() {
        let Some(Incoming::Data { to, stream, bytes }) =
            one(b"{\"data\":3,\"stream\":\"stderr\",\"len\":4}\nab\ncrest")
                .await
                .unwrap()
        else {
            panic!("not data")
        };
        assert_eq!((to, stream, &bytes[..]), (3, Stream::Stderr, &b"ab\nc"[..]));
        let Some(Incoming::Exit { status, .. }) =
            one(b"{\"exit\":3,\"signal\":\"TERM\"}\n").await.unwrap()
        else {
            panic!("not exit")
        };
        assert_eq!(status.shell_code(), 143);
        let Some(Incoming::Answer { result, .. }) = one(
            b"{\"id\":1,\"error\":{\"code\":\"not_found\",\"message\":\"no x\",\"hint\":\"make x\",\"subject\":\"command\"}}\n",
        )
        .await
        .unwrap() else {
            panic!("not an answer")
        };
        let err = result.unwrap_err().into_error();
        assert!(matches!(err.kind(), ErrorKind::NotFound));
        assert_eq!(err.subject(), Some(Subject::Command));
        assert_eq!(err.message(), "no x (make x)");
    }

    #[tokio::test]
    async fn garbage_is_named() {
        let err = one(b"hello there\n").await.unwrap_err();
        assert!(err.contains("`hello there`"), "{err}");
        let err = one(b"{\"id\":1,\"exit\":2,\"code\":0}\n")
            .await
            .unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
        let err = one(b"{\"data\":1,\"stream\":\"stdout\",\"len\":10}\nshort")
            .await
            .unwrap_err();
        assert!(err.contains("did not all come"), "{err}");
        let err = one(b"{\"id\":1,\"ok\":{}").await.unwrap_err();
        assert!(err.contains("ended inside a line"), "{err}");
        assert!(one(b"").await.unwrap().is_none());
    }

    #[test]
    fn encoded_messages_carry_their_length() {
        let out = encode(serde_json::json!({"op": "input", "to": 2}), Some(b"xyz"));
        assert_eq!(out, b"{\"len\":3,\"op\":\"input\",\"to\":2}\nxyz".to_vec());
    }
}
