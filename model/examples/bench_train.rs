//! Training throughput and peak memory of DPO optimizer steps (see `scripts/bench/train_memory.sh`).
//!
//! `bench_train MODEL PAIRS SEQ_LEN STEPS THREADS [fp32|bf16]`: `STEPS` optimizer steps of
//! `PAIRS` random pairs each (context, chosen and rejected of `SEQ_LEN / 2` tokens each),
//! with the reference log-probs precomputed; prints one JSON line with tokens/s (context
//! counted twice, as `train` does) and peak RSS. `MODEL` is a `.gguf` file, a HF directory,
//! or `random:qwen2.5-0.5b` / `random:smollm2-135m` (random weights of that shape).
//! `SSPO_BENCH_DEVICE` names the device (default `cpu`; `cuda` for the GPU check).

#[path = "support/proc_stats.rs"]
mod proc_stats;

use std::path::Path;
use std::time::Instant;

use proc_stats::peak_rss_mb;
use sspo_model::builtin::builtin_config;
use sspo_model::runtime::device_name;
use sspo_model::sampling::Rng;
use sspo_model::train::{
    clip_grad_norm, preference_loss, reference_logprobs, token_logprobs, AdamW, AdamWConfig,
    PairTokens, PrefLossConfig, ScoredSeq,
};
use sspo_model::{parse_device, DType, Decoder, Family, LoadOptions, Model, ModelConfig};
use tch::Tensor;

/// A random decoder of a published shape: (vocab, hidden, layers, heads, kv heads, mlp).
fn random_config(name: &str) -> Result<ModelConfig, Box<dyn std::error::Error>> {
    let (vocab, hidden, layers, heads, kv, inter, family) = match name {
        "qwen2.5-0.5b" => (151_936, 896, 24, 14, 2, 4864, Family::Qwen2),
        "smollm2-135m" => (49_152, 576, 30, 9, 3, 1536, Family::Llama),
        other => return Err(format!("unknown random shape `{other}`").into()),
    };
    let mut cfg = builtin_config("tiny-synth", vocab)?;
    cfg.family = family;
    cfg.model_type = if family == Family::Qwen2 {
        "qwen2"
    } else {
        "llama"
    }
    .into();
    cfg.qkv_bias = family == Family::Qwen2;
    cfg.hidden_size = hidden;
    cfg.num_hidden_layers = layers;
    cfg.num_attention_heads = heads;
    cfg.num_key_value_heads = kv;
    cfg.head_dim = hidden / heads;
    cfg.intermediate_size = inter;
    cfg.max_position_embeddings = 32_768;
    cfg.validate()?;
    Ok(cfg)
}

fn load(
    spec: &str,
    dtype: DType,
    device: tch::Device,
) -> Result<Decoder, Box<dyn std::error::Error>> {
    if let Some(shape) = spec.strip_prefix("random:") {
        return Ok(Decoder::random(&random_config(shape)?, dtype, device, 7)?);
    }
    let opts = LoadOptions { dtype, device };
    let path = Path::new(spec);
    let model = if spec.ends_with(".gguf") {
        Model::load_gguf(path, &opts)?
    } else {
        Model::load_dir(path, &opts)?
    };
    Ok(model.decoder)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&args.len()) {
        return Err("usage: bench_train MODEL PAIRS SEQ_LEN STEPS THREADS [fp32|bf16]".into());
    }
    let pairs: usize = args[2].parse()?;
    let seq_len: usize = args[3].parse()?;
    let steps: usize = args[4].parse()?;
    tch::set_num_threads(args[5].parse()?);
    // What `sspo-run` does (through `configure_cpu`); `SSPO_BENCH_MALLOC=default` keeps glibc's own.
    if std::env::var("SSPO_BENCH_MALLOC").map_or(true, |v| v != "default") {
        sspo_model::cpu::tune_allocator();
    }
    let dtype: DType = args.get(6).map_or("fp32", |s| s.as_str()).parse()?;
    let device = parse_device(&std::env::var("SSPO_BENCH_DEVICE").unwrap_or("cpu".into()))?;
    let decoder = load(&args[1], dtype, device)?;
    let rss_model = peak_rss_mb();
    let vocab = decoder.config().vocab_size as u64;
    let part = (seq_len / 2).max(1);
    let mut rng = Rng::new(11);
    let mut draw = |n: usize| -> Vec<i64> { (0..n).map(|_| rng.below(vocab) as i64).collect() };
    // Per pair: chosen = context + part, rejected = context + part (other tokens).
    let seqs: Vec<Vec<i64>> = (0..pairs)
        .flat_map(|_| {
            let ctx = draw(part);
            let mut c = ctx.clone();
            c.extend(draw(part));
            let mut r = ctx;
            r.extend(draw(part));
            [c, r]
        })
        .collect();
    let scored: Vec<ScoredSeq<'_>> = seqs
        .iter()
        .map(|ids| ScoredSeq { ids, from: part })
        .collect();
    let refs: Vec<f32> = reference_logprobs(&decoder, &scored, 2 * pairs)?
        .into_iter()
        .flatten()
        .collect();
    let mut toks = PairTokens::default();
    for (si, s) in scored.iter().enumerate() {
        toks.seq.extend(std::iter::repeat_n(si as i64, s.scored()));
        toks.weight.extend(std::iter::repeat_n(1.0f32, s.scored()));
        toks.adv.extend(std::iter::repeat_n(0.0f32, s.scored()));
        toks.n_seqs += 1;
    }
    toks.pairs = (0..pairs).map(|p| (2 * p, 2 * p + 1)).collect();
    let ref_lp = Tensor::from_slice(&refs).to_device(device);
    let mut optim = AdamW::new(decoder.var_store().variables(), AdamWConfig::default())?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let cfg = PrefLossConfig {
        beta: 0.1,
        eta: 0.0,
    };
    let mut rates = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        optim.zero_grad()?;
        let batch = token_logprobs(&decoder, &scored)?;
        let loss = preference_loss(batch.logprobs(), &ref_lp, &toks, cfg, pairs as f64)?;
        loss.loss.f_backward()?;
        batch.backward()?;
        let params: Vec<&Tensor> = optim.params().map(|(_, t)| t).collect();
        clip_grad_norm(params, 1.0)?;
        optim.step(1e-6)?;
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        rates.push(tokens as f64 / t0.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "model": args[1], "device": device_name(device), "dtype": dtype.to_string(), "vocab": vocab, "pairs": pairs,
            "seq_len": 2 * part, "steps": steps, "tokens_per_step": tokens,
            "median_tokens_per_s": (median * 10.0).round() / 10.0,
            "model_rss_mb": rss_model.round(), "peak_rss_mb": peak_rss_mb().round(),
        })
    );
    Ok(())
}
