//! `drover validate PLAN`: check a plan without running it.

use crate::exit::Exit;
use crate::plan_input::{load_plan, read_plan_text, report_errors};
use drover_cli::{OutputFormat, print_structured};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The plan file (YAML or JSON), or - for stdin.
    plan: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(args: ValidateArgs) -> Exit {
    let text = match read_plan_text(&args.plan) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::Invalid;
        }
    };
    let result = load_plan(&args.plan, &text);
    if args.output != OutputFormat::Table {
        let v = match &result {
            Ok(p) => json!({ "valid": true, "plan": p }),
            Err(e) => json!({ "valid": false, "errors": e.0 }),
        };
        if let Err(e) = print_structured(&v, args.output) {
            eprintln!("error: {e}");
            return Exit::Error;
        }
        return if result.is_ok() { Exit::Success } else { Exit::Invalid };
    }
    match result {
        Ok(p) => {
            println!("{}: plan \"{}\" is valid ({} steps)", args.plan, p.name, p.steps.len());
            Exit::Success
        }
        Err(e) => {
            report_errors(&args.plan, &e);
            Exit::Invalid
        }
    }
}
