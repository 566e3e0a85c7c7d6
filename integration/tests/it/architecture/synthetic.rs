//! The checker can fail: small source trees written to a temp dir, each
//! breaking (or carefully not breaking) one rule.

use super::{Violation, check};

/// Checks a tree of `(path, text)` files.
fn violations(files: &[(&str, &str)]) -> Vec<Violation> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("dirs");
        std::fs::write(&p, text).expect("write");
    }
    check(dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// `(file, line, rule)` of each violation.
fn found(v: &[Violation]) -> Vec<(String, usize, &'static str)> {
    v.iter().map(|v| (v.file.clone(), v.line, v.rule)).collect()
}

fn expect(files: &[(&str, &str)], want: &[(&str, usize, &str)]) {
    let v = violations(files);
    let want: Vec<(String, usize, &str)> = want
        .iter()
        .map(|(f, l, r)| (f.to_string(), *l, *r))
        .collect();
    let got = found(&v);
    assert_eq!(
        got.iter()
            .map(|(f, l, r)| (f.clone(), *l, *r))
            .collect::<Vec<_>>(),
        want,
        "violations:\n{}",
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const LIB_AB: &str = "pub mod a;\npub mod b;\npub mod c;\n";

#[test]
fn a_cycle_through_a_use_group_is_reported_with_its_files() {
    let v = violations(&[
        ("lib.rs", LIB_AB),
        (
            "a.rs",
            "use crate::{b::{self, B as Bee}, c};\npub struct A;\npub fn f() -> Bee { c::h(); b::B }\n",
        ),
        (
            "b.rs",
            "pub struct B;\n\npub fn g() -> crate::a::A { crate::a::A }\n",
        ),
        ("c.rs", "pub fn h() {}\n"),
    ]);
    assert_eq!(
        v.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["a.rs:1: import-cycle: a.rs:1 -> b.rs:3 -> a.rs"]
    );
}

#[test]
fn a_cycle_through_macros_is_reported() {
    expect(
        &[
            ("lib.rs", LIB_AB),
            (
                "a.rs",
                "pub fn f() {\n    tracing::info!(name = %crate::b::name(), \"hi\");\n}\npub fn id() -> u32 { 1 }\n",
            ),
            (
                "b.rs",
                "pub fn name() -> String {\n    format!(\"{}\", super::a::id())\n}\n",
            ),
            ("c.rs", ""),
        ],
        &[("a.rs", 2, "import-cycle")],
    );
}

#[test]
fn a_cycle_of_three_files_names_all_three() {
    let v = violations(&[
        ("lib.rs", LIB_AB),
        ("a.rs", "pub fn f() { crate::b::g() }\n"),
        ("b.rs", "pub fn g() { crate::c::h() }\n"),
        ("c.rs", "pub fn h() { crate::a::f() }\n"),
    ]);
    assert_eq!(
        v.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["a.rs:1: import-cycle: a.rs:1 -> b.rs:1 -> c.rs:1 -> a.rs"]
    );
}

/// Every way of writing a reference resolves: with `b.rs` using `a.rs`,
/// each way for `a.rs` to reach `b.rs` closes a circle.
#[test]
fn every_way_of_writing_a_path_is_resolved() {
    let ways = [
        ("use", "use crate::b::B;\n"),
        ("use group with self", "use crate::{b::{self}};\n"),
        ("use rename", "use crate::b as bee;\nfn f() { bee::g(); }\n"),
        ("use glob", "use crate::b::*;\n"),
        (
            "imported name",
            "use crate::b::B;\nfn f() -> Option<B> { None }\n",
        ),
        ("expression", "fn f() { crate::b::g(); }\n"),
        ("type", "fn f(_: Vec<crate::b::B>) {}\n"),
        (
            "pattern",
            "fn f(e: u8) { match e { crate::b::C => {} _ => {} } }\n",
        ),
        ("struct literal", "fn f() { let _ = crate::b::B {}; }\n"),
        ("attribute path", "#[crate::b::attr]\nfn f() {}\n"),
        (
            "attribute string",
            "#[serde(with = \"crate::b\")]\nstruct S;\n",
        ),
        (
            "macro argument",
            "fn f() { let _ = format!(\"{}\", crate::b::g()); }\n",
        ),
        (
            "nested macro",
            "fn f() { assert!(vec![crate::b::g()].is_empty()); }\n",
        ),
        (
            "super from inline module",
            "mod inner {\n    fn f() { super::super::b::g(); }\n}\n",
        ),
        ("rekey:: crate name", "fn f() { rekey::b::g(); }\n"),
    ];
    for (way, text) in ways {
        let v = violations(&[
            ("lib.rs", LIB_AB),
            ("a.rs", text),
            (
                "b.rs",
                "use crate::a;\npub struct B {}\npub const C: u8 = 0;\npub fn g() {}\n",
            ),
            ("c.rs", ""),
        ]);
        assert!(
            v.iter()
                .any(|v| v.rule == "import-cycle" && v.detail.contains("b.rs:1 -> a.rs")),
            "{way}: no circle found through\n{text}\n{v:?}"
        );
    }
}

#[test]
fn self_and_child_paths_resolve_from_a_mod_rs() {
    for (way, text) in [
        (
            "self::",
            "pub mod b;\npub fn f() { self::b::g() }\npub fn shared() {}\n",
        ),
        (
            "child path",
            "pub mod b;\npub fn f() { b::g() }\npub fn shared() {}\n",
        ),
    ] {
        let v = violations(&[
            ("lib.rs", "pub mod a;\n"),
            ("a/mod.rs", text),
            ("a/b.rs", "pub fn g() { super::shared() }\n"),
        ]);
        assert_eq!(
            v.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a/b.rs:1: import-cycle: a/b.rs:1 -> a/mod.rs:2 -> a/b.rs"],
            "{way}"
        );
    }
}

#[test]
fn external_and_std_paths_are_not_references() {
    expect(
        &[
            ("lib.rs", LIB_AB),
            ("a.rs", "fn f() { ::b::g(); std::mem::drop(1); }\n"),
            ("b.rs", "use crate::a;\n"),
            ("c.rs", ""),
        ],
        &[],
    );
}

#[test]
fn a_parents_reexports_and_mod_declarations_are_not_edges() {
    let child = "pub struct Thing;\npub fn f() { super::helper() }\n";
    // mod.rs declares and re-exports its child, which uses it: no circle.
    expect(
        &[
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod child;\npub use child::Thing;\npub fn helper() {}\n",
            ),
            ("m/child.rs", child),
        ],
        &[],
    );
    // Using the child in its own code is an import: a circle.
    expect(
        &[
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod child;\npub fn helper() {}\npub fn make() -> child::Thing { child::Thing }\n",
            ),
            ("m/child.rs", child),
        ],
        &[("m/child.rs", 2, "import-cycle")],
    );
    // A sibling reaching a name through the parent's re-export lands in the
    // file defining it, not in the parent.
    expect(
        &[
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod child;\nmod other;\npub use child::Thing;\npub fn go() { other::run() }\n",
            ),
            ("m/child.rs", "pub struct Thing;\n"),
            ("m/other.rs", "pub fn run() { let _ = crate::m::Thing; }\n"),
        ],
        &[],
    );
}

#[test]
fn test_code_is_not_checked() {
    expect(
        &[
            ("lib.rs", LIB_AB),
            (
                "a.rs",
                "pub fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::b::g;\n    fn t() { println!(\"{}\", \"SELECT 1 FROM t\"); }\n}\n",
            ),
            ("b.rs", "pub fn g() { crate::a::f() }\n"),
            ("c.rs", "#[test]\nfn t() { sqlx::query(\"SELECT 1\"); }\n"),
        ],
        &[],
    );
}

const LIB_AREAS: &str = "pub mod api;\npub mod cli;\npub mod config;\npub mod fuzzing;\npub mod k8s;\npub mod rotate;\npub mod runtime;\npub mod store;\npub mod units;\n";

#[test]
fn dependencies_point_down() {
    expect(
        &[
            ("lib.rs", LIB_AREAS),
            (
                "api/mod.rs",
                "fn f() { crate::cli::run(); crate::store::get(); }\n",
            ),
            ("cli/mod.rs", "mod serve;\npub fn run() {}\n"),
            (
                "cli/serve.rs",
                "use crate::{api, config, k8s, runtime, units};\n",
            ),
            (
                "config.rs",
                "use crate::runtime::serve;\nuse crate::k8s::KubeConfig;\n",
            ),
            ("fuzzing.rs", "fn f() { crate::config::parse(); }\n"),
            ("k8s/mod.rs", "pub struct KubeConfig;\nmod watch;\n"),
            ("k8s/watch.rs", "\nuse crate::config::Config;\n"),
            (
                "rotate/mod.rs",
                "fn f() { crate::store::get(); crate::fuzzing::body(); }\n",
            ),
            (
                "runtime/mod.rs",
                "pub fn serve() {}\nfn f() { crate::cli::run(); }\n",
            ),
            (
                "store/mod.rs",
                "pub fn get() {}\nuse crate::k8s::KubeConfig;\n",
            ),
            ("units.rs", "use crate::store::get;\n"),
        ],
        &[
            ("api/mod.rs", 1, "layering"),
            ("config.rs", 1, "layering"),
            ("k8s/watch.rs", 2, "layering"),
            ("rotate/mod.rs", 1, "layering"),
            ("runtime/mod.rs", 2, "layering"),
            ("store/mod.rs", 2, "layering"),
            ("units.rs", 1, "layering"),
        ],
    );
    let v = violations(&[
        ("lib.rs", LIB_AREAS),
        ("config.rs", "use crate::runtime::serve;\n"),
        ("runtime/mod.rs", "pub fn serve() {}\n"),
    ]);
    assert_eq!(found(&v), [("config.rs".to_string(), 1, "layering")]);
    assert!(
        v[0].detail
            .contains("config (front end) references runtime (front end)"),
        "{}",
        v[0]
    );
}

#[test]
fn sql_only_in_table_owners() {
    let code = "use sqlx::postgres::PgListener;\nuse sqlx::Executor;\nfn f() {\n    sqlx::query(\"SELECT 1 FROM t\");\n    let _ = \"UPDATE credentials SET x = 1\";\n    let _ = (\"DELETE\", \"with care\", \"Selected\");\n    let _ = format!(\"INSERT INTO t VALUES ({})\", 1);\n    let _ = sqlx::query_as!(T, \"x\");\n}\n";
    let files = [
        (
            "lib.rs",
            "pub mod backup;\npub mod devdb;\npub mod etcd;\npub mod k8s;\npub mod rotate;\npub mod store;\n",
        ),
        ("rotate/retire.rs", code),
        ("rotate/mod.rs", "mod retire;\n"),
        ("store/mod.rs", "mod engine;\n"),
        ("store/engine.rs", code),
        ("k8s/mod.rs", "mod bootstrap;\n"),
        ("k8s/bootstrap/mod.rs", "mod db;\nmod watch;\n"),
        ("k8s/bootstrap/db.rs", code),
        (
            "k8s/bootstrap/watch.rs",
            "fn f() { let _ = \"LISTEN rekey\"; }\n",
        ),
        ("etcd/mod.rs", "mod db;\n"),
        ("etcd/db.rs", code),
        ("backup/mod.rs", "mod db;\n"),
        ("backup/db.rs", code),
        ("devdb.rs", code),
    ];
    expect(
        &files,
        &[
            ("k8s/bootstrap/watch.rs", 1, "sql-owner"),
            ("rotate/retire.rs", 1, "sql-owner"),
            ("rotate/retire.rs", 2, "sql-owner"),
            ("rotate/retire.rs", 4, "sql-owner"),
            ("rotate/retire.rs", 4, "sql-owner"),
            ("rotate/retire.rs", 5, "sql-owner"),
            ("rotate/retire.rs", 7, "sql-owner"),
            ("rotate/retire.rs", 8, "sql-owner"),
        ],
    );
}

#[test]
fn clap_printing_and_axum_only_in_their_front_ends() {
    expect(
        &[
            (
                "lib.rs",
                "pub mod api;\npub mod backup;\npub mod cli;\npub mod config;\npub mod fuzzing;\npub mod rotate;\npub mod runtime;\n",
            ),
            (
                "main.rs",
                "use clap::Parser;\nfn main() { println!(\"hi\"); }\n",
            ),
            (
                "cli/status.rs",
                "use indicatif::ProgressBar;\nfn f() { println!(\"x\"); eprint!(\"y\"); }\n",
            ),
            (
                "cli/mod.rs",
                "mod status;\n#[derive(clap::Parser)]\nstruct Args;\n",
            ),
            ("api/mod.rs", "use axum::Router;\n"),
            (
                "rotate/mod.rs",
                "fn f() {\n    println!(\"x\");\n    std::eprintln!(\"y\");\n}\n#[cfg(test)]\nmod tests { fn t() { eprintln!(\"fine\"); } }\n",
            ),
            ("config.rs", "#[derive(clap::Args)]\nstruct A;\n"),
            ("runtime/mod.rs", "fn f() -> axum::Router { todo!() }\n"),
            (
                "backup/mod.rs",
                "fn f() { let _ = indicatif::ProgressBar::new(1); }\n",
            ),
            (
                "fuzzing.rs",
                "use axum::http::Uri;\nfn f() { println!(\"x\"); }\n",
            ),
        ],
        &[
            ("backup/mod.rs", 1, "front-end-only"),
            ("config.rs", 1, "front-end-only"),
            ("fuzzing.rs", 2, "front-end-only"),
            ("rotate/mod.rs", 2, "front-end-only"),
            ("rotate/mod.rs", 3, "front-end-only"),
            ("runtime/mod.rs", 1, "front-end-only"),
        ],
    );
}

#[test]
fn long_files_say_why_and_tests_do_not_count() {
    let lines = |n: usize| {
        (0..n)
            .map(|i| format!("pub fn f{i}() {{}}\n"))
            .collect::<String>()
    };
    let long = lines(801);
    let explained = format!(
        "//! A table.\n//!\n//! Why this file is long: one match over every value format.\n{}",
        lines(900)
    );
    let tested = format!(
        "{}#[cfg(test)]\nmod tests {{\n{}}}\n",
        lines(700),
        lines(300)
    );
    expect(
        &[
            (
                "lib.rs",
                "pub mod long;\npub mod explained;\npub mod tested;\npub mod fits;\n",
            ),
            ("long.rs", &long),
            ("explained.rs", &explained),
            ("tested.rs", &tested),
            ("fits.rs", &lines(800)),
        ],
        &[("long.rs", 1, "file-size")],
    );
}
