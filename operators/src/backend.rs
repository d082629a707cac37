//! A port's model as the rollout and probe code run it: weights loaded here
//! ([`Backend::Local`]) or an inference server ([`Backend::Server`]), and [`TextView`], the
//! text side both share (tokenizer, chat template, eos ids, context length), through
//! which prompts are rendered and tokenised the same way for either.

use sspo_engine::{ModelRef, ModelSource, OpError};
use sspo_model::{ChatTemplate, Model, TextTokenizer};

use crate::model_port::load_inference_model;
use crate::server::ServerModel;

/// Where a port's model runs. (One is held per node at a time, so the size of either
/// variant does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Local(Model),
    Server(ServerModel),
}

/// What turns text into a model's input and says where generation ends.
pub struct TextView<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub chat_template: Option<&'a ChatTemplate>,
    pub eos_token_ids: Vec<i64>,
    /// The most positions a sequence may take; `None` when a server's is not known (the
    /// server then refuses what does not fit).
    pub context_length: Option<usize>,
}

impl<'a> TextView<'a> {
    pub fn of_model(model: &'a Model) -> Self {
        TextView {
            tokenizer: &model.tokenizer,
            chat_template: model.chat_template.as_ref(),
            eos_token_ids: model.eos_token_ids(),
            context_length: Some(model.decoder.config().max_position_embeddings as usize),
        }
    }
}

impl Backend {
    /// Loads the weights (packed for inference), or connects to the server.
    pub fn load(model: &ModelRef, device: &str) -> Result<Self, OpError> {
        match &model.source {
            ModelSource::Server(spec) => ServerModel::connect(spec)
                .map(Backend::Server)
                .map_err(|e| OpError::msg(format!("model `{}`: {e}", model.name))),
            _ => load_inference_model(model, device).map(Backend::Local),
        }
    }

    pub fn text(&self) -> TextView<'_> {
        match self {
            Backend::Local(m) => TextView::of_model(m),
            Backend::Server(s) => TextView {
                tokenizer: &s.text.tokenizer,
                chat_template: s.text.chat_template.as_ref(),
                eos_token_ids: s.text.eos_token_ids.clone(),
                context_length: s.context_length,
            },
        }
    }
}
