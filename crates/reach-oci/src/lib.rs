//! `reach pull IMAGE DIR`: an OCI (or Docker) image from a registry into a root file system,
//! without a daemon.
//!
//! The registry protocol (token auth, manifest lists, platforms) is `oci-client`'s. reach
//! adds what makes a pull trustworthy and cheap to repeat: every blob is verified against
//! its digest while it streams into a cache (`$XDG_CACHE_HOME/reach/oci/sha256/<hex>`, kept
//! only once verified, so that a pull that was cut off resumes with what it already has),
//! layers download in parallel and are applied in order as they arrive (`layer`: gzip,
//! zstd or plain; whiteouts and opaque directories), and the root file system is built in a
//! sibling directory and renamed into place only once whole: a failed pull leaves no
//! partial root. The image's config is saved beside it as `DIR.image.json`.
#![deny(missing_docs)]

mod auth;
mod layer;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor};
use oci_client::{Client, Reference};
use reach_core::{Error, ErrorKind, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use auth::{credentials, docker_config_path};

/// How many blobs download at once.
const PARALLEL: usize = 3;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` to pick from a manifest list (default: this machine's).
    pub platform: Option<String>,
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where verified blobs are kept (default: `$XDG_CACHE_HOME/reach/oci`).
    pub cache: Option<PathBuf>,
    /// The docker CLI's configuration, for credentials (default: `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// Counters a caller may watch (a progress bar).
    pub progress: Option<Arc<PullProgress>>,
}

/// How far a pull has come: bytes of the layers to fetch, fetched so far, and layers
/// applied. Updated as the bytes arrive.
#[derive(Debug, Default)]
pub struct PullProgress {
    total: AtomicU64,
    fetched: AtomicU64,
    applied: AtomicU64,
    layers: AtomicU64,
}

impl PullProgress {
    /// Bytes of all layers (known once the manifest is in).
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes fetched or found in the cache so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Layers applied so far, and how many there are.
    pub fn layers(&self) -> (u64, u64) {
        (
            self.applied.load(Ordering::Relaxed),
            self.layers.load(Ordering::Relaxed),
        )
    }
}

/// A writer that counts what goes through it into a [`PullProgress`].
struct Counted<W> {
    inner: W,
    progress: Option<Arc<PullProgress>>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(progress)) = (&polled, &self.progress) {
            progress.fetched.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One layer of a pull.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Its digest.
    pub digest: String,
    /// Its size in bytes (compressed).
    pub size: u64,
    /// Whether it came from the cache rather than the registry.
    pub cached: bool,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The image as asked for.
    pub image: String,
    /// The digest of the image manifest pulled.
    pub manifest: String,
    /// The root file system made.
    pub dir: PathBuf,
    /// Where the image config was saved.
    pub config: PathBuf,
    /// Its layers, bottom first.
    pub layers: Vec<LayerReport>,
}

/// The directory verified blobs are kept in.
pub fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("reach/oci")
}

fn registry_error(image: &str, doing: &str, e: oci_client::errors::OciDistributionError) -> Error {
    use oci_client::errors::OciDistributionError as E;
    let text = e.to_string();
    let kind = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ErrorKind::AuthFailed,
        E::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        E::DigestError(_) => ErrorKind::Protocol,
        E::RequestError(r) if r.is_connect() => ErrorKind::Unreachable,
        E::RequestError(r) if r.is_timeout() => ErrorKind::Timeout,
        _ if text.contains("MANIFEST_UNKNOWN") || text.contains("NAME_UNKNOWN") => {
            ErrorKind::NotFound
        }
        _ => ErrorKind::Io,
    };
    let hint = match kind {
        ErrorKind::AuthFailed => " (log in with `docker login`, which reach reads)",
        ErrorKind::Unreachable => {
            " (is the registry up? a plain-HTTP registry needs --insecure-registry)"
        }
        ErrorKind::Protocol => " (the registry sent other bytes than the digest names)",
        _ => "",
    };
    Error::new(kind, format!("{doing} `{image}`: {text}{hint}"))
}

/// What picks one manifest of a manifest list (`oci-client`'s platform resolver).
type Resolver = Box<dyn Fn(&[ImageIndexEntry]) -> Option<String> + Send + Sync>;

/// A platform resolver for `os/arch[/variant]`.
fn resolver(platform: String) -> Resolver {
    Box::new(move |entries: &[ImageIndexEntry]| {
        let mut want = platform.split('/');
        let (os, arch, variant) = (want.next(), want.next(), want.next());
        entries
            .iter()
            .find(|entry| {
                entry.platform.as_ref().is_some_and(|p| {
                    Some(p.os.to_string().as_str()) == os
                        && Some(p.architecture.to_string().as_str()) == arch
                        && (variant.is_none() || p.variant.as_deref() == variant)
                })
            })
            .map(|entry| entry.digest.clone())
    })
}

/// This machine's platform as OCI names it.
fn this_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

/// The cache file of blob `digest` (`sha256:<hex>` only).
fn cached(cache: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("blob digest `{digest}` is not a SHA-256 (sha256:<64 hex digits>)"),
            )
        })?;
    Ok(cache.join("sha256").join(hex))
}

/// Whether the cached file holds exactly the bytes `digest` names.
fn verified(path: &Path, digest: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match std::io::Read::read(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    digest.strip_prefix("sha256:") == Some(hex.as_str())
}

/// Fetches blob `layer` of `image` into the cache unless a verified copy is there; whether
/// it was.
async fn fetch(
    client: &Client,
    image: &Reference,
    layer: &OciDescriptor,
    cache: &Path,
    progress: Option<Arc<PullProgress>>,
) -> Result<bool> {
    let path = cached(cache, &layer.digest)?;
    let check = path.clone();
    let digest = layer.digest.clone();
    let have = tokio::task::spawn_blocking(move || verified(&check, &digest))
        .await
        .unwrap_or(false);
    if have {
        if let Some(progress) = &progress {
            let size = u64::try_from(layer.size).unwrap_or(0);
            progress.fetched.fetch_add(size, Ordering::Relaxed);
        }
        return Ok(true);
    }
    let part = path.with_extension(format!("part-{}", std::process::id()));
    let file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| Error::io(format!("create `{}`", part.display()), e))?;
    // oci-client checks the digest as the bytes stream and fails the pull on a mismatch.
    let counted = Counted {
        inner: tokio::io::BufWriter::new(file),
        progress,
    };
    let pulled = client.pull_blob(image, layer, counted).await;
    if let Err(e) = pulled {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(registry_error(
            &image.whole(),
            &format!("fetching blob {} of", layer.digest),
            e,
        ));
    }
    tokio::fs::rename(&part, &path)
        .await
        .map_err(|e| Error::io(format!("keep blob `{}`", path.display()), e))?;
    Ok(false)
}

/// Removes the directory on drop unless kept: a failed pull leaves no partial root.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Pulls `image` into the new directory `dir`.
pub async fn pull(image: &str, dir: &Path, options: &PullOptions) -> Result<PullReport> {
    let reference: Reference = image.parse().map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "`{image}` is not an image reference ({e}); expected [REGISTRY/]NAME[:TAG|@DIGEST]"
            ),
        )
    })?;
    if dir.exists() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "`{}` already exists: pull into a new directory",
                dir.display()
            ),
        ));
    }
    let registry = reference.resolve_registry().to_owned();
    let protocol = if options.insecure_registries.is_empty() {
        ClientProtocol::Https
    } else {
        ClientProtocol::HttpsExcept(options.insecure_registries.clone())
    };
    let platform = options.platform.clone().unwrap_or_else(this_platform);
    let client = Arc::new(Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(resolver(platform.clone())),
        ..ClientConfig::default()
    }));
    let config_path = options.docker_config.clone().or_else(docker_config_path);
    let auth = credentials(config_path.as_deref(), &registry)?;
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
        .await
        .map_err(|e| {
            let err = registry_error(image, "pulling the manifest of", e);
            if err.message().contains("image index") {
                // Its words name "the client's default platform": say which one.
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "`{image}` has no image for platform {platform}: pick one it has with \
                         --platform OS/ARCH"
                    ),
                )
            } else {
                err
            }
        })?;

    let cache = options.cache.clone().unwrap_or_else(default_cache);
    tokio::fs::create_dir_all(cache.join("sha256"))
        .await
        .map_err(|e| Error::io(format!("create the cache `{}`", cache.display()), e))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dir.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{}` names no directory", dir.display()),
        )
    })?;
    let building = parent.join(format!(
        ".{}.reach-pull-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir_all(&building)
        .map_err(|e| Error::io(format!("create `{}`", building.display()), e))?;
    let mut partial = Partial(Some(building.clone()));

    if let Some(progress) = &options.progress {
        let total: i64 = manifest.layers.iter().map(|l| l.size.max(0)).sum();
        progress
            .total
            .store(u64::try_from(total).unwrap_or(0), Ordering::Relaxed);
        progress
            .layers
            .store(manifest.layers.len() as u64, Ordering::Relaxed);
    }
    // Downloads run ahead, a few at a time; layers are applied in order as they land.
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let fetches: Vec<_> = manifest
        .layers
        .iter()
        .cloned()
        .map(|layer| {
            let (client, reference, cache, limit) = (
                client.clone(),
                reference.clone(),
                cache.clone(),
                limit.clone(),
            );
            let progress = options.progress.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                fetch(&client, &reference, &layer, &cache, progress).await
            })
        })
        .collect();
    let mut layers = Vec::new();
    for (layer, fetched) in manifest.layers.iter().zip(fetches) {
        let was_cached = fetched
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("a download task failed: {e}")))??;
        let blob = cached(&cache, &layer.digest)?;
        let root = building.clone();
        let digest = layer.digest.clone();
        tokio::task::spawn_blocking(move || layer::apply(&root, &blob))
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("unpacking failed: {e}")))?
            .map_err(|e| Error::io(format!("apply layer {digest} of `{image}`"), e))?;
        if let Some(progress) = &options.progress {
            progress.applied.fetch_add(1, Ordering::Relaxed);
        }
        layers.push(LayerReport {
            digest: layer.digest.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
            cached: was_cached,
        });
    }
    let mut config_file = dir.as_os_str().to_owned();
    config_file.push(".image.json");
    let config_file = PathBuf::from(config_file);
    std::fs::write(&config_file, config.as_bytes()).map_err(|e| {
        Error::io(
            format!("save the image config `{}`", config_file.display()),
            e,
        )
    })?;
    std::fs::rename(&building, dir).map_err(|e| {
        Error::io(
            format!("move the root file system to `{}`", dir.display()),
            e,
        )
    })?;
    partial.0 = None;
    Ok(PullReport {
        image: image.to_owned(),
        manifest: manifest_digest,
        dir: dir.to_owned(),
        config: config_file,
        layers,
    })
}
