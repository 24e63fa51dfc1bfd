//! libFuzzer target: every ghost-core parser on arbitrary bytes (see `../exercise.rs`).
#![no_main]

#[path = "../exercise.rs"]
mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| exercise::run(data));
