//! Our side of a parity check against transformers (see `scripts/gpu/check.sh`).
//!
//! `dump_logits DIR DTYPE OUT`: loads the HF directory `DIR` on the device named by
//! `SSPO_BENCH_DEVICE` (default `cpu`), writes the float32 logits `[len, vocab]` of the first
//! prompt of `DIR/prompts.json` to `OUT.f32` (little-endian, row-major) and 32 greedy tokens
//! of each of the first four prompts to `OUT.json` (`{"greedy": [[id, ...], ...]}`).

use std::path::Path;

use sspo_model::{
    parse_device, Attention, DType, GenerationRequest, Generator, GeneratorConfig, LoadOptions,
    Model, SamplingParams,
};
use tch::{Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: dump_logits DIR DTYPE OUT".into());
    }
    let dir = Path::new(&args[1]);
    let dtype: DType = args[2].parse()?;
    let device = parse_device(&std::env::var("SSPO_BENCH_DEVICE").unwrap_or("cpu".into()))?;
    let model = Model::load_dir(dir, &LoadOptions { dtype, device })?;
    let prompts: Vec<Vec<i64>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("prompts.json"))?)?;
    let first = prompts.first().ok_or("prompts.json holds no prompt")?;
    let tokens = Tensor::from_slice(first).view([1, -1]).to_device(device);
    let logits = tch::no_grad(|| model.decoder.forward(&tokens, Attention::Causal))?
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .view([-1]);
    let flat = Vec::<f32>::try_from(&logits)?;
    let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(format!("{}.f32", args[3]), bytes)?;
    let gen = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: 4,
            eos_token_ids: Vec::new(),
        },
    );
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .take(4)
        .map(|p| GenerationRequest {
            prompt_ids: p.clone(),
            params: SamplingParams {
                max_new_tokens: 32,
                ..Default::default()
            },
        })
        .collect();
    let greedy: Vec<Vec<i64>> = gen
        .generate(&requests)?
        .into_iter()
        .map(|o| o.token_ids)
        .collect();
    std::fs::write(
        format!("{}.json", args[3]),
        serde_json::json!({ "greedy": greedy }).to_string(),
    )?;
    Ok(())
}
