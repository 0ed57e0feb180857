#![no_main]
//! `cargo fuzz run --sanitizer none queue_ops`: see `fsm_fuzz_harness::queue_ops`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsm_fuzz_harness::queue_ops(data));
