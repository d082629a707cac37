//! `sspo-run plan PIPELINE --shards N --emit slurm|k8s`: launch files for a sharded run.
//!
//! The pipeline becomes a chain of stages in plan order, one per node: a shardable node
//! is an array of N shard tasks (`--shard auto --node NODE`) followed by its commit (a
//! single task; usually a no-op, since the last shard commits), any other node a single
//! task (`--until NODE`). Each stage starts when the one before it has succeeded: every
//! task of a stage shares the run directory's lock, and a stage reads what the one before
//! committed. Nodes that load a model for inference or training ask for one GPU per task.

mod k8s;
mod slurm;

use std::path::{Path, PathBuf};

use anyhow::Context;
use sspo_engine::{Plan, PortKind};

/// The scheduler to write files for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// One `sbatch` script per stage and `submit.sh`, chaining them with
    /// `--dependency=afterok`.
    Slurm,
    /// One Job manifest per stage (Indexed Jobs for shards) and `submit.sh`, applying each
    /// after the one before has completed.
    K8s,
}

impl Emit {
    pub fn name(self) -> &'static str {
        match self {
            Emit::Slurm => "slurm",
            Emit::K8s => "k8s",
        }
    }
}

/// A bad request (exit 2).
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// What the emitted commands need to know besides the plan.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pipeline file as the user named it (the tasks run in the same directory).
    pub pipeline: PathBuf,
    pub run_dir: Option<PathBuf>,
    pub sets: Vec<String>,
    pub shards: u64,
    pub image: String,
    pub volume_claim: String,
}

/// What one task of a stage does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageKind {
    /// `shards` tasks, each `--shard auto --node NODE`.
    Shards(u64),
    /// One task committing the node the stage before sharded.
    Commit,
    /// One task running the node in one process.
    Single,
}

/// One stage of the chain.
#[derive(Debug, Clone)]
pub struct Stage {
    pub node: String,
    pub kind: StageKind,
    /// Asks for one GPU per task.
    pub gpu: bool,
    /// `sspo-run` arguments of each task.
    pub args: Vec<String>,
}

impl Stage {
    /// The stage's name in file and job names (`<node>` or `<node>-commit`).
    pub fn name(&self) -> String {
        match self.kind {
            StageKind::Commit => format!("{}-commit", self.node),
            _ => self.node.clone(),
        }
    }
}

/// The stages of `plan`, in order.
pub fn stages(plan: &Plan, s: &Settings) -> Vec<Stage> {
    let pipeline = s.pipeline.display().to_string();
    let mut common = Vec::new();
    if let Some(d) = &s.run_dir {
        common.extend(["--run-dir".to_string(), d.display().to_string()]);
    }
    for set in &s.sets {
        common.extend(["--set".to_string(), set.clone()]);
    }
    let mut out = Vec::new();
    for &i in &plan.order {
        let node = &plan.nodes[i];
        let id = node.id().to_string();
        let gpu = uses_model(plan, i);
        let with = |head: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = head.iter().map(|x| x.to_string()).collect();
            a.extend(common.iter().cloned());
            a
        };
        if node.kernel.shardable() {
            out.push(Stage {
                node: id.clone(),
                kind: StageKind::Shards(s.shards),
                gpu,
                args: with(&[
                    "run",
                    &pipeline,
                    "--shard",
                    "auto",
                    "--node",
                    &id,
                    "--progress",
                    "log",
                ]),
            });
            out.push(Stage {
                node: id.clone(),
                kind: StageKind::Commit,
                gpu: false,
                args: with(&["commit", &pipeline, "--node", &id]),
            });
        } else {
            out.push(Stage {
                node: id.clone(),
                kind: StageKind::Single,
                gpu,
                args: with(&["run", &pipeline, "--until", &id, "--progress", "log"]),
            });
        }
    }
    out
}

/// Whether node `i` loads a model's weights (a model port that reads more than the
/// tokenizer).
fn uses_model(plan: &Plan, i: usize) -> bool {
    let node = &plan.nodes[i];
    node.op.ports().iter().any(|p| {
        p.kind == PortKind::Model
            && !p.tokenizer_only
            && node
                .bindings
                .keys()
                .any(|k| k == p.name || k.strip_prefix(p.name).is_some_and(|r| r.starts_with('.')))
    })
}

/// Writes the launch files into `out` and returns their paths.
pub fn write(plan: &Plan, s: &Settings, emit: Emit, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if s.shards == 0 {
        return Err(UsageError("--shards must be at least 1".into()).into());
    }
    let stages = stages(plan, s);
    let files = match emit {
        Emit::Slurm => slurm::files(&plan.pipeline.name, &stages),
        Emit::K8s => k8s::files(&plan.pipeline.name, &stages, s),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if name.ends_with(".sh") || name.ends_with(".sbatch") {
            make_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `word` quoted for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A file name / job name part: lower-case letters, digits and `-`.
pub fn dns_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("p.yaml"), "p.yaml");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(dns_name("My_Pipe--line"), "my-pipe-line");
    }
}
