//! How a command under proot ended. proot's own exit status is that of the last process that
//! exited normally, whichever it was; a command killed by a signal after one of its children
//! exited comes back as that child's exit (often 0). So reach asks proot (`-v 1`) to report
//! every traced process's end on its stderr, which is the command's stderr too, has the
//! command's shell name its own pid there first (the marker below; the shell then `exec`s
//! the command, which keeps the pid), and reads the command's real end from those lines.
//! [`StatusFilter`] takes every `proot info:` line out of the stream as it passes.

/// What starts every informational line of proot's.
const INFO: &[u8] = b"proot info: ";
/// The marker line the wrapper shell writes: `proot info: reach main pid N`.
pub(crate) const MARKER: &str = "proot info: reach main pid";
/// A line longer than this is not proot's, and is not held any longer.
const LONGEST: usize = 4096;

/// How the command ended, as proot reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Removes proot's informational lines from a stream, passing everything else on unchanged
/// and without delay (only what could still be the start of one of proot's lines is held:
/// proot's line follows a command's last partial line on the same stream, so it may start
/// anywhere), and keeps what they say about the command.
#[derive(Debug, Default)]
pub(crate) struct StatusFilter {
    /// A prefix of [`INFO`], or one of proot's lines up to where it has come.
    held: Vec<u8>,
    main: Option<u32>,
    ended: Option<Ended>,
    /// The end of the process that ended last, for a command that named no pid.
    last: Option<Ended>,
    /// Inside proot's `argv = ...` line, which goes on over as many lines as the command
    /// line has; it ends where proot's next line (`initial cwd`) starts, before the command
    /// runs.
    in_argv: bool,
}

impl StatusFilter {
    /// How the command ended, if proot said: the end of the process the marker named, or
    /// without a marker the end of the process that ended last.
    pub(crate) fn ended(&self) -> Option<Ended> {
        match self.main {
            Some(_) => self.ended,
            None => self.last,
        }
    }

    /// Filters `input` into `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.in_argv {
                let byte = input[0];
                input = &input[1..];
                self.held.push(byte);
                if byte == b'\n' {
                    if self.held.starts_with(INFO) {
                        self.in_argv = false;
                        self.line();
                    }
                    self.held.clear();
                }
                continue;
            }
            if self.held.is_empty() {
                // Everything up to the next byte that could start a line of proot's.
                let next = input
                    .iter()
                    .position(|b| *b == INFO[0])
                    .unwrap_or(input.len());
                out.extend_from_slice(&input[..next]);
                input = &input[next..];
                if let Some((&first, rest)) = input.split_first() {
                    self.held.push(first);
                    input = rest;
                }
                continue;
            }
            let byte = input[0];
            input = &input[1..];
            if self.held.len() >= INFO.len() {
                self.held.push(byte);
                if byte == b'\n' {
                    self.line();
                    self.held.clear();
                } else if self.held.len() > LONGEST {
                    out.append(&mut self.held);
                }
                continue;
            }
            self.held.push(byte);
            // Not a prefix any more: what cannot start one goes out.
            while !self.held.is_empty() && !INFO.starts_with(&self.held) {
                out.push(self.held.remove(0));
            }
        }
    }

    /// The end of the stream: whatever is held goes out.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    /// One whole `proot info:` line, taken out of the stream.
    fn line(&mut self) {
        let Ok(text) = std::str::from_utf8(&self.held) else {
            return;
        };
        let text = text.trim_end_matches(['\r', '\n']);
        if text.starts_with("proot info: argv = ") {
            self.in_argv = true;
            return;
        }
        if let Some(pid) = text.strip_prefix(MARKER) {
            self.main = pid.trim().parse().ok();
            return;
        }
        let Some(rest) = text.strip_prefix("proot info: pid ") else {
            return;
        };
        let Some((pid, what)) = rest.split_once(": ") else {
            return;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return;
        };
        let ended = if let Some(code) = what.strip_prefix("exited with status ") {
            code.parse().ok().map(Ended::Code)
        } else if let Some(signal) = what.strip_prefix("terminated with signal ") {
            signal.parse().ok().map(Ended::Signal)
        } else {
            None
        };
        if let Some(ended) = ended {
            self.last = Some(ended);
            if self.main == Some(pid) {
                self.ended = Some(ended);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn through(pieces: &[&[u8]]) -> (Vec<u8>, Option<Ended>) {
        let mut filter = StatusFilter::default();
        let mut out = Vec::new();
        for piece in pieces {
            filter.feed(piece, &mut out);
        }
        filter.finish(&mut out);
        (out, filter.ended())
    }

    #[test]
    fn the_commands_own_end_is_found_wherever_the_pieces_break() {
        let text = b"proot info: binding = /r:/\nproot info: reach main pid 42\nerr one\n\
                     proot info: pid 43: exited with status 0\n\
                     proot info: pid 42: terminated with signal 15\n\
                     proot info: pid 44: exited with status 0\n";
        for cut in 0..text.len() {
            let (out, ended) = through(&[&text[..cut], &text[cut..]]);
            assert_eq!(out, b"err one\n", "cut at {cut}");
            assert_eq!(ended, Some(Ended::Signal(15)), "cut at {cut}");
        }
        let (out, ended) = through(&[
            b"proot info: reach main pid 7\r\nhi\r\nproot info: pid 7: exited with status 3\r\n",
        ]);
        assert_eq!(
            (out.as_slice(), ended),
            (&b"hi\r\n"[..], Some(Ended::Code(3)))
        );
        // No marker: the process that ended last.
        let (_, ended) = through(&[
            b"proot info: pid 9: terminated with signal 2\n",
            b"proot info: pid 8: exited with status 0\n",
        ]);
        assert_eq!(ended, Some(Ended::Code(0)));
    }

    #[test]
    fn a_command_line_of_many_lines_is_taken_out_with_proots_header() {
        let (out, ended) = through(&[
            b"proot info: exe = /bin/sh\nproot info: argv = /bin/sh -c echo 1\nline two\n",
            b"line three\nproot info: initial cwd = /\nproot info: reach main pid 4\n",
            b"two\nproot info: pid 4: exited with status 0\n",
        ]);
        assert_eq!(
            (out.as_slice(), ended),
            (&b"two\n"[..], Some(Ended::Code(0)))
        );
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for text in [
            &b"proot warning: can't chdir\n"[..],
            b"no newline at the end",
            b"proot info",
            b"\x00\xff\nproot\n",
        ] {
            assert_eq!(through(&[text]), (text.to_vec(), None), "{text:?}");
        }
        let (out, _) = through(&[b"a line\n", b"pro", b"gress\n", b"ppproot inf"]);
        assert_eq!(out, b"a line\nprogress\nppproot inf");
        // proot's line right after a command's last partial line.
        let (out, ended) = through(&[
            b"proot info: reach main pid 5\nerr",
            b"proot info: pid 5: exited with status 3\n",
        ]);
        assert_eq!((out.as_slice(), ended), (&b"err"[..], Some(Ended::Code(3))));
    }
}
