//! Markdown reference of the actions, generated from their schemas
//! (the generated part of `docs/actions.md`).

use crate::{Registry, param_docs};

/// Escape a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The reference section: one heading per action, its capabilities and a params table.
pub fn markdown_reference(registry: &Registry) -> String {
    let mut out = String::new();
    for info in registry.list() {
        out.push_str(&format!("### `{}`\n\n{}\n\n", info.name, info.description));
        out.push_str(&format!(
            "Dry run: {}. Undo: {}.\n\n",
            if info.dry_run { "yes" } else { "no (a dry run refuses it)" },
            if info.undo { "yes" } else { "no (rollback does nothing)" }
        ));
        let params = param_docs(&info.params_schema);
        if params.is_empty() {
            out.push_str("No params.\n\n");
            continue;
        }
        out.push_str("| param | type | required | default | description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for p in params {
            let default = p.default.as_ref().map(|d| format!("`{d}`")).unwrap_or_default();
            let mut desc = p.description.clone();
            if p.secret {
                desc.push_str(" **Secret.**");
            }
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                p.name,
                cell(&p.type_),
                if p.required { "yes" } else { "no" },
                cell(&default),
                cell(&desc)
            ));
        }
        out.push('\n');
    }
    out
}
