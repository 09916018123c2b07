//! The one-way core, enforced: every top-level module of the library has a
//! layer, and a module may use (`crate::x`) only modules of lower layers. A
//! new module must be given a layer here; an import that points upwards (or
//! sideways, within a layer) fails this test with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers, lowest first. Keep in step with the crate doc in src/lib.rs.
const LAYERS: &[&[&str]] = &[
    &["error", "fault", "tensor", "logging"],
    &["ros2"],
    &["obs", "config"],
    &["wire"],
    &["sched"],
    &["job"],
    &["infer"],
    &["llm"],
    &["ctx"],
    &["io"],
    &["worker"],
    &["daemon"],
    &["supervise"],
    &["check", "client"],
    &["ops"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/io/egress.rs` → `io`);
/// `None` for the crate root and binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::name` a line of code mentions (comments skipped).
fn crate_refs(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let braced = after.starts_with('{');
        if braced {
            // `use crate::{a, b::c}`: each first segment.
            let inner = &after[1..after.find('}').unwrap_or(after.len())];
            for part in inner.split(',') {
                let n = part.trim().split("::").next().unwrap_or("").trim();
                if !n.is_empty() {
                    out.push(n.to_string());
                }
            }
        } else if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unknown = BTreeMap::new();
    for f in &files {
        let Some(module) = module_of(&src, f) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            unknown.insert(module.clone(), f.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for used in crate_refs(line) {
                if used == module {
                    continue;
                }
                match layer(&used) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{used}` (layer {l}): {}",
                        f.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        line.trim()
                    )),
                    None => {
                        unknown.insert(used, f.display().to_string());
                    }
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS): {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_braced_and_inline_paths() {
    assert_eq!(
        crate_refs("use crate::{io::egress, ctx::Ctx};"),
        vec!["io", "ctx"]
    );
    assert_eq!(
        crate_refs("    let x = crate::infer::run::run(a); // crate::daemon"),
        vec!["infer"]
    );
    assert!(crate_refs("//! see [`crate::daemon`]").is_empty());
}
