//! drover-cli: the `drover` commands that talk to a controller's REST API (`/v1`).
//!
//! - [`cmd`]: the subcommands (`run`, `jobs`, `nodes`, `plan`) with their clap arguments;
//!   each has a blocking `run(args) -> Code` for the binary and an async `execute` for tests.
//! - [`client`]: the HTTP client and the error type ([`CliError`]) with its exit code.
//! - [`sse`]: the Server-Sent Events framing; [`watch`]: following a job's events with
//!   reconnects and the live displays (progress bars, timeline lines, quiet).
//! - [`format`]: tables and the timeline formatter [`describe`] (shared with `drover simulate`).
//! - [`params`]: `key=value` params (shared with `drover exec`); [`adhoc`]: one-step plans.

pub mod adhoc;
pub mod client;
pub mod cmd;
pub mod format;
pub mod params;
pub mod sse;
pub mod watch;

pub use client::{CliError, Client};
pub use format::describe;

use std::future::Future;

/// Where the controller is when neither `--api` nor `DROVER_API` says.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// How a command ended; the binary turns it into the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 0: the command (or the job it ran or watched) succeeded.
    Success,
    /// 1: the job ended in another final status, or an operator command was not applicable.
    Failed,
    /// 2: invalid input (bad plan, bad flags, unknown job or node); nothing ran.
    Invalid,
    /// 3: drover could not do what was asked (controller unreachable, not ready, queue full, ...).
    Error,
}

impl Code {
    /// The process exit status.
    pub fn as_u8(self) -> u8 {
        match self {
            Code::Success => 0,
            Code::Failed => 1,
            Code::Invalid => 2,
            Code::Error => 3,
        }
    }
}

/// How a command prints its result: `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text and tables.
    #[default]
    #[value(alias = "text")]
    Table,
    Json,
    Yaml,
}

impl OutputFormat {
    pub fn is_table(self) -> bool {
        self == OutputFormat::Table
    }
}

// Where the controller's API is: `--api URL` or `DROVER_API` (no doc comment: clap would
// make it the about text of every command that flattens it).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The controller's API base URL.
    #[arg(long, global = true, env = "DROVER_API", default_value = DEFAULT_API, value_name = "URL")]
    pub api: String,
}

/// Render `value` as pretty JSON or YAML (with a final newline).
pub fn render_structured<T: serde::Serialize>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    let s = match format {
        OutputFormat::Yaml => {
            serde_saphyr::to_string(value).map_err(|e| CliError::Other(format!("cannot render YAML: {e}")))?
        }
        _ => {
            let mut s =
                serde_json::to_string_pretty(value).map_err(|e| CliError::Other(format!("cannot render JSON: {e}")))?;
            s.push('\n');
            s
        }
    };
    Ok(s)
}

/// Print `value` as pretty JSON or YAML on stdout.
pub fn print_structured<T: serde::Serialize>(value: &T, format: OutputFormat) -> Result<(), CliError> {
    print!("{}", render_structured(value, format)?);
    Ok(())
}

/// Print an error on stderr and return its exit code.
pub fn report(e: &CliError) -> Code {
    eprintln!("error: {e}");
    e.code()
}

/// Run a command's future to completion on a fresh single-threaded runtime.
pub fn block_on<F: Future<Output = Code>>(fut: F) -> Code {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => report(&CliError::Other(format!("cannot start the async runtime: {e}"))),
    }
}

/// Finish a command: print the error, if any, and give the code.
pub fn finish(result: Result<Code, CliError>) -> Code {
    match result {
        Ok(c) => c,
        Err(e) => report(&e),
    }
}
