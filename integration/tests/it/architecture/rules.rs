//! The rules of ARCHITECTURE.md over a resolved tree, each violation one
//! line: `file:line: rule: detail`.
//!
//! - `import-cycle`: no circle of references between files (a parent's `pub
//!   use` of its descendants and `mod x;` are not references);
//! - `layering`: arrows point down (capabilities never reach the front
//!   ends; `api` never `cli`, `runtime`, `config`; `config` never `cli`,
//!   `runtime`; `runtime` never `cli`; `store` no other capability; the base
//!   modules nothing above them; nothing reaches `fuzzing`);
//! - `sql-owner`: SQL only in its tables' owners;
//! - `front-end-only`: `clap`, printing and `indicatif` only in `cli/` and
//!   `main.rs`, `axum` only in `api/` (and `fuzzing`, which drives the API's
//!   request parsers);
//! - `file-size`: at most 800 lines outside the `#[cfg(test)]` module,
//!   unless the `//!` says why (a line starting `Why this file is long:`).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    path::Path,
};

use super::{
    refs::{FileRefs, analyse},
    tree::Tree,
};

/// The capabilities: they never reach a front end.
const CAPABILITIES: &[&str] = &[
    "rotate", "issue", "sink", "k8s", "etcd", "backup", "store", "schedule", "scan",
];
/// The front ends, from the top.
const FRONT_ENDS: &[&str] = &["cli", "runtime", "config", "api"];
/// The base modules: everything may use them; they use nothing above them.
const BASE: &[&str] = &["units", "error", "secret", "crash", "telemetry", "devdb"];
/// The fuzz targets' bodies: may call anything; nothing calls them.
const FUZZING: &str = "fuzzing";

/// Files (or folders, ending `/`) that own tables and may hold SQL.
const TABLE_OWNERS: &[&str] = &[
    "store/",
    "k8s/bootstrap/db.rs",
    "etcd/db.rs",
    "backup/db.rs",
    "rotate/ca_rotation/db.rs",
    "devdb.rs",
];
/// Words a string holding SQL starts with.
const SQL_VERBS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "CREATE", "LISTEN", "NOTIFY",
];
/// Most lines a file has outside its tests without saying why.
pub const MAX_LINES: usize = 800;
/// How a file's `//!` says why it is longer.
pub const LONG_FILE_REASON: &str = "Why this file is long:";

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The file, relative to the checked root.
    pub file: String,
    /// The line.
    pub line: usize,
    /// Which rule.
    pub rule: &'static str,
    /// What breaks it.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.rule, self.detail
        )
    }
}

/// Checks the tree under `root` (a crate's `src`).
pub fn check(root: &Path) -> Result<Vec<Violation>, String> {
    let tree = Tree::load(root)?;
    let refs = analyse(&tree);
    let mut out = Vec::new();
    cycles(&tree, &refs, &mut out);
    layering(&tree, &refs, &mut out);
    sql(&tree, &refs, &mut out);
    front_end_only(&tree, &refs, &mut out);
    sizes(&tree, &mut out);
    out.sort();
    out.dedup();
    Ok(out)
}

/// File → file → first line it references it (parents' re-exports of their
/// descendants excluded).
fn edges(tree: &Tree, refs: &[FileRefs]) -> Vec<BTreeMap<usize, usize>> {
    let mut edges = vec![BTreeMap::new(); tree.files.len()];
    for (from, r) in refs.iter().enumerate() {
        for m in r.refs.iter().filter(|m| !m.reexport && m.file != from) {
            let line = edges[from].entry(m.file).or_insert(m.line);
            *line = (*line).min(m.line);
        }
    }
    edges
}

fn cycles(tree: &Tree, refs: &[FileRefs], out: &mut Vec<Violation>) {
    let edges = edges(tree, refs);
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for component in strongly_connected(&edges) {
        if component.len() < 2 {
            continue;
        }
        let members: BTreeSet<usize> = component.iter().copied().collect();
        for &start in &members {
            let Some(mut cycle) = shortest_cycle(&edges, &members, start) else {
                continue;
            };
            // The same circle from each of its files: keep one, from its first file.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, f)| **f)
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(first);
            if !seen.insert(cycle.clone()) {
                continue;
            }
            let mut hops = Vec::new();
            for (i, &f) in cycle.iter().enumerate() {
                let next = cycle[(i + 1) % cycle.len()];
                hops.push(format!("{}:{}", tree.files[f].rel, edges[f][&next]));
            }
            hops.push(tree.files[cycle[0]].rel.clone());
            out.push(Violation {
                file: tree.files[cycle[0]].rel.clone(),
                line: edges[cycle[0]][&cycle[1]],
                rule: "import-cycle",
                detail: hops.join(" -> "),
            });
        }
    }
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &[BTreeMap<usize, usize>]) -> Vec<Vec<usize>> {
    struct State<'e> {
        edges: &'e [BTreeMap<usize, usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].keys() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest circle from `start` back to it inside `members` (files in order).
fn shortest_cycle(
    edges: &[BTreeMap<usize, usize>],
    members: &BTreeSet<usize>,
    start: usize,
) -> Option<Vec<usize>> {
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges[v].keys().filter(|w| members.contains(w)) {
            if w == start {
                let mut path = vec![v];
                while let Some(&p) = came_from.get(path.last()?) {
                    path.push(p);
                }
                path.reverse();
                return Some(path);
            }
            if w != start && !came_from.contains_key(&w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// What a top-level module is, for messages.
fn role(area: &str) -> &'static str {
    if CAPABILITIES.contains(&area) {
        "capability"
    } else if FRONT_ENDS.contains(&area) {
        "front end"
    } else if BASE.contains(&area) {
        "base module"
    } else if area == FUZZING {
        "fuzz bodies"
    } else {
        "module"
    }
}

/// Why `from` may not reference `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<&'static str> {
    if from == to || matches!(from, "lib" | "main") {
        return None;
    }
    if to == FUZZING {
        return Some("nothing references the fuzz targets' bodies");
    }
    if CAPABILITIES.contains(&from) && ["cli", "runtime", "config", "api"].contains(&to) {
        return Some("a capability never reaches a front end");
    }
    if from == "store" && CAPABILITIES.contains(&to) {
        return Some("store imports no capability");
    }
    if from == "api" && ["cli", "runtime", "config"].contains(&to) {
        return Some("api never reaches cli, runtime or config");
    }
    if from == "config" && ["cli", "runtime"].contains(&to) {
        return Some("config never reaches cli or runtime");
    }
    if from == "runtime" && to == "cli" {
        return Some("runtime never reaches cli");
    }
    if BASE.contains(&from) && (CAPABILITIES.contains(&to) || FRONT_ENDS.contains(&to)) {
        return Some("a base module references no capability or front end");
    }
    None
}

fn layering(tree: &Tree, refs: &[FileRefs], out: &mut Vec<Violation>) {
    for (from, r) in refs.iter().enumerate() {
        let file = &tree.files[from];
        let mut reported = BTreeSet::new();
        for m in &r.refs {
            let target = &tree.files[m.file];
            let (a, b) = (file.area(), target.area());
            if let Some(why) = forbidden(a, b)
                && reported.insert(m.file)
            {
                out.push(Violation {
                    file: file.rel.clone(),
                    line: m.line,
                    rule: "layering",
                    detail: format!(
                        "{a} ({}) references {b} ({}): `{}` in {} ({why})",
                        role(a),
                        role(b),
                        m.written,
                        target.rel
                    ),
                });
            }
        }
    }
}

fn owns_tables(rel: &str) -> bool {
    TABLE_OWNERS.iter().any(|o| {
        if o.ends_with('/') {
            rel.starts_with(o)
        } else {
            rel == *o
        }
    })
}

/// Whether a string starts like an SQL statement (`SELECT x`, ` UPDATE t`).
fn looks_like_sql(s: &str) -> bool {
    let mut words = s.split_whitespace();
    let (Some(first), Some(_)) = (words.next(), words.next()) else {
        return false;
    };
    SQL_VERBS.contains(&first)
}

/// Whether a written path reaches Postgres directly.
fn sql_api(segs: &[String]) -> Option<String> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["sqlx", q, ..] if q.starts_with("query") || *q == "raw_sql" => Some(format!("sqlx::{q}")),
        ["sqlx", t @ ("Connection" | "Executor"), ..] => Some(format!("sqlx::{t}")),
        _ if s.contains(&"PgListener") => Some("PgListener".into()),
        _ => None,
    }
}

fn sql(tree: &Tree, refs: &[FileRefs], out: &mut Vec<Violation>) {
    for (f, r) in tree.files.iter().zip(refs) {
        if owns_tables(&f.rel) {
            continue;
        }
        for (line, segs) in &r.paths {
            if let Some(what) = sql_api(segs) {
                out.push(Violation {
                    file: f.rel.clone(),
                    line: *line,
                    rule: "sql-owner",
                    detail: format!("{what} outside a table owner ({})", TABLE_OWNERS.join(", ")),
                });
            }
        }
        for (line, s) in &r.strings {
            if looks_like_sql(s) {
                let head: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
                let head: String = head.chars().take(48).collect();
                out.push(Violation {
                    file: f.rel.clone(),
                    line: *line,
                    rule: "sql-owner",
                    detail: format!("SQL `{head}` outside a table owner"),
                });
            }
        }
    }
}

fn front_end_only(tree: &Tree, refs: &[FileRefs], out: &mut Vec<Violation>) {
    for (f, r) in tree.files.iter().zip(refs) {
        let in_cli = f.rel.starts_with("cli/") || f.rel == "main.rs";
        // The fuzz targets' bodies drive the API's request parsers, which
        // take axum's types.
        let in_api = f.rel.starts_with("api/") || f.area() == FUZZING;
        let mut flag = |line: usize, detail: String| {
            out.push(Violation {
                file: f.rel.clone(),
                line,
                rule: "front-end-only",
                detail,
            })
        };
        for (line, segs) in &r.paths {
            match segs[0].as_str() {
                "clap" | "indicatif" if !in_cli => flag(
                    *line,
                    format!("`{}` outside cli/ and main.rs", segs.join("::")),
                ),
                "axum" if !in_api => flag(*line, format!("`{}` outside api/", segs.join("::"))),
                _ => {}
            }
        }
        for (line, segs) in &r.macros {
            let name = segs.last().map(String::as_str).unwrap_or("");
            let std_or_bare = segs.len() == 1 || segs[0] == "std";
            if !in_cli && std_or_bare && ["println", "print", "eprintln", "eprint"].contains(&name)
            {
                flag(*line, format!("`{name}!` outside cli/ and main.rs"));
            }
        }
    }
}

fn sizes(tree: &Tree, out: &mut Vec<Violation>) {
    for f in &tree.files {
        let lines = f.lines_outside_tests();
        let explained = f
            .inner_doc_lines()
            .iter()
            .any(|l| l.trim_start().starts_with(LONG_FILE_REASON));
        if lines > MAX_LINES && !explained {
            out.push(Violation {
                file: f.rel.clone(),
                line: 1,
                rule: "file-size",
                detail: format!(
                    "{lines} lines outside its #[cfg(test)] module (at most {MAX_LINES} unless its //! has a line starting `{LONG_FILE_REASON}`)"
                ),
            });
        }
    }
}
