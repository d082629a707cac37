//! Rows of the data table → tokenised training examples: one sequence per `sft` row, a
//! (chosen, rejected) pair per preference row, with the tokens each side is scored on
//! and their step weights and advantages.

use arrow::array::{Array, RecordBatch};
use sspo_engine::{OpError, RunContext};
use sspo_model::train::{step_weight, ScoredSeq};
use sspo_model::Model;

use super::params::{LossKind, NllSpan, TrainParams};
use crate::columns::lists::{float_lists, int_column, text_lists};
use crate::columns::{cell, utf8_column};
use crate::model_port::render_context;
use crate::step_tokens::{trace_tokens, TraceTokens};

/// One tokenised sequence: `ids[from..]` are trained on; `weight` / `adv` per scored token.
#[derive(Debug, Clone)]
pub struct Seq {
    pub ids: Vec<i64>,
    pub from: usize,
    pub weight: Vec<f32>,
    pub adv: Vec<f32>,
}

impl Seq {
    /// Tokens trained on.
    pub fn scored(&self) -> usize {
        self.ids.len() - self.from
    }

    pub fn as_scored(&self) -> ScoredSeq<'_> {
        ScoredSeq {
            ids: &self.ids,
            from: self.from,
        }
    }
}

/// One training example: a single sequence (`sft`) or a (chosen, rejected) pair.
#[derive(Debug, Clone)]
pub enum Example {
    Single(Seq),
    Pair(Seq, Seq),
}

impl Example {
    /// Its sequences, chosen before rejected.
    pub fn seqs(&self) -> Vec<&Seq> {
        match self {
            Example::Single(s) => vec![s],
            Example::Pair(c, r) => vec![c, r],
        }
    }
}

/// Why rows were skipped, for `ctx.count`.
#[derive(Debug, Default)]
pub struct Skipped {
    missing_text: u64,
    empty_steps: u64,
    adv_mismatch: u64,
    too_long: u64,
    identical: u64,
    prefix_disagrees: u64,
}

impl Skipped {
    pub fn report(&self, ctx: &mut RunContext) {
        ctx.count(
            "missing_text",
            self.missing_text,
            "row{|s} had a null or empty context/prompt/completion and {was|were} skipped",
        );
        ctx.count(
            "empty_steps",
            self.empty_steps,
            "row{|s} had no steps (or an unreadable step list) and {was|were} skipped",
        );
        ctx.count(
            "adv_mismatch",
            self.adv_mismatch,
            "row{|s} had advantages missing, non-finite or not one per step and {was|were} skipped",
        );
        ctx.count(
            "too_long",
            self.too_long,
            "row{|s} {was|were} longer than max_length tokens and {was|were} skipped",
        );
        ctx.count(
            "identical_pairs",
            self.identical,
            "pair{|s} had identical chosen and rejected steps and {was|were} skipped",
        );
        ctx.count(
            "prefix_tokens_disagree",
            self.prefix_disagrees,
            "pair{|s} had a prefix_tokens value different from the shared leading steps' tokens (the steps were used)",
        );
    }

    /// Rows skipped (a `prefix_tokens` disagreement does not skip its row).
    pub fn total(&self) -> u64 {
        self.missing_text + self.empty_steps + self.adv_mismatch + self.too_long + self.identical
    }
}

/// Builds the training examples from the data table.
pub fn build_examples(
    p: &TrainParams,
    model: &Model,
    table: &RecordBatch,
    skipped: &mut Skipped,
) -> Result<Vec<Example>, OpError> {
    let eos = *model.eos_token_ids().first().ok_or_else(|| {
        OpError::msg("the model has no EOS token (generation_config, config or tokenizer): completions could not learn to stop")
    })?;
    let max_len = p
        .max_length
        .unwrap_or(model.decoder.config().max_position_embeddings as usize);
    let tokens = Tokens {
        model,
        eos,
        max_len,
    };
    if p.loss.is_preference() {
        pair_examples(p, &tokens, table, skipped)
    } else {
        sft_examples(p, &tokens, table, skipped)
    }
}

/// What tokenising needs of the model.
struct Tokens<'m> {
    model: &'m Model,
    eos: i64,
    max_len: usize,
}

impl Tokens<'_> {
    fn trace(&self, context: &str, steps: &[&str]) -> Result<TraceTokens, OpError> {
        trace_tokens(&self.model.tokenizer, context, steps)
            .map_err(|e| OpError::context("tokenizer", e))
    }
}

/// `sft`: the rendered prompt, then the completion as one step, then EOS.
fn sft_examples(
    p: &TrainParams,
    tokens: &Tokens,
    table: &RecordBatch,
    skipped: &mut Skipped,
) -> Result<Vec<Example>, OpError> {
    let prompts = utf8_column(table, &p.prompt)?
        .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.prompt)))?;
    let completions = utf8_column(table, &p.completion)?
        .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.completion)))?;
    let mut out = Vec::new();
    for i in 0..table.num_rows() {
        let (Some(prompt), Some(completion)) = (cell(&prompts, i), cell(&completions, i)) else {
            skipped.missing_text += 1;
            continue;
        };
        if completion.trim().is_empty() {
            skipped.missing_text += 1;
            continue;
        }
        let context = render_context(tokens.model, prompt, &p.prompt_template, p.chat_template)
            .map_err(OpError::source)?;
        let tr = tokens.trace(&context, &[completion])?;
        if tr.context_len == 0 {
            skipped.missing_text += 1;
            continue;
        }
        let mut ids = tr.ids;
        ids.push(tokens.eos);
        if ids.len() > tokens.max_len {
            skipped.too_long += 1;
            continue;
        }
        let n = ids.len() - tr.context_len;
        out.push(Example::Single(Seq {
            ids,
            from: tr.context_len,
            weight: vec![1.0; n],
            adv: vec![0.0; n],
        }));
    }
    Ok(out)
}

/// Preference losses: the context then each side's steps, then EOS; the identical leading
/// steps are masked out of the preference sum.
fn pair_examples(
    p: &TrainParams,
    tokens: &Tokens,
    table: &RecordBatch,
    skipped: &mut Skipped,
) -> Result<Vec<Example>, OpError> {
    let contexts = utf8_column(table, &p.context)?
        .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.context)))?;
    let chosen = text_lists(table, &p.chosen_steps)?;
    let rejected = text_lists(table, &p.rejected_steps)?;
    let (cadv, radv) = if p.loss.needs_adv() {
        (
            Some(float_lists(table, &p.chosen_adv)?),
            Some(float_lists(table, &p.rejected_adv)?),
        )
    } else {
        (None, None)
    };
    let prefix_col = int_column(table, "prefix_tokens")?;
    let mut out = Vec::new();
    for i in 0..table.num_rows() {
        let Some(context) = cell(&contexts, i).filter(|c| !c.is_empty()) else {
            skipped.missing_text += 1;
            continue;
        };
        let (Some(cs), Some(rs)) = (&chosen[i], &rejected[i]) else {
            skipped.empty_steps += 1;
            continue;
        };
        if cs.is_empty() || rs.is_empty() || cs.iter().chain(rs).any(|s| s.is_empty()) {
            skipped.empty_steps += 1;
            continue;
        }
        let advs = match (&cadv, &radv) {
            (Some(ca), Some(ra)) => match (&ca[i], &ra[i]) {
                (Some(a), Some(b))
                    if a.len() == cs.len()
                        && b.len() == rs.len()
                        && a.iter().chain(b).all(|x| x.is_finite()) =>
                {
                    Some((a, b))
                }
                _ => {
                    skipped.adv_mismatch += 1;
                    continue;
                }
            },
            _ => None,
        };
        if cs == rs {
            skipped.identical += 1;
            continue;
        }
        let shared_steps = cs.iter().zip(rs).take_while(|(a, b)| a == b).count();
        let c_refs: Vec<&str> = cs.iter().map(String::as_str).collect();
        let r_refs: Vec<&str> = rs.iter().map(String::as_str).collect();
        let ct = tokens.trace(context, &c_refs)?;
        let rt = tokens.trace(context, &r_refs)?;
        if ct.context_len == 0 {
            skipped.missing_text += 1;
            continue;
        }
        let shared_end = if shared_steps == 0 {
            ct.context_len
        } else {
            ct.step_spans[shared_steps - 1].1
        };
        if let Some(col) = &prefix_col {
            if col.is_valid(i) && col.value(i) != (shared_end - ct.context_len) as i64 {
                skipped.prefix_disagrees += 1;
            }
        }
        if ct.ids.len() + 1 > tokens.max_len || rt.ids.len() + 1 > tokens.max_len {
            skipped.too_long += 1;
            continue;
        }
        let (ca, ra) = advs.unzip();
        let nll_whole_completion =
            p.loss == LossKind::Sspo && p.eta > 0.0 && p.nll_span == NllSpan::Completion;
        let chosen_from = if nll_whole_completion {
            ct.context_len
        } else {
            shared_end
        };
        let side = Side {
            p,
            eos: tokens.eos,
            shared_end,
        };
        let c = side.seq(&ct, ca.map(Vec::as_slice), true, chosen_from);
        let r = side.seq(&rt, ra.map(Vec::as_slice), false, shared_end);
        debug_assert_eq!(c.weight.len(), c.scored());
        out.push(Example::Pair(c, r));
    }
    Ok(out)
}

/// How one side of a pair is scored.
struct Side<'p> {
    p: &'p TrainParams,
    eos: i64,
    /// The end of the shared leading steps.
    shared_end: usize,
}

impl Side<'_> {
    /// The side's sequence, scored from `from`; tokens before `shared_end` (scored only
    /// for the NLL term) weigh 0 in the preference sum.
    fn seq(&self, tr: &TraceTokens, adv: Option<&[f64]>, is_chosen: bool, from: usize) -> Seq {
        let p = self.p;
        let mut ids = tr.ids.clone();
        ids.push(self.eos);
        let mut weight = Vec::new();
        let mut a = Vec::new();
        for (k, &(s, e)) in tr.step_spans.iter().enumerate() {
            let lo = s.max(from);
            if e <= lo {
                continue;
            }
            let adv_k = adv.map_or(0.0, |v| v[k]);
            let w = if p.loss == LossKind::Sspo {
                step_weight(adv_k, p.alpha, p.w_min, p.w_max, is_chosen)
            } else {
                1.0
            };
            for t in lo..e {
                let shared = t < self.shared_end;
                weight.push(if shared { 0.0 } else { w as f32 });
                a.push(if shared { 0.0 } else { adv_k as f32 });
            }
        }
        // The EOS token belongs to the last step.
        weight.push(weight.last().copied().unwrap_or(1.0));
        a.push(a.last().copied().unwrap_or(0.0));
        Seq {
            ids,
            from,
            weight,
            adv: a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_port::load_model;
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use serde_json::json;
    use std::sync::Arc;

    /// The examples `build_examples` makes of one hand-written pair under `params`.
    fn one_pair(params: serde_json::Value) -> (Model, Seq, Seq, Skipped) {
        use sspo_engine::{ModelRef, ModelSource};
        let r = ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        };
        let model = load_model(&r, "cpu").unwrap();
        let row = serde_json::json!([{
            "context": "Q: 1+1?\n",
            "chosen_steps": "[\"One plus one. \", \"Two.\"]",
            "rejected_steps": "[\"One plus one. \", \"Three? \", \"Two.\"]",
            "chosen_adv": "[0.0, 0.5]",
            "rejected_adv": "[0.0, 0.4, -0.2]",
        }]);
        let schema = Arc::new(Schema::new(
            [
                "context",
                "chosen_steps",
                "rejected_steps",
                "chosen_adv",
                "rejected_adv",
            ]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
        ));
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                Arc::new(StringArray::from(vec![row[0][f.name()].as_str().unwrap()])) as ArrayRef
            })
            .collect();
        let table = RecordBatch::try_new(schema, cols).unwrap();
        let p: TrainParams = serde_json::from_value(params).unwrap();
        let mut skipped = Skipped::default();
        let ex = build_examples(&p, &model, &table, &mut skipped).unwrap();
        let Some(Example::Pair(c, rj)) = ex.into_iter().next() else {
            panic!("not a pair")
        };
        (model, c, rj, skipped)
    }

    #[test]
    fn pairs_mask_shared_steps_and_weight_each_step() {
        let (model, c, rj, skipped) = one_pair(json!({"alpha": 1.0, "nll_span": "branch"}));
        let tok = &model.tokenizer;
        let ctx_len = tok.encode("Q: 1+1?\n", false).unwrap().len();
        let shared = tok.encode("One plus one.", false).unwrap().len()
            + tok.encode(" ", false).unwrap().len();
        assert_eq!(c.from, ctx_len + shared);
        assert_eq!(rj.from, c.from);
        let eos = model.eos_token_ids()[0];
        assert_eq!(c.ids.last(), Some(&eos));
        // Chosen: step 2 ("Two.") with weight 1 + 0.5, EOS included.
        let two = tok.encode("Two.", false).unwrap().len();
        assert_eq!(c.scored(), two + 1);
        assert!(c.weight.iter().all(|&w| (w - 1.5).abs() < 1e-6));
        // Rejected: "Three? " weighs 1 - 0.4, "Two." 1 + 0.2 (and the EOS with it).
        let three = tok.encode("Three?", false).unwrap().len() + 1;
        assert_eq!(rj.scored(), three + two + 1);
        assert!(rj.weight[..three].iter().all(|&w| (w - 0.6).abs() < 1e-6));
        assert!(rj.weight[three..].iter().all(|&w| (w - 1.2).abs() < 1e-6));
        assert_eq!(rj.adv[three], -0.2);
        assert_eq!(skipped.total(), 0);
    }

    #[test]
    fn default_nll_span_scores_the_shared_steps_of_the_chosen_side_at_weight_zero() {
        let (_, branch_c, branch_r, _) = one_pair(json!({"alpha": 1.0, "nll_span": "branch"}));
        let (model, c, rj, _) = one_pair(json!({"alpha": 1.0}));
        let ctx_len = model.tokenizer.encode("Q: 1+1?\n", false).unwrap().len();
        assert_eq!(c.from, ctx_len);
        let shared = branch_c.from - ctx_len;
        assert_eq!(c.scored(), shared + branch_c.scored());
        assert!(c.weight[..shared].iter().all(|&w| w == 0.0));
        assert_eq!(c.weight[shared..], branch_c.weight[..]);
        // The rejected side and the weighted preference sum are unchanged.
        assert_eq!((rj.from, &rj.weight), (branch_r.from, &branch_r.weight));
        // Not for the losses without an NLL term.
        let (_, dpo_c, _, _) = one_pair(json!({"loss": "dpo"}));
        assert_eq!(dpo_c.from, branch_c.from);
    }
}
