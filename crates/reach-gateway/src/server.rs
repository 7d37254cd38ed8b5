//! Connections: authentication (files, passwords, webhook, failure limits), the channels
//! opened on them, and the cleanup when a connection ends for any reason.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use reach_core::sync::lock;
use russh::keys::{HashAlg, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId};

use crate::auth::{self, AuthorizedKey, Permissions};
use crate::conn::{Conn, Shared};
use crate::log::Level;
use crate::webhook;

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
        self.conn.shared.metrics.auth_succeeded();
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
        let Some(hook) = self.conn.shared.webhook.clone() else {
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
        match hook.ask(&query).await {
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
    if shared.limiter.blocked(peer.ip()) {
        metrics.connection_dropped();
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
    metrics.connection_opened();
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
    metrics.connection_closed();
    match outcome {
        Ok(()) => crate::log!(Level::Info, &id, "connection.closed"),
        Err(e) => crate::log!(Level::Info, &id, "connection.closed", error = e),
    }
}
