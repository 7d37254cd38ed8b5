//! Where a session runs: the local host, or a container made for the connection, for the
//! channel, or for the user — and the cleanup that goes with each.
//!
//! Every container carries `reach.gateway=<instance>` (and the connection, user and mode), so
//! that the next start of the same gateway removes whatever a crash left behind.
//!
//! With agent forwarding on and the engine on this host, every container gets a directory of
//! its own bind-mounted at [`AGENT_MOUNT`], where the sessions' forwarded agent sockets go.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reach_core::sync::lock;
use reach_core::{Backend, CommandLine, Destination, Error, ErrorKind, ExecSpec, Process, Result};
use reach_docker::{ContainerSpec, Containers, DockerBackend, DockerOptions};
use reach_local::LocalBackend;

use crate::config::{BackendConfig, ContainerMode, SessionBackend};
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

/// Where a container sees its agent directory.
pub const AGENT_MOUNT: &str = "/run/reach-agent";

/// Where forwarded agent sockets for the sessions in one container go: a directory on this
/// host, bind-mounted into the container.
#[derive(Debug, Clone)]
pub struct AgentDir {
    /// The directory on this host.
    pub host: PathBuf,
    /// The same directory inside the container.
    pub seen_as: String,
}

impl AgentDir {
    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// Where a channel's session runs.
#[derive(Debug)]
pub struct Place {
    /// The backend to run it on.
    pub backend: Arc<dyn Backend>,
    /// A container made for this channel alone, to be released when it ends.
    pub own: Option<Container>,
    /// Where the session's forwarded agent socket goes (`None`: a private directory on this
    /// host, for the local backend).
    pub agent: Option<AgentDir>,
}

/// A container name and agent directory set aside for a channel's own container, before
/// [`Provider::run`] makes it.
#[derive(Debug)]
pub struct Prepared {
    name: String,
    /// Where the session's forwarded agent socket goes.
    pub agent: Option<AgentDir>,
}

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
    /// One plugin target that every session shares, like the local host.
    Plugin(Arc<dyn Backend>),
}

#[derive(Debug)]
struct Docker {
    containers: Containers,
    options: DockerOptions,
    config: BackendConfig,
    instance: String,
    persistent: Mutex<HashMap<String, Persistent>>,
    /// Where the containers' agent directories are made (`None`: no agent forwarding).
    agent_root: Option<PathBuf>,
}

#[derive(Debug)]
struct Persistent {
    container: Container,
    backend: Arc<dyn Backend>,
    leases: usize,
    /// Bumped on every lease, so that an idle timer started before it does nothing.
    generation: u64,
}

/// A container made for one connection or channel; removed by [`Provider::release`].
#[derive(Debug, Clone)]
pub struct Container {
    id: String,
    agent: Option<AgentDir>,
}

impl Container {
    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Provider {
    /// A provider for `config`; for Docker, connects to the engine and reaps containers an
    /// earlier run of `instance` left behind. `agent_forwarding`: make agent directories for
    /// containers (when the engine runs on this host).
    pub async fn new(
        config: &BackendConfig,
        instance: &str,
        agent_forwarding: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let kind = match config.kind {
            SessionBackend::Local => Kind::Local(Arc::new(LocalBackend::new())),
            SessionBackend::Plugin => Kind::Plugin(plugin_backend(config).await?),
            SessionBackend::Docker => {
                let mut options = DockerOptions::new();
                options.host = config.docker_host.clone();
                let containers = Containers::connect(&options).await?;
                let label = format!("{LABEL_GATEWAY}={instance}");
                let reaped = containers.reap(&[&label]).await?;
                metrics.containers_reaped(reaped as u64);
                if reaped > 0 {
                    crate::log!(
                        Level::Warn,
                        "",
                        "containers.reaped",
                        count = reaped,
                        label = label
                    );
                }
                let agent_root = if agent_forwarding {
                    agent_root(&containers, instance)
                } else {
                    None
                };
                Kind::Docker(Arc::new(Docker {
                    containers,
                    options,
                    config: config.clone(),
                    instance: instance.to_owned(),
                    persistent: Mutex::new(HashMap::new()),
                    agent_root,
                }))
            }
        };
        Ok(Provider { kind, metrics })
    }

    /// Whether a forwarded agent can reach sessions: always on this host; in containers when
    /// the engine runs on this host (their agent directories are bind mounts).
    pub fn agent_possible(&self) -> bool {
        match &self.kind {
            Kind::Local(_) => true,
            Kind::Docker(docker) => docker.agent_root.is_some(),
            // Sessions run wherever the adapter runs them: no agent socket reaches there.
            Kind::Plugin(_) => false,
        }
    }

    /// Whether forwarded TCP connections have a place to be made from: this host, or the
    /// connection's or user's container. A container per session has none.
    pub fn forwarding_possible(&self) -> bool {
        match &self.kind {
            Kind::Local(_) | Kind::Plugin(_) => true,
            Kind::Docker(docker) => docker.config.mode != ContainerMode::Session,
        }
    }

    /// The backend for a new channel of connection `conn` (user `user`). `shared` is the
    /// connection's container slot (connection mode), filled on first use. `leased` is the
    /// connection's hold on its user's container (persistent mode), by container id: taken
    /// once per container, however many channels the connection opens (a container that was
    /// replaced is taken anew), and given back by [`Provider::connection_ended`].
    pub async fn backend(
        &self,
        conn: &str,
        channel: u32,
        user: &str,
        shared: &tokio::sync::Mutex<Option<(Container, Arc<dyn Backend>)>>,
        leased: &Mutex<Option<String>>,
    ) -> Result<Place> {
        let docker = match &self.kind {
            Kind::Local(local) => {
                return Ok(Place {
                    backend: local.clone(),
                    own: None,
                    agent: None,
                })
            }
            Kind::Plugin(backend) => {
                return Ok(Place {
                    backend: backend.clone(),
                    own: None,
                    agent: None,
                })
            }
            Kind::Docker(docker) => docker,
        };
        match docker.config.mode {
            ContainerMode::Connection => {
                let mut slot = shared.lock().await;
                if let Some((container, backend)) = slot.as_ref() {
                    return Ok(Place {
                        backend: backend.clone(),
                        own: None,
                        agent: container.agent.clone(),
                    });
                }
                let name = format!("reach-{}-{conn}", docker.instance);
                let (container, backend) =
                    self.make(docker, name, conn, user, "connection").await?;
                let agent = container.agent.clone();
                *slot = Some((container, backend.clone()));
                Ok(Place {
                    backend,
                    own: None,
                    agent,
                })
            }
            ContainerMode::Session => {
                let name = format!("reach-{}-{conn}-{channel}", docker.instance);
                let (container, backend) = self.make(docker, name, conn, user, "session").await?;
                Ok(Place {
                    backend,
                    agent: container.agent.clone(),
                    own: Some(container),
                })
            }
            ContainerMode::Persistent => {
                let found = {
                    let mut map = lock(&docker.persistent);
                    map.get_mut(user).map(|p| {
                        let mut held = lock(leased);
                        if held.as_deref() != Some(p.container.id.as_str()) {
                            p.leases += 1;
                            *held = Some(p.container.id.clone());
                        }
                        p.generation += 1;
                        (p.backend.clone(), p.container.agent.clone())
                    })
                };
                if let Some((backend, agent)) = found {
                    if backend.health_check().await.is_ok() {
                        return Ok(Place {
                            backend,
                            own: None,
                            agent,
                        });
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
                let agent = container.agent.clone();
                *lock(leased) = Some(container.id.clone());
                let mut map = lock(&docker.persistent);
                map.insert(
                    user.to_owned(),
                    Persistent {
                        container,
                        backend: backend.clone(),
                        leases: 1,
                        generation: 0,
                    },
                );
                Ok(Place {
                    backend,
                    own: None,
                    agent,
                })
            }
        }
    }

    /// In session mode, a channel's command runs as the main process of a container of its
    /// own: this sets its name and agent directory aside (`None` in other modes, where
    /// commands run in [`Provider::backend`]'s place).
    pub fn prepare(&self, conn: &str, channel: u32) -> Result<Option<Prepared>> {
        let Kind::Docker(docker) = &self.kind else {
            return Ok(None);
        };
        if docker.config.mode != ContainerMode::Session {
            return Ok(None);
        }
        let name = format!("reach-{}-{conn}-{channel}", docker.instance);
        let agent = agent_dir(docker, &name)?;
        Ok(Some(Prepared { name, agent }))
    }

    /// Runs `spec` as the main process of the container `prepared` names: the requested
    /// command, or for a login shell the image's own command (`/bin/sh -l` when the image has
    /// none). Release the container with [`Provider::release`] when it ends.
    pub async fn run(
        &self,
        prepared: Prepared,
        conn: &str,
        user: &str,
        spec: ExecSpec,
    ) -> Result<(Container, Box<dyn Process>)> {
        let Kind::Docker(docker) = &self.kind else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "only Docker backends run sessions as containers",
            ));
        };
        let container = Container {
            id: prepared.name.clone(),
            agent: prepared.agent,
        };
        let ran = self.run_in(docker, &container, conn, user, spec).await;
        match ran {
            Ok((id, process)) => Ok((
                Container {
                    id,
                    agent: container.agent,
                },
                process,
            )),
            Err(e) => {
                if let Some(agent) = &container.agent {
                    agent.remove();
                }
                Err(e)
            }
        }
    }

    async fn run_in(
        &self,
        docker: &Docker,
        container: &Container,
        conn: &str,
        user: &str,
        exec: ExecSpec,
    ) -> Result<(String, Box<dyn Process>)> {
        let mut spec = self.spec(
            docker,
            &container.id,
            conn,
            user,
            "session",
            &container.agent,
        )?;
        spec.cmd = match exec.command {
            CommandLine::Shell(line) => Some(vec!["/bin/sh".into(), "-c".into(), line]),
            CommandLine::Argv(argv) => Some(argv),
            CommandLine::LoginShell => {
                let own = docker.containers.image_command(&spec.image).await?;
                own.is_none()
                    .then(|| vec!["/bin/sh".to_owned(), "-l".to_owned()])
            }
        };
        spec.env.extend(exec.env);
        spec.user = docker.config.user.clone();
        if let Some(pty) = &exec.pty {
            spec.env.push(("TERM".to_owned(), pty.term.clone()));
            spec.terminal = Some(pty.size);
        }
        spec.stdin = true;
        let id = self.create(docker, &spec).await?;
        let started = Instant::now();
        let run = docker
            .containers
            .start_attached(&id, spec.terminal, spec.stdin)
            .await;
        let process = self
            .started(docker, &id, conn, "session", started, run)
            .await?;
        Ok((id, process))
    }

    /// Creates a container, counted and timed.
    async fn create(&self, docker: &Docker, spec: &ContainerSpec) -> Result<String> {
        let started = Instant::now();
        let created = docker.containers.create(spec).await;
        self.metrics.container_phase("create", started.elapsed());
        self.metrics.backend("container", created.is_ok());
        created
    }

    /// Books a start that began at `since`: timed, logged, and a container that did not
    /// start removed.
    async fn started<T>(
        &self,
        docker: &Docker,
        id: &str,
        conn: &str,
        mode: &str,
        since: Instant,
        run: Result<T>,
    ) -> Result<T> {
        self.metrics.container_phase("start", since.elapsed());
        match run {
            Ok(value) => {
                crate::log!(
                    Level::Info,
                    conn,
                    "container.started",
                    id = short(id),
                    mode = mode,
                    took_ms = since.elapsed().as_millis()
                );
                Ok(value)
            }
            Err(e) => {
                self.remove(docker, id, conn).await;
                Err(e)
            }
        }
    }

    async fn forget_persistent(&self, docker: &Docker, user: &str) {
        let old = lock(&docker.persistent).remove(user);
        if let Some(old) = old {
            self.remove_container(docker, &old.container, "").await;
        }
    }

    /// The spec every container of this gateway starts from (its command: the configured
    /// idle one).
    fn spec(
        &self,
        docker: &Docker,
        name: &str,
        conn: &str,
        user: &str,
        mode: &str,
        agent: &Option<AgentDir>,
    ) -> Result<ContainerSpec> {
        let config = &docker.config;
        let image = config.image.clone().unwrap_or_default();
        let mut spec = ContainerSpec::new(image)
            .label(LABEL_GATEWAY, docker.instance.clone())
            .label(LABEL_CONNECTION, conn)
            .label(LABEL_USER, user)
            .label(LABEL_MODE, mode)
            .cmd(config.command.clone());
        spec.name = Some(name.to_owned());
        if let Some(agent) = agent {
            spec.binds
                .push(format!("{}:{}", agent.host.display(), agent.seen_as));
        }
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
        Ok(spec)
    }

    async fn make(
        &self,
        docker: &Docker,
        name: String,
        conn: &str,
        user: &str,
        mode: &str,
    ) -> Result<(Container, Arc<dyn Backend>)> {
        let agent = agent_dir(docker, &name)?;
        let made = match self.spec(docker, &name, conn, user, mode, &agent) {
            Ok(spec) => self.make_with(docker, &spec, conn, mode).await,
            Err(e) => Err(e),
        };
        match made {
            Ok((id, backend)) => Ok((Container { id, agent }, backend)),
            Err(e) => {
                if let Some(agent) = &agent {
                    agent.remove();
                }
                Err(e)
            }
        }
    }

    async fn make_with(
        &self,
        docker: &Docker,
        spec: &ContainerSpec,
        conn: &str,
        mode: &str,
    ) -> Result<(String, Arc<dyn Backend>)> {
        let id = self.create(docker, spec).await?;
        let started = Instant::now();
        let run = docker.containers.start(&id).await;
        self.started(docker, &id, conn, mode, started, run).await?;
        let destination = match &docker.config.user {
            Some(u) => format!("docker://{u}@{id}"),
            None => format!("docker://{id}"),
        };
        let backend = Destination::parse(&destination)
            .and_then(|d| DockerBackend::new(d, docker.options.clone()))
            .map(|b| Arc::new(b) as Arc<dyn Backend>);
        match backend {
            Ok(backend) => Ok((id, backend)),
            Err(e) => {
                self.remove(docker, &id, conn).await;
                Err(e)
            }
        }
    }

    async fn remove_container(&self, docker: &Docker, container: &Container, conn: &str) {
        self.remove(docker, &container.id, conn).await;
        if let Some(agent) = &container.agent {
            agent.remove();
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
            self.remove_container(docker, &container, conn).await;
        }
    }

    /// A connection of `user` that holds a lease on their container `id` (see
    /// [`Provider::backend`]) ended: in persistent mode, start the idle timer when it was
    /// the container's last. A lease on a container since replaced counts for nothing.
    pub fn connection_ended(&self, user: &str, id: &str) {
        let Kind::Docker(docker) = &self.kind else {
            return;
        };
        if docker.config.mode != ContainerMode::Persistent {
            return;
        }
        let generation = {
            let mut map = lock(&docker.persistent);
            let Some(p) = map.get_mut(user).filter(|p| p.container.id == id) else {
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
                let mut map = lock(&docker.persistent);
                match map.get(&user) {
                    Some(p) if p.leases == 0 && p.generation == generation => map.remove(&user),
                    _ => None,
                }
            };
            if let Some(p) = expired {
                let _ = p.backend.close().await;
                let started = Instant::now();
                let result = docker.containers.remove(&p.container.id).await;
                metrics.container_phase("remove", started.elapsed());
                if let Some(agent) = &p.container.agent {
                    agent.remove();
                }
                crate::log!(
                    Level::Info,
                    "",
                    "container.idle_removed",
                    id = short(&p.container.id),
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
            if let Some(root) = &docker.agent_root {
                let _ = std::fs::remove_dir_all(root);
            }
        }
    }
}

/// The directory under which this gateway's containers get their agent directories, made
/// afresh (what a crashed run left goes), private to this user; `None` when the engine is
/// not on this host or the directory cannot be made (logged).
fn agent_root(containers: &Containers, instance: &str) -> Option<PathBuf> {
    if !containers.address().starts_with("unix://") {
        crate::log!(
            Level::Info,
            "",
            "agent.unavailable",
            why = "the Docker engine is not on this host, so it cannot mount agent sockets",
            engine = containers.address()
        );
        return None;
    }
    let root = std::env::temp_dir().join(format!("reach-agent-{instance}"));
    let _ = std::fs::remove_dir_all(&root);
    match std::fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => Some(root),
        Err(e) => {
            crate::log!(
                Level::Warn,
                "",
                "agent.unavailable",
                why = format!("creating `{}`: {e}", root.display())
            );
            None
        }
    }
}

/// A container's agent directory: reachable by any user in the container (the sockets in it
/// are the session's own), but not by other users of this host (its parent is private).
fn agent_dir(docker: &Docker, name: &str) -> Result<Option<AgentDir>> {
    let Some(root) = &docker.agent_root else {
        return Ok(None);
    };
    let host = root.join(name);
    // A persistent container's name comes back; so may its old directory.
    let _ = std::fs::remove_dir_all(&host);
    let made = std::fs::create_dir(&host)
        .and_then(|()| std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)));
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&host);
        return Err(Error::io(format!("creating `{}`", host.display()), e));
    }
    Ok(Some(AgentDir {
        host,
        seen_as: AGENT_MOUNT.to_owned(),
    }))
}

/// The plugin target of `config`, connected (so that a bad pin or a missing adapter stops
/// the gateway at its start, not at its first user).
async fn plugin_backend(config: &BackendConfig) -> Result<Arc<dyn Backend>> {
    let destination = Destination::parse(config.destination.as_deref().unwrap_or_default())?;
    let mut settings = reach_plugin::PluginSettings::load_user()?;
    if let Some(adapter) = &config.plugin {
        settings
            .adapters
            .insert(destination.scheme().to_owned(), adapter.clone());
    }
    let options = reach_plugin::PluginOptions {
        settings,
        ..reach_plugin::PluginOptions::default()
    };
    let backend: Arc<dyn Backend> =
        Arc::new(reach_plugin::PluginBackend::new(destination, options)?);
    backend.connect().await?;
    Ok(backend)
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
