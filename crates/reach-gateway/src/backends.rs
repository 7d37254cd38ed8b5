//! Where a session runs: the local host, or a container made for the connection, for the
//! channel, or for the user — and the cleanup that goes with each.
//!
//! Every container carries `reach.gateway=<instance>` (and the connection, user and mode), so
//! that the next start of the same gateway removes whatever a crash left behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reach_core::{Backend, Destination, Error, ErrorKind, Result};
use reach_docker::{ContainerSpec, Containers, DockerBackend, DockerOptions};
use reach_local::LocalBackend;

use crate::config::{BackendConfig, BackendKind, ContainerMode};
use crate::log::Level;
use crate::metrics::Metrics;

/// The label every gateway container carries, with the instance id as value.
pub const LABEL_GATEWAY: &str = "reach.gateway";
/// The connection id label.
pub const LABEL_CONNECTION: &str = "reach.connection";
/// The user label.
pub const LABEL_USER: &str = "reach.user";
/// The mode label.
pub const LABEL_MODE: &str = "reach.mode";

/// Makes backends for sessions, for the whole gateway.
#[derive(Debug)]
pub struct Provider {
    kind: Kind,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
enum Kind {
    Local(Arc<LocalBackend>),
    Docker(Arc<Docker>),
}

#[derive(Debug)]
struct Docker {
    containers: Containers,
    options: DockerOptions,
    config: BackendConfig,
    instance: String,
    persistent: Mutex<HashMap<String, Persistent>>,
}

#[derive(Debug)]
struct Persistent {
    id: String,
    backend: Arc<dyn Backend>,
    leases: usize,
    /// Bumped on every lease, so that an idle timer started before it does nothing.
    generation: u64,
}

/// A container made for one connection or channel; removed by [`Provider::release`].
#[derive(Debug, Clone)]
pub struct Container {
    id: String,
}

impl Container {
    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Provider {
    /// A provider for `config`; for Docker, connects to the engine and reaps containers an
    /// earlier run of `instance` left behind.
    pub async fn new(
        config: &BackendConfig,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let kind = match config.kind {
            BackendKind::Local => Kind::Local(Arc::new(LocalBackend::new())),
            BackendKind::Docker => {
                let mut options = DockerOptions::new();
                options.host = config.docker_host.clone();
                let containers = Containers::connect(&options).await?;
                let label = format!("{LABEL_GATEWAY}={instance}");
                let reaped = containers.reap(&[&label]).await?;
                metrics
                    .containers_reaped
                    .fetch_add(reaped as u64, std::sync::atomic::Ordering::Relaxed);
                if reaped > 0 {
                    crate::log!(
                        Level::Warn,
                        "",
                        "containers.reaped",
                        count = reaped,
                        label = label
                    );
                }
                Kind::Docker(Arc::new(Docker {
                    containers,
                    options,
                    config: config.clone(),
                    instance: instance.to_owned(),
                    persistent: Mutex::new(HashMap::new()),
                }))
            }
        };
        Ok(Provider { kind, metrics })
    }

    /// Whether sessions run on this host (where a forwarded agent's socket can reach them).
    pub fn is_local(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// The backend for a new channel of connection `conn` (user `user`). `shared` is the
    /// connection's container slot (connection mode), filled on first use.
    pub async fn backend(
        &self,
        conn: &str,
        channel: u32,
        user: &str,
        shared: &tokio::sync::Mutex<Option<(Container, Arc<dyn Backend>)>>,
    ) -> Result<(Arc<dyn Backend>, Option<Container>)> {
        let docker = match &self.kind {
            Kind::Local(local) => return Ok((local.clone(), None)),
            Kind::Docker(docker) => docker,
        };
        match docker.config.mode {
            ContainerMode::Connection => {
                let mut slot = shared.lock().await;
                if let Some((_, backend)) = slot.as_ref() {
                    return Ok((backend.clone(), None));
                }
                let name = format!("reach-{}-{conn}", docker.instance);
                let made = self.make(docker, name, conn, user, "connection").await?;
                *slot = Some(made.clone());
                Ok((made.1, None))
            }
            ContainerMode::Session => {
                let name = format!("reach-{}-{conn}-{channel}", docker.instance);
                let (container, backend) = self.make(docker, name, conn, user, "session").await?;
                Ok((backend, Some(container)))
            }
            ContainerMode::Persistent => {
                let found = {
                    let mut map = docker.persistent.lock().unwrap_or_else(|p| p.into_inner());
                    map.get_mut(user).map(|p| {
                        p.leases += 1;
                        p.generation += 1;
                        p.backend.clone()
                    })
                };
                if let Some(backend) = found {
                    if backend.health_check().await.is_ok() {
                        return Ok((backend, None));
                    }
                    // Gone under us (removed by hand, engine restarted): start over.
                    self.forget_persistent(docker, user).await;
                }
                let name = format!("reach-{}-user-{}", docker.instance, sanitize(user));
                // A container of that name may survive from an earlier connection whose
                // timer this run no longer holds; replace it.
                let _ = docker.containers.remove(&name).await;
                let (container, backend) =
                    self.make(docker, name, conn, user, "persistent").await?;
                let mut map = docker.persistent.lock().unwrap_or_else(|p| p.into_inner());
                map.insert(
                    user.to_owned(),
                    Persistent {
                        id: container.id,
                        backend: backend.clone(),
                        leases: 1,
                        generation: 0,
                    },
                );
                Ok((backend, None))
            }
        }
    }

    async fn forget_persistent(&self, docker: &Docker, user: &str) {
        let old = docker
            .persistent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        if let Some(old) = old {
            self.remove(docker, &old.id, "").await;
        }
    }

    async fn make(
        &self,
        docker: &Docker,
        name: String,
        conn: &str,
        user: &str,
        mode: &str,
    ) -> Result<(Container, Arc<dyn Backend>)> {
        let config = &docker.config;
        let image = config.image.clone().unwrap_or_default();
        let mut spec = ContainerSpec::new(image)
            .label(LABEL_GATEWAY, docker.instance.clone())
            .label(LABEL_CONNECTION, conn)
            .label(LABEL_USER, user)
            .label(LABEL_MODE, mode)
            .cmd(config.command.clone());
        spec.name = Some(name);
        spec.labels.extend(config.labels.clone());
        spec.env = config
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        spec.network = config.network.clone();
        spec.cpus = config.cpus;
        spec.memory_bytes = match &config.memory {
            Some(m) => Some(crate::config::parse_size(m)?),
            None => None,
        };
        spec.pids_limit = config.pids_limit;
        let started = Instant::now();
        let created = docker.containers.create(&spec).await;
        self.metrics.container_phase("create", started.elapsed());
        self.metrics.backend("container", created.is_ok());
        let id = created?;
        let started = Instant::now();
        let run = docker.containers.start(&id).await;
        self.metrics.container_phase("start", started.elapsed());
        if let Err(e) = run {
            self.remove(docker, &id, conn).await;
            return Err(e);
        }
        crate::log!(
            Level::Info,
            conn,
            "container.started",
            id = short(&id),
            mode = mode,
            took_ms = started.elapsed().as_millis()
        );
        let destination = match &config.user {
            Some(u) => format!("docker://{u}@{id}"),
            None => format!("docker://{id}"),
        };
        let backend = DockerBackend::new(Destination::parse(&destination)?, docker.options.clone())
            .map(|b| Arc::new(b) as Arc<dyn Backend>);
        match backend {
            Ok(backend) => Ok((Container { id }, backend)),
            Err(e) => {
                self.remove(docker, &id, conn).await;
                Err(e)
            }
        }
    }

    async fn remove(&self, docker: &Docker, id: &str, conn: &str) {
        let started = Instant::now();
        let result = docker.containers.remove(id).await;
        self.metrics.container_phase("remove", started.elapsed());
        match result {
            Ok(()) => crate::log!(Level::Info, conn, "container.removed", id = short(id)),
            Err(e) => crate::log!(
                Level::Error,
                conn,
                "container.remove_failed",
                id = short(id),
                error = e
            ),
        }
    }

    /// Removes a container made for a channel or a connection.
    pub async fn release(
        &self,
        container: Container,
        backend: Option<Arc<dyn Backend>>,
        conn: &str,
    ) {
        if let Some(backend) = backend {
            let _ = backend.close().await;
        }
        if let Kind::Docker(docker) = &self.kind {
            self.remove(docker, &container.id, conn).await;
        }
    }

    /// The connection of `user` ended: in persistent mode, start the idle timer when it was
    /// their last.
    pub fn connection_ended(&self, user: &str) {
        let Kind::Docker(docker) = &self.kind else {
            return;
        };
        if docker.config.mode != ContainerMode::Persistent {
            return;
        }
        let generation = {
            let mut map = docker.persistent.lock().unwrap_or_else(|p| p.into_inner());
            let Some(p) = map.get_mut(user) else {
                return;
            };
            p.leases = p.leases.saturating_sub(1);
            if p.leases > 0 {
                return;
            }
            p.generation
        };
        let docker = docker.clone();
        let metrics = self.metrics.clone();
        let user = user.to_owned();
        let idle = Duration::from_secs(docker.config.idle_timeout_secs);
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            let expired = {
                let mut map = docker.persistent.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&user) {
                    Some(p) if p.leases == 0 && p.generation == generation => map.remove(&user),
                    _ => None,
                }
            };
            if let Some(p) = expired {
                let _ = p.backend.close().await;
                let started = Instant::now();
                let result = docker.containers.remove(&p.id).await;
                metrics.container_phase("remove", started.elapsed());
                crate::log!(
                    Level::Info,
                    "",
                    "container.idle_removed",
                    id = short(&p.id),
                    user = user,
                    ok = result.is_ok()
                );
            }
        });
    }

    /// Removes every container of this gateway (at shutdown).
    pub async fn shutdown(&self) {
        if let Kind::Docker(docker) = &self.kind {
            let label = format!("{LABEL_GATEWAY}={}", docker.instance);
            if let Err(e) = docker.containers.reap(&[&label]).await {
                crate::log!(Level::Error, "", "containers.shutdown_failed", error = e);
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A user name as a container-name fragment.
fn sanitize(user: &str) -> String {
    user.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A reason for a failed session start that is safe to show a client (no engine addresses,
/// no paths).
pub fn public_reason(err: &Error) -> &'static str {
    match err.kind() {
        ErrorKind::NotFound => "The session image or container is not available.",
        ErrorKind::Unreachable | ErrorKind::Timeout | ErrorKind::SessionDropped => {
            "The backend is not reachable."
        }
        ErrorKind::PermissionDenied => "The backend refused the session.",
        _ => "The backend could not start the session.",
    }
}
