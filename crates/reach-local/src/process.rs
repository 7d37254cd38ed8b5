//! Local processes: spawning, waiting, signals, timeouts and teardown.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::unistd::Pid;
use reach_core::sync::lock;
use reach_core::{
    BoxRead, BoxWrite, CommandLine, Error, ErrorKind, ExecSpec, ExitStatus, Process, PtySize,
    Result, Signal, StdinMode, Streams, Subject,
};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::pty::{self, PtyStream};

/// A command running on the local host, in a process group of its own.
pub struct LocalProcess {
    pid: i32,
    label: String,
    child: tokio::sync::Mutex<Child>,
    result: Mutex<Option<Result<ExitStatus>>>,
    shared: Arc<Shared>,
    streams: Streams,
    pty: Option<PtyStream>,
    timeout: Option<Duration>,
    watchdog: Option<JoinHandle<()>>,
}

/// State the timeout watchdog shares with the process.
#[derive(Debug, Default)]
struct Shared {
    /// Set once the process has been reaped: its pid (= process group id) may be reused, so
    /// nothing signals the group after this.
    reaped: Mutex<bool>,
    timed_out: AtomicBool,
}

impl Shared {
    /// Signals the whole process group unless the leader was reaped.
    fn signal_group(&self, pid: i32, signal: NixSignal) -> nix::Result<()> {
        let reaped = self.reaped.lock().map(|g| *g).unwrap_or(true);
        if reaped {
            return Ok(());
        }
        match killpg(Pid::from_raw(pid), signal) {
            Err(nix::errno::Errno::ESRCH) => Ok(()),
            other => other,
        }
    }
}

impl LocalProcess {
    /// Starts `spec` on this machine.
    pub async fn spawn(spec: ExecSpec) -> Result<LocalProcess> {
        let (mut cmd, label) = command_for(&spec.command)?;
        if let Some(dir) = &spec.cwd {
            match tokio::fs::metadata(dir).await {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("working directory `{dir}` on local is not a directory"),
                    )
                    .with_subject(Subject::WorkingDirectory))
                }
                Err(e) => {
                    return Err(Error::io(format!("working directory `{dir}` on local"), e)
                        .with_subject(Subject::WorkingDirectory))
                }
            }
            cmd.current_dir(dir);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.kill_on_drop(false);
        let mut pty_stream = None;
        match &spec.pty {
            None => {
                cmd.stdin(match spec.stdin {
                    StdinMode::Null => Stdio::null(),
                    StdinMode::Piped => Stdio::piped(),
                });
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                cmd.process_group(0);
            }
            Some(request) => {
                let (master, slave) = pty::open(request.size)
                    .map_err(|e| Error::io("open a pseudo-terminal on local", e))?;
                let dup = |fd: &std::os::fd::OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| Error::io("duplicate the pseudo-terminal on local", e))
                };
                cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
                cmd.env("TERM", &request.term);
                pty::make_controlling_terminal(&mut cmd);
                pty_stream = Some(
                    PtyStream::new(master)
                        .map_err(|e| Error::io("register the pseudo-terminal", e))?,
                );
            }
        }
        let spawned = cmd.spawn();
        // The command holds our copies of the PTY slave; they must close so that reads of the
        // master end when the process's last descriptor closes.
        drop(cmd);
        let mut child = spawned.map_err(|e| spawn_error(&label, spec.cwd.as_deref(), e))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| Error::new(ErrorKind::Io, format!("`{label}` exited at once")))?;
        let (stdin, stdout, stderr): (Option<BoxWrite>, Option<BoxRead>, Option<BoxRead>) =
            match &pty_stream {
                None => (
                    child.stdin.take().map(|s| Box::pin(s) as BoxWrite),
                    child.stdout.take().map(|s| Box::pin(s) as BoxRead),
                    child.stderr.take().map(|s| Box::pin(s) as BoxRead),
                ),
                Some(stream) => (
                    match spec.stdin {
                        StdinMode::Piped => Some(Box::pin(stream.clone()) as BoxWrite),
                        StdinMode::Null => None,
                    },
                    Some(Box::pin(stream.clone()) as BoxRead),
                    None,
                ),
            };
        let shared = Arc::new(Shared::default());
        let watchdog = spec.timeout.map(|limit| {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                shared.timed_out.store(true, Ordering::SeqCst);
                let _ = shared.signal_group(pid, NixSignal::SIGKILL);
            })
        });
        Ok(LocalProcess {
            pid,
            label,
            child: tokio::sync::Mutex::new(child),
            result: Mutex::new(None),
            shared,
            streams: Streams::new(stdin, stdout, stderr),
            pty: pty_stream,
            timeout: spec.timeout,
            watchdog,
        })
    }

    /// The process id (also the id of its process group).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl std::fmt::Debug for LocalProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProcess")
            .field("pid", &self.pid)
            .field("command", &self.label)
            .field("pty", &self.pty.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn command_for(command: &CommandLine) -> Result<(Command, String)> {
    Ok(match command {
        CommandLine::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "empty command: give a program to run",
                ));
            };
            let mut cmd = Command::new(program);
            cmd.args(args);
            (cmd, program.clone())
        }
        CommandLine::Shell(line) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            (cmd, "/bin/sh".to_owned())
        }
        CommandLine::LoginShell => {
            let user = crate::current_user();
            let shell = user.shell.to_string_lossy().into_owned();
            let shell = if shell.is_empty() {
                "/bin/sh".to_owned()
            } else {
                shell
            };
            let base = shell.rsplit('/').next().unwrap_or("sh").to_owned();
            let mut cmd = Command::new(&shell);
            // A leading dash in argv[0] makes the shell a login shell.
            cmd.arg0(format!("-{base}"));
            cmd.current_dir(&user.dir);
            (cmd, shell)
        }
    })
}

fn spawn_error(label: &str, cwd: Option<&str>, err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::NotFound => Error::new(
            ErrorKind::NotFound,
            format!("command `{label}` not found on local: check the name and PATH"),
        )
        .with_subject(Subject::Command)
        .with_source(err),
        std::io::ErrorKind::PermissionDenied => Error::new(
            ErrorKind::PermissionDenied,
            format!("command `{label}` on local is not executable: check its permissions"),
        )
        .with_subject(Subject::Command)
        .with_source(err),
        _ => Error::io(
            format!(
                "start `{label}` on local{}",
                cwd.map(|d| format!(" in `{d}`")).unwrap_or_default()
            ),
            err,
        ),
    }
}

fn status_of(status: std::process::ExitStatus) -> Result<ExitStatus> {
    if let Some(code) = status.code() {
        return Ok(ExitStatus::Code(code));
    }
    match status.signal() {
        Some(number) => Ok(ExitStatus::Signal {
            signal: Signal::from_number(number),
            core_dumped: status.core_dumped(),
        }),
        None => Err(Error::new(
            ErrorKind::Protocol,
            format!("unrecognised wait status {status:?}"),
        )),
    }
}

#[async_trait]
impl Process for LocalProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        let mut child = self.child.lock().await;
        if let Some(result) = lock(&self.result).as_ref() {
            return result.clone();
        }
        let waited = child.wait().await;
        *lock(&self.shared.reaped) = true;
        let result = match waited {
            Err(e) => Err(Error::io(format!("wait for `{}` on local", self.label), e)),
            Ok(_) if self.shared.timed_out.load(Ordering::SeqCst) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "`{}` on local timed out after {:?}; it and the processes it started were \
                     killed",
                    self.label,
                    self.timeout.unwrap_or_default()
                ),
            )),
            Ok(status) => status_of(status),
        };
        *lock(&self.result) = Some(result.clone());
        result
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        let number = signal.number().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("unknown signal `{}`", signal.name()),
            )
        })?;
        let nix_signal = NixSignal::try_from(number).map_err(|_| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{signal} does not exist on this system"),
            )
        })?;
        self.shared
            .signal_group(self.pid, nix_signal)
            .map_err(|e| Error::io(format!("send {signal} to `{}`", self.label), e.into()))
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        match &self.pty {
            Some(stream) => pty::resize(stream.fd(), size)
                .map_err(|e| Error::io("resize the terminal on local", e)),
            None => Err(Error::new(
                ErrorKind::InvalidInput,
                "cannot resize: the process has no terminal (start it with a PTY)",
            )),
        }
    }
}

impl Drop for LocalProcess {
    /// A process dropped before it was reaped is killed with everything in its group, so that
    /// cancelling a caller never leaves work running.
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        let _ = self.shared.signal_group(self.pid, NixSignal::SIGKILL);
    }
}
