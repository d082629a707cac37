//! What can go wrong between a node and an inference server.

use thiserror::Error;

/// An inference server's failure, each naming the url it came from. Timeouts, connection
/// errors and 5xx answers are retried ([`super::http`]); what is left here is final.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A 4xx answer: the request itself is wrong; retrying cannot help.
    #[error("{url}: the server refused the request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// 5xx answers, timeouts or connection errors on every attempt.
    #[error("{url}: no answer after {attempts} attempts: {last}")]
    Unreachable {
        url: String,
        attempts: u32,
        last: String,
    },
    /// An answer that is not the JSON the protocol defines.
    #[error("{url}: unexpected answer: expected {expected}; got {got}")]
    BadAnswer {
        url: String,
        expected: String,
        got: String,
    },
    /// The server serves another model than the spec names.
    #[error("{url} serves {served}, not `{wanted}` (the `model` of the `server:` entry)")]
    OtherModel {
        url: String,
        wanted: String,
        served: String,
    },
    /// A log-prob the probe needs is not among those the server returned.
    #[error("{url}: {what}")]
    MissingLogprob { url: String, what: String },
    /// A prompt's ids could not be decoded to the text a text-only server takes.
    #[error("decoding a prompt to text: {0}")]
    Prompt(String),
    /// The api cannot give what a node asks of it.
    #[error("api `{api}` cannot {what}; {help}")]
    Unsupported {
        api: &'static str,
        what: &'static str,
        help: &'static str,
    },
}

/// The first `max` characters of a body, for messages.
pub fn snippet(body: &str, max: usize) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "an empty body".into();
    }
    match body.char_indices().nth(max) {
        Some((cut, _)) => format!("{:?}…", &body[..cut]),
        None => format!("{body:?}"),
    }
}
