#![no_main]
//! A template for fuzzing your own machine: copy this file to
//! `fuzz/fuzz_targets/<name>.rs`, add a `[[bin]]` entry for it to `fuzz/Cargo.toml` (as the
//! `template` entry there), depend on your crate and on fsm-core with the `arbitrary`
//! feature, and replace the machine and its start state. Then
//! `cargo fuzz run --sanitizer none <name>`.
//!
//! The checker decodes the fuzzer's bytes into a sequence of events (the derived
//! `arbitrary::Arbitrary` impl) and checks every property of `fsm_core::testing` after each
//! step; a violation panics with the sequence, state and event names, and libFuzzer keeps the
//! input in `fuzz/artifacts/<name>/`. Turn it into a regression test by copying it into
//! `fuzz/corpus/<name>/`.

use fsm_core::testing::Checker;
use fsm_examples::registrar::Order; // your machine here

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let checker = Checker::<Order>::new().snapshots();
    if let Err(violation) = checker.fuzz(&Order::Draft, data) {
        panic!("{violation}");
    }
});
