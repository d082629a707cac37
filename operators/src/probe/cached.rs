//! The cached passes: a batch of traces, one cache row each. The first pass computes
//! every trace's keys and values once and, in the same pass, every boundary's block as a
//! run of queries that see only the trace before their boundary and their own block.
//! Early answers then append one token per open block per pass, attending to the cached
//! prefix, the block's shared tokens (the suffix) and their own earlier tokens.
//!
//! Which cached column a query may see is decided from what each column holds
//! ([`Col`]), so one explicit mask serves the first pass and every extension.

use std::collections::BTreeMap;

use sspo_model::{KvCache, Model, ModelError};
use tch::Tensor;

use super::passes::{read_hidden, Block, Extend, Passes, Read, ReadOut};

/// What one cache column of a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    /// Trace token at this position.
    Trace(usize),
    /// Padding: seen by nothing.
    Pad,
    /// A token of block `block`.
    Block { block: usize, class: Class },
}

/// Which part of a block a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The suffix: seen by the block's forced tokens and by its early answer.
    Shared,
    /// Teacher-forced tokens (the reference answer): seen only by each other.
    Forced,
    /// The early answer's tokens: seen only by each other.
    Early,
}

/// One cache row: a trace and what its columns hold.
struct Row {
    trace: usize,
    cols: Vec<Col>,
}

pub(super) struct CachedPasses<'a> {
    model: &'a Model,
    traces: Vec<&'a [i64]>,
    /// The early-answer budget: how many extensions the cache is sized for.
    early_tokens: usize,
    cache: Option<KvCache>,
    rows: Vec<Row>,
    /// Per trace and block: the boundary.
    boundaries: Vec<Vec<usize>>,
    /// Per trace and block: the position of the block's next early token.
    next_pos: Vec<Vec<usize>>,
}

impl<'a> CachedPasses<'a> {
    /// `early_tokens` (the early-answer budget) sizes the cache for the extensions.
    pub(super) fn new(model: &'a Model, traces: Vec<&'a [i64]>, early_tokens: usize) -> Self {
        CachedPasses {
            model,
            traces,
            early_tokens,
            cache: None,
            rows: Vec::new(),
            boundaries: Vec::new(),
            next_pos: Vec::new(),
        }
    }

    /// Whether the query in column `query` of `row` may attend to column `key` (<= query).
    fn visible(&self, row: &Row, query: usize, key: usize) -> bool {
        match (row.cols[query], row.cols[key]) {
            (Col::Trace(_), Col::Trace(_)) => true,
            (Col::Block { block, .. }, Col::Trace(p)) => p < self.boundaries[row.trace][block],
            (
                Col::Block { block, class },
                Col::Block {
                    block: kb,
                    class: kc,
                },
            ) => block == kb && (kc == Class::Shared || kc == class),
            _ => false,
        }
    }

    /// Runs `tokens` `[rows, len]` (row-major; `len` new columns per row, whose kinds are
    /// already in `self.rows`) with the mask the columns imply, and returns the hidden
    /// states `[rows * len, hidden]`.
    fn run(&mut self, tokens: &[i64], positions: &[i64], len: usize) -> Result<Tensor, ModelError> {
        let n = self.rows.len();
        let total = self.rows.first().map_or(0, |r| r.cols.len());
        let past = total - len;
        let mut mask = vec![false; n * len * total];
        for (r, row) in self.rows.iter().enumerate() {
            for s in 0..len {
                let query = past + s;
                let base = (r * len + s) * total;
                for key in 0..=query {
                    mask[base + key] = self.visible(row, query, key);
                }
            }
        }
        let (n, len, total) = (n as i64, len as i64, total as i64);
        let device = self.model.decoder.device();
        let tokens = Tensor::from_slice(tokens)
            .f_view([n, len])?
            .f_to_device(device)?;
        let positions = Tensor::from_slice(positions).f_view([n, len])?;
        let mask = Tensor::from_slice(&mask).f_view([n, len, total])?;
        let Some(cache) = self.cache.as_mut() else {
            return Err(ModelError::Input(
                "internal: probe pass without a cache".into(),
            ));
        };
        let hidden = self
            .model
            .decoder
            .forward_cached_masked(&tokens, &positions, &mask, cache)?;
        Ok(hidden.f_reshape([n * len, -1])?)
    }

    /// Drops the cache rows of traces that have no open block left, when enough of them
    /// idle that copying the cache costs less than running their padding.
    fn compact(&mut self, active: &BTreeMap<usize, Vec<(usize, usize)>>) -> Result<(), ModelError> {
        let keep: Vec<i64> = (0..self.rows.len())
            .filter(|&r| active.contains_key(&self.rows[r].trace))
            .map(|r| r as i64)
            .collect();
        let idle = self.rows.len() - keep.len();
        if idle == 0 || idle * 4 < self.rows.len() {
            return Ok(());
        }
        if let Some(c) = self.cache.as_mut() {
            c.select_rows(&keep)?;
        }
        self.rows.retain(|row| active.contains_key(&row.trace));
        Ok(())
    }
}

impl Passes for CachedPasses<'_> {
    fn blocks(&mut self, blocks: &[Vec<Block>]) -> Result<Vec<Vec<Vec<ReadOut>>>, ModelError> {
        self.boundaries = blocks
            .iter()
            .map(|bs| bs.iter().map(|b| b.boundary).collect())
            .collect();
        self.next_pos = blocks
            .iter()
            .map(|bs| bs.iter().map(|b| b.boundary + b.shared).collect())
            .collect();
        // Each row: the trace up to its last boundary, then its blocks, then padding.
        let mut layouts = Vec::with_capacity(blocks.len());
        for (t, bs) in blocks.iter().enumerate() {
            let end = bs.iter().map(|b| b.boundary).max().unwrap_or(0);
            let mut cols: Vec<Col> = (0..end).map(Col::Trace).collect();
            let mut tokens = self.traces[t][..end].to_vec();
            let mut positions: Vec<i64> = (0..end as i64).collect();
            let mut starts = Vec::with_capacity(bs.len());
            for (k, b) in bs.iter().enumerate() {
                starts.push(cols.len());
                for (j, &tok) in b.tokens.iter().enumerate() {
                    let class = if j < b.shared {
                        Class::Shared
                    } else {
                        Class::Forced
                    };
                    cols.push(Col::Block { block: k, class });
                    tokens.push(tok);
                    positions.push((b.boundary + j) as i64);
                }
            }
            layouts.push((cols, tokens, positions, starts));
        }
        let len = layouts.iter().map(|l| l.0.len()).max().unwrap_or(0).max(1);
        let mut tokens = Vec::with_capacity(blocks.len() * len);
        let mut positions = Vec::with_capacity(blocks.len() * len);
        let mut reads: Vec<&Read> = Vec::new();
        let mut read_rows: Vec<i64> = Vec::new();
        self.rows.clear();
        for (t, (mut cols, tok, pos, starts)) in layouts.into_iter().enumerate() {
            let r = self.rows.len();
            for (k, b) in blocks[t].iter().enumerate() {
                for read in &b.reads {
                    let p = read.point();
                    // Point 0 reads the trace token before the boundary.
                    let col = if p == 0 {
                        b.boundary - 1
                    } else {
                        starts[k] + p - 1
                    };
                    read_rows.push((r * len + col) as i64);
                    reads.push(read);
                }
            }
            let pad = len - cols.len();
            tokens.extend(tok);
            tokens.extend(std::iter::repeat_n(0, pad));
            positions.extend(pos);
            positions.extend(std::iter::repeat_n(0, pad));
            cols.extend(std::iter::repeat_n(Col::Pad, pad));
            self.rows.push(Row { trace: t, cols });
        }
        // Room for the first pass and every extension (one column per early-answer block
        // per token).
        let most_early = blocks
            .iter()
            .map(|bs| bs.iter().filter(|b| b.early).count())
            .max()
            .unwrap_or(0);
        let capacity = len + self.early_tokens * most_early;
        self.cache = Some(
            self.model
                .decoder
                .new_cache(self.rows.len() as i64, capacity as i64)?,
        );
        let hidden = self.run(&tokens, &positions, len)?;
        let out = if reads.is_empty() {
            Vec::new()
        } else {
            let idx = Tensor::from_slice(&read_rows).f_to_device(self.model.decoder.device())?;
            read_hidden(self.model, &hidden.f_index_select(0, &idx)?, &reads)?
        };
        let mut it = out.into_iter();
        Ok(blocks
            .iter()
            .map(|bs| {
                bs.iter()
                    .map(|b| it.by_ref().take(b.reads.len()).collect())
                    .collect()
            })
            .collect())
    }

    fn extend(&mut self, steps: &[Extend]) -> Result<Vec<i64>, ModelError> {
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        // Per trace: (step index, block) in the order given.
        let mut active: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, &(t, k, _)) in steps.iter().enumerate() {
            active.entry(t).or_default().push((i, k));
        }
        self.compact(&active)?;
        let len = active.values().map(Vec::len).max().unwrap_or(1);
        let n = self.rows.len();
        let mut tokens = vec![0i64; n * len];
        let mut positions = vec![0i64; n * len];
        let mut read_rows = vec![0i64; steps.len()];
        for (r, row) in self.rows.iter_mut().enumerate() {
            let mine = active.get(&row.trace).map_or(&[][..], Vec::as_slice);
            for s in 0..len {
                match mine.get(s) {
                    Some(&(i, k)) => {
                        let pos = &mut self.next_pos[row.trace][k];
                        tokens[r * len + s] = steps[i].2;
                        positions[r * len + s] = *pos as i64;
                        *pos += 1;
                        read_rows[i] = (r * len + s) as i64;
                        row.cols.push(Col::Block {
                            block: k,
                            class: Class::Early,
                        });
                    }
                    None => row.cols.push(Col::Pad),
                }
            }
        }
        let hidden = self.run(&tokens, &positions, len)?;
        let idx = Tensor::from_slice(&read_rows).f_to_device(self.model.decoder.device())?;
        let read = Read::Dist {
            point: 0,
            tokens: Vec::new(),
        };
        let reads = vec![&read; steps.len()];
        let out = read_hidden(self.model, &hidden.f_index_select(0, &idx)?, &reads)?;
        Ok(out.into_iter().map(|(_, g)| g).collect())
    }
}
