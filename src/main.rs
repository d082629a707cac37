//! `sspo-run`: run, validate, inspect and query sspo pipelines.

mod cli;
mod export;
mod launch;
mod location;
mod sharded;

fn main() {
    std::process::exit(cli::main());
}
