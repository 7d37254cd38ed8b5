//! Debian's `docker-registry` (the CNCF distribution registry) on a loopback port, with test
//! images built on the spot (`docker commit` over the busybox image) and pushed by the real
//! `docker push`: nothing comes from outside.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{busybox_image, ensure_engine, ContainerFixture};
use crate::run_checked;

/// A running registry, stopped (and its storage removed) on drop.
#[derive(Debug)]
pub struct RegistryFixture {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// The token service, once [`require_token`](Self::require_token) started one.
    token_service: Option<Child>,
}

impl Drop for RegistryFixture {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.token_service.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The token service the registry sends clients to (`token_server.py`, run by `python3`).
const TOKEN_SERVER: &str = include_str!("token_server.py");

/// Whether `docker-registry` is installed and the engine answers; says why not.
pub fn available_or_skip(test: &str) -> bool {
    let found = Command::new("docker-registry")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        crate::skip(
            test,
            "docker-registry is not installed (apt-get install docker-registry)",
        );
        return false;
    }
    crate::docker::available_or_skip(test)
}

impl RegistryFixture {
    /// A registry on a free loopback port, its storage in a temporary directory.
    pub fn start() -> io::Result<Self> {
        Self::start_with(None)
    }

    /// A registry that lets in only `user` with `password` (HTTP Basic, from an htpasswd
    /// file with the password's bcrypt hash, as the registry requires).
    pub fn start_with_password(user: &str, password: &str) -> io::Result<Self> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut auth = String::new();
        if let Some((user, password)) = login {
            let hash = bcrypt::hash(password, 4).map_err(io::Error::other)?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: reach-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let port = free_port()?;
        let child = serve(dir.path(), port, &auth)?;
        Ok(RegistryFixture {
            child,
            port,
            dir,
            token_service: None,
        })
    }

    /// Restarts the registry, same port and storage, behind token authentication (what Docker
    /// Hub and most registries use): a 401 sends clients to a token service of ours on another
    /// loopback port, which gives a signed token to `user` with `password` only.
    pub fn require_token(&mut self, user: &str, password: &str) -> io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let key = self.dir.path().join("token-key.pem");
        let cert = self.dir.path().join("token-cert.pem");
        run_checked(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=reach-test-token", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )?;
        let script = self.dir.path().join("token_server.py");
        std::fs::write(&script, TOKEN_SERVER)?;
        let token_port = free_port()?;
        let issuer = "reach-test-issuer";
        let service = Command::new("python3")
            .arg(&script)
            .arg(token_port.to_string())
            .args([&key, &cert])
            .args([issuer, user, password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        self.token_service = Some(service);
        wait_for(token_port, "the token service")?;
        let auth = format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    \
             service: reach-test-registry\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            cert.display()
        );
        self.child = serve(self.dir.path(), self.port, &auth)?;
        Ok(())
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Tags `image` (on the engine) as `NAME` in this registry and pushes it; the reference.
    pub fn push(&self, image: &str, name: &str) -> io::Result<String> {
        self.push_as(None, image, name)
    }

    /// [`push`](Self::push) by a docker CLI whose configuration directory is `config` (one
    /// `docker login` has written credentials to), or the default.
    pub fn push_as(&self, config: Option<&Path>, image: &str, name: &str) -> io::Result<String> {
        let reference = format!("{}/{name}", self.address());
        let docker = || {
            let mut command = Command::new("docker");
            if let Some(config) = config {
                command.arg("--config").arg(config);
            }
            command
        };
        run_checked(docker().args(["tag", image, &reference]))?;
        run_checked(docker().args(["push", "-q", &reference]))?;
        Ok(reference)
    }

    /// `docker --config CONFIG login` to this registry, which writes `CONFIG/config.json`
    /// as every docker CLI does.
    pub fn login(&self, config: &Path, user: &str, password: &str) -> io::Result<()> {
        let mut login = Command::new("docker")
            .arg("--config")
            .arg(config)
            .args([
                "login",
                "--username",
                user,
                "--password-stdin",
                &self.address(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = login.stdin.take() {
            std::io::Write::write_all(&mut stdin, password.as_bytes())?;
        }
        let out = login.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "docker login {}: {}",
                self.address(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

/// A loopback port nothing listens on (yet).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something listens on loopback `port`.
fn wait_for(port: u16, what: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{what} did not listen on 127.0.0.1:{port} within 20 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts `docker-registry` on loopback `port`, storage under `dir`, with `auth` (YAML, the
/// `auth:` section or nothing) in its configuration; returns once it listens.
fn serve(dir: &Path, port: u16, auth: &str) -> io::Result<Child> {
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.join("storage").display()
        ),
    )?;
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    if let Err(e) = wait_for(port, "docker-registry") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Runs `script` in a container of `base` and commits the result, with Dockerfile-style
/// `changes` to its config: one more layer.
fn commit(base: &str, script: &str, changes: &[&str]) -> io::Result<String> {
    let container = ContainerFixture::run(base, &[], &["sleep", "600"])?;
    let out = container.exec(&["sh", "-c", script])?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{script}` in {base}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut command = Command::new("docker");
    command.arg("commit");
    for change in changes {
        command.args(["--change", change]);
    }
    let committed = run_checked(command.arg(container.name()))?;
    Ok(String::from_utf8_lossy(&committed.stdout).trim().to_owned())
}

/// A three-layer image over busybox: files with owners, modes and a hard link, then a layer
/// that deletes a file (a whiteout), replaces a directory (an opaque directory), removes a
/// busybox applet and adds a symbolic link (its config: `REACH_IMAGE=layered` in the
/// environment, `/opt` the working directory); `big` MiB of incompressible bytes in a layer of
/// its own when asked. Built anew each call (commits are quick).
pub fn layered_image(big_mib: u64) -> io::Result<String> {
    ensure_engine()?;
    let base = busybox_image()?;
    let first = commit(
        &base,
        "mkdir -p /opt/a/b /opt/opaque && echo one > /opt/a/file && echo keep > /opt/keep \
         && echo old > /opt/opaque/old && ln /opt/keep /opt/hard && chown 1000:1000 /opt/keep \
         && chmod 4711 /opt/a/file && mkfifo /opt/fifo",
        &[],
    )?;
    let second = commit(
        &first,
        "rm /opt/a/file && rm -rf /opt/opaque && mkdir /opt/opaque && echo new > /opt/opaque/new \
         && rm /bin/vi && ln -s /opt/keep /opt/link && chmod 700 /opt/a/b",
        &[
            "ENV REACH_IMAGE=layered",
            "WORKDIR /opt",
            "CMD [\"/bin/sh\"]",
        ],
    )?;
    if big_mib == 0 {
        return Ok(second);
    }
    commit(
        &second,
        &format!("head -c {} /dev/urandom > /opt/big.bin", big_mib << 20),
        &[
            "ENV REACH_IMAGE=layered",
            "WORKDIR /opt",
            "CMD [\"/bin/sh\"]",
        ],
    )
}

/// The tree under `dir` as lines a test compares: path, type, mode, owners, size and content
/// hash (files) or target (links); device numbers for devices.
pub fn tree_listing(dir: &Path) -> io::Result<Vec<String>> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let shown = format!("{prefix}{}", name.to_string_lossy());
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                "dir".to_owned()
            } else if kind.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path)?.display())
            } else if kind.is_file() {
                let data = std::fs::read(&path)?;
                let hash: String = Sha256::digest(&data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("file {} {hash}", data.len())
            } else if kind.is_fifo() {
                "fifo".to_owned()
            } else if kind.is_char_device() || kind.is_block_device() {
                format!("device {}", meta.rdev())
            } else {
                "other".to_owned()
            };
            let mode = if kind.is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            };
            out.push(format!(
                "{shown} {mode:o} {}:{} {what}",
                meta.uid(),
                meta.gid()
            ));
            if kind.is_dir() {
                walk(&path, &format!("{shown}/"), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}
