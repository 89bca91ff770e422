//! The README's minimal actix-web app is `examples/minimal.rs` (built by `cargo test`), text
//! for text.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn the_readme_shows_the_example_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/minimal.rs")).unwrap();
    let at = readme
        .find("<!-- the text of examples/minimal.rs after its header;")
        .expect("the README marks the block");
    let rest = &readme[at..];
    let start = rest.find("```rust,ignore\n").expect("a rust,ignore block") + 15;
    let end = rest[start..].find("\n```\n").expect("the block ends");
    let shown = &rest[start..start + end];
    let body: Vec<&str> = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .collect();
    assert_eq!(body.first(), Some(&""), "a blank line after the header");
    let body = body[1..].join("\n");
    if shown != body.trim_end() {
        let line = shown
            .lines()
            .zip(body.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| shown.lines().count().min(body.lines().count()));
        panic!(
            "README.md's minimal app differs from examples/minimal.rs at line {} of the \
             block: copy the example (after its header) into the README",
            line + 1
        );
    }
}
