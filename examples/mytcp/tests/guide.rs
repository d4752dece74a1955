//! The guide `docs/writing-a-transport.md` shows this crate's files; this
//! test checks that it shows them exactly, so the guide always compiles
//! and passes.
//!
//! A code block that starts with a comment naming a file of this crate
//! (`// examples/mytcp/src/lib.rs`, or `... (continued)` for its next part)
//! is that file, or the next part of it; the parts of a file, joined by a
//! blank line, are the file.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn the_guide_shows_this_crate_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/writing-a-transport.md"))
        .expect("docs/writing-a-transport.md");
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut block: Option<Vec<&str>> = None;
    for line in guide.lines() {
        match (&mut block, line.starts_with("```")) {
            (None, true) => block = Some(Vec::new()),
            (Some(lines), true) => {
                let first = lines.first().copied().unwrap_or_default();
                let named = first
                    .strip_prefix("// examples/mytcp/")
                    .or_else(|| first.strip_prefix("# examples/mytcp/"));
                if let Some(name) = named {
                    let (name, continued) = match name.strip_suffix(" (continued)") {
                        Some(n) => (n, true),
                        None => (name, false),
                    };
                    let body = if continued { &lines[1..] } else { &lines[..] };
                    files
                        .entry(name.to_owned())
                        .or_default()
                        .push(body.iter().map(|l| format!("{l}\n")).collect());
                }
                block = None;
            }
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    for name in [
        "Cargo.toml",
        "src/lib.rs",
        "src/main.rs",
        "tests/conformance.rs",
        "tests/engine.rs",
    ] {
        let shown = files
            .get(name)
            .unwrap_or_else(|| panic!("the guide does not show examples/mytcp/{name}"))
            .join("\n");
        let actual = std::fs::read_to_string(root.join(name)).expect(name);
        assert!(
            shown == actual,
            "the guide's examples/mytcp/{name} differs from the file:\n--- guide\n{shown}\n--- file\n{actual}"
        );
    }
}
