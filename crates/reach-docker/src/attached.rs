//! A container's main process as a [`Process`]: the streams are attached before the container
//! starts, so no output is lost, and the exit status is the container's, read only after the
//! last byte of output.

use async_trait::async_trait;
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, ResizeContainerTTYOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use reach_core::{
    BoxRead, BoxWrite, Error, ErrorKind, ExitStatus, Process, PtySize, Result, Signal, Streams,
};
use tokio::sync::{mpsc, watch};

use crate::engine_error;
use reach_agent_client::{publish, PipeReader};

/// The main process of a container started by [`crate::Containers::run`].
pub(crate) struct MainProcess {
    docker: Docker,
    id: String,
    address: String,
    streams: Streams,
    exit: watch::Receiver<Option<Result<ExitStatus>>>,
    pty: bool,
}

impl std::fmt::Debug for MainProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainProcess")
            .field("container", &self.id)
            .finish_non_exhaustive()
    }
}

impl MainProcess {
    /// Attaches to the created container `id`, then starts it.
    pub(crate) async fn attach_and_start(
        docker: &Docker,
        address: &str,
        id: &str,
        pty: Option<PtySize>,
        stdin: bool,
    ) -> Result<Self> {
        let doing = |what: &str| format!("{what} container `{id}`");
        let attached = docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| engine_error(address, &doing("attaching to"), e))?;
        docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| engine_error(address, &doing("starting"), e))?;
        if let Some(size) = pty {
            // The size given at creation holds on engines from API 1.42; older ones learn it
            // now. A command that has already ended cannot be resized, and that is no error.
            let _ = resize(docker, address, id, size).await;
        }
        let mut output = attached.output;
        let input = attached.input;
        let (out_tx, out_rx) = mpsc::channel(crate::process::ENGINE_PIECES);
        let (err_tx, err_rx) = mpsc::channel(crate::process::ENGINE_PIECES);
        let (exit_tx, exit_rx) = watch::channel(None);
        let pump_docker = docker.clone();
        let pump_id = id.to_owned();
        let pump_address = address.to_owned();
        tokio::spawn(async move {
            let mut broke = None;
            while let Some(item) = output.next().await {
                let (tx, message) = match crate::process::route(item, &out_tx, &err_tx) {
                    Ok(Some(routed)) => routed,
                    Ok(None) => continue,
                    Err(why) => {
                        broke = Some(why);
                        break;
                    }
                };
                let _ = tx.send(message).await;
            }
            // All output is in the pipes before the status is published.
            drop(out_tx);
            drop(err_tx);
            let outcome = match broke {
                Some(why) => Err(Error::new(
                    ErrorKind::SessionDropped,
                    format!("the output of container `{pump_id}` broke off: {why}"),
                )),
                None => exit_code(&pump_docker, &pump_address, &pump_id).await,
            };
            publish(&exit_tx, outcome);
        });
        let stdin: Option<BoxWrite> = if stdin {
            Some(crate::process::attached_stdin(
                input,
                pty.is_some(),
                exit_rx.clone(),
            ))
        } else {
            drop(input);
            None
        };
        Ok(MainProcess {
            docker: docker.clone(),
            id: id.to_owned(),
            address: address.to_owned(),
            streams: Streams::new(
                stdin,
                Some(Box::pin(PipeReader::new(out_rx))),
                pty.is_none()
                    .then(|| Box::pin(PipeReader::new(err_rx)) as BoxRead),
            ),
            exit: exit_rx,
            pty: pty.is_some(),
        })
    }
}

/// The exit code of a container whose output has ended.
async fn exit_code(docker: &Docker, address: &str, id: &str) -> Result<ExitStatus> {
    let waited = docker
        .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>)
        .next()
        .await;
    match waited {
        Some(Ok(response)) => Ok(ExitStatus::Code(code(response.status_code))),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. })) => {
            Ok(ExitStatus::Code(code(c)))
        }
        Some(Err(e)) => Err(Error::new(
            ErrorKind::SessionDropped,
            engine_error(address, &format!("waiting for container `{id}`"), e).message(),
        )),
        None => Err(Error::new(
            ErrorKind::SessionDropped,
            format!("the engine at `{address}` did not say how container `{id}` ended"),
        )),
    }
}

fn code(raw: i64) -> i32 {
    i32::try_from(raw).unwrap_or(255)
}

async fn resize(docker: &Docker, address: &str, id: &str, size: PtySize) -> Result<()> {
    docker
        .resize_container_tty(
            id,
            ResizeContainerTTYOptions {
                h: i32::from(size.rows),
                w: i32::from(size.cols),
            },
        )
        .await
        .map_err(|e| engine_error(address, &format!("resizing the terminal of `{id}`"), e))
}

#[async_trait]
impl Process for MainProcess {
    fn streams(&self) -> Option<&Streams> {
        Some(&self.streams)
    }

    async fn wait(&self) -> Result<ExitStatus> {
        reach_agent_client::wait_slot(&self.exit, &format!("in container `{}`", self.id)).await
    }

    /// Signals the container's main process (through the engine; with `init`, docker-init
    /// passes it on to the command).
    async fn signal(&self, signal: Signal) -> Result<()> {
        let number = signal.number().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{signal} has no number on Linux"),
            )
        })?;
        self.docker
            .kill_container(
                &self.id,
                Some(KillContainerOptions {
                    signal: number.to_string(),
                }),
            )
            .await
            .map_err(|e| {
                engine_error(
                    &self.address,
                    &format!("sending {signal} to container `{}`", self.id),
                    e,
                )
            })
    }

    async fn resize(&self, size: PtySize) -> Result<()> {
        if !self.pty {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cannot resize: the process has no terminal (start it with a PTY)",
            ));
        }
        resize(&self.docker, &self.address, &self.id, size).await
    }
}
