#![no_main]
//! `cargo fuzz run --sanitizer none store_ops`: see `fsm_fuzz_harness::store_ops`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsm_fuzz_harness::store_ops(data));
