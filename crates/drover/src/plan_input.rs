//! Reading plan files and the action catalog the plan is checked against.

use drover_core::{Catalog, Format, Plan, PlanErrors, parse_plan};

/// Read a plan from a file, or stdin for `-`.
pub fn read_plan_text(path: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the plan from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading plan file {path}"))
}

/// The actions this binary offers, as the catalog plans are checked against.
pub fn builtin_catalog() -> Catalog {
    // The built-in schemas are generated from typed structs; one that does not compile is a
    // bug caught by the tests, so fall back to an empty catalog rather than abort.
    match Catalog::new(drover_actions::Registry::builtin().catalog()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("built-in action catalog is invalid: {e}");
            Catalog::new(Default::default()).unwrap_or_else(|_| unreachable!("an empty catalog is valid"))
        }
    }
}

/// Parse and check a plan file against the built-in actions.
pub fn load_plan(path: &str, text: &str) -> Result<Plan, PlanErrors> {
    parse_plan(text, Format::from_path(path), Some(&builtin_catalog()))
}

/// Print plan errors on stderr, one per line.
pub fn report_errors(path: &str, e: &PlanErrors) {
    eprintln!("error: {path}: {e}");
}
