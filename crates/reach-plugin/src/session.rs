//! One running adapter: requests and their answers, the streams of commands and file reads
//! routed to their readers, input credit, and the adapter's end failing whatever was in
//! flight.
//!
//! One task reads the adapter's stdout and routes each message; it never waits for a reader
//! (output goes into unbounded channels that the adapter's window bounds). One task writes
//! the adapter's stdin from a queue. Flow control, per stream: the adapter sends at most
//! [`WINDOW`] bytes that reach has not acknowledged (`ack`, sent as the reader reads), and
//! reach sends at most [`WINDOW`] input bytes that the adapter has not reported `taken`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reach_core::sync::lock;
use reach_core::{Error, ErrorKind, ExitStatus, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::wire::{self, Failure, Incoming, Stream};

/// The bytes of one stream the adapter may send before reach acknowledges them, and the
/// input bytes reach may send before the adapter reports them taken.
pub(crate) const WINDOW: u32 = 1 << 20;

/// How much of the adapter's stderr is kept to explain its end.
const SAID_KEPT: usize = 2048;

/// Where an outcome (a command's exit, a write's close) is published, once.
pub(crate) type Slot<T> = reach_core::outcome::OutcomeSlot<T>;

pub(crate) use reach_core::outcome::publish;

/// What the router holds for one command, read, write or TCP connection.
#[derive(Default)]
struct Route {
    stdout: Option<mpsc::UnboundedSender<std::io::Result<Bytes>>>,
    stderr: Option<mpsc::UnboundedSender<std::io::Result<Bytes>>>,
    file: Option<mpsc::UnboundedSender<std::io::Result<Bytes>>>,
    exit: Option<Arc<Slot<ExitStatus>>>,
    closed: Option<oneshot::Sender<Result<Option<String>>>>,
    /// Input credit (stdin, a write's body).
    credit: Option<Arc<Semaphore>>,
}

impl Route {
    fn pipe(
        &mut self,
        stream: Stream,
    ) -> &mut Option<mpsc::UnboundedSender<std::io::Result<Bytes>>> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
            Stream::File => &mut self.file,
        }
    }

    fn is_done(&self) -> bool {
        self.stdout.is_none()
            && self.stderr.is_none()
            && self.file.is_none()
            && self.exit.is_none()
            && self.closed.is_none()
    }
}

/// The receiving ends a started stream-carrying request gets.
#[derive(Debug)]
pub(crate) struct Pipes {
    pub(crate) stdout: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
    pub(crate) stderr: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
    pub(crate) file: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
    pub(crate) exit: watch::Receiver<Option<Result<ExitStatus>>>,
    pub(crate) slot: Arc<Slot<ExitStatus>>,
    pub(crate) closed: oneshot::Receiver<Result<Option<String>>>,
    pub(crate) credit: Arc<Semaphore>,
}

struct State {
    answers: HashMap<u64, oneshot::Sender<std::result::Result<Value, Failure>>>,
    routes: HashMap<u64, Route>,
}

/// One running adapter.
pub(crate) struct Session {
    /// `adapter `reach-backend-x``, for messages.
    name: String,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    state: Mutex<Option<State>>,
    lost: Mutex<Option<Error>>,
    next: AtomicU64,
    /// Where every control line is copied, when asked (`> ` to the adapter, `< ` from it).
    transcript: Option<Mutex<std::fs::File>>,
    /// Dropped with the session: the writer task ends, the adapter sees its stdin close and
    /// ends what it started; the child is killed on drop as well.
    _child: Mutex<Option<tokio::process::Child>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Takes over a started adapter: its stdin, stdout and stderr must be piped.
    pub(crate) fn start(
        mut child: tokio::process::Child,
        name: String,
        transcript: Option<std::fs::File>,
    ) -> Result<Arc<Session>> {
        let missing = || Error::new(ErrorKind::Io, format!("{name} was started without pipes"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let (queue, queued) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            name,
            queue,
            state: Mutex::new(Some(State {
                answers: HashMap::new(),
                routes: HashMap::new(),
            })),
            lost: Mutex::new(None),
            next: AtomicU64::new(1),
            transcript: transcript.map(Mutex::new),
            _child: Mutex::new(Some(child)),
        });
        let said = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(write_queue(queued, stdin));
        tokio::spawn(keep_stderr(stderr, said.clone(), session.name.clone()));
        tokio::spawn(route_output(Arc::downgrade(&session), stdout, said));
        Ok(session)
    }

    /// The adapter's name as messages show it.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Why the session ended, if it has: `SessionDropped`, or `Protocol` when the adapter
    /// wrote something that is not the protocol.
    pub(crate) fn lost(&self) -> Option<Error> {
        lock(&self.lost).clone()
    }

    fn dropped(&self) -> Error {
        self.lost().unwrap_or_else(|| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("the session with {} ended", self.name),
            )
        })
    }

    /// Queues a message for the adapter.
    pub(crate) fn send(&self, object: Value, payload: Option<&[u8]>) -> Result<()> {
        if self.lost().is_some() {
            return Err(self.dropped());
        }
        let bytes = wire::encode(object, payload);
        let head = bytes.len() - payload.map_or(0, <[u8]>::len);
        self.record(b"> ", &bytes[..head]);
        self.queue.send(bytes).map_err(|_| self.dropped())
    }

    fn record(&self, direction: &[u8], line: &[u8]) {
        if let Some(file) = &self.transcript {
            use std::io::Write;
            let mut file = lock(file);
            let _ = file.write_all(direction);
            let _ = file.write_all(line.strip_suffix(b"\n").unwrap_or(line));
            let _ = file.write_all(b"\n");
        }
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends request `op` with `fields` and waits for its answer (no longer than `limit`,
    /// when given).
    pub(crate) async fn request(
        &self,
        op: &str,
        fields: Value,
        limit: Option<Duration>,
    ) -> Result<Value> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        match lock(&self.state).as_mut() {
            Some(state) => state.answers.insert(id, tx),
            None => return Err(self.dropped()),
        };
        self.send(with_id(op, id, fields), None)?;
        self.await_answer(op, id, rx, limit).await
    }

    async fn await_answer(
        &self,
        op: &str,
        id: u64,
        rx: oneshot::Receiver<std::result::Result<Value, Failure>>,
        limit: Option<Duration>,
    ) -> Result<Value> {
        let answer = match limit {
            Some(limit) => tokio::time::timeout(limit, rx).await.map_err(|_| {
                if let Some(state) = lock(&self.state).as_mut() {
                    state.answers.remove(&id);
                }
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} did not answer `{op}` within {limit:?} (raise --connect-timeout if \
                         it is slow)",
                        self.name
                    ),
                )
            })?,
            None => rx.await,
        };
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => Err(failure.into_error()),
            Err(_) => Err(self.dropped()),
        }
    }

    /// Sends request `op` without waiting for its answer (a kill from a destructor).
    pub(crate) fn notify(&self, op: &str, fields: Value) {
        let _ = self.send(with_id(op, self.next_id(), fields), None);
    }

    /// Sends a request that opens streams (`exec`, `read`, `write`, `connect_tcp`), with its
    /// routes in place before the adapter can answer; returns its id, the answer and the
    /// pipes. On failure the routes are gone again.
    pub(crate) async fn open(&self, op: &str, fields: Value) -> Result<(u64, Value, Pipes)> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let (out_tx, stdout) = mpsc::unbounded_channel();
        let (err_tx, stderr) = mpsc::unbounded_channel();
        let (file_tx, file) = mpsc::unbounded_channel();
        let (exit_tx, exit) = watch::channel(None);
        let (closed_tx, closed) = oneshot::channel();
        let slot = Arc::new(exit_tx);
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        // What each request carries: a command its output and exit; a read the file; a
        // write its body and `closed`; a TCP connection both ways and `closed`.
        let (outputs, reads, ends, closes, input) = match op {
            "exec" => (true, false, true, false, true),
            "read" => (false, true, false, false, false),
            "write" => (false, false, false, true, true),
            _ => (true, false, false, true, true),
        };
        match lock(&self.state).as_mut() {
            Some(state) => {
                state.answers.insert(id, tx);
                state.routes.insert(
                    id,
                    Route {
                        stdout: outputs.then_some(out_tx),
                        stderr: (outputs && ends).then_some(err_tx),
                        file: reads.then_some(file_tx),
                        exit: ends.then(|| slot.clone()),
                        closed: closes.then_some(closed_tx),
                        credit: input.then(|| credit.clone()),
                    },
                );
            }
            None => return Err(self.dropped()),
        }
        let answer = match self.send(with_id(op, id, fields), None) {
            Ok(()) => self.await_answer(op, id, rx, None).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(value) => Ok((
                id,
                value,
                Pipes {
                    stdout,
                    stderr,
                    file,
                    exit,
                    slot,
                    closed,
                    credit,
                },
            )),
            Err(e) => {
                self.forget(id);
                Err(e)
            }
        }
    }

    /// Forgets stream-carrying request `id`: what the adapter still sends for it is dropped.
    pub(crate) fn forget(&self, id: u64) {
        if let Some(state) = lock(&self.state).as_mut() {
            state.routes.remove(&id);
        }
    }

    /// Sends input bytes to `to` once its credit allows; at most a window at a time.
    pub(crate) async fn input(&self, to: u64, credit: &Semaphore, data: &[u8]) -> Result<()> {
        for piece in data.chunks(WINDOW as usize / 4) {
            credit
                .acquire_many(piece.len() as u32)
                .await
                .map_err(|_| self.dropped())?
                .forget();
            self.send(json!({"op": "input", "to": to}), Some(piece))?;
        }
        Ok(())
    }

    /// Ends the input of `to`.
    pub(crate) fn end_input(&self, to: u64) -> Result<()> {
        self.send(json!({"op": "input", "to": to, "eof": true}), None)
    }

    /// Acknowledges `bytes` read from a stream (queued: a reader cannot wait).
    pub(crate) fn ack(&self, to: u64, stream: Stream, bytes: u64) {
        let _ = self.send(
            json!({"op": "ack", "to": to, "stream": stream.as_str(), "bytes": bytes}),
            None,
        );
    }

    /// Says nobody reads a stream any more: the adapter drops what remains of it.
    pub(crate) fn discard(&self, to: u64, stream: Stream) {
        let _ = self.send(
            json!({"op": "discard", "to": to, "stream": stream.as_str()}),
            None,
        );
    }

    fn route(&self, message: Incoming) -> std::result::Result<(), String> {
        let mut guard = lock(&self.state);
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        match message {
            Incoming::Answer { id, result } => match state.answers.remove(&id) {
                Some(tx) => {
                    let _ = tx.send(result);
                }
                // A request given up on (timed out) may still be answered.
                None if id < self.next.load(Ordering::Relaxed) => {}
                None => return Err(format!("an answer to request {id}, never sent")),
            },
            Incoming::Data { to, stream, bytes } => {
                if let Some(route) = state.routes.get_mut(&to) {
                    let pipe = route.pipe(stream);
                    if let Some(tx) = pipe {
                        if tx.send(Ok(bytes)).is_err() {
                            // Nobody reads it any more: what follows is dropped.
                            *pipe = None;
                        }
                    }
                }
            }
            Incoming::Eof { to, stream, error } => {
                if let Some(route) = state.routes.get_mut(&to) {
                    if let (Some(tx), Some(failure)) = (route.pipe(stream).take(), error) {
                        let error = failure.into_error();
                        let _ = tx.send(Err(std::io::Error::other(error)));
                    }
                    if route.is_done() {
                        state.routes.remove(&to);
                    }
                }
            }
            Incoming::Exit { to, status } => {
                if let Some(route) = state.routes.get_mut(&to) {
                    // The end of the command is the end of its output.
                    route.stdout = None;
                    route.stderr = None;
                    if let Some(slot) = route.exit.take() {
                        publish(&slot, Ok(status));
                    }
                    route.closed = None;
                    route.file = None;
                    route.credit = None;
                    state.routes.remove(&to);
                }
            }
            Incoming::Taken { to, bytes } => {
                if let Some(credit) = state.routes.get(&to).and_then(|r| r.credit.as_ref()) {
                    credit.add_permits(bytes.min(u64::from(WINDOW)) as usize);
                }
            }
            Incoming::Closed { to, sha256, error } => {
                if let Some(mut route) = state.routes.remove(&to) {
                    let outcome = match error {
                        Some(failure) => Err(failure.into_error()),
                        None => Ok(sha256),
                    };
                    // A connection that failed fails its reader too.
                    if let (Some(tx), Err(e)) = (route.stdout.take(), &outcome) {
                        let _ = tx.send(Err(std::io::Error::other(e.clone())));
                    }
                    if let Some(tx) = route.closed.take() {
                        let _ = tx.send(outcome);
                    }
                    if let Some(credit) = route.credit {
                        credit.close();
                    }
                }
            }
        }
        Ok(())
    }

    fn fail_all(&self, error: Error) {
        *lock(&self.lost) = Some(error.clone());
        let Some(state) = lock(&self.state).take() else {
            return;
        };
        for (_, route) in state.routes {
            for tx in [route.stdout, route.stderr, route.file]
                .into_iter()
                .flatten()
            {
                let _ = tx.send(Err(std::io::Error::other(error.clone())));
            }
            if let Some(slot) = route.exit {
                publish(&slot, Err(error.clone()));
            }
            if let Some(tx) = route.closed {
                let _ = tx.send(Err(error.clone()));
            }
            if let Some(credit) = route.credit {
                credit.close();
            }
        }
        // Dropping the answer senders fails each waiting request with `dropped()`.
    }
}

fn with_id(op: &str, id: u64, fields: Value) -> Value {
    let mut object = match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    object.insert("id".into(), Value::from(id));
    object.insert("op".into(), Value::from(op));
    Value::Object(object)
}

async fn write_queue(
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    mut stdin: impl AsyncWrite + Unpin,
) {
    while let Some(first) = queued.recv().await {
        // Whatever else is queued goes in the same write.
        let mut batch = first;
        while batch.len() < 256 * 1024 {
            match queued.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if stdin.write_all(&batch).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

async fn keep_stderr(mut stderr: impl AsyncRead + Unpin, said: Arc<Mutex<Vec<u8>>>, name: String) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tracing::debug!(adapter = %name, said = %String::from_utf8_lossy(&buf[..n]).trim_end(), "adapter stderr");
        let mut kept = lock(&said);
        kept.extend_from_slice(&buf[..n]);
        let excess = kept.len().saturating_sub(SAID_KEPT);
        kept.drain(..excess);
    }
}

async fn route_output(
    session: std::sync::Weak<Session>,
    stdout: impl AsyncRead + Unpin,
    said: Arc<Mutex<Vec<u8>>>,
) {
    let mut reader = BufReader::with_capacity(256 * 1024, stdout);
    let mut line = Vec::new();
    let mut number = 0u64;
    let why = loop {
        number += 1;
        let next = wire::read(&mut reader, &mut line).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        match next {
            Ok(Some(message)) => {
                session.record(b"< ", &line);
                if let Err(why) = session.route(message) {
                    break format!(
                        "{} broke the protocol on line {number} of its output: {why}",
                        session.name
                    );
                }
            }
            Ok(None) => break format!("{} closed its output", session.name),
            Err(why) => {
                break format!(
                    "{} broke the protocol on line {number} of its output: {why}",
                    session.name
                )
            }
        }
    };
    let Some(session) = session.upgrade() else {
        return;
    };
    let protocol = why.contains("broke the protocol");
    // Let its stderr drain a moment, so that its last words explain its end.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = {
        let mut child = lock(&session._child);
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    };
    let mut why = why;
    if let Some(status) = status {
        why = format!("{why} and exited ({status})");
    }
    let said = String::from_utf8_lossy(&lock(&said)).to_string();
    let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
    if !said.is_empty() {
        why = format!("{why}; it said: {said}");
    }
    if protocol {
        // Nothing it says can be trusted after this: end it.
        if let Some(child) = lock(&session._child).as_mut() {
            let _ = child.start_kill();
        }
    }
    tracing::debug!(adapter = %session.name, %why, "plugin session ended");
    let kind = if protocol {
        ErrorKind::Protocol
    } else {
        ErrorKind::SessionDropped
    };
    session.fail_all(Error::new(kind, why));
}
