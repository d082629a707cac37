//! Inference servers as model backends, against a real server process: the loopback fake
//! of vLLM's and SGLang's protocols (`tests/servers/fake_server.py`, transformers on the
//! shipped base `pipelines/models/tiny-synth-sft`), started on a free port by each test
//! and stopped with it.
//!
//! * generation through `vllm`, `sglang` and `openai` is well formed, greedy generation
//!   equals the local decoder's, seeded sampling reproduces; probes through `vllm` and
//!   `sglang` equal the local probe on the same weights (1e-4); evaluate mixes both;
//!   the url is not part of the fingerprint. (`generate` and `evaluate` share one request
//!   path, so each api's greedy answers are checked through one of them.) One fake
//!   server serves every case of a test, and the pipelines are kept small: the fake
//!   decodes on the CPU, one request at a time;
//! * kill -9 mid-node, then resume, re-asks no committed row; 4xx, garbage, a hang, 5xx
//!   and a server that dies each give a clear error and keep the committed chunks;
//! * `validate` locates `server:` mistakes and a `train` node given a server.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The fake server, killed when dropped.
struct FakeServer {
    child: Child,
    port: u16,
}

impl FakeServer {
    fn start(extra: &[&str]) -> Self {
        let python = std::env::var("SSPO_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join(".venv/bin/python"));
        let mut child = Command::new(python)
            .arg(repo().join("tests/servers/fake_server.py"))
            .arg("--model")
            .arg(base())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the fake server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("READY line");
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the fake server did not start: {line:?}"));
        FakeServer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the fault of the requests after the next `after` ones.
    fn fault(&self, kind: &str, after: usize) {
        let body = format!(r#"{{"kind": "{kind}", "after": {after}}}"#);
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "POST /_fault HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.contains("200"), "{answer}");
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn base() -> PathBuf {
    repo().join("pipelines/models/tiny-synth-sft")
}

/// Prompts of the happy-path pipeline (2 sampled rollouts each) and of the fault cases
/// (one row each: a kill after at least 3, faults after 2 and 3, with room to spare).
const PROMPTS: usize = 3;
const FAULT_PROMPTS: usize = 6;

const PROBLEMS: &str = "{n: N, seed: 1, min_ops: 2, max_ops: 3, start: [2, 20], addend: [1, 9], factor: [2, 3], group_count: [2, 3], group_size: [2, 5], max_value: 99}";

fn spec(template: &str, url: &str, n: usize) -> String {
    let greedy: String = ["local", "vllm", "openai", "openai_text"]
        .iter()
        .map(|m| format!("  greedy_{m}: {{op: generate, inputs: {{prompts: problems, model: {m}}}, params: {{samples: 1, temperature: 0, max_new_tokens: 160, prompt_template: \"{{prompt}}\\n\\n\"}}}}\n"))
        .collect();
    let probes: String = ["local", "vllm", "sglang"]
        .iter()
        .map(|m| format!("  probes_{m}: {{op: probe, inputs: {{steps: steps, rollouts: rollouts, model: {m}}}, params: {{kind: [verbal, answer], question: \"\\n\\nIs the answer settled?\"}}}}\n"))
        .collect();
    template
        .replace("GREEDY\n", &greedy)
        .replace("PROBES\n", &probes)
        .replace("PROBLEMS", &PROBLEMS.replace('N', &n.to_string()))
        .replace("BASE", &base().display().to_string())
        .replace("URL", url)
}

const HAPPY: &str = r#"
name: served
seed: 3
models:
  local: {path: BASE}
  vllm: {server: {url: "URL", api: vllm, model: tiny-synth-sft, tokenizer: BASE, top_logprobs: 1000}}
  sglang: {server: {url: "URL", api: sglang, model: tiny-synth-sft, tokenizer: BASE}}
  openai: {server: {url: "URL", api: openai, model: tiny-synth-sft, tokenizer: BASE}}
  openai_text: {server: {url: "URL", api: openai, model: tiny-synth-sft-text, tokenizer: BASE}}
  narrow: {server: {url: "URL", api: vllm, model: tiny-synth-sft, tokenizer: BASE, top_logprobs: 1}}
nodes:
  problems: {op: source, params: {synth: PROBLEMS}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: vllm}
    params: {samples: 2, temperature: 1.0, top_p: 0.95, max_new_tokens: 160, prompt_template: "{prompt}\n\n", chunk_rows: 2, max_in_flight: 4}
GREEDY
  steps: {op: segment, inputs: {traces: rollouts}}
PROBES
  eval:
    op: evaluate
    inputs: {prompts: problems, models: [local, sglang]}
    params: {split: all, max_new_tokens: 160, prompt_template: "{prompt}\n\n"}
"#;

/// Rows of a CSV query, keyed by their first column.
fn keyed(dir: &Path, run: &str, query: &str) -> BTreeMap<String, Vec<String>> {
    sql_csv(dir, run, query)
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<String> = l.split(',').map(str::to_string).collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

#[test]
fn generation_probes_and_evaluation_through_servers_match_the_local_decoder() {
    let server = FakeServer::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("p.yaml"), spec(HAPPY, &server.url(), PROMPTS)).expect("spec");
    let t0 = Instant::now();
    let out = run_ok(p, &["p.yaml", "--run-dir", "run", "--progress", "log"]);
    eprintln!("served pipeline: {:.1} s", t0.elapsed().as_secs_f64());

    // Sampled rollouts: well formed, the local renderer's context, the row seeds.
    let rows = keyed(
        p,
        "run",
        "SELECT rollout_id, n_tokens, finish_reason, length(response) > 0, seed FROM rollouts ORDER BY rollout_id",
    );
    assert_eq!(rows.len(), 2 * PROMPTS, "{rows:?}");
    for (id, r) in &rows {
        let n: usize = r[0].parse().expect("n_tokens");
        assert!((1..=160).contains(&n), "{id}: {r:?}");
        assert!(r[1] == "stop" || r[1] == "length", "{id}: {r:?}");
    }
    let q = "SELECT id, context, seed FROM TABLE ORDER BY id";
    assert_eq!(
        sql_csv(p, "run", &q.replace("TABLE", "greedy_vllm")),
        sql_csv(p, "run", &q.replace("TABLE", "greedy_local"))
    );

    // Greedy decoding through every api equals the local decoder's (`sglang` through
    // `evaluate`, next to the local model in the same node).
    let greedy = "SELECT id, response, n_tokens, finish_reason FROM TABLE ORDER BY id";
    let local = sql_csv(p, "run", &greedy.replace("TABLE", "greedy_local"));
    // (`openai_text`: a server that takes text prompts only, as llama-cpp-python.)
    for api in ["vllm", "openai", "openai_text"] {
        let served = sql_csv(p, "run", &greedy.replace("TABLE", &format!("greedy_{api}")));
        assert_eq!(served, local, "greedy through {api}");
    }
    for model in ["local", "sglang"] {
        let table = format!("(SELECT * FROM eval WHERE model = '{model}')");
        let evaluated = sql_csv(p, "run", &greedy.replace("TABLE", &table));
        assert_eq!(evaluated, local, "evaluate through {model}");
    }

    // Probe values through vLLM and SGLang equal the local probe on the same weights.
    let probes = "SELECT rollout_id || '/' || CAST(step AS VARCHAR), verbal_value, answer_logprob, early_answer FROM TABLE";
    let local = keyed(p, "run", &probes.replace("TABLE", "probes_local"));
    assert!(local.len() > 2 * PROMPTS, "{}", local.len());
    for api in ["vllm", "sglang"] {
        let served = keyed(p, "run", &probes.replace("TABLE", &format!("probes_{api}")));
        assert_eq!(served.len(), local.len(), "{api}");
        let mut worst = 0f64;
        for (k, l) in &local {
            let s = &served[k];
            for c in 0..2 {
                if l[c].is_empty() {
                    assert!(s[c].is_empty(), "{api} {k}: {s:?} vs {l:?}");
                    continue;
                }
                let d =
                    (l[c].parse::<f64>().expect("f64") - s[c].parse::<f64>().expect("f64")).abs();
                worst = worst.max(d);
            }
            assert_eq!(s[2], l[2], "{api} {k}: early answers differ");
        }
        eprintln!("probes through {api}: largest difference {worst:.2e}");
        assert!(worst < 1e-4, "{api}: {worst}");
    }

    // Evaluation with a local and a served model: the same greedy answers.
    let summary = keyed(
        p,
        "run",
        "SELECT model, accuracy, mean_tokens FROM eval_summary",
    );
    assert_eq!(summary["sglang"], summary["local"], "{summary:?}");
    assert!(out.contains("eval"), "{out}");

    // Seeded sampling reproduces; the url is not part of the fingerprint.
    run_ok(p, &["p.yaml", "--run-dir", "again", "--until", "rollouts"]);
    let all = "SELECT * FROM rollouts ORDER BY rollout_id";
    assert_eq!(sql_csv(p, "again", all), sql_csv(p, "run", all));
    let moved = sspo(
        p,
        &[
            "status",
            "p.yaml",
            "--run-dir",
            "run",
            "--set",
            "models.vllm.server.url=http://127.0.0.1:9",
        ],
    );
    let status = stdout(&moved);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("rollouts") && l.contains("cached")),
        "{status}"
    );

    // A verbal probe needs its tokens among the top log-probs: a clear error, no guess.
    // (`top_logprobs` is not part of the fingerprint: `--force` recomputes.)
    let narrow = "nodes.probes_vllm.inputs.model=narrow";
    let o = sspo(
        p,
        &[
            "p.yaml",
            "--run-dir",
            "run",
            "--set",
            narrow,
            "--force",
            "probes_vllm",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not among the top 1 next-token log-probs") && err.contains("top_logprobs"),
        "{err}"
    );
    // And a probe through a plain OpenAI server is refused before any request.
    let openai = "nodes.probes_vllm.inputs.model=openai";
    let o = sspo(
        p,
        &[
            "p.yaml",
            "--run-dir",
            "run",
            "--set",
            openai,
            "--force",
            "probes_vllm",
        ],
    );
    let err = stderr(&o);
    assert!(
        err.contains("api `openai` cannot give a probe's log-probs"),
        "{err}"
    );
}

const FAULTS: &str = r#"
name: faults
seed: 3
models:
  vllm: {server: {url: "URL", api: vllm, model: tiny-synth-sft, tokenizer: BASE, retries: 1, timeout_s: 2}}
nodes:
  problems: {op: source, params: {synth: PROBLEMS}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: vllm}
    params: {samples: 1, temperature: 1.0, max_new_tokens: 24, prompt_template: "{prompt}\n\n", chunk_rows: 1, max_in_flight: 1}
"#;

/// Committed rows of `rollouts` in `run` (0 when none).
fn committed(dir: &Path, run: &str) -> usize {
    let manifest = dir.join(run).join("rollouts/manifest.json");
    let Ok(text) = std::fs::read_to_string(manifest) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest");
    v["rows"][""].as_u64().unwrap_or(0) as usize
}

/// Seeds of the requests the server logged.
fn logged_seeds(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seed"].as_u64())
        .collect()
}

/// Runs `run` expecting a failure, returns stderr.
fn fails(dir: &Path, run: &str) -> String {
    let o = sspo(dir, &["p.yaml", "--run-dir", run]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    err
}

#[test]
fn kills_and_server_failures_keep_committed_rows_and_say_what_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let log = p.join("requests.jsonl");
    let server = FakeServer::start(&["--delay-ms", "100", "--log", &log.display().to_string()]);
    std::fs::write(p.join("p.yaml"), spec(FAULTS, &server.url(), FAULT_PROMPTS)).expect("spec");

    // kill -9 of sspo-run mid-node, then resume: committed rows are not asked again.
    let mut child = Command::new(bin())
        .args(["p.yaml", "--run-dir", "killed"])
        .current_dir(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sspo-run starts");
    let t0 = Instant::now();
    while committed(p, "killed") < 3 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let done = committed(p, "killed");
    assert!(
        (3..FAULT_PROMPTS).contains(&done),
        "{done} rows committed at the kill"
    );
    let seeds_q = "SELECT seed FROM rollouts";
    let before: HashSet<String> = sql_csv(p, "killed", seeds_q)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    let asked_before = logged_seeds(&log).len();
    run_ok(p, &["p.yaml", "--run-dir", "killed"]);
    let asked_after: Vec<String> = logged_seeds(&log)[asked_before..]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in &asked_after {
        // The server gets the row seed with its top bit cleared.
        let reasked = before
            .iter()
            .any(|b| b.parse::<u64>().map(|b| b & (i64::MAX as u64)).ok() == s.parse().ok());
        assert!(
            !reasked,
            "seed {s} was committed before the kill and asked again"
        );
    }
    assert_eq!(committed(p, "killed"), FAULT_PROMPTS);

    // Each failure: a clear message, the rows committed before it kept, a resume that
    // finishes once the server is healthy.
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "400",
            "f400",
            &["refused the request (400)", "maximum context length"],
        ),
        (
            "garbage",
            "fgarbage",
            &[
                "/v1/completions: unexpected answer: expected JSON",
                "<html>not json",
            ],
        ),
        (
            "hang",
            "fhang",
            &["no answer after 2 attempts", "timed out"],
        ),
        (
            "500",
            "f500",
            &["no answer after 2 attempts", "status 500", "injected 500"],
        ),
    ];
    for (kind, run, expected) in cases {
        server.fault(kind, 2);
        let t0 = Instant::now();
        let err = fails(p, run);
        eprintln!("{kind}: failed in {:.1} s", t0.elapsed().as_secs_f64());
        for e in expected {
            assert!(err.contains(e), "{kind}: no {e:?} in:\n{err}");
        }
        assert_eq!(committed(p, run), 2, "{kind}: the committed rows are kept");
        server.fault("none", 0);
        run_ok(p, &["p.yaml", "--run-dir", run]);
        assert_eq!(committed(p, run), FAULT_PROMPTS, "{kind}");
        assert_eq!(
            sql_csv(p, run, "SELECT * FROM rollouts ORDER BY rollout_id"),
            sql_csv(p, "killed", "SELECT * FROM rollouts ORDER BY rollout_id"),
            "{kind}: a resumed run equals the killed-and-resumed one"
        );
    }

    // A server warming up (503 once) is retried and the run succeeds.
    server.fault("503", 1);
    run_ok(p, &["p.yaml", "--run-dir", "flaky"]);
    assert_eq!(committed(p, "flaky"), FAULT_PROMPTS);

    // A server that dies mid-run: a clear error, the committed rows kept.
    server.fault("die", 3);
    let err = fails(p, "dead");
    assert!(
        err.contains("no answer after 2 attempts") && err.contains("127.0.0.1"),
        "{err}"
    );
    assert_eq!(committed(p, "dead"), 3);
}

fn validate_errors(spec: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.yaml"), spec).expect("spec");
    let o = sspo(dir.path(), &["validate", "bad.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    stderr(&o)
}

#[test]
fn server_entries_and_their_uses_are_checked_with_locations() {
    let b = base().display().to_string();
    let err = validate_errors(&format!(
        "models:\n  s: {{server: {{api: vlm, model: m, tokenizer: {b}}}}}\n  t: {{server: {{url: \"https://x\", api: sglang, model: m, tokenizer: /nowhere}}}}\nnodes:\n  p: {{op: source, params: {{synth: {{n: 2}}}}}}\n"
    ));
    for (line, text) in [
        ("bad.yaml:2:7: error: `server` of model `s` needs `url`", ""),
        ("bad.yaml:2:21: error: unknown server api `vlm`", ""),
        (
            "bad.yaml:3:21: error: `url` `https://x`: https is not supported",
            "",
        ),
        (
            "bad.yaml:3:68: error: tokenizer directory `/nowhere` does not exist",
            "",
        ),
    ] {
        assert!(err.contains(line), "no {line:?} in:\n{err}{text}");
    }
    assert!(err.contains("did you mean `vllm`"), "{err}");

    let err = validate_errors(&format!(
        "models:\n  s: {{server: {{url: \"http://127.0.0.1:1\", api: vllm, model: m, tokenizer: {b}}}}}\nnodes:\n  p: {{op: source, params: {{path: x.jsonl}}}}\n  t: {{op: train, inputs: {{model: s, data: p}}}}\n"
    ));
    assert!(
        err.contains("bad.yaml:5:34: error: node `t` (op `train`) needs local weights on `model`, but model `s` is an inference server"),
        "{err}"
    );
}

/// A server entry's `tokenizer:` may be a GGUF file: its text side, read without the
/// weights, is the one the loaded model uses.
#[test]
fn the_text_side_of_a_gguf_file_is_the_loaded_models() {
    use sspo_model::{LoadOptions, Model, ModelText};
    let gguf = smollm2_gguf();
    let text = ModelText::from_gguf(&gguf).expect("the text side of the SmolLM2 file");
    let model = Model::load_gguf(&gguf, &LoadOptions::default()).expect("the SmolLM2 file");

    assert_eq!(text.eos_token_ids, model.eos_token_ids());
    let im_end = text
        .tokenizer
        .token_to_id("<|im_end|>")
        .expect("<|im_end|>");
    assert!(
        text.eos_token_ids.contains(&im_end),
        "{:?}",
        text.eos_token_ids
    );
    assert_eq!(
        text.context_length,
        Some(model.decoder.config().max_position_embeddings as usize)
    );
    assert_eq!(text.context_length, Some(8192));

    let messages = serde_json::json!([{"role": "user", "content": "What is 2 + 3?"}]);
    let template = text.chat_template.as_ref().expect("a chat template");
    let rendered = template
        .render(&messages, true, None)
        .expect("the template renders");
    assert_eq!(
        rendered,
        model.apply_chat_template(&messages, true).expect("renders")
    );
    assert!(
        rendered.contains("<|im_start|>user\nWhat is 2 + 3?<|im_end|>")
            && rendered.ends_with("<|im_start|>assistant\n"),
        "{rendered:?}"
    );
    let ids = text.tokenizer.encode(&rendered, false).expect("encodes");
    assert_eq!(
        ids,
        model.tokenizer.encode(&rendered, false).expect("encodes")
    );
    assert_eq!(
        ids.first(),
        text.tokenizer.token_to_id("<|im_start|>").as_ref()
    );
    assert_eq!(
        text.tokenizer.decode(&ids, false).expect("decodes"),
        rendered
    );

    // Not a GGUF file: an error naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("model.gguf");
    std::fs::write(&fake, b"not a gguf file").expect("write");
    let err = ModelText::from_gguf(&fake)
        .expect_err("refused")
        .to_string();
    assert!(err.contains(&fake.display().to_string()), "{err}");
}
