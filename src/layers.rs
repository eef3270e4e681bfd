//! Keeps the library's layers pointing down, and its files short. Each module of the pipeline
//! has a rank; a module may name only modules of a lower rank (`crate::x`
//! paths and `use crate::x` lines are what is read). A new upward reach
//! fails here, at `cargo test --lib`, before it becomes a cycle someone has
//! to untangle.

/// From the bottom up: plain data and helpers, the stack and its graph, the
/// Karpenter mapping and the state as data, the API, then the stages that
/// read, decide and act, and the operations that join them.
const RANKS: &[(&str, u8)] = &[
    ("util", 0),
    ("target", 0),
    ("stack", 1),
    ("secret", 2),
    ("graph", 2),
    ("state", 2),
    ("cluster", 2),
    ("karpenter", 3),
    ("desired", 4),
    ("observe", 5),
    ("plan", 6),
    ("backend", 7),
    ("readiness", 7),
    ("apply", 8),
    ("doctor", 9),
    ("ops", 10),
];

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Every `crate::name` a source text refers to.
fn referred(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn sources(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_module_reaches_up_a_layer() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut reaches = Vec::new();
    for (module, own) in RANKS {
        let mut files = vec![src.join(format!("{module}.rs"))];
        sources(&src.join(module), &mut files);
        for file in files.iter().filter(|f| f.exists()) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for other in referred(&text) {
                let up = rank(&other).is_some_and(|r| r >= *own) && other != *module;
                if up {
                    reaches.push(format!("{} names crate::{other}", file.display()));
                }
            }
        }
    }
    assert_eq!(reaches, Vec::<String>::new(), "a module reaches up a layer");
}

#[test]
fn every_module_of_the_library_has_a_rank() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let unranked: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .filter(|m| rank(m).is_none())
        .collect();
    assert_eq!(unranked, Vec::<&str>::new());
}

/// Past this a file holds more than one idea; split it by idea.
const MOST_LINES: usize = 700;

#[test]
fn no_source_file_is_over_700_lines() {
    let mut files = Vec::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MOST_LINES).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert_eq!(long, Vec::<String>::new());
}
