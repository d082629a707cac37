//! What a server says it serves: the model's name (checked against the spec's before the
//! first request, since the fingerprint carries the spec's name) and, where the server
//! reports it, its context length.

use serde_json::Value;
use sspo_engine::ServerApi;

use super::error::ServerError;
use super::http::HttpClient;
use super::protocol::Answer;

/// The served model as the server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// Context length (vLLM's `max_model_len`), when reported.
    pub context_length: Option<usize>,
}

/// Asks the server what it serves (`/v1/models`, or SGLang's `/get_model_info`) and
/// checks that `model` is among it.
pub fn check_served(http: &HttpClient, api: ServerApi, model: &str) -> Result<Served, ServerError> {
    match api {
        ServerApi::Vllm | ServerApi::Openai => {
            let path = "/v1/models";
            let v = http.get(path, "`data` (a list of models)")?;
            let url = http.url(path);
            let a = Answer {
                url: &url,
                value: &v,
            };
            let data = a.array_at("/data")?;
            let ids: Vec<&str> = data
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .collect();
            let Some(entry) = data
                .iter()
                .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
            else {
                return Err(other_model(&url, model, &ids));
            };
            Ok(Served {
                context_length: entry
                    .get("max_model_len")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
            })
        }
        ServerApi::Sglang => {
            let path = "/get_model_info";
            let v = http.get(path, "`model_path`")?;
            let url = http.url(path);
            let a = Answer {
                url: &url,
                value: &v,
            };
            let names: Vec<&str> = ["/model_path", "/served_model_name"]
                .iter()
                .filter_map(|p| v.pointer(p).and_then(Value::as_str))
                .collect();
            if names.is_empty() {
                return Err(a.bad("`model_path`"));
            }
            if !names.contains(&model) {
                return Err(other_model(&url, model, &names));
            }
            Ok(Served {
                context_length: None,
            })
        }
    }
}

fn other_model(url: &str, wanted: &str, served: &[&str]) -> ServerError {
    let served = match served {
        [] => "no model".to_string(),
        names => names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    ServerError::OtherModel {
        url: url.to_string(),
        wanted: wanted.to_string(),
        served,
    }
}
