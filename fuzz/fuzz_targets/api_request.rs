//! Fuzz target `api_request`: the body is [`rekey::fuzzing::api_request`], which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rekey::fuzzing::api_request(data));
