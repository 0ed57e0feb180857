#![no_main]
//! `cargo fuzz run --sanitizer none derive_input`: see `fsm_fuzz_harness::derive_input`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsm_fuzz_harness::derive_input(data));
