//! Containers the gateway makes and disposes of: create from an image with labels, limits,
//! env and network; start, or run with the main process attached; stop; remove; list by
//! label; reap what a crashed run left behind.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use reach_core::{Error, ErrorKind, Process, PtySize, Result};

use crate::attached::MainProcess;
use crate::{engine, engine_error, DockerOptions};

/// What to create.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ContainerSpec {
    /// The image (`name:tag` or id); it must be present on the engine.
    pub image: String,
    /// The container's name; the engine picks one when `None`.
    pub name: Option<String>,
    /// Labels, by which [`Containers::list`] and [`Containers::reap`] find it again.
    pub labels: BTreeMap<String, String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The command (the image's default when `None`).
    pub cmd: Option<Vec<String>>,
    /// The network to join (`bridge`, `none`, a user network); the engine's default when
    /// `None`.
    pub network: Option<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in CPUs (`0.5` is half a core).
    pub cpus: Option<f64>,
    /// Most processes the container may hold.
    pub pids_limit: Option<i64>,
    /// The user its command runs as.
    pub user: Option<String>,
    /// Its working directory.
    pub working_dir: Option<String>,
    /// Bind mounts, as the engine writes them: `HOST:CONTAINER[:ro]`.
    pub binds: Vec<String>,
    /// Run the command under a terminal of this size (for [`Containers::run`]).
    pub terminal: Option<PtySize>,
    /// Keep the command's stdin open for [`Containers::run`] to write to (closed when the
    /// writer is).
    pub stdin: bool,
}

impl ContainerSpec {
    /// A spec for `image` with everything else at the engine's defaults.
    pub fn new(image: impl Into<String>) -> Self {
        ContainerSpec {
            image: image.into(),
            ..Default::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the command.
    pub fn cmd<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(argv.into_iter().map(Into::into).collect());
        self
    }
}

/// One container, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Name, without the engine's leading `/`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `created`, `running`, `exited`, ...
    pub state: String,
}

/// Container lifecycle on one engine.
#[derive(Debug, Clone)]
pub struct Containers {
    docker: Docker,
    address: String,
}

impl Containers {
    /// Connects to the engine that `options` (or `DOCKER_HOST`) names.
    pub async fn connect(options: &DockerOptions) -> Result<Self> {
        let (docker, address) = engine(options).await?;
        Ok(Containers { docker, address })
    }

    fn fail(&self, doing: String) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
        move |e| engine_error(&self.address, &doing, e)
    }

    /// Creates a container (not started); returns its id.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            tty: Some(spec.terminal.is_some()),
            open_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin),
            attach_stdin: Some(spec.stdin),
            host_config: Some(HostConfig {
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                console_size: spec
                    .terminal
                    .map(|t| vec![usize::from(t.rows), usize::from(t.cols)]),
                memory: spec.memory_bytes,
                nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                pids_limit: spec.pids_limit,
                network_mode: spec.network.clone(),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = spec.name.as_ref().map(|name| CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        });
        let created = self
            .docker
            .create_container(options, body)
            .await
            .map_err(|e| {
                let err = engine_error(
                    &self.address,
                    &format!("creating a container from `{}`", spec.image),
                    e,
                );
                if matches!(err.kind(), ErrorKind::NotFound) {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "{} (build or load the image on the engine at `{}` first)",
                            err.message(),
                            self.address
                        ),
                    )
                } else {
                    err
                }
            })?;
        Ok(created.id)
    }

    /// Creates a container from `spec` and starts it with its streams attached: its main
    /// process (`spec.cmd`, or the image's command) as a [`Process`] whose exit is the
    /// container's. The container stays after it ends; remove it with [`Containers::remove`]
    /// (a container that fails to start is removed here).
    pub async fn run(&self, spec: &ContainerSpec) -> Result<(String, Box<dyn Process>)> {
        let id = self.create(spec).await?;
        match self.start_attached(&id, spec.terminal, spec.stdin).await {
            Ok(process) => Ok((id, process)),
            Err(e) => {
                let _ = self.remove(&id).await;
                Err(e)
            }
        }
    }

    /// Starts a created container with its streams attached first (`terminal` and `stdin` as
    /// it was created with): its main process as a [`Process`]. See [`Containers::run`].
    pub async fn start_attached(
        &self,
        id: &str,
        terminal: Option<PtySize>,
        stdin: bool,
    ) -> Result<Box<dyn Process>> {
        let process =
            MainProcess::attach_and_start(&self.docker, &self.address, id, terminal, stdin).await?;
        Ok(Box::new(process))
    }

    /// The command an image runs when none is given (`CMD`, after its `ENTRYPOINT`), or
    /// `None` when it has neither.
    pub async fn image_command(&self, image: &str) -> Result<Option<Vec<String>>> {
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(self.fail(format!("inspecting image `{image}`")))?;
        let config = inspected.config.unwrap_or_default();
        let mut argv = config.entrypoint.unwrap_or_default();
        argv.extend(config.cmd.unwrap_or_default());
        Ok((!argv.is_empty()).then_some(argv))
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(self.fail(format!("starting container `{id}`")))
    }

    /// Stops a container: its stop signal, then `SIGKILL` after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => other.map_err(self.fail(format!("stopping container `{id}`"))),
        }
    }

    /// Removes a container, killing it if it runs; a container already gone is not an error.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other.map_err(self.fail(format!("removing container `{id}`"))),
        }
    }

    /// Every container (running or not) that carries all of `labels` (`key=value`, or `key`
    /// for any value).
    pub async fn list(&self, labels: &[&str]) -> Result<Vec<ContainerSummary>> {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(),
        );
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(self.fail("listing containers".to_owned()))?;
        Ok(found
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            })
            .collect())
    }

    /// Removes every container that carries all of `labels`; returns how many went.
    pub async fn reap(&self, labels: &[&str]) -> Result<usize> {
        let found = self.list(labels).await?;
        for container in &found {
            self.remove(&container.id).await?;
        }
        Ok(found.len())
    }

    /// The engine's address.
    pub fn address(&self) -> &str {
        &self.address
    }
}
