//! The code's layout as ARCHITECTURE.md states it: within each crate, files import each other
//! without a cycle, so every file can be read after the ones it uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file of `src` is, as `crate::` paths name it: `a/b.rs` and `a/b/mod.rs` are
/// `a::b`; `lib.rs` and `main.rs` are the crate root, "".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [root] if root == "lib" || root == "main" => String::new(),
        [dirs @ .., last] if last == "mod" => dirs.join("::"),
        all => all.join("::"),
    }
}

/// The code of a file without its comments, and without its `#[cfg(test)]` module (a test
/// module may use anything of its parent's crate).
fn code_of(text: &str) -> String {
    let test_module = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\npub(crate) mod tests"];
    let text = match test_module.iter().filter_map(|m| text.find(m)).min() {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The modules `code` names with `crate::…`, within `modules` (the longest that fits).
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let path: String =
            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if let Some(module) =
            (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains(m))
        {
            found.insert(module);
        }
    }
    found
}

/// A cycle in `graph`, if any, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            return Some(path[at..].iter().cloned().chain([node.to_owned()]).collect());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

/// The import graph of the crate whose sources are in `src`: module → modules it names.
/// A module naming its own descendants, or a descendant naming its ancestors (`super`), is
/// one file reading another below it, not a cycle; only siblings' and cousins' edges count.
fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let related = |a: &str, b: &str| {
        a.is_empty() || b.is_empty() || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
    };
    files
        .iter()
        .map(|f| {
            let me = module_of(src, f);
            let text = std::fs::read_to_string(f).unwrap();
            let used = uses(&code_of(&text), &modules).into_iter().filter(|m| *m != me && !related(&me, m));
            let used = used.collect();
            (me, used)
        })
        .collect()
}

#[test]
fn no_crate_has_a_cycle_of_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|src| src.is_dir() && src.parent().unwrap().join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    assert!(crates.len() >= 10, "the workspace's crates: {crates:?}");
    let mut cycles = Vec::new();
    for src in &crates {
        if let Some(c) = cycle(&graph_of(src)) {
            cycles.push(format!("{}: {}", src.display(), c.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "files that import each other in a circle:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("pages")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod pages;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n").unwrap();
    std::fs::write(src.join("b.rs"), "// crate::a in a comment is no import\npub struct Thing;\n").unwrap();
    std::fs::write(src.join("pages/mod.rs"), "mod one;\nuse crate::pages::one::Page;\n").unwrap();
    std::fs::write(src.join("pages/one.rs"), "use super::*;\nuse crate::a::X;\n").unwrap();
    assert_eq!(cycle(&graph_of(src)), None);
    std::fs::write(src.join("b.rs"), "use crate::pages::one::Page;\npub struct Thing;\n").unwrap();
    std::fs::write(src.join("pages/one.rs"), "use crate::a::X;\n").unwrap();
    let found = cycle(&graph_of(src)).expect("a → b → pages::one → a");
    assert_eq!(found.first(), found.last(), "{found:?}");
    assert_eq!(found.len(), 4, "{found:?}");
}
