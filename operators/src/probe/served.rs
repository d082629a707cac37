//! The passes of probing through an inference server. Each block is one request over
//! `trace[..b] ⊕ block`: its teacher-forced reads are prompt log-probs, its next-token
//! read is the top log-probs (vLLM) or the requested ids' log-probs (SGLang) of one greedy
//! token. Each early answer is one greedy request of `early_answer_tokens` tokens after
//! `trace[..b] ⊕ suffix`; its first token is the argmax the block's early read asks for,
//! and `extend` hands out the rest one at a time, as greedy decoding would find them.
//! The requests of a batch run `max_in_flight` at a time.

use sspo_model::{ModelError, TextTokenizer};

use super::passes::{Block, Extend, Passes, Read, ReadOut};
use super::setup::ProbeSetup;
use super::trace::{probe_batch, BoundaryProbe, TraceInput};
use crate::server::pool::run_bounded;
use crate::server::{Sampling, ScoreQuery, Scored, ServerError, ServerModel};

/// Probes every boundary of every trace through `server`; the result is in input order.
pub fn probe_traces_served(
    server: &ServerModel,
    tokenizer: &TextTokenizer,
    setup: &ProbeSetup,
    traces: &[TraceInput<'_>],
    max_in_flight: usize,
) -> Result<Vec<Vec<BoundaryProbe>>, ProbeFailure> {
    for t in traces {
        if let Some(b) = t.boundaries.iter().find(|&&b| b == 0 || b > t.ids.len()) {
            return Err(ProbeFailure::Model(ModelError::Input(format!(
                "probe boundary {b} outside 1..={}",
                t.ids.len()
            ))));
        }
    }
    let mut passes = ServedPasses {
        server,
        traces: traces.iter().map(|t| t.ids).collect(),
        max_in_flight,
        early_tokens: setup.early_tokens,
        eos: setup.eos.first().copied(),
        early: Vec::new(),
        failure: None,
    };
    let out = probe_batch(tokenizer, tch::Device::Cpu, setup, traces, &mut passes);
    match (out, passes.failure) {
        (_, Some(e)) => Err(ProbeFailure::Server(e)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(ProbeFailure::Model(e)),
    }
}

/// Why probing through a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error(transparent)]
    Server(ServerError),
    #[error(transparent)]
    Model(ModelError),
}

struct ServedPasses<'a> {
    server: &'a ServerModel,
    traces: Vec<&'a [i64]>,
    max_in_flight: usize,
    early_tokens: usize,
    /// Stands for "the answer ended" once a greedy continuation stopped short.
    eos: Option<i64>,
    /// Per trace and block: its early answer, when it has one.
    early: Vec<Vec<Option<EarlyAnswer>>>,
    /// The server's error: [`Passes`] speaks [`ModelError`], so the cause is kept here
    /// and returned by [`probe_traces_served`].
    failure: Option<ServerError>,
}

/// A greedy continuation and how much of it was handed out.
type EarlyAnswer = (Vec<i64>, usize);

/// The requests of one block.
struct BlockJob {
    query: Option<ScoreQuery>,
    /// The prompt of its early answer.
    early: Option<Vec<i64>>,
}

impl ServedPasses<'_> {
    fn job(&self, trace: &[i64], b: &Block) -> Result<BlockJob, ModelError> {
        let mut seq = trace[..b.boundary].to_vec();
        seq.extend(&b.tokens);
        let mut forced_from = seq.len();
        let mut next = None;
        for r in &b.reads {
            let pos = b.boundary + r.point();
            match r {
                Read::Target { token, .. } => {
                    if seq.get(pos) != Some(token) {
                        return Err(ModelError::Input(format!(
                            "a teacher-forced read of token {token} at {pos} is not the sequence's token"
                        )));
                    }
                    forced_from = forced_from.min(pos);
                }
                // The early answer's first token: the greedy request gives it.
                Read::Dist { tokens, .. } if tokens.is_empty() && b.early => {}
                Read::Dist { tokens, .. } if pos == seq.len() => next = Some(tokens.clone()),
                Read::Dist { .. } => {
                    return Err(ModelError::Input(format!(
                        "a next-token read inside a block (at {pos} of {}) has no server request",
                        seq.len()
                    )))
                }
            }
        }
        let early = b.early.then(|| {
            let mut prompt = trace[..b.boundary].to_vec();
            prompt.extend(&b.tokens[..b.shared]);
            prompt
        });
        let query = (forced_from < seq.len() || next.is_some()).then_some(ScoreQuery {
            ids: seq,
            forced_from,
            next,
        });
        Ok(BlockJob { query, early })
    }

    /// The reads of one block from its answers.
    fn reads(
        b: &Block,
        scored: Option<&Scored>,
        early: Option<&[i64]>,
    ) -> Result<Vec<ReadOut>, ModelError> {
        let missing = |what: &str| ModelError::Input(format!("no server answer for {what}"));
        b.reads
            .iter()
            .map(|r| match r {
                Read::Target { point, .. } => {
                    let s = scored.ok_or_else(|| missing("a teacher-forced read"))?;
                    let first =
                        b.boundary + b.reads.iter().filter_map(target_point).min().unwrap_or(0);
                    let lp = s
                        .forced
                        .get(b.boundary + point - first)
                        .ok_or_else(|| missing("a teacher-forced position"))?;
                    Ok((vec![*lp], 0))
                }
                Read::Dist { tokens, .. } if tokens.is_empty() && b.early => {
                    let first = early
                        .and_then(|e| e.first())
                        .ok_or_else(|| missing("the early answer's first token"))?;
                    Ok((Vec::new(), *first))
                }
                Read::Dist { .. } => {
                    let (lps, argmax) = scored
                        .and_then(|s| s.next.as_ref())
                        .ok_or_else(|| missing("a next-token read"))?;
                    Ok((lps.clone(), *argmax))
                }
            })
            .collect()
    }

    fn fail(&mut self, e: ServerError) -> ModelError {
        let message = e.to_string();
        self.failure = Some(e);
        ModelError::Input(message)
    }
}

fn target_point(r: &Read) -> Option<usize> {
    match r {
        Read::Target { point, .. } => Some(*point),
        Read::Dist { .. } => None,
    }
}

impl Passes for ServedPasses<'_> {
    fn blocks(&mut self, blocks: &[Vec<Block>]) -> Result<Vec<Vec<Vec<ReadOut>>>, ModelError> {
        let mut index = Vec::new();
        let mut jobs = Vec::new();
        for (t, bs) in blocks.iter().enumerate() {
            for (k, b) in bs.iter().enumerate() {
                index.push((t, k));
                jobs.push(self.job(self.traces[t], b)?);
            }
        }
        let server = self.server;
        let early_tokens = self.early_tokens;
        let eos = self.eos;
        let answers = run_bounded(
            jobs.len(),
            self.max_in_flight,
            |i| -> Result<(Option<Scored>, Option<Vec<i64>>), ServerError> {
                let job = &jobs[i];
                let scored = job.query.as_ref().map(|q| server.score(q)).transpose()?;
                let early = match &job.early {
                    Some(prompt) => {
                        let c = server.complete(prompt, &Sampling::greedy(early_tokens), true)?;
                        let mut ids = c.token_ids.unwrap_or_default();
                        // A continuation that stopped short ended at an eos token, whether
                        // or not the server listed it.
                        if ids.len() < early_tokens && ids.last() != eos.as_ref() {
                            ids.extend(eos);
                        }
                        Some(ids)
                    }
                    None => None,
                };
                Ok((scored, early))
            },
            |_, _| {},
        );
        let answers = answers.map_err(|e| self.fail(e))?;
        self.early = blocks.iter().map(|bs| vec![None; bs.len()]).collect();
        let mut out: Vec<Vec<Vec<ReadOut>>> = blocks
            .iter()
            .map(|bs| Vec::with_capacity(bs.len()))
            .collect();
        for ((t, k), (scored, early)) in index.into_iter().zip(answers) {
            let b = &blocks[t][k];
            out[t].push(Self::reads(b, scored.as_ref(), early.as_deref())?);
            // The first token was read with the block; `extend` continues after it.
            self.early[t][k] = early.map(|ids| (ids, 1));
        }
        Ok(out)
    }

    fn extend(&mut self, steps: &[Extend]) -> Result<Vec<i64>, ModelError> {
        steps
            .iter()
            .map(|&(t, k, _)| {
                let (ids, next) = self.early[t][k].as_mut().ok_or_else(|| {
                    ModelError::Input("an early answer that was never started".into())
                })?;
                let token = ids.get(*next).copied().or(self.eos).ok_or_else(|| {
                    ModelError::Input(
                        "the server's early answer ended without an eos token id to stand for it"
                            .into(),
                    )
                })?;
                *next += 1;
                Ok(token)
            })
            .collect()
    }
}
