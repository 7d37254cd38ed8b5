//! One connection's state, shared by its channels (who logged in, what the key allows,
//! the containers made for it, the lease it holds), and what every connection shares.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use reach_core::sync::lock;
use reach_core::{Backend, Result};
use russh::{ChannelId, MethodKind, MethodSet};

use crate::auth::{self, AuthorizedKey, FailureLimiter, Permissions};
use crate::backends::{Container, Place, Prepared, Provider};
use crate::config::Config;
use crate::log::Level;
use crate::metrics::Metrics;
use crate::webhook;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub provider: Provider,
    pub metrics: Arc<Metrics>,
    pub limiter: FailureLimiter,
    pub webhook: Option<webhook::Webhook>,
    /// What authentication offers: public keys, and passwords when some user has one.
    pub methods: MethodSet,
    pub next_conn: AtomicU64,
}

/// The methods `config` offers.
pub(crate) fn methods(config: &Config) -> MethodSet {
    let mut kinds = vec![MethodKind::PublicKey];
    if config.auth.users.values().any(|u| u.password.is_some()) {
        kinds.push(MethodKind::Password);
    }
    MethodSet::from(kinds.as_slice())
}

impl Shared {
    /// The keys that may log in as `user`.
    pub(crate) fn keys_for(&self, user: &str, conn: &str) -> Vec<AuthorizedKey> {
        let auth = &self.config.auth;
        let mut files = Vec::new();
        if let Some(own) = auth
            .users
            .get(user)
            .and_then(|u| u.authorized_keys.as_ref())
        {
            files.push(own.clone());
        }
        match &auth.authorized_keys {
            Some(all) => files.push(all.clone()),
            None if auth.users.is_empty() && auth.webhook.is_none() => {
                files.push("~/.ssh/authorized_keys".into());
            }
            None => {}
        }
        let mut keys = Vec::new();
        for template in files {
            let Some(path) = auth::keys_path(&template, user) else {
                continue;
            };
            let (found, skipped) = auth::load_keys(&path);
            for why in skipped {
                crate::log!(
                    Level::Warn,
                    conn,
                    "auth.key_line_skipped",
                    file = path.display(),
                    why = why
                );
            }
            keys.extend(found);
        }
        keys
    }
}

/// One connection's state, shared by its channels.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: String,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) user: OnceLock<String>,
    pub(crate) permissions: Mutex<Permissions>,
    pub(crate) container: tokio::sync::Mutex<Option<(Container, Arc<dyn Backend>)>>,
    pub(crate) channel_containers: Mutex<Vec<Container>>,
    /// The persistent container of its user this connection holds a lease on, if any.
    pub(crate) leased: Mutex<Option<String>>,
}

impl Conn {
    /// The connection id, as it appears in logs and container labels.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The gateway's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// What the accepted key allows.
    pub fn permissions(&self) -> Permissions {
        *lock(&self.permissions)
    }

    /// Whether an `env` request for `name` is accepted.
    pub fn accepts_env(&self, name: &str) -> bool {
        self.shared
            .config
            .session
            .accept_env
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
    }

    /// Whether agent forwarding is allowed for this connection.
    pub fn agent_allowed(&self) -> bool {
        self.shared.config.session.agent_forwarding
            && self.permissions().agent_forwarding
            && self.shared.provider.agent_possible()
    }

    /// Why `ssh -L` is refused on this connection, if it is.
    pub fn forwarding_refused(&self) -> Option<&'static str> {
        if !self.shared.config.session.tcp_forwarding {
            Some("TCP forwarding is off (session.tcp_forwarding)")
        } else if !self.permissions().port_forwarding {
            Some("the key's no-port-forwarding option")
        } else if !self.shared.provider.forwarding_possible() {
            Some("a container per session has no place for forwarded connections")
        } else {
            None
        }
    }

    pub(crate) fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    pub(crate) fn hold(&self, container: &Container) {
        lock(&self.channel_containers).push(container.clone());
    }

    /// Where a new channel's session runs (with the container made for that channel alone).
    pub async fn backend(&self, channel: ChannelId) -> Result<Place> {
        let place = self
            .shared
            .provider
            .backend(
                &self.id,
                u32::from(channel),
                self.user(),
                &self.container,
                &self.leased,
            )
            .await?;
        if let Some(container) = &place.own {
            self.hold(container);
        }
        Ok(place)
    }

    /// In session mode, sets a channel's own container aside (see [`Provider::prepare`]).
    pub fn prepare(&self, channel: ChannelId) -> Result<Option<Prepared>> {
        self.shared.provider.prepare(&self.id, u32::from(channel))
    }

    /// Runs a channel's command as its own container's main process.
    pub async fn run(
        &self,
        prepared: Prepared,
        spec: reach_core::ExecSpec,
    ) -> Result<(Container, Box<dyn reach_core::Process>)> {
        let (container, process) = self
            .shared
            .provider
            .run(prepared, &self.id, self.user(), spec)
            .await?;
        self.hold(&container);
        Ok((container, process))
    }

    /// Removes a channel's own container.
    pub async fn release(&self, container: Container, backend: Option<Arc<dyn Backend>>) {
        lock(&self.channel_containers).retain(|c| c.id() != container.id());
        self.shared
            .provider
            .release(container, backend, &self.id)
            .await;
    }

    /// The connection is over: remove what was made for it.
    pub(crate) async fn finish(&self) {
        let left: Vec<Container> = std::mem::take(&mut *lock(&self.channel_containers));
        for container in left {
            self.shared
                .provider
                .release(container, None, &self.id)
                .await;
        }
        if let Some((container, backend)) = self.container.lock().await.take() {
            self.shared
                .provider
                .release(container, Some(backend), &self.id)
                .await;
        }
        // Only a connection that took a lease gives one back: one that opened no channel
        // must not start the idle timer under another's running session.
        let leased = lock(&self.leased).take();
        if let (Some(user), Some(id)) = (self.user.get(), leased) {
            self.shared.provider.connection_ended(user, &id);
        }
    }

    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip())
    }

    pub(crate) fn failed(&self, method: &str, user: &str, why: &str) {
        self.shared.metrics.auth_failed(method);
        if let Some(ip) = self.ip() {
            self.shared.limiter.fail(ip);
        }
        crate::log!(
            Level::Warn,
            &self.id,
            "auth.refused",
            method = method,
            user = user,
            why = why,
            remote = self.peer.map(|p| p.to_string()).unwrap_or_default()
        );
    }

    pub(crate) fn blocked(&self) -> bool {
        self.ip().is_some_and(|ip| self.shared.limiter.blocked(ip))
    }
}
