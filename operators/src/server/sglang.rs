//! SGLang's native `/generate`: `input_ids`, `sampling_params` (with `sampling_seed`),
//! `return_logprob`, `logprob_start_len` (input log-probs from that position on),
//! `token_ids_logprob` (the log-probs of exactly these ids, so a verbal probe never depends
//! on a top-k list).
//!
//! Read back: `meta_info.input_token_logprobs` (one `[logprob, id, text]` per input
//! position from `logprob_start_len`), `meta_info.output_token_logprobs` (one per generated
//! token), `meta_info.output_token_ids_logprobs` (per generated token, one entry per
//! requested id), `meta_info.finish_reason.type`, `meta_info.completion_tokens`.

use serde_json::{json, Value};

use super::error::ServerError;
use super::http::HttpClient;
use super::protocol::{finish_reason, Answer, Completion, Sampling, ScoreQuery, Scored};

const PATH: &str = "/generate";
const EXPECTED: &str = "`text` and `meta_info` (an SGLang generation)";

fn sampling_params(s: &Sampling) -> Value {
    let mut p = json!({
        "max_new_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        // SGLang: -1 turns top-k off.
        "top_k": if s.top_k == 0 { -1 } else { s.top_k as i64 },
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "stop": s.stop,
        "skip_special_tokens": true,
    });
    if let Some(seed) = s.wire_seed() {
        p["sampling_seed"] = json!(seed);
    }
    p
}

/// One sampled completion (`with_ids`: also the generated ids).
pub fn complete(
    http: &HttpClient,
    prompt: &[i64],
    s: &Sampling,
    with_ids: bool,
) -> Result<Completion, ServerError> {
    let body = json!({
        "input_ids": prompt,
        "sampling_params": sampling_params(s),
        "return_logprob": with_ids,
    });
    let v = http.post(PATH, &body, EXPECTED)?;
    let url = http.url(PATH);
    let a = Answer {
        url: &url,
        value: &v,
    };
    let token_ids = if with_ids {
        let entries = a.array_at("/meta_info/output_token_logprobs")?;
        Some(
            entries
                .iter()
                .map(|e| e.get(1).and_then(Value::as_i64))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| a.bad("`output_token_logprobs` of `[logprob, id, text]`"))?,
        )
    } else {
        None
    };
    Ok(Completion {
        text: a.str_at("/text")?.to_string(),
        n_tokens: a.usize_at("/meta_info/completion_tokens")?,
        finish: finish_reason(a.str_at("/meta_info/finish_reason/type").unwrap_or("stop")),
        token_ids,
    })
}

/// A probe's reads: input log-probs from `forced_from` on, and the requested ids'
/// log-probs at the first generated (greedy) token, whose id is the argmax.
pub fn score(http: &HttpClient, q: &ScoreQuery) -> Result<Scored, ServerError> {
    let start = q.forced_from.min(q.ids.len().saturating_sub(1));
    let mut body = json!({
        "input_ids": q.ids,
        "sampling_params": sampling_params(&Sampling::greedy(1)),
        "return_logprob": true,
        "logprob_start_len": start,
    });
    if let Some(ids) = &q.next {
        body["token_ids_logprob"] = json!(ids);
    }
    let v = http.post(PATH, &body, EXPECTED)?;
    let url = http.url(PATH);
    let a = Answer {
        url: &url,
        value: &v,
    };
    let entries = a.array_at("/meta_info/input_token_logprobs")?;
    let forced = (q.forced_from..q.ids.len())
        .map(|p| {
            let e = entries.get(p - start);
            let matches = e.and_then(|e| e.get(1)).and_then(Value::as_i64) == Some(q.ids[p]);
            e.and_then(|e| e.get(0))
                .and_then(Value::as_f64)
                .filter(|_| matches)
                .map(|lp| lp as f32)
                .ok_or_else(|| {
                    a.bad(&format!(
                        "`input_token_logprobs[{}]` = [logprob, {}, text] (logprob_start_len {start})",
                        p - start,
                        q.ids[p]
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next = match &q.next {
        None => None,
        Some(wanted) => {
            let argmax = a
                .at("/meta_info/output_token_logprobs/0/1")?
                .as_i64()
                .ok_or_else(|| a.bad("`output_token_logprobs[0]` = [logprob, id, text]"))?;
            let listed = a.array_at("/meta_info/output_token_ids_logprobs/0")?;
            let lps = wanted
                .iter()
                .map(|t| {
                    listed
                        .iter()
                        .find(|e| e.get(1).and_then(Value::as_i64) == Some(*t))
                        .and_then(|e| e.get(0))
                        .and_then(Value::as_f64)
                        .map(|lp| lp as f32)
                        .ok_or_else(|| ServerError::MissingLogprob {
                            url: url.clone(),
                            what: format!(
                                "`output_token_ids_logprobs[0]` has no entry for requested token {t}"
                            ),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some((lps, argmax))
        }
    };
    Ok(Scored { forced, next })
}
