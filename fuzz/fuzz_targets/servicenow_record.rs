//! Runs `steward_fuzz::servicenow_record`, which describes its input and the invariants it holds.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| steward_fuzz::servicenow_record(data));
