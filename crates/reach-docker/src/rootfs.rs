//! A container's root file system as a tar stream, through the engine: out with its export
//! (`GET /containers/{id}/export`, the whole file system, owners and all), in with its
//! archive upload (`PUT /containers/{id}/archive`), which keeps the owners the archive names.

use bollard::query_parameters::UploadToContainerOptionsBuilder;
use futures_util::StreamExt;
use reach_core::{BoxRead, Error, ErrorKind, Result};

use crate::archive::archive_error;
use crate::Conn;

/// The whole file system of the container; only `/` (the engine exports nothing smaller).
pub(crate) fn export(conn: &Conn, dir: &str) -> Result<BoxRead> {
    if !dir.trim_end_matches('/').is_empty() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the engine exports a container's whole file system, not `{dir}`: export \
                 `docker://{}` (or `docker://{0}:/`), or copy the directory with `reach cp -r`",
                conn.name
            ),
        ));
    }
    let address = conn.address.clone();
    let stream = conn.docker.export_container(&conn.id).map(move |piece| {
        piece.map_err(|e| {
            std::io::Error::other(crate::engine_error(&address, "export", e).to_string())
        })
    });
    Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
}

/// Unpacks `archive` into `dir` of the container (which must exist).
pub(crate) async fn import(conn: &Conn, dir: &str, archive: BoxRead) -> Result<()> {
    let options = UploadToContainerOptionsBuilder::new().path(dir).build();
    let body = tokio_util::io::ReaderStream::new(archive);
    conn.docker
        .upload_to_container(&conn.id, Some(options), bollard::body_try_stream(body))
        .await
        .map_err(|e| archive_error(conn, dir, "importing into", e))
}
