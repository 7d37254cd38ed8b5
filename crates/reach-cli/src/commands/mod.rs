//! What each subcommand does. `run` parses, builds a runtime, dispatches, and returns the
//! exit code; nothing below it calls `std::process::exit`.

mod connections;
mod cp;
mod exec;
mod fanout;
mod files;
mod forward;
mod generate;
mod info;
mod plugin;
mod pull;
mod rootfs;
mod serve;

use std::ffi::OsString;
use std::sync::{Arc, Mutex, OnceLock};

use clap::Parser;
use reach::{Backend, Error, ErrorKind, FileSystem, Location, Registry};

use crate::cli::{Cli, Command, ConnArgs};
use crate::{exit, output, term};

/// Runs the command line `args` and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    // What describes the command line itself needs no runtime.
    match &cli.command {
        Command::Completions(args) => return generate::completions(args.shell),
        Command::Manpage(args) => return generate::manpage(args.out_dir.as_deref()),
        _ => {}
    }
    // A copy hashes and encrypts on separate threads; everything else is I/O-bound.
    let threaded = match &cli.command {
        Command::Cp(_) | Command::Serve(_) | Command::Forward(_) => true,
        Command::Exec(args) => args.fans_out(),
        Command::Connections(args) => matches!(
            args.action,
            Some(crate::cli::ConnectionsAction::Daemon { .. })
        ),
        _ => false,
    };
    let mut builder = if threaded {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("reach: cannot start the async runtime: {err}");
            return exit::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            output::report_error(&err, json);
            exit::for_error(&err)
        }
    }
}

/// The backends made so far, by destination, so that several paths on one target share
/// one connection.
static BACKENDS: Mutex<Vec<(String, Arc<dyn Backend>)>> = Mutex::new(Vec::new());
/// The registry built from the connection flags.
static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn connect_options(conn: &ConnArgs) -> reach::ConnectOptions {
    let mut options =
        crate::warm::ConnWire::from_args(conn).options(Some(Arc::new(term::prompt_secret)));
    // A configuration that cannot be read is reported by `registry`.
    if let Ok(settings) = reach_plugin::PluginSettings::load_user() {
        options.plugin.settings = settings;
    }
    options.plugin.allow_unpinned = conn.allow_unpinned_plugin;
    options.proot.binds = conn
        .proot_bind
        .iter()
        .map(|bind| match bind.split_once(':') {
            Some((host, guest)) => (std::path::PathBuf::from(host), guest.to_owned()),
            None => (std::path::PathBuf::from(bind), bind.clone()),
        })
        .collect();
    options.proot.fake_root = conn.proot_fake_root;
    options.proot.qemu = conn.proot_qemu.clone();
    if let Some(limit) = conn.connect_timeout {
        options.plugin.connect_timeout = limit;
    }
    // For adapter authors: every control line of each session, both ways.
    options.plugin.transcript = std::env::var_os("REACH_PLUGIN_TRANSCRIPT")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    options
}

/// The registry for `options`; a plugin configuration that cannot be read is the error of
/// every plugin destination.
fn registry(options: &reach::ConnectOptions) -> Registry {
    match reach_plugin::PluginSettings::load_user() {
        Ok(_) => Registry::with_options(options),
        Err(e) => {
            let mut registry = Registry::with_options(options);
            registry.set_fallback(move |_| Err(e.clone()));
            registry
        }
    }
}

async fn dispatch(mut cli: Cli) -> reach::Result<i32> {
    let json = cli.json;
    let mode = match &cli.command {
        Command::Serve(_) => crate::logging::Mode::Serve,
        Command::Connections(args)
            if matches!(
                args.action,
                Some(crate::cli::ConnectionsAction::Daemon { .. })
            ) =>
        {
            crate::logging::Mode::Daemon
        }
        _ => crate::logging::Mode::Command,
    };
    if crate::logging::init(cli.verbose, mode) {
        // The connection's story is told by the process that makes it.
        cli.conn.no_reuse = true;
    }
    let options = connect_options(&cli.conn);
    let _ = REGISTRY.set(registry(&options));
    match cli.command {
        Command::Exec(args) => exec::exec(args, json, &cli.conn, &options).await,
        Command::Shell(args) => exec::shell(args, json).await,
        Command::Info(args) => info::info(args, json).await,
        Command::Ls(args) => files::ls(args, json).await,
        Command::Stat(args) => files::stat(args, json).await,
        Command::Cat(args) => files::cat(args).await,
        Command::Put(args) => files::put(args, json).await,
        Command::Rm(args) => files::rm(args, json).await,
        Command::Mkdir(args) => files::mkdir(args, json).await,
        Command::Mv(args) => files::mv(args, json).await,
        Command::Chmod(args) => files::chmod(args, json).await,
        Command::Cp(args) => cp::cp(args, json).await,
        Command::Forward(args) => forward::forward(args, json).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Connections(args) => connections::connections(args, json).await,
        Command::Plugin(args) => plugin::plugin(args, json, &cli.conn).await,
        Command::Rootfs(args) => rootfs::rootfs(args, json).await,
        Command::Pull(args) => pull::pull(args, json).await,
        Command::Completions(_) | Command::Manpage(_) => Ok(0),
    }
}

/// Resolves and connects a destination (once per destination per run).
async fn connect(destination: &reach::Destination) -> reach::Result<Arc<dyn Backend>> {
    let backend = backend_for(destination)?;
    backend.connect().await?;
    Ok(backend)
}

/// The backend for a destination, not yet connected (made once per destination per run).
fn backend_for(destination: &reach::Destination) -> reach::Result<Arc<dyn Backend>> {
    let key = destination.to_string();
    let known = BACKENDS
        .lock()
        .ok()
        .and_then(|made| made.iter().find(|(k, _)| *k == key).map(|(_, b)| b.clone()));
    let backend = match known {
        Some(backend) => backend,
        None => {
            let backend = REGISTRY
                .get_or_init(Registry::with_defaults)
                .backend(destination)?;
            if let Ok(mut made) = BACKENDS.lock() {
                made.push((key, backend.clone()));
            }
            backend
        }
    };
    Ok(backend)
}

/// The paths a file argument names. Wildcards (`*`, `?`, `[...]`) in an argument that names
/// its destination (`DEST:PATH`, `local:PATH`, `scheme://host/PATH`) are expanded on the
/// target, as scp expands them; a bare local path is taken as written, since the shell has
/// already expanded it.
async fn expand(
    argument: &str,
    location: &Location,
    fs: &dyn FileSystem,
) -> reach::Result<Vec<String>> {
    if location.destination.is_local() && !argument.starts_with("local:") {
        return Ok(vec![location.path.clone()]);
    }
    let paths = reach::glob::expand(fs, &location.path).await?;
    if paths.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "nothing matches `{}` on `{}` (`*`, `?` and `[...]` are wildcards; put a \\ \
                 before one to mean the character itself)",
                location.path, location.destination
            ),
        ));
    }
    Ok(paths)
}
