//! [`PluginBackend`]: a destination whose scheme an adapter serves.
//!
//! `connect` opens the adapter (its pin checked on the open file, see [`VerifiedProgram`]),
//! asks it `--capabilities` (the protocol version checked), starts it once more as the
//! session and sends `connect`; all within the connect timeout. Commands, files and TCP
//! connections then share that one session.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reach_core::sync::lock;
use reach_core::{
    Backend, BackendKind, Capabilities, Capability, Destination, Error, ErrorKind, ExecSpec,
    FileSystem, Platform, Process, Result, StdinMode, TcpTunnel,
};
use serde::Deserialize;
use serde_json::json;

use crate::files::PluginFs;
use crate::input;
use crate::pipe::StreamReader;
use crate::probe::{probe, AdapterInfo, PROTOCOL};
use crate::process::PluginProcess;
use crate::resolve::{resolve, Adapter};
use crate::session::{Session, WINDOW};
use crate::verified::VerifiedProgram;
use crate::wire::Stream;
use crate::PluginSettings;

/// How plugin destinations are served.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The user's `[plugins]` configuration.
    pub settings: PluginSettings,
    /// Run adapters that have no pin (`--allow-unpinned-plugin`).
    pub allow_unpinned: bool,
    /// How long starting an adapter and its `connect` may take.
    pub connect_timeout: Duration,
    /// Copy every control line of each session to this file (`> ` to the adapter, `< ` from
    /// it), for adapter authors; stream bytes are not copied.
    pub transcript: Option<PathBuf>,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            settings: PluginSettings::default(),
            allow_unpinned: false,
            connect_timeout: Duration::from_secs(15),
            transcript: None,
        }
    }
}

/// What an adapter said when it connected.
#[derive(Debug, Clone, Deserialize)]
struct Connected {
    #[serde(default)]
    user: Option<String>,
    platform: PlatformAnswer,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformAnswer {
    os: String,
    arch: String,
    #[serde(default)]
    variant: Option<String>,
}

/// A live session and what it said.
#[derive(Debug, Clone)]
struct Live {
    session: Arc<Session>,
    connected: Connected,
    capabilities: Capabilities,
    /// The features it claimed (`exec`, `stdin`, each file operation, ...).
    features: Arc<BTreeSet<String>>,
}

/// A target served by an adapter (`lxd://web`, `incus://x`, ...).
#[derive(Debug)]
pub struct PluginBackend {
    destination: Destination,
    adapter: Adapter,
    options: PluginOptions,
    live: tokio::sync::Mutex<Option<Live>>,
    /// The capabilities last probed (none before the first connect).
    probed: Mutex<Capabilities>,
    last_error: Mutex<Option<Error>>,
}

/// The capabilities an adapter's features give; only those the protocol carries.
fn capabilities(info: &AdapterInfo) -> Capabilities {
    let carried = [
        Capability::Signals,
        Capability::Pty,
        Capability::Tcp,
        Capability::Sha256,
        Capability::HashedWrite,
        Capability::SetModified,
    ];
    let claimed = info.feature_names();
    carried
        .into_iter()
        .filter(|c| claimed.contains(&c.as_str()))
        .fold(Capabilities::none(), Capabilities::with)
}

impl PluginBackend {
    /// The backend for `destination`, whose scheme no built-in backend serves: the adapter
    /// is found and judged now (not yet run).
    pub fn new(destination: Destination, options: PluginOptions) -> Result<PluginBackend> {
        let adapter = resolve(
            destination.scheme(),
            &options.settings,
            options.allow_unpinned,
        )?;
        Ok(PluginBackend {
            destination,
            adapter,
            options,
            live: tokio::sync::Mutex::new(None),
            probed: Mutex::new(Capabilities::none()),
            last_error: Mutex::new(None),
        })
    }

    /// The adapter that serves this destination.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    fn name(&self) -> String {
        format!("adapter `{}`", self.adapter.path.display())
    }

    async fn start(&self) -> Result<Live> {
        let limit = self.options.connect_timeout;
        let program = VerifiedProgram::open(&self.adapter.path, self.adapter.trust)?;
        let info = probe(&self.adapter, &program, limit).await?;
        let mut command = program.command()?;
        command
            .args(&self.adapter.args)
            .envs(&self.adapter.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("start {}", self.name()), e))?;
        let transcript = match &self.options.transcript {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("open transcript `{}`", path.display()), e))?,
            ),
            None => None,
        };
        let session = Session::start(child, self.name(), transcript)?;
        let destination = &self.destination;
        let answer = session
            .request(
                "connect",
                json!({
                    "protocol": PROTOCOL,
                    "destination": destination.to_string(),
                    "scheme": destination.scheme(),
                    "user": destination.user(),
                    "host": destination.host(),
                    "port": destination.port(),
                    "window": WINDOW,
                }),
                Some(limit),
            )
            .await?;
        let connected: Connected = serde_json::from_value(answer).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("{} answered `connect` with {e}", self.name()),
            )
        })?;
        let capabilities = capabilities(&info);
        *lock(&self.probed) = capabilities;
        let features = info
            .feature_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(Live {
            session,
            connected,
            capabilities,
            features: Arc::new(features),
        })
    }

    /// The live session, connecting first when there is none (or it was lost).
    async fn live(&self) -> Result<Live> {
        let mut live = self.live.lock().await;
        if let Some(current) = live.as_ref() {
            match current.session.lost() {
                None => return Ok(current.clone()),
                // Commands in flight already failed with this; a new call reconnects.
                Some(e) => *lock(&self.last_error) = Some(e),
            }
        }
        match self.start().await {
            Ok(started) => {
                *live = Some(started.clone());
                Ok(started)
            }
            Err(e) => {
                *lock(&self.last_error) = Some(e.clone());
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Backend for PluginBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Plugin
    }

    fn capabilities(&self) -> Capabilities {
        *lock(&self.probed)
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        self.destination.host().to_owned()
    }

    fn user(&self) -> String {
        self.live
            .try_lock()
            .ok()
            .and_then(|live| live.as_ref().and_then(|l| l.connected.user.clone()))
            .or_else(|| self.destination.user().map(str::to_owned))
            .unwrap_or_default()
    }

    async fn connect(&self) -> Result<()> {
        self.live().await.map(drop)
    }

    fn is_connected(&self) -> bool {
        self.live
            .try_lock()
            .ok()
            .is_some_and(|live| live.as_ref().is_some_and(|l| l.session.lost().is_none()))
    }

    fn last_error(&self) -> Option<Error> {
        lock(&self.last_error).clone()
    }

    async fn health_check(&self) -> Result<()> {
        let live = self.live().await?;
        // Any answer is a live adapter, `unsupported` from one that serves no files too.
        match live
            .session
            .request("home_dir", json!({}), Some(self.options.connect_timeout))
            .await
        {
            Err(e) if e.kind() != ErrorKind::Unsupported => Err(e),
            _ => Ok(()),
        }
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>> {
        let live = self.live().await?;
        let needs = [
            ("exec", true, "running commands"),
            (
                "stdin",
                matches!(spec.stdin, StdinMode::Piped),
                "a command's input",
            ),
            ("pty", spec.pty.is_some(), "terminals (PTYs)"),
        ];
        for (feature, needed, what) in needs {
            if needed && !live.features.contains(feature) {
                return Err(Error::unsupported(&self.name(), what));
            }
        }
        Ok(Box::new(PluginProcess::start(live.session, spec).await?))
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        let live = self.live().await?;
        Ok(Arc::new(PluginFs::new(
            live.session,
            live.capabilities,
            live.features,
        )))
    }

    async fn platform(&self) -> Result<Platform> {
        let platform = self.live().await?.connected.platform;
        Ok(Platform {
            os: platform.os,
            arch: platform.arch,
            variant: platform.variant,
        })
    }

    async fn close(&self) -> Result<()> {
        let live = self.live.lock().await.take();
        if let Some(live) = live {
            if live.session.lost().is_none() {
                // A polite end; the session's drop ends the adapter regardless.
                let _ = live
                    .session
                    .request("close", json!({}), Some(Duration::from_secs(5)))
                    .await;
            }
        }
        Ok(())
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpTunnel> {
        let live = self.live().await?;
        if !live.capabilities.has(Capability::Tcp) {
            return Err(Error::unsupported(&self.name(), "TCP connections"));
        }
        let session = live.session;
        let (id, _, pipes) = session
            .open("connect_tcp", json!({"host": host, "port": port}))
            .await?;
        Ok(TcpTunnel {
            reader: Box::pin(StreamReader::new(
                pipes.stdout,
                session.clone(),
                id,
                Stream::Stdout,
            )),
            writer: input::stdin(session, id, pipes.credit),
        })
    }
}
