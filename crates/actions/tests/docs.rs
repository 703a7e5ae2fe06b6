//! docs/actions.md carries the params reference generated from the schemas.
//! Regenerate it with `DROVER_BLESS=1 cargo test -p drover-actions --test docs`.

use std::path::PathBuf;

use drover_actions::Registry;
use drover_actions::docs::markdown_reference;

const BEGIN: &str = "<!-- BEGIN GENERATED: action reference (crates/actions/tests/docs.rs) -->\n";
const END: &str = "<!-- END GENERATED -->\n";

#[test]
fn actions_md_reference_is_generated_from_the_schemas() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/actions.md");
    let text = std::fs::read_to_string(&path).expect("docs/actions.md exists");
    let start = text.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = text[start..].find(END).expect("end marker") + start;
    let generated = format!("\n{}", markdown_reference(&Registry::builtin()));
    if text[start..end] == generated {
        return;
    }
    if std::env::var_os("DROVER_BLESS").is_some() {
        let updated = format!("{}{}{}", &text[..start], generated, &text[end..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "docs/actions.md is out of date with the action schemas; run DROVER_BLESS=1 cargo test -p drover-actions --test docs"
    );
}
