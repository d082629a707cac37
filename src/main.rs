//! `sspo-run`: run, validate, inspect and query sspo pipelines.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
