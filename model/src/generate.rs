//! Batched generation with a KV cache and continuous batching: up to `max_batch` requests run
//! together; a finished one leaves the batch (its cache rows are dropped) and the next waiting
//! prompt is prefilled and joins (its cache rows are appended, front-padded to align).

use std::collections::{HashSet, VecDeque};

use tch::{Kind, Tensor};

use crate::cache::KvCache;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::profile;
use crate::sampling::{sample, Rng};
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};

/// How to pick tokens and when to stop, per request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f64,
    /// 1.0 = off.
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Seed of this request's private RNG.
    pub seed: u64,
    /// Generation stops once the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// A prompt (already tokenized, e.g. a rendered chat template) and how to continue it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<i64>,
    pub params: SamplingParams,
}

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// An end-of-sequence token was produced.
    Eos,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
        }
    }
}

/// The continuation of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated ids, including the final eos token (if any) and the token that completed a
    /// stop string.
    pub token_ids: Vec<i64>,
    /// Decoded text without special tokens, cut before the stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    /// `token_ids.len()`.
    pub n_tokens: usize,
}

/// Batch-level settings.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Most requests decoded together.
    pub max_batch: usize,
    /// Token ids that end a sequence.
    pub eos_token_ids: Vec<i64>,
}

/// Most attention-mask entries (rows x len x len) one prefill call may build; larger admissions
/// are prefilled in several groups.
const PREFILL_MASK_BUDGET: usize = 1 << 26;

/// Splits `admitted` into consecutive groups whose padded prefill mask fits the budget (a
/// group always holds at least one request).
fn prefill_groups<'r>(requests: &[GenerationRequest], admitted: &'r [usize]) -> Vec<&'r [usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut max_len = 0;
    for (i, &r) in admitted.iter().enumerate() {
        let len = requests[r].prompt_ids.len().max(max_len);
        if i > start && (i - start + 1) * len * len > PREFILL_MASK_BUDGET {
            groups.push(&admitted[start..i]);
            start = i;
            max_len = requests[r].prompt_ids.len();
        } else {
            max_len = len;
        }
    }
    if start < admitted.len() {
        groups.push(&admitted[start..]);
    }
    groups
}

/// Runs [`GenerationRequest`]s through a [`Decoder`].
pub struct Generator<'a> {
    decoder: &'a Decoder,
    tokenizer: &'a TextTokenizer,
    config: GeneratorConfig,
}

struct Slot {
    request: usize,
    rng: Rng,
    generated: Vec<i64>,
    text: IncrementalDecoder,
    prompt_len: i64,
    finished: Option<FinishReason>,
}

impl<'a> Generator<'a> {
    pub fn new(
        decoder: &'a Decoder,
        tokenizer: &'a TextTokenizer,
        config: GeneratorConfig,
    ) -> Self {
        Generator {
            decoder,
            tokenizer,
            config,
        }
    }

    /// Generates for every request; outputs are in request order.
    pub fn generate(&self, requests: &[GenerationRequest]) -> Result<Vec<GenerationOutput>> {
        let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
        self.generate_with(requests, |i, out| outputs[i] = Some(out))?;
        outputs
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| ModelError::Input(format!("request {i} never finished"))))
            .collect()
    }

    /// Like [`Generator::generate`], handing each output to `on_done(request_index, output)` as
    /// soon as it finishes (for progress reporting or streaming results to disk).
    pub fn generate_with(
        &self,
        requests: &[GenerationRequest],
        mut on_done: impl FnMut(usize, GenerationOutput),
    ) -> Result<()> {
        if self.config.max_batch == 0 {
            return Err(ModelError::Input("max_batch must be > 0".into()));
        }
        let vocab = self.decoder.config().vocab_size;
        for (i, r) in requests.iter().enumerate() {
            if r.prompt_ids.is_empty() {
                return Err(ModelError::Input(format!(
                    "request {i} has an empty prompt"
                )));
            }
            if let Some(bad) = r.prompt_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(ModelError::Input(format!(
                    "request {i}: token id {bad} outside vocabulary of {vocab}"
                )));
            }
        }
        let eos: HashSet<i64> = self.config.eos_token_ids.iter().copied().collect();
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (i, r) in requests.iter().enumerate() {
            if r.params.max_new_tokens == 0 {
                on_done(i, self.finish(&[], &r.params, FinishReason::Length)?);
            } else {
                queue.push_back(i);
            }
        }
        tch::no_grad(|| -> Result<()> {
            let mut slots: Vec<Slot> = Vec::new();
            let mut cache: Option<KvCache> = None;
            while !queue.is_empty() || !slots.is_empty() {
                let free = self.config.max_batch - slots.len();
                if free > 0 && !queue.is_empty() {
                    let admitted: Vec<usize> = (0..free.min(queue.len()))
                        .filter_map(|_| queue.pop_front())
                        .collect();
                    let mut parts = Vec::new();
                    for group in prefill_groups(requests, &admitted) {
                        let (new_cache, logits) = self.prefill(requests, group)?;
                        cache = Some(match cache.take() {
                            Some(mut c) => {
                                c.concat_rows(&new_cache)?;
                                c
                            }
                            None => new_cache,
                        });
                        parts.push(logits);
                    }
                    let logits = Tensor::f_cat(&parts, 0)?;
                    let start = slots.len();
                    for &r in &admitted {
                        slots.push(Slot {
                            request: r,
                            rng: Rng::new(requests[r].params.seed),
                            generated: Vec::new(),
                            text: IncrementalDecoder::new(),
                            prompt_len: requests[r].prompt_ids.len() as i64,
                            finished: None,
                        });
                    }
                    self.pick(requests, &eos, &mut slots[start..], &logits)?;
                    self.retire(requests, &mut slots, &mut cache, &mut on_done)?;
                }
                if slots.is_empty() {
                    continue;
                }
                let Some(c) = cache.as_mut() else {
                    return Err(ModelError::Input("internal: batch without cache".into()));
                };
                let logits = self.step(&slots, c)?;
                self.pick(requests, &eos, &mut slots, &logits)?;
                self.retire(requests, &mut slots, &mut cache, &mut on_done)?;
            }
            Ok(())
        })
    }

    /// Runs the prompts of `admitted` (left-padded) and returns their cache and the logits of
    /// their last prompt token, `[n, vocab]` on the CPU.
    fn prefill(
        &self,
        requests: &[GenerationRequest],
        admitted: &[usize],
    ) -> Result<(KvCache, Tensor)> {
        let _t = profile::scope("prefill", self.decoder.device());
        let n = admitted.len() as i64;
        let max_len = admitted
            .iter()
            .map(|&r| requests[r].prompt_ids.len())
            .max()
            .unwrap_or(1) as i64;
        let max_new = admitted
            .iter()
            .map(|&r| requests[r].params.max_new_tokens)
            .max()
            .unwrap_or(1) as i64;
        let mut tokens = vec![0i64; (n * max_len) as usize];
        let mut valid = vec![false; (n * max_len) as usize];
        let mut positions = vec![0i64; (n * max_len) as usize];
        for (row, &r) in admitted.iter().enumerate() {
            let p = &requests[r].prompt_ids;
            let pad = max_len as usize - p.len();
            let base = row * max_len as usize;
            for (j, &t) in p.iter().enumerate() {
                tokens[base + pad + j] = t;
                valid[base + pad + j] = true;
                positions[base + pad + j] = j as i64;
            }
        }
        let device = self.decoder.device();
        let tokens = Tensor::from_slice(&tokens)
            .f_view([n, max_len])?
            .f_to_device(device)?;
        let valid = Tensor::from_slice(&valid).f_view([n, max_len])?;
        let positions = Tensor::from_slice(&positions).f_view([n, max_len])?;
        let mut cache = self.decoder.new_cache(n, max_len + max_new.min(1024))?;
        // Prompt ids were range-checked up front.
        let hidden = self
            .decoder
            .forward_cached_unchecked(&tokens, &positions, &valid, &mut cache, n, max_len)?;
        let last = hidden.f_select(1, max_len - 1)?;
        let logits = self.decoder.logits(&last)?.f_to_device(tch::Device::Cpu)?;
        Ok((cache, logits))
    }

    /// One decoding step for every slot; returns `[batch, vocab]` logits on the CPU.
    fn step(&self, slots: &[Slot], cache: &mut KvCache) -> Result<Tensor> {
        let _t = profile::scope("decode", self.decoder.device());
        let b = slots.len() as i64;
        let last: Vec<i64> = slots
            .iter()
            .map(|s| s.generated.last().copied().unwrap_or(0))
            .collect();
        // The fed token is the last generated one; it sits right after the previous ones.
        let pos: Vec<i64> = slots
            .iter()
            .map(|s| s.prompt_len + s.generated.len() as i64 - 1)
            .collect();
        let device = self.decoder.device();
        let tokens = Tensor::from_slice(&last)
            .f_view([b, 1])?
            .f_to_device(device)?;
        let positions = Tensor::from_slice(&pos).f_view([b, 1])?;
        let valid = Tensor::f_ones([b, 1], (Kind::Bool, tch::Device::Cpu))?;
        // Sampled ids are in range by construction.
        let hidden = self
            .decoder
            .forward_cached_unchecked(&tokens, &positions, &valid, cache, b, 1)?;
        let last = hidden.f_select(1, 0)?;
        Ok(self.decoder.logits(&last)?.f_to_device(tch::Device::Cpu)?)
    }

    /// Samples one token per slot from `logits` rows and records whether the slot finished.
    fn pick(
        &self,
        requests: &[GenerationRequest],
        eos: &HashSet<i64>,
        slots: &mut [Slot],
        logits: &Tensor,
    ) -> Result<()> {
        let _t = profile::scope("sampling", tch::Device::Cpu);
        let vocab = logits.size()[1] as usize;
        let flat = Vec::<f32>::try_from(&logits.f_contiguous()?.f_view([-1])?)?;
        for (row, slot) in slots.iter_mut().enumerate() {
            let params = &requests[slot.request].params;
            let row_logits = &flat[row * vocab..(row + 1) * vocab];
            let tok = sample(
                row_logits,
                params.temperature,
                params.top_k,
                params.top_p,
                &mut slot.rng,
            ) as i64;
            slot.generated.push(tok);
            if eos.contains(&tok) {
                slot.finished = Some(FinishReason::Eos);
                continue;
            }
            if !params.stop.is_empty() {
                let before = slot.text.text().len();
                let added = slot.text.push(self.tokenizer, tok)?;
                let text = slot.text.text();
                // A new match must end inside the added text, so only the tail is searched.
                let longest = params.stop.iter().map(String::len).max().unwrap_or(0);
                let mut from = before.saturating_sub(longest.saturating_sub(1));
                while !text.is_char_boundary(from) {
                    from -= 1;
                }
                let tail = &text[from..];
                if !added.is_empty()
                    && params
                        .stop
                        .iter()
                        .any(|s| !s.is_empty() && tail.contains(s.as_str()))
                {
                    slot.finished = Some(FinishReason::Stop);
                    continue;
                }
            }
            if slot.generated.len() >= params.max_new_tokens {
                slot.finished = Some(FinishReason::Length);
            }
        }
        Ok(())
    }

    /// Hands finished slots to `on_done` and drops their cache rows.
    fn retire(
        &self,
        requests: &[GenerationRequest],
        slots: &mut Vec<Slot>,
        cache: &mut Option<KvCache>,
        on_done: &mut impl FnMut(usize, GenerationOutput),
    ) -> Result<()> {
        if slots.iter().all(|s| s.finished.is_none()) {
            return Ok(());
        }
        let mut keep = Vec::new();
        let mut kept_slots = Vec::new();
        for (row, slot) in slots.drain(..).enumerate() {
            match slot.finished {
                Some(reason) => {
                    let params = &requests[slot.request].params;
                    on_done(slot.request, self.finish(&slot.generated, params, reason)?);
                }
                None => {
                    keep.push(row as i64);
                    kept_slots.push(slot);
                }
            }
        }
        *slots = kept_slots;
        if keep.is_empty() {
            *cache = None;
        } else if let Some(c) = cache.as_mut() {
            c.select_rows(&keep)?;
            c.trim_front()?;
        }
        Ok(())
    }

    fn finish(
        &self,
        ids: &[i64],
        params: &SamplingParams,
        reason: FinishReason,
    ) -> Result<GenerationOutput> {
        let text_ids = match reason {
            FinishReason::Eos => &ids[..ids.len().saturating_sub(1)],
            _ => ids,
        };
        let mut text = self.tokenizer.decode(text_ids, true)?;
        if reason == FinishReason::Stop {
            let cut = params
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if let Some(cut) = cut {
                text.truncate(cut);
            }
        }
        Ok(GenerationOutput {
            token_ids: ids.to_vec(),
            text,
            finish_reason: reason,
            n_tokens: ids.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_groups_respect_the_mask_budget() {
        let req = |n: usize| GenerationRequest {
            prompt_ids: vec![1; n],
            params: SamplingParams::default(),
        };
        let requests = vec![req(10), req(4000), req(4000), req(4000), req(4000), req(5)];
        let admitted: Vec<usize> = (0..requests.len()).collect();
        let groups = prefill_groups(&requests, &admitted);
        let flat: Vec<usize> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        assert_eq!(flat, admitted);
        for g in &groups {
            let len = g
                .iter()
                .map(|&r| requests[r].prompt_ids.len())
                .max()
                .unwrap();
            assert!(
                g.len() == 1 || g.len() * len * len <= PREFILL_MASK_BUDGET,
                "{g:?}"
            );
        }
        assert!(groups.len() > 1);
        let small: Vec<usize> = vec![0, 5];
        assert_eq!(prefill_groups(&requests, &small).len(), 1);
    }
}
