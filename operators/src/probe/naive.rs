//! The reference passes: one causal forward pass per block over `trace[..b] ⊕ block`, and
//! per early-answer token over `trace[..b] ⊕ shared tokens ⊕ early tokens so far`.

use sspo_model::{Attention, Model, ModelError};
use tch::Tensor;

use super::passes::{read_hidden, Block, Extend, Passes, Read, ReadOut};

pub(super) struct NaivePasses<'a> {
    model: &'a Model,
    traces: Vec<&'a [i64]>,
    /// Per trace and block: the boundary and the shared tokens, then the early tokens.
    early: Vec<Vec<(usize, Vec<i64>)>>,
}

impl<'a> NaivePasses<'a> {
    pub(super) fn new(model: &'a Model, traces: Vec<&'a [i64]>) -> Self {
        NaivePasses {
            model,
            traces,
            early: Vec::new(),
        }
    }

    /// The hidden states of one causal pass over `seq`, at `rows`.
    fn hidden_at(&self, seq: &[i64], rows: &[i64]) -> Result<Tensor, ModelError> {
        let device = self.model.decoder.device();
        let tokens = Tensor::from_slice(seq)
            .f_view([1, seq.len() as i64])?
            .f_to_device(device)?;
        let hidden = self
            .model
            .decoder
            .hidden_states(&tokens, Attention::Causal)?;
        let idx = Tensor::from_slice(rows).f_to_device(device)?;
        Ok(hidden.f_select(0, 0)?.f_index_select(0, &idx)?)
    }
}

impl Passes for NaivePasses<'_> {
    fn blocks(&mut self, blocks: &[Vec<Block>]) -> Result<Vec<Vec<Vec<ReadOut>>>, ModelError> {
        self.early = blocks
            .iter()
            .map(|bs| {
                bs.iter()
                    .map(|b| (b.boundary, b.tokens[..b.shared].to_vec()))
                    .collect()
            })
            .collect();
        let mut out = Vec::with_capacity(blocks.len());
        for (trace, bs) in self.traces.iter().zip(blocks) {
            let mut per_block = Vec::with_capacity(bs.len());
            for b in bs {
                let mut seq = trace[..b.boundary].to_vec();
                seq.extend(&b.tokens);
                let rows: Vec<i64> = b
                    .reads
                    .iter()
                    .map(|r| (b.boundary + r.point()) as i64 - 1)
                    .collect();
                let reads: Vec<&Read> = b.reads.iter().collect();
                let hidden = if rows.is_empty() {
                    Tensor::new()
                } else {
                    self.hidden_at(&seq, &rows)?
                };
                per_block.push(read_hidden(self.model, &hidden, &reads)?);
            }
            out.push(per_block);
        }
        Ok(out)
    }

    fn extend(&mut self, steps: &[Extend]) -> Result<Vec<i64>, ModelError> {
        let read = Read::Dist {
            point: 0,
            tokens: Vec::new(),
        };
        let mut out = Vec::with_capacity(steps.len());
        for &(t, k, token) in steps {
            let (boundary, tail) = &mut self.early[t][k];
            tail.push(token);
            let mut seq = self.traces[t][..*boundary].to_vec();
            seq.extend(tail.iter());
            let hidden = self.hidden_at(&seq, &[seq.len() as i64 - 1])?;
            out.push(read_hidden(self.model, &hidden, &[&read])?[0].1);
        }
        Ok(out)
    }
}
