//! A source tree as the checker sees it: every `.rs` file under the root,
//! parsed, with the module path it defines (`k8s/bootstrap/db.rs` is
//! `k8s::bootstrap::db`, `store/mod.rs` is `store`, `lib.rs` the crate
//! root) and the inline modules it declares. `main.rs` is the binary's root:
//! it reaches the library as `rekey::`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::spanned::Spanned;

/// The library's crate name, as `main.rs` spells its paths.
pub const LIB_CRATE: &str = "rekey";

/// What a file is to the module tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `lib.rs`: the crate root.
    Lib,
    /// `main.rs`: the binary's root, outside the library's module tree.
    Main,
    /// `x/mod.rs`: a module whose children are files.
    ModRs,
    /// `x.rs`: any other file.
    Leaf,
}

/// One parsed file.
pub struct SourceFile {
    /// Path relative to the root, with `/` separators (`k8s/bootstrap/db.rs`).
    pub rel: String,
    /// Module path it defines (empty for `lib.rs` and `main.rs`).
    pub module: Vec<String>,
    /// What it is to the module tree.
    pub kind: Kind,
    /// Its syntax tree.
    pub ast: syn::File,
    /// Number of lines.
    pub lines: usize,
}

impl SourceFile {
    /// A `mod.rs` or `lib.rs`: may re-export its descendants without that
    /// being an import.
    pub fn is_parent(&self) -> bool {
        matches!(self.kind, Kind::Lib | Kind::ModRs)
    }

    /// The top-level module it belongs to (`k8s` for `k8s/bootstrap/db.rs`),
    /// `lib` for the crate root, `main` for the binary.
    pub fn area(&self) -> &str {
        match self.kind {
            Kind::Lib => "lib",
            Kind::Main => "main",
            _ => &self.module[0],
        }
    }

    /// Lines outside items gated by `#[cfg(test)]`.
    pub fn lines_outside_tests(&self) -> usize {
        let test_lines: usize = self
            .ast
            .items
            .iter()
            .filter(|i| is_test_only(item_attrs(i)))
            .map(|i| {
                let span = i.span();
                span.end().line + 1 - span.start().line
            })
            .sum();
        self.lines.saturating_sub(test_lines)
    }

    /// Its `//!` documentation, line by line.
    pub fn inner_doc_lines(&self) -> Vec<String> {
        self.ast
            .attrs
            .iter()
            .filter_map(doc_text)
            .flat_map(|d| d.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

/// Every file of a tree, and every module path in it.
pub struct Tree {
    /// The files, sorted by path.
    pub files: Vec<SourceFile>,
    /// Module path → index of the file defining it.
    by_module: BTreeMap<Vec<String>, usize>,
    /// Every module path, inline modules included.
    modules: BTreeSet<Vec<String>>,
}

impl Tree {
    /// Reads and parses every `.rs` file under `root`.
    pub fn load(root: &Path) -> Result<Self, String> {
        let mut paths = Vec::new();
        collect_rs(root, &mut paths)?;
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let rel = path
                .strip_prefix(root)
                .map_err(|e| e.to_string())?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let ast = syn::parse_file(&text).map_err(|e| {
                format!(
                    "{rel}:{}: not Rust the checker can parse: {e}",
                    e.span().start().line
                )
            })?;
            let (module, kind) = module_of(&rel);
            files.push(SourceFile {
                rel,
                module,
                kind,
                ast,
                lines: text.lines().count(),
            });
        }
        let mut by_module = BTreeMap::new();
        let mut modules = BTreeSet::new();
        for (i, f) in files.iter().enumerate() {
            if f.kind == Kind::Main {
                continue;
            }
            by_module.insert(f.module.clone(), i);
            modules.insert(f.module.clone());
            inline_modules(&f.module, &f.ast.items, &mut modules);
        }
        Ok(Self {
            files,
            by_module,
            modules,
        })
    }

    /// Whether `path` names a module (file or inline).
    pub fn is_module(&self, path: &[String]) -> bool {
        self.modules.contains(path)
    }

    /// The file defining the longest module path that starts `path`, and
    /// that prefix's length.
    pub fn file_of(&self, path: &[String]) -> Option<(usize, usize)> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.by_module.get(&path[..n]).map(|&i| (i, n)))
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries {
        let path = e.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module path a file at `rel` defines, and its kind.
fn module_of(rel: &str) -> (Vec<String>, Kind) {
    match rel {
        "lib.rs" => return (Vec::new(), Kind::Lib),
        "main.rs" => return (Vec::new(), Kind::Main),
        _ => {}
    }
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
        (parts, Kind::ModRs)
    } else {
        (parts, Kind::Leaf)
    }
}

fn inline_modules(parent: &[String], items: &[syn::Item], out: &mut BTreeSet<Vec<String>>) {
    for item in items {
        if let syn::Item::Mod(m) = item
            && let Some((_, inner)) = &m.content
        {
            let mut path = parent.to_vec();
            path.push(m.ident.to_string());
            inline_modules(&path, inner, out);
            out.insert(path);
        }
    }
}

/// The attributes of an item.
pub fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Whether attributes gate an item to test builds (`#[cfg(test)]`,
/// `#[cfg(all(test, ...))]`) or mark it a test (`#[test]`).
pub fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        if a.path().is_ident("test") {
            return true;
        }
        if !a.path().is_ident("cfg") {
            return false;
        }
        let syn::Meta::List(list) = &a.meta else {
            return false;
        };
        let tokens = list.tokens.to_string();
        let tokens = tokens.split_whitespace().collect::<String>();
        tokens == "test"
            || (tokens.starts_with("all(")
                && tokens.contains("test")
                && !tokens.contains("not(test"))
    })
}

/// The text of a `#[doc = "..."]` attribute (a `///` or `//!` line).
pub fn doc_text(a: &syn::Attribute) -> Option<String> {
    if !a.path().is_ident("doc") {
        return None;
    }
    let syn::Meta::NameValue(nv) = &a.meta else {
        return None;
    };
    match &nv.value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.value()),
        _ => None,
    }
}
