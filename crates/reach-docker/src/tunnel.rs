//! TCP connections made inside a container's network namespace by the agent (`CONNECT`),
//! for `reach forward` and [`reach_core::Backend::connect_tcp`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use reach_core::{tcp_connect_error, Error, ErrorKind, ExitStatus, Result, TcpTunnel};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;

use crate::Conn;
use reach_agent_client::{AgentConn, PipeReader};

/// Asks the container's agent to connect to `host:port` there.
pub(crate) async fn open(conn: &Conn, host: &str, port: u16) -> Result<TcpTunnel> {
    let Some(agent) = conn.agent().await else {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "TCP connections from container `{}` need the reach agent ({})",
                conn.name,
                conn.agent_absence()
            ),
        ));
    };
    let spawned = agent.connect(host, port).await?.map_err(|failure| {
        let err = if failure.errno > 0 {
            io::Error::from_raw_os_error(failure.errno)
        } else {
            io::Error::other(failure.message)
        };
        tcp_connect_error(host, port, &format!("container `{}`", conn.name), &err)
    })?;
    let id = spawned.id;
    Ok(TcpTunnel {
        reader: Box::pin(Incoming {
            pipe: spawned.stdout,
            exit: Some(spawned.exit),
            ending: None,
            agent: agent.clone(),
            id,
            done: false,
        }),
        writer: reach_agent_client::stdin_writer(agent, id),
    })
}

type Outcome = watch::Receiver<Option<Result<ExitStatus>>>;
type Ending = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// The peer's bytes; at their end, the agent's word on how the connection ended (its end of
/// stream, or the agent's connection lost, which is an error).
struct Incoming {
    pipe: PipeReader,
    exit: Option<Outcome>,
    ending: Option<Ending>,
    agent: Arc<AgentConn>,
    id: u32,
    done: bool,
}

impl AsyncRead for Incoming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // No room: nothing read is not the end here.
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.ending.is_none() && !self.done {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.pipe).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            let Some(mut exit) = self.exit.take() else {
                return Poll::Ready(Ok(()));
            };
            self.ending = Some(Box::pin(async move {
                let outcome = exit
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|o| o.clone());
                match outcome {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())),
                    None => Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the connection through the container's agent was torn down",
                    )),
                }
            }));
        }
        if let Some(ending) = self.ending.as_mut() {
            let ended = ready!(ending.as_mut().poll(cx));
            self.ending = None;
            self.done = true;
            return Poll::Ready(ended);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before the peer's end: shut the connection in the container.
        let (agent, id) = (self.agent.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = agent.signal(id, 9, false).await;
            });
        }
    }
}
