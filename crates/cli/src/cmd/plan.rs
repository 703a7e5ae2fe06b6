//! `drover plan PLAN`: what a plan would do on the live fleet (a dry run on the controller).

use crate::client::{CliError, Client, PlanText};
use crate::format::preview_text;
use crate::{ApiArgs, Code, OutputFormat, print_structured};

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Shows the resolved targets, the batches (one line each), offline nodes and the failure \
budget; nothing runs. `drover validate PLAN` checks a plan without a controller.\n\n\
Exit codes: 0 the plan is valid, 2 it is not (every fault is listed), 3 drover error.")]
pub struct PlanArgs {
    /// The plan file (YAML or JSON), or - for stdin.
    pub plan: String,
    /// Output format (json / yaml: the whole preview).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: PlanArgs) -> Result<Code, CliError> {
    let client = Client::new(&args.api.api)?;
    let plan = PlanText::read(&args.plan)?;
    let p = client.preview(&plan).await?;
    if args.output.is_table() {
        print!("{}", preview_text(&p));
    } else {
        print_structured(&p, args.output)?;
    }
    Ok(Code::Success)
}

/// `drover plan`: the exit code.
pub fn run(args: PlanArgs) -> Code {
    crate::block_on(async move { crate::finish(execute(args).await) })
}
