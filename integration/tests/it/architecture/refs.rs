//! What each file refers to, resolved to the files of the tree.
//!
//! Every path counts, wherever it is written: `use` trees (groups, renames,
//! globs, `self`), paths in expressions, types, patterns and attributes,
//! paths inside macro token streams (`tracing::info!(.., crate::x::y(..))`,
//! `format!`), and paths in attribute strings (`#[serde(with =
//! "crate::units::x")]`). A path is resolved from the module it is written
//! in: `crate::`, `self::`, `super::`, a child module, a name a `use` of that
//! module bound, or (in `main.rs`) `rekey::`. The file it lands in is the
//! one defining the longest module path that starts it; through a parent's
//! (`mod.rs`, `lib.rs`) `pub use` of its descendant, the descendant. Items
//! gated by `#[cfg(test)]` and `#[test]` functions are not read, nor are
//! doc comments.
//!
//! Two passes: the first collects what every `use` binds (and what every
//! parent re-exports), the second resolves everything else with that.

use std::collections::BTreeMap;

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::{self, Visit};

use super::tree::{Kind, LIB_CRATE, SourceFile, Tree, doc_text, is_test_only, item_attrs};

/// A reference to a module of the tree.
#[derive(Debug, Clone)]
pub struct ModRef {
    /// Where it is written.
    pub line: usize,
    /// The file it lands in (index into [`Tree::files`]).
    pub file: usize,
    /// The path as written, `::`-joined.
    pub written: String,
    /// A parent's `pub use` of its own descendant: not an import.
    pub reexport: bool,
}

/// What one file refers to and contains.
#[derive(Debug, Default)]
pub struct FileRefs {
    /// References to the tree's modules.
    pub refs: Vec<ModRef>,
    /// Every path as written (line, segments), external crates included.
    pub paths: Vec<(usize, Vec<String>)>,
    /// Macro invocations (line, path segments).
    pub macros: Vec<(usize, Vec<String>)>,
    /// String literals in code and macro arguments (line, value).
    pub strings: Vec<(usize, String)>,
}

/// Names bound by `use`, per module path (file modules and inline ones).
type Imports = BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>;

/// Resolves every file's references.
pub fn analyse(tree: &Tree) -> Vec<FileRefs> {
    let mut imports: Vec<Imports> = vec![Imports::new(); tree.files.len()];
    // Twice, so a `use` through a name another `use` bound resolves.
    for _ in 0..2 {
        for (i, f) in tree.files.iter().enumerate() {
            let mut p = ImportPass {
                r: Resolver {
                    tree,
                    file: f,
                    imports: &imports[i],
                },
                scope: f.module.clone(),
                found: Imports::new(),
            };
            p.items(&f.ast.items);
            let found = p.found;
            imports[i] = found;
        }
    }
    // What each parent file re-exports from its descendants: module → name → target.
    let mut reexports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (i, f) in tree.files.iter().enumerate() {
        if !f.is_parent() || f.kind == Kind::Main {
            continue;
        }
        let r = Resolver {
            tree,
            file: f,
            imports: &imports[i],
        };
        for item in &f.ast.items {
            if let syn::Item::Use(u) = item
                && is_pub(&u.vis)
                && !is_test_only(&u.attrs)
            {
                for leaf in leaves(&u.tree) {
                    if let (Some(name), Some(target)) =
                        (&leaf.name, r.resolve(&f.module, &leaf.segs))
                        && is_descendant(&f.module, &target)
                    {
                        reexports
                            .entry(f.module.clone())
                            .or_default()
                            .insert(name.clone(), target);
                    }
                }
            }
        }
    }
    tree.files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut c = Collector {
                r: Resolver {
                    tree,
                    file: f,
                    imports: &imports[i],
                },
                reexports: &reexports,
                scope: f.module.clone(),
                out: FileRefs::default(),
            };
            for a in &f.ast.attrs {
                c.visit_attribute(a);
            }
            for item in &f.ast.items {
                c.visit_item(item);
            }
            c.out
        })
        .collect()
}

fn is_pub(vis: &syn::Visibility) -> bool {
    !matches!(vis, syn::Visibility::Inherited)
}

fn is_descendant(parent: &[String], path: &[String]) -> bool {
    path.len() > parent.len() && path.starts_with(parent)
}

/// One leaf of a `use` tree: the full path, and the name it binds (none for a glob).
struct Leaf {
    segs: Vec<String>,
    name: Option<String>,
    line: usize,
}

fn leaves(tree: &syn::UseTree) -> Vec<Leaf> {
    fn walk(t: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Leaf>) {
        match t {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                walk(&p.tree, prefix, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => out.push(Leaf {
                segs: prefix.clone(),
                name: prefix.last().cloned(),
                line: n.ident.span().start().line,
            }),
            syn::UseTree::Name(n) => {
                let mut segs = prefix.clone();
                segs.push(n.ident.to_string());
                out.push(Leaf {
                    segs,
                    name: Some(n.ident.to_string()),
                    line: n.ident.span().start().line,
                });
            }
            syn::UseTree::Rename(r) => {
                let mut segs = prefix.clone();
                if r.ident != "self" {
                    segs.push(r.ident.to_string());
                }
                out.push(Leaf {
                    segs,
                    name: Some(r.rename.to_string()),
                    line: r.ident.span().start().line,
                });
            }
            syn::UseTree::Glob(g) => out.push(Leaf {
                segs: prefix.clone(),
                name: None,
                line: g.star_token.span.start().line,
            }),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    walk(t, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// Resolves paths written in one file.
struct Resolver<'t> {
    tree: &'t Tree,
    file: &'t SourceFile,
    imports: &'t Imports,
}

impl Resolver<'_> {
    /// The absolute module-tree path `segs` names from module `scope`, if it
    /// names something of the tree.
    fn resolve(&self, scope: &[String], segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?.as_str();
        let main = self.file.kind == Kind::Main;
        let joined = |base: &[String], rest: &[String]| [base, rest].concat();
        match first {
            LIB_CRATE => Some(segs[1..].to_vec()),
            "crate" if !main => Some(segs[1..].to_vec()),
            "self" if !main => Some(joined(scope, &segs[1..])),
            "super" if !main => {
                let mut base = scope.to_vec();
                let supers = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    base.pop()?;
                }
                Some(joined(&base, &segs[supers..]))
            }
            "crate" | "self" | "super" | "Self" => None,
            _ => {
                let child = joined(scope, &segs[..1]);
                if !main && self.tree.is_module(&child) {
                    return Some(joined(scope, segs));
                }
                let target = self.imports.get(scope)?.get(first)?;
                Some(joined(target, &segs[1..]))
            }
        }
    }
}

/// The first pass: what every `use` binds.
struct ImportPass<'t> {
    r: Resolver<'t>,
    scope: Vec<String>,
    found: Imports,
}

impl ImportPass<'_> {
    fn items(&mut self, items: &[syn::Item]) {
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Use(u) if u.leading_colon.is_none() => {
                    for leaf in leaves(&u.tree) {
                        if let (Some(name), Some(target)) =
                            (leaf.name, self.r.resolve(&self.scope, &leaf.segs))
                        {
                            self.found
                                .entry(self.scope.clone())
                                .or_default()
                                .insert(name, target);
                        }
                    }
                }
                syn::Item::Mod(m) => {
                    if let Some((_, inner)) = &m.content {
                        self.scope.push(m.ident.to_string());
                        self.items(inner);
                        self.scope.pop();
                    }
                }
                _ => {}
            }
        }
    }
}

/// The second pass: every reference, path, macro and string.
struct Collector<'t> {
    r: Resolver<'t>,
    reexports: &'t BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
    scope: Vec<String>,
    out: FileRefs,
}

impl Collector<'_> {
    /// Records a path written at `line`; `relative_ok` lets a one-segment
    /// path count (a name a `use` bound).
    fn path(&mut self, line: usize, segs: Vec<String>, external: bool, reexport: bool) {
        if segs.is_empty() {
            return;
        }
        if !external && let Some(target) = self.r.resolve(&self.scope, &segs) {
            self.module_ref(line, &segs, target, reexport);
        }
        self.out.paths.push((line, segs));
    }

    fn module_ref(
        &mut self,
        line: usize,
        segs: &[String],
        mut target: Vec<String>,
        reexport: bool,
    ) {
        let tree = self.r.tree;
        for _ in 0..8 {
            let Some((file, n)) = tree.file_of(&target) else {
                return;
            };
            let f = &tree.files[file];
            let through = (f.is_parent() && target.len() > n)
                .then(|| self.reexports.get(&f.module)?.get(&target[n]))
                .flatten();
            match through {
                Some(inner) => target = [inner.as_slice(), &target[n + 1..]].concat(),
                None => {
                    self.out.refs.push(ModRef {
                        line,
                        file,
                        written: segs.join("::"),
                        reexport,
                    });
                    return;
                }
            }
        }
    }

    /// Paths and strings in a token stream (a macro's arguments, an
    /// attribute's arguments). In attributes, a string that is a path counts
    /// as one (`with = "crate::units::x"`); elsewhere strings are strings.
    fn tokens(&mut self, ts: TokenStream, in_attribute: bool) {
        let tokens: Vec<TokenTree> = ts.into_iter().collect();
        let colon =
            |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let joint_colon = |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':' && p.spacing() == Spacing::Joint);
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.tokens(g.stream(), in_attribute);
                    i += 1;
                }
                TokenTree::Literal(l) => {
                    let line = l.span().start().line;
                    if let Ok(s) = syn::parse_str::<syn::LitStr>(&l.to_string()) {
                        let value = s.value();
                        if in_attribute {
                            if let Ok(p) = syn::parse_str::<syn::Path>(&value) {
                                let segs = p.segments.iter().map(|s| s.ident.to_string()).collect();
                                self.path(line, segs, p.leading_colon.is_some(), false);
                            }
                        } else {
                            self.out.strings.push((line, value));
                        }
                    }
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let after_colons =
                        i >= 2 && colon(tokens.get(i - 1)) && joint_colon(tokens.get(i - 2));
                    let line = id.span().start().line;
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while joint_colon(tokens.get(j)) && colon(tokens.get(j + 1)) {
                        match tokens.get(j + 2) {
                            Some(TokenTree::Ident(next)) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 || in_attribute {
                        self.path(line, segs, after_colons, false);
                    }
                    i = j;
                }
                TokenTree::Punct(_) => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if is_test_only(item_attrs(item)) {
            return;
        }
        visit::visit_item(self, item);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        for a in &m.attrs {
            self.visit_attribute(a);
        }
        if let Some((_, items)) = &m.content {
            self.scope.push(m.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.scope.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        for a in &u.attrs {
            self.visit_attribute(a);
        }
        let file = self.r.file;
        let at_file_level = self.scope == file.module;
        for leaf in leaves(&u.tree) {
            let reexport = file.is_parent()
                && at_file_level
                && is_pub(&u.vis)
                && self
                    .r
                    .resolve(&self.scope, &leaf.segs)
                    .is_some_and(|t| is_descendant(&file.module, &t));
            self.path(leaf.line, leaf.segs, u.leading_colon.is_some(), reexport);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(0);
        self.path(line, segs, p.leading_colon.is_some(), false);
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let segs: Vec<String> = m
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let line = m
            .path
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(0);
        self.out.macros.push((line, segs));
        self.tokens(m.tokens.clone(), false);
        visit::visit_macro(self, m);
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        if doc_text(a).is_some() {
            return;
        }
        if let syn::Meta::List(list) = &a.meta {
            self.tokens(list.tokens.clone(), true);
        }
        visit::visit_attribute(self, a);
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.out.strings.push((s.span().start().line, s.value()));
    }
}
