//! One command on many targets at once, with a bound on how many run together.
//!
//! [`run`] starts every target's connect-and-run in its own task (at most
//! [`FanOut::jobs`] at a time) and reports [`Event`]s on a channel: complete output lines as
//! they arrive (a line is never split between events, so lines of different targets never
//! interleave mid-line), then one [`Outcome`] per target. Every target gets an outcome — run,
//! failed to connect, timed out, or cancelled by [`FanOut::fail_fast`].
//!
//! ```no_run
//! # async fn demo() -> reach::Result<()> {
//! use std::sync::Arc;
//! use reach::fanout::{self, Event, FanOut, Target};
//! let registry = Arc::new(reach::Registry::with_defaults());
//! let targets = ["local", "docker://app"]
//!     .iter()
//!     .map(|d| Ok(Target::new(*d, reach::Destination::parse(d)?, registry.clone())))
//!     .collect::<reach::Result<Vec<_>>>()?;
//! let mut events = fanout::run(targets, reach::ExecSpec::shell("uname -n"), FanOut::default());
//! while let Some(event) = events.recv().await {
//!     if let Event::Done { target, outcome } = event {
//!         println!("{target}: {:?}", outcome.result.map(|s| s.shell_code()));
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use reach_core::{
    Backend, BoxRead, Destination, Error, ErrorKind, ExecSpec, ExitStatus, Result, StdinMode,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::Registry;

/// One target: the name it is reported by, where it is, and the registry that makes its
/// backend (so that targets may carry different settings, such as a group's identity).
#[derive(Debug, Clone)]
pub struct Target {
    /// The name in output and results (as the user wrote it).
    pub name: String,
    /// Where to run.
    pub destination: Destination,
    /// Makes the backend.
    pub registry: Arc<Registry>,
}

impl Target {
    /// A target named `name`.
    pub fn new(name: impl Into<String>, destination: Destination, registry: Arc<Registry>) -> Self {
        Target {
            name: name.into(),
            destination,
            registry,
        }
    }
}

/// How a fan-out runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FanOut {
    /// How many targets connect and run at once (at least 1).
    pub jobs: usize,
    /// A limit on each target's connect and run together; the command is also started with
    /// what is left of it as its own [`ExecSpec::timeout`], so backends that can kill it do.
    pub timeout: Option<Duration>,
    /// After the first target that does not succeed, start no more and cancel those running.
    pub fail_fast: bool,
    /// Keep each target's whole output for its [`Outcome`] (off: lines are only streamed).
    pub capture: bool,
    /// Send output as [`Event::Lines`] while it arrives (off: only in the outcome).
    pub stream: bool,
}

impl Default for FanOut {
    fn default() -> Self {
        FanOut {
            jobs: 64,
            timeout: None,
            fail_fast: false,
            capture: true,
            stream: true,
        }
    }
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a target got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// It never ran: connecting (resolving, reaching, authenticating) failed or timed out.
    Connect,
    /// It was started; the result says how it ended.
    Run,
    /// It was cancelled ([`FanOut::fail_fast`]) before or while it ran.
    Cancelled,
}

/// How one target ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status, or what went wrong.
    pub result: Result<ExitStatus>,
    /// Where it got to.
    pub phase: Phase,
    /// Its stdout ([`FanOut::capture`]).
    pub stdout: Vec<u8>,
    /// Its stderr ([`FanOut::capture`]).
    pub stderr: Vec<u8>,
    /// From its start (after waiting for a job slot) to its end.
    pub duration: Duration,
}

impl Outcome {
    /// Whether the command ran and exited 0.
    pub fn success(&self) -> bool {
        matches!(&self.result, Ok(status) if status.success())
    }
}

/// What a fan-out reports.
#[derive(Debug)]
pub enum Event {
    /// Output of target number `target` (its index in the list given to [`run`]): whole
    /// lines, each ending in `\n` — except a stream's last bytes when they end without one.
    Lines {
        /// The target's index.
        target: usize,
        /// Which stream.
        stream: Stream,
        /// The lines.
        bytes: Vec<u8>,
    },
    /// Target number `target` ended (exactly once per target; its lines all came before).
    Done {
        /// The target's index.
        target: usize,
        /// How.
        outcome: Outcome,
    },
}

/// Starts `spec` on every target (stdin is not forwarded) and returns the events; the
/// channel closes after the last target's [`Event::Done`]. Needs a Tokio runtime.
pub fn run(
    targets: Vec<Target>,
    spec: ExecSpec,
    options: FanOut,
) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(options.jobs.max(1)));
    let (cancel, cancelled) = watch::channel(false);
    let cancel = Arc::new(cancel);
    let spec = ExecSpec {
        stdin: StdinMode::Null,
        ..spec
    };
    // One dispatcher hands out slots in list order, so targets start in the order given.
    tokio::spawn(async move {
        for (index, target) in targets.into_iter().enumerate() {
            let job = Job {
                index,
                target,
                spec: spec.clone(),
                options: options.clone(),
                events: tx.clone(),
            };
            let mut waiting = cancelled.clone();
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.ok(),
                _ = waiting.wait_for(|c| *c) => None,
            };
            let Some(permit) = permit.filter(|_| !*cancelled.borrow()) else {
                job.done(Outcome::cancelled(Duration::ZERO));
                continue;
            };
            let cancel = cancel.clone();
            let mut cancelled = cancelled.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                let outcome = tokio::select! {
                    outcome = job.run(started) => outcome,
                    _ = cancelled.wait_for(|c| *c) => Outcome::cancelled(started.elapsed()),
                };
                if job.options.fail_fast && !outcome.success() && outcome.phase != Phase::Cancelled
                {
                    let _ = cancel.send(true);
                }
                job.done(outcome);
            });
        }
    });
    rx
}

struct Job {
    index: usize,
    target: Target,
    spec: ExecSpec,
    options: FanOut,
    events: mpsc::UnboundedSender<Event>,
}

impl Outcome {
    fn cancelled(duration: Duration) -> Self {
        Outcome {
            result: Err(Error::new(
                ErrorKind::Timeout,
                "cancelled: another target failed (--fail-fast)",
            )),
            phase: Phase::Cancelled,
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration,
        }
    }
}

impl Job {
    fn done(&self, outcome: Outcome) {
        let _ = self.events.send(Event::Done {
            target: self.index,
            outcome,
        });
    }

    async fn run(&self, started: Instant) -> Outcome {
        let deadline = self.options.timeout.map(|t| started + t);
        let within = |what: String| {
            let limit = self.options.timeout;
            move || {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} `{}` took longer than the per-target limit of {:?}",
                        self.target.name,
                        limit.unwrap_or_default()
                    ),
                )
            }
        };
        let connected = until(deadline, self.connect(), within("connecting to".into())).await;
        let backend = match connected {
            Ok(backend) => backend,
            Err(e) => return self.outcome(Err(e), Phase::Connect, started, Vec::new(), Vec::new()),
        };
        let mut spec = self.spec.clone();
        if let Some(deadline) = deadline {
            spec.timeout = Some(deadline.saturating_duration_since(Instant::now()));
        }
        let ran = until(
            deadline,
            self.exec(&*backend, spec),
            within("running on".into()),
        )
        .await;
        let _ = backend.close().await;
        match ran {
            Ok((result, stdout, stderr)) => {
                self.outcome(result, Phase::Run, started, stdout, stderr)
            }
            Err(e) => self.outcome(Err(e), Phase::Run, started, Vec::new(), Vec::new()),
        }
    }

    fn outcome(
        &self,
        result: Result<ExitStatus>,
        phase: Phase,
        started: Instant,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    ) -> Outcome {
        Outcome {
            result,
            phase,
            stdout,
            stderr,
            duration: started.elapsed(),
        }
    }

    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        let backend = self.target.registry.backend(&self.target.destination)?;
        backend.connect().await?;
        Ok(backend)
    }

    /// Runs the command; `Err` only when it could not start (the status carries the rest).
    async fn exec(
        &self,
        backend: &dyn Backend,
        spec: ExecSpec,
    ) -> Result<(Result<ExitStatus>, Vec<u8>, Vec<u8>)> {
        let process = backend.exec(spec).await?;
        let (stdout, stderr, status) = tokio::join!(
            self.collect(process.take_stdout(), Stream::Stdout),
            self.collect(process.take_stderr(), Stream::Stderr),
            process.wait(),
        );
        Ok((status, stdout, stderr))
    }

    /// Reads a stream to its end, sending whole lines as they complete.
    async fn collect(&self, stream: Option<BoxRead>, which: Stream) -> Vec<u8> {
        let mut kept = Vec::new();
        let Some(mut stream) = stream else {
            return kept;
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if self.options.capture {
                kept.extend_from_slice(chunk);
            }
            if !self.options.stream {
                continue;
            }
            pending.extend_from_slice(chunk);
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                let rest = pending.split_off(end + 1);
                self.lines(which, std::mem::replace(&mut pending, rest));
            }
        }
        if !pending.is_empty() {
            self.lines(which, pending);
        }
        kept
    }

    fn lines(&self, stream: Stream, bytes: Vec<u8>) {
        let _ = self.events.send(Event::Lines {
            target: self.index,
            stream,
            bytes,
        });
    }
}

/// `work`, unless `deadline` passes first.
async fn until<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T>>,
    late: impl FnOnce() -> Error,
) -> Result<T> {
    match deadline {
        None => work.await,
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(done) => done,
            Err(_) => Err(late()),
        },
    }
}
