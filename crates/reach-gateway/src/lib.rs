//! `reach serve`: an SSH gateway. Any OpenSSH client connects; the gateway authenticates it
//! (authorized_keys files, argon2 passwords, an HTTP webhook; failures limited per address)
//! and runs each of its channels — `exec`, `shell` with a PTY, the `sftp` subsystem — on a
//! reach backend: the local host, or a Docker container per connection, per channel or per
//! user. Containers are labelled with the gateway instance and removed when their connection
//! ends, when the client stops answering keepalives, and at the next start after a crash.
//!
//! ```no_run
//! # async fn run() -> reach_core::Result<()> {
//! let mut gateway = reach_gateway::Gateway::start(reach_gateway::Config::default()).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.wait().await;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod auth;
pub mod backends;
mod channel;
pub mod config;
pub(crate) mod conn;
mod forward;
pub mod log;
pub mod metrics;
mod server;
pub mod sftp;
pub mod state;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use reach_core::{Error, Result};
use tokio::net::TcpListener;

pub use config::Config;
use conn::Shared;
use log::Level;
use metrics::Metrics;

/// What a client may send on one channel before the gateway consumes it (see the russh
/// config in [`Gateway::start`]).
const WINDOW: u32 = 8 * 1024 * 1024;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    instance: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Checks the config, loads (or makes) the host key, reaps containers a crashed run of
    /// this instance left, and starts listening.
    pub async fn start(config: Config) -> Result<Gateway> {
        config.validate()?;
        // The webhook's URL, CA, client certificate and secret are checked before anything
        // else starts.
        let webhook = match &config.auth.webhook {
            Some(hook) => Some(webhook::Webhook::new(hook)?),
            None => None,
        };
        let state_dir = config.state_dir();
        state::ensure_dir(&state_dir)?;
        let host_key = state::host_key(&state_dir)?;
        let instance = state::instance_id(&state_dir, config.instance.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let provider = backends::Provider::new(
            &config.backend,
            &instance,
            config.session.agent_forwarding,
            metrics.clone(),
        )
        .await?;

        let methods = conn::methods(&config);
        let ssh = russh::server::Config {
            server_id: russh::SshId::Standard(
                concat!("SSH-2.0-reach_", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: methods.clone(),
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: config.keepalive(),
            keepalive_max: config.keepalive_max,
            nodelay: true,
            // The patched russh (vendor/russh) reopens a channel's window as its data is
            // consumed, so the window bounds what a channel holds: room for a window in
            // 16-byte pieces keeps the connection's loop from ever waiting on one
            // channel's queue. 8 MiB rather than russh's 2: reopened only as the data is
            // consumed, 2 MiB held an SFTP upload to about three quarters of its speed.
            window_size: WINDOW,
            channel_buffer_size: (WINDOW / 16) as usize,
            ..Default::default()
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(format!("listening on {}", config.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listening address", e))?;
        let (metrics_addr, metrics_task) = match config.metrics.listen {
            Some(at) => {
                let (bound, task) = metrics::serve(at, metrics.clone()).await?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        let limiter = auth::FailureLimiter::new(
            config.auth.max_failures,
            Duration::from_secs(config.auth.failure_window_secs),
        );
        let shared = Arc::new(Shared {
            config,
            provider,
            metrics,
            limiter,
            webhook,
            methods,
            next_conn: AtomicU64::new(1),
        });
        crate::log!(
            Level::Info,
            "",
            "gateway.listening",
            addr = addr,
            instance = instance,
            backend = format!("{:?}", shared.config.backend.kind).to_lowercase(),
            metrics = metrics_addr.map(|a| a.to_string()).unwrap_or_default()
        );
        let ssh = Arc::new(ssh);
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(server::serve_connection(
                            accepting.clone(),
                            ssh.clone(),
                            stream,
                            peer,
                        ));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        crate::log!(Level::Error, "", "accept.failed", error = e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Gateway {
            addr,
            metrics_addr,
            instance,
            shared,
            accept,
            metrics_task,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The instance id its containers are labelled with (`reach.gateway=ID`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Runs until the accept loop ends (it does not, unless the task is cancelled).
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }

    /// Stops accepting and removes every container of this instance.
    pub async fn shutdown(self) {
        self.accept.abort();
        if let Some(task) = &self.metrics_task {
            task.abort();
        }
        self.shared.provider.shutdown().await;
        crate::log!(Level::Info, "", "gateway.stopped", instance = self.instance);
    }
}
