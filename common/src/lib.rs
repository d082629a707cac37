//! What every `sspo` crate shares and none owns: the seeded RNG and the blake3 → u64
//! hashes that make runs reproducible ([`rng`]), "did you mean" suggestions for every
//! error that names a choice ([`suggest`]), and the CPU instruction-set names that the
//! spec checks and the model runtime applies ([`cpu_isa`]), and count phrases that agree
//! with their number ([`plural`]).
//!
//! No torch and no Arrow here: the engine, the model runtime and the operators all depend
//! on this crate, so it stays small.

pub mod cpu_isa;
pub mod plural;
pub mod rng;
pub mod suggest;
