//! `/v1/completions`, as vLLM extends it (`api: vllm`) and as plain OpenAI-compatible
//! servers speak it (`api: openai`, generation only). Prompts are sent as token ids (as
//! text to an `openai` server that refuses ids: [`super::ServerModel::complete`]).
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
use super::protocol::{finish_reason, Answer, Completion, Prompt, Sampling, ScoreQuery, Scored};

const PATH: &str = "/v1/completions";
const EXPECTED: &str = "`choices` (an OpenAI completion)";

/// The request body of one sampled completion.
pub fn completion_body(
    api: ServerApi,
    model: &str,
    prompt: Prompt,
    s: &Sampling,
    with_ids: bool,
) -> Value {
    let mut body = json!({
        "model": model,
        "prompt": prompt.to_json(),
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
    prompt: Prompt,
    s: &Sampling,
    with_ids: bool,
) -> Result<Completion, ServerError> {
    let body = completion_body(api, model, prompt, s, with_ids);
    http.post_read(PATH, &body, EXPECTED, |a| read_completion(a, with_ids))
}

/// A completion answer: the first choice's text and finish reason, the generated-token
/// count, and (`with_ids`) the ids of its `token_id:N` log-prob entries.
fn read_completion(a: &Answer, with_ids: bool) -> Result<Completion, ServerError> {
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

/// Whether an `api: openai` server takes a token-id `prompt`: one request for one token
/// after `[id]`, not retried. llama-cpp-python takes text only and answers ids with a
/// validation error naming `prompt` (with status 500); only that answer means no. Any
/// other failure is left to the real requests, which retry and report it.
pub fn takes_id_prompts(http: &HttpClient, model: &str, id: i64) -> bool {
    let greedy = Sampling::greedy(1);
    let body = completion_body(ServerApi::Openai, model, Prompt::Ids(&[id]), &greedy, false);
    match http.without_retries().post(PATH, &body, EXPECTED) {
        Err(ServerError::Refused { message, .. }) => !refuses_id_prompt(&message),
        Err(ServerError::Unreachable { last, .. }) => !refuses_id_prompt(&last),
        _ => true,
    }
}

/// A validation error about the `prompt` field (FastAPI / pydantic wording).
fn refuses_id_prompt(message: &str) -> bool {
    message.contains("prompt")
        && (message.contains("valid string") || message.contains("validation"))
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
    http.post_read(PATH, &body, EXPECTED, |a| read_scored(a, q, top_k))
}

/// A probe answer: the prompt log-probs from `q.forced_from` on, and the requested
/// next-token log-probs with the argmax.
fn read_scored(a: &Answer, q: &ScoreQuery, top_k: u32) -> Result<Scored, ServerError> {
    let forced = q.forced_from < q.ids.len();
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
                            url: a.url.to_string(),
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
        let b = completion_body(ServerApi::Vllm, "m", Prompt::Ids(&[1, 2]), &s, false);
        assert_eq!(b["prompt"], json!([1, 2]));
        assert_eq!(b["top_k"], json!(-1));
        assert_eq!(b["seed"], json!(i64::MAX));
        assert_eq!(b["max_tokens"], json!(12));
        assert_eq!(b["stop"], json!(["\n\n"]));
        assert!(b.get("logprobs").is_none());
        let greedy = Sampling::greedy(3);
        let b = completion_body(ServerApi::Openai, "m", Prompt::Text("a b"), &greedy, false);
        assert_eq!(b["prompt"], json!("a b"));
        assert_eq!(b["top_k"], json!(0));
        assert!(b.get("seed").is_none());
        assert_eq!(token_id("token_id:42"), Some(42));
        // llama-cpp-python's answer to an id prompt (status 500).
        assert!(refuses_id_prompt(
            "status 500: 4 validation errors:\n  {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), 'msg': 'Input should be a valid string', 'input': [1]}"
        ));
        assert!(!refuses_id_prompt(
            "This model's maximum context length is 2048"
        ));
        assert_eq!(token_id("42"), None);
    }

    const URL: &str = "http://127.0.0.1:1/v1/completions";

    fn complete_from(v: Value, with_ids: bool) -> Result<Completion, ServerError> {
        read_completion(
            &Answer {
                url: URL,
                value: &v,
            },
            with_ids,
        )
    }

    fn score_from(v: Value, q: &ScoreQuery) -> Result<Scored, ServerError> {
        read_scored(
            &Answer {
                url: URL,
                value: &v,
            },
            q,
            5,
        )
    }

    /// The error's text, which must name the url.
    fn message(e: ServerError) -> String {
        let m = e.to_string();
        assert!(m.starts_with(URL), "{m}");
        m
    }

    #[test]
    fn completions_are_read_with_their_ids() {
        let v = json!({
            "choices": [{"text": " 12", "finish_reason": "length",
                "logprobs": {"tokens": ["token_id:5", "token_id:7"]}}],
            "usage": {"completion_tokens": 2},
        });
        let c = complete_from(v.clone(), true).expect("a completion");
        assert_eq!(c.text, " 12");
        assert_eq!(c.n_tokens, 2);
        assert_eq!(c.finish, sspo_model::FinishReason::Length);
        assert_eq!(c.token_ids, Some(vec![5, 7]));
        // Without ids asked for, the log-probs are not read; a missing finish reason is
        // a stop (the text is complete either way).
        let mut v = v;
        v["choices"][0]["finish_reason"] = Value::Null;
        v["choices"][0]["logprobs"] = Value::Null;
        let c = complete_from(v, false).expect("a completion");
        assert_eq!(c.finish, sspo_model::FinishReason::Stop);
        assert_eq!(c.token_ids, None);
    }

    #[test]
    fn malformed_completions_name_the_missing_field() {
        let m = message(complete_from(json!({"object": "error"}), false).unwrap_err());
        assert!(
            // The answer is quoted in the message.
            m.contains("`/choices/0/text`") && m.contains(r#"got "{\"object\":\"error\"}""#),
            "{m}"
        );
        let m = message(complete_from(json!({"choices": [{"text": 3}]}), false).unwrap_err());
        assert!(m.contains("`/choices/0/text` as a string"), "{m}");
        let no_usage = json!({"choices": [{"text": "x", "finish_reason": "stop"}]});
        let m = message(complete_from(no_usage, false).unwrap_err());
        assert!(m.contains("`/usage/completion_tokens`"), "{m}");
        let text_tokens = json!({"choices": [{"text": "x", "logprobs": {"tokens": ["x"]}}],
            "usage": {"completion_tokens": 1}});
        let m = message(complete_from(text_tokens, true).unwrap_err());
        assert!(m.contains("`token_id:N` tokens"), "{m}");
        let no_logprobs = json!({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1}});
        let m = message(complete_from(no_logprobs, true).unwrap_err());
        assert!(m.contains("`/choices/0/logprobs/tokens`"), "{m}");
    }

    fn probe_answer() -> Value {
        json!({"choices": [{
            "text": "", "finish_reason": "length",
            "prompt_logprobs": [null, {"4": {"logprob": -1.5, "rank": 2}},
                                {"6": {"logprob": -0.25, "rank": 1}}],
            "logprobs": {"tokens": ["token_id:9"],
                         "top_logprobs": [{"token_id:9": -0.1, "token_id:3": -2.5}]},
        }]})
    }

    #[test]
    fn probe_answers_are_read_exactly() {
        let q = ScoreQuery {
            ids: vec![1, 4, 6],
            forced_from: 1,
            next: Some(vec![3, 9]),
        };
        let s = score_from(probe_answer(), &q).expect("scored");
        assert_eq!(s.forced, vec![-1.5, -0.25]);
        assert_eq!(s.next, Some((vec![-2.5, -0.1], 9)));
        // Only the next-token reads: the prompt log-probs are not needed.
        let mut v = probe_answer();
        v["choices"][0]["prompt_logprobs"] = Value::Null;
        let q = ScoreQuery {
            forced_from: 3,
            ..q
        };
        assert_eq!(score_from(v, &q).expect("scored").forced, Vec::<f32>::new());
    }

    #[test]
    fn malformed_probe_answers_are_errors_not_guesses() {
        let q = ScoreQuery {
            ids: vec![1, 4, 6],
            forced_from: 1,
            next: Some(vec![3]),
        };
        // A prompt entry without the prompt token's own log-prob.
        let mut v = probe_answer();
        v["choices"][0]["prompt_logprobs"][2] = json!({"7": {"logprob": -0.5}});
        let m = message(score_from(v, &q).unwrap_err());
        assert!(
            m.contains("`prompt_logprobs[2]` with the log-prob of prompt token 6"),
            "{m}"
        );
        // No prompt log-probs at all (a server without vLLM's extension).
        let mut v = probe_answer();
        v["choices"][0]
            .as_object_mut()
            .expect("object")
            .remove("prompt_logprobs");
        let m = message(score_from(v, &q).unwrap_err());
        assert!(m.contains("`/choices/0/prompt_logprobs`"), "{m}");
        // Tokens as text rather than `token_id:N`.
        let mut v = probe_answer();
        v["choices"][0]["logprobs"]["tokens"] = json!(["12"]);
        let m = message(score_from(v, &q).unwrap_err());
        assert!(m.contains("`logprobs.tokens[0]` as `token_id:N`"), "{m}");
        // A wanted token outside the returned top-k.
        let q = ScoreQuery {
            next: Some(vec![8]),
            ..q
        };
        let e = score_from(probe_answer(), &q).unwrap_err();
        assert!(matches!(e, ServerError::MissingLogprob { .. }), "{e:?}");
        let m = message(e);
        assert!(
            m.contains("token 8 is not among the top 5") && m.contains("top_logprobs"),
            "{m}"
        );
    }
}
