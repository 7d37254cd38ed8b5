//! The `reach` command. `main` stays thin: parse, run, exit with the code `run` chose.

mod cli;
mod commands;
mod exit;
mod inventory;
mod logging;
mod output;
mod progress;
mod term;
mod warm;

fn main() {
    let code = commands::run(std::env::args_os());
    // Exit without waiting for the stdin reader thread, which may be blocked on a terminal.
    output::flush_stdio();
    std::process::exit(code);
}
