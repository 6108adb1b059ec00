//! Imports run one way: reads every file under `src/`, lists which module names which (`crate::`,
//! `super::`, `self::` and child-module paths, `use` groups included, comments and strings
//! skipped), and fails on any circle between modules, the fake API server's included. A module
//! and its submodules (inline tests too) are one unit whose parts may name each other; what a
//! part names outside the unit counts as the unit's, where the two are siblings (`fake::state`
//! naming `api::error` is `fake` naming `api`). Std only, so CI runs it with the tests.
//! `IMPORTS_GRAPH=1 cargo test --test imports -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path below the crate root: `["fake", "state"]`; the root itself is empty.
type Module = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

/// One token and the line it starts on.
struct Lexed {
    token: Token,
    line: usize,
}

/// Splits Rust source into the few tokens paths are made of, dropping comments, strings and
/// character literals so that a `crate::` inside them is not taken for a path.
fn lex(source: &str) -> Vec<Lexed> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let ident_start = |c: char| c == '_' || c.is_alphabetic();
    let ident_char = |c: char| c == '_' || c.is_alphanumeric();
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth: usize = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(after) = raw_string_start(&chars, i) {
            // r"..", r#".."#, br#".."#: ends at a quote followed by as many hashes.
            let hashes = after - i - 1 - usize::from(chars[i] == 'b') - 1;
            i = after;
            while i < chars.len() {
                if chars[i] == '\n' {
                    line += 1;
                }
                let closes = chars
                    .get(i + 1..i + 1 + hashes)
                    .is_some_and(|tail| tail.iter().all(|&h| h == '#'));
                if chars[i] == '"' && closes {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            i += if c == 'b' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ident_start(c) {
            // A raw identifier (`r#type`) is the name after `r#`; raw strings are taken above.
            let raw = c == 'r' && next == Some('#');
            let start = if raw { i + 2 } else { i };
            i = start;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let name = chars[start..i].iter().collect();
            tokens.push(Lexed {
                token: Token::Ident(name),
                line,
            });
        } else {
            let token = match c {
                ':' if next == Some(':') => {
                    i += 1;
                    Token::PathSep
                }
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                '*' => Token::Star,
                other => Token::Other(other),
            };
            tokens.push(Lexed { token, line });
            i += 1;
        }
    }
    tokens
}

/// Where the body of a raw string starting at `i` begins, if one starts there.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    // Not the tail of an identifier such as `bar"`: raw strings start a token.
    if i > 0 && (chars[i - 1] == '_' || chars[i - 1].is_alphanumeric()) {
        return None;
    }
    j += 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some(j + 1)
}

/// The module a file under `src/` defines.
fn file_module(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).expect("the file lies under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// A `mod name {` opened in a file, closed when the brace depth falls back to `depth`.
struct Inline {
    module: Module,
    depth: usize,
}

/// Walks one file's tokens, calling `found` with (the innermost module, the named path as written
/// from its root, the line) for every path rooted at `crate`, `super`, `self` or a child module.
fn paths_in(
    tokens: &[Lexed],
    module: &Module,
    children: &BTreeSet<String>,
    mut inline: impl FnMut(&Module),
    mut found: impl FnMut(&Module, Module, usize),
) {
    let mut stack: Vec<Inline> = Vec::new();
    let mut depth: usize = 0;
    let ident = |k: usize| match tokens.get(k).map(|t| &t.token) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let is = |k: usize, token: &Token| tokens.get(k).map(|t| &t.token) == Some(token);
    let mut i = 0;
    while i < tokens.len() {
        let current = stack.last().map_or(module, |open| &open.module).clone();
        match &tokens[i].token {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if stack.last().is_some_and(|open| open.depth == depth) {
                    stack.pop();
                }
            }
            Token::Ident(word) if word == "mod" && is(i + 2, &Token::Open) => {
                if let Some(name) = ident(i + 1) {
                    let mut inner = current.clone();
                    inner.push(name.to_string());
                    inline(&inner);
                    stack.push(Inline {
                        module: inner,
                        depth,
                    });
                }
            }
            Token::Ident(word) if is(i + 1, &Token::PathSep) && !after_path(tokens, i) => {
                // Where the path starts, and the token after its root's `::`.
                let root = match word.as_str() {
                    "crate" => Some((Vec::new(), i + 2)),
                    "self" => Some((current.clone(), i + 2)),
                    "super" => {
                        let mut base = current.clone();
                        base.pop();
                        let mut k = i + 2;
                        while ident(k) == Some("super") && is(k + 1, &Token::PathSep) {
                            base.pop();
                            k += 2;
                        }
                        Some((base, k))
                    }
                    // A child module of the file's module (in its inline tests too, which see
                    // it through `use super::*`).
                    name if children.contains(name) => {
                        Some(([module.clone(), vec![name.to_string()]].concat(), i + 2))
                    }
                    _ => None,
                };
                if let Some((base, start)) = root {
                    let mut tails = Vec::new();
                    let end = parse_tree(tokens, start, &mut Vec::new(), &mut tails);
                    for tail in tails {
                        found(&current, [base.clone(), tail].concat(), tokens[i].line);
                    }
                    // Braces inside a `use` group are not blocks: skip past the path.
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Whether the token at `i` continues a path (`a::b`) or follows a `.` (a method), rather than
/// starting one.
fn after_path(tokens: &[Lexed], i: usize) -> bool {
    i > 0 && matches!(tokens[i - 1].token, Token::PathSep | Token::Other('.'))
}

/// Reads the rest of a path from `k` (just after a `::`): segments, `{ .. }` groups and `*`,
/// pushing every complete path (as segments after the root) onto `out`; returns where the path
/// ends.
fn parse_tree(
    tokens: &[Lexed],
    mut k: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Module>,
) -> usize {
    loop {
        match tokens.get(k).map(|t| &t.token) {
            Some(Token::Ident(name)) if name != "self" => {
                prefix.push(name.clone());
                if tokens.get(k + 1).map(|t| &t.token) == Some(&Token::PathSep)
                    && matches!(
                        tokens.get(k + 2).map(|t| &t.token),
                        Some(Token::Ident(_) | Token::Open | Token::Star)
                    )
                {
                    k += 2;
                    continue;
                }
                out.push(prefix.clone());
                return k + 1;
            }
            Some(Token::Open) => {
                k += 1;
                let mut level = 0;
                let mut start = k;
                // Each comma-separated item at this level is a subtree of its own.
                while k < tokens.len() {
                    match tokens[k].token {
                        Token::Open => level += 1,
                        Token::Close if level == 0 => {
                            parse_tree(tokens, start, &mut prefix.clone(), out);
                            return k + 1;
                        }
                        Token::Close => level -= 1,
                        Token::Comma if level == 0 => {
                            parse_tree(tokens, start, &mut prefix.clone(), out);
                            start = k + 1;
                        }
                        _ => {}
                    }
                    k += 1;
                }
                return k;
            }
            // `self` inside a group, or `*`: the path so far.
            Some(Token::Ident(_) | Token::Star) => {
                out.push(prefix.clone());
                return k + 1;
            }
            // `use a::{b, }` leaves an empty item; nothing to add.
            _ => return k,
        }
    }
}

fn show(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Module edges with the places (file:line) behind each.
type Graph = BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>;

/// Every module edge: from the module holding a path to the deepest known module it names.
fn module_graph(root: &Path) -> Graph {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // main.rs is the binary, a crate of its own that reaches the library by its name.
    files.retain(|file| file.file_name().is_some_and(|name| name != "main.rs"));
    let sources: Vec<(PathBuf, Module, Vec<Lexed>)> = files
        .iter()
        .map(|file| {
            let text = fs::read_to_string(file)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", file.display()));
            (file.clone(), file_module(&src, file), lex(&text))
        })
        .collect();
    let mut modules: BTreeSet<Module> = sources.iter().map(|(_, m, _)| m.clone()).collect();
    for (_, module, tokens) in &sources {
        paths_in(
            tokens,
            module,
            &BTreeSet::new(),
            |inner| {
                modules.insert(inner.clone());
            },
            |_, _, _| {},
        );
    }
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (file, module, tokens) in &sources {
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[module.len()].clone())
            .collect();
        let place = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        paths_in(
            tokens,
            module,
            &children,
            |_| {},
            |from, named, line| {
                let target = (0..=named.len())
                    .rev()
                    .map(|n| named[..n].to_vec())
                    .find(|prefix| modules.contains(prefix))
                    .unwrap_or_default();
                if &target != from {
                    graph
                        .entry(from.clone())
                        .or_default()
                        .entry(target)
                        .or_default()
                        .insert(format!("{place}:{line}"));
                }
            },
        );
    }
    graph
}

/// Edges between siblings: `a::x` naming `b::y` is `a` naming `b` at the crate root (and nothing
/// inside either). A module and its own submodules are one unit: a child may use what its
/// parent holds (`super::`), and a parent its children, as Rust's privacy intends; a circle
/// that leaves the unit still shows, one level up.
fn lifted(graph: &Graph) -> Graph {
    let mut siblings: Graph = graph.keys().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (from, edges) in graph {
        for (to, places) in edges {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue;
            }
            siblings
                .entry(from[..=common].to_vec())
                .or_default()
                .entry(to[..=common].to_vec())
                .or_default()
                .extend(places.iter().cloned());
        }
    }
    siblings
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn circles(graph: &Graph) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a Module) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        let graph = walk.graph;
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.on_stack.contains(next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = Vec::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                component.push(top.clone());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                walk.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node) {
            visit(&mut walk, node);
        }
    }
    walk.found.sort();
    walk.found
}

fn describe(graph: &Graph, component: &[Module]) -> String {
    let mut text = format!(
        "circle: {}\n",
        component.iter().map(show).collect::<Vec<_>>().join(", ")
    );
    for from in component {
        for (to, places) in &graph[from] {
            if component.contains(to) {
                let places: Vec<&str> = places.iter().map(String::as_str).collect();
                text += &format!(
                    "  {} -> {}  ({})\n",
                    show(from),
                    show(to),
                    places.join(", ")
                );
            }
        }
    }
    text
}

#[test]
fn imports_between_modules_run_one_way() {
    let graph = lifted(&module_graph(Path::new(env!("CARGO_MANIFEST_DIR"))));
    if std::env::var_os("IMPORTS_GRAPH").is_some() {
        for (from, edges) in graph.iter().filter(|(_, edges)| !edges.is_empty()) {
            let targets: Vec<String> = edges.keys().map(show).collect();
            println!("{} -> {}", show(from), targets.join(", "));
        }
    }
    let found = circles(&graph);
    let report: String = found.iter().map(|c| describe(&graph, c)).collect();
    assert!(
        found.is_empty(),
        "imports run one way, but these modules name each other:\n{report}"
    );
}

#[test]
fn the_import_check_finds_circles_through_use_groups_super_paths_and_submodules() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("fake")).unwrap();
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod fake;\n"),
        (
            "a.rs",
            "// crate::b in a comment is no import\n\
             const S: &str = \"crate::b::x\";\n\
             const R: &str = r#\"crate::b \"quoted\" \"#;\n\
             pub fn a<'a>(c: char) -> &'a str { if c == '{' { S } else { R } }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::fake::two;\n}\n",
        ),
        ("b.rs", "pub fn r#type() { crate::a::a('x'); }\n"),
        (
            "fake/mod.rs",
            "mod one;\nmod two;\npub use one::One;\npub struct Shared;\n",
        ),
        (
            "fake/one.rs",
            "use super::{two::{self, Two}, Shared};\npub struct One;\n",
        ),
        (
            "fake/two.rs",
            "pub struct Two;\nfn f() -> super::one::One { crate::a::a('y'); super::one::One }\n",
        ),
    ];
    for (name, text) in files {
        fs::write(src.join(name), text).unwrap();
    }
    let modules = |names: &[&str]| -> Vec<Module> {
        names
            .iter()
            .map(|name| name.split("::").map(String::from).collect())
            .collect()
    };
    let raw = module_graph(dir.path());
    // Nothing in comments or strings, and a test module is a node of its own.
    assert!(raw[&modules(&["a"])[0]].is_empty(), "{raw:?}");
    assert_eq!(
        raw[&modules(&["a::tests"])[0]]
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        modules(&["a", "fake::two"])
    );
    assert_eq!(
        raw[&modules(&["b"])[0]].keys().cloned().collect::<Vec<_>>(),
        modules(&["a"])
    );
    // a's tests name the fake's `two`, which names a: a circle between a and the fake; one and
    // two name each other through a nested group and a `super::` path; the fake's parent and
    // children naming each other is no circle.
    assert_eq!(
        circles(&lifted(&raw)),
        vec![
            modules(&["a", "fake"]),
            modules(&["fake::one", "fake::two"])
        ],
    );
}
