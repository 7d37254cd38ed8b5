//! What the image's own files say: its distribution, and the users and groups it has.

use reach_core::{Error, ErrorKind, Result};

use crate::archive::read_small;
use crate::Conn;

/// The distribution, from `/etc/os-release` (`debian 12`), where the image has one.
pub(crate) async fn os_release(conn: &Conn) -> Option<String> {
    let text = read_small(conn, "/etc/os-release").await?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let id = field("ID")?;
    Some(match field("VERSION_ID") {
        Some(version) => format!("{id} {version}"),
        None => id,
    })
}

/// Refuses a `user[:group]` named in the destination that the container does not have: the
/// engine would run every command with an error of its own as output and status 126, and
/// files would be written for a user that does not exist. Numeric ids need no entry.
pub(crate) async fn check_user(conn: &Conn) -> Result<()> {
    let mut parts = conn.user.splitn(2, ':');
    let named = [
        (parts.next().unwrap_or(""), "/etc/passwd", "user"),
        (parts.next().unwrap_or(""), "/etc/group", "group"),
    ];
    for (name, file, what) in named {
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let known = read_small(conn, file).await.is_some_and(|text| {
            text.lines()
                .any(|line| line.split(':').next() == Some(name))
        });
        if !known {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "container `{}` has no {what} `{name}` (not in its {file}): name one it \
                     has, or give a numeric uid (`docker://1000@{}`)",
                    conn.name, conn.name
                ),
            ));
        }
    }
    Ok(())
}

/// The destination user's `/etc/passwd` entry: (uid, gid, home).
pub(crate) async fn passwd(conn: &Conn) -> Option<(u32, u32, String)> {
    let user = conn.user.split(':').next().unwrap_or("");
    let text = read_small(conn, "/etc/passwd").await?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let matches = if user.is_empty() {
            f.get(2) == Some(&"0")
        } else {
            f.first() == Some(&user) || f.get(2) == Some(&user)
        };
        if !matches || f.len() < 6 {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_owned()))
    })
}
