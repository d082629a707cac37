//! Forward-pass invariants: padding, KV cache, packed custom masks and masked cached blocks
//! all reproduce plain causal forwards of the individual sequences.

mod common;

use common::{max_abs_diff, tensor_to_vec};
use sspo_model::{
    continuation_logprobs, forward_logits, probe_logprobs, Attention, DType, Decoder, ModelConfig,
    PackedProbes, ScoreRequest,
};
use tch::{Device, Kind, Tensor};

fn decoder(model_type: &str, heads: i64, kv: i64, tied: bool, seed: u64) -> Decoder {
    let cfg = ModelConfig::from_json(&serde_json::json!({
        "model_type": model_type, "vocab_size": 97, "hidden_size": 16 * heads,
        "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": heads,
        "num_key_value_heads": kv, "rope_theta": 10000.0, "tie_word_embeddings": tied,
        "attention_bias": true, "max_position_embeddings": 256,
    }))
    .unwrap();
    Decoder::random(&cfg, DType::F32, Device::Cpu, seed).unwrap()
}

fn decoders() -> Vec<Decoder> {
    vec![
        decoder("qwen2", 4, 2, true, 1),
        decoder("llama", 4, 1, false, 2),
        decoder("llama", 6, 3, true, 3),
    ]
}

fn seq(n: usize, salt: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| (i * 31 + salt * 7 + 3) % 97)
        .collect()
}

fn causal_logits(d: &Decoder, ids: &[i64]) -> Tensor {
    let t = Tensor::from_slice(ids).view([1, -1]);
    tch::no_grad(|| d.forward(&t, Attention::Causal))
        .unwrap()
        .squeeze_dim(0)
}

#[test]
fn padded_batch_equals_separate_forwards() {
    for d in decoders() {
        let seqs = [seq(9, 1), seq(4, 2), seq(1, 3)];
        let len = 9;
        for left in [true, false] {
            let mut tokens = vec![0i64; 3 * len];
            let mut mask = vec![0i64; 3 * len];
            for (r, s) in seqs.iter().enumerate() {
                let off = if left { len - s.len() } else { 0 };
                for (j, &t) in s.iter().enumerate() {
                    tokens[r * len + off + j] = t;
                    mask[r * len + off + j] = 1;
                }
            }
            let tokens = Tensor::from_slice(&tokens).view([3, len as i64]);
            let mask = Tensor::from_slice(&mask).view([3, len as i64]);
            let logits = tch::no_grad(|| d.forward(&tokens, Attention::Padded(&mask))).unwrap();
            for (r, s) in seqs.iter().enumerate() {
                let off = if left { len - s.len() } else { 0 } as i64;
                let got = logits.get(r as i64).narrow(0, off, s.len() as i64);
                let want = causal_logits(&d, s);
                let diff = max_abs_diff(&tensor_to_vec(&got), &tensor_to_vec(&want));
                assert!(diff < 1e-4, "left={left} row {r}: {diff}");
            }
        }
    }
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    for d in decoders() {
        let ids = seq(12, 5);
        let want = causal_logits(&d, &ids);
        let mut cache = d.new_cache(1, 2).unwrap(); // tiny capacity: exercises growth
        let prefill = 5;
        let mut got = Vec::new();
        tch::no_grad(|| {
            let t = Tensor::from_slice(&ids[..prefill]).view([1, -1]);
            let pos = Tensor::arange(prefill as i64, (Kind::Int64, Device::Cpu)).view([1, -1]);
            let valid = Tensor::ones([1, prefill as i64], (Kind::Bool, Device::Cpu));
            let h = d.forward_cached(&t, &pos, &valid, &mut cache).unwrap();
            got.push(d.logits(&h).unwrap().squeeze_dim(0));
            for (i, &tok) in ids.iter().enumerate().skip(prefill) {
                let t = Tensor::from_slice(&[tok]).view([1, 1]);
                let pos = Tensor::from_slice(&[i as i64]).view([1, 1]);
                let valid = Tensor::ones([1, 1], (Kind::Bool, Device::Cpu));
                let h = d.forward_cached(&t, &pos, &valid, &mut cache).unwrap();
                got.push(d.logits(&h).unwrap().squeeze_dim(0));
            }
        });
        assert_eq!(cache.len(), ids.len() as i64);
        let got = Tensor::cat(&got, 0);
        let diff = max_abs_diff(&tensor_to_vec(&got), &tensor_to_vec(&want));
        assert!(diff < 1e-4, "cached vs full: {diff}");
    }
}

#[test]
fn packed_probes_equal_separate_forwards() {
    for d in decoders() {
        let trace = seq(20, 9);
        let probes = vec![
            (5, seq(4, 11)),
            (12, seq(3, 12)),
            (20, seq(4, 13)),
            (1, seq(2, 14)),
        ];
        let packed = PackedProbes::new(&trace, &probes).unwrap();
        let (t, p, m) = packed.tensors().unwrap();
        let logits = tch::no_grad(|| forward_logits(&d, &t, &p, &m))
            .unwrap()
            .squeeze_dim(0);
        let trace_logits = logits.narrow(0, 0, trace.len() as i64);
        let diff = max_abs_diff(
            &tensor_to_vec(&trace_logits),
            &tensor_to_vec(&causal_logits(&d, &trace)),
        );
        assert!(diff < 1e-4, "trace part: {diff}");
        for (&(start, len, boundary), (_, probe)) in packed.blocks.iter().zip(&probes) {
            let mut ids = trace[..boundary].to_vec();
            ids.extend(probe);
            let want = causal_logits(&d, &ids).narrow(0, boundary as i64, len as i64);
            let got = logits.narrow(0, start as i64, len as i64);
            let diff = max_abs_diff(&tensor_to_vec(&got), &tensor_to_vec(&want));
            assert!(diff < 1e-4, "probe at {boundary}: {diff}");
        }
        // The packed log-probs equal plain continuation scoring.
        let packed_lp = probe_logprobs(&d, &trace, &probes).unwrap();
        let reqs: Vec<ScoreRequest> = probes
            .iter()
            .map(|(b, p)| ScoreRequest {
                context: trace[..*b].to_vec(),
                continuation: p.clone(),
            })
            .collect();
        let plain = continuation_logprobs(&d, &reqs, 3).unwrap();
        for (a, b) in packed_lp.iter().zip(&plain) {
            assert_eq!(a.len(), b.len());
            assert!(max_abs_diff(a, b) < 1e-4, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn continuation_logprobs_match_log_softmax() {
    let d = decoder("qwen2", 4, 2, true, 7);
    let reqs: Vec<ScoreRequest> = (0..5)
        .map(|i| ScoreRequest {
            context: seq(3 + i, i as i64),
            continuation: seq(1 + (i * 2) % 5, 20 + i as i64),
        })
        .collect();
    let batched = continuation_logprobs(&d, &reqs, 4).unwrap();
    let single = continuation_logprobs(&d, &reqs, 1).unwrap();
    for ((r, a), b) in reqs.iter().zip(&batched).zip(&single) {
        assert!(max_abs_diff(a, b) < 1e-4);
        let ids: Vec<i64> = r.context.iter().chain(&r.continuation).copied().collect();
        let lp = causal_logits(&d, &ids).log_softmax(-1, Kind::Float);
        let want: Vec<f32> = r
            .continuation
            .iter()
            .enumerate()
            .map(|(j, &t)| lp.double_value(&[(r.context.len() + j - 1) as i64, t]) as f32)
            .collect();
        assert!(max_abs_diff(a, &want) < 1e-4, "{a:?} vs {want:?}");
        assert!(a.iter().all(|&x| x <= 0.0));
    }
}

#[test]
fn reduced_precision_runs_close_to_fp32() {
    let d32 = decoder("qwen2", 4, 2, true, 11);
    let ids = seq(10, 3);
    let want = tensor_to_vec(&causal_logits(&d32, &ids));
    let cfg = d32.config().clone();
    for dtype in [DType::BF16, DType::F16] {
        match Decoder::random(&cfg, dtype, Device::Cpu, 11) {
            Ok(d) => {
                let got = tensor_to_vec(&causal_logits(&d, &ids));
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 0.05, "{dtype}: {diff}");
            }
            // A device without this dtype must say so clearly instead of crashing.
            Err(e) => assert!(e.to_string().contains("not supported"), "{e}"),
        }
    }
}

/// Two continuations of different prefixes of one cached trace, side by side in one row,
/// then one more token for the first: an explicit mask over the cache gives each exactly
/// the causal forward of its own sequence.
#[test]
fn masked_cached_blocks_equal_separate_forwards() {
    for d in decoders() {
        let trace = seq(10, 4);
        let (b1, c1) = (6usize, seq(3, 8));
        let (b2, c2) = (10usize, seq(4, 9));
        let mut cache = d.new_cache(1, 4).unwrap();
        // Columns: trace 0..10, c1 10..13, c2 13..17; then the extra token at 17.
        let total = trace.len() + c1.len() + c2.len();
        let mut mask = vec![false; total * total];
        for q in 0..trace.len() {
            (0..=q).for_each(|k| mask[q * total + k] = true);
        }
        let blocks = [(b1, 10usize, c1.len()), (b2, 13, c2.len())];
        for &(b, start, len) in &blocks {
            for q in start..start + len {
                (0..b).for_each(|k| mask[q * total + k] = true);
                (start..=q).for_each(|k| mask[q * total + k] = true);
            }
        }
        let mut tokens = trace.clone();
        tokens.extend(&c1);
        tokens.extend(&c2);
        let mut positions: Vec<i64> = (0..10).collect();
        positions.extend((0..3).map(|j| (b1 + j) as i64));
        positions.extend((0..4).map(|j| (b2 + j) as i64));
        let n = total as i64;
        let (logits, extra) = tch::no_grad(|| {
            let h = d
                .forward_cached_masked(
                    &Tensor::from_slice(&tokens).view([1, n]),
                    &Tensor::from_slice(&positions).view([1, n]),
                    &Tensor::from_slice(&mask).view([1, n, n]),
                    &mut cache,
                )
                .unwrap();
            let logits = d.logits(&h).unwrap().squeeze_dim(0);
            // One more token after c1: sees trace[..b1] and c1 (columns 10..13) and itself.
            let mut m = vec![false; total + 1];
            (0..b1)
                .chain(10..13)
                .chain([total])
                .for_each(|k| m[k] = true);
            let h = d
                .forward_cached_masked(
                    &Tensor::from_slice(&[5i64]).view([1, 1]),
                    &Tensor::from_slice(&[(b1 + 3) as i64]).view([1, 1]),
                    &Tensor::from_slice(&m).view([1, 1, n + 1]),
                    &mut cache,
                )
                .unwrap();
            (logits, d.logits(&h).unwrap().squeeze_dim(0))
        });
        assert_eq!(cache.len(), n + 1);
        let want = causal_logits(&d, &trace);
        let got = logits.narrow(0, 0, 10);
        assert!(max_abs_diff(&tensor_to_vec(&got), &tensor_to_vec(&want)) < 1e-4);
        for (&(b, start, len), c) in blocks.iter().zip([&c1, &c2]) {
            let mut ids = trace[..b].to_vec();
            ids.extend(c);
            let want = causal_logits(&d, &ids).narrow(0, b as i64, len as i64);
            let got = logits.narrow(0, start as i64, len as i64);
            let diff = max_abs_diff(&tensor_to_vec(&got), &tensor_to_vec(&want));
            assert!(diff < 1e-4, "block at {b}: {diff}");
        }
        let mut ids = trace[..b1].to_vec();
        ids.extend(&c1);
        ids.push(5);
        let want = causal_logits(&d, &ids).narrow(0, ids.len() as i64 - 1, 1);
        let diff = max_abs_diff(&tensor_to_vec(&extra), &tensor_to_vec(&want));
        assert!(diff < 1e-4, "extension: {diff}");
        // A mask of the wrong width is refused.
        let bad = tch::no_grad(|| {
            d.forward_cached_masked(
                &Tensor::from_slice(&[5i64]).view([1, 1]),
                &Tensor::from_slice(&[0i64]).view([1, 1]),
                &Tensor::ones([1, 1, 3], (Kind::Bool, Device::Cpu)),
                &mut cache,
            )
        });
        assert!(bad.is_err());
    }
}
