//! The code map of `service/src` held to ARCHITECTURE.md.
//!
//! `service/src` is parsed with `syn` (the path comes from
//! `CARGO_MANIFEST_DIR`), every reference from one file to another resolved
//! ([`refs`]), and the rules checked ([`rules`]): no import circle between
//! files, dependencies pointing down (front ends → capabilities → store and
//! base), SQL only in its tables' owners, `clap`/printing/`indicatif` only
//! in `cli/` and `main.rs` and `axum` only in `api/`, no file over 800 lines
//! outside its tests unless it says why. The test fails with one line per
//! violation, `file:line: rule: detail`.
//!
//! ```text
//! tree.rs   files → module paths, inline modules, test-only items
//! refs.rs   use trees, paths, macro tokens, attribute strings → files
//! rules.rs  the rules → violations
//! synthetic.rs  small trees in a temp dir: each rule can fail
//! ```
//!
//! Code under `#[cfg(test)]` (and `#[test]` functions) is not checked: tests
//! may reach anything. Doc comments are not read.

mod refs;
mod rules;
mod synthetic;
mod tree;

use std::path::Path;

pub use rules::{Violation, check};

/// `service/src` of this repository.
fn service_src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../service/src")
}

#[test]
fn service_src_follows_architecture_md() {
    let violations = check(&service_src()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        violations.is_empty(),
        "{} violations of ARCHITECTURE.md in service/src:\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| format!("service/src/{v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every test file is part of the one test binary (`autotests = false`: a
/// file dropped into `integration/tests/` would otherwise never run).
#[test]
fn every_integration_test_file_is_a_module_of_the_test_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let stray: Vec<String> = std::fs::read_dir(&tests)
        .expect("integration/tests")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "it")
        .collect();
    assert!(
        stray.is_empty(),
        "integration/tests/ holds {stray:?} outside it/: make each a module of tests/it (see tests/it/main.rs)"
    );
    let it = tests.join("it");
    let tree = tree::Tree::load(&it).unwrap_or_else(|e| panic!("{e}"));
    // A file's module is declared by a `mod` in the file of its parent
    // module (`main.rs` for the top level).
    let declared = |f: &tree::SourceFile| {
        let Some((name, parent)) = f.module.split_last() else {
            return true;
        };
        tree.files.iter().any(|p| {
            p.module == parent
                && p.ast
                    .items
                    .iter()
                    .any(|i| matches!(i, syn::Item::Mod(m) if m.ident == name))
        })
    };
    let missing: Vec<&str> = tree
        .files
        .iter()
        .filter(|f| !declared(f))
        .map(|f| f.rel.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "files under tests/it/ no `mod` declares: {missing:?}"
    );
}
