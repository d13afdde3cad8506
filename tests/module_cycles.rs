//! No module imports a module that imports it back (issue 18): the crate's top-level modules
//! form a graph without cycles, read from the source the way a newcomer reads it. Test code
//! (`#[cfg(test)]` tails, `*tests.rs`, `testing`) may reach anywhere and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `crate::<module>` a source text names (a path, `use crate::m;`, a group) outside comments and its `#[cfg(test)]` tail,
/// including the heads of `use crate::{a::x, b::y}` groups.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    // The crate root holds only `mod` lines: every lowercase name after `crate::` is a module.
    out.remove("");
    out.remove("self");
    out
}

fn graph(src: &Path) -> Graph {
    let mut g = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let file = rel.file_name().unwrap().to_string_lossy().into_owned();
            let top = rel
                .iter()
                .next()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if !file.ends_with(".rs")
                || file.contains("test")
                || ["main", "lib", "testing"].contains(&top.as_str())
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let uses = g.entry(top.clone()).or_default();
            uses.extend(named_modules(&text).into_iter().filter(|m| *m != top));
        }
    }
    g
}

/// One cycle, if there is any: a path a -> ... -> a.
fn a_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 20, "only {} modules read", g.len());
    if let Some(cycle) = a_cycle(&g) {
        panic!(
            "import cycle: {}; move what both need to a module below them (units, layout, procfs, describe, ...)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_reader_sees_paths_groups_and_cycles() {
    let text = "use crate::a::X;\nuse crate::{b::Y, c, Z};\nuse crate::g;\n// crate::d::z\nfn f() { crate::e::g(); }\n#[cfg(test)]\nmod tests { use crate::f::H; }\n";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["a", "b", "c", "e", "g"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(a_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        a_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
