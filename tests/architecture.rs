//! The house keeps its shape: no import cycle between the files of `src/`,
//! and no file past the size limit before its tests (ARCHITECTURE.md).
//!
//! Each file of the library is parsed with `syn` and every path it names
//! that starts at `crate`, `super`, `self` or one of its own child modules
//! is resolved to the file that defines the longest module prefix of that
//! path: `crate::logs::registry::Registry` is an arrow to
//! `src/logs/registry.rs`, a re-export through `mod.rs` an arrow to that
//! `mod.rs`. Paths inside macro calls (`tracing`'s `warn!(… %crate::x …)`)
//! are read from their tokens. Code under `#[cfg(test)]` and `src/bin/`
//! (separate crates that only see the library's public paths) are left
//! out. A cycle is a strongly connected set of more than one file.
//!
//! Hand-written rather than `cargo modules dependencies --acyclic`, which
//! builds rust-analyzer (many minutes on CI's two cores) to answer a
//! question that `syn` and forty lines of graph code answer in a second.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Lines before a file's tests past which a file must be split.
const LIMIT: usize = 650;
/// Past this a file is reported, as a warning: it is time to look at it.
const WARN: usize = 600;

/// A module's path from the crate root, e.g. `["logs", "registry"]`.
type ModPath = Vec<String>;

struct Module {
    file: PathBuf,
    path: ModPath,
    syntax: syn::File,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p != src().join("bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn mod_path(file: &Path) -> ModPath {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "lib.rs" | "mod.rs" => parts,
        other => {
            parts.push(other.trim_end_matches(".rs").to_owned());
            parts
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

fn load() -> Vec<Module> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut modules: Vec<Module> = files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let syntax =
                syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let path = mod_path(&file);
            Module { file, path, syntax }
        })
        .collect();
    // Files declared only under #[cfg(test)], and everything below them.
    let mut test_only: Vec<ModPath> = Vec::new();
    for m in &modules {
        for item in &m.syntax.items {
            if let syn::Item::Mod(md) = item
                && md.content.is_none()
                && is_cfg_test(&md.attrs)
            {
                let mut p = m.child_base();
                p.push(md.ident.to_string());
                test_only.push(p);
            }
        }
    }
    modules.retain(|m| !test_only.iter().any(|t| m.path.starts_with(t)));
    modules
}

impl Module {
    /// The module path its children's names are relative to.
    fn child_base(&self) -> ModPath {
        self.path.clone()
    }

    fn parent(&self) -> ModPath {
        let mut p = self.path.clone();
        p.pop();
        p
    }
}

/// Every path a file names, as written (segments), outside test code.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.0.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.0.push(full);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate::a::b`, `super::a` and `self::a` sequences in macro tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if ["crate", "super", "self"].contains(&&*id.to_string()) => {
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    // `::` is two `:` puncts, then the next segment.
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        segs.push(next.to_string());
                        j += 3;
                    }
                    if segs.len() > 1 {
                        self.0.push(segs);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(m) => &m.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if is_cfg_test(attrs) {
            return;
        }
        // A macro_rules! body's `$crate::…` is where the macro is used.
        if let syn::Item::Macro(m) = i
            && m.mac.path.is_ident("macro_rules")
        {
            return;
        }
        syn::visit::visit_item(self, i);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.0
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    // `pub(super)` names who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.visit_path(&m.path);
        self.tokens(m.tokens.clone());
    }
}

/// The file each path of `m` leads to.
fn arrows(m: &Module, files: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<PathBuf, BTreeSet<String>> {
    let mut paths = Paths::default();
    paths.visit_file(&m.syntax);
    let mut out: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for segs in paths.0 {
        let Some(first) = segs.first() else { continue };
        let (mut abs, rest): (ModPath, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &segs[1..]),
            "self" => (m.child_base(), &segs[1..]),
            "super" => {
                // For `x.rs` and `x/mod.rs` alike, the module above `x`.
                let mut base = m.parent();
                let mut rest = &segs[1..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            name => {
                let mut child = m.child_base();
                child.push(name.to_owned());
                if files.contains_key(&child) {
                    (m.child_base(), &segs[..])
                } else {
                    continue;
                }
            }
        };
        // The longest prefix that is a module with a file of its own.
        let mut target = files.get(&abs).cloned();
        for s in rest {
            abs.push(s.clone());
            match files.get(&abs) {
                Some(f) => target = Some(f.clone()),
                None => break,
            }
        }
        if let Some(t) = target
            && t != m.file
        {
            out.entry(t).or_default().insert(segs.join("::"));
        }
    }
    out
}

/// Strongly connected sets of more than one file (Tarjan).
fn cycles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'g> {
        graph: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on: BTreeSet<&'g PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g PathBuf) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    set.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.out.push(set);
                }
            }
        }
    }
    let mut t = T {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn shown(p: &Path) -> String {
    p.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn no_file_of_src_imports_a_file_that_imports_it_back() {
    let modules = load();
    let files: BTreeMap<ModPath, PathBuf> = modules
        .iter()
        .map(|m| (m.path.clone(), m.file.clone()))
        .collect();
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut names: BTreeMap<(PathBuf, PathBuf), BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let to = arrows(m, &files);
        graph.entry(m.file.clone()).or_default();
        for (t, why) in to {
            graph.entry(m.file.clone()).or_default().insert(t.clone());
            names.insert((m.file.clone(), t), why);
        }
    }
    let found = cycles(&graph);
    let arrows: usize = graph.values().map(BTreeSet::len).sum();
    println!(
        "architecture: {} files of src/ (bin/ and tests aside), {arrows} arrows between them, {} cycles",
        graph.len(),
        found.len()
    );
    let mut report = String::new();
    for set in &found {
        report.push_str("a cycle:\n");
        for a in set {
            for b in set {
                if let Some(why) = names.get(&(a.clone(), b.clone())) {
                    let why: Vec<_> = why.iter().cloned().collect();
                    report.push_str(&format!(
                        "  {} -> {}: {}\n",
                        shown(a),
                        shown(b),
                        why.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "import cycles between files of src/:\n{report}"
    );
}

/// The floors, bottom up: a file may use its own folder and the floors
/// below it, never one above (lib.rs, the crate root, only declares them).
const FLOORS: &[&[&str]] = &[
    &["lib.rs", "fdstore.rs", "logging"],
    &["logs"],
    &["config"],
    &["consoles"],
    &["handover"],
    &["ops.rs"],
    &["fronts"],
    &["daemon.rs"],
];

fn floor(file: &Path) -> (usize, String) {
    let rel = file.strip_prefix(src()).unwrap();
    let top = rel.iter().next().unwrap().to_string_lossy().into_owned();
    let n = FLOORS
        .iter()
        .position(|f| f.contains(&top.as_str()))
        .unwrap_or_else(|| panic!("{top} is on no floor of FLOORS: add it"));
    (n, top)
}

#[test]
fn src_has_at_most_ten_entries_besides_bin() {
    let entries: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "bin")
        .collect();
    assert!(
        entries.len() <= 10,
        "src/ has {} entries: {entries:?}",
        entries.len()
    );
}

#[test]
fn dependencies_point_down_the_floors() {
    let modules = load();
    let files: BTreeMap<ModPath, PathBuf> = modules
        .iter()
        .map(|m| (m.path.clone(), m.file.clone()))
        .collect();
    let mut up = Vec::new();
    for m in modules.iter().filter(|m| !m.path.is_empty()) {
        let (from, from_top) = floor(&m.file);
        for (to, why) in arrows(m, &files) {
            let (n, top) = floor(&to);
            if n > from && top != from_top {
                let why: Vec<_> = why.into_iter().collect();
                up.push(format!(
                    "  {} -> {}: {}",
                    shown(&m.file),
                    shown(&to),
                    why.join(", ")
                ));
            }
        }
    }
    assert!(
        up.is_empty(),
        "imports that climb a floor:\n{}",
        up.join("\n")
    );
}

/// A file's lines before its tests: up to its first `#[cfg(test)]` at the
/// start of a line.
fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn no_file_of_src_passes_the_size_limit_before_its_tests() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    rust_files(&src().join("bin"), &mut files);
    let mut sizes: Vec<(usize, PathBuf)> = files
        .into_iter()
        .map(|f| (lines_before_tests(&std::fs::read_to_string(&f).unwrap()), f))
        .collect();
    sizes.sort_by(|a, b| b.cmp(a));
    for (n, f) in sizes.iter().take(5) {
        println!("architecture: {n:4} lines before tests: {}", shown(f));
    }
    for (n, f) in &sizes {
        if *n > WARN {
            println!(
                "architecture: WARNING: {} has {n} lines before its tests (limit {LIMIT}): split it by job",
                shown(f)
            );
        }
    }
    let over: Vec<String> = sizes
        .iter()
        .filter(|(n, _)| *n > LIMIT)
        .map(|(n, f)| format!("{} ({n})", shown(f)))
        .collect();
    assert!(
        over.is_empty(),
        "files past {LIMIT} lines before their tests: {}",
        over.join(", ")
    );
}
