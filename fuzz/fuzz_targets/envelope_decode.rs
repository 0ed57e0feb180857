#![no_main]
//! `cargo fuzz run --sanitizer none envelope_decode`: see `fsm_fuzz_harness::envelope_decode`.
//! The tracking allocator lets the body measure what decoding allocates.

#[global_allocator]
static ALLOC: fsm_fuzz_harness::alloc::Tracking = fsm_fuzz_harness::alloc::Tracking;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsm_fuzz_harness::envelope_decode(data));
