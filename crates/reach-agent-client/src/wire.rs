//! Frames as bytes: building them, cutting them out of a buffer, reading their fields.

use bytes::{Buf, Bytes, BytesMut};

/// One frame: kind, id, payload length, payload.
pub fn frame(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Appends `bytes` with its length before it.
pub fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Reads fields of a payload.
#[derive(Debug)]
pub struct Fields(pub Bytes);

impl Fields {
    /// A `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
    }
    /// A big-endian `i32`.
    pub fn i32(&mut self) -> Option<i32> {
        (self.0.remaining() >= 4).then(|| self.0.get_i32())
    }
    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64())
    }
    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        (self.0.remaining() >= 8).then(|| self.0.get_i64())
    }
    /// A length-prefixed string (invalid UTF-8 replaced).
    pub fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        (self.0.remaining() >= len)
            .then(|| String::from_utf8_lossy(&self.0.split_to(len)).into_owned())
    }
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The next whole frame at the start of `buf`, taken out of it.
pub fn next_frame(buf: &mut BytesMut) -> Option<(u8, u32, Bytes)> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if buf.len() < 9 + len {
        buf.reserve(9 + len - buf.len());
        return None;
    }
    let kind = buf[0];
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    buf.advance(9);
    Some((kind, id, buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reach_agent::protocol::{EXIT, STDOUT};

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut wire = frame(STDOUT, 7, b"hello");
        wire.extend(frame(EXIT, 7, &[0, 0, 0, 0, 3, 0]));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(f) = next_frame(&mut buf) {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, got[0].1, &got[0].2[..]),
            (STDOUT, 7, &b"hello"[..])
        );
        assert_eq!(got[1].0, EXIT);
    }

    #[test]
    fn fields_refuse_what_is_short() {
        let mut payload = Vec::new();
        put_bytes(&mut payload, b"abc");
        payload.extend_from_slice(&5u32.to_be_bytes());
        let mut fields = Fields(Bytes::from(payload));
        assert_eq!(fields.string().as_deref(), Some("abc"));
        assert_eq!(fields.u32(), Some(5));
        assert!(fields.is_empty());
        assert_eq!(fields.u8(), None);
        let mut short = Fields(Bytes::from_static(&[0, 0, 0, 9, b'x']));
        assert_eq!(short.string(), None);
    }
}
