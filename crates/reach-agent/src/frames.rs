//! Frames on the agent's stdout and the fields of their payloads (the layout is in
//! `reach_agent::protocol`).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::lock;

/// The agent's stdout, unbuffered: every frame goes out in one write (`io::Stdout` is
/// line-buffered, which split each frame into a write of its header and one of its
/// payload, and the engine passed each on as a piece of its own).
pub(crate) type Out = Arc<Mutex<std::fs::File>>;

/// A frame's header: kind, id, payload length.
pub(crate) fn header(kind: u8, id: u32, len: usize) -> [u8; 9] {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..5].copy_from_slice(&id.to_be_bytes());
    head[5..9].copy_from_slice(&(len as u32).to_be_bytes());
    head
}

/// Sends one frame.
pub(crate) fn send(out: &Out, kind: u8, id: u32, payload: &[u8]) {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&header(kind, id, payload.len()));
    frame.extend_from_slice(payload);
    send_framed(out, &frame);
}

/// Writes a whole frame, header included.
pub(crate) fn send_framed(out: &Out, frame: &[u8]) {
    // A write error means the client is gone; stdin's end will tear everything down.
    let _ = lock(out).write_all(frame);
}

/// Reads length-prefixed fields out of a payload.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl<'a> Fields<'a> {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Appends `bytes` with its length before it.
pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The payload of a failure: what failed (`what`), the errno, the message.
pub(crate) fn error_payload(err: &io::Error, what: u8) -> Vec<u8> {
    let mut buf = vec![what];
    buf.extend_from_slice(&err.raw_os_error().unwrap_or(0).to_be_bytes());
    put_bytes(&mut buf, err.to_string().as_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_what_was_put_and_refuse_what_is_short() {
        let mut buf = vec![7u8];
        buf.extend_from_slice(&42u32.to_be_bytes());
        buf.extend_from_slice(&(1u64 << 40).to_be_bytes());
        put_bytes(&mut buf, "héllo".as_bytes());
        let mut fields = Fields(&buf);
        assert_eq!(fields.u8(), Some(7));
        assert_eq!(fields.u32(), Some(42));
        assert_eq!(fields.u64(), Some(1 << 40));
        assert_eq!(fields.string().as_deref(), Some("héllo"));
        assert_eq!(fields.u8(), None, "nothing is left");
        // A length that runs past the payload is no field, never a panic.
        let mut short = Vec::new();
        short.extend_from_slice(&100u32.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert_eq!(Fields(&short).bytes(), None);
        assert_eq!(Fields(&[0, 0]).u32(), None);
    }

    #[test]
    fn an_error_payload_carries_what_errno_and_message() {
        let err = io::Error::from_raw_os_error(2);
        let payload = error_payload(&err, 1);
        let mut fields = Fields(&payload);
        assert_eq!(fields.u8(), Some(1));
        assert_eq!(fields.u32(), Some(2));
        assert!(fields.string().is_some_and(|m| m.contains("No such file")));
        assert_eq!(header(5, 9, 300), [5, 0, 0, 0, 9, 0, 0, 1, 44]);
    }
}
