#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::request_head(data));
