//! What each subcommand does. `run` parses, builds a runtime, dispatches, and returns the
//! exit code; nothing below it calls `std::process::exit`.

mod exec;
mod files;
mod info;

use std::ffi::OsString;
use std::sync::Arc;

use clap::Parser;
use reach::{Backend, Registry};

use crate::cli::{Cli, Command};
use crate::{exit, output};

/// Runs the command line `args` and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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

async fn dispatch(cli: Cli) -> reach::Result<i32> {
    let json = cli.json;
    match cli.command {
        Command::Exec(args) => exec::exec(args, json).await,
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
    }
}

/// Resolves and connects a destination.
async fn connect(destination: &reach::Destination) -> reach::Result<Arc<dyn Backend>> {
    let backend = Registry::with_defaults().backend(destination)?;
    backend.connect().await?;
    Ok(backend)
}
