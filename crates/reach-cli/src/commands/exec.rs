//! `reach exec` and `reach shell`: run a process and wire it to this terminal.

use std::io::Read;
use std::time::{Duration, Instant};

use reach::{
    Capability, CommandLine, Destination, Error, ErrorKind, ExecSpec, Process, ProcessExt, Signal,
    StdinMode,
};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{ConnArgs, ExecArgs, ShellArgs};
use crate::warm::client::{self, Handed};
use crate::warm::{ConnWire, ExecRequest};
use crate::{exit, output, term};

/// Characters that make a single command word a shell line rather than a program name.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', '#', '~', '{',
    '}', '=',
];

fn command_line(words: Vec<String>) -> CommandLine {
    match words.as_slice() {
        [only] if only.contains(char::is_whitespace) || only.contains(SHELL_SYNTAX) => {
            CommandLine::Shell(only.clone())
        }
        _ => CommandLine::Argv(words),
    }
}

pub async fn exec(
    args: ExecArgs,
    json: bool,
    conn_args: &ConnArgs,
    conn: &reach::ConnectOptions,
) -> reach::Result<i32> {
    if args.fans_out() {
        return fan_out(args, json, conn).await;
    }
    let destination = Destination::parse(&args.destinations[0])?;
    let mut spec = ExecSpec::new(command_line(args.command));
    spec.env = args.env;
    spec.cwd = args.cwd;
    spec.timeout = args.timeout;
    if !args.no_stdin {
        spec.stdin = StdinMode::Piped;
    }
    if args.tty {
        spec = spec.pty(term_name(), term::size());
    }
    // A terminal session stays direct: its window size and raw mode do not cross the daemon.
    let keeps = || -> reach::Result<bool> {
        let backend = super::backend_for(&destination)?;
        Ok(backend.capabilities().has(Capability::KeepConnection))
    };
    let warm = if !args.tty && keeps()? {
        crate::inventory::reuse(conn_args.no_reuse, args.inventory.as_deref())?
    } else {
        None
    };
    run(&destination, spec, json, warm.map(|idle| (idle, conn_args))).await
}

async fn fan_out(args: ExecArgs, json: bool, conn: &reach::ConnectOptions) -> reach::Result<i32> {
    if args.tty {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "-t needs one destination: a terminal cannot be shared by several targets",
        ));
    }
    let targets = crate::inventory::targets(
        &args.destinations,
        &args.hosts,
        args.inventory.as_deref(),
        conn,
    )?;
    if targets.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "no destination: name one or more, @GROUP, or -H FILE",
        ));
    }
    let mut spec = ExecSpec::new(command_line(args.command));
    spec.env = args.env;
    spec.cwd = args.cwd;
    let mut options = reach::fanout::FanOut::default();
    options.jobs = args.jobs.max(1);
    options.timeout = args.timeout;
    options.fail_fast = args.fail_fast;
    let mode = if json {
        super::fanout::Mode::Json
    } else if args.group {
        super::fanout::Mode::Grouped
    } else {
        super::fanout::Mode::Prefixed
    };
    Ok(super::fanout::run(targets, spec, options, mode).await)
}

pub async fn shell(args: ShellArgs, json: bool) -> reach::Result<i32> {
    let destination = Destination::parse(&args.destination)?;
    let mut spec = ExecSpec::login_shell().stdin(StdinMode::Piped);
    if term::stdin_is_tty() {
        spec = spec.pty(term_name(), term::size());
    }
    run(&destination, spec, json, None).await
}

fn term_name() -> String {
    std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".to_owned())
}

/// Where a command starts: through the connection daemon (with its idle time) or directly.
type Reuse<'a> = Option<(Duration, &'a ConnArgs)>;

async fn run(
    destination: &Destination,
    spec: ExecSpec,
    json: bool,
    reuse: Reuse<'_>,
) -> reach::Result<i32> {
    let started = Instant::now();
    let tty = spec.pty.is_some();
    let piped = spec.stdin == StdinMode::Piped;
    let process = match start(destination, spec, reuse).await? {
        Ok(process) => process,
        Err(err) => {
            output::report_error(&err, json);
            return Ok(exit::for_spawn_error(&err));
        }
    };
    if piped {
        if let Some(stdin) = process.take_stdin() {
            tokio::spawn(pump_stdin(stdin));
        }
    }
    if json {
        let result = process.output().await;
        return Ok(report_json(destination, result, started));
    }
    // Raw mode lives until this function returns, on every path.
    let _raw = if tty { term::RawMode::enter() } else { None };
    let stdout = process
        .take_stdout()
        .map(|s| tokio::spawn(pump(s, tokio::io::stdout())));
    let stderr = process
        .take_stderr()
        .map(|s| tokio::spawn(pump(s, tokio::io::stderr())));
    let status = wait_forwarding_signals(process.as_ref(), tty).await;
    // Every byte the process wrote goes out before its status decides our exit.
    for pump in [stdout, stderr].into_iter().flatten() {
        let _ = pump.await;
    }
    match status {
        Ok(status) => Ok(exit::for_status(&status)),
        Err(err) if matches!(err.kind(), ErrorKind::Timeout) => {
            output::report_error(&err, false);
            Ok(exit::TIMEOUT)
        }
        Err(err) => Err(err),
    }
}

/// Starts the command: the outer error is a failure to connect, the inner one a command that
/// could not start. Through the daemon when `reuse` says so and the daemon can take it; an
/// daemon that cannot (none could start, another HOME) means a direct connection, with a
/// line on stderr saying why. A key the daemon could not use without asking for a passphrase
/// or password is retried directly when there is a terminal to ask on.
async fn start(
    destination: &Destination,
    spec: ExecSpec,
    reuse: Reuse<'_>,
) -> reach::Result<reach::Result<Box<dyn Process>>> {
    if let Some((idle, conn)) = reuse {
        let wire = ConnWire::from_args(conn);
        let may_ask = !wire.has_secrets() && term::stdin_is_tty();
        let request = ExecRequest::new(destination.to_string(), wire, &spec);
        match client::exec(request, idle).await {
            Handed::Started(process) => return Ok(Ok(process)),
            Handed::Failed(err, true) if matches!(err.kind(), ErrorKind::AuthFailed) && may_ask => {
            }
            Handed::Failed(err, true) => return Err(err),
            Handed::Failed(err, false) => return Ok(Err(err)),
            Handed::Unavailable(why) => {
                eprintln!("reach: connecting directly: {why} (--no-reuse skips the daemon)");
            }
        }
    }
    let backend = super::connect(destination).await?;
    Ok(backend.exec(spec).await)
}

fn report_json(
    destination: &Destination,
    result: reach::Result<reach::Output>,
    started: Instant,
) -> i32 {
    let mut object = Map::new();
    object.insert("destination".into(), json!(destination.to_string()));
    object.insert(
        "duration_ms".into(),
        json!(started.elapsed().as_secs_f64() * 1000.0),
    );
    let code = match result {
        Ok(out) => {
            let status = match &out.status {
                reach::ExitStatus::Code(code) => json!({"code": code}),
                reach::ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => json!({"signal": signal.name(), "core_dumped": core_dumped}),
            };
            object.insert("status".into(), status);
            output::put_bytes(&mut object, "stdout", &out.stdout);
            output::put_bytes(&mut object, "stderr", &out.stderr);
            exit::for_status(&out.status)
        }
        Err(err) => {
            object.insert(
                "error".into(),
                json!({"kind": err.kind().as_str(), "message": err.to_string()}),
            );
            if matches!(err.kind(), ErrorKind::Timeout) {
                exit::TIMEOUT
            } else {
                exit::for_error(&err)
            }
        }
    };
    output::print_json(&Value::Object(object));
    code
}

/// Waits for the process while forwarding the signals a user sends to reach. Under a PTY,
/// Ctrl-C travels as a byte through the terminal instead, and window size changes follow.
async fn wait_forwarding_signals(
    process: &dyn Process,
    tty: bool,
) -> reach::Result<reach::ExitStatus> {
    let listen = |kind: SignalKind| signal(kind).map_err(|e| Error::io("listen for signals", e));
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    let mut hangup = listen(SignalKind::hangup())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut winch = listen(SignalKind::window_change())?;
    let wait = process.wait();
    tokio::pin!(wait);
    loop {
        let forward = tokio::select! {
            status = &mut wait => return status,
            _ = interrupt.recv() => Signal::INT,
            _ = terminate.recv() => Signal::TERM,
            _ = hangup.recv() => Signal::HUP,
            _ = quit.recv() => Signal::from_name("QUIT"),
            _ = winch.recv() => {
                if tty {
                    let _ = process.resize(term::size()).await;
                }
                continue;
            }
        };
        if let Err(err) = process.signal(forward.clone()).await {
            eprintln!("reach: could not forward {forward}: {err}");
        }
    }
}

/// Copies a process stream to ours, flushing each chunk so output is never held back.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    // Large: each write to tokio's stdout is a trip to a blocking thread.
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Forwards our stdin to the process, then closes its stdin (EOF). Reads happen on a plain
/// thread so that a read blocked on a terminal never keeps reach from exiting.
async fn pump_stdin(mut to: reach::BoxWrite) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let spawned = std::thread::Builder::new()
        .name("reach-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    if spawned.is_err() {
        return;
    }
    while let Some(chunk) = rx.recv().await {
        if to.write_all(&chunk).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_word_with_shell_syntax_is_a_shell_line() {
        let argv = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(argv(&["echo $HOME | wc"])),
            CommandLine::Shell("echo $HOME | wc".into())
        );
        assert_eq!(
            command_line(argv(&["uname"])),
            CommandLine::Argv(argv(&["uname"]))
        );
        assert_eq!(
            command_line(argv(&["sh", "-c", "exit 3"])),
            CommandLine::Argv(argv(&["sh", "-c", "exit 3"]))
        );
    }
}
