//! The command line, as clap types. Commands turn these into work; nothing here runs anything.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Run commands and move files on any machine: the local host (`local`), SSH servers
/// (`ssh://[user@]host[:port]` or `[user@]host`) and Docker containers (`docker://name`), through one
/// interface.
#[derive(Debug, Parser)]
#[command(name = "reach", version, propagate_version = true)]
pub struct Cli {
    /// Print machine-readable JSON instead of human output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Tell what happens on stderr: -v the connection's phases and host key check, -vv also
    /// the algorithms negotiated and each authentication method tried (and why it was
    /// refused), -vvv everything. Connects directly, not through the connection daemon.
    /// RUST_LOG (e.g. `reach_ssh=debug`) takes precedence. Secrets are never logged.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(flatten)]
    pub conn: ConnArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command on a destination, streaming stdin, stdout and stderr.
    ///
    /// Exits with the command's exit code, 128+N if a signal N killed it, 124 if --timeout
    /// expired, 127/126 if the command is missing/not executable, 255 if the transport failed
    /// and 2 for usage errors. A single CMD word holding spaces or shell syntax runs through
    /// the target's shell; several words run as argv, without a shell.
    Exec(ExecArgs),
    /// Open an interactive login shell on a destination (with a terminal when stdin is one).
    Shell(ShellArgs),
    /// Describe a destination: backend, address, user, platform, connect time.
    Info(InfoArgs),
    /// List a directory (DEST:PATH).
    Ls(LsArgs),
    /// Show the metadata of paths (DEST:PATH).
    Stat(PathsArgs),
    /// Print files (DEST:PATH) to stdout.
    Cat(PathsArgs),
    /// Write stdin to a file (DEST:PATH); the file is replaced only once all of stdin arrived.
    Put(PutArgs),
    /// Remove files, or directory trees with -r (DEST:PATH).
    Rm(RmArgs),
    /// Create directories (DEST:PATH).
    Mkdir(MkdirArgs),
    /// Rename a path on one destination (DEST:FROM DEST:TO).
    Mv(MvArgs),
    /// Change permission bits (octal MODE, DEST:PATH).
    Chmod(ChmodArgs),
    /// Copy files and trees between any two destinations, like scp: `SRC... DEST`, each a
    /// `PATH`, `DEST:PATH` or `scheme://host/PATH`.
    ///
    /// Every file is written to `.NAME.reach-part` beside its destination, hashed (SHA-256)
    /// against what was sent, then renamed into place: an interrupted or failed copy never
    /// leaves a partial file where the old one was. Exits 0 when everything was copied,
    /// else with the code of the first failure (1 for a missing source, 255 transport).
    Cp(CpArgs),
    /// Forward local TCP ports to addresses as a destination sees them, like `ssh -N -L`:
    /// `[BIND:]PORT:HOST:HOSTPORT`, where HOST is resolved and connected on the destination
    /// (`127.0.0.1` is its own loopback).
    ///
    /// Works on every backend: over SSH (the server's TCP forwarding), in a container
    /// through reach's agent (its ports need not be published), and on `local`. Listens on
    /// 127.0.0.1 unless BIND says otherwise (`0.0.0.0`, `[::1]`, `*`); PORT 0 picks a free
    /// port, printed when listening. Runs until interrupted; a connection that cannot be
    /// made is closed and reported, and the rest go on.
    Forward(ForwardArgs),
    /// Run an SSH gateway: OpenSSH clients connect and each session runs on a backend (this
    /// host, or a Docker container per connection, per session or per user).
    ///
    /// With no flags: listens on 127.0.0.1:2222, runs sessions here as this user, lets in the
    /// keys of ~/.ssh/authorized_keys, keeps its host key in ~/.local/state/reach/serve.
    /// Flags override the --config file. Logs are JSON lines on stderr. SIGINT/SIGTERM stop it
    /// and remove its containers.
    Serve(ServeArgs),
    /// List or close the warm connections that the connection daemon holds.
    ///
    /// `reach exec` on an SSH or Docker destination runs through a per-user background
    /// process (started on first use; its socket is in $XDG_RUNTIME_DIR/reach, mode 0700) that
    /// keeps the connection open, so the next call to the same destination with the same
    /// settings skips the handshake. It closes connections unused for the idle time
    /// (`[connections] idle` in reach.toml, default 5m) and then exits.
    Connections(ConnectionsArgs),
    /// List plugin adapters (`reach-backend-<scheme>`) or pin one by its SHA-256.
    ///
    /// Adapters and pins come from `[plugins]` in your own configuration
    /// ($XDG_CONFIG_HOME/reach/reach.toml, else ~/.config/reach/reach.toml) and adapters from
    /// PATH, never from a reach.toml in the working directory. An adapter runs only when its
    /// digest matches its pin, unless unpinned ones are allowed (--allow-unpinned-plugin).
    Plugin(PluginArgs),
    /// Move a root file system in or out of a target as a tar stream, keeping owners,
    /// modes, hard links, symbolic links, device nodes and extended attributes where the
    /// target allows (local, ssh (GNU tar there), docker (a whole container, through the
    /// engine), proot).
    Rootfs(RootfsArgs),
    /// Pull an OCI or Docker image from a registry into a new directory, as a root file
    /// system, without a daemon: token auth and `docker login` credentials, the platform
    /// picked from a manifest list, every blob verified against its digest as it streams,
    /// layers fetched in parallel into a cache (a pull that was cut off resumes) and applied
    /// with their whiteouts. The image config is saved as DIR.image.json, which
    /// `reach exec proot://DIR` uses. Run it with `reach exec proot://DIR -- CMD`.
    Pull(PullArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// bash: `source <(reach completions bash)`, or save it as
    /// /usr/share/bash-completion/completions/reach. zsh: save it as `_reach` in a directory
    /// of $fpath. fish: save it as ~/.config/fish/completions/reach.fish.
    Completions(CompletionsArgs),
    /// Print reach's manual page (roff), for `man -l -`; with --out-dir, write it and one
    /// page per subcommand (`reach-cp.1`, ...) there instead.
    Manpage(ManpageArgs),
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write `reach.1` and a page per subcommand into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub action: PluginAction,
}

#[derive(Debug, Subcommand)]
pub enum PluginAction {
    /// Each adapter: where it came from, its pin, and what it says it can do (asked only of
    /// adapters allowed to run).
    List,
    /// Record the SHA-256 of the adapter for SCHEME (the file PATH, else the configured or
    /// PATH one) in your configuration, so that reach runs it, and only those bytes.
    Pin {
        /// The scheme it serves (`lxd` for `lxd://`).
        scheme: String,
        /// The adapter's file.
        path: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `[REGISTRY/]NAME[:TAG|@DIGEST]` (Docker Hub when no registry is named).
    pub image: String,
    /// The directory to make (it must not exist).
    pub dir: std::path::PathBuf,
    /// `os/arch[/variant]` to pick from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Speak plain HTTP to this registry (`host:port`); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RootfsArgs {
    #[command(subcommand)]
    pub action: RootfsAction,
}

#[derive(Debug, Subcommand)]
pub enum RootfsAction {
    /// Write the tree at DEST[:PATH] (`/` when no path is given) to FILE.tar, or to stdout
    /// with `-`. The file appears only once the whole tree is in it.
    Export {
        /// `docker://NAME`, `proot:///srv/root`, `host:/srv/root`, `/srv/root` ...
        source: String,
        /// The tar file to write, or `-` for stdout.
        file: String,
    },
    /// Unpack FILE.tar (or stdin with `-`) into DEST:PATH, made if missing.
    Import {
        /// The tar file to read, or `-` for stdin.
        file: String,
        /// `proot:///srv/root:/`, `host:/srv/new-root`, `docker://NAME:/` ...
        destination: String,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    #[command(subcommand)]
    pub action: Option<ConnectionsAction>,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsAction {
    /// List the warm connections (the default).
    List,
    /// Close the connections to these destinations, or all of them with --all.
    Close {
        /// Destinations, as given to `reach exec`.
        destinations: Vec<String>,
        /// Close every connection.
        #[arg(long)]
        all: bool,
    },
    /// Close every connection and stop the connection daemon.
    Stop,
    /// Run the connection daemon in the foreground (what `reach exec` starts in the background).
    #[command(hide = true)]
    Daemon {
        /// Close connections unused this long, and exit when none is left.
        #[arg(long, value_parser = parse_duration, default_value = "5m")]
        idle: Duration,
    },
}

/// How to connect: the same flags on every subcommand, before or after its name.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// SSH: the private key to offer first (a file, or the key text itself).
    #[arg(short = 'i', long = "identity", value_name = "FILE", global = true)]
    pub identity: Option<std::path::PathBuf>,
    /// SSH: the known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long = "known-hosts", value_name = "FILE", global = true)]
    pub known_hosts: Option<std::path::PathBuf>,
    /// SSH: record an unknown host key instead of refusing it (a changed key is always
    /// refused), like StrictHostKeyChecking=accept-new.
    #[arg(long = "accept-new-host-key", global = true)]
    pub accept_new_host_key: bool,
    /// SSH: the client configuration file (default ~/.ssh/config).
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE", global = true)]
    pub ssh_config: Option<std::path::PathBuf>,
    /// SSH: a client configuration option that wins over the config files, as with
    /// `ssh -o` (`-o KexAlgorithms=+diffie-hellman-group14-sha1`); repeatable.
    #[arg(
        short = 'o',
        long = "ssh-option",
        value_name = "KEYWORD=VALUE",
        global = true
    )]
    pub ssh_options: Vec<String>,
    /// SSH: the port, unless the destination names one.
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    pub port: Option<u16>,
    /// SSH: the user to log in as, unless the destination names one.
    #[arg(short = 'l', long = "login", value_name = "USER", global = true)]
    pub login: Option<String>,
    /// SSH: jump hosts, comma-separated `[user@]host[:port]` (like ssh -J).
    #[arg(short = 'J', long = "jump", value_name = "HOSTS", global = true)]
    pub jump: Option<String>,
    /// Limit on connecting and authenticating (`10s`; default from the config, else 15s).
    #[arg(long = "connect-timeout", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub connect_timeout: Option<Duration>,
    /// Docker: the engine's address (`unix:///var/run/docker.sock`, `tcp://host:2376`);
    /// default DOCKER_HOST, as the docker CLI.
    #[arg(long = "docker-host", value_name = "URL", global = true)]
    pub docker_host: Option<String>,
    /// Docker: run every command as an engine exec instead of installing reach's small
    /// agent in the container (slower; no signals or kill-on-timeout).
    #[arg(long = "no-agent", global = true)]
    pub no_agent: bool,
    /// SSH: run commands through reach's small agent on the server (copied once into a
    /// private directory, started on one session): any number at once whatever the
    /// server's MaxSessions, signals to the command's process group, kill-on-timeout.
    /// `auto` uses it where it can run and says in `reach info` why not otherwise; `never`
    /// (the default) runs each command on its own SSH session. Not ssh-agent (that is -A).
    #[arg(
        long = "ssh-agent-helper",
        value_name = "auto|always|never",
        global = true
    )]
    pub ssh_agent_helper: Option<reach::ssh::AgentHelper>,
    /// SSH: the directory on the server for reach's agent (default
    /// `$XDG_RUNTIME_DIR/reach`, else `~/.cache/reach`); made 0700; must allow executing.
    #[arg(long = "ssh-agent-helper-dir", value_name = "DIR", global = true)]
    pub ssh_agent_helper_dir: Option<String>,
    /// Connect directly instead of through the per-user connection daemon that keeps
    /// connections warm between calls (also: REACH_NO_REUSE=1, or `[connections] reuse =
    /// false` in reach.toml).
    #[arg(long = "no-reuse", global = true)]
    pub no_reuse: bool,
    /// SSH: forward the ssh-agent to the command or shell (`ssh -A`), so that it can use
    /// your keys (e.g. `git pull`) without copying them there; whoever is root on the
    /// target can use them too while it runs. Also `ForwardAgent yes` in the SSH config.
    #[arg(short = 'A', long = "forward-agent", global = true)]
    pub forward_agent: bool,
    /// Run plugin adapters that have no pin (found on PATH or configured without `sha256`);
    /// also `[plugins] allow_unpinned = true`. Off by default: a pinned adapter runs only
    /// when its SHA-256 matches.
    #[arg(long = "allow-unpinned-plugin", global = true)]
    pub allow_unpinned_plugin: bool,
    /// proot: make a host path visible inside the root file system (`HOST:GUEST`, or
    /// `PATH` at the same place); repeatable.
    #[arg(long = "proot-bind", value_name = "HOST:GUEST", global = true)]
    pub proot_bind: Vec<String>,
    /// proot: commands see themselves as root (uid 0), as `proot -0`.
    #[arg(long = "proot-fake-root", global = true)]
    pub proot_fake_root: bool,
    /// proot: run a root file system of another architecture with this `qemu-<arch>`
    /// emulator (from `qemu-user-static`), as `proot -q`.
    #[arg(long = "proot-qemu", value_name = "PROGRAM", global = true)]
    pub proot_qemu: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Where to run: `local`, `ssh://[user@]host[:port]`, `[user@]host`, `docker://name`, or
    /// `@GROUP` from the inventory. With several (or -H, or a group) the command runs on all
    /// of them at once, its output lines prefixed with their target.
    #[arg(value_name = "DEST")]
    pub destinations: Vec<String>,
    /// Also run on the destinations in FILE, one per line (`#` comments); repeatable.
    #[arg(short = 'H', long = "hosts", value_name = "FILE")]
    pub hosts: Vec<std::path::PathBuf>,
    /// The inventory of groups (default: $REACH_INVENTORY, ./reach.toml,
    /// ~/.config/reach/reach.toml).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<std::path::PathBuf>,
    /// Several targets: how many connect and run at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 64)]
    pub jobs: usize,
    /// Several targets: after the first that fails, start no more and stop those running.
    #[arg(long = "fail-fast")]
    pub fail_fast: bool,
    /// Several targets: print each distinct output once, under the targets that produced it.
    #[arg(long = "group")]
    pub group: bool,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Run in this directory.
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run under a pseudo-terminal (for interactive programs).
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Do not forward stdin (the command reads EOF at once).
    #[arg(short = 'n', long = "no-stdin")]
    pub no_stdin: bool,
    /// Kill the command and what it started after this long (`500ms`, `10s`, `2m`, `1h`);
    /// with several targets, the limit on each target's connect and run together.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// Whether this runs on several targets (any number but one plain destination).
    pub fn fans_out(&self) -> bool {
        self.destinations.len() != 1
            || !self.hosts.is_empty()
            || self.destinations.iter().any(|d| d.starts_with('@'))
    }
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Where to open the shell.
    pub destination: String,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Where the connections are made from.
    pub destination: String,
    /// `[BIND:]PORT:HOST:HOSTPORT`, one or more (`8080:127.0.0.1:80`, `5432:db:5432`);
    /// none: the `LocalForward` lines of the SSH config for an SSH destination.
    #[arg(value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub forwards: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The destination to describe.
    pub destination: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long listing: type, mode, size, modification time (`-l` is the login user).
    #[arg(long = "long")]
    pub long: bool,
    /// Include names starting with `.`.
    #[arg(short = 'a')]
    pub all: bool,
    /// The directory (DEST:PATH; `*`, `?` and `[...]` expand on the target, and several matches are
    /// listed as themselves).
    pub location: String,
}

#[derive(Debug, Args)]
pub struct PathsArgs {
    /// Paths (DEST:PATH; `*`, `?` and `[...]` in a DEST:PATH expand on the target).
    #[arg(required = true)]
    pub locations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Permission bits of the file, octal.
    #[arg(short = 'm', long = "mode", value_parser = parse_mode, default_value = "644")]
    pub mode: u32,
    /// The file to write (DEST:PATH).
    pub location: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove directories and everything in them.
    #[arg(short = 'r', short_alias = 'R', long = "recursive")]
    pub recursive: bool,
    /// Ignore paths that do not exist.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// Paths (DEST:PATH; `*`, `?` and `[...]` in a DEST:PATH expand on the target).
    #[arg(required = true)]
    pub locations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// Create missing parents; no error if the directory exists (`-p` is the port).
    #[arg(long = "parents")]
    pub parents: bool,
    /// Directories (DEST:PATH).
    #[arg(required = true)]
    pub locations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    /// What to rename (DEST:PATH).
    pub from: String,
    /// The new name, on the same destination (DEST:PATH or a bare path on it).
    pub to: String,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories and everything in them (symlinks are copied as links).
    #[arg(short = 'r', short_alias = 'R', long = "recursive")]
    pub recursive: bool,
    /// Keep permission bits and modification times (`-p` is the port, as in ssh).
    #[arg(short = 'a', long = "preserve")]
    pub preserve: bool,
    /// Continue a copy that was interrupted, from the part already written (when it still
    /// matches the source); failed copies keep their part for the next --resume.
    #[arg(long)]
    pub resume: bool,
    /// Files copied at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 32)]
    pub jobs: usize,
    /// Do not hash the written copy to check it.
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// Do not flush each file to stable storage before renaming it into place.
    #[arg(long = "no-fsync")]
    pub no_fsync: bool,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Sources, then the destination (a directory when there are several sources). Wildcards in a
    /// DEST:PATH source expand on its target, as with scp.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DEST")]
    pub locations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see docs/GATEWAY.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Where to listen (default 127.0.0.1:2222).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The authorized_keys file for every user; `%u` in it is the user name.
    #[arg(long = "authorized-keys", value_name = "FILE")]
    pub authorized_keys: Option<std::path::PathBuf>,
    /// Where the host key and instance id are kept.
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Where sessions run.
    #[arg(long, value_name = "local|docker")]
    pub backend: Option<String>,
    /// Docker: the image of session containers.
    #[arg(long, value_name = "IMG")]
    pub image: Option<String>,
    /// Docker: a container per `connection`, per `session` (channel), or per user
    /// (`persistent`).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Serve Prometheus metrics at ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Read a password on stdin, print its argon2 hash for the config file, and exit.
    #[arg(long = "hash-password")]
    pub hash_password: bool,
}

#[derive(Debug, Args)]
pub struct ChmodArgs {
    /// Octal permission bits, like `755` or `0640`.
    #[arg(value_parser = parse_mode)]
    pub mode: u32,
    /// Paths (DEST:PATH; `*`, `?` and `[...]` in a DEST:PATH expand on the target).
    #[arg(required = true)]
    pub locations: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not K=V (a variable name, `=`, a value)")),
    }
}

/// `500ms`, `10s`, `2m`, `1h`, or a number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: use 500ms, 10s, 2m, 1h or plain seconds");
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "`{s}` is not an octal mode (like 755 or 0640; symbolic modes are not supported)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "0", "-1s", "5d", "abc", "NaN", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_and_env() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o4711"), Ok(0o4711));
        assert!(parse_mode("u+x").unwrap_err().contains("symbolic"));
        assert!(parse_mode("99999").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
