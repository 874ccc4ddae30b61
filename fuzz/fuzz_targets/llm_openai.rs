//! Runs `steward_fuzz::llm_openai`, which describes its input and the invariants it holds.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::llm_openai(data));
