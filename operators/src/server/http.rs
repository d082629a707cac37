//! JSON over HTTP with retries: timeouts, connection errors and 5xx answers are retried
//! with exponential backoff; a 4xx answer fails at once with the server's message;
//! an answer that is not JSON fails naming the url and what was expected.

use std::time::Duration;

use serde_json::Value;

use super::error::{snippet, ServerError};
use super::protocol::Answer;

/// First wait before a retry; it doubles with every attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A client for one server.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    agent: ureq::Agent,
    retries: u32,
}

/// One attempt's failure, and whether another attempt may succeed.
enum Attempt {
    Retry(String),
    Final(ServerError),
}

impl HttpClient {
    /// `base`: `http://host:port`; each request may take `timeout`.
    pub fn new(base: &str, timeout: Duration, retries: u32) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        HttpClient {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            retries,
        }
    }

    /// The same client, each request tried once.
    pub fn without_retries(&self) -> Self {
        HttpClient {
            retries: 0,
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST path` and `read` of its JSON answer, which names this url in its errors.
    pub fn post_read<T>(
        &self,
        path: &str,
        body: &Value,
        expected: &str,
        read: impl FnOnce(&Answer) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let value = self.post(path, body, expected)?;
        let url = self.url(path);
        read(&Answer {
            url: &url,
            value: &value,
        })
    }

    /// `GET path`, as JSON.
    pub fn get(&self, path: &str, expected: &str) -> Result<Value, ServerError> {
        self.with_retries(path, expected, || self.agent.get(self.url(path)).call())
    }

    /// `POST path` with a JSON body, as JSON.
    pub fn post(&self, path: &str, body: &Value, expected: &str) -> Result<Value, ServerError> {
        let text = body.to_string();
        self.with_retries(path, expected, || {
            self.agent
                .post(self.url(path))
                .header("content-type", "application/json")
                .send(text.as_str())
        })
    }

    fn with_retries(
        &self,
        path: &str,
        expected: &str,
        send: impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ServerError> {
        let url = self.url(path);
        let mut wait = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = match self.attempt(&url, expected, &send) {
                Ok(v) => return Ok(v),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retry(last)) => last,
            };
            if attempt > self.retries {
                return Err(ServerError::Unreachable {
                    url,
                    attempts: attempt,
                    last,
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    fn attempt(
        &self,
        url: &str,
        expected: &str,
        send: &impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Attempt> {
        let mut response = send().map_err(|e| Attempt::Retry(transport_problem(&e)))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| Attempt::Retry(format!("reading the answer: {e}")))?;
        if status >= 500 {
            return Err(Attempt::Retry(format!(
                "status {status}: {}",
                server_message(&body)
            )));
        }
        if status >= 400 {
            return Err(Attempt::Final(ServerError::Refused {
                url: url.to_string(),
                status,
                message: server_message(&body),
            }));
        }
        serde_json::from_str(&body).map_err(|_| {
            Attempt::Final(ServerError::BadAnswer {
                url: url.to_string(),
                expected: format!("JSON with {expected}"),
                got: snippet(&body, 200),
            })
        })
    }
}

fn transport_problem(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// The message in an error body: OpenAI's `{"error": {"message"}}`, FastAPI's
/// `{"detail"}`, `{"message"}`, or the body itself.
fn server_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return snippet(body, 500);
    };
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    v.pointer("/error/message")
        .or_else(|| v.get("error"))
        .or_else(|| v.get("detail"))
        .or_else(|| v.get("message"))
        .and_then(text)
        .unwrap_or_else(|| snippet(body, 500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_found_in_the_usual_places() {
        assert_eq!(
            server_message(r#"{"error": {"message": "too long", "code": 400}}"#),
            "too long"
        );
        assert_eq!(server_message(r#"{"detail": "bad field"}"#), "bad field");
        assert_eq!(server_message(r#"{"error": "nope"}"#), "nope");
        assert_eq!(server_message("plain text"), "\"plain text\"");
    }
}
