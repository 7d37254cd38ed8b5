//! Running commands: what to run ([`ExecSpec`]), the running thing ([`Process`]) and how it
//! ended ([`ExitStatus`]).

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::Result;

/// A boxed byte stream read from a target (a process's stdout, a file).
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed byte stream written to a target (a process's stdin, a file).
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// A program and its arguments, run without a shell (no word splitting, no globbing).
    Argv(Vec<String>),
    /// A command line for the target's shell (`sh -c` on Unix).
    Shell(String),
    /// The user's interactive login shell (what `ssh host` gives).
    LoginShell,
}

impl CommandLine {
    /// The command as one shell command line, quoting argv words so the shell sees them
    /// unchanged. `None` for [`CommandLine::LoginShell`].
    pub fn to_shell_line(&self) -> Option<String> {
        match self {
            CommandLine::Argv(argv) => Some(
                argv.iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            CommandLine::Shell(line) => Some(line.clone()),
            CommandLine::LoginShell => None,
        }
    }
}

/// Quotes `word` for a POSIX shell, leaving plain words as they are.
pub fn shell_quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// Where the process's stdin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdinMode {
    /// Empty: the process reads EOF at once. The default, so that nothing waits for input
    /// that never comes.
    #[default]
    Null,
    /// A stream the caller writes through [`Process::take_stdin`]; closing or dropping it
    /// sends EOF.
    Piped,
}

/// The size of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for PtySize {
    fn default() -> Self {
        PtySize { rows: 24, cols: 80 }
    }
}

/// A pseudo-terminal request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyRequest {
    /// The value of `TERM` (for example `xterm-256color`).
    pub term: String,
    /// The initial size.
    pub size: PtySize,
}

/// Everything that describes one command to run on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// What to run.
    pub command: CommandLine,
    /// Variables added to the target's environment.
    pub env: Vec<(String, String)>,
    /// The working directory; the target's default (home, or the current directory for
    /// `local`) when `None`.
    pub cwd: Option<String>,
    /// Run under a pseudo-terminal; stdout then carries the merged terminal output and there is
    /// no separate stderr.
    pub pty: Option<PtyRequest>,
    /// Kill the command (and what it started) after this long; [`Process::wait`] then returns
    /// [`crate::ErrorKind::Timeout`].
    pub timeout: Option<Duration>,
    /// Where stdin comes from.
    pub stdin: StdinMode,
}

impl ExecSpec {
    /// A spec for `command` with every other field at its default.
    pub fn new(command: CommandLine) -> Self {
        ExecSpec {
            command,
            env: Vec::new(),
            cwd: None,
            pty: None,
            timeout: None,
            stdin: StdinMode::Null,
        }
    }

    /// Runs a program with arguments, no shell.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(CommandLine::Argv(
            argv.into_iter().map(Into::into).collect(),
        ))
    }

    /// Runs a line through the target's shell.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::new(CommandLine::Shell(line.into()))
    }

    /// Starts the user's login shell.
    pub fn login_shell() -> Self {
        Self::new(CommandLine::LoginShell)
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Requests a pseudo-terminal.
    pub fn pty(mut self, term: impl Into<String>, size: PtySize) -> Self {
        self.pty = Some(PtyRequest {
            term: term.into(),
            size,
        });
        self
    }

    /// Sets a time limit.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Sets where stdin comes from.
    pub fn stdin(mut self, mode: StdinMode) -> Self {
        self.stdin = mode;
        self
    }
}

/// A signal, by its POSIX name without the `SIG` prefix (`TERM`, `KILL`, ...).
///
/// Names travel between systems (SSH sends names, not numbers); [`Signal::number`] gives the
/// Linux number where one is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signal(Cow<'static, str>);

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

impl Signal {
    /// Hang-up.
    pub const HUP: Signal = Signal(Cow::Borrowed("HUP"));
    /// Interrupt (Ctrl-C).
    pub const INT: Signal = Signal(Cow::Borrowed("INT"));
    /// Kill, which cannot be caught.
    pub const KILL: Signal = Signal(Cow::Borrowed("KILL"));
    /// Polite termination.
    pub const TERM: Signal = Signal(Cow::Borrowed("TERM"));

    /// A signal from its name, with or without `SIG`, any case (`term`, `SIGTERM`).
    pub fn from_name(name: &str) -> Signal {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        match SIGNALS.iter().find(|(n, _)| *n == bare) {
            Some((n, _)) => Signal(Cow::Borrowed(n)),
            None => Signal(Cow::Owned(bare.to_owned())),
        }
    }

    /// A signal from its Linux number.
    pub fn from_number(number: i32) -> Signal {
        match SIGNALS.iter().find(|(_, n)| *n == number) {
            Some((name, _)) => Signal(Cow::Borrowed(name)),
            None => Signal(Cow::Owned(format!("SIG{number}"))),
        }
    }

    /// The name, without `SIG`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The Linux signal number, if this is a known signal.
    pub fn number(&self) -> Option<i32> {
        SIGNALS
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, number)| *number)
            .or_else(|| self.0.strip_prefix("SIG").and_then(|n| n.parse().ok()))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.0)
    }
}

/// How a process ended, as the target reported it. Never invented: a transport that closes
/// without a status makes [`Process::wait`] fail with [`crate::ErrorKind::SessionDropped`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The process exited with this code.
    Code(i32),
    /// The process was killed by a signal.
    Signal {
        /// Which signal.
        signal: Signal,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The code a shell would show in `$?`: the exit code, or 128 + the signal number
    /// (128 alone for a signal with no known number).
    pub fn shell_code(&self) -> i32 {
        match self {
            ExitStatus::Code(code) => *code,
            ExitStatus::Signal { signal, .. } => 128 + signal.number().unwrap_or(0),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// A command running on a target.
///
/// Every method takes `&self`, so a caller can wait in one branch of a `select!` while it
/// forwards signals or resizes in another. Dropping a `Process` that has not been waited for
/// kills it (and, where the backend can, everything it started).
#[async_trait]
pub trait Process: Send + Sync + fmt::Debug {
    /// Where the process keeps its streams, when it keeps them in a [`Streams`]: the `take_*`
    /// methods below then need no code of their own. `None` for a process that overrides
    /// all three.
    fn streams(&self) -> Option<&Streams>;
    /// The stdin stream, the first time it is asked for ([`StdinMode::Piped`] only).
    fn take_stdin(&self) -> Option<BoxWrite> {
        self.streams().and_then(Streams::take_stdin)
    }
    /// The stdout stream (under a PTY: the terminal's output), the first time it is asked for.
    fn take_stdout(&self) -> Option<BoxRead> {
        self.streams().and_then(Streams::take_stdout)
    }
    /// The stderr stream, the first time it is asked for; `None` under a PTY.
    fn take_stderr(&self) -> Option<BoxRead> {
        self.streams().and_then(Streams::take_stderr)
    }
    /// Waits for the process to end. Once it returns, all output the process wrote is
    /// readable from its streams. Calling it again returns the same result.
    async fn wait(&self) -> Result<ExitStatus>;
    /// Sends a signal to the process (and its process group where the target has them).
    async fn signal(&self, signal: Signal) -> Result<()>;
    /// Changes the size of the process's terminal; [`crate::ErrorKind::InvalidInput`] without
    /// a PTY.
    async fn resize(&self, size: PtySize) -> Result<()>;
}

/// A process's three streams, each handed out once: the storage behind
/// [`Process::take_stdin`], [`Process::take_stdout`] and [`Process::take_stderr`] for backends.
#[derive(Default)]
pub struct Streams {
    stdin: std::sync::Mutex<Option<BoxWrite>>,
    stdout: std::sync::Mutex<Option<BoxRead>>,
    stderr: std::sync::Mutex<Option<BoxRead>>,
}

fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    crate::sync::lock(slot).take()
}

impl Streams {
    /// Holds the streams a backend opened (`None` for those the process does not have).
    pub fn new(stdin: Option<BoxWrite>, stdout: Option<BoxRead>, stderr: Option<BoxRead>) -> Self {
        Streams {
            stdin: std::sync::Mutex::new(stdin),
            stdout: std::sync::Mutex::new(stdout),
            stderr: std::sync::Mutex::new(stderr),
        }
    }

    /// stdin, the first time only.
    pub fn take_stdin(&self) -> Option<BoxWrite> {
        take(&self.stdin)
    }

    /// stdout, the first time only.
    pub fn take_stdout(&self) -> Option<BoxRead> {
        take(&self.stdout)
    }

    /// stderr, the first time only.
    pub fn take_stderr(&self) -> Option<BoxRead> {
        take(&self.stderr)
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// Everything a process wrote, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// All of stdout.
    pub stdout: Vec<u8>,
    /// All of stderr (empty under a PTY).
    pub stderr: Vec<u8>,
}

/// Helpers on top of [`Process`].
#[async_trait]
pub trait ProcessExt: Process {
    /// Reads stdout and stderr to their ends while waiting for the process, and returns all.
    ///
    /// Streams already taken are left alone (their output is not in the result).
    async fn output(&self) -> Result<Output> {
        let (stdout, stderr) = (self.take_stdout(), self.take_stderr());
        let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), self.wait());
        Ok(Output {
            status: status?,
            stdout: out.map_err(|e| crate::Error::io("read stdout", e))?,
            stderr: err.map_err(|e| crate::Error::io("read stderr", e))?,
        })
    }
}

impl<P: Process + ?Sized> ProcessExt for P {}

async fn read_all(stream: Option<BoxRead>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut stream) = stream {
        stream.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(Signal::from_name("sigterm"), Signal::TERM);
        assert_eq!(Signal::from_number(9), Signal::KILL);
        assert_eq!(Signal::TERM.number(), Some(15));
        assert_eq!(Signal::from_number(40).number(), Some(40));
        assert_eq!(Signal::from_name("NOPE").number(), None);
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        let term = ExitStatus::Signal {
            signal: Signal::TERM,
            core_dumped: false,
        };
        assert_eq!(term.shell_code(), 143);
        assert_eq!(term.to_string(), "killed by SIGTERM");
    }

    #[test]
    fn quoting_keeps_words_intact() {
        let line = CommandLine::Argv(vec!["printf".into(), "%s\n".into(), "it's a b".into()])
            .to_shell_line();
        assert_eq!(
            line.as_deref(),
            Some(
                r"printf '%s
' 'it'\''s a b'"
            )
        );
        assert_eq!(shell_quote(""), "''");
    }
}
