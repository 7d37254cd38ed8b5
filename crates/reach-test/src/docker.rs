//! Docker fixtures: the engine (started if it is not running), two test images built on the
//! spot (nothing can be pulled here), and throwaway containers removed on drop.
//!
//! - [`busybox_image`]: Debian's static busybox (`apt-get install busybox-static`) with its
//!   applets, `/etc/passwd` with `root` and an unprivileged `reach` (uid 1000), `docker
//!   import`ed.
//! - [`noshell_image`]: one static executable (`/reach-idle`, compiled here from a few lines
//!   of Rust) and empty `/tmp`: no shell, no `tar`, no libc.
//!
//! Images are tagged with a hash of their recipe, so a changed recipe builds a new image, and
//! built under a file lock, so parallel test processes build each once.

use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Label on every container a fixture starts, for cleaning up after a crashed run.
pub const LABEL: &str = "reach-test";

use crate::run_checked as run;

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.stdin(Stdio::null());
    cmd
}

/// Whether the `docker` CLI is installed.
pub fn cli_available() -> bool {
    Command::new("docker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn engine_answers() -> bool {
    docker()
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure the engine answers, starting `dockerd` (as root) if it does not.
pub fn ensure_engine() -> io::Result<()> {
    if engine_answers() {
        return Ok(());
    }
    let _lock = lock("engine")?;
    if engine_answers() {
        return Ok(());
    }
    if !crate::is_root() {
        return Err(io::Error::other(
            "the Docker engine does not answer and only root can start dockerd here",
        ));
    }
    let log = std::fs::File::create(std::env::temp_dir().join("reach-test-dockerd.log"))?;
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| io::Error::other(format!("starting dockerd: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if engine_answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(io::Error::other(
        "dockerd did not answer within 60 s (see reach-test-dockerd.log in the temp dir)",
    ))
}

/// Whether the engine is usable (started if needed); reports a skip when not.
pub fn available_or_skip(test: &str) -> bool {
    if !cli_available() {
        crate::skip(
            test,
            "the docker CLI is missing (apt-get install docker.io)",
        );
        return false;
    }
    match ensure_engine() {
        Ok(()) => true,
        Err(e) => {
            crate::skip(test, &format!("no Docker engine: {e}"));
            false
        }
    }
}

/// A lock file shared by every test process.
fn lock(name: &str) -> io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("reach-test-{name}.lock"));
    let file = std::fs::File::create(path)?;
    file.lock()?;
    Ok(file)
}

fn fnv(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:012x}").chars().take(12).collect()
}

fn image_exists(tag: &str) -> bool {
    docker()
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Imports `root` as `tag`, with `cmd` as its command.
fn import(root: &Path, tag: &str, cmd: &str) -> io::Result<()> {
    let tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = tar
        .stdout
        .ok_or_else(|| io::Error::other("tar has no stdout"))?;
    run(docker()
        .args(["import", "-c", &format!("CMD {cmd}"), "-", tag])
        .stdin(stdout))?;
    Ok(())
}

const BUSYBOX: &str = "/bin/busybox";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nreach:x:1000:1000:reach:/home/reach:/bin/sh\n";
const GROUP: &str = "root:x:0:\nreach:x:1000:\n";

/// The busybox test image, built if missing. Needs Debian's `busybox-static`.
pub fn busybox_image() -> io::Result<String> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        io::Error::other(format!(
            "{BUSYBOX}: {e} (apt-get install busybox-static builds the test image)"
        ))
    })?;
    let tag = format!(
        "reach-test-busybox:{}",
        fnv(&[&busybox, PASSWD.as_bytes(), GROUP.as_bytes()])
    );
    ensure_engine()?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let _lock = lock("image-busybox")?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    busybox_rootfs(root)?;
    import(root, &tag, r#"["/bin/sh"]"#)?;
    Ok(tag)
}

/// Fills `root` with a minimal root file system: Debian's static busybox and a link for
/// each of its applets in `/bin`, `/etc/passwd` and `/etc/group` (root, and `reach` with uid
/// 1000), a sticky `/tmp`, and empty `/root`, `/home/reach`, `/proc`, `/sys`, `/dev`.
pub fn busybox_rootfs(root: &Path) -> io::Result<()> {
    busybox_rootfs_with(root, Path::new(BUSYBOX))
}

/// [`busybox_rootfs`] around another `busybox` binary (one of another architecture, say),
/// with this host's busybox's applets linked to it.
pub fn busybox_rootfs_with(root: &Path, busybox: &Path) -> io::Result<()> {
    for sub in [
        "bin",
        "etc",
        "root",
        "home/reach",
        "tmp",
        "proc",
        "sys",
        "dev",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let applets = run(Command::new(BUSYBOX).arg("--list"))?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), PASSWD)?;
    std::fs::write(root.join("etc/group"), GROUP)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(root.join("home/reach"), Some(1000), Some(1000)).ok();
    Ok(())
}

/// An image made from `base` with host files added at the same paths (symlinks followed: a
/// program with its shared libraries, say) and Dockerfile-style `changes` (`CMD [...]`),
/// built once per content as `reach-test-NAME:HASH`.
pub fn derived_image(
    base: &str,
    name: &str,
    files: &[&Path],
    changes: &[&str],
) -> io::Result<String> {
    let mut parts: Vec<Vec<u8>> = vec![base.as_bytes().to_vec()];
    for file in files {
        parts.push(file.as_os_str().as_encoded_bytes().to_vec());
        parts.push(std::fs::read(file).map_err(|e| {
            io::Error::other(format!(
                "{}: {e} (needed in the test image)",
                file.display()
            ))
        })?);
    }
    parts.extend(changes.iter().map(|c| c.as_bytes().to_vec()));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let tag = format!("reach-test-{name}:{}", fnv(&refs));
    ensure_engine()?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let _lock = lock(&format!("image-{name}"))?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let created = run(docker().args(["create", base]))?;
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let built = (|| {
        if !files.is_empty() {
            let tar = Command::new("tar")
                .args(["-chf", "-", "-C", "/"])
                .args(files.iter().map(|f| f.strip_prefix("/").unwrap_or(f)))
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = tar
                .stdout
                .ok_or_else(|| io::Error::other("tar has no stdout"))?;
            run(docker().args(["cp", "-", &format!("{id}:/")]).stdin(stdout))?;
        }
        let mut commit = docker();
        commit.arg("commit");
        for change in changes {
            commit.args(["--change", change]);
        }
        run(commit.args([&id, &tag]))
    })();
    let _ = docker().args(["rm", "-f", &id]).output();
    built.map(|_| tag)
}

/// The shared libraries (and loader) a host program needs, from `ldd`.
pub fn libraries_of(program: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let out = run(Command::new("ldd").arg(program))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(std::path::PathBuf::from)
        })
        .collect())
}

const IDLE: &str = r#"
fn main() {
    // The container's only program: waits, and with arguments prints them (so that an
    // exec in this image has something to run).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        println!("{}", args.join(" "));
        return;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
"#;

/// The image with no shell: one static executable, `/reach-idle`. Needs `rustc`.
pub fn noshell_image() -> io::Result<String> {
    let tag = format!("reach-test-noshell:{}", fnv(&[IDLE.as_bytes()]));
    ensure_engine()?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let _lock = lock("image-noshell")?;
    if image_exists(&tag) {
        return Ok(tag);
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("idle.rs");
    std::fs::write(&src, IDLE)?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("tmp"))?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    run(Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=s",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(root.join("reach-idle"))
        .arg(&src))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    import(&root, &tag, r#"["/reach-idle"]"#)?;
    Ok(tag)
}

/// A running container, removed (with `docker rm -f`) on drop.
#[derive(Debug)]
pub struct ContainerFixture {
    name: String,
    _denied: Option<tempfile::TempDir>,
}

impl ContainerFixture {
    /// Runs `image` detached, with `args` given to `docker run` before the image and `cmd`
    /// after it. Every fixture container carries the [`LABEL`] label.
    pub fn run(image: &str, args: &[&str], cmd: &[&str]) -> io::Result<Self> {
        Self::run_inner(image, args, cmd, None)
    }

    fn run_inner(
        image: &str,
        args: &[&str],
        cmd: &[&str],
        denied: Option<tempfile::TempDir>,
    ) -> io::Result<Self> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "reach-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut command = docker();
        command
            .args(["run", "-d", "--name", &name, "--label", LABEL])
            .args(args)
            .arg(image)
            .args(cmd);
        run(&mut command)?;
        Ok(ContainerFixture {
            name,
            _denied: denied,
        })
    }

    /// A busybox container (`sleep`ing) with `/denied` a read-only mount, in which no one,
    /// root included, may create entries.
    pub fn busybox() -> io::Result<Self> {
        let image = busybox_image()?;
        let denied = tempfile::Builder::new().prefix("reach-denied-").tempdir()?;
        let mount = format!("{}:/denied:ro", denied.path().display());
        Self::run_inner(&image, &["-v", &mount], &["sleep", "1000000"], Some(denied))
    }

    /// A container of the no-shell image.
    pub fn noshell() -> io::Result<Self> {
        let image = noshell_image()?;
        let denied = tempfile::Builder::new().prefix("reach-denied-").tempdir()?;
        let mount = format!("{}:/denied:ro", denied.path().display());
        Self::run_inner(&image, &["-v", &mount], &[], Some(denied))
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker://NAME`, or `docker://USER@NAME`.
    pub fn destination(&self, user: Option<&str>) -> String {
        match user {
            Some(user) => format!("docker://{user}@{}", self.name),
            None => format!("docker://{}", self.name),
        }
    }

    /// Runs `docker exec NAME ARGS...` and returns its output, whatever the status.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        docker().arg("exec").arg(&self.name).args(args).output()
    }

    /// `docker stop -t 0 NAME`.
    pub fn stop(&self) -> io::Result<()> {
        run(docker().args(["stop", "-t", "0", &self.name])).map(drop)
    }

    /// `docker kill NAME`.
    pub fn kill(&self) -> io::Result<()> {
        run(docker().args(["kill", &self.name])).map(drop)
    }

    /// A fresh empty directory in the container (made with `docker exec mkdir`), owned by
    /// `owner` (`uid:gid`) when given. Busybox image only.
    pub fn scratch(&self, owner: Option<&str>) -> io::Result<String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = format!(
            "/tmp/scratch-{}",
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        run(docker().args(["exec", &self.name, "mkdir", "-p", &dir]))?;
        if let Some(owner) = owner {
            run(docker().args(["exec", &self.name, "chown", owner, &dir]))?;
        }
        Ok(dir)
    }

    /// `docker cp FROM NAME:TO`.
    pub fn cp_to(&self, from: &Path, to: &str) -> io::Result<()> {
        run(docker()
            .arg("cp")
            .arg(from)
            .arg(format!("{}:{to}", self.name)))
        .map(drop)
    }

    /// `docker cp NAME:FROM TO`.
    pub fn cp_from(&self, from: &str, to: &Path) -> io::Result<()> {
        run(docker()
            .arg("cp")
            .arg(format!("{}:{from}", self.name))
            .arg(to))
        .map(drop)
    }
}

impl Drop for ContainerFixture {
    fn drop(&mut self) {
        let _ = docker()
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
