//! The command line: argument parsing, exit codes (0 ok, 1 runtime failure, 2 invalid
//! spec or usage, 130 interrupted), and the wiring of the operator registry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Parser, Subcommand, ValueEnum};
use sspo_common::suggest::did_you_mean;
use sspo_engine::executor::{self, default_run_dir, RunError};
use sspo_engine::sql::{self, Format};
use sspo_engine::{Diagnostics, Pipeline, Plan, ProgressMode, Registry, RunOptions};

use crate::{export, launch, location, sharded};

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
        /// Run only the chunks that shard I of N owns (chunk % N == I), committed
        /// create-only; `auto` reads SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or
        /// JOB_COMPLETION_INDEX with SSPO_SHARD_COUNT. The node is committed when its last
        /// chunk is done (or by `sspo-run commit`). See docs/scale-out.md.
        #[arg(long, value_name = "I/N|auto", conflicts_with_all = ["force", "until"])]
        shard: Option<String>,
        /// With --shard: shard only NODE (default: every shardable node whose inputs are
        /// committed).
        #[arg(long, value_name = "NODE", requires = "shard")]
        node: Option<String>,
        /// With --shard: do not commit a node whose last chunk this shard completes;
        /// leave it to `sspo-run commit`.
        #[arg(long, requires = "shard")]
        no_commit: bool,
    },
    /// Commit a sharded node once every chunk is done: writes its manifest (and runs what
    /// follows its chunk loop, e.g. evaluate's summary); refuses, naming the missing
    /// chunks, when one is not.
    Commit {
        pipeline: PathBuf,
        /// Commit only NODE (default: every node with chunks from shards).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Write launch files for a sharded run: one Slurm array job or Kubernetes Indexed
    /// Job per stage, with the commits between stages.
    Plan {
        pipeline: PathBuf,
        /// Shards (array tasks / job indices) per shardable node.
        #[arg(long, value_name = "N")]
        shards: u64,
        #[arg(long, value_enum)]
        emit: launch::Emit,
        /// Directory for the files (default: launch/<pipeline name>-<emit>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Container image (Kubernetes).
        #[arg(long, default_value = "sspo-run:latest")]
        image: String,
        /// PersistentVolumeClaim holding the working directory (Kubernetes).
        #[arg(long, value_name = "NAME", default_value = "sspo-work")]
        volume_claim: String,
        #[command(flatten)]
        target: Target,
    },
    /// Export a node's table for another trainer: `--format trl-dpo` writes `pair`'s
    /// pairs as TRL's DPO dataset (prompt, chosen, rejected; step advantages alongside).
    Export {
        /// A pipeline file or a run directory.
        source: PathBuf,
        #[arg(long, value_name = "NODE")]
        node: String,
        #[arg(long, value_enum)]
        format: export::ExportFormat,
        /// The Parquet file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
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
    /// Run directory (default: runs/<pipeline name>): a local path, or a URL on object
    /// storage, s3://BUCKET/PREFIX (also gs://, az://, file://), reached with the cloud's
    /// usual environment variables (see docs/scale-out.md).
    #[arg(long, value_name = "DIR|URL")]
    run_dir: Option<PathBuf>,
    /// The local working copy of a run directory on object storage (default:
    /// $SSPO_CACHE_DIR/runs/NAME-HASH, else ~/.cache/sspo/runs/NAME-HASH).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
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
    "run", "validate", "status", "sql", "show", "verify", "ops", "commit", "plan", "export", "help",
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
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl Failure {
    /// A library error as the user sees it: `error: ` and its `Display`, once. Every sspo
    /// error's `Display` already includes its causes (see `sspo_engine::error`), so the
    /// `source()` chain is not walked: it would only repeat them.
    pub(crate) fn error(code: i32, err: &dyn std::error::Error) -> Self {
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

pub(crate) fn invalid(d: Diagnostics) -> Failure {
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

/// A pipeline file → its run dir; a directory or a run directory's URL → itself. An
/// object store's run directory is fetched into its working copy first.
fn resolve_source(source: &Path, target: &Target) -> Result<location::RunDir, Failure> {
    let cache = target.cache_dir.as_deref();
    if source.is_dir() || sspo_engine::remote::is_url(&source.to_string_lossy()) {
        return location::open_for_reading(source, cache);
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
    location::open_for_reading(&run_dir_of(&plan, target), cache)
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
            shard,
            node,
            no_commit,
        } => {
            let plan = load_plan(&pipeline, &target.sets, ModelChecks::On)?;
            let shard = match shard {
                Some(text) => Some(sharded::parse_shard(&plan, &text, node.as_deref())?),
                None => None,
            };
            // Before any tensor work and before other threads start (it sets libtorch's
            // environment variables).
            sspo_operators::model_port::configure_cpu(&plan.pipeline.cpu)
                .context(pipeline.display())?;
            let run_dir = location::open(&run_dir_of(&plan, &target), target.cache_dir.as_deref())?;
            install_ctrlc();
            let opts = RunOptions {
                run_dir: run_dir.local.clone(),
                remote: run_dir.remote.clone(),
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
            if let Some(shard) = shard {
                return sharded::run(&plan, &opts, shard, node.as_deref(), !no_commit);
            }
            match executor::run(&plan, &opts) {
                Ok(outcomes) => {
                    print_outcomes(&outcomes, &run_dir.shown());
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
        Command::Commit {
            pipeline,
            node,
            target,
        } => {
            let plan = load_plan(&pipeline, &target.sets, ModelChecks::Off)?;
            let run_dir = location::open(&run_dir_of(&plan, &target), target.cache_dir.as_deref())?;
            let opts = RunOptions {
                run_dir: run_dir.local,
                remote: run_dir.remote,
                force: Vec::new(),
                until: None,
                progress: ProgressMode::detect(),
                keep_scratch: false,
            };
            sharded::commit(&plan, &opts, node.as_deref())
        }
        Command::Plan {
            pipeline,
            shards,
            emit,
            out,
            image,
            volume_claim,
            target,
        } => {
            let plan = load_plan(&pipeline, &target.sets, ModelChecks::Off)?;
            let settings = launch::Settings {
                pipeline: pipeline.clone(),
                run_dir: target.run_dir.clone(),
                sets: target.sets.clone(),
                shards,
                image,
                volume_claim,
            };
            let out = out.unwrap_or_else(|| {
                PathBuf::from("launch").join(format!("{}-{}", plan.pipeline.name, emit.name()))
            });
            let written = launch::write(&plan, &settings, emit, &out).map_err(|e| Failure {
                code: if e.is::<launch::UsageError>() { 2 } else { 1 },
                message: format!("error: {e:#}"),
            })?;
            for f in written {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Export {
            source,
            node,
            format,
            out,
            target,
        } => {
            let run_dir = resolve_source(&source, &target)?.local;
            let n = export::export(&run_dir, &node, format, &out).map_err(|e| Failure {
                code: 1,
                message: format!("error: {e:#}"),
            })?;
            eprintln!("{}: {n} rows", out.display());
            Ok(())
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
            let opened = location::open_for_reading(
                &run_dir_of(&plan, &target),
                target.cache_dir.as_deref(),
            )?;
            let rows = executor::status(&plan, &opened.local)
                .context(format!("reading {}", opened.shown()))?;
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
            let run_dir = resolve_source(&source, &target)?.local;
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
            let opened = resolve_source(&source, &target)?;
            let run_dir = &opened.local;
            let tables = sql::tables(run_dir).context("listing tables")?;
            if !tables.iter().any(|t| t.name == node) {
                let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                let hint = did_you_mean(&node, names.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(Failure {
                    code: 2,
                    message: format!(
                        "error: no table `{node}` in {}{hint}; tables: {}",
                        opened.shown(),
                        names.join(", ")
                    ),
                });
            }
            let q = format!("SELECT * FROM \"{node}\" LIMIT {limit}");
            let batches = sql::query(run_dir, &q).context("querying")?;
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
            let opened = resolve_source(&source, &target)?;
            verify(&opened.local, &opened.shown(), node.as_deref())
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
fn verify(run_dir: &Path, shown: &str, node: Option<&str>) -> Result<(), Failure> {
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
        println!("{shown}: ok: {checked}");
        return Ok(());
    }
    let repair = if damaged > 0 {
        "; the next run recomputes the damaged chunks and what depends on them"
    } else {
        ""
    };
    Err(Failure {
        code: 1,
        message: format!("error: {shown}: {failures} failure(s) in {checked}{repair}"),
    })
}

fn ensure_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// How a run directory is shown: its URL on object storage, else its path.
pub(crate) fn shown(opts: &RunOptions) -> String {
    match &opts.remote {
        Some(r) => r.url().to_string(),
        None => opts.run_dir.display().to_string(),
    }
}

pub(crate) fn print_outcomes(outcomes: &[sspo_engine::NodeOutcome], run_dir: &str) {
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
    eprintln!("run directory: {run_dir}");
}

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupt: finishing the current chunk's commit (Ctrl-C again stops at once; nothing half-written is ever visible)");
            sspo_engine::run::request_cancel();
        } else {
            std::process::exit(130);
        }
    });
}
