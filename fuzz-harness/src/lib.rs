//! The bodies of the cargo-fuzz targets in `fuzz/`, as plain functions.
//!
//! Each function takes the fuzzer's bytes and panics if, and only if, a property of the
//! project does not hold for them; any other input is simply checked and returns. The targets
//! in `fuzz/fuzz_targets/` call them under libFuzzer, and `tests/corpus.rs` (run by the main
//! workspace's `cargo test`) calls them over every file in `fuzz/corpus/<target>/`, the
//! checked-in seeds plus the regression inputs of bugs the fuzzers found.
//!
//! | target | what it hammers | what must hold |
//! |---|---|---|
//! | [`transition_table`] | event sequences on the example machines | the property check of `fsm_core::testing` (seven properties); the derived registrar and the hand-written one decide every step alike |
//! | [`envelope_decode`] | arbitrary bytes as a snapshot envelope | typed errors, never a panic; bounded allocation; what decodes re-encodes to the same machine |
//! | [`queue_ops`] | submit, try-submit, close, drain, clock, shutdown, random policies | every command gets exactly one outcome; the counts add up at every step and match what submitters saw |
//! | [`store_ops`] | put, put-many, get, ids, checkpoint, reopen, with an injected disk fault or a power cut per session | the file store agrees with an in-memory model; nothing acknowledged is lost; nothing corrupt is returned |
//! | [`derive_input`] | enums with arbitrary `#[fsm(..)]` attribute sets | the derive answers with code or errors, never a panic, and its output is valid Rust |

pub mod alloc;
mod derive_input;
mod envelope_decode;
mod queue_machine;
mod queue_ops;
mod store_ops;
mod transition_table;

pub use derive_input::derive_input;
pub use envelope_decode::envelope_decode;
pub use queue_ops::queue_ops;
pub use store_ops::{store_ops, store_ops_power_reboots};
pub use transition_table::transition_table;

/// A target's body: the fuzzer's bytes in, a panic if a property does not hold.
pub type Body = fn(&[u8]);

/// Every target, by the name of its `fuzz/corpus/` directory.
pub const TARGETS: &[(&str, Body)] = &[
    ("transition_table", transition_table),
    ("envelope_decode", envelope_decode),
    ("queue_ops", queue_ops),
    ("store_ops", store_ops),
    ("derive_input", derive_input),
];
