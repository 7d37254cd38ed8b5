//! The reach agent on an SSH server (the "agent helper": not ssh-agent). reach copies its
//! static agent to the server once, named by its contents, into a private (0700) directory
//! (`$XDG_RUNTIME_DIR/reach`, else `~/.cache/reach`, or a configured one), and starts it on
//! one exec channel; commands then go through it, as in containers: any number at once on
//! that one session (no `MaxSessions` cap), signals to the command's process group,
//! time limits that kill the whole group, and the agent's flow control per stream.

use std::sync::Arc;

use reach_agent_client::{AgentConn, Chunk, Output};
use reach_core::{shell_quote, FileSystem, WriteOptions};
use russh::ChannelMsg;
use tokio::io::AsyncWriteExt;

use crate::sftp::SftpFs;
use crate::Handle;

/// How many pieces of the agent's output may wait for the router: beyond that the channel
/// is not read, and the server stops sending (its window closes).
const PIECES: usize = 64;

/// Whether commands on an SSH server go through the reach agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentHelper {
    /// Plain SSH: a session channel per command.
    #[default]
    Never,
    /// The agent where it can run (a Linux server of an architecture reach has an agent for,
    /// a directory that allows executing), else plain SSH, the reason kept for `reach info`.
    Auto,
    /// The agent, or an error that says why it cannot run.
    Always,
}

impl std::fmt::Display for AgentHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentHelper::Never => "never",
            AgentHelper::Auto => "auto",
            AgentHelper::Always => "always",
        })
    }
}

impl std::str::FromStr for AgentHelper {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "never" => Ok(AgentHelper::Never),
            "auto" => Ok(AgentHelper::Auto),
            "always" => Ok(AgentHelper::Always),
            other => Err(format!(
                "`{other}` is not an agent helper mode: give auto, always or never"
            )),
        }
    }
}

/// Go's name of an architecture `uname -m` names, as the agent's builds are named.
fn go_arch(machine: &str) -> &str {
    match machine {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        other => other,
    }
}

/// Installs the agent on the server if it lacks this version, and starts it. `Err` says why
/// it cannot run there, for the user.
pub(crate) async fn start(
    handle: Arc<Handle>,
    sftp: Arc<SftpFs>,
    addr: String,
    dir: Option<String>,
) -> std::result::Result<Arc<AgentConn>, String> {
    // One round trip: the platform, and the private directory made.
    let make_dir = match &dir {
        Some(dir) => format!("d={}", shell_quote(dir)),
        None => "d=\"${XDG_RUNTIME_DIR:-${HOME:-/tmp}/.cache}/reach\"".to_owned(),
    };
    let probe = format!(
        "uname -s; uname -m; {make_dir}; mkdir -p \"$d\" && chmod 700 \"$d\" && echo \"$d\""
    );
    let (status, out, err) = run(&handle, &probe).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let mut lines = text.lines();
    let (os, machine) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    if os != "Linux" || !reach_agent_client::runs_on(go_arch(machine)) {
        return Err(format!(
            "`{addr}` runs {os} on {machine}, for which this reach has no agent"
        ));
    }
    let dir = match lines.next() {
        Some(dir) if status == Some(0) => dir.to_owned(),
        _ => {
            return Err(format!(
                "making a private directory for the agent on `{addr}` failed: {}",
                String::from_utf8_lossy(&err).trim()
            ))
        }
    };
    let name = reach_agent_client::install_path();
    let name = name.rsplit('/').next().unwrap_or("reach-agent");
    let path = format!("{dir}/{name}");
    install(&sftp, &path)
        .await
        .map_err(|e| format!("copying the agent to `{path}` on `{addr}` failed: {e}"))?;
    let channel = crate::process::open_session(&handle)
        .await
        .map_err(|e| format!("opening a session for the agent on `{addr}`: {e}"))?;
    channel
        .exec(true, format!("exec {}", shell_quote(&path)))
        .await
        .map_err(|e| format!("starting the agent on `{addr}`: {e}"))?;
    let (mut reader, writer) = channel.split();
    let input = Box::pin(writer.make_writer());
    let (tx, rx) = tokio::sync::mpsc::channel(PIECES);
    tokio::spawn(async move {
        // The write half lives as long as the agent's output is read.
        let _writer = writer;
        while let Some(msg) = reader.wait().await {
            let chunk = match msg {
                ChannelMsg::Data { data } => Chunk::Frames(data.to_vec().into()),
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    Chunk::Diagnostics(data.to_vec().into())
                }
                ChannelMsg::Close | ChannelMsg::Eof => break,
                _ => continue,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
    });
    let output: Output = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let target = format!("`{addr}`");
    let lost_addr = addr.clone();
    AgentConn::start(output, input, target, move |said| async move {
        let mut why = format!("the reach agent on `{lost_addr}` ended");
        if !said.is_empty() {
            why = format!("{why} (it said: {said})");
        }
        why
    })
    .await
    .map_err(|e| format!("{e} (the directory may not allow executing: --ssh-agent-helper-dir)"))
}

/// Copies the agent to `path` unless a file of its size is there (its name is its
/// contents' hash): written beside it, made executable, then renamed into place.
async fn install(sftp: &SftpFs, path: &str) -> reach_core::Result<()> {
    let agent = reach_agent_client::AGENT;
    if let Ok(meta) = sftp.metadata(path).await {
        if meta.len == agent.len() as u64 {
            return Ok(());
        }
    }
    let part = format!("{path}.part-{}", std::process::id());
    let options = WriteOptions {
        mode: 0o700,
        len: Some(agent.len() as u64),
        ..WriteOptions::default()
    };
    let mut file = sftp.open_write(&part, options).await?;
    let written = async {
        file.write_all(agent).await?;
        file.shutdown().await
    }
    .await;
    drop(file);
    if let Err(e) = written {
        let _ = sftp.remove_file(&part).await;
        return Err(reach_core::Error::io(format!("writing `{part}`"), e));
    }
    sftp.set_permissions(&part, 0o700).await?;
    sftp.rename(&part, path).await
}

/// Runs `line` on a plain session: its exit code (if it had one), stdout and stderr.
async fn run(
    handle: &Handle,
    line: &str,
) -> std::result::Result<(Option<u32>, Vec<u8>, Vec<u8>), String> {
    let mut channel = crate::process::open_session(handle)
        .await
        .map_err(|e| format!("opening a session: {e}"))?;
    channel
        .exec(true, line)
        .await
        .map_err(|e| format!("running a probe: {e}"))?;
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => err.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok((status, out, err))
}
