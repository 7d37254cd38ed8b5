//! The conformance suite: what every backend must do, written once.
//!
//! Each check is an `async fn(&Ctx) -> CheckResult` that returns `Err` with what a user would
//! see go wrong (never panics), so that the same check can be asserted to pass on a real
//! backend and asserted to fail on a [`crate::broken`] one. [`CHECKS`] pairs every check with
//! the defect it must catch; `reach-test`'s own tests run that whole matrix.
//!
//! Commands used here are POSIX `sh` and the busybox applets (`printf`, `cat`, `head`, `yes`,
//! `stty`, `sleep`, `kill`, `touch`, `uname`, and `busybox nc` as a TCP server), so the suite
//! runs unchanged in a minimal container.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reach_core::{
    Backend, ErrorKind, ExecSpec, ExitStatus, FileSystem, FileSystemExt, FileType, Output, Process,
    ProcessExt, PtySize, Signal, StdinMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broken::Defect;
use crate::Fixture;

/// `Ok` if the backend behaved, or what went wrong.
pub type CheckResult = Result<(), String>;

/// What a check works with.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// An empty directory on the target.
    pub scratch: String,
    /// A directory in which creating entries is refused.
    pub denied_dir: String,
}

impl Ctx {
    /// The context for a fixture.
    pub fn new(fixture: &dyn Fixture) -> Self {
        Ctx {
            backend: fixture.backend(),
            scratch: fixture.scratch(),
            denied_dir: fixture.denied_dir(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.scratch)
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>, String> {
        self.backend.fs().await.map_err(|e| format!("fs(): {e}"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Every check, by name, with the defect it is shown to catch.
pub const CHECKS: &[(&str, Defect)] = &[
    ("exit_codes", Defect::ExitCodeZero),
    ("death_by_signal", Defect::SignalAsCode),
    ("stdout_stderr_apart", Defect::MergeStderr),
    ("binary_both_ways", Defect::DropLastByte),
    ("large_output", Defect::DropLastByte),
    ("output_flow_control", Defect::UnboundedOutput),
    ("input_flow_control", Defect::UnboundedInput),
    ("unread_stalls_nothing_else", Defect::OneAtATime),
    ("stdin_streamed_with_eof", Defect::NoStdinEof),
    ("env_vars", Defect::IgnoreEnv),
    ("working_dir", Defect::IgnoreCwd),
    ("timeout_kills_tree", Defect::NoTimeout),
    ("concurrent_sessions", Defect::MaxSessions),
    ("pty_and_resize", Defect::IgnoreResize),
    ("pty_stdin_close", Defect::HangUpWithStdin),
    ("fs_read_write", Defect::TruncateWrites),
    ("fs_names", Defect::LossyNames),
    ("fs_metadata_permissions", Defect::IgnoreChmod),
    ("fs_symlinks", Defect::FollowSymlinks),
    ("fs_glob", Defect::HideDotfiles),
    ("fs_directories", Defect::LenientCreateDir),
    ("fs_rename_truncate_remove", Defect::RenameKeepsSource),
    ("fs_errors", Defect::ErrorKindsIo),
    ("platform", Defect::WrongArch),
    ("tcp_connect", Defect::TunnelNoEof),
];

/// How long one check may take before it counts as hung.
pub const CHECK_LIMIT: Duration = Duration::from_secs(120);

/// Runs the check called `name`, bounded by [`CHECK_LIMIT`].
pub async fn run(name: &str, cx: &Ctx) -> CheckResult {
    let check = async {
        match name {
            "exit_codes" => exit_codes(cx).await,
            "death_by_signal" => death_by_signal(cx).await,
            "stdout_stderr_apart" => stdout_stderr_apart(cx).await,
            "binary_both_ways" => binary_both_ways(cx).await,
            "large_output" => large_output(cx).await,
            "output_flow_control" => output_flow_control(cx).await,
            "input_flow_control" => input_flow_control(cx).await,
            "unread_stalls_nothing_else" => unread_stalls_nothing_else(cx).await,
            "stdin_streamed_with_eof" => stdin_streamed_with_eof(cx).await,
            "env_vars" => env_vars(cx).await,
            "working_dir" => working_dir(cx).await,
            "timeout_kills_tree" => timeout_kills_tree(cx).await,
            "concurrent_sessions" => concurrent_sessions(cx).await,
            "pty_and_resize" => pty_and_resize(cx).await,
            "pty_stdin_close" => pty_stdin_close(cx).await,
            "fs_read_write" => fs_read_write(cx).await,
            "fs_names" => fs_names(cx).await,
            "fs_metadata_permissions" => fs_metadata_permissions(cx).await,
            "fs_symlinks" => fs_symlinks(cx).await,
            "fs_glob" => fs_glob(cx).await,
            "fs_directories" => fs_directories(cx).await,
            "fs_rename_truncate_remove" => fs_rename_truncate_remove(cx).await,
            "fs_errors" => fs_errors(cx).await,
            "platform" => platform(cx).await,
            "tcp_connect" => tcp_connect(cx).await,
            other => Err(format!("no conformance check named `{other}`")),
        }
    };
    tokio::time::timeout(CHECK_LIMIT, check)
        .await
        .unwrap_or_else(|_| Err(format!("`{name}` hung for more than {CHECK_LIMIT:?}")))
}

/// Runs the check called `name` against `fixture` and panics with its failure: the body of
/// each test that [`crate::conformance_suite!`] generates.
///
/// # Panics
///
/// When the check fails.
#[allow(clippy::panic)]
pub async fn assert_check(name: &str, fixture: &dyn Fixture) {
    if let Err(failure) = run(name, &Ctx::new(fixture)).await {
        panic!(
            "conformance check `{name}` failed on `{}`: {failure}",
            fixture.backend().destination()
        );
    }
}

/// Generates one `#[tokio::test]` per conformance check.
///
/// `$fixture` is an async expression giving `Option<impl Fixture>`; `None` means the real peer
/// is missing, and the fixture must already have called [`crate::skip`] to say why.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:expr) => {
        $crate::conformance_suite!(@each $fixture;
            exit_codes, death_by_signal, stdout_stderr_apart, binary_both_ways, large_output,
            output_flow_control, input_flow_control, unread_stalls_nothing_else,
            stdin_streamed_with_eof, env_vars, working_dir, timeout_kills_tree,
            concurrent_sessions, pty_and_resize, pty_stdin_close, fs_read_write, fs_names,
            fs_metadata_permissions, fs_symlinks, fs_glob, fs_directories, fs_rename_truncate_remove,
            fs_errors, platform, tcp_connect);
    };
    (@each $fixture:expr; $($name:ident),* $(,)?) => {
        /// The checks this suite instance generated, compared against
        /// `reach_test::conformance::CHECKS` so that none is left out.
        #[allow(dead_code)]
        pub const GENERATED_CHECKS: &[&str] = &[$(stringify!($name)),*];

        /// No check of the suite is left out of this instance.
        #[test]
        fn every_check_is_generated() {
            let all: Vec<&str> = $crate::conformance::CHECKS
                .iter()
                .map(|(name, _)| *name)
                .collect();
            assert_eq!(GENERATED_CHECKS, all.as_slice());
        }
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(fixture) = $fixture.await {
                    $crate::conformance::assert_check(stringify!($name), &fixture).await;
                }
            }
        )*
    };
}

async fn start(cx: &Ctx, spec: ExecSpec) -> Result<Box<dyn Process>, String> {
    let what = format!("{:?}", spec.command);
    cx.backend
        .exec(spec)
        .await
        .map_err(|e| format!("exec {what}: {e}"))
}

async fn output(cx: &Ctx, spec: ExecSpec) -> Result<Output, String> {
    let what = format!("{:?}", spec.command);
    let process = start(cx, spec).await?;
    process
        .output()
        .await
        .map_err(|e| format!("{what}: {e} ({:?})", e.kind()))
}

async fn sh(cx: &Ctx, line: &str) -> Result<Output, String> {
    output(cx, ExecSpec::shell(line)).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn exit_codes(cx: &Ctx) -> CheckResult {
    let codes: Vec<i32> = (0..=255).collect();
    for chunk in codes.chunks(8) {
        let runs = chunk
            .iter()
            .map(|code| async move { (code, sh(cx, &format!("exit {code}")).await) });
        for (code, out) in futures_join_all(runs).await {
            let out = out?;
            ensure!(
                out.status == ExitStatus::Code(*code),
                "`exit {code}` reported {:?}",
                out.status
            );
        }
    }
    let out = output(cx, ExecSpec::argv(["true"])).await?;
    ensure!(
        out.status.success(),
        "argv `true` reported {:?}",
        out.status
    );
    Ok(())
}

/// `join_all` without the futures crate: runs the futures concurrently on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in set.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

async fn death_by_signal(cx: &Ctx) -> CheckResult {
    for (name, signal) in [("TERM", Signal::TERM), ("KILL", Signal::KILL)] {
        let out = sh(cx, &format!("kill -{name} $$")).await?;
        let expected = ExitStatus::Signal {
            signal,
            core_dumped: false,
        };
        ensure!(
            out.status == expected,
            "`kill -{name} $$` reported {:?}",
            out.status
        );
    }
    let process = start(cx, ExecSpec::shell("echo ready; exec sleep 30")).await?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    let mut ready = [0u8; 6];
    stdout
        .read_exact(&mut ready)
        .await
        .map_err(|e| format!("read `ready`: {e}"))?;
    process
        .signal(Signal::INT)
        .await
        .map_err(|e| format!("signal(INT): {e}"))?;
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(
        matches!(&status, ExitStatus::Signal { signal, .. } if *signal == Signal::INT),
        "`sleep 30` sent SIGINT reported {status:?}"
    );
    Ok(())
}

async fn stdout_stderr_apart(cx: &Ctx) -> CheckResult {
    let out = sh(cx, "printf out; printf err >&2; printf out2; exit 3").await?;
    ensure!(
        out.stdout == b"outout2",
        "stdout was {:?}",
        text(&out.stdout)
    );
    ensure!(out.stderr == b"err", "stderr was {:?}", text(&out.stderr));
    ensure!(out.status == ExitStatus::Code(3), "status {:?}", out.status);
    Ok(())
}

async fn binary_both_ways(cx: &Ctx) -> CheckResult {
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 1024 + 7).collect();
    let process = start(cx, ExecSpec::argv(["cat"]).stdin(StdinMode::Piped)).await?;
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let feed = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&feed).await?;
        stdin.shutdown().await
    });
    let out = process.output().await.map_err(|e| format!("cat: {e}"))?;
    writer
        .await
        .map_err(|e| format!("writer task: {e}"))?
        .map_err(|e| format!("write stdin: {e}"))?;
    ensure!(
        out.stdout == data,
        "`cat` returned {} bytes for {} sent (first difference at {:?})",
        out.stdout.len(),
        data.len(),
        out.stdout.iter().zip(&data).position(|(a, b)| a != b)
    );
    let out = sh(cx, r"printf '\000\377\r\n\001'").await?;
    ensure!(
        out.stdout == b"\x00\xff\r\n\x01",
        "printf gave {:?}",
        out.stdout
    );
    Ok(())
}

async fn large_output(cx: &Ctx) -> CheckResult {
    const TOTAL: usize = 100_000_000;
    const LINE: &[u8] = b"0123456789abcde\n";
    let process = start(
        cx,
        ExecSpec::shell(format!("yes 0123456789abcde | head -c {TOTAL}")),
    )
    .await?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    let seen = read_checked(&mut stdout, |seen, piece| {
        for (i, byte) in piece.iter().enumerate() {
            let at = seen + i;
            ensure!(*byte == LINE[at % LINE.len()], "byte {at} is {byte:#x}");
        }
        Ok(())
    })
    .await?;
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(seen == TOTAL, "received {seen} of {TOTAL} bytes");
    ensure!(status.success(), "status {status:?}");
    Ok(())
}

/// Reads `stream` to its end, handing `check` each piece with the count of bytes before it;
/// gives the count of all.
async fn read_checked(
    stream: &mut reach_core::BoxRead,
    mut check: impl FnMut(usize, &[u8]) -> CheckResult,
) -> Result<usize, String> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = 0usize;
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {seen} bytes: {e}"))?;
        if n == 0 {
            return Ok(seen);
        }
        check(seen, &buf[..n])?;
        seen += n;
    }
}

/// More bytes than every buffer between a command and its reader holds together (pipes,
/// channel windows, socket buffers), so that a backend which buffers without limit shows.
const FLOOD: usize = 64 * 1024 * 1024;

/// A command whose stdout nobody reads must wait, not have its output piled up in the
/// caller's memory; once read, every byte arrives. The command says on stderr when it has
/// written everything: that can come only once stdout has been read (on SSH, one channel
/// carries both, and stderr waits behind stdout).
async fn output_flow_control(cx: &Ctx) -> CheckResult {
    let line = format!("head -c {FLOOD} /dev/zero && echo written >&2");
    let process = start(cx, ExecSpec::shell(line)).await?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    let mut stderr = process.take_stderr().ok_or("no stderr")?;
    let mut said = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(3), stderr.read_to_end(&mut said)).await;
    ensure!(
        early.is_err(),
        "the command wrote all {FLOOD} bytes while nobody read its stdout (it said {:?}): they \
         were buffered without limit",
        text(&said)
    );
    let seen = read_checked(&mut stdout, |seen, piece| {
        ensure!(piece.iter().all(|b| *b == 0), "a non-zero byte near {seen}");
        Ok(())
    })
    .await?;
    stderr
        .read_to_end(&mut said)
        .await
        .map_err(|e| format!("stderr: {e}"))?;
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(seen == FLOOD, "received {seen} of {FLOOD} bytes");
    ensure!(status.success(), "status {status:?}");
    ensure!(said == b"written\n", "stderr {:?}", text(&said));
    Ok(())
}

/// A command whose stdout nobody reads, and one whose stdin nobody takes, stop only
/// themselves: beside them, a command and a 3 MiB file write and read on the same backend
/// (over SSH, the same connection; with Docker, the same agent) finish, and the unread
/// output then arrives whole.
async fn unread_stalls_nothing_else(cx: &Ctx) -> CheckResult {
    let flood = start(cx, ExecSpec::shell(format!("head -c {FLOOD} /dev/zero"))).await?;
    let mut flood_out = flood.take_stdout().ok_or("no stdout")?;
    let mut first = [0u8; 1];
    flood_out
        .read_exact(&mut first)
        .await
        .map_err(|e| format!("the flood's first byte: {e}"))?;
    let limit = Duration::from_secs(20);
    let stalled_in = tokio::time::timeout(
        limit,
        start(cx, ExecSpec::shell("exec sleep 60").stdin(StdinMode::Piped)),
    )
    .await
    .map_err(|_| format!("a command beside an unread one did not start within {limit:?}"))??;
    let mut stdin = stalled_in.take_stdin().ok_or("no stdin")?;
    let filled =
        tokio::time::timeout(Duration::from_secs(2), stdin.write_all(&vec![0u8; FLOOD])).await;
    ensure!(filled.is_err(), "a stdin nobody reads took {FLOOD} bytes");

    let echo = tokio::time::timeout(limit, async {
        start(cx, ExecSpec::shell("echo beside"))
            .await?
            .output()
            .await
            .map_err(|e| format!("echo: {e}"))
    })
    .await
    .map_err(|_| format!("a command beside the stalled ones hung for {limit:?}"))??;
    ensure!(
        echo.stdout == b"beside\n",
        "echo said {:?}",
        text(&echo.stdout)
    );
    let fs = cx.backend.fs().await.map_err(|e| format!("fs: {e}"))?;
    let path = format!("{}/beside", cx.scratch);
    let data = vec![7u8; 3 << 20];
    let back = tokio::time::timeout(limit, async {
        fs.write(&path, &data).await?;
        fs.read(&path).await
    })
    .await
    .map_err(|_| format!("a file beside the stalled commands hung for {limit:?}"))?
    .map_err(|e| format!("the file beside: {e}"))?;
    ensure!(back == data, "the file beside came back changed");

    // The stalled command still gives every byte once read.
    let seen = read_checked(&mut flood_out, |_, _| Ok(())).await?;
    ensure!(seen + 1 == FLOOD, "received {} of {FLOOD} bytes", seen + 1);
    let status = flood.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(status.success(), "status {status:?}");
    drop(stdin);
    let _ = stalled_in.signal(Signal::KILL).await;
    Ok(())
}

/// Writing to the stdin of a command that does not read it must wait once the buffers on
/// the way are full, not take everything into memory.
async fn input_flow_control(cx: &Ctx) -> CheckResult {
    let process = start(cx, ExecSpec::shell("exec sleep 8").stdin(StdinMode::Piped)).await?;
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let flood = vec![b'x'; FLOOD];
    let wrote = tokio::time::timeout(Duration::from_secs(3), stdin.write_all(&flood)).await;
    ensure!(
        wrote.is_err(),
        "stdin took all {FLOOD} bytes (result {wrote:?}) for a command that reads none: they \
         were buffered without limit"
    );
    drop(stdin);
    // A backend that cannot send signals (the Docker engine alone) waits for the end of the
    // sleep instead.
    match process.signal(Signal::KILL).await {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {}
        Err(e) => return Err(format!("kill: {e}")),
    }
    tokio::time::timeout(Duration::from_secs(20), process.wait())
        .await
        .map_err(|_| "the command did not end within 20 s".to_owned())?
        .map_err(|e| format!("wait: {e}"))?;
    Ok(())
}

async fn stdin_streamed_with_eof(cx: &Ctx) -> CheckResult {
    let script = "while read -r line; do echo \"got $line\"; done; echo eof; exit 4";
    let process = start(cx, ExecSpec::shell(script).stdin(StdinMode::Piped)).await?;
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    // The answer to the first line must arrive while stdin is still open: streamed, not
    // buffered until EOF.
    stdin
        .write_all(b"one\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    stdin.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut first = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut first))
        .await
        .map_err(|_| "no answer to the first line while stdin was open".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    ensure!(&first == b"got one\n", "first answer {:?}", text(&first));
    stdin
        .write_all(b"two\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    stdin
        .shutdown()
        .await
        .map_err(|e| format!("close stdin: {e}"))?;
    drop(stdin);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_end(&mut rest))
        .await
        .map_err(|_| "closing stdin did not end the command (EOF not delivered)".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    ensure!(rest == b"got two\neof\n", "after EOF: {:?}", text(&rest));
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(status == ExitStatus::Code(4), "status {status:?}");
    Ok(())
}

async fn env_vars(cx: &Ctx) -> CheckResult {
    let value = "a b $HOME 'q' \"dq\" ünï";
    let out = output(
        cx,
        ExecSpec::shell("printf '%s|%s' \"$REACH_ONE\" \"$REACH_TWO\"")
            .env("REACH_ONE", value)
            .env("REACH_TWO", ""),
    )
    .await?;
    ensure!(
        out.stdout == format!("{value}|").as_bytes(),
        "env came through as {:?}",
        text(&out.stdout)
    );
    Ok(())
}

async fn working_dir(cx: &Ctx) -> CheckResult {
    let dir = cx.path("work dir ü");
    let fs = cx.fs().await?;
    fs.create_dir(&dir).await.map_err(|e| e.to_string())?;
    let out = output(cx, ExecSpec::argv(["pwd"]).cwd(&dir)).await?;
    let pwd = text(&out.stdout);
    ensure!(pwd.trim_end() == dir, "pwd in `{dir}` printed {pwd:?}");
    let missing = cx.path("no such dir");
    match cx.backend.exec(ExecSpec::argv(["pwd"]).cwd(&missing)).await {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
        Err(e) => return Err(format!("missing cwd gave {:?}: {e}", e.kind())),
        Ok(p) => return Err(format!("missing cwd ran anyway: {:?}", p.output().await)),
    }
    Ok(())
}

async fn timeout_kills_tree(cx: &Ctx) -> CheckResult {
    let marker = cx.path("survivor");
    let line = format!("(sleep 3; touch '{marker}') & sleep 60");
    let started = Instant::now();
    let process = start(cx, ExecSpec::shell(line).timeout(Duration::from_secs(1))).await?;
    let waited = tokio::time::timeout(Duration::from_secs(15), process.wait()).await;
    match waited {
        Err(_) => return Err("a 1 s timeout did not end `sleep 60` within 15 s".to_owned()),
        Ok(Ok(status)) => return Err(format!("timed-out command reported {status:?}")),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::Timeout) => {}
        Ok(Err(e)) => return Err(format!("timed-out command gave {:?}: {e}", e.kind())),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    drop(process);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fs = cx.fs().await?;
    ensure!(
        fs.metadata(&marker).await.is_err(),
        "a process started by the timed-out command survived and wrote `{marker}`"
    );
    Ok(())
}

async fn concurrent_sessions(cx: &Ctx) -> CheckResult {
    let runs = (0..64).map(|i| async move {
        let out = sh(cx, &format!("sleep 0.5; echo session-{i}; exit {}", i % 5)).await?;
        ensure!(
            out.stdout == format!("session-{i}\n").as_bytes(),
            "session {i} printed {:?}",
            text(&out.stdout)
        );
        ensure!(
            out.status == ExitStatus::Code(i % 5),
            "session {i}: {:?}",
            out.status
        );
        Ok(())
    });
    let results = futures_join_all(runs).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    ensure!(
        failures.is_empty(),
        "{} of 64 concurrent sessions failed, first: {}",
        failures.len(),
        failures[0]
    );
    Ok(())
}

async fn pty_and_resize(cx: &Ctx) -> CheckResult {
    let spec = ExecSpec::shell("test -t 0 && echo tty; stty size; read -r x; stty size")
        .pty("xterm", PtySize { rows: 24, cols: 80 })
        .stdin(StdinMode::Piped);
    let process = start(cx, spec).await?;
    ensure!(
        process.take_stderr().is_none(),
        "a PTY session has a separate stderr"
    );
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"24 80").await?;
    ensure!(
        text(&seen).contains("tty"),
        "the command did not see a terminal: {:?}",
        text(&seen)
    );
    process
        .resize(PtySize {
            rows: 30,
            cols: 100,
        })
        .await
        .map_err(|e| format!("resize: {e}"))?;
    stdin
        .write_all(b"\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    stdin.flush().await.map_err(|e| format!("flush: {e}"))?;
    read_until(&mut stdout, &mut seen, b"30 100").await?;
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(status.success(), "status {status:?}");
    let no_pty = start(cx, ExecSpec::argv(["true"])).await?;
    match no_pty.resize(PtySize { rows: 1, cols: 1 }).await {
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput) => {}
        other => return Err(format!("resize without a PTY gave {other:?}")),
    }
    Ok(())
}

/// Under a terminal, input ends with the terminal's end-of-file character (^D), as a user
/// types it; closing stdin only says nothing more will be typed, and must not hang the
/// terminal up: what the command writes after it still arrives, and so does its status.
async fn pty_stdin_close(cx: &Ctx) -> CheckResult {
    // The markers are computed, so the terminal's echo of the input cannot show them.
    let spec = ExecSpec::shell("cat; echo after-$((1+1)); sleep 1; echo later-$((2+1))")
        .pty("xterm", PtySize { rows: 24, cols: 80 })
        .stdin(StdinMode::Piped);
    let process = start(cx, spec).await?;
    let mut stdin = process.take_stdin().ok_or("no stdin")?;
    let mut stdout = process.take_stdout().ok_or("no stdout")?;
    stdin
        .write_all(b"typed\n\x04")
        .await
        .map_err(|e| format!("write: {e}"))?;
    stdin
        .shutdown()
        .await
        .map_err(|e| format!("closing stdin: {e}"))?;
    drop(stdin);
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"after-2").await?;
    read_until(&mut stdout, &mut seen, b"later-3").await?;
    let status = process.wait().await.map_err(|e| format!("wait: {e}"))?;
    ensure!(
        status == ExitStatus::Code(0),
        "status {status:?} after stdin closed; the terminal showed {:?}",
        text(&seen)
    );
    Ok(())
}

async fn read_until(
    stream: &mut reach_core::BoxRead,
    seen: &mut Vec<u8>,
    needle: &[u8],
) -> CheckResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    let start = seen.len();
    while !seen[start..].windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .map_err(|_| {
                format!(
                    "waited 20 s for {:?}; the terminal showed {:?}",
                    text(needle),
                    text(seen)
                )
            })?
            .map_err(|e| format!("read: {e}"))?;
        ensure!(
            n > 0,
            "EOF before {:?}; the terminal showed {:?}",
            text(needle),
            text(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

async fn fs_read_write(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let empty = cx.path("empty");
    fs.write(&empty, b"").await.map_err(|e| e.to_string())?;
    let meta = fs.metadata(&empty).await.map_err(|e| e.to_string())?;
    ensure!(meta.len == 0 && meta.is_file(), "empty file: {meta:?}");
    let back = fs.read(&empty).await.map_err(|e| e.to_string())?;
    ensure!(back.is_empty(), "empty file read back {} bytes", back.len());

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let big = cx.path("big.bin");
    fs.write(&big, &data).await.map_err(|e| e.to_string())?;
    let back = fs.read(&big).await.map_err(|e| e.to_string())?;
    ensure!(
        back == data,
        "3 MB file read back as {} bytes, different",
        back.len()
    );
    let meta = fs.metadata(&big).await.map_err(|e| e.to_string())?;
    ensure!(meta.len == data.len() as u64, "metadata len {}", meta.len);
    // What the target's own tools see: the file really is on disk.
    let out = sh(cx, &format!("wc -c < '{big}'")).await?;
    ensure!(
        text(&out.stdout).trim() == data.len().to_string(),
        "`wc -c` on the target saw {:?}",
        text(&out.stdout)
    );
    // Overwrite truncates; append appends.
    fs.write(&big, b"short").await.map_err(|e| e.to_string())?;
    let mut w = fs
        .open_write(
            &big,
            reach_core::WriteOptions {
                append: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    w.write_all(b"+more").await.map_err(|e| e.to_string())?;
    w.shutdown().await.map_err(|e| e.to_string())?;
    let back = fs.read(&big).await.map_err(|e| e.to_string())?;
    ensure!(
        back == b"short+more",
        "overwrite then append gave {:?}",
        text(&back)
    );
    let new_only = fs
        .open_write(
            &big,
            reach_core::WriteOptions {
                create_new: true,
                ..Default::default()
            },
        )
        .await;
    match new_only {
        Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists) => {}
        Err(e) => {
            return Err(format!(
                "create_new on an existing file gave {:?}: {e}",
                e.kind()
            ))
        }
        Ok(_) => return Err("create_new on an existing file succeeded".to_owned()),
    }
    Ok(())
}

async fn fs_names(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let dir = cx.path("names");
    fs.create_dir(&dir).await.map_err(|e| e.to_string())?;
    let names = [
        "with space",
        "ünïcødé ✓",
        "日本語",
        "-dash",
        "quote'd",
        "semi;colon",
    ];
    for name in names {
        fs.write(&format!("{dir}/{name}"), name.as_bytes())
            .await
            .map_err(|e| format!("write `{name}`: {e}"))?;
    }
    let listed: Vec<String> = fs
        .read_dir(&dir)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    ensure!(
        listed == expected,
        "read_dir listed {listed:?}, expected {expected:?}"
    );
    for name in names {
        let back = fs
            .read(&format!("{dir}/{name}"))
            .await
            .map_err(|e| format!("read `{name}`: {e}"))?;
        ensure!(back == name.as_bytes(), "`{name}` holds {:?}", text(&back));
    }
    let out = sh(cx, &format!("cat '{dir}/with space' '{dir}/日本語'")).await?;
    ensure!(
        out.stdout == "with space日本語".as_bytes(),
        "shell saw {:?}",
        text(&out.stdout)
    );
    Ok(())
}

async fn fs_metadata_permissions(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let file = cx.path("script.sh");
    fs.write(&file, b"#!/bin/sh\necho ran\n")
        .await
        .map_err(|e| e.to_string())?;
    let before = std::time::SystemTime::now() - Duration::from_secs(300);
    let meta = fs.metadata(&file).await.map_err(|e| e.to_string())?;
    ensure!(
        meta.file_type == FileType::File && meta.len == 19,
        "metadata {meta:?}"
    );
    ensure!(
        meta.modified.is_some_and(|m| m > before),
        "modified time {:?} is not recent",
        meta.modified
    );
    for mode in [0o755, 0o600, 0o4711] {
        fs.set_permissions(&file, mode)
            .await
            .map_err(|e| e.to_string())?;
        let meta = fs.metadata(&file).await.map_err(|e| e.to_string())?;
        ensure!(
            meta.mode == mode,
            "after chmod {mode:o} the mode is {:o}",
            meta.mode
        );
    }
    fs.set_permissions(&file, 0o755)
        .await
        .map_err(|e| e.to_string())?;
    let out = output(cx, ExecSpec::argv([file.as_str()])).await?;
    ensure!(
        out.stdout == b"ran\n",
        "chmod 755 script printed {:?}",
        text(&out.stdout)
    );
    let dir = fs.metadata(&cx.scratch).await.map_err(|e| e.to_string())?;
    ensure!(dir.is_dir(), "scratch dir metadata {dir:?}");
    let home = fs.home_dir().await.map_err(|e| e.to_string())?;
    ensure!(home.starts_with('/'), "home dir `{home}` is not absolute");
    let home_meta = fs.metadata(&home).await.map_err(|e| e.to_string())?;
    ensure!(home_meta.is_dir(), "home dir `{home}`: {home_meta:?}");
    Ok(())
}

async fn fs_symlinks(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let target = cx.path("target file");
    let link = cx.path("link ü");
    fs.write(&target, b"through the link")
        .await
        .map_err(|e| e.to_string())?;
    fs.symlink("target file", &link)
        .await
        .map_err(|e| e.to_string())?;
    let read = fs.read_link(&link).await.map_err(|e| e.to_string())?;
    ensure!(read == "target file", "read_link gave {read:?}");
    let lmeta = fs
        .symlink_metadata(&link)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        lmeta.file_type == FileType::Symlink,
        "symlink_metadata: {lmeta:?}"
    );
    let meta = fs.metadata(&link).await.map_err(|e| e.to_string())?;
    ensure!(
        meta.file_type == FileType::File && meta.len == 16,
        "metadata via link: {meta:?}"
    );
    let back = fs.read(&link).await.map_err(|e| e.to_string())?;
    ensure!(
        back == b"through the link",
        "read via link: {:?}",
        text(&back)
    );
    let listed = fs.read_dir(&cx.scratch).await.map_err(|e| e.to_string())?;
    let entry = listed.iter().find(|e| e.name == "link ü");
    ensure!(
        entry.is_some_and(|e| e.metadata.file_type == FileType::Symlink),
        "read_dir shows the link as {entry:?}"
    );
    let dangling = cx.path("dangling");
    fs.symlink("nowhere", &dangling)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        fs.symlink_metadata(&dangling).await.is_ok(),
        "symlink_metadata of a dangling link failed"
    );
    match fs.metadata(&dangling).await {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
        other => return Err(format!("metadata of a dangling link gave {other:?}")),
    }
    fs.remove_file(&link).await.map_err(|e| e.to_string())?;
    ensure!(
        fs.metadata(&target).await.is_ok(),
        "removing the link removed its target"
    );
    Ok(())
}

/// Wildcards expand through the backend's listing: hidden names only for a written `.`,
/// directories (and links to them) for a component in the middle, sorted matches, and a
/// name with brackets taken as written when the pattern matches nothing else.
async fn fs_glob(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let dir = cx.path("glob");
    let at = |name: &str| format!("{dir}/{name}");
    for sub in ["", "/sub1", "/sub2", "/sub4"] {
        fs.create_dir(&format!("{dir}{sub}"))
            .await
            .map_err(|e| format!("create_dir `{dir}{sub}`: {e}"))?;
    }
    for name in [
        "a.txt",
        "b.txt",
        "c.log",
        ".hidden.txt",
        "lit[1].txt",
        "with space.txt",
        "日本.txt",
        "sub1/x.txt",
        "sub2/x.txt",
        "sub3",
    ] {
        fs.write(&at(name), name.as_bytes())
            .await
            .map_err(|e| format!("write `{name}`: {e}"))?;
    }
    fs.symlink("sub1", &at("link"))
        .await
        .map_err(|e| e.to_string())?;
    let cases: [(&str, &[&str]); 8] = [
        (
            "*.txt",
            &["a.txt", "b.txt", "lit[1].txt", "with space.txt", "日本.txt"],
        ),
        (".*.txt", &[".hidden.txt"]),
        ("?.*", &["a.txt", "b.txt", "c.log"]),
        ("sub[0-9]/x.txt", &["sub1/x.txt", "sub2/x.txt"]),
        ("l*/x.txt", &["link/x.txt"]),
        ("sub?/", &["sub1/", "sub2/", "sub4/"]),
        ("lit[1].txt", &["lit[1].txt"]),
        ("none*", &[]),
    ];
    for (pattern, expected) in cases {
        let got = reach_core::glob::expand(fs.as_ref(), &at(pattern))
            .await
            .map_err(|e| format!("expand `{pattern}`: {e}"))?;
        let expected: Vec<String> = expected.iter().map(|name| at(name)).collect();
        ensure!(
            got == expected,
            "`{pattern}` expanded to {got:?}, expected {expected:?}"
        );
    }
    Ok(())
}

async fn fs_directories(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let deep = cx.path("a/b c/d");
    match fs.create_dir(&deep).await {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
        other => return Err(format!("create_dir with missing parents gave {other:?}")),
    }
    fs.create_dir_all(&deep).await.map_err(|e| e.to_string())?;
    fs.create_dir_all(&deep)
        .await
        .map_err(|e| format!("create_dir_all twice: {e}"))?;
    match fs.create_dir(&deep).await {
        Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists) => {}
        other => return Err(format!("create_dir on an existing dir gave {other:?}")),
    }
    ensure!(
        fs.metadata(&deep)
            .await
            .map_err(|e| e.to_string())?
            .is_dir(),
        "`{deep}` is not a directory"
    );
    fs.write(&format!("{deep}/f"), b"x")
        .await
        .map_err(|e| e.to_string())?;
    fs.symlink("/", &cx.path("a/root-link"))
        .await
        .map_err(|e| e.to_string())?;
    let listed: Vec<String> = fs
        .read_dir(&cx.path("a"))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| e.name)
        .collect();
    ensure!(
        listed == ["b c", "root-link"],
        "read_dir(a) gave {listed:?}"
    );
    ensure!(
        fs.remove_dir(&cx.path("a")).await.is_err(),
        "remove_dir on a non-empty directory succeeded"
    );
    let empty = cx.path("empty-dir");
    fs.create_dir(&empty).await.map_err(|e| e.to_string())?;
    fs.remove_dir(&empty).await.map_err(|e| e.to_string())?;
    ensure!(
        fs.metadata(&empty).await.is_err(),
        "remove_dir left `{empty}`"
    );
    fs.remove_dir_all(&cx.path("a"))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        fs.metadata(&cx.path("a")).await.is_err(),
        "remove_dir_all left `a`"
    );
    ensure!(
        fs.metadata("/").await.is_ok(),
        "remove_dir_all followed a symlink to /"
    );
    Ok(())
}

async fn fs_rename_truncate_remove(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let (from, to) = (cx.path("from"), cx.path("to"));
    fs.write(&from, b"new contents")
        .await
        .map_err(|e| e.to_string())?;
    fs.write(&to, b"old").await.map_err(|e| e.to_string())?;
    fs.rename(&from, &to).await.map_err(|e| e.to_string())?;
    let back = fs.read(&to).await.map_err(|e| e.to_string())?;
    ensure!(
        back == b"new contents",
        "rename over a file left {:?}",
        text(&back)
    );
    ensure!(
        fs.metadata(&from).await.is_err(),
        "rename left the source `{from}` behind"
    );
    fs.truncate(&to, 3).await.map_err(|e| e.to_string())?;
    let back = fs.read(&to).await.map_err(|e| e.to_string())?;
    ensure!(back == b"new", "truncate to 3 left {:?}", text(&back));
    fs.truncate(&to, 5).await.map_err(|e| e.to_string())?;
    let back = fs.read(&to).await.map_err(|e| e.to_string())?;
    ensure!(back == b"new\0\0", "truncate to 5 left {:?}", back);
    fs.remove_file(&to).await.map_err(|e| e.to_string())?;
    match fs.metadata(&to).await {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
        other => return Err(format!("metadata after remove_file gave {other:?}")),
    }
    Ok(())
}

async fn fs_errors(cx: &Ctx) -> CheckResult {
    let fs = cx.fs().await?;
    let missing = cx.path("missing/file");
    let expect = |what: &str, got: Result<(), reach_core::Error>, kind: ErrorKind| match got {
        Err(e) if kind == e.kind() => {
            if e.to_string().contains(what) {
                Ok(())
            } else {
                Err(format!("the error for `{what}` does not name it: {e}"))
            }
        }
        Err(e) => Err(format!(
            "`{what}`: expected {kind:?}, got {:?}: {e}",
            e.kind()
        )),
        Ok(()) => Err(format!("`{what}`: expected {kind:?}, got success")),
    };
    expect(
        &missing,
        fs.open_read(&missing).await.map(drop),
        ErrorKind::NotFound,
    )?;
    expect(
        &missing,
        fs.metadata(&missing).await.map(drop),
        ErrorKind::NotFound,
    )?;
    expect(
        &missing,
        fs.write(&missing, b"x").await,
        ErrorKind::NotFound,
    )?;
    expect(
        &missing,
        fs.remove_file(&missing).await,
        ErrorKind::NotFound,
    )?;
    expect(
        &missing,
        fs.read_dir(&missing).await.map(drop),
        ErrorKind::NotFound,
    )?;
    let denied = format!("{}/new", cx.denied_dir);
    expect(
        &denied,
        fs.write(&denied, b"x").await,
        ErrorKind::PermissionDenied,
    )?;
    expect(
        &denied,
        fs.create_dir(&denied).await,
        ErrorKind::PermissionDenied,
    )?;
    ensure!(
        fs.read(&cx.scratch).await.is_err(),
        "reading a directory as a file succeeded"
    );
    match cx
        .backend
        .exec(ExecSpec::argv(["reach-no-such-command"]))
        .await
    {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {}
        Err(e) => return Err(format!("a missing command gave {:?}: {e}", e.kind())),
        Ok(p) => match p.wait().await {
            Ok(ExitStatus::Code(127)) => {}
            other => return Err(format!("a missing command ended with {other:?}")),
        },
    }
    Ok(())
}

async fn platform(cx: &Ctx) -> CheckResult {
    let platform = cx
        .backend
        .platform()
        .await
        .map_err(|e| format!("platform(): {e}"))?;
    let out = sh(cx, "uname -s; uname -m").await?;
    let uname = text(&out.stdout).to_ascii_lowercase();
    let mut lines = uname.lines();
    let (os, arch) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    ensure!(
        platform.os == os,
        "platform os {:?}, uname -s {os:?}",
        platform.os
    );
    ensure!(
        platform.arch == arch,
        "platform arch {:?}, uname -m {arch:?}",
        platform.arch
    );
    Ok(())
}

/// A port for a listener on the target, different on each call.
fn some_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    20_000 + (seed.wrapping_add(NEXT.fetch_add(101, Ordering::Relaxed)) % 30_000)
}

/// Reads to the end, within 10 s.
async fn read_for(reader: &mut reach_core::BoxRead, what: &str) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut got))
        .await
        .map_err(|_| format!("{what}: nothing ended within 10 s (got {:?})", text(&got)))?
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(got)
}

async fn tcp_connect(cx: &Ctx) -> CheckResult {
    let file = cx.path("tcp-received");
    // A server on the target's loopback: greets, keeps what it is sent until the end of
    // stream, then answers and closes.
    let serve = |port: u16| {
        format!(
            "exec busybox nc -l -p {port} -e sh -c 'echo hello; cat > {}; echo bye'",
            reach_core::shell_quote(&file)
        )
    };
    let mut attempt = 0;
    let (server, port, mut tunnel) = loop {
        attempt += 1;
        let port = some_port();
        let server = start(cx, ExecSpec::shell(serve(port))).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let opened = loop {
            match cx.backend.connect_tcp("127.0.0.1", port).await {
                Ok(tunnel) => break Some(tunnel),
                Err(e)
                    if matches!(e.kind(), ErrorKind::Unreachable) && Instant::now() < deadline =>
                {
                    // Not listening yet, or the port was taken and the server is gone.
                    let gone = tokio::time::timeout(Duration::from_millis(100), server.wait());
                    if gone.await.is_ok() {
                        break None;
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "connect_tcp(127.0.0.1:{port}): {e} ({:?})",
                        e.kind()
                    ))
                }
            }
        };
        match opened {
            Some(tunnel) => break (server, port, tunnel),
            None if attempt < 5 => continue,
            None => return Err("no port found for the test server in 5 tries".to_owned()),
        }
    };
    let mut hello = [0u8; 6];
    tokio::time::timeout(
        Duration::from_secs(20),
        tunnel.reader.read_exact(&mut hello),
    )
    .await
    .map_err(|_| "the server's greeting did not come through".to_owned())?
    .map_err(|e| format!("read the greeting: {e}"))?;
    ensure!(&hello == b"hello\n", "greeting {:?}", text(&hello));
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    tunnel
        .writer
        .write_all(&sent)
        .await
        .map_err(|e| format!("write to the connection: {e}"))?;
    tunnel
        .writer
        .shutdown()
        .await
        .map_err(|e| format!("end the stream: {e}"))?;
    // The answer comes only after the server saw our end of stream: half-closed, not shut.
    let rest = read_for(&mut tunnel.reader, "the answer after our end of stream").await?;
    ensure!(
        rest == b"bye\n",
        "after our end of stream: {:?}",
        text(&rest)
    );
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .map_err(|_| "the server did not end".to_owned())?
        .map_err(|e| format!("server: {e}"))?;
    ensure!(status.success(), "server ended with {status:?}");
    let fs = cx.fs().await?;
    let landed = fs
        .read(&file)
        .await
        .map_err(|e| format!("read {file}: {e}"))?;
    ensure!(
        landed == sent,
        "the server received {} bytes of the {} sent",
        landed.len(),
        sent.len()
    );
    // Nothing listens there now.
    match cx.backend.connect_tcp("127.0.0.1", port).await {
        Err(e) if matches!(e.kind(), ErrorKind::Unreachable) => Ok(()),
        Err(e) => Err(format!(
            "a closed port: {e} ({:?}), not Unreachable",
            e.kind()
        )),
        Ok(_) => Err(format!(
            "connected to 127.0.0.1:{port} after its server ended"
        )),
    }
}
