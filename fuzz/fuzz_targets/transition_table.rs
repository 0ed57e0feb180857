#![no_main]
//! `cargo fuzz run --sanitizer none transition_table`: see `fsm_fuzz_harness::transition_table`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsm_fuzz_harness::transition_table(data));
