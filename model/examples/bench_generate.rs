//! sspo side of the generation benchmark (see `scripts/model/bench_generate.sh`).
//!
//! `bench_generate DIR BATCH NEW_TOKENS THREADS [fixed|mixed] [fp32|bf16]`: greedy generation over
//! `DIR/prompts.json` with `BATCH` slots, `NEW_TOKENS` per prompt (no eos); prints one JSON
//! line with new tokens/s and peak RSS. `mixed`: prompt `i` wants `wanted(i)` tokens (between
//! NEW_TOKENS/8 and 2*NEW_TOKENS), as when requests hit eos at different points.
//! `SSPO_BENCH_DEVICE` names the device (default `cpu`; `cuda` for the GPU check).
//! `SSPO_BENCH_MODEL` loads another model (a GGUF file or an HF directory) for DIR's prompts.
//! `SSPO_PROFILE=1` adds the time per stage (prefill, decode, attention, mlp, lm_head,
//! sampling) to the line; see `sspo_model::profile`.

#[path = "support/proc_stats.rs"]
mod proc_stats;

use std::path::Path;
use std::time::Instant;

use proc_stats::{cpu_seconds, peak_rss_mb};
use sspo_model::{
    parse_device, DType, GenerationRequest, Generator, GeneratorConfig, LoadOptions, Model,
    SamplingParams,
};

/// Same formula as `scripts/model/bench_hf_generate.py`.
fn wanted(i: usize, new_tokens: usize, mixed: bool) -> usize {
    if mixed {
        (new_tokens * (1 + (i * 7) % 16) / 8).max(1)
    } else {
        new_tokens
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=7).contains(&args.len()) {
        return Err(
            "usage: bench_generate DIR BATCH NEW_TOKENS THREADS [fixed|mixed] [fp32|bf16]".into(),
        );
    }
    let mixed = args.get(5).is_some_and(|m| m == "mixed");
    let dtype: DType = args.get(6).map_or("fp32", |s| s.as_str()).parse()?;
    let dir = Path::new(&args[1]);
    let batch: usize = args[2].parse()?;
    let new_tokens: usize = args[3].parse()?;
    let threads: i32 = args[4].parse()?;
    tch::set_num_threads(threads);
    // What `sspo-run` does (through `configure_cpu`); `SSPO_BENCH_MALLOC=default` keeps glibc's own.
    if std::env::var("SSPO_BENCH_MALLOC").map_or(true, |v| v != "default") {
        sspo_model::cpu::tune_allocator();
    }
    let device = parse_device(&std::env::var("SSPO_BENCH_DEVICE").unwrap_or("cpu".into()))?;
    // `SSPO_BENCH_MODEL=FILE.gguf` (or an HF directory) runs that model on DIR's prompts.
    let opts = LoadOptions { dtype, device };
    let mut model = match std::env::var("SSPO_BENCH_MODEL") {
        Ok(m) if m.ends_with(".gguf") => Model::load_gguf(Path::new(&m), &opts)?,
        Ok(m) => Model::load_dir(Path::new(&m), &opts)?,
        Err(_) => Model::load_dir(dir, &opts)?,
    };
    // What the inference operators do; `SSPO_BENCH_PLAIN=1` measures the unpacked weights.
    let packed = std::env::var("SSPO_BENCH_PLAIN").map_or(true, |v| v != "1")
        && model.decoder.pack_for_inference()?;
    let prompts: Vec<Vec<i64>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json"))?)?;
    let request = |p: &Vec<i64>, n: usize| GenerationRequest {
        prompt_ids: p.clone(),
        params: SamplingParams {
            max_new_tokens: n,
            ..Default::default()
        },
    };
    let gen = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: batch,
            eos_token_ids: Vec::new(),
        },
    );
    gen.generate(&[request(&prompts[0], 4)])?;
    // `SSPO_PROFILE=1`: the stage totals of the timed run only.
    let _ = sspo_model::profile::take_report();
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| request(p, wanted(i, new_tokens, mixed)))
        .collect();
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let out = gen.generate(&requests)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let total: usize = out.iter().map(|o| o.n_tokens).sum();
    println!(
        "{}",
        serde_json::json!({
            "impl": "sspo", "device": sspo_model::runtime::device_name(device), "packed": packed, "mixed": mixed, "dtype": dtype.to_string(), "new_tokens": total, "seconds": (secs * 1000.0).round() / 1000.0,
            "tokens_per_s": (total as f64 / secs * 10.0).round() / 10.0,
            "cpu_seconds": (cpu * 100.0).round() / 100.0,
            "tokens_per_cpu_s": (total as f64 / cpu * 10.0).round() / 10.0,
            "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
            "profile": sspo_model::profile::take_report_json(),
        })
    );
    Ok(())
}
