//! `drover actions list|describe` (owned by the action-library work).
use drover_actions::{ActionInfo, Registry, param_docs};

use crate::exit::Exit;

/// Output format of `drover actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct ActionsArgs {
    #[command(subcommand)]
    pub command: Option<ActionsCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ActionsCommand {
    /// List the actions: name, dry-run, undo, description (the default).
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Describe one action: its params (type, required, default, description),
    /// whether it can dry-run and undo; `-o json` prints its info with the JSON Schema.
    Describe {
        /// Action name, e.g. `file.write`.
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

pub fn run(args: ActionsArgs) -> Exit {
    let registry = Registry::builtin();
    match args.command.unwrap_or(ActionsCommand::List { output: Format::Table }) {
        ActionsCommand::List { output } => list(&registry, output),
        ActionsCommand::Describe { name, output } => describe(&registry, &name, output),
    }
}

fn print_structured<T: serde::Serialize>(v: &T, format: Format) -> Exit {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(v).map_err(|e| e.to_string()),
        Format::Yaml => serde_saphyr::to_string(v).map_err(|e| e.to_string()),
        Format::Table => return Exit::Error,
    };
    match text {
        Ok(t) => {
            println!("{}", t.trim_end());
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: cannot render output: {e}");
            Exit::Error
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn list(registry: &Registry, output: Format) -> Exit {
    let infos = registry.list();
    if output != Format::Table {
        return print_structured(&infos, output);
    }
    let width = infos.iter().map(|i| i.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<7}  {:<4}  DESCRIPTION", "NAME", "DRY-RUN", "UNDO");
    for i in &infos {
        println!("{:<width$}  {:<7}  {:<4}  {}", i.name, yes_no(i.dry_run), yes_no(i.undo), i.description);
    }
    Exit::Success
}

/// The text of `drover actions describe NAME`.
pub fn describe_text(info: &ActionInfo) -> String {
    let mut out = format!("{}\n  {}\n\n", info.name, info.description);
    out.push_str(&format!(
        "dry run: {}\nundo:    {}\n\n",
        if info.dry_run { "yes" } else { "no (a dry run refuses to run it)" },
        if info.undo { "yes" } else { "no (rollback does nothing)" }
    ));
    let params = param_docs(&info.params_schema);
    if params.is_empty() {
        out.push_str("params: none\n");
        return out;
    }
    out.push_str("params:\n");
    for p in params {
        let mut line = format!("  {} ({}", p.name, p.type_);
        line.push_str(if p.required { ", required" } else { ", optional" });
        if let Some(d) = &p.default {
            line.push_str(&format!(", default {d}"));
        }
        if p.secret {
            line.push_str(", secret");
        }
        line.push(')');
        out.push_str(&line);
        out.push('\n');
        for l in p.description.lines() {
            out.push_str(&format!("      {}\n", l.trim()));
        }
    }
    out
}

fn describe(registry: &Registry, name: &str, output: Format) -> Exit {
    let Some(info) = registry.info(name) else {
        eprintln!("error: unknown action `{name}` (`drover actions list` shows the available actions)");
        return Exit::Invalid;
    };
    if output != Format::Table {
        return print_structured(&info, output);
    }
    print!("{}", describe_text(&info));
    Exit::Success
}
