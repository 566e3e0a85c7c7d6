//! Fuzz target `encryption_config`: the body is [`rekey::fuzzing::encryption_config`], which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rekey::fuzzing::encryption_config(data));
