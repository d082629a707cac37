//! Kubernetes: one Job manifest per stage (an Indexed Job with `backoffLimitPerIndex`
//! for shards, whose pods read their shard from `JOB_COMPLETION_INDEX` and
//! `SSPO_SHARD_COUNT`) and `submit.sh`, which applies each after the one before has
//! completed. The working directory is a PersistentVolumeClaim mounted at `/work` in
//! every pod, holding the pipeline, its data and the run directory.

use super::{dns_name, Settings, Stage, StageKind};

/// Retries of one failed index before it counts as failed.
const RETRIES_PER_INDEX: u32 = 2;

/// `(file name, content)` of every file.
pub fn files(pipeline: &str, stages: &[Stage], s: &Settings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n\
         # Applies the stages of the sharded run in order, each once the one before has\n\
         # completed; stops at the first failed Job.\n\
         set -euo pipefail\n\
         here=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n\
         wait_job() {\n\
         \x20 while true; do\n\
         \x20   local done failed\n\
         \x20   done=$(kubectl get job \"$1\" -o jsonpath='{.status.conditions[?(@.type==\"Complete\")].status}')\n\
         \x20   failed=$(kubectl get job \"$1\" -o jsonpath='{.status.conditions[?(@.type==\"Failed\")].status}')\n\
         \x20   [ \"$done\" = True ] && return 0\n\
         \x20   if [ \"$failed\" = True ]; then echo \"job $1 failed\" >&2; return 1; fi\n\
         \x20   sleep 10\n\
         \x20 done\n\
         }\n",
    );
    for (k, stage) in stages.iter().enumerate() {
        let name = job_name(pipeline, stage);
        let file = format!("{:02}-{}.yaml", k + 1, dns_name(&stage.name()));
        out.push((file.clone(), manifest(&name, stage, s)));
        submit.push_str(&format!(
            "kubectl apply -f \"$here/{file}\"\nwait_job {name}\n"
        ));
    }
    out.push(("submit.sh".to_string(), submit));
    out
}

/// A Job name: DNS-1123, at most 63 characters (and room for the pod suffixes).
fn job_name(pipeline: &str, stage: &Stage) -> String {
    let mut name = dns_name(&format!("sspo-{pipeline}-{}", stage.name()));
    name.truncate(52);
    name.trim_end_matches('-').to_string()
}

/// A YAML string scalar (JSON quoting is valid YAML).
fn q(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn manifest(name: &str, stage: &Stage, s: &Settings) -> String {
    let mut y = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  labels:\n    app: sspo\n    sspo/node: {}\nspec:\n",
        q(&stage.node)
    );
    let mut env = String::new();
    match stage.kind {
        StageKind::Shards(n) => {
            y.push_str(&format!(
                "  completionMode: Indexed\n  completions: {n}\n  parallelism: {n}\n  backoffLimitPerIndex: {RETRIES_PER_INDEX}\n"
            ));
            env = format!(
                "        env:\n        - name: SSPO_SHARD_COUNT\n          value: {}\n",
                q(&n.to_string())
            );
        }
        StageKind::Commit | StageKind::Single => {
            y.push_str(&format!(
                "  completions: 1\n  backoffLimit: {RETRIES_PER_INDEX}\n"
            ));
        }
    }
    let command: Vec<String> = std::iter::once("sspo-run".to_string())
        .chain(stage.args.iter().cloned())
        .map(|a| q(&a))
        .collect();
    y.push_str(&format!(
        "  template:\n    metadata:\n      labels:\n        app: sspo\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: sspo\n        image: {}\n        workingDir: /work\n        command: [{}]\n",
        q(&s.image),
        command.join(", ")
    ));
    y.push_str(&env);
    if stage.gpu {
        y.push_str("        resources:\n          limits:\n            nvidia.com/gpu: 1\n");
    }
    y.push_str(&format!(
        "        volumeMounts:\n        - name: work\n          mountPath: /work\n      volumes:\n      - name: work\n        persistentVolumeClaim:\n          claimName: {}\n",
        q(&s.volume_claim)
    ));
    y
}
