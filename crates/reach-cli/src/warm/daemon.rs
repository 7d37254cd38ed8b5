//! The connection daemon: `reach connections daemon`, started by the first call that wants a
//! warm connection. One per user, found by its socket in the runtime directory.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use reach::ssh::zeroize::Zeroizing;
use reach::sync::lock;
use reach::{Backend, Destination, Error, ErrorKind, ExitStatus, Process, Registry, Signal};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};

use super::{frame, read_frame, write_frame, ExecRequest, Request};

/// One warm connection.
struct Entry {
    key: String,
    destination: String,
    backend: Arc<dyn Backend>,
    created: Instant,
    last_used: Instant,
    uses: u64,
    running: usize,
}

/// What the daemon holds.
struct State {
    entries: Mutex<Vec<Entry>>,
    idle: Duration,
    /// When a client last came or went.
    last_activity: Mutex<Instant>,
    /// Clients connected right now.
    clients: Mutex<usize>,
    started: Instant,
    stop: Notify,
}

/// Runs the daemon until it has been idle for `idle`, is told to stop, or gets SIGTERM/SIGINT.
/// Exits at once (0) when another daemon holds the lock.
pub async fn serve(idle: Duration) -> reach::Result<i32> {
    let dir = super::runtime_dir().map_err(|e| Error::new(ErrorKind::PermissionDenied, e))?;
    let Some(_lock) = take_lock(&dir.join(super::lock_name())).await? else {
        tracing::info!("daemon {}: another daemon is running", std::process::id());
        return Ok(0);
    };
    let socket = dir.join(super::socket_name());
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| Error::io(format!("listen on `{}`", socket.display()), e))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod `{}`", socket.display()), e))?;
    let listen = |kind: SignalKind| signal(kind).map_err(|e| Error::io("listen for signals", e));
    let (mut terminate, mut interrupt, mut hangup) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
        listen(SignalKind::hangup())?,
    );
    tracing::info!(
        "daemon {}: serving uid {} on {} (idle {idle:?})",
        std::process::id(),
        super::uid(),
        socket.display()
    );
    let state = Arc::new(State {
        entries: Mutex::new(Vec::new()),
        idle,
        last_activity: Mutex::new(Instant::now()),
        clients: Mutex::new(0),
        started: Instant::now(),
        stop: Notify::new(),
    });
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(client(state.clone(), stream));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = tick.tick() => {
                if state.sweep() {
                    break;
                }
            }
            _ = state.stop.notified() => break,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {}
        }
    }
    let _ = std::fs::remove_file(&socket);
    let closing: Vec<_> = lock(&state.entries).drain(..).map(|e| e.backend).collect();
    for backend in closing {
        let _ = tokio::time::timeout(Duration::from_secs(2), backend.close()).await;
    }
    tracing::info!("daemon {}: stopped", std::process::id());
    Ok(0)
}

/// Takes the daemon lock, waiting up to a second for a daemon that is exiting; `None` when
/// another daemon keeps it.
async fn take_lock(path: &Path) -> reach::Result<Option<Flock<std::fs::File>>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("open `{}`", path.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(Some(held)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => {
                return Err(Error::io(
                    format!("lock `{}`", path.display()),
                    std::io::Error::from(errno),
                ))
            }
        }
    }
}

impl State {
    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    /// Closes connections unused for the idle time; whether the daemon should now exit
    /// (nothing held, no client, idle).
    fn sweep(&self) -> bool {
        let mut entries = lock(&self.entries);
        let (stale, kept): (Vec<Entry>, Vec<Entry>) = entries
            .drain(..)
            .partition(|e| e.running == 0 && e.last_used.elapsed() >= self.idle);
        *entries = kept;
        for entry in stale {
            tracing::info!("closing idle {}", entry.destination);
            tokio::spawn(async move { entry.backend.close().await });
        }
        entries.is_empty()
            && *lock(&self.clients) == 0
            && lock(&self.last_activity).elapsed() >= self.idle
    }

    /// The backend for `request`, made now if there is none; `true` with it when it was
    /// already there (a warm connection, which may have died since).
    fn checkout(&self, request: &ExecRequest) -> reach::Result<(Arc<dyn Backend>, bool)> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.iter_mut().find(|e| e.key == request.key) {
            entry.uses += 1;
            entry.running += 1;
            entry.last_used = Instant::now();
            return Ok((entry.backend.clone(), true));
        }
        let destination = Destination::parse(&request.destination)?;
        let backend = Registry::with_options(&request.conn.options(None)).backend(&destination)?;
        entries.push(Entry {
            key: request.key.clone(),
            destination: request.destination.clone(),
            backend: backend.clone(),
            created: Instant::now(),
            last_used: Instant::now(),
            uses: 1,
            running: 1,
        });
        Ok((backend, false))
    }

    /// A command on `key` ended.
    fn checkin(&self, key: &str) {
        if let Some(entry) = lock(&self.entries).iter_mut().find(|e| e.key == key) {
            entry.running = entry.running.saturating_sub(1);
            entry.last_used = Instant::now();
        }
    }

    /// Drops the connection `backend` under `key` (it failed); a newer one stays.
    fn forget(&self, key: &str, backend: &Arc<dyn Backend>) {
        lock(&self.entries).retain(|e| !(e.key == key && Arc::ptr_eq(&e.backend, backend)));
    }

    fn list(&self) -> Value {
        let entries = lock(&self.entries);
        let connections: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "destination": e.destination,
                    "key": e.key,
                    "connected": e.backend.is_connected(),
                    "age_s": e.created.elapsed().as_secs(),
                    "idle_s": e.last_used.elapsed().as_secs(),
                    "uses": e.uses,
                    "running": e.running,
                })
            })
            .collect();
        json!({
            "running": true,
            "pid": std::process::id(),
            "uid": super::uid(),
            "uptime_s": self.started.elapsed().as_secs(),
            "idle_timeout_s": self.idle.as_secs_f64(),
            "connections": connections,
        })
    }

    fn close(&self, destinations: &[String]) -> usize {
        let mut entries = lock(&self.entries);
        let (closed, kept): (Vec<Entry>, Vec<Entry>) = entries
            .drain(..)
            .partition(|e| destinations.is_empty() || destinations.contains(&e.destination));
        *entries = kept;
        let count = closed.len();
        for entry in closed {
            // Commands still running keep their own reference; the connection goes with the
            // last of them.
            tokio::spawn(async move {
                if entry.running == 0 {
                    let _ = entry.backend.close().await;
                }
            });
        }
        count
    }
}

/// Counts a client while it is connected.
struct ClientGuard(Arc<State>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut clients = lock(&self.0.clients);
        *clients = clients.saturating_sub(1);
        drop(clients);
        self.0.touch();
    }
}

/// Serves one client connection: one request.
async fn client(state: Arc<State>, stream: UnixStream) {
    let me = super::uid();
    let peer = stream.peer_cred().map(|c| c.uid());
    let (mut from, mut to) = stream.into_split();
    if peer.as_ref().ok() != Some(&me) {
        let who = match peer {
            Ok(uid) => format!("uid {uid}"),
            Err(e) => format!("an unknown peer ({e})"),
        };
        tracing::warn!("refused a connection from {who}");
        let err = Error::new(
            ErrorKind::PermissionDenied,
            format!("this reach connection daemon serves uid {me} only; {who} was refused"),
        );
        let _ = write_frame(&mut to, frame::FAILED, &super::error_json(&err)).await;
        return;
    }
    *lock(&state.clients) += 1;
    state.touch();
    let _guard = ClientGuard(state.clone());
    let request = match read_frame(&mut from).await {
        Ok(Some((frame::REQUEST, payload))) => {
            let payload = Zeroizing::new(payload);
            serde_json::from_slice::<Request>(&payload).map_err(|e| e.to_string())
        }
        Ok(Some((kind, _))) => Err(format!("expected a request, got frame {kind}")),
        Ok(None) => return,
        Err(e) => Err(e.to_string()),
    };
    let reply = match request {
        Err(message) => {
            let err = Error::new(ErrorKind::Protocol, format!("bad request: {message}"));
            let _ = write_frame(&mut to, frame::FAILED, &super::error_json(&err)).await;
            return;
        }
        Ok(Request::Exec(request)) => return exec(&state, *request, from, to).await,
        Ok(Request::List) => state.list(),
        Ok(Request::Close { destinations }) => json!({"closed": state.close(&destinations)}),
        Ok(Request::Stop) => {
            state.stop.notify_one();
            json!({"stopped": true, "pid": std::process::id()})
        }
    };
    let _ = write_frame(&mut to, frame::REPLY, reply.to_string().as_bytes()).await;
}

/// Runs one command for a client and streams it back.
async fn exec(
    state: &Arc<State>,
    request: ExecRequest,
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
) {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    if request.conn.settings.home != home {
        let why = format!(
            "the connection daemon runs with HOME={}, this call with HOME={}",
            show(home.as_deref()),
            show(request.conn.settings.home.as_deref())
        );
        let _ = write_frame(&mut to, frame::UNAVAILABLE, why.as_bytes()).await;
        return;
    }
    let spec = request.spec();
    let process = match start(state, &request, spec).await {
        Ok(process) => process,
        Err((err, connecting)) => {
            let mut body = super::error_value(&err);
            body["connecting"] = Value::Bool(connecting);
            let _ = write_frame(&mut to, frame::FAILED, body.to_string().as_bytes()).await;
            return;
        }
    };
    let running = Running {
        state: state.clone(),
        key: request.key.clone(),
    };
    if write_frame(&mut to, frame::STARTED, b"").await.is_err() {
        return;
    }
    relay(Arc::from(process), from, to).await;
    drop(running);
}

fn show(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| "(unset)".into())
}

/// A failure to start, and whether it happened while connecting (as opposed to starting the
/// command on a connection that works).
type StartError = (Error, bool);

/// Starts the command on the warm connection; if that connection turns out to be dead
/// (nothing ran), once more on a new one.
async fn start(
    state: &Arc<State>,
    request: &ExecRequest,
    spec: reach::ExecSpec,
) -> Result<Box<dyn Process>, StartError> {
    let mut retried = false;
    loop {
        let (backend, warm) = state.checkout(request).map_err(|e| (e, true))?;
        let attempt = async {
            backend.connect().await.map_err(|e| (e, true))?;
            backend.exec(spec.clone()).await.map_err(|e| (e, false))
        };
        match attempt.await {
            Ok(process) => return Ok(process),
            Err((err, connecting)) => {
                state.checkin(&request.key);
                let stale = warm && !retried && err.kind().is_transport();
                if stale || !backend.is_connected() {
                    state.forget(&request.key, &backend);
                }
                if !stale {
                    return Err((err, connecting));
                }
                retried = true;
            }
        }
    }
}

/// Marks a command on a connection as running until dropped.
struct Running {
    state: Arc<State>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.state.checkin(&self.key);
    }
}

/// Wires a started process to the client: stdout/stderr frames out, stdin and signals in,
/// then the exit frame once both output streams have ended. A client that goes away takes
/// the process with it (dropping a process kills it).
async fn relay(process: Arc<dyn Process>, mut from: OwnedReadHalf, to: OwnedWriteHalf) {
    let (frames, mut outgoing) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let writer = tokio::spawn(async move {
        let mut to = to;
        while let Some((kind, payload)) = outgoing.recv().await {
            if write_frame(&mut to, kind, &payload).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let pumps: Vec<_> = [
        (process.take_stdout(), frame::STDOUT),
        (process.take_stderr(), frame::STDERR),
    ]
    .into_iter()
    .filter_map(|(stream, kind)| stream.map(|s| (s, kind)))
    .map(|(mut stream, kind)| {
        let frames = frames.clone();
        tokio::spawn(async move {
            // Up to a quarter of the frame limit: fewer frames and wakeups on the way.
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.send((kind, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        })
    })
    .collect();
    let gone = Arc::new(Notify::new());
    let reader = {
        let process = process.clone();
        let gone = gone.clone();
        tokio::spawn(async move {
            let mut stdin = process.take_stdin();
            loop {
                match read_frame(&mut from).await {
                    Ok(Some((frame::STDIN, bytes))) => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(&bytes).await.is_err() || pipe.flush().await.is_err()
                            {
                                stdin = None;
                            }
                        }
                    }
                    Ok(Some((frame::STDIN_EOF, _))) => {
                        if let Some(mut pipe) = stdin.take() {
                            let _ = pipe.shutdown().await;
                        }
                    }
                    Ok(Some((frame::SIGNAL, name))) => {
                        let name = String::from_utf8_lossy(&name).into_owned();
                        let _ = process.signal(Signal::from_name(&name)).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        gone.notify_one();
                        return;
                    }
                }
            }
        })
    };
    let status = tokio::select! {
        status = process.wait() => status,
        _ = gone.notified() => {
            // The client went away: nobody can read the output or the status.
            reader.abort();
            for pump in pumps {
                pump.abort();
            }
            writer.abort();
            return;
        }
    };
    for pump in pumps {
        let _ = pump.await;
    }
    let exit = match status {
        Ok(ExitStatus::Code(code)) => json!({"code": code}),
        Ok(ExitStatus::Signal {
            signal,
            core_dumped,
        }) => json!({"signal": signal.name(), "core_dumped": core_dumped}),
        Err(err) => json!({"error": super::error_value(&err)}),
    };
    let _ = frames
        .send((frame::EXIT, exit.to_string().into_bytes()))
        .await;
    drop(frames);
    let _ = writer.await;
    reader.abort();
}
