//! Training building blocks: per-token log-probs with gradient ([`logprobs`]), AdamW with
//! saveable state ([`optim`]), the learning-rate schedule ([`schedule`]), the losses
//! (`sft`, `dpo`, `sspo`, `step_pg`, [`loss`]) and exact checkpoints of weights and
//! optimizer state ([`checkpoint`]). The `train` operator drives them.

mod adamw_cpu;
pub mod checkpoint;
pub mod logprobs;
pub mod loss;
pub mod optim;
pub mod schedule;

pub use checkpoint::{load_training_state, save_training_state};
pub use logprobs::{
    reference_logprobs, token_logprobs, token_logprobs_in_chunks, ScoredSeq, ScoredTokens,
};
pub use loss::{
    preference_loss, sft_loss, step_pg_loss, step_weight, LossParts, PairTokens, PrefLossConfig,
};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::Schedule;
