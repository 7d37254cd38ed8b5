//! Connections: authentication (files, passwords, webhook, failure limits), the per-connection
//! state channels share, and the cleanup when a connection ends for any reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reach_core::sync::lock;
use reach_core::{Backend, Result};
use russh::keys::{HashAlg, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

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
    pub webhook: Option<(webhook::Url, Duration)>,
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
    fn keys_for(&self, user: &str, conn: &str) -> Vec<AuthorizedKey> {
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
    id: String,
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
    user: OnceLock<String>,
    permissions: Mutex<Permissions>,
    container: tokio::sync::Mutex<Option<(Container, Arc<dyn Backend>)>>,
    channel_containers: Mutex<Vec<Container>>,
    /// The persistent container of its user this connection holds a lease on, if any.
    leased: Mutex<Option<String>>,
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

    fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    fn hold(&self, container: &Container) {
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
    async fn finish(&self) {
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

    fn ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip())
    }

    fn failed(&self, method: &str, user: &str, why: &str) {
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

    fn blocked(&self) -> bool {
        self.ip().is_some_and(|ip| self.shared.limiter.blocked(ip))
    }
}

/// The russh handler of one connection.
pub(crate) struct Client {
    conn: Arc<Conn>,
}

impl Client {
    fn reject(&self) -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(self.conn.shared.methods.clone()),
            partial_success: false,
        }
    }

    fn matching_key(&self, user: &str, key: &PublicKey) -> Option<AuthorizedKey> {
        self.conn
            .shared
            .keys_for(user, &self.conn.id)
            .into_iter()
            .find(|k| k.admits(key, self.conn.ip()))
    }

    fn accept(&self, user: &str, method: &str, permissions: Permissions, detail: &str) -> Auth {
        let _ = self.conn.user.set(user.to_owned());
        *lock(&self.conn.permissions) = permissions;
        self.conn
            .shared
            .metrics
            .auth_successes
            .fetch_add(1, Ordering::Relaxed);
        crate::log!(
            Level::Info,
            &self.conn.id,
            "auth.accepted",
            method = method,
            user = user,
            key = detail,
            remote = self.conn.peer.map(|p| p.to_string()).unwrap_or_default()
        );
        Auth::Accept
    }
}

impl russh::server::Handler for Client {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> std::result::Result<Auth, Self::Error> {
        Ok(self.reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        if self.conn.blocked() {
            self.conn.shared.metrics.auth_failed("rate_limit");
            return Ok(self.reject());
        }
        // A key the files do not know is still worth a signature when a webhook may know it.
        if self.conn.shared.webhook.is_some() || self.matching_key(user, offer.public_key).is_some()
        {
            return Ok(Auth::Accept);
        }
        self.conn.failed("publickey", user, "key not authorized");
        Ok(self.reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> std::result::Result<Auth, Self::Error> {
        let key = key.public_key;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if self.conn.blocked() {
            self.conn.shared.metrics.auth_failed("rate_limit");
            return Ok(self.reject());
        }
        if let Some(found) = self.matching_key(user, key) {
            return Ok(self.accept(user, "publickey", found.permissions, &fingerprint));
        }
        let Some((url, timeout)) = self.conn.shared.webhook.clone() else {
            self.conn.failed("publickey", user, "key not authorized");
            return Ok(self.reject());
        };
        let remote = self.conn.peer.map(|p| p.to_string()).unwrap_or_default();
        let algorithm = key.algorithm();
        let query = webhook::Query {
            user,
            fingerprint: &fingerprint,
            key_type: algorithm.as_str(),
            remote_address: &remote,
            connection: &self.conn.id,
        };
        match webhook::ask(&url, timeout, &query).await {
            Ok(true) => Ok(self.accept(user, "webhook", Permissions::ALL, &fingerprint)),
            Ok(false) => {
                self.conn
                    .failed("webhook", user, "the webhook denied the key");
                Ok(self.reject())
            }
            Err(e) => {
                self.conn
                    .failed("webhook", user, &format!("webhook error, denied: {e}"));
                Ok(self.reject())
            }
        }
    }

    async fn auth_password(
        &mut self,
        user: &str,
        password: &str,
    ) -> std::result::Result<Auth, Self::Error> {
        if self.conn.blocked() {
            self.conn.shared.metrics.auth_failed("rate_limit");
            return Ok(self.reject());
        }
        let hash = self
            .conn
            .shared
            .config
            .auth
            .users
            .get(user)
            .and_then(|u| u.password.clone());
        let Some(hash) = hash else {
            self.conn
                .failed("password", user, "no password for this user");
            return Ok(self.reject());
        };
        // argon2 is slow on purpose; keep it off the connection's task.
        let password = zeroize::Zeroizing::new(password.to_owned());
        let matched = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        if matched {
            Ok(self.accept(user, "password", Permissions::ALL, ""))
        } else {
            self.conn.failed("password", user, "wrong password");
            Ok(self.reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(crate::channel::run(
            channel,
            self.conn.clone(),
            session.handle(),
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        // Answered once the connection is made (or not), without holding up the others.
        tokio::spawn(crate::forward::direct_tcpip(
            channel,
            self.conn.clone(),
            crate::forward::Request {
                host: host_to_connect.to_owned(),
                port: port_to_connect,
                origin: format!("{originator_address}:{originator_port}"),
            },
            reply,
        ));
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> std::result::Result<bool, Self::Error> {
        Ok(self.conn.agent_allowed())
    }
}

/// Serves one accepted TCP connection to its end, then cleans up after it.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    config: Arc<russh::server::Config>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let n = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let id = format!("c{n}");
    let metrics = shared.metrics.clone();
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    if shared.limiter.blocked(peer.ip()) {
        metrics.auth_failed("rate_limit");
        crate::log!(
            Level::Warn,
            &id,
            "connection.refused",
            remote = peer,
            why = "too many failed logins"
        );
        return;
    }
    metrics.connections_active.fetch_add(1, Ordering::Relaxed);
    crate::log!(Level::Info, &id, "connection.opened", remote = peer);
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Conn {
        id: id.clone(),
        peer: Some(peer),
        shared: shared.clone(),
        user: OnceLock::new(),
        permissions: Mutex::new(Permissions::ALL),
        container: tokio::sync::Mutex::new(None),
        channel_containers: Mutex::new(Vec::new()),
        leased: Mutex::new(None),
    });
    let handler = Client { conn: conn.clone() };
    let outcome = match russh::server::run_stream(config, stream, handler).await {
        Ok(session) => session.await,
        Err(e) => Err(e),
    };
    conn.finish().await;
    metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Ok(()) => crate::log!(Level::Info, &id, "connection.closed"),
        Err(e) => crate::log!(Level::Info, &id, "connection.closed", error = e),
    }
}
