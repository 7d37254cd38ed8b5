//! `reach completions SHELL` and `reach manpage`: the command line described for shells and
//! `man`, generated from the clap types so they cannot drift from what `reach` accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "reach", &mut out);
    emit(&out, "the completion script")
}

/// Prints the manual page (roff), or writes it and the subcommands' pages into `dir`.
pub fn manpage(dir: Option<&Path>) -> i32 {
    let Some(dir) = dir else {
        let mut out = Vec::new();
        if let Err(err) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
            eprintln!("reach: cannot render the manual page: {err}");
            return exit::FAILURE;
        }
        return emit(&out, "the manual page");
    };
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => 0,
        Err(err) => {
            eprintln!(
                "reach: cannot write the manual pages into `{}`: {err}",
                dir.display()
            );
            exit::FAILURE
        }
    }
}

fn emit(bytes: &[u8], what: &str) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        // A reader that stops early (`| head`) is not a failure of ours.
        Err(err) if matches!(err.kind(), std::io::ErrorKind::BrokenPipe) => 0,
        Err(err) => {
            eprintln!("reach: cannot write {what} to stdout: {err}");
            exit::FAILURE
        }
    }
}
