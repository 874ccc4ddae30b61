//! Runs `steward_fuzz::llm_proposal`, which describes its input and the invariants it holds.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::llm_proposal(data));
