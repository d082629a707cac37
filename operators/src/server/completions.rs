//! `/v1/completions`, as vLLM extends it (`api: vllm`) and as plain OpenAI-compatible
//! servers speak it (`api: openai`, generation only). Prompts are sent as token ids.
//!
//! vLLM extensions used: `top_k`, `min_p`, `repetition_penalty` (sent at their neutral
//! values so the model's `generation_config.json` defaults, which vLLM applies to
//! unspecified fields, cannot change the sampling); `prompt_logprobs` (the log-prob of
//! every prompt token, the teacher-forced reads of a probe); `return_tokens_as_token_ids`
//! (log-prob entries keyed `token_id:N`, so ids are read back exactly).

use serde_json::{json, Value};
use sspo_engine::ServerApi;

use super::error::ServerError;
use super::http::HttpClient;
use super::protocol::{finish_reason, Answer, Completion, Sampling, ScoreQuery, Scored};

const PATH: &str = "/v1/completions";
const EXPECTED: &str = "`choices` (an OpenAI completion)";

/// The request body of one sampled completion.
pub fn completion_body(
    api: ServerApi,
    model: &str,
    prompt: &[i64],
    s: &Sampling,
    with_ids: bool,
) -> Value {
    let mut body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "n": 1,
        "stop": s.stop,
        "min_p": 0.0,
    });
    match api {
        ServerApi::Vllm => {
            // vLLM: -1 turns top-k off (older versions refuse 0).
            body["top_k"] = json!(if s.top_k == 0 { -1 } else { s.top_k as i64 });
            body["repetition_penalty"] = json!(1.0);
            body["skip_special_tokens"] = json!(true);
            body["include_stop_str_in_output"] = json!(false);
            if with_ids {
                body["logprobs"] = json!(1);
                body["return_tokens_as_token_ids"] = json!(true);
            }
        }
        // llama.cpp servers: top_k 0 is off; their default repeat penalty is not 1.
        ServerApi::Openai | ServerApi::Sglang => {
            body["top_k"] = json!(s.top_k);
            body["repeat_penalty"] = json!(1.0);
        }
    }
    if let Some(seed) = s.wire_seed() {
        body["seed"] = json!(seed);
    }
    body
}

/// One sampled completion (`with_ids`: also the generated ids, vLLM only).
pub fn complete(
    http: &HttpClient,
    api: ServerApi,
    model: &str,
    prompt: &[i64],
    s: &Sampling,
    with_ids: bool,
) -> Result<Completion, ServerError> {
    let body = completion_body(api, model, prompt, s, with_ids);
    let v = http.post(PATH, &body, EXPECTED)?;
    let url = http.url(PATH);
    let a = Answer {
        url: &url,
        value: &v,
    };
    let text = a.str_at("/choices/0/text")?.to_string();
    let finish = finish_reason(a.str_at("/choices/0/finish_reason").unwrap_or("stop"));
    let n_tokens = a.usize_at("/usage/completion_tokens")?;
    let token_ids = if with_ids {
        let tokens = a.array_at("/choices/0/logprobs/tokens")?;
        Some(
            tokens
                .iter()
                .map(|t| {
                    t.as_str()
                        .and_then(token_id)
                        .ok_or_else(|| a.bad("`token_id:N` tokens"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    Ok(Completion {
        text,
        n_tokens,
        finish,
        token_ids,
    })
}

/// A probe's reads through vLLM: `prompt_logprobs: 0` gives the log-prob of every prompt
/// token (the teacher-forced reads); one greedy token with `logprobs: top_k` gives the
/// next-token distribution's top `top_k` (the argmax is the token it generates). A next
/// token the top `top_k` lacks is an error, never a guess.
pub fn score(
    http: &HttpClient,
    model: &str,
    q: &ScoreQuery,
    top_k: u32,
) -> Result<Scored, ServerError> {
    let forced = q.forced_from < q.ids.len();
    let mut body = json!({
        "model": model,
        "prompt": q.ids,
        "max_tokens": 1,
        "temperature": 0.0,
        "n": 1,
        "return_tokens_as_token_ids": true,
    });
    if forced {
        body["prompt_logprobs"] = json!(0);
    }
    if q.next.is_some() {
        body["logprobs"] = json!(top_k);
    }
    let v = http.post(PATH, &body, EXPECTED)?;
    let url = http.url(PATH);
    let a = Answer {
        url: &url,
        value: &v,
    };
    let forced_lps = if forced {
        let entries = a.array_at("/choices/0/prompt_logprobs")?;
        (q.forced_from..q.ids.len())
            .map(|p| {
                let key = q.ids[p].to_string();
                entries
                    .get(p)
                    .and_then(|e| e.get(&key))
                    .and_then(|e| e.get("logprob"))
                    .and_then(Value::as_f64)
                    .map(|lp| lp as f32)
                    .ok_or_else(|| {
                        a.bad(&format!(
                            "`prompt_logprobs[{p}]` with the log-prob of prompt token {key}"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let next = match &q.next {
        None => None,
        Some(wanted) => {
            let argmax = a
                .str_at("/choices/0/logprobs/tokens/0")
                .ok()
                .and_then(token_id)
                .ok_or_else(|| a.bad("`logprobs.tokens[0]` as `token_id:N`"))?;
            let top = a.at("/choices/0/logprobs/top_logprobs/0")?;
            let lps = wanted
                .iter()
                .map(|t| {
                    top.get(format!("token_id:{t}"))
                        .and_then(Value::as_f64)
                        .map(|lp| lp as f32)
                        .ok_or_else(|| ServerError::MissingLogprob {
                            url: url.clone(),
                            what: format!(
                                "token {t} is not among the top {top_k} next-token log-probs the server returned; raise `top_logprobs` in the `server:` entry (and start vLLM with --max-logprobs at least as large)"
                            ),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some((lps, argmax))
        }
    };
    Ok(Scored {
        forced: forced_lps,
        next,
    })
}

/// `token_id:N` → N.
fn token_id(s: &str) -> Option<i64> {
    s.strip_prefix("token_id:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_bodies_map_sampling_exactly() {
        let s = Sampling {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            max_tokens: 12,
            seed: Some(u64::MAX),
            stop: vec!["\n\n".into()],
        };
        let b = completion_body(ServerApi::Vllm, "m", &[1, 2], &s, false);
        assert_eq!(b["prompt"], json!([1, 2]));
        assert_eq!(b["top_k"], json!(-1));
        assert_eq!(b["seed"], json!(i64::MAX));
        assert_eq!(b["max_tokens"], json!(12));
        assert_eq!(b["stop"], json!(["\n\n"]));
        assert!(b.get("logprobs").is_none());
        let b = completion_body(ServerApi::Openai, "m", &[1], &Sampling::greedy(3), false);
        assert_eq!(b["top_k"], json!(0));
        assert!(b.get("seed").is_none());
        assert_eq!(token_id("token_id:42"), Some(42));
        assert_eq!(token_id("42"), None);
    }
}
