//! The `kiln` command line. Library errors (thiserror) become `anyhow` errors here, printed
//! with their full context and a non-zero exit status.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
