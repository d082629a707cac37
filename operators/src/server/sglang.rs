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
    http.post_read(PATH, &body, EXPECTED, |a| read_completion(a, with_ids))
}

/// A generation answer: `text`, the finish reason and token count of `meta_info`, and
/// (`with_ids`) the ids of `output_token_logprobs`.
fn read_completion(a: &Answer, with_ids: bool) -> Result<Completion, ServerError> {
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
    http.post_read(PATH, &body, EXPECTED, |a| read_scored(a, q, start))
}

/// A probe answer: the input log-probs of `q.ids` from `q.forced_from` on (the answer's
/// list starts at `start`), and the requested log-probs at the first generated token.
fn read_scored(a: &Answer, q: &ScoreQuery, start: usize) -> Result<Scored, ServerError> {
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
                            url: a.url.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:1/generate";

    fn complete_from(v: Value, with_ids: bool) -> Result<Completion, ServerError> {
        read_completion(
            &Answer {
                url: URL,
                value: &v,
            },
            with_ids,
        )
    }

    fn score_from(v: Value, q: &ScoreQuery, start: usize) -> Result<Scored, ServerError> {
        read_scored(
            &Answer {
                url: URL,
                value: &v,
            },
            q,
            start,
        )
    }

    /// The error's text, which must name the url.
    fn message(e: ServerError) -> String {
        let m = e.to_string();
        assert!(m.starts_with(URL), "{m}");
        m
    }

    #[test]
    fn generations_are_read_with_their_ids() {
        let v = json!({"text": " 12", "meta_info": {
            "finish_reason": {"type": "length", "length": 2},
            "completion_tokens": 2,
            "output_token_logprobs": [[-0.5, 5, null], [-0.25, 7, null]],
        }});
        let c = complete_from(v.clone(), true).expect("a completion");
        assert_eq!(c.text, " 12");
        assert_eq!(c.n_tokens, 2);
        assert_eq!(c.finish, sspo_model::FinishReason::Length);
        assert_eq!(c.token_ids, Some(vec![5, 7]));
        let mut v = v;
        v["meta_info"]["finish_reason"] = json!({"type": "stop", "matched": "\n\n"});
        let c = complete_from(v, false).expect("a completion");
        assert_eq!(c.finish, sspo_model::FinishReason::Stop);
        assert_eq!(c.token_ids, None);
    }

    #[test]
    fn malformed_generations_name_the_missing_field() {
        let m = message(complete_from(json!({"error": "x"}), false).unwrap_err());
        assert!(m.contains("`/text`"), "{m}");
        let no_count = json!({"text": "x", "meta_info": {}});
        let m = message(complete_from(no_count, false).unwrap_err());
        assert!(m.contains("`/meta_info/completion_tokens`"), "{m}");
        let negative = json!({"text": "x", "meta_info": {"completion_tokens": -1}});
        let m = message(complete_from(negative, false).unwrap_err());
        assert!(m.contains("as a non-negative integer"), "{m}");
        let short = json!({"text": "x", "meta_info": {"completion_tokens": 1,
            "output_token_logprobs": [[-0.5]]}});
        let m = message(complete_from(short, true).unwrap_err());
        assert!(
            m.contains("`output_token_logprobs` of `[logprob, id, text]`"),
            "{m}"
        );
        let none = json!({"text": "x", "meta_info": {"completion_tokens": 1}});
        let m = message(complete_from(none, true).unwrap_err());
        assert!(m.contains("`/meta_info/output_token_logprobs`"), "{m}");
    }

    fn probe_answer() -> Value {
        json!({"text": "", "meta_info": {
            "completion_tokens": 1,
            "input_token_logprobs": [[-1.5, 4, null], [-0.25, 6, null]],
            "output_token_logprobs": [[-0.1, 9, null]],
            "output_token_ids_logprobs": [[[-2.5, 3, null], [-0.1, 9, null]]],
        }})
    }

    #[test]
    fn probe_answers_are_read_exactly() {
        let q = ScoreQuery {
            ids: vec![1, 4, 6],
            forced_from: 1,
            next: Some(vec![9, 3]),
        };
        let s = score_from(probe_answer(), &q, 1).expect("scored");
        assert_eq!(s.forced, vec![-1.5, -0.25]);
        assert_eq!(s.next, Some((vec![-0.1, -2.5], 9)));
    }

    #[test]
    fn malformed_probe_answers_are_errors_not_guesses() {
        let q = ScoreQuery {
            ids: vec![1, 4, 6],
            forced_from: 1,
            next: Some(vec![3]),
        };
        // The input list must start at `logprob_start_len`: entries for other ids are
        // refused rather than read at the wrong position.
        let m = message(score_from(probe_answer(), &q, 0).unwrap_err());
        assert!(
            m.contains("`input_token_logprobs[1]` = [logprob, 4, text] (logprob_start_len 0)"),
            "{m}"
        );
        let mut v = probe_answer();
        v["meta_info"]["input_token_logprobs"] = json!([[-1.5, 4, null]]);
        let m = message(score_from(v, &q, 1).unwrap_err());
        assert!(m.contains("`input_token_logprobs[1]`"), "{m}");
        let mut v = probe_answer();
        v["meta_info"]["output_token_logprobs"] = json!([[-0.1, "9", null]]);
        let m = message(score_from(v, &q, 1).unwrap_err());
        assert!(
            m.contains("`output_token_logprobs[0]` = [logprob, id, text]"),
            "{m}"
        );
        let mut v = probe_answer();
        v["meta_info"]
            .as_object_mut()
            .expect("object")
            .remove("output_token_ids_logprobs");
        let m = message(score_from(v, &q, 1).unwrap_err());
        assert!(
            m.contains("`/meta_info/output_token_ids_logprobs/0`"),
            "{m}"
        );
        let q = ScoreQuery {
            next: Some(vec![8]),
            ..q
        };
        let e = score_from(probe_answer(), &q, 1).unwrap_err();
        assert!(matches!(e, ServerError::MissingLogprob { .. }), "{e:?}");
        assert!(message(e).contains("no entry for requested token 8"));
    }
}
