//! `drover schema plan`: the JSON Schema of plans.

use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// Which schema to print.
    #[arg(value_enum, default_value = "plan")]
    what: SchemaKind,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    /// The plan format (v1).
    Plan,
}

pub fn run(args: SchemaArgs) -> Exit {
    match args.what {
        SchemaKind::Plan => match serde_json::to_string_pretty(&drover_core::plan::plan_schema()) {
            Ok(s) => {
                println!("{s}");
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Error
            }
        },
    }
}
