//! The layering of the operator's modules (docs/operator.md, "Code
//! layout"): each module imports only modules of a lower layer, so the pure
//! deciders never import rendering, the plan or I/O, rendering never
//! imports the plan, and nothing but the command line imports `io`. A
//! module that imports one of a higher layer (the start of an import
//! circle) fails here with the file and the import.

use std::path::{Path, PathBuf};

/// Top-level modules of `operator/src`, lowest layer first. A module may
/// import modules of its own layer's predecessors only.
const LAYERS: &[&[&str]] = &[
    &["error", "version", "duration", "write_failure", "metrics"],
    &["labels"],
    &["resource", "objects"],
    &["observed"],
    &["rollout", "rotation", "admission"],
    &["autoscale"],
    &["decisions"],
    &["render"],
    &["plan"],
    &["io", "testing"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`rollout/decide.rs` ->
/// `rollout`, `decisions.rs` -> `decisions`); None for the crate root and
/// the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then(|| module.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level modules named by `crate::...` paths in the code (comments
/// left out), with the line they are on.
fn imported_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for name in names {
                // Items of the crate root (`crate::Error`, `crate::VERSION`)
                // are re-exports; the modules they come from are checked
                // where they are defined.
                if name.chars().next().is_some_and(char::is_lowercase) {
                    found.push((number + 1, name.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer of this test; add it to LAYERS and to docs/operator.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source file");
        for (line, imported) in imported_modules(&text) {
            if imported == module {
                continue;
            }
            match layer_of(&imported) {
                Some(layer) if layer < own => {}
                _ => violations.push(format!(
                    "{}:{line}: `{module}` imports `crate::{imported}`, which is not in a lower layer",
                    file.display()
                )),
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} source files were checked");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_an_import_from_a_higher_layer() {
    let text = "use crate::labels::Component;\nuse crate::render::Ctx; // rendering\nlet x = crate::Error::Parse;\nuse crate::{io, plan::Plan};\n";
    assert_eq!(
        imported_modules(text),
        vec![
            (1, "labels".to_owned()),
            (2, "render".to_owned()),
            (4, "io".to_owned()),
            (4, "plan".to_owned()),
        ]
    );
    assert!(layer_of("rollout") < layer_of("render"));
    assert!(layer_of("render") < layer_of("plan"));
    assert!(layer_of("plan") < layer_of("io"));
}
