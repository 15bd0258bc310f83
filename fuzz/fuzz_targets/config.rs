//! libFuzzer target: `gan_train::fuzz::config` (see fuzz/README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gan_train::fuzz::config(data));
