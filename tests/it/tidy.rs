//! The tidy test: the house's walls, checked by reading `src/**.rs`. ARCHITECTURE.md states haul's layering
//! and its absences ("only `store` speaks SQL", "only the runner spawns processes"); this test is what keeps
//! those sentences true. It fails, naming the file and the line, when a folder imports a layer it may not,
//! when `rusqlite`, `std::process::Command` or `axum` appear outside their homes, when the layer graph has a
//! cycle, or when a file or function grows past the size a reader can hold in their head.
//!
//! It is a plain text check (comments and `#[cfg(test)] mod tests` are left out), cheap enough to run with
//! every `cargo test`. The checker's own unit tests at the end show that each rule fires on a violation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each layer and the layers it may import. Everything not listed is forbidden; the crate root (`lib.rs`,
/// `main.rs`) may import anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("infra", &["model"]),
    ("config", &["model"]),
    ("store", &["model", "config"]),
    ("intake", &["model", "config"]),
    ("sources", &["model", "infra", "config"]),
    ("deploy", &["model", "infra", "config", "sources", "store"]),
    ("ops", &["model", "infra", "config", "store", "intake"]),
    ("fleet", &["model", "infra", "config", "sources"]),
    (
        "server",
        &[
            "model", "infra", "config", "store", "intake", "sources", "deploy", "ops", "fleet",
        ],
    ),
    (
        "cli",
        &[
            "model", "infra", "config", "store", "intake", "sources", "deploy", "ops", "fleet", "server",
        ],
    ),
];

/// Files allowed beside `main.rs` and `lib.rs` in `src/`.
const MAX_LOOSE_FILES: usize = 4;
const MAX_FILE_LINES: usize = 900;
const MAX_FN_LINES: usize = 120;

/// (file, text) -> every broken rule, one line each.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let loose: Vec<&String> = files
        .iter()
        .map(|(f, _)| f)
        .filter(|f| !f.contains('/') && *f != "main.rs" && *f != "lib.rs")
        .collect();
    if loose.len() > MAX_LOOSE_FILES {
        out.push(format!(
            "src/ has {} loose files beside main.rs and lib.rs (at most {MAX_LOOSE_FILES}): {loose:?}",
            loose.len()
        ));
    }
    for (file, text) in files {
        let code = non_test_code(text);
        let layer = file.split_once('/').map(|(l, _)| l);
        if !text.starts_with("//!") {
            out.push(format!(
                "{file}: does not open with a `//!` paragraph saying why it exists"
            ));
        }
        if code.len() > MAX_FILE_LINES {
            out.push(format!(
                "{file}: {} lines of non-test code (at most {MAX_FILE_LINES}): split it",
                code.len()
            ));
        }
        for (name, line, n) in long_functions(&code) {
            out.push(format!(
                "{file}:{line}: fn {name} is {n} lines (at most {MAX_FN_LINES})"
            ));
        }
        let module = module_path(file);
        for (i, raw) in code.iter().enumerate() {
            let line = strip_comment(raw);
            let at = format!("{file}:{}", i + 1);
            for target in crate_refs(line, &module) {
                let (Some(from), true) = (layer, allowed.contains_key(target.as_str())) else {
                    continue;
                };
                if from == target {
                    continue;
                }
                edges.entry(from.to_string()).or_default().insert(target.clone());
                match allowed.get(from) {
                    Some(ok) if ok.contains(&target.as_str()) => {}
                    Some(_) => out.push(format!(
                        "{at}: the {from} layer may not import {target}: {}",
                        line.trim()
                    )),
                    None => out.push(format!(
                        "{at}: {from}/ is not a known layer (add it to LAYERS in tests/it/tidy.rs)"
                    )),
                }
            }
            out.extend(absences(file, &at, line));
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        out.push(format!("import cycle between layers: {}", cycle.join(" -> ")));
    }
    out
}

/// The rules stated as absences in ARCHITECTURE.md.
fn absences(file: &str, at: &str, line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let has_word = |w: &str| {
        line.match_indices(w).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + w.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    if has_word("rusqlite") && !file.starts_with("store/") {
        out.push(format!(
            "{at}: rusqlite outside store/ (only the store speaks SQL): {}",
            line.trim()
        ));
    }
    let sql = [
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"CREATE ",
        "\"PRAGMA ",
        "\"ALTER ",
    ];
    if sql.iter().any(|k| line.contains(k)) && !file.starts_with("store/") {
        out.push(format!(
            "{at}: SQL outside store/ (only the store speaks SQL): {}",
            line.trim()
        ));
    }
    let spawns =
        line.contains("process::Command") || has_word("Command::new") || line.contains("process::Child");
    if spawns && file != "infra/runner.rs" {
        out.push(format!(
            "{at}: a process spawned outside infra/runner.rs (every process goes through runner::run): {}",
            line.trim()
        ));
    }
    if (has_word("axum") || has_word("hyper")) && !file.starts_with("server/") {
        out.push(format!(
            "{at}: axum/hyper outside server/ (only the server knows HTTP serving): {}",
            line.trim()
        ));
    }
    if file.starts_with("deploy/pipeline") {
        for forbidden in ["crate::store", "crate::server", "crate::ops", "super::queue"] {
            if line.contains(forbidden) {
                out.push(format!(
                    "{at}: the pipeline may not use {forbidden} (it knows nothing of the store, queues or HTTP)"
                ));
            }
        }
    }
    out
}

/// The lines before the unit tests (`#[cfg(test)]` followed by `mod ...`).
fn non_test_code(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

fn strip_comment(line: &str) -> &str {
    // `://` inside a string (a URL) is not a comment.
    match line.match_indices("//").find(|(i, _)| !line[..*i].ends_with(':')) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// `src/deploy/queue.rs` -> [deploy, queue]; `src/deploy/mod.rs` -> [deploy].
fn module_path(file: &str) -> Vec<String> {
    let stem = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = stem.split('/').map(String::from).collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The top-level modules a line names through `crate::x` or a `super::` chain that climbs to the root.
fn crate_refs(line: &str, module: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in line.match_indices("crate::") {
        let before = line[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c}`: every top-level name in the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(ident(item.trim()));
        } else {
            out.push(ident(rest));
        }
    }
    let mut from = 0;
    while let Some(i) = line[from..].find("super::") {
        let start = from + i;
        let before = line[..start].chars().next_back();
        let mut rest = &line[start..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        from = line.len() - rest.len();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if ups >= module.len() {
            out.push(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

/// (name, first line, length) of every function longer than the limit. rustfmt puts a function's closing
/// brace alone on a line at the indentation of its `fn`.
fn long_functions(code: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let after_mods = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "async ",
            "const ",
            "unsafe ",
            "extern \"C\" ",
        ]
        .iter()
        .fold(trimmed, |t, m| t.strip_prefix(m).unwrap_or(t));
        let after_mods = ["async ", "unsafe "]
            .iter()
            .fold(after_mods, |t, m| t.strip_prefix(m).unwrap_or(t));
        let Some(sig) = after_mods.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // A declaration without a body, or a body on the signature's line.
        let mut body_starts = None;
        for (j, l) in code.iter().enumerate().skip(i) {
            let l = strip_comment(l).trim_end();
            if l.ends_with(';') && body_starts.is_none() && !l.contains('{') {
                break;
            }
            if l.ends_with('{') {
                body_starts = Some(j);
                break;
            }
            if l.ends_with('}') {
                break;
            }
        }
        let Some(start) = body_starts else {
            continue;
        };
        let close = format!("{indent}}}");
        if let Some(end) = code.iter().skip(start + 1).position(|l| *l == close) {
            let len = end + start + 2 - i;
            if len > MAX_FN_LINES {
                out.push((name, i + 1, len));
            }
        }
    }
    out
}

/// A cycle in the layer graph, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(p) = path.iter().position(|x| x == n) {
            let mut cycle = path[p..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

fn read_tree(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src/").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if e.path().is_dir() {
            read_tree(&e.path(), &rel, out);
        } else if name.ends_with(".rs") {
            out.push((
                rel,
                std::fs::read_to_string(e.path()).expect("read a source file"),
            ));
        }
    }
}

#[test]
fn the_house_keeps_its_walls() {
    let mut files = Vec::new();
    read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut files);
    assert!(files.len() > 30, "read only {} files from src/", files.len());
    let v = violations(&files);
    assert!(v.is_empty(), "tidy: {} problem(s):\n{}", v.len(), v.join("\n"));
}

/// The store's durability rests on the bundled SQLite syncing its WAL on every group commit; the repository's
/// cargo config makes that sync an `fdatasync` (BENCHMARKS.md). A build that lost the setting still syncs
/// (with `fsync`), so nothing would fail but the flood's figures: this keeps the setting in place.
#[test]
fn the_bundled_sqlite_syncs_with_fdatasync() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cargo/config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let set = text
        .lines()
        .map(strip_comment)
        .any(|l| l.trim() == r#"LIBSQLITE3_FLAGS = "-DHAVE_FDATASYNC=1""#);
    assert!(
        set,
        "{} must set LIBSQLITE3_FLAGS = \"-DHAVE_FDATASYNC=1\" under [env]",
        path.display()
    );
    assert_eq!(
        option_env!("LIBSQLITE3_FLAGS"),
        Some("-DHAVE_FDATASYNC=1"),
        "cargo did not pass the [env] setting"
    );
}

#[test]
fn the_layer_table_itself_has_no_cycle() {
    let edges: BTreeMap<String, BTreeSet<String>> = LAYERS
        .iter()
        .map(|(l, deps)| (l.to_string(), deps.iter().map(|d| d.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&edges), None);
}

// The checker's own tests: each rule fires on a deliberate violation.

fn check(files: &[(&str, &str)], expected: &[&str]) {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    let v = violations(&files);
    for e in expected {
        assert!(
            v.iter().any(|l| l.contains(e)),
            "expected a violation containing {e:?}, got {v:#?}"
        );
    }
    if expected.is_empty() {
        assert!(v.is_empty(), "expected none, got {v:#?}");
    }
}

#[test]
fn tidy_flags_a_layer_importing_upwards() {
    check(
        &[("config/mod.rs", "//! c\nuse crate::sources::git::Git;\n")],
        &["config/mod.rs:2: the config layer may not import sources"],
    );
    check(
        &[("deploy/queue.rs", "//! q\nuse crate::ops::notify::Notifier;\n")],
        &["the deploy layer may not import ops"],
    );
    check(
        &[("model/mod.rs", "//! m\nfn f() { crate::store::open(); }\n")],
        &["the model layer may not import store"],
    );
    check(
        &[(
            "store/mod.rs",
            "//! s\nuse crate::{model::State, server::http};\n",
        )],
        &["the store layer may not import server"],
    );
    // `super::super` climbing out of a folder counts as the layer it lands in.
    check(
        &[("intake/github.rs", "//! g\nuse super::super::store::Store;\n")],
        &["the intake layer may not import store"],
    );
}

#[test]
fn tidy_allows_what_the_table_allows() {
    check(
        &[
            (
                "deploy/queue.rs",
                "//! q\nuse crate::store::Store;\nuse super::pipeline::Pipeline;\n",
            ),
            (
                "cli/mod.rs",
                "//! c\nuse crate::server::daemon;\n// crate::anything in a comment\n",
            ),
            (
                "model/url.rs",
                "//! u\nconst U: &str = \"https://x\"; // crate::store\n",
            ),
        ],
        &[],
    );
}

#[test]
fn tidy_flags_sql_and_processes_outside_their_homes() {
    check(
        &[(
            "server/liveness.rs",
            "//! l\nlet one = c.query_row(\"SELECT 1\", [], |r| r.get(0));\n",
        )],
        &["SQL outside store/"],
    );
    check(
        &[("ops/notify.rs", "//! n\nuse rusqlite::params;\n")],
        &["rusqlite outside store/"],
    );
    check(
        &[(
            "sources/signature.rs",
            "//! s\nlet c = std::process::Command::new(\"ssh-keygen\");\n",
        )],
        &["a process spawned outside infra/runner.rs"],
    );
    check(
        &[(
            "infra/runner.rs",
            "//! r\nlet c = tokio::process::Command::new(p);\n",
        )],
        &[],
    );
    check(
        &[("deploy/pipeline.rs", "//! p\nuse crate::store::Store;\n")],
        &["the pipeline may not use crate::store"],
    );
    check(
        &[("intake/mod.rs", "//! i\nuse axum::http::HeaderMap;\n")],
        &["axum/hyper outside server/"],
    );
    // Unit tests may do as they like.
    check(
        &[(
            "ops/notify.rs",
            "//! n\n#[cfg(test)]\nmod tests {\n    use rusqlite::params;\n}\n",
        )],
        &[],
    );
}

#[test]
fn tidy_flags_cycles_sizes_loose_files_and_missing_docs() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "a".into()]));

    let long_fn = format!(
        "//! f\nfn giant() {{\n{}}}\nfn small() {{\n    1;\n}}\n",
        "    x();\n".repeat(130)
    );
    check(&[("deploy/queue.rs", &long_fn)], &["fn giant is 132 lines"]);
    let long_file = format!("//! f\n{}", "const A: u8 = 1;\n".repeat(950));
    check(
        &[("deploy/queue.rs", &long_file)],
        &["951 lines of non-test code"],
    );
    let loose: Vec<(String, String)> = (0..5)
        .map(|i| (format!("f{i}.rs"), "//! f\n".to_string()))
        .collect();
    assert!(violations(&loose).iter().any(|v| v.contains("5 loose files")));
    check(
        &[("model/x.rs", "use std::fmt;\n")],
        &["does not open with a `//!` paragraph"],
    );
}
