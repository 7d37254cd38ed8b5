//! `ProxyCommand`: a command whose stdin and stdout carry the SSH connection (`nc %h %p`,
//! `ssh -W %h:%p bastion`, a cloud provider's tunnel), run as `ssh` runs it: `exec CMD`
//! through `/bin/sh`, its stderr left to ours.

use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use reach_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// `command` with `ssh`'s tokens replaced: `%h` host, `%p` port, `%r` remote user, `%n` the
/// name as typed, `%u` local user, `%d` home directory, `%%` a percent sign.
pub(crate) fn expand(command: &str, host: &str, port: u16, user: &str, alias: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(&port.to_string()),
            Some('r') => out.push_str(user),
            Some('n') => out.push_str(alias),
            Some('u') => out.push_str(&crate::config::local_user()),
            Some('d') => out.push_str(&reach_core::local::home_dir().to_string_lossy()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The connection through a running proxy command; dropping it kills the command.
pub(crate) struct ProxyStream {
    reader: ChildStdout,
    writer: ChildStdin,
    _child: Child,
}

impl ProxyStream {
    /// Starts `command` (already expanded) for the connection to `addr`.
    pub(crate) fn start(command: &str, addr: &str) -> Result<ProxyStream> {
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unreachable,
                    format!("cannot start the ProxyCommand for `{addr}` (`{command}`): {e}"),
                )
            })?;
        let (Some(writer), Some(reader)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!("the ProxyCommand for `{addr}` has no stdin or stdout"),
            ));
        };
        Ok(ProxyStream {
            reader,
            writer,
            _child: child,
        })
    }
}

impl AsyncRead for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expand_as_ssh_expands_them() {
        assert_eq!(
            expand(
                "nc %h %p # %r@%n 100%% %x",
                "10.0.0.5",
                2222,
                "deploy",
                "web"
            ),
            "nc 10.0.0.5 2222 # deploy@web 100% %x"
        );
    }
}
