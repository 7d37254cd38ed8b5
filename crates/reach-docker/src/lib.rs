//! The Docker backend of reach: commands and files in a running container, through the
//! Docker Engine API ([bollard]).
//!
//! - **Destinations**: `docker://[user@]container` (name or id). The engine is found as the
//!   docker CLI finds it: [`DockerOptions::host`], else `DOCKER_HOST` (`unix://`, `tcp://`,
//!   with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for TLS), else the local socket.
//! - **Commands** run through `reach-agent`, the static helper that `reach-agent-client`
//!   embeds and speaks to (this crate only installs and starts it): on the first command it
//!   is copied into the container (`/.reach/agent-HASH`, once per agent
//!   version) and started with one engine exec, as the destination's user. Every command after
//!   that is a fork/exec inside the container, a fraction of a `docker exec`'s cost, and gets
//!   what the engine cannot give: signals, a death by signal told apart from an exit code, a
//!   time limit that kills the whole process tree, spawn failures as errors, and terminals
//!   sized before the command starts. When the agent cannot be installed (a read-only root
//!   file system, another architecture, [`DockerOptions::agent`] off), commands run as
//!   engine execs.
//! - **Files** are read and written by the agent, as the destination's user (chunked
//!   requests, several in flight). Without it they go through the archive API (a streamed tar
//!   each way), which needs nothing in the image; but the engine then writes as root, and
//!   holds the container's lock while a read streams, so an exec into that container waits
//!   for the read. Stat is the archive `HEAD`. Renames, permissions, truncation, removal and
//!   listings go through the agent, or else a shell in the container; with neither they are
//!   [`ErrorKind::Unsupported`].
//! - **Lifecycle** for the gateway: [`Containers`] creates, starts, stops, removes, lists and
//!   reaps containers by label, and runs a container with its main process attached as a
//!   [`Process`] (`docker run -it` without the CLI).
#![deny(missing_docs)]

mod archive;
mod attached;
mod fs;
mod image;
mod lifecycle;
mod ops;
mod process;
mod rootfs;
mod tunnel;
mod upload;
use reach_tar as tar;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::InspectContainerOptions;
use bollard::Docker;
use reach_core::sync::lock;
use reach_core::{
    Backend, BackendKind, Capabilities, Capability, Destination, Error, ErrorKind, ExecSpec,
    FileSystem, Platform, Process, Result, Subject,
};
use tokio::sync::OnceCell;

pub use lifecycle::{ContainerSpec, ContainerSummary, Containers};

/// How to reach the engine and run commands.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DockerOptions {
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://host:2376`); `None` uses
    /// `DOCKER_HOST`, as the docker CLI does.
    pub host: Option<String>,
    /// Install and use `reach-agent` in containers (default `true`). Off, every command is
    /// an engine exec: slower, no signals, and a death by signal reads as `128+N`.
    pub agent: bool,
    /// How long a call to the engine may take before it is a [`ErrorKind::Timeout`]
    /// (default 2 minutes; streams of output and files are not limited).
    pub request_timeout: Option<Duration>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            host: None,
            agent: true,
            request_timeout: None,
        }
    }
}

impl DockerOptions {
    /// Options with everything at its default.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The engine address that `host` or the environment selects.
fn engine_address(host: Option<&str>) -> String {
    host.map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
}

/// A client for the engine at `host` (or `DOCKER_HOST`), with the API version negotiated.
pub(crate) async fn engine(options: &DockerOptions) -> Result<(Docker, String)> {
    let address = engine_address(options.host.as_deref());
    let client = match options.host.as_deref() {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_defaults(),
    }
    .map_err(|e| engine_error(&address, "connecting to the Docker engine", e))?;
    let client = match options.request_timeout {
        Some(limit) => client.with_timeout(limit),
        None => client,
    };
    let client = client
        .negotiate_version()
        .await
        .map_err(|e| engine_error(&address, "connecting to the Docker engine", e))?;
    Ok((client, address))
}

/// Turns an engine error into a reach error that names what was being done.
pub(crate) fn engine_error(address: &str, doing: &str, err: bollard::errors::Error) -> Error {
    use bollard::errors::Error as E;
    let (kind, detail) = match &err {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                403 => ErrorKind::PermissionDenied,
                409 => ErrorKind::SessionDropped,
                400 => ErrorKind::InvalidInput,
                _ => ErrorKind::Protocol,
            };
            (kind, message.clone())
        }
        E::RequestTimeoutError => (
            ErrorKind::Timeout,
            "the engine did not answer in time".into(),
        ),
        E::IOError { err } if matches!(err.kind(), std::io::ErrorKind::NotFound) => (
            ErrorKind::Unreachable,
            format!("{err} (is the Docker daemon running? is DOCKER_HOST right?)"),
        ),
        E::IOError { err } => (ErrorKind::Unreachable, err.to_string()),
        E::HyperResponseError { err } => (ErrorKind::Unreachable, err.to_string()),
        E::HyperLegacyError { err } => (
            ErrorKind::Unreachable,
            format!("{err} (is the Docker daemon running at `{address}`?)"),
        ),
        E::SocketNotFoundError(path) => (
            ErrorKind::Unreachable,
            format!("no Docker engine socket at `{path}` (is the Docker daemon running? is DOCKER_HOST right?)"),
        ),
        E::UnsupportedURISchemeError { uri } => (
            ErrorKind::InvalidInput,
            format!("`{uri}` is not an engine address this build understands (unix://, tcp://, https://)"),
        ),
        other => (ErrorKind::Protocol, other.to_string()),
    };
    Error::new(kind, format!("{doing}: {detail}")).with_source(err)
}

/// How many times a connection starts another agent after losing one. An agent lost again
/// and again (killed by someone, out of memory) is not chased forever.
const AGENT_RESTARTS: u32 = 3;

/// A connection's agent: started on first use, and again when it is lost.
#[derive(Debug, Default)]
struct AgentSlot {
    /// The last start: a running (or since lost) agent, or why none can run here.
    current: Option<std::result::Result<Arc<reach_agent_client::AgentConn>, String>>,
    /// Agents started to replace a lost one.
    restarts: u32,
}

/// What [`Conn::agent`] finds without starting anything.
enum AgentNow {
    Running(Arc<reach_agent_client::AgentConn>),
    /// None can run: it could not start, or it was lost too often.
    Never,
    /// Not started yet, or lost with restarts left.
    Start,
}

impl AgentSlot {
    fn now(&self) -> AgentNow {
        match &self.current {
            None => AgentNow::Start,
            Some(Err(_)) => AgentNow::Never,
            Some(Ok(agent)) if agent.lost().is_none() => AgentNow::Running(agent.clone()),
            Some(Ok(_)) if self.restarts < AGENT_RESTARTS => AgentNow::Start,
            Some(Ok(_)) => AgentNow::Never,
        }
    }

    /// Why the last agent was lost, when it was.
    fn lost(&self) -> Option<String> {
        match &self.current {
            Some(Ok(agent)) => agent.lost(),
            _ => None,
        }
    }
}

/// What a connection knows about its container.
#[derive(Debug)]
pub(crate) struct Conn {
    pub docker: Docker,
    pub address: String,
    /// The name the destination gave.
    pub name: String,
    /// The container's full id.
    pub id: String,
    /// The user commands run as (`""`: the container's default).
    pub user: String,
    pub image: String,
    pub arch: String,
    pub os: String,
    pub use_agent: bool,
    agent: Mutex<AgentSlot>,
    /// Held while an agent starts, so that callers who find none start one between them.
    starting: tokio::sync::Mutex<()>,
    /// Why an agent lost mid-connection could not be replaced.
    agent_gone: Mutex<Option<String>>,
    shell: OnceCell<bool>,
}

impl Conn {
    fn slot(&self) -> std::sync::MutexGuard<'_, AgentSlot> {
        lock(&self.agent)
    }

    /// The agent, started on first use and started again when it has been lost (a few
    /// times per connection); `None` when it cannot run here (the reason is kept). What was
    /// running on a lost agent has failed with the reason; what comes after runs on the
    /// new one, instead of the rest of a long copy failing file by file.
    pub(crate) async fn agent(&self) -> Option<Arc<reach_agent_client::AgentConn>> {
        if !self.use_agent {
            return None;
        }
        match self.slot().now() {
            AgentNow::Running(agent) => return Some(agent),
            AgentNow::Never => return None,
            AgentNow::Start => {}
        }
        let _starting = self.starting.lock().await;
        // Another caller may have started it while this one waited.
        match self.slot().now() {
            AgentNow::Running(agent) => return Some(agent),
            AgentNow::Never => return None,
            AgentNow::Start => {}
        }
        let lost = self.slot().lost();
        match &lost {
            Some(why) => tracing::info!(
                "starting the agent in container `{}` again: {why}",
                self.name
            ),
            None => tracing::debug!("starting the agent in container `{}`", self.name),
        }
        let started = process::start_agent(self).await;
        match &started {
            Ok(_) => tracing::info!("the agent runs in container `{}`", self.name),
            Err(why) => tracing::info!(
                "no agent in container `{}` ({why}): commands run as engine execs, files \
                 go through the archive API",
                self.name
            ),
        }
        let mut slot = self.slot();
        if let Some(why) = lost {
            slot.restarts += 1;
            if let Err(e) = &started {
                *lock(&self.agent_gone) =
                    Some(format!("{why}; starting the agent again failed: {e}"));
            }
        }
        slot.current = Some(started.clone());
        started.ok()
    }

    /// Whether commands and files go through the agent: one runs, or one will be started
    /// on first use.
    pub(crate) fn agent_running(&self) -> bool {
        self.use_agent && !matches!(self.slot().now(), AgentNow::Never)
    }

    /// Whether the container is known to have `/bin/sh` (false until it was looked for).
    pub(crate) fn shell_known(&self) -> bool {
        self.shell.get().copied().unwrap_or(false)
    }

    /// Why there is no agent, for messages.
    pub(crate) fn agent_absence(&self) -> String {
        if !self.use_agent {
            return "the agent is turned off".to_owned();
        }
        if let Some(why) = self.agent_lost() {
            return why;
        }
        let slot = self.slot();
        match &slot.current {
            Some(Err(why)) => why.clone(),
            Some(Ok(agent)) => agent.lost().unwrap_or_default(),
            None => "the agent has not started".to_owned(),
        }
    }

    /// Why this connection's agent is gone for good: it was lost (the container stopped,
    /// the engine went away, the process was killed) and could not be started again, or
    /// was lost more than [`AGENT_RESTARTS`] times.
    pub(crate) fn agent_lost(&self) -> Option<String> {
        if let Some(why) = lock(&self.agent_gone).clone() {
            return Some(why);
        }
        let slot = self.slot();
        match slot.now() {
            AgentNow::Never => slot.lost().map(|why| {
                let times = slot.restarts + 1;
                let s = if times == 1 { "" } else { "s" };
                format!("{why} (the agent was lost {times} time{s})")
            }),
            _ => None,
        }
    }

    /// Whether the container has `/bin/sh`.
    pub(crate) async fn has_shell(&self) -> bool {
        *self
            .shell
            .get_or_init(|| async { archive::stat_raw(self, "/bin/sh").await.is_ok() })
            .await
    }
}

/// Why a container's connection ended: the container is gone or stopped, or the engine is.
pub(crate) async fn why_lost(docker: &Docker, id: &str, name: &str, address: &str) -> String {
    container_gone(docker, id, name, address)
        .await
        .unwrap_or_else(|| {
            format!("the connection to the Docker engine for container `{name}` was lost")
        })
}

/// Why a container can no longer be used (stopped, removed, the engine unreachable);
/// `None` while it runs.
pub(crate) async fn container_gone(
    docker: &Docker,
    id: &str,
    name: &str,
    address: &str,
) -> Option<String> {
    let inspected = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await;
    match inspected {
        Ok(info) => {
            let state = info.state.as_ref();
            if state.and_then(|s| s.running) == Some(true) {
                return None;
            }
            let status = state
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "stopped".to_owned());
            Some(format!(
                "container `{name}` stopped ({status}) while the command ran"
            ))
        }
        Err(e) => {
            let e = engine_error(address, "inspecting the container", e);
            Some(if matches!(e.kind(), ErrorKind::NotFound) {
                format!("container `{name}` was removed while the command ran")
            } else {
                format!("the Docker engine at `{address}` is unreachable: {e}")
            })
        }
    }
}

/// A running container, reached through the Docker engine.
#[derive(Debug)]
pub struct DockerBackend {
    destination: Destination,
    options: DockerOptions,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    last_error: Mutex<Option<Error>>,
}

impl DockerBackend {
    /// A backend for `docker://[user@]container`; nothing is contacted until first use.
    pub fn new(destination: Destination, options: DockerOptions) -> Result<Self> {
        if destination.scheme() != "docker" {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{destination}` is not a docker:// destination"),
            ));
        }
        Ok(DockerBackend {
            destination,
            options,
            conn: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    fn remember(&self, err: &Error) {
        if err.kind().is_transport() {
            *lock(&self.last_error) = Some(err.clone());
        }
    }

    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.agent_lost().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = Arc::new(self.open().await.inspect_err(|e| self.remember(e))?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn open(&self) -> Result<Conn> {
        let (docker, address) = engine(&self.options).await?;
        let name = self.destination.host().to_owned();
        let info = docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| {
                let e = engine_error(&address, "inspecting the container", e);
                if matches!(e.kind(), ErrorKind::NotFound) {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "no container `{name}` on the Docker engine at `{address}` (see \
                             `docker ps -a` for the names there)"
                        ),
                    )
                    .with_subject(Subject::Container)
                } else {
                    e
                }
            })?;
        let running = info.state.as_ref().and_then(|s| s.running) == Some(true);
        if !running {
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!("container `{name}` is not running: start it with `docker start {name}`"),
            ));
        }
        let id = info.id.clone().unwrap_or_else(|| name.clone());
        let image = info.image.clone().unwrap_or_default();
        let user = self
            .destination
            .user()
            .map(str::to_owned)
            .or_else(|| info.config.as_ref().and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let (os, arch) = match docker.inspect_image(&image).await {
            Ok(img) => (
                img.os.unwrap_or_else(|| "linux".to_owned()),
                img.architecture.unwrap_or_default(),
            ),
            Err(_) => ("linux".to_owned(), String::new()),
        };
        let arch = if arch.is_empty() {
            docker
                .info()
                .await
                .ok()
                .and_then(|i| i.architecture)
                .map(|a| go_arch(&a).to_owned())
                .unwrap_or_default()
        } else {
            arch
        };
        let use_agent = self.options.agent && reach_agent_client::runs_on(&arch) && os == "linux";
        let conn = Conn {
            docker,
            address,
            name,
            id,
            user,
            image: info.config.and_then(|c| c.image).unwrap_or(image),
            arch,
            os,
            use_agent,
            agent: Mutex::new(AgentSlot::default()),
            starting: tokio::sync::Mutex::new(()),
            agent_gone: Mutex::new(None),
            shell: OnceCell::new(),
        };
        if self.destination.user().is_some() && conn.os == "linux" {
            image::check_user(&conn).await?;
        }
        Ok(conn)
    }
}

/// The Go name of an architecture the engine reports in `uname -m` form.
fn go_arch(uname: &str) -> &str {
    match uname {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "i686" | "i386" => "386",
        other => other,
    }
}

/// The `uname -m` name of a Go architecture.
fn uname_arch(go: &str) -> &str {
    match go {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i686",
        "arm" => "armv7l",
        other => other,
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    /// Signals and TCP need the agent, so they are listed only while one runs (or, before
    /// connecting, while one is allowed).
    fn capabilities(&self) -> Capabilities {
        let base = Capabilities::of(&[Capability::Pty, Capability::KeepConnection]);
        let agent = match self.conn.try_lock() {
            Ok(slot) => match slot.as_ref() {
                Some(conn) => conn.agent_running(),
                None => self.options.agent,
            },
            // Connecting right now: what a connection is expected to offer.
            Err(_) => self.options.agent,
        };
        if agent {
            base.union(Capabilities::of(&[
                Capability::Agent,
                Capability::Signals,
                Capability::Tcp,
            ]))
        } else {
            base
        }
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        format!(
            "{} on {}",
            self.destination.host(),
            engine_address(self.options.host.as_deref())
        )
    }

    fn user(&self) -> String {
        if let Some(user) = self.destination.user() {
            return user.to_owned();
        }
        // Once connected: the image's user, which the engine runs as root when it is empty.
        let connected = self.conn.try_lock().ok().and_then(|slot| {
            slot.as_ref().map(|conn| match conn.user.as_str() {
                "" => "root".to_owned(),
                user => user.to_owned(),
            })
        });
        connected.unwrap_or_default()
    }

    async fn connect(&self) -> Result<()> {
        self.conn().await.map(drop)
    }

    fn is_connected(&self) -> bool {
        self.conn
            .try_lock()
            .map(|slot| slot.as_ref().is_some_and(|c| c.agent_lost().is_none()))
            .unwrap_or(true)
    }

    fn last_error(&self) -> Option<Error> {
        lock(&self.last_error).clone()
    }

    async fn health_check(&self) -> Result<()> {
        let conn = self.conn().await?;
        archive::stat_raw(&conn, "/").await.map(drop)
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>> {
        let conn = self.conn().await?;
        process::exec(conn, spec)
            .await
            .inspect_err(|e| self.remember(e))
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        let conn = self.conn().await?;
        Ok(Arc::new(fs::DockerFs::new(conn)))
    }

    async fn platform(&self) -> Result<Platform> {
        let conn = self.conn().await?;
        let variant = image::os_release(&conn).await;
        Ok(Platform {
            os: conn.os.clone(),
            arch: uname_arch(&conn.arch).to_owned(),
            variant,
        })
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<reach_core::TcpTunnel> {
        let conn = self.conn().await?;
        tunnel::open(&conn, host, port).await
    }

    async fn close(&self) -> Result<()> {
        // Dropping the connection closes the agent's exec; the agent then kills what it
        // started.
        self.conn.lock().await.take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_map_both_ways() {
        for (go, uname) in [("amd64", "x86_64"), ("arm64", "aarch64"), ("386", "i686")] {
            assert_eq!(uname_arch(go), uname);
            assert_eq!(go_arch(uname), go);
        }
    }

    #[test]
    fn only_docker_destinations_are_taken() {
        let d = Destination::parse("ssh://h").expect("parses");
        let err = DockerBackend::new(d, DockerOptions::default()).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
