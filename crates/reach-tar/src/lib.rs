//! Just enough tar for reach (Docker's archive API, tree copies over SSH): headers to write
//! one entry (PAX records for long names), and a streaming reader of headers and bodies. No
//! payload is ever held whole.
#![deny(missing_docs)]

use bytes::{Buf, Bytes, BytesMut};

/// A tar block.
pub const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (hard links, devices, FIFOs): skipped by readers here.
    Other,
}

/// One entry's header, as written or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The path inside the archive.
    pub name: String,
    /// What the entry is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Body size in bytes (files only).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// A symlink's target.
    pub link: String,
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn pax_record(key: &str, value: &str) -> String {
    // The length counts itself, so find the fixed point.
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

fn ustar_block(name: &str, kind: u8, header: &Header, size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    let name_bytes = name.as_bytes();
    let n = name_bytes.len().min(100);
    block[..n].copy_from_slice(&name_bytes[..n]);
    octal(&mut block[100..108], u64::from(header.mode & 0o7777));
    octal(&mut block[108..116], u64::from(header.uid));
    octal(&mut block[116..124], u64::from(header.gid));
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], header.mtime);
    block[156] = kind;
    let link = header.link.as_bytes();
    let l = link.len().min(100);
    block[157..157 + l].copy_from_slice(&link[..l]);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    octal(&mut block[148..155], sum);
    block[155] = b' ';
    block
}

/// The header blocks for one entry (a PAX header first when the name or link is long or not
/// ASCII); the body, when a file, follows with [`body_padding`] after it.
pub fn header_bytes(header: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * BLOCK);
    let long = |s: &str| s.len() > 99 || !s.is_ascii();
    if long(&header.name) || long(&header.link) {
        let mut records = String::new();
        if long(&header.name) {
            records.push_str(&pax_record("path", &header.name));
        }
        if long(&header.link) {
            records.push_str(&pax_record("linkpath", &header.link));
        }
        let pax = Header {
            name: "PaxHeader".to_owned(),
            kind: Kind::Other,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: header.mtime,
            link: String::new(),
        };
        out.extend_from_slice(&ustar_block("PaxHeader", b'x', &pax, records.len() as u64));
        out.extend_from_slice(records.as_bytes());
        out.resize(out.len() + padding(records.len() as u64), 0);
    }
    let (kind, size) = match header.kind {
        Kind::File => (b'0', header.size),
        Kind::Dir => (b'5', 0),
        Kind::Symlink => (b'2', 0),
        Kind::Other => (b'0', 0),
    };
    let short_name: String = header
        .name
        .chars()
        .filter(char::is_ascii)
        .take(99)
        .collect();
    let short_link: String = header
        .link
        .chars()
        .filter(char::is_ascii)
        .take(99)
        .collect();
    let short = Header {
        link: short_link,
        ..header.clone()
    };
    out.extend_from_slice(&ustar_block(&short_name, kind, &short, size));
    out
}

/// Zeros after a file body of `len` bytes.
pub fn body_padding(len: u64) -> Vec<u8> {
    vec![0u8; padding(len)]
}

/// The end-of-archive marker.
pub fn end_of_archive() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for large values.
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The most an extended header (PAX records, a GNU long name) may hold: it is buffered whole,
/// and real ones are a few hundred bytes.
const MAX_EXTENDED: u64 = 1 << 20;

/// Whether a header block's checksum field holds the sum of its bytes (the field itself
/// counted as spaces); old archivers summed signed bytes, which is accepted too.
fn checksum_matches(block: &[u8]) -> bool {
    let Some(stored) = parse_octal(&block[148..156]) else {
        return false;
    };
    let spaces = 8 * u64::from(b' ');
    let (head, tail) = (&block[..148], &block[156..]);
    let unsigned: u64 = head.iter().chain(tail).map(|&b| u64::from(b)).sum::<u64>() + spaces;
    let signed: i64 = head
        .iter()
        .chain(tail)
        .map(|&b| i64::from(b as i8))
        .sum::<i64>()
        + spaces as i64;
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Where a [`Reader`] stands.
#[derive(Debug)]
enum State {
    /// Expecting a header block.
    Header,
    /// Inside an extended header (PAX or GNU long name) of this many bytes.
    Extended { kind: u8, left: u64, data: Vec<u8> },
    /// Inside a body: bytes left, then padding.
    Body { left: u64, pad: usize },
    /// The end marker was seen.
    End,
}

/// An event from the tar stream.
#[derive(Debug)]
pub enum Event {
    /// A new entry starts.
    Entry(Header),
    /// Bytes of the current entry's body.
    Data(Bytes),
    /// The archive ended.
    End,
}

/// A push parser: feed it chunks as they arrive, take events out.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    state: State,
    pax_path: Option<String>,
    pax_link: Option<String>,
    pax_size: Option<u64>,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    /// A reader expecting the first header.
    pub fn new() -> Self {
        Reader {
            buf: BytesMut::new(),
            state: State::Header,
            pax_path: None,
            pax_link: None,
            pax_size: None,
        }
    }

    /// Adds input.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next event, `Ok(None)` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        loop {
            match &mut self.state {
                State::End => return Ok(Some(Event::End)),
                State::Body { left, pad } => {
                    if *left > 0 {
                        if self.buf.is_empty() {
                            return Ok(None);
                        }
                        let take = (*left).min(self.buf.len() as u64) as usize;
                        *left -= take as u64;
                        return Ok(Some(Event::Data(self.buf.split_to(take).freeze())));
                    }
                    let skip = (*pad).min(self.buf.len());
                    self.buf.advance(skip);
                    *pad -= skip;
                    if *pad > 0 {
                        return Ok(None);
                    }
                    self.state = State::Header;
                }
                State::Extended { kind, left, data } => {
                    let take = (*left).min(self.buf.len() as u64) as usize;
                    data.extend_from_slice(&self.buf.split_to(take));
                    *left -= take as u64;
                    if *left > 0 {
                        return Ok(None);
                    }
                    let (kind, data) = (*kind, std::mem::take(data));
                    let pad = padding(data.len() as u64);
                    self.apply_extended(kind, &data);
                    self.state = State::Body { left: 0, pad };
                }
                State::Header => {
                    if self.buf.len() < BLOCK {
                        return Ok(None);
                    }
                    let block = self.buf.split_to(BLOCK);
                    if block.iter().all(|&b| b == 0) {
                        self.state = State::End;
                        continue;
                    }
                    if !checksum_matches(&block) {
                        return Err("not a tar header (its checksum does not match): the \
                                    stream is corrupt or is not a tar archive"
                            .to_owned());
                    }
                    let size = parse_octal(&block[124..136])
                        .ok_or("a tar header has a malformed size field")?;
                    let typeflag = block[156];
                    match typeflag {
                        b'x' | b'L' | b'K' | b'g' => {
                            if size > MAX_EXTENDED {
                                return Err(format!(
                                    "a tar extended header of {size} bytes (more than \
                                     {MAX_EXTENDED} is not a name but corruption)"
                                ));
                            }
                            self.state = State::Extended {
                                kind: typeflag,
                                left: size,
                                data: Vec::new(),
                            };
                            continue;
                        }
                        _ => {}
                    }
                    let mut name = cstr(&block[..100]);
                    let prefix = cstr(&block[345..500]);
                    if &block[257..262] == b"ustar" && !prefix.is_empty() {
                        name = format!("{prefix}/{name}");
                    }
                    let kind = match typeflag {
                        b'0' | 0 | b'7' => Kind::File,
                        b'5' => Kind::Dir,
                        b'2' => Kind::Symlink,
                        _ => Kind::Other,
                    };
                    let size = self.pax_size.take().unwrap_or(size);
                    let header = Header {
                        name: self.pax_path.take().unwrap_or(name),
                        kind,
                        mode: parse_octal(&block[100..108]).unwrap_or(0) as u32 & 0o7777,
                        uid: parse_octal(&block[108..116]).unwrap_or(0) as u32,
                        gid: parse_octal(&block[116..124]).unwrap_or(0) as u32,
                        size,
                        mtime: parse_octal(&block[136..148]).unwrap_or(0),
                        link: self
                            .pax_link
                            .take()
                            .unwrap_or_else(|| cstr(&block[157..257])),
                    };
                    // Hard links, devices and the like carry no body in practice.
                    let body = if matches!(typeflag, b'0' | 0 | b'7') {
                        size
                    } else {
                        0
                    };
                    self.state = State::Body {
                        left: body,
                        pad: padding(body),
                    };
                    return Ok(Some(Event::Entry(header)));
                }
            }
        }
    }

    fn apply_extended(&mut self, kind: u8, data: &[u8]) {
        match kind {
            b'L' => self.pax_path = Some(cstr(data)),
            b'K' => self.pax_link = Some(cstr(data)),
            b'x' => {
                let mut rest = data;
                while let Some(space) = rest.iter().position(|&b| b == b' ') {
                    let Some(len) = std::str::from_utf8(&rest[..space])
                        .ok()
                        .and_then(|l| l.parse::<usize>().ok())
                    else {
                        break;
                    };
                    // A record is `LEN KEY=VALUE\n`, LEN counting all of it.
                    if len <= space + 1 || len > rest.len() {
                        break;
                    }
                    let record = &rest[space + 1..len - 1];
                    if let Some(eq) = record.iter().position(|&b| b == b'=') {
                        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
                        match &record[..eq] {
                            b"path" => self.pax_path = Some(value),
                            b"linkpath" => self.pax_link = Some(value),
                            b"size" => self.pax_size = value.parse().ok(),
                            _ => {}
                        }
                    }
                    rest = &rest[len..];
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn archive(entries: &[(Header, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (header, body) in entries {
            out.extend(header_bytes(header));
            out.extend_from_slice(body);
            out.extend(body_padding(body.len() as u64));
        }
        out.extend(end_of_archive());
        out
    }

    fn header(name: &str, kind: Kind, size: u64, link: &str) -> Header {
        Header {
            name: name.to_owned(),
            kind,
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            size,
            mtime: 1_700_000_000,
            link: link.to_owned(),
        }
    }

    fn read_all(bytes: &[u8], chunk: usize) -> Vec<(Header, Vec<u8>)> {
        let mut reader = Reader::new();
        let mut entries: Vec<(Header, Vec<u8>)> = Vec::new();
        for piece in bytes.chunks(chunk) {
            reader.feed(piece);
            while let Some(event) = reader.next_event().expect("valid tar") {
                match event {
                    Event::Entry(h) => entries.push((h, Vec::new())),
                    Event::Data(d) => entries.last_mut().expect("entry").1.extend_from_slice(&d),
                    Event::End => return entries,
                }
            }
        }
        panic!("no end of archive");
    }

    #[test]
    fn entries_round_trip_in_any_chunking_with_long_and_unicode_names() {
        let long = "d/".repeat(80) + "ünïcødé file name that is long";
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let entries = [
            (header("empty", Kind::File, 0, ""), &b""[..]),
            (header(&long, Kind::File, body.len() as u64, ""), &body[..]),
            (header("dir", Kind::Dir, 0, ""), &b""[..]),
            (header("link", Kind::Symlink, 0, &"t/".repeat(70)), &b""[..]),
        ];
        let bytes = archive(&entries);
        for chunk in [1, 7, 512, 100_000] {
            let got = read_all(&bytes, chunk);
            assert_eq!(got.len(), 4, "chunk {chunk}");
            for ((want, body), (have, data)) in entries.iter().zip(&got) {
                assert_eq!(have, want, "chunk {chunk}");
                assert_eq!(data.as_slice(), *body);
            }
        }
    }

    /// Feeds `bytes` in pieces of the given sizes (cycled); every event, or the first error.
    fn events(bytes: &[u8], pieces: &[usize]) -> Result<Vec<Event>, String> {
        let mut reader = Reader::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut sizes = pieces.iter().cycle();
        while at < bytes.len() {
            let n = (*sizes.next().unwrap_or(&512)).clamp(1, bytes.len() - at);
            reader.feed(&bytes[at..at + n]);
            at += n;
            while let Some(event) = reader.next_event()? {
                let end = matches!(event, Event::End);
                out.push(event);
                if end {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::File), Just(Kind::Dir), Just(Kind::Symlink)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever names (any Unicode, any length up to 300 characters), sizes and chunking:
        /// what is written is what is read.
        #[test]
        fn any_entries_round_trip_in_any_chunking(
            specs in proptest::collection::vec(
                ("[^\\x00/]{1,40}(/[^\\x00/]{1,40}){0,6}", kind_strategy(),
                 proptest::collection::vec(any::<u8>(), 0..3000), "[^\\x00]{0,300}"),
                1..6),
            pieces in proptest::collection::vec(1usize..2000, 1..8),
        ) {
            let entries: Vec<(Header, Vec<u8>)> = specs
                .into_iter()
                .map(|(name, kind, body, link)| {
                    let body = if kind == Kind::File { body } else { Vec::new() };
                    let link = if kind == Kind::Symlink { link } else { String::new() };
                    (header(&name, kind, body.len() as u64, &link), body)
                })
                .collect();
            let borrowed: Vec<(Header, &[u8])> =
                entries.iter().map(|(h, b)| (h.clone(), b.as_slice())).collect();
            let bytes = archive(&borrowed);
            let got = events(&bytes, &pieces).map_err(TestCaseError::fail)?;
            let mut read: Vec<(Header, Vec<u8>)> = Vec::new();
            let mut ended = false;
            for event in got {
                match event {
                    Event::Entry(h) => read.push((h, Vec::new())),
                    Event::Data(d) => read
                        .last_mut()
                        .ok_or_else(|| TestCaseError::fail("data before an entry"))?
                        .1
                        .extend_from_slice(&d),
                    Event::End => ended = true,
                }
            }
            prop_assert!(ended);
            prop_assert_eq!(read, entries);
        }

        /// Garbage, or a valid archive with bytes flipped: the parser never panics, never
        /// yields more body than the input held, and either ends, errs or waits for more.
        #[test]
        fn garbage_and_corruption_never_panic(
            noise in proptest::collection::vec(any::<u8>(), 0..4096),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
            pieces in proptest::collection::vec(1usize..700, 1..6),
        ) {
            let _ = events(&noise, &pieces);
            let body = vec![7u8; 1500];
            let long = "p/".repeat(90) + "ü";
            let mut bytes = archive(&[
                (header(&long, Kind::File, body.len() as u64, ""), &body[..]),
                (header("l", Kind::Symlink, 0, &long), &b""[..]),
            ]);
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] ^= value;
            }
            if let Ok(got) = events(&bytes, &pieces) {
                let data: usize = got
                    .iter()
                    .map(|e| match e {
                        Event::Data(d) => d.len(),
                        _ => 0,
                    })
                    .sum();
                prop_assert!(data <= bytes.len());
            }
        }
    }

    #[test]
    fn a_corrupt_header_and_a_huge_extended_header_are_errors() {
        let mut bytes = archive(&[(header("f", Kind::File, 3, ""), b"abc")]);
        bytes[10] ^= 0x55;
        let err = events(&bytes, &[512]).err().unwrap_or_default();
        assert!(err.contains("checksum"), "{err}");
        // A PAX header claiming 4 GiB: refused before anything is buffered.
        let mut huge =
            ustar_block("PaxHeader", b'x', &header("p", Kind::Other, 0, ""), 1 << 32).to_vec();
        huge.extend(vec![b'x'; 4096]);
        let err = events(&huge, &[512]).err().unwrap_or_default();
        assert!(err.contains("extended header"), "{err}");
        // A PAX record whose length ends right after the space must not panic.
        let records = b"2 3 x=\n";
        let mut short = ustar_block(
            "PaxHeader",
            b'x',
            &header("p", Kind::Other, 0, ""),
            records.len() as u64,
        )
        .to_vec();
        short.extend_from_slice(records);
        short.resize(1024, 0);
        short.extend(header_bytes(&header("f", Kind::Dir, 0, "")));
        short.extend(end_of_archive());
        assert!(events(&short, &[3]).is_ok());
    }

    #[test]
    fn real_tar_reads_what_we_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = "x".repeat(150) + "-ü";
        let bytes = archive(&[(header(&long, Kind::File, 3, ""), b"abc")]);
        let tarball = dir.path().join("t.tar");
        std::fs::write(&tarball, bytes).expect("write");
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("tar runs");
        assert!(status.success());
        assert_eq!(
            std::fs::read(dir.path().join(&long)).expect("extracted"),
            b"abc"
        );
    }
}
