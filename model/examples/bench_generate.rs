//! sspo side of the generation benchmark (see `scripts/model/bench_generate.sh`).
//!
//! `bench_generate DIR BATCH NEW_TOKENS THREADS`: greedy generation over `DIR/prompts.json`
//! with `BATCH` slots, `NEW_TOKENS` per prompt (no eos); prints one JSON line with new tokens/s
//! and peak RSS.

use std::path::Path;
use std::time::Instant;

use sspo_model::{
    GenerationRequest, Generator, GeneratorConfig, LoadOptions, Model, SamplingParams,
};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: bench_generate DIR BATCH NEW_TOKENS THREADS".into());
    }
    let dir = Path::new(&args[1]);
    let batch: usize = args[2].parse()?;
    let new_tokens: usize = args[3].parse()?;
    let threads: i32 = args[4].parse()?;
    tch::set_num_threads(threads);
    let model = Model::load_dir(dir, &LoadOptions::default())?;
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
    let requests: Vec<GenerationRequest> = prompts.iter().map(|p| request(p, new_tokens)).collect();
    let start = Instant::now();
    let out = gen.generate(&requests)?;
    let secs = start.elapsed().as_secs_f64();
    let total: usize = out.iter().map(|o| o.n_tokens).sum();
    println!(
        "{}",
        serde_json::json!({
            "impl": "sspo", "new_tokens": total, "seconds": (secs * 1000.0).round() / 1000.0,
            "tokens_per_s": (total as f64 / secs * 10.0).round() / 10.0,
            "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}
