//! The layering rules of `docs/architecture.md` ("Layers"), checked on the
//! source: which top-level module may name which (`crate::x` in code, not
//! in comments or test modules), no import cycles between top-level
//! modules, and no clock reads inside the state machines and the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The file's code without `#[cfg(test)]` parts, comments and string
/// literals' doc text (good enough for this crate's style: test modules
/// come last in a file).
fn code_of(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file under `src/` belongs to.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The top-level modules a piece of code names as `crate::x`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
        rest = after;
    }
    out
}

struct Graph {
    /// module → modules it names, with one file that does.
    edges: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in rust_files(&src) {
        let from = top_module(&src, &file);
        if from == "main" || from == "lib" {
            continue;
        }
        for to in named_modules(&code_of(&file)) {
            if to != from {
                edges.entry(from.clone()).or_default().entry(to).or_insert(file.clone());
            }
        }
    }
    Graph { edges }
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let g = graph();
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(g: &Graph, node: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>, cycles: &mut Vec<String>) {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            cycles.push(cycle.join(" → "));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        if let Some(next) = g.edges.get(node) {
            for n in next.keys() {
                visit(g, n, path, done, cycles);
            }
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in g.edges.keys() {
        visit(&g, node, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules: {cycles:#?}"
    );
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let g = graph();
    // The broker core, its adapters, the process wiring and the CLI:
    // nothing below names them.
    let upper = ["broker", "server", "http", "namesrv_server", "launch", "cli"];
    // (module, what it must not name besides `upper`): the layers of
    // docs/architecture.md, lowest first.
    let rules: [(&str, &[&str]); 13] = [
        (
            "codec",
            &["wire", "store", "record", "delivery", "groups", "actors", "client"],
        ),
        ("config", &["wire", "store", "delivery", "groups", "actors", "client"]),
        // Access control and TLS: plain logic over the config, below
        // everything that checks or connects.
        (
            "acl",
            &["wire", "store", "delivery", "groups", "actors", "client", "tls"],
        ),
        (
            "tls",
            &["wire", "store", "delivery", "groups", "actors", "client", "acl"],
        ),
        ("error", &["wire", "delivery", "groups", "actors", "client"]),
        ("wire", &["store", "delivery", "groups", "actors", "client"]),
        ("store", &["wire", "delivery", "groups", "actors", "client"]),
        ("delivery", &["wire", "actors", "client"]),
        ("groups", &["wire", "actors", "client"]),
        ("replication", &["wire", "store", "actors", "client"]),
        ("actors", &[]),
        ("client", &["store", "actors", "delivery", "groups"]),
        ("render", &["store", "actors"]),
    ];
    let mut broken = Vec::new();
    let mut check = |module: &str, bad: &str| {
        if let Some(file) = g.edges.get(module).and_then(|next| next.get(bad)) {
            broken.push(format!("{module} names {bad} ({})", file.display()));
        }
    };
    for (module, extra) in rules {
        for bad in extra.iter().chain(upper.iter()) {
            check(module, bad);
        }
    }
    // The core knows no adapter; adapters know neither each other nor the
    // wiring and the CLI above them.
    for bad in ["server", "http", "namesrv_server", "launch", "cli"] {
        check("broker", bad);
    }
    for adapter in ["server", "http", "namesrv_server"] {
        for bad in ["launch", "cli"] {
            check(adapter, bad);
        }
    }
    check("server", "http");
    check("http", "server");
    check("launch", "cli");
    assert!(broken.is_empty(), "layering broken: {broken:#?}");
}

#[test]
fn state_machines_and_the_store_never_read_the_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut readers = Vec::new();
    for dir in ["delivery", "groups", "replication", "store"] {
        for file in rust_files(&src.join(dir)) {
            let code = fs::read_to_string(&file).expect("read source");
            for needle in ["now_millis", "SystemTime::now"] {
                if code.contains(needle) {
                    readers.push(format!("{} reads {needle}", file.display()));
                }
            }
        }
    }
    assert!(readers.is_empty(), "clock reads in pure layers: {readers:#?}");
}
