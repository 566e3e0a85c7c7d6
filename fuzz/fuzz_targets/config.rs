//! Fuzz target `config`: the body is [`rekey::fuzzing::config`], which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rekey::fuzzing::config(data));
