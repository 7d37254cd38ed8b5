//! reach: run commands and move files on any machine through one interface.
//!
//! This is the crate a program depends on. It re-exports the core types of `reach-core` and
//! owns the scheme [`Registry`], which turns a [`Destination`] into an `Arc<dyn Backend>`.
//!
//! ```no_run
//! # async fn demo() -> reach::Result<()> {
//! use reach::{ExecSpec, ProcessExt};
//! let backend = reach::connect("local").await?;
//! let output = backend.exec(ExecSpec::argv(["uname", "-a"])).await?.output().await?;
//! assert!(output.status.success());
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! Each backend is a feature:
//! - `local` (default): the local host, from `reach-local`.
//! - `ssh` (default): SSH servers with SFTP, from `reach-ssh` (re-exported as [`ssh`]);
//!   `ssh://[user@]host[:port]` and the bare `[user@]host[:port]` resolve to it.
//! - `docker` (default): running containers through the Docker Engine API, from
//!   `reach-docker` (re-exported as [`docker`]); `docker://[user@]container`.
//! - `proot` (default): a root file system on this host, entered with Debian's `proot`
//!   (`proot://DIR`), from `reach-proot` (re-exported as [`proot`]).
//! - `plugin` (default): every other scheme, served by the user's pinned adapter
//!   `reach-backend-<scheme>` (from `reach-plugin`, re-exported as [`plugin`];
//!   docs/PLUGINS.md).
//!
//! [`fanout`] runs one command on many targets at once.
//!
//! A scheme whose feature is off is refused with [`ErrorKind::Unsupported`], naming it.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use reach_core::*;
#[cfg(feature = "docker")]
pub use reach_docker as docker;
#[cfg(feature = "plugin")]
pub use reach_plugin as plugin;
#[cfg(feature = "proot")]
pub use reach_proot as proot;
#[cfg(feature = "ssh")]
pub use reach_ssh as ssh;
/// Copies between any two targets: streamed, verified, atomic, resumable (`reach-transfer`).
pub use reach_transfer as transfer;

pub mod fanout;

/// How backends connect, beyond what a destination says (one field per backend that has
/// settings; unset values fall back to each backend's own defaults and configuration).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Settings for `ssh` destinations.
    #[cfg(feature = "ssh")]
    pub ssh: reach_ssh::SshOptions,
    /// Settings for `docker` destinations.
    #[cfg(feature = "docker")]
    pub docker: reach_docker::DockerOptions,
    /// Settings for `proot` destinations.
    #[cfg(feature = "proot")]
    pub proot: reach_proot::ProotOptions,
    /// Settings for destinations served by plugin adapters.
    #[cfg(feature = "plugin")]
    pub plugin: reach_plugin::PluginOptions,
}

/// Makes a backend for a destination of the scheme it is registered under.
pub type Factory = Arc<dyn Fn(&Destination) -> Result<Arc<dyn Backend>> + Send + Sync>;

/// Which backend serves which scheme.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
    /// What serves a scheme that no factory does (plugin adapters), if anything.
    fallback: Option<Factory>,
}

/// Schemes that reach will serve but this build does not.
const PLANNED: &[(&str, &str)] = &[
    ("ssh", "the SSH backend"),
    ("docker", "the Docker backend"),
    ("proot", "the proot backend"),
];

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry {
            factories: BTreeMap::new(),
            fallback: None,
        }
    }

    /// Every backend compiled into this build, with default settings.
    pub fn with_defaults() -> Self {
        Self::with_options(&ConnectOptions::default())
    }

    /// Every backend compiled into this build, with `options`.
    #[allow(unused_variables)]
    pub fn with_options(options: &ConnectOptions) -> Self {
        #[allow(unused_mut)]
        let mut registry = Self::empty();
        #[cfg(feature = "ssh")]
        {
            let ssh = options.ssh.clone();
            registry.register("ssh", move |destination| {
                Ok(Arc::new(reach_ssh::SshBackend::new(
                    destination.clone(),
                    ssh.clone(),
                )?) as Arc<dyn Backend>)
            });
        }
        #[cfg(feature = "docker")]
        {
            let docker = options.docker.clone();
            registry.register("docker", move |destination| {
                Ok(Arc::new(reach_docker::DockerBackend::new(
                    destination.clone(),
                    docker.clone(),
                )?) as Arc<dyn Backend>)
            });
        }
        #[cfg(feature = "proot")]
        {
            let proot = options.proot.clone();
            registry.register("proot", move |destination| {
                Ok(Arc::new(reach_proot::ProotBackend::new(
                    destination.clone(),
                    proot.clone(),
                )?) as Arc<dyn Backend>)
            });
        }
        #[cfg(feature = "local")]
        registry.register("local", |_| {
            Ok(Arc::new(reach_local::LocalBackend::new()) as Arc<dyn Backend>)
        });
        #[cfg(feature = "plugin")]
        {
            let plugin = options.plugin.clone();
            registry.set_fallback(move |destination| {
                Ok(Arc::new(reach_plugin::PluginBackend::new(
                    destination.clone(),
                    plugin.clone(),
                )?) as Arc<dyn Backend>)
            });
        }
        registry
    }

    /// Serves every scheme no factory serves with `factory` (the plugin adapters, in a
    /// build with them), replacing any earlier one.
    pub fn set_fallback<F>(&mut self, factory: F)
    where
        F: Fn(&Destination) -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    {
        self.fallback = Some(Arc::new(factory));
    }

    /// Serves `scheme` with `factory`, replacing any earlier one.
    pub fn register<F>(&mut self, scheme: &str, factory: F)
    where
        F: Fn(&Destination) -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    {
        self.factories
            .insert(scheme.to_ascii_lowercase(), Arc::new(factory));
    }

    /// The schemes served, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// A backend for `destination` (not yet connected).
    pub fn backend(&self, destination: &Destination) -> Result<Arc<dyn Backend>> {
        let scheme = destination.scheme();
        if let Some(factory) = self.factories.get(scheme) {
            return factory(destination);
        }
        let known = self.schemes().join(", ");
        match PLANNED.iter().find(|(s, _)| *s == scheme) {
            Some((_, what)) => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "`{destination}` needs {what}, which this build of reach does not include \
                     (it serves: {known})"
                ),
            )),
            None => match &self.fallback {
                // No adapter either: the scheme is unknown, and the adapter's error says
                // what was looked for and how to add one.
                Some(fallback) => fallback(destination).map_err(|e| match e.kind() {
                    ErrorKind::NotFound => Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "unknown scheme `{scheme}` in destination `{destination}` (built \
                             in: {known}); {}",
                            e.message()
                        ),
                    ),
                    _ => e,
                }),
                None => Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "unknown scheme `{scheme}` in destination `{destination}`: expected \
                         one of {known}"
                    ),
                )),
            },
        }
    }

    /// Parses `destination` and makes its backend (not yet connected).
    pub fn resolve(&self, destination: &str) -> Result<Arc<dyn Backend>> {
        self.backend(&Destination::parse(destination)?)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_defaults()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

/// Parses `destination`, makes its backend with the default registry and connects it.
pub async fn connect(destination: &str) -> Result<Arc<dyn Backend>> {
    let backend = Registry::with_defaults().resolve(destination)?;
    backend.connect().await?;
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_planned_schemes_are_refused_by_name() {
        let registry = Registry::with_defaults();
        let err = registry.resolve("nosuch://x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("unknown scheme `nosuch`"), "{err}");
        assert!(err.to_string().contains("local"), "{err}");
        #[cfg(feature = "plugin")]
        assert!(err.to_string().contains("reach-backend-nosuch"), "{err}");
        let err = registry.resolve("ssh://@:99999").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn a_scheme_left_out_of_the_build_is_named() {
        let mut registry = Registry::empty();
        registry.register("local", |_| Err(Error::new(ErrorKind::Io, "unused")));
        let err = registry.resolve("docker://box").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("Docker backend"), "{err}");
    }

    /// A scheme no built-in backend serves goes to its adapter, pinned in the options.
    #[cfg(feature = "plugin")]
    #[test]
    fn other_schemes_resolve_to_their_plugin_adapter() {
        let mut options = ConnectOptions::default();
        options.plugin.settings.adapters.insert(
            "lxd".to_owned(),
            reach_plugin::AdapterConfig {
                path: Some("/bin/true".into()),
                sha256: Some("00".repeat(32)),
                ..Default::default()
            },
        );
        let registry = Registry::with_options(&options);
        let backend = registry.resolve("lxd://web").unwrap();
        assert_eq!(backend.kind(), BackendKind::Plugin);
        assert_eq!(backend.destination().to_string(), "lxd://web");
        // Unpinned and not allowed: refused as it is, not as an unknown scheme.
        options
            .plugin
            .settings
            .adapters
            .get_mut("lxd")
            .unwrap()
            .sha256 = None;
        let err = Registry::with_options(&options)
            .resolve("lxd://web")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    }

    #[cfg(feature = "ssh")]
    #[test]
    fn bare_hosts_and_ssh_urls_resolve_to_ssh() {
        let registry = Registry::with_options(&ConnectOptions {
            ssh: reach_ssh::SshOptions {
                no_config: true,
                ..Default::default()
            },
            ..Default::default()
        });
        for destination in ["user@example.org", "example.org:2222", "ssh://u@h:22"] {
            let backend = registry.resolve(destination).unwrap();
            assert_eq!(backend.kind(), BackendKind::Ssh, "{destination}");
        }
        assert_eq!(
            registry.resolve("example.org:2222").unwrap().addr(),
            "example.org:2222"
        );
    }

    #[cfg(feature = "docker")]
    #[test]
    fn docker_urls_resolve_to_docker() {
        let backend = Registry::with_defaults()
            .resolve("docker://app@web-1")
            .unwrap();
        assert_eq!(
            (backend.kind(), backend.user()),
            (BackendKind::Docker, "app".to_owned())
        );
    }

    #[tokio::test]
    async fn connects_to_local_by_name() {
        let backend = connect("local").await.unwrap();
        assert_eq!(backend.kind(), BackendKind::Local);
        let out = backend
            .exec(ExecSpec::argv(["printf", "hi"]))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hi");
    }
}
