//! Commands in a container: through the agent (the fast, complete path), or as engine execs
//! (terminals, and containers the agent cannot run in).

use std::sync::Arc;

use async_trait::async_trait;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures_util::StreamExt;
use reach_core::{
    BoxRead, BoxWrite, Error, ErrorKind, ExecSpec, ExitStatus, Process, PtySize, Result, Signal,
    StdinMode, Streams, Subject,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use bollard::container::LogOutput;
use reach_agent_client::{
    self as agent, argv, publish, wait_slot, AgentConn, AgentProcess, Chunk, PipeReader,
};

use crate::{archive, engine_error, tar, Conn};

/// Bytes buffered between a caller's stdin writes and the container.
const PIPE: usize = 256 * 1024;

/// How many pieces of an engine exec's output may wait for their reader (the engine sends
/// what each read of the command's pipe gave, typically up to 32 KiB): after that the task
/// routing the exec's output waits, the engine stops reading the command's pipes, and the
/// command waits.
pub(crate) const ENGINE_PIECES: usize = 64;

/// The caller's end of an attached engine stream's stdin (an exec's, or a container's main
/// process's): what it writes is copied in, and closing it closes the engine's stdin, but not
/// under a terminal. There the engine ends the output at once when the attached stdin
/// closes, and what the command writes next is lost; a terminal's input never ends (^D ends
/// what the command reads), so it stays open until the command has ended (`ended`).
pub(crate) fn attached_stdin(
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pty: bool,
    mut ended: watch::Receiver<Option<Result<ExitStatus>>>,
) -> BoxWrite {
    let (tx, mut rx) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let copied = tokio::io::copy(&mut rx, &mut input).await.is_ok();
        if !pty {
            if copied {
                let _ = input.shutdown().await;
            }
            return;
        }
        let _ = ended.wait_for(Option::is_some).await;
    });
    Box::pin(tx)
}

/// Installs the agent if the container lacks this version of it, and starts it.
pub(crate) async fn start_agent(conn: &Conn) -> std::result::Result<Arc<AgentConn>, String> {
    let path = agent::install_path();
    if archive::stat_raw(conn, &path).await.is_err() {
        install_agent(conn, &path).await?;
    }
    let created = conn
        .docker
        .create_exec(
            &conn.id,
            CreateExecOptions {
                cmd: Some(vec![path.clone()]),
                user: Some(conn.user.clone()),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("starting the agent: {e}"))?;
    let started = conn
        .docker
        .start_exec(&created.id, Some(StartExecOptions::default()))
        .await
        .map_err(|e| format!("starting the agent: {e}"))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err("the engine started the agent detached".to_owned());
    };
    let lookup = Lookup::of(conn);
    let exec = created.id;
    // The exec's stdout carries the frames, its stderr the agent's diagnostics.
    let output = Box::pin(output.filter_map(|item| async move {
        match item {
            Ok(LogOutput::StdOut { message }) => Some(Ok(Chunk::Frames(message))),
            Ok(LogOutput::StdErr { message }) => Some(Ok(Chunk::Diagnostics(message))),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }));
    let target = format!("container `{}`", conn.name);
    AgentConn::start(output, input, target, move |said| async move {
        lookup.why_agent_lost(&exec, &said).await
    })
    .await
}

async fn install_agent(conn: &Conn, path: &str) -> std::result::Result<(), String> {
    let relative = path.trim_start_matches('/');
    let dir = relative.split('/').next().unwrap_or(".reach");
    let now = archive::unix_now();
    let mut archive = tar::header_bytes(&tar::Header {
        name: format!("{dir}/"),
        kind: tar::Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: now,
        link: String::new(),
    });
    archive.extend(tar::header_bytes(&tar::Header {
        name: relative.to_owned(),
        kind: tar::Kind::File,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: agent::AGENT.len() as u64,
        mtime: now,
        link: String::new(),
    }));
    archive.extend_from_slice(agent::AGENT);
    archive.extend(tar::body_padding(agent::AGENT.len() as u64));
    archive.extend(tar::end_of_archive());
    let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
        .path("/")
        .build();
    conn.docker
        .upload_to_container(
            &conn.id,
            Some(options),
            bollard::body_full(bytes::Bytes::from(archive)),
        )
        .await
        .map_err(|e| format!("installing the agent at `{path}` failed: {e}"))
}

/// What is needed to explain a lost connection after the fact.
#[derive(Clone)]
pub(crate) struct Lookup {
    docker: Docker,
    id: String,
    name: String,
    address: String,
}

impl Lookup {
    pub(crate) fn of(conn: &Conn) -> Self {
        Lookup {
            docker: conn.docker.clone(),
            id: conn.id.clone(),
            name: conn.name.clone(),
            address: conn.address.clone(),
        }
    }

    pub(crate) async fn why_lost(&self) -> String {
        crate::why_lost(&self.docker, &self.id, &self.name, &self.address).await
    }

    /// Why the agent's exec `exec` ended while in use: the container's end, or, while the
    /// container runs, how the agent process ended and the last thing it wrote to stderr.
    pub(crate) async fn why_agent_lost(&self, exec: &str, said: &str) -> String {
        if let Some(why) =
            crate::container_gone(&self.docker, &self.id, &self.name, &self.address).await
        {
            return why;
        }
        // The engine records the exec's end a moment after its stream closes.
        let mut how = None;
        for _ in 0..20 {
            match self.docker.inspect_exec(exec).await {
                Ok(info) if info.running != Some(true) => {
                    how = Some(match info.exit_code {
                        Some(code @ 129..=159) => {
                            let signal = Signal::from_number(code as i32 - 128);
                            format!("was killed by {signal}")
                        }
                        Some(code) => format!("exited with status {code}"),
                        None => "ended".to_owned(),
                    });
                    break;
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
        let mut why = match how {
            Some(how) => format!("the reach agent in container `{}` {how}", self.name),
            None => format!(
                "the connection to the Docker engine for container `{}` was lost",
                self.name
            ),
        };
        if !said.is_empty() {
            why = format!("{why} (it said: {said})");
        }
        why
    }
}

/// Starts a command: through the agent when it runs, else as an engine exec.
pub(crate) async fn exec(conn: Arc<Conn>, spec: ExecSpec) -> Result<Box<dyn Process>> {
    if let Some(agent) = conn.agent().await {
        let target = format!("in container `{}`", conn.name);
        return Ok(Box::new(AgentProcess::start(agent, spec, &target).await?));
    }
    if let Some(why) = conn.agent_lost() {
        return Err(Error::new(ErrorKind::SessionDropped, why));
    }
    Ok(Box::new(EngineProcess::start(conn, spec).await?))
}

/// A command run as an engine exec.
pub(crate) struct EngineProcess {
    docker: Docker,
    exec_id: String,
    streams: Streams,
    exit: watch::Receiver<Option<Result<ExitStatus>>>,
    name: String,
    pty: bool,
}

impl std::fmt::Debug for EngineProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineProcess")
            .field("container", &self.name)
            .field("exec", &self.exec_id)
            .finish_non_exhaustive()
    }
}

/// What runc prints, as the command's only output, when it cannot start the command.
const OCI_FAILURE: &[u8] = b"OCI runtime exec failed";

impl EngineProcess {
    async fn start(conn: Arc<Conn>, spec: ExecSpec) -> Result<Self> {
        if let Some(dir) = &spec.cwd {
            match archive::stat_follow(&conn, dir).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "working directory `{dir}` in container `{}` is not a directory",
                            conn.name
                        ),
                    )
                    .with_subject(Subject::WorkingDirectory))
                }
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "working directory `{dir}` does not exist in container `{}`",
                            conn.name
                        ),
                    )
                    .with_subject(Subject::WorkingDirectory))
                }
                Err(e) => return Err(e),
            }
        }
        let argv = argv(&spec.command);
        let pty = spec.pty.is_some();
        let piped = spec.stdin == StdinMode::Piped || pty;
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(p) = &spec.pty {
            env.push(format!("TERM={}", p.term));
        }
        let doing = |what: &str| format!("{what} in container `{}`", conn.name);
        let config = bollard::models::ExecConfig {
            cmd: Some(argv.clone()),
            env: Some(env),
            working_dir: spec.cwd.clone(),
            user: Some(conn.user.clone()),
            tty: Some(pty),
            // Engines from API 1.42 size the terminal before the command starts.
            console_size: spec
                .pty
                .as_ref()
                .map(|p| vec![usize::from(p.size.rows), usize::from(p.size.cols)]),
            attach_stdin: Some(piped),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = conn
            .docker
            .create_exec(&conn.id, config)
            .await
            .map_err(|e| engine_error(&conn.address, &doing("creating an exec"), e))?;
        let exec_id = created.id;
        let started = conn
            .docker
            .start_exec(
                &exec_id,
                Some(StartExecOptions {
                    tty: pty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| engine_error(&conn.address, &doing("starting an exec"), e))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the engine started the exec detached",
            ));
        };
        if let Some(p) = &spec.pty {
            // Older engines: size it now. A command that has already ended cannot be resized,
            // and that is no error.
            let _ = resize(&conn.docker, &exec_id, p.size).await;
        }
        let (out_tx, out_rx) = mpsc::channel(ENGINE_PIECES);
        let (err_tx, err_rx) = mpsc::channel(ENGINE_PIECES);
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit_tx = Arc::new(exit_tx);
        let pump_exit = exit_tx.clone();
        let pump_conn = conn.clone();
        let pump_exec = exec_id.clone();
        let argv0 = argv[0].clone();
        tokio::spawn(async move {
            // runc's failure to start the command arrives as output; hold back a first chunk
            // that looks like it until the end tells.
            let mut held: Option<bytes::Bytes> = None;
            let mut first = true;
            let mut broke = None;
            while let Some(item) = output.next().await {
                let (tx, message) = match route(item, &out_tx, &err_tx) {
                    Ok(Some(routed)) => routed,
                    Ok(None) => continue,
                    Err(why) => {
                        broke = Some(why);
                        break;
                    }
                };
                if std::mem::take(&mut first) && message.starts_with(OCI_FAILURE) {
                    held = Some(message);
                    continue;
                }
                if let Some(h) = held.take() {
                    let _ = out_tx.send(h).await;
                }
                let _ = tx.send(message).await;
            }
            let inspected = pump_conn.docker.inspect_exec(&pump_exec).await;
            let outcome = match inspected {
                Ok(info) if info.running != Some(true) && broke.is_none() => {
                    match (info.exit_code, held.take()) {
                        (Some(code), Some(text)) if code == 126 || code == 127 => {
                            Err(oci_error(&pump_conn.name, &argv0, &text))
                        }
                        (Some(code), text) => {
                            if let Some(text) = text {
                                let _ = out_tx.send(text).await;
                            }
                            if container_running(&pump_conn).await {
                                Ok(ExitStatus::Code(code as i32))
                            } else {
                                Err(Error::new(
                                    ErrorKind::SessionDropped,
                                    Lookup::of(&pump_conn).why_lost().await,
                                ))
                            }
                        }
                        (None, _) => Err(Error::new(
                            ErrorKind::SessionDropped,
                            Lookup::of(&pump_conn).why_lost().await,
                        )),
                    }
                }
                _ => Err(Error::new(
                    ErrorKind::SessionDropped,
                    Lookup::of(&pump_conn).why_lost().await,
                )),
            };
            drop(out_tx);
            drop(err_tx);
            publish(&pump_exit, outcome);
        });
        let stdin: Option<BoxWrite> = if piped {
            Some(attached_stdin(input, pty, exit_rx.clone()))
        } else {
            drop(input);
            None
        };
        if let Some(limit) = spec.timeout {
            let mut finished = exit_rx.clone();
            let name = conn.name.clone();
            tokio::spawn(async move {
                let done = tokio::time::timeout(limit, finished.wait_for(Option::is_some))
                    .await
                    .is_ok();
                if !done {
                    publish(
                        &exit_tx,
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "the command in container `{name}` ran longer than its limit of \
                                 {limit:?}; the engine cannot kill an exec, so it may still run"
                            ),
                        )),
                    );
                }
            });
        }
        Ok(EngineProcess {
            docker: conn.docker.clone(),
            exec_id,
            streams: Streams::new(
                stdin,
                Some(Box::pin(PipeReader::new(out_rx))),
                (!pty).then(|| Box::pin(PipeReader::new(err_rx)) as BoxRead),
            ),
            exit: exit_rx,
            name: conn.name.clone(),
            pty,
        })
    }
}

async fn container_running(conn: &Conn) -> bool {
    conn.docker
        .inspect_container(
            &conn.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|info| info.state.and_then(|s| s.running))
        == Some(true)
}

/// The error for runc's "cannot start" message.
/// Where one piece of an engine's attached output goes: to `err` (stderr) or `out` (stdout,
/// and a terminal's console output); `Ok(None)` for pieces that are not output, `Err` with
/// the reason when the stream broke.
pub(crate) fn route<'a, T>(
    item: Result<LogOutput, bollard::errors::Error>,
    out: &'a T,
    err: &'a T,
) -> Result<Option<(&'a T, bytes::Bytes)>, String> {
    match item {
        Ok(LogOutput::StdErr { message }) => Ok(Some((err, message))),
        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
            Ok(Some((out, message)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn oci_error(name: &str, argv0: &str, text: &[u8]) -> Error {
    let text = String::from_utf8_lossy(text).trim().to_owned();
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("executable file not found") || lower.contains("no such file") {
        ErrorKind::NotFound
    } else if lower.contains("permission denied") {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Io
    };
    Error::new(
        kind,
        format!("cannot run `{argv0}` in container `{name}`: {text}"),
    )
    .with_subject(Subject::Command)
}

async fn resize(docker: &Docker, exec_id: &str, size: PtySize) -> Result<()> {
    docker
        .resize_exec(
            exec_id,
            ResizeExecOptions {
                height: size.rows,
                width: size.cols,
            },
        )
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("resizing the terminal failed: {e}"),
            )
        })
}

#[async_trait]
impl Process for EngineProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        wait_slot(&self.exit, &format!("in container `{}`", self.name)).await
    }

    async fn signal(&self, signal: Signal) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot send {signal} in container `{}`: the Docker engine cannot signal a \
                 process it started with a terminal or without the reach agent",
                self.name
            ),
        ))
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.pty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cannot resize: the process has no terminal (start it with a PTY)",
            ));
        }
        resize(&self.docker, &self.exec_id, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_failures_become_error_kinds() {
        let not_found = oci_error(
            "c",
            "nope",
            b"OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown\r\n",
        );
        assert_eq!(not_found.kind(), ErrorKind::NotFound);
        assert!(not_found.to_string().contains("`nope` in container `c`"));
        let denied = oci_error(
            "c",
            "/etc/passwd",
            b"OCI runtime exec failed: exec: \"/etc/passwd\": permission denied: unknown",
        );
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
    }
}
