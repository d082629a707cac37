//! Slurm: one `sbatch` script per stage (`--array=0-(N-1)` for shards) and `submit.sh`,
//! which submits them in order, each with `--dependency=afterok` on the one before (for
//! an array: on every task of it).

use super::{dns_name, shell_quote, Stage, StageKind};

/// `(file name, content)` of every file.
pub fn files(pipeline: &str, stages: &[Stage]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n\
         # Submits the stages of the sharded run in order; run it from the directory the\n\
         # pipeline path is relative to (where you ran `sspo-run plan`).\n\
         # SSPO_RUN overrides the sspo-run binary the jobs call.\n\
         set -euo pipefail\n\
         here=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n\
         mkdir -p logs\n",
    );
    let mut previous: Option<String> = None;
    for (k, stage) in stages.iter().enumerate() {
        let file = format!("{:02}-{}.sbatch", k + 1, dns_name(&stage.name()));
        out.push((file.clone(), script(pipeline, stage)));
        let var = format!("job{}", k + 1);
        let dependency = previous
            .as_ref()
            .map(|p| format!(" --dependency=afterok:${p}"))
            .unwrap_or_default();
        submit.push_str(&format!(
            "{var}=$(sbatch --parsable{dependency} \"$here/{file}\")\n{var}=${{{var}%%;*}}\n\
             echo \"{}: job ${var}\"\n",
            stage.name()
        ));
        previous = Some(var);
    }
    out.push(("submit.sh".to_string(), submit));
    out
}

fn script(pipeline: &str, stage: &Stage) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "#SBATCH --job-name={}\n",
        dns_name(&format!("sspo-{pipeline}-{}", stage.name()))
    ));
    s.push_str("#SBATCH --ntasks=1\n");
    if let StageKind::Shards(n) = stage.kind {
        s.push_str(&format!("#SBATCH --array=0-{}\n", n.saturating_sub(1)));
        s.push_str("#SBATCH --output=logs/%x-%A_%a.out\n");
    } else {
        s.push_str("#SBATCH --output=logs/%x-%j.out\n");
    }
    if stage.gpu {
        s.push_str("#SBATCH --gres=gpu:1\n");
    }
    let comment = match stage.kind {
        StageKind::Shards(_) => format!(
            "# Shard $SLURM_ARRAY_TASK_ID of node `{}` (--shard auto reads the array's task id and count).",
            stage.node
        ),
        StageKind::Commit => format!(
            "# Commits node `{}` once every shard has succeeded (a no-op if the last shard did).",
            stage.node
        ),
        StageKind::Single => format!("# Node `{}` in one process.", stage.node),
    };
    let args: Vec<String> = stage.args.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&format!(
        "set -euo pipefail\n{comment}\nexec \"${{SSPO_RUN:-sspo-run}}\" {}\n",
        args.join(" ")
    ));
    s
}
