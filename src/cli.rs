//! The command line: argument parsing, exit codes (0 ok, 1 runtime failure, 2 invalid
//! spec or usage, 130 interrupted), and the wiring of the operator registry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Parser, Subcommand, ValueEnum};
use sspo_common::suggest::did_you_mean;
use sspo_engine::executor::{self, default_run_dir, RunError};
use sspo_engine::sql::{self, Format};
use sspo_engine::{Diagnostics, Pipeline, Plan, ProgressMode, Registry, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "sspo-run",
    version,
    about = "Run SSPO pipelines: declarative, resumable, queryable with SQL",
    long_about = "Run SSPO pipelines: declarative, resumable, queryable with SQL.\n\n\
                  `sspo-run PIPELINE.yaml` runs (or resumes) a pipeline; re-running skips \
                  every node whose output is complete and unchanged."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run or resume a pipeline (the default: `sspo-run PIPELINE.yaml`).
    Run {
        pipeline: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Recompute NODE and everything downstream of it, even when cached.
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
        /// Run only NODE and the nodes it depends on.
        #[arg(long, value_name = "NODE")]
        until: Option<String>,
        /// Progress display (default: bars on a terminal, log lines otherwise).
        #[arg(long, value_enum)]
        progress: Option<ProgressArg>,
        /// Keep each completed node's scratch/ directory (checkpoints, caches), which is
        /// otherwise deleted once the node completes.
        #[arg(long)]
        keep_scratch: bool,
    },
    /// Check a pipeline and report every error as FILE:LINE:COL.
    Validate {
        pipeline: PathBuf,
        /// Override a value of the spec: KEY=VALUE (e.g. nodes.rollouts.params.temperature=0.7).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Per node: cached | partial | stale | missing | damaged (with what is damaged).
    Status {
        pipeline: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Run a SQL query over the tables of a run (one table per node, named after it).
    Sql {
        /// A pipeline file or a run directory.
        source: PathBuf,
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: FormatArg,
        #[command(flatten)]
        target: Target,
    },
    /// Print the first rows of a node's table.
    Show {
        /// A pipeline file or a run directory.
        source: PathBuf,
        node: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: FormatArg,
        #[command(flatten)]
        target: Target,
    },
    /// Check every committed part of a run against its manifest (size and blake3 hash).
    Verify {
        /// A pipeline file or a run directory.
        source: PathBuf,
        /// Check only this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the operators this build provides.
    Ops,
}

#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// Run directory (default: runs/<pipeline name>).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Override a value of the spec: KEY=VALUE (e.g. nodes.rollouts.params.temperature=0.7).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Table,
    Csv,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Csv => Format::Csv,
            FormatArg::Json => Format::Json,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ProgressArg {
    Bars,
    Log,
    Quiet,
}

const SUBCOMMANDS: &[&str] = &[
    "run", "validate", "status", "sql", "show", "verify", "ops", "help",
];

/// `sspo-run PIPELINE.yaml ...` means `sspo-run run PIPELINE.yaml ...`.
fn with_default_subcommand(mut args: Vec<String>) -> Vec<String> {
    if let Some(first) = args.get(1) {
        if !first.starts_with('-') && !SUBCOMMANDS.contains(&first.as_str()) {
            args.insert(1, "run".into());
        }
    }
    args
}

/// A failure with its exit code.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    /// A library error as the user sees it: `error: ` and its `Display`, once. Every sspo
    /// error's `Display` already includes its causes (see `sspo_engine::error`), so the
    /// `source()` chain is not walked: it would only repeat them.
    fn error(code: i32, err: &dyn std::error::Error) -> Self {
        Failure {
            code,
            message: format!("error: {err}"),
        }
    }

    /// A library error after a context the CLI adds itself (`error: CONTEXT: ERROR`).
    fn error_in(code: i32, context: impl std::fmt::Display, err: &dyn std::error::Error) -> Self {
        Failure {
            code,
            message: format!("error: {context}: {err}"),
        }
    }
}

/// A runtime failure (exit 1) of a library call, with the CLI's context for it.
trait Context<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T, Failure>;
}

impl<T, E: std::error::Error> Context<T> for Result<T, E> {
    fn context(self, context: impl std::fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure::error_in(1, context, &e))
    }
}

fn invalid(d: Diagnostics) -> Failure {
    let n = d.len();
    Failure {
        code: 2,
        message: format!("{d}\n{n} error{} found", if n == 1 { "" } else { "s" }),
    }
}

pub fn main() -> i32 {
    let args = with_default_subcommand(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match dispatch(cli.command) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("{}", f.message);
            f.code
        }
    }
}

fn registry() -> Registry {
    sspo_operators::registry()
}

/// Whether building the plan also checks the models on disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ModelChecks {
    /// `run` and `validate`: a model that cannot load fails before any node runs.
    On,
    /// Commands that read what a run wrote: a model changed since must not hide it.
    Off,
}

fn load_plan(pipeline: &Path, sets: &[String], checks: ModelChecks) -> Result<Plan, Failure> {
    let spec = Pipeline::load(pipeline, sets).map_err(invalid)?;
    let registry = match checks {
        ModelChecks::On => registry(),
        ModelChecks::Off => sspo_operators::operators(),
    };
    Plan::build(spec, &registry).map_err(invalid)
}

fn run_dir_of(plan: &Plan, target: &Target) -> PathBuf {
    target
        .run_dir
        .clone()
        .unwrap_or_else(|| default_run_dir(plan))
}

/// A pipeline file → its run dir; a directory → itself.
fn resolve_source(source: &Path, target: &Target) -> Result<PathBuf, Failure> {
    if source.is_dir() {
        return Ok(source.to_path_buf());
    }
    if !source.exists() {
        return Err(Failure {
            code: 2,
            message: format!(
                "error: {} is neither a pipeline file nor a run directory",
                source.display()
            ),
        });
    }
    let plan = load_plan(source, &target.sets, ModelChecks::Off)?;
    Ok(run_dir_of(&plan, target))
}

fn dispatch(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Run {
            pipeline,
            target,
            force,
            until,
            progress,
            keep_scratch,
        } => {
            let plan = load_plan(&pipeline, &target.sets, ModelChecks::On)?;
            // Before any tensor work and before other threads start (it sets libtorch's
            // environment variables).
            sspo_operators::model_port::configure_cpu(&plan.pipeline.cpu)
                .context(pipeline.display())?;
            let run_dir = run_dir_of(&plan, &target);
            install_ctrlc();
            let opts = RunOptions {
                run_dir: run_dir.clone(),
                force,
                until,
                progress: match progress {
                    Some(ProgressArg::Bars) => ProgressMode::Bars,
                    Some(ProgressArg::Log) => ProgressMode::Log,
                    Some(ProgressArg::Quiet) => ProgressMode::Quiet,
                    None => ProgressMode::detect(),
                },
                keep_scratch,
            };
            match executor::run(&plan, &opts) {
                Ok(outcomes) => {
                    print_outcomes(&outcomes, &run_dir);
                    Ok(())
                }
                Err(e @ RunError::Interrupted(_)) => Err(Failure {
                    code: 130,
                    message: format!("{e}"),
                }),
                Err(e @ RunError::UnknownNode(..)) => Err(Failure::error(2, &e)),
                Err(e) => Err(Failure::error(1, &e)),
            }
        }
        Command::Validate { pipeline, sets } => {
            let plan = load_plan(&pipeline, &sets, ModelChecks::On)?;
            println!(
                "{}: ok ({} nodes, {} models)",
                pipeline.display(),
                plan.nodes.len(),
                plan.pipeline.models.len()
            );
            Ok(())
        }
        Command::Status { pipeline, target } => {
            let plan = load_plan(&pipeline, &target.sets, ModelChecks::Off)?;
            let run_dir = run_dir_of(&plan, &target);
            let rows = executor::status(&plan, &run_dir)
                .context(format!("reading {}", run_dir.display()))?;
            println!("{:<20} {:<8} {:>10}  op", "node", "status", "rows");
            for (i, r) in rows.iter().enumerate() {
                let op = &plan.nodes[plan.order[i]].spec.op;
                let n = r
                    .manifest
                    .as_ref()
                    .map(|m| m.primary_rows().to_string())
                    .unwrap_or_else(|| "-".into());
                println!("{:<20} {:<8} {n:>10}  {op}", r.node, r.status.as_str());
                for reason in &r.reasons {
                    println!("    {reason}");
                }
            }
            Ok(())
        }
        Command::Sql {
            source,
            query,
            format,
            target,
        } => {
            let run_dir = resolve_source(&source, &target)?;
            let batches = sql::query(&run_dir, &query).map_err(|e| Failure::error(1, &e))?;
            print!(
                "{}",
                ensure_newline(sql::render(&batches, format.into()).context("rendering")?)
            );
            Ok(())
        }
        Command::Show {
            source,
            node,
            limit,
            format,
            target,
        } => {
            let run_dir = resolve_source(&source, &target)?;
            let tables = sql::tables(&run_dir).context("listing tables")?;
            if !tables.iter().any(|t| t.name == node) {
                let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                let hint = did_you_mean(&node, names.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(Failure {
                    code: 2,
                    message: format!(
                        "error: no table `{node}` in {}{hint}; tables: {}",
                        run_dir.display(),
                        names.join(", ")
                    ),
                });
            }
            let q = format!("SELECT * FROM \"{node}\" LIMIT {limit}");
            let batches = sql::query(&run_dir, &q).context("querying")?;
            print!(
                "{}",
                ensure_newline(sql::render(&batches, format.into()).context("rendering")?)
            );
            Ok(())
        }
        Command::Verify {
            source,
            node,
            target,
        } => {
            let run_dir = resolve_source(&source, &target)?;
            verify(&run_dir, node.as_deref())
        }
        Command::Ops => {
            for op in registry().iter() {
                println!("{:<10} {}", op.name(), op.summary());
            }
            Ok(())
        }
    }
}

/// `verify`: one line per failure, a summary; exit 1 if anything failed.
fn verify(run_dir: &Path, node: Option<&str>) -> Result<(), Failure> {
    use sspo_engine::integrity::{self, VerifyError};
    let verdicts = integrity::verify(run_dir, node).map_err(|e| match e {
        VerifyError::UnknownNode { .. } => Failure::error(2, &e),
        VerifyError::NotARun(_) => Failure::error(1, &e),
    })?;
    let (mut parts, mut bytes, mut unhashed, mut damaged, mut unreadable) = (0, 0, 0, 0, 0);
    for v in &verdicts {
        match &v.result {
            Ok(c) => {
                parts += c.parts;
                bytes += c.bytes;
                unhashed += c.unhashed;
                damaged += c.damage.len();
                for d in &c.damage {
                    println!("FAILED {d}");
                }
            }
            Err(e) => {
                unreadable += 1;
                println!("FAILED node `{}`: {e}", v.node);
            }
        }
    }
    let nodes = verdicts.len();
    let old = if unhashed > 0 {
        format!(" ({unhashed} without a recorded hash, from an older sspo-run: checked for presence only)")
    } else {
        String::new()
    };
    let checked = format!("{nodes} node(s), {parts} part(s), {bytes} bytes{old}");
    let failures = damaged + unreadable;
    if failures == 0 {
        println!("{}: ok: {checked}", run_dir.display());
        return Ok(());
    }
    let repair = if damaged > 0 {
        "; the next run recomputes the damaged chunks and what depends on them"
    } else {
        ""
    };
    Err(Failure {
        code: 1,
        message: format!(
            "error: {}: {failures} failure(s) in {checked}{repair}",
            run_dir.display()
        ),
    })
}

fn ensure_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn print_outcomes(outcomes: &[sspo_engine::NodeOutcome], run_dir: &Path) {
    for o in outcomes {
        match o.action {
            "cached" => eprintln!("  {:<20} cached    {:>10} rows", o.node, o.rows),
            action => eprintln!(
                "  {:<20} {:<9} {:>10} rows  {:.1}s",
                o.node, action, o.rows, o.seconds
            ),
        }
    }
    for o in outcomes {
        if let Some(summary) = &o.summary {
            eprintln!("\n{}:\n{}", o.node, summary.trim_end());
        }
    }
    eprintln!("run directory: {}", run_dir.display());
}

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupt: finishing the current chunk's commit (Ctrl-C again stops at once; nothing half-written is ever visible)");
            sspo_engine::run::request_cancel();
        } else {
            std::process::exit(130);
        }
    });
}
