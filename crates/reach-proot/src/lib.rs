//! The proot backend of reach (`proot://DIR`): commands run inside the root file system at
//! `DIR` through Debian's `proot` (ptrace, no daemon, no root needed), and its files are this
//! host's files under `DIR`, every path resolved inside it.
//!
//! - [`ProotBackend`]: the backend; [`ProotOptions`]: where `proot` is, binds, fake root,
//!   `qemu` for foreign root file systems.
//! - Commands are `proot -r DIR -w CWD [-0] -b /dev -b /proc -b /sys [-b HOST:GUEST]...
//!   [-q QEMU] -v 1 COMMAND`, run by the
//!   local backend, so that process groups, PTYs, timeouts, signals and flow control are the
//!   local backend's. proot's own exit status is not the command's (see `status`): its
//!   report of every process's end is read from its stderr and taken out of the stream.
#![deny(missing_docs)]

mod arch;
mod fs;
mod process;
mod root;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use reach_core::{
    Backend, BackendKind, Capabilities, Capability, CommandLine, Destination, Error, ErrorKind,
    ExecSpec, FileSystem, Platform, Process, Result, Subject, TcpTunnel,
};
use reach_local::LocalBackend;

use crate::fs::RootFs;
use crate::process::ProotProcess;
use crate::root::Root;

/// The search path inside the root, unless the command's environment sets `PATH`.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every command sees of this host, unless [`ProotOptions::bare`].
const SYSTEM_BINDS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// How root file systems are entered.
#[derive(Debug, Clone, Default)]
pub struct ProotOptions {
    /// The `proot` program (default: `proot` on `PATH`).
    pub proot: Option<PathBuf>,
    /// Host paths made visible inside (`-b HOST:GUEST`), besides the system ones.
    pub binds: Vec<(PathBuf, String)>,
    /// Leave out the system binds: by default this host's `/dev`, `/proc` and `/sys` are
    /// bound at the same paths, as commands expect them (`/dev/null`, `/proc/self`).
    pub bare: bool,
    /// Commands see themselves as root, uid 0 (`-0`).
    pub fake_root: bool,
    /// The `qemu-<arch>` user-mode emulator for a root file system of another architecture
    /// (`-q`, from `qemu-user-static`); also the architecture `platform()` reports.
    pub qemu: Option<String>,
}

/// A root file system on this host, entered with `proot`.
#[derive(Debug)]
pub struct ProotBackend {
    destination: Destination,
    options: ProotOptions,
    root: Arc<Root>,
    proot: PathBuf,
    home: String,
    local: LocalBackend,
    fs: Arc<RootFs>,
    /// From `DIR.image.json` (written by `reach pull`): the image's environment.
    image_env: Vec<(String, String)>,
    /// ... and its working directory.
    image_workdir: Option<String>,
}

/// An image's environment and working directory.
type ImageDefaults = (Vec<(String, String)>, Option<String>);

/// The environment and working directory of the image config beside the root
/// (`DIR.image.json`, as `reach pull` saves it), if there is one.
fn image_config(root: &Path) -> Result<ImageDefaults> {
    let mut file = root.as_os_str().to_owned();
    file.push(".image.json");
    let path = PathBuf::from(file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(Error::io(format!("read `{}`", path.display()), e)),
    };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "`{}` is not an image config ({e}): remove it or pull again",
                path.display()
            ),
        )
    })?;
    let config = &config["config"];
    let env = config["Env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str()?.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let workdir = config["WorkingDir"]
        .as_str()
        .filter(|w| !w.is_empty())
        .map(str::to_owned);
    Ok((env, workdir))
}

/// `name` on this host's `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl ProotBackend {
    /// The backend for `proot://DIR`: the root must be a directory, and `proot` must be
    /// installed.
    pub fn new(destination: Destination, options: ProotOptions) -> Result<ProotBackend> {
        let root = Arc::new(Root::open(Path::new(destination.host()))?);
        let missing = |where_: String| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "`{destination}` needs `proot`, which is not {where_}: install Debian's \
                     package (apt-get install proot)"
                ),
            )
        };
        let proot = match &options.proot {
            Some(path) if is_executable(path) => path.clone(),
            Some(path) => return Err(missing(format!("at `{}`", path.display()))),
            None => on_path("proot").ok_or_else(|| missing("on PATH".to_owned()))?,
        };
        let home = if root.dir().join("root").is_dir() {
            "/root".to_owned()
        } else {
            "/".to_owned()
        };
        let fs = Arc::new(RootFs::new(root.clone(), home.clone()));
        let (image_env, image_workdir) = image_config(root.dir())?;
        Ok(ProotBackend {
            destination,
            options,
            root,
            proot,
            home,
            local: LocalBackend::new(),
            fs,
            image_env,
            image_workdir,
        })
    }

    /// The root file system's directory on this host.
    pub fn root(&self) -> &Path {
        self.root.dir()
    }

    /// Where `guest` is on this host, if it names an executable file inside the root.
    fn executable(&self, guest: &str) -> Option<PathBuf> {
        self.root
            .resolve(&self.home, guest, true)
            .ok()
            .filter(|host| is_executable(host))
    }

    /// Refuses a program that is not inside the root, as a shell would say it: not found;
    /// and one built for another architecture when no emulator is configured.
    fn check_program(&self, program: &str, path: &str) -> Result<()> {
        let found = if program.contains('/') {
            self.executable(program)
        } else {
            path.split(':')
                .filter(|dir| !dir.is_empty())
                .find_map(|dir| self.executable(&format!("{dir}/{program}")))
        };
        let Some(host) = found else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "command `{program}` not found in the root file system `{}` (PATH {path})",
                    self.root.dir().display()
                ),
            )
            .with_subject(Subject::Command));
        };
        if self.options.qemu.is_none() {
            if let Some(arch) = arch::of_file(&host).filter(|arch| !arch::runs_here(arch)) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "`{program}` in the root file system `{}` is built for {arch}, which                          this {} host cannot run: run it under qemu (apt-get install                          qemu-user-static; --proot-qemu qemu-{arch}-static)",
                        self.root.dir().display(),
                        std::env::consts::ARCH
                    ),
                )
                .with_subject(Subject::Command));
            }
        }
        Ok(())
    }

    /// The local command that runs `spec` inside the root.
    fn command(&self, mut spec: ExecSpec) -> Result<ExecSpec> {
        let cwd = spec
            .cwd
            .clone()
            .or_else(|| self.image_workdir.clone())
            .unwrap_or_else(|| self.home.clone());
        // The image's environment first: the command's own settings win.
        let mut env = self.image_env.clone();
        env.append(&mut spec.env);
        spec.env = env;
        let cwd_host = self.root.resolve(&self.home, &cwd, true)?;
        if !cwd_host.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "working directory `{cwd}` does not exist in the root file system `{}`",
                    self.root.dir().display()
                ),
            )
            .with_subject(Subject::WorkingDirectory));
        }
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            spec.env.push(("PATH".to_owned(), GUEST_PATH.to_owned()));
        }
        if !spec.env.iter().any(|(k, _)| k == "HOME") {
            spec.env.push(("HOME".to_owned(), self.home.clone()));
        }
        let mut argv: Vec<String> = vec![
            self.proot.to_string_lossy().into_owned(),
            "-r".to_owned(),
            self.root.dir().to_string_lossy().into_owned(),
            "-w".to_owned(),
            cwd,
        ];
        if self.options.fake_root {
            argv.push("-0".to_owned());
        }
        if !self.options.bare {
            for system in SYSTEM_BINDS {
                argv.push("-b".to_owned());
                argv.push(system.to_owned());
            }
        }
        for (host, guest) in &self.options.binds {
            argv.push("-b".to_owned());
            argv.push(format!("{}:{guest}", host.display()));
        }
        if let Some(qemu) = &self.options.qemu {
            argv.push("-q".to_owned());
            argv.push(qemu.clone());
        }
        // proot reports every traced process's end (see `status`); a shell command names
        // its pid first, with no process more.
        argv.extend(["-v".to_owned(), "1".to_owned()]);
        let marker = format!("echo \"{} $$\" >&2", status::MARKER);
        match &spec.command {
            CommandLine::Argv(words) => {
                let program = words
                    .first()
                    .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "an empty command line"))?;
                let path = spec
                    .env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "PATH")
                    .map_or(GUEST_PATH, |(_, v)| v.as_str());
                self.check_program(program, path)?;
                argv.extend(words.iter().cloned());
            }
            CommandLine::Shell(line) => {
                self.check_program("/bin/sh", GUEST_PATH)?;
                argv.extend([
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    format!("{marker}\n{line}"),
                ]);
            }
            CommandLine::LoginShell => {
                self.check_program("/bin/sh", GUEST_PATH)?;
                argv.extend([
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    format!("{marker}; exec /bin/sh -l"),
                ]);
            }
        }
        spec.command = CommandLine::Argv(argv);
        // The working directory is proot's `-w`; proot itself starts in the root.
        spec.cwd = Some(self.root.dir().to_string_lossy().into_owned());
        Ok(spec)
    }
}

#[async_trait]
impl Backend for ProotBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Proot
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::Signals, Capability::Pty, Capability::Tcp])
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        self.local.addr()
    }

    fn user(&self) -> String {
        if self.options.fake_root {
            "root".to_owned()
        } else {
            self.local.user()
        }
    }

    async fn connect(&self) -> Result<()> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn last_error(&self) -> Option<Error> {
        None
    }

    async fn health_check(&self) -> Result<()> {
        self.fs.metadata("/").await.map(drop)
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>> {
        let pty = spec.pty.is_some();
        let command = self.command(spec)?;
        let inner = self.local.exec(command).await?;
        Ok(Box::new(ProotProcess::new(inner, pty)))
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        Ok(self.fs.clone())
    }

    async fn platform(&self) -> Result<Platform> {
        let mut platform = self.local.platform().await?;
        // What the root holds, not this host's distribution.
        platform.variant = None;
        if let Some(qemu) = &self.options.qemu {
            let name = Path::new(qemu)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let arch = name.strip_prefix("qemu-").unwrap_or(&name);
            platform.arch = arch.trim_end_matches("-static").to_owned();
        }
        Ok(platform)
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpTunnel> {
        // proot shares this host's network.
        self.local.connect_tcp(host, port).await
    }
}
