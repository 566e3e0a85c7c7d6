//! Fuzz target `etcd_values`: the body is [`rekey::fuzzing::etcd_values`], which the corpus
//! replay test runs too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rekey::fuzzing::etcd_values(data));
