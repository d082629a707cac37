//! The Qwen2/Llama decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.
//!
//! Parameters live in a [`tch::nn::VarStore`] under their transformers names
//! (`model.layers.0.self_attn.q_proj.weight`, ...), so checkpoints map one-to-one and a
//! trainer can hand `var_store()` to `nn::AdamW`.

use tch::{nn, Device, Kind, Tensor};

use crate::bf16_rows::Bf16Weight;
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::packed::PackedWeight;
use crate::profile;
use crate::rope;
use crate::runtime::{check_dtype_supported, DType};
use crate::sampling::Rng;

/// How tokens of a batch may attend to each other in [`Decoder::forward`].
#[derive(Debug, Clone, Copy)]
pub enum Attention<'a> {
    /// Plain causal attention; every row is a full sequence, positions `0..len`.
    Causal,
    /// Causal attention with a padding mask `[batch, len]` (1/true = real token). Padding may
    /// be on either side; positions count real tokens only (`cumsum(mask) - 1`), so a row's
    /// result does not depend on how much padding it got.
    Padded(&'a Tensor),
    /// Explicit boolean mask `[batch, len, len]` (true = query may attend to key) and explicit
    /// `positions` `[batch, len]`. Used for packed sequences (e.g. several probe blocks sharing
    /// one trace prefix).
    Custom {
        mask: &'a Tensor,
        positions: &'a Tensor,
    },
}

#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Set by [`Decoder::pack_for_inference`].
    packed: Option<Prepared>,
}

/// A weight matrix made ready for inference products on the CPU.
#[derive(Debug)]
enum Prepared {
    /// fp32: packed for MKL.
    Mkl(PackedWeight),
    /// bf16: the few-row kernel.
    Bf16(Bf16Weight),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref();
        match &self.packed {
            Some(Prepared::Mkl(p)) if p.accepts(x) => p.linear(x, bias),
            Some(Prepared::Bf16(p)) if p.accepts(x) => p.linear(x, bias),
            _ => Ok(x.f_linear(&self.weight, bias)?),
        }
    }

    fn pack(&mut self) -> Result<bool> {
        self.packed = match PackedWeight::new(&self.weight)? {
            Some(p) => Some(Prepared::Mkl(p)),
            None => Bf16Weight::new(&self.weight)?.map(Prepared::Bf16),
        };
        Ok(self.packed.is_some())
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// How parameters are filled when the decoder is built.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// transformers' `_init_weights`: N(0, 0.02) matrices, zero biases, unit norms.
    Random(u64),
    /// Zeros, to be overwritten by a checkpoint.
    Zeros,
}

/// A decoder-only transformer with its weights.
#[derive(Debug)]
pub struct Decoder {
    cfg: ModelConfig,
    dtype: DType,
    vs: nn::VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Tensor,
}

impl Decoder {
    /// A randomly initialised decoder (N(0, 0.02) matrices like transformers). The values come
    /// from a private generator per parameter (seeded by `seed` and the parameter name), not
    /// from libtorch's global RNG, so the same seed gives the same weights on any device and
    /// regardless of what other threads draw.
    pub fn random(cfg: &ModelConfig, dtype: DType, device: Device, seed: u64) -> Result<Self> {
        Self::build(cfg, dtype, device, Init::Random(seed))
    }

    pub(crate) fn build(
        cfg: &ModelConfig,
        dtype: DType,
        device: Device,
        init: Init,
    ) -> Result<Self> {
        cfg.validate()?;
        check_dtype_supported(dtype, device)?;
        let vs = nn::VarStore::new(device);
        let kind = dtype.kind();
        let root = vs.root();
        let param = |p: &nn::Path, name: &str, dims: &[i64], fill: Fill| -> Result<Tensor> {
            let t = match (init, fill) {
                (Init::Random(seed), Fill::Normal) => {
                    let mut rng = Rng::for_stream(seed, &p.path(name));
                    let n: i64 = dims.iter().product();
                    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.02) as f32).collect();
                    Tensor::from_slice(&v)
                        .f_view(dims)?
                        .f_to_kind(kind)?
                        .f_to_device(device)?
                }
                (_, Fill::Ones) => Tensor::f_ones(dims, (kind, device))?,
                _ => Tensor::f_zeros(dims, (kind, device))?,
            };
            Ok(p.add(name, t, true))
        };
        let linear = |p: &nn::Path, out: i64, inp: i64, bias: bool| -> Result<Linear> {
            let weight = param(p, "weight", &[out, inp], Fill::Normal)?;
            let bias = if bias {
                Some(param(p, "bias", &[out], Fill::Zeros)?)
            } else {
                None
            };
            Ok(Linear {
                weight,
                bias,
                packed: None,
            })
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let model = root.sub("model");
        let embed = param(
            &model.sub("embed_tokens"),
            "weight",
            &[cfg.vocab_size, h],
            Fill::Normal,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for l in 0..cfg.num_hidden_layers {
            let p = model.sub("layers").sub(l);
            let attn = p.sub("self_attn");
            let mlp = p.sub("mlp");
            layers.push(Layer {
                input_norm: param(&p.sub("input_layernorm"), "weight", &[h], Fill::Ones)?,
                q: linear(&attn.sub("q_proj"), nh * d, h, cfg.qkv_bias)?,
                k: linear(&attn.sub("k_proj"), nkv * d, h, cfg.qkv_bias)?,
                v: linear(&attn.sub("v_proj"), nkv * d, h, cfg.qkv_bias)?,
                o: linear(&attn.sub("o_proj"), h, nh * d, cfg.o_bias)?,
                post_norm: param(
                    &p.sub("post_attention_layernorm"),
                    "weight",
                    &[h],
                    Fill::Ones,
                )?,
                gate: linear(&mlp.sub("gate_proj"), i, h, cfg.mlp_bias)?,
                up: linear(&mlp.sub("up_proj"), i, h, cfg.mlp_bias)?,
                down: linear(&mlp.sub("down_proj"), h, i, cfg.mlp_bias)?,
            });
        }
        let norm = param(&model.sub("norm"), "weight", &[h], Fill::Ones)?;
        // Tied embeddings: the head *is* the embedding matrix, not a copy, as in transformers.
        let lm_head_weight = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            param(
                &root.sub("lm_head"),
                "weight",
                &[cfg.vocab_size, h],
                Fill::Normal,
            )?
        };
        let inv_freq = rope::inv_freq(cfg, device)?;
        Ok(Decoder {
            cfg: cfg.clone(),
            dtype,
            vs,
            embed,
            layers,
            norm,
            lm_head: Linear {
                weight: lm_head_weight,
                bias: None,
                packed: None,
            },
            inv_freq,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Weight/activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device holding the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The parameters, named as in transformers checkpoints (tied `lm_head` is not listed).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access, e.g. to freeze the weights. Do not change dtype or device through it
    /// (`set_kind`, `set_device`): that replaces the tensors while the decoder keeps using the
    /// old ones; choose dtype and device when loading instead.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        self.unpack();
        &mut self.vs
    }

    /// Packs the fp32 CPU weight matrices for MKL's GEMM (see [`crate::packed`]): decoding
    /// a few sequences at a time gets up to 2.6x faster matrix products, at the cost of a
    /// second, padded copy of the matrices (about 1.75x their size). The packed copy is a
    /// snapshot: call this only on a decoder whose weights no longer change (generation,
    /// probing, evaluation), never before training. bf16 CPU matrices are not copied but
    /// routed to [`crate::bf16_rows`]' kernel for products of a few rows. Returns whether
    /// anything was prepared (nothing on other devices or dtypes, or without MKL and
    /// AVX-512).
    pub fn pack_for_inference(&mut self) -> Result<bool> {
        let mut packed = false;
        for lin in self.linears_mut() {
            packed |= lin.pack()?;
        }
        Ok(packed)
    }

    /// Drops the packed copies made by [`Decoder::pack_for_inference`].
    pub fn unpack(&mut self) {
        for lin in self.linears_mut() {
            lin.packed = None;
        }
    }

    /// Every weight matrix applied with `linear`: the head and each layer's seven.
    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        std::iter::once(&mut self.lm_head)
            .chain(self.layers.iter_mut().flat_map(Layer::linears_mut))
    }

    /// A cache sized for `batch` rows and `capacity` columns (grows on demand).
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        KvCache::new(
            self.layers.len(),
            batch,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            self.dtype.kind(),
            self.device(),
        )
    }

    /// Logits `[batch, len, vocab]` (float32) for `tokens` `[batch, len]` (int64).
    pub fn forward(&self, tokens: &Tensor, attention: Attention<'_>) -> Result<Tensor> {
        let hidden = self.hidden_states(tokens, attention)?;
        self.logits(&hidden)
    }

    /// Final hidden states `[batch, len, hidden]` (after the last norm), for callers that only
    /// need logits at some positions (see [`Decoder::logits`]).
    pub fn hidden_states(&self, tokens: &Tensor, attention: Attention<'_>) -> Result<Tensor> {
        let (b, l) = self.check_tokens(tokens)?;
        let device = self.device();
        let causal = Tensor::f_ones([l, l], (Kind::Bool, device))?.f_tril(0)?;
        let (mask, positions) = match attention {
            Attention::Causal => {
                let pos = Tensor::f_arange(l, (Kind::Int64, device))?
                    .f_unsqueeze(0)?
                    .f_expand([b, l], false)?;
                (causal.f_view([1, 1, l, l])?, pos)
            }
            Attention::Padded(pad) => {
                expect_shape("padding mask", pad, &[b, l])?;
                let pad = pad.f_to_device(device)?.f_to_kind(Kind::Bool)?;
                let keys = pad.f_view([b, 1, 1, l])?;
                let mask = causal.f_view([1, 1, l, l])?.f_logical_and(&keys)?;
                let pos = pad
                    .f_to_kind(Kind::Int64)?
                    .f_cumsum(1, Kind::Int64)?
                    .f_sub_scalar(1)?
                    .f_clamp_min(0)?;
                (mask, pos)
            }
            Attention::Custom { mask, positions } => {
                expect_shape("attention mask", mask, &[b, l, l])?;
                expect_shape("positions", positions, &[b, l])?;
                (
                    mask.f_to_device(device)?
                        .f_to_kind(Kind::Bool)?
                        .f_unsqueeze(1)?,
                    positions.f_to_device(device)?.f_to_kind(Kind::Int64)?,
                )
            }
        };
        let mask = unmask_empty_rows(&mask)?;
        self.run_layers(tokens, &positions, &mask, None)
    }

    /// One incremental step: appends `tokens` `[batch, len]` to `cache` and returns their final
    /// hidden states. `positions` `[batch, len]` are the RoPE positions; `new_valid`
    /// `[batch, len]` (bool) marks real tokens (false = padding). Each new token attends to
    /// the valid cached columns of its row and causally to the new ones.
    pub fn forward_cached(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        new_valid: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, l) = self.check_tokens(tokens)?;
        self.forward_cached_unchecked(tokens, positions, new_valid, cache, b, l)
    }

    /// [`Decoder::forward_cached`] without the token-range scan, for callers that built the
    /// ids themselves (the generator).
    pub(crate) fn forward_cached_unchecked(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        new_valid: &Tensor,
        cache: &mut KvCache,
        b: i64,
        l: i64,
    ) -> Result<Tensor> {
        expect_cache_rows(cache, b)?;
        expect_shape("positions", positions, &[b, l])?;
        expect_shape("validity mask", new_valid, &[b, l])?;
        let device = self.device();
        let past = cache.len();
        cache.push_valid(&new_valid.f_to_device(device)?.f_to_kind(Kind::Bool)?)?;
        let total = past + l;
        let keys = cache.valid_upto(total)?.f_view([b, 1, 1, total])?;
        let mask = if l == 1 {
            keys
        } else {
            // Column j is visible to new token i when j <= past + i.
            let causal = Tensor::f_ones([l, total], (Kind::Bool, device))?
                .f_tril(past)?
                .f_view([1, 1, l, total])?;
            unmask_empty_rows(&causal.f_logical_and(&keys)?)?
        };
        self.run_cached(tokens, positions, &mask, cache, l)
    }

    /// Appends `tokens` `[batch, len]` to `cache` like [`Decoder::forward_cached`], with an
    /// explicit boolean `mask` `[batch, len, cache.len() + len]` (true = may attend) over the
    /// cached and the new columns instead of the validity rule. For rows that hold several
    /// continuations of one prefix side by side (the probe blocks of a trace), which must
    /// not see each other. The new columns are recorded as valid; a caller that mixes this
    /// with [`Decoder::forward_cached`] on one cache keeps track of what they hold itself.
    pub fn forward_cached_masked(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, l) = self.check_tokens(tokens)?;
        expect_cache_rows(cache, b)?;
        expect_shape("positions", positions, &[b, l])?;
        expect_shape("attention mask", mask, &[b, l, cache.len() + l])?;
        let device = self.device();
        cache.push_valid(&Tensor::f_ones([b, l], (Kind::Bool, device))?)?;
        let mask = mask
            .f_to_device(device)?
            .f_to_kind(Kind::Bool)?
            .f_unsqueeze(1)?;
        let mask = unmask_empty_rows(&mask)?;
        self.run_cached(tokens, positions, &mask, cache, l)
    }

    /// The layers over `tokens` appended to `cache`, which then counts them as filled.
    fn run_cached(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        l: i64,
    ) -> Result<Tensor> {
        let positions = positions
            .f_to_device(self.device())?
            .f_to_kind(Kind::Int64)?;
        let out = self.run_layers(tokens, &positions, mask, Some(cache));
        if out.is_ok() {
            cache.advance(l);
        }
        out
    }

    /// Float32 logits for hidden states of any leading shape `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let _t = profile::scope("lm_head", self.device());
        Ok(self.lm_head.forward(hidden)?.f_to_kind(Kind::Float)?)
    }

    fn check_tokens(&self, tokens: &Tensor) -> Result<(i64, i64)> {
        let size = tokens.size();
        if size.len() != 2 || size[1] == 0 {
            return Err(ModelError::Input(format!(
                "tokens must be [batch, len] with len > 0, got {size:?}"
            )));
        }
        if tokens.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!(
                "tokens must be int64, got {:?}",
                tokens.kind()
            )));
        }
        if size[0] > 0 {
            let (lo, hi) = (
                tokens.f_min()?.f_int64_value(&[])?,
                tokens.f_max()?.f_int64_value(&[])?,
            );
            if lo < 0 || hi >= self.cfg.vocab_size {
                return Err(ModelError::Input(format!(
                    "token ids must be in [0, {}), got range [{lo}, {hi}]",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok((size[0], size[1]))
    }

    fn run_layers(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let device = self.device();
        let tokens = tokens.f_to_device(device)?;
        let mut x = Tensor::f_embedding(&self.embed, &tokens, -1, false, false)?;
        let (cos, sin) = rope::cos_sin(&self.inv_freq, positions, self.dtype.kind())?;
        for (idx, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.input_norm)?;
            let a = {
                let _t = profile::scope("attention", device);
                self.attention(layer, idx, &h, &cos, &sin, mask, cache.as_deref_mut())?
            };
            x = x.f_add(&a)?;
            let h = self.rms_norm(&x, &layer.post_norm)?;
            let _t = profile::scope("mlp", device);
            let g = layer.gate.forward(&h)?.f_silu()?;
            let m = layer.down.forward(&g.f_mul(&layer.up.forward(&h)?)?)?;
            x = x.f_add(&m)?;
        }
        self.rms_norm(&x, &self.norm)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        idx: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let size = x.size();
        let (b, l) = (size[0], size[1]);
        let c = &self.cfg;
        let heads = |t: Tensor, n: i64| -> Result<Tensor> {
            Ok(t.f_view([b, l, n, c.head_dim])?.f_transpose(1, 2)?)
        };
        let q = heads(layer.q.forward(x)?, c.num_attention_heads)?;
        let k = heads(layer.k.forward(x)?, c.num_key_value_heads)?;
        let v = heads(layer.v.forward(x)?, c.num_key_value_heads)?;
        let q = rope::apply(&q, cos, sin)?;
        let k = rope::apply(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(idx, &k, &v)?,
            None => (k, v),
        };
        let groups = c.gqa_groups();
        let kv = c.num_key_value_heads;
        // How the `groups` query heads that share a kv head meet it, chosen per input length
        // (measured on CPU, see docs/benchmarks.md "Attention over grouped heads"): copying
        // keys/values per query head costs a whole cache copy per layer, which only pays off
        // for long inputs, where SDPA's own grouped path is slower.
        let mut grouped = false;
        let (q, k, v) = if groups == 1 {
            (q, k, v)
        } else if l == 1 {
            // Decoding: fold the query heads into the query axis, `[b, kv, groups, d]` (the
            // `[b, 1, 1, t]` mask broadcasts over the folded rows).
            (q.f_reshape([b, kv, groups, c.head_dim])?, k, v)
        } else if l <= GROUPED_SDPA_MAX_LEN {
            // A few new tokens over a cache (probe blocks, early answers): SDPA reads each
            // kv head for its group of query heads.
            grouped = true;
            (q, k, v)
        } else {
            (
                q,
                k.f_repeat_interleave_self_int(groups, 1, None)?,
                v.f_repeat_interleave_self_int(groups, 1, None)?,
            )
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let o = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            0.0,
            false,
            scale,
            grouped,
        )?
        .f_reshape([b, c.num_attention_heads, l, c.head_dim])?;
        let o = o
            .f_transpose(1, 2)?
            .f_reshape([b, l, c.num_attention_heads * c.head_dim])?;
        layer.o.forward(&o)
    }

    /// RMSNorm as transformers computes it: normalise in float32, cast back, then scale.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        if kind == Kind::Float {
            // Same arithmetic in one kernel instead of seven.
            let h = *x.size().last().unwrap_or(&0);
            return Ok(x.f_rms_norm([h].as_slice(), Some(weight), self.cfg.rms_norm_eps)?);
        }
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = xf.f_mul(&var.f_add_scalar(self.cfg.rms_norm_eps)?.f_rsqrt()?)?;
        Ok(weight.f_mul(&normed.f_to_kind(kind)?)?)
    }

    /// All parameter tensors by transformers name, for saving (tied head listed once).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Longest input (new tokens per row) for which attention uses SDPA's grouped-query path
/// instead of repeating keys and values per query head.
const GROUPED_SDPA_MAX_LEN: i64 = 64;

#[derive(Clone, Copy)]
enum Fill {
    Normal,
    Ones,
    Zeros,
}

fn expect_shape(what: &str, t: &Tensor, expected: &[i64]) -> Result<()> {
    if t.size() != expected {
        return Err(ModelError::Input(format!(
            "{what} must have shape {expected:?}, got {:?}",
            t.size()
        )));
    }
    Ok(())
}

fn expect_cache_rows(cache: &KvCache, rows: i64) -> Result<()> {
    if cache.batch() != rows {
        return Err(ModelError::Input(format!(
            "cache holds {} rows but tokens have {rows}",
            cache.batch()
        )));
    }
    Ok(())
}

/// A query row that may attend to nothing (left padding) would give NaN in SDPA; let it attend
/// everywhere instead. Its output is garbage but never read, and NaNs cannot leak into valid rows.
fn unmask_empty_rows(mask: &Tensor) -> Result<Tensor> {
    let any = mask.f_any_dim(-1, true)?;
    Ok(mask.f_logical_or(&any.f_logical_not()?)?)
}
