//! Fuzz target `backup_stream`: the body is [`rekey::fuzzing::backup_stream`], which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rekey::fuzzing::backup_stream(data));
