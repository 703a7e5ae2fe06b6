//! `drover nodes list|get`.

use crate::client::{CliError, Client};
use crate::format::{node_text, nodes_table};
use crate::{ApiArgs, Code, OutputFormat, print_structured};
use drover_core::api::NodeList;
use drover_core::selector::Selector;

#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub command: NodesCommand,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodesCommand {
    /// List the registered nodes.
    List(NodesListArgs),
    /// Show one node: labels, facts, the actions it offers.
    Get(NodeIdArg),
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodesListArgs {
    /// Only nodes whose labels match: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; comma = AND.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodeIdArg {
    /// The node id.
    pub id: String,
}

/// The nodes `selector` matches (all of them without one).
pub fn filter(list: NodeList, selector: Option<&str>) -> Result<NodeList, CliError> {
    let Some(text) = selector else { return Ok(list) };
    let sel = Selector::parse(text).map_err(|e| CliError::Invalid(format!("-l {text}: {e}")))?;
    Ok(NodeList { nodes: list.nodes.into_iter().filter(|n| sel.matches(&n.labels)).collect() })
}

pub async fn execute(args: NodesArgs) -> Result<Code, CliError> {
    let client = Client::new(&args.api.api)?;
    match args.command {
        NodesCommand::List(l) => {
            // Check the selector before asking the controller.
            if let Some(s) = &l.selector {
                filter(NodeList { nodes: vec![] }, Some(s))?;
            }
            let list = filter(client.nodes().await?, l.selector.as_deref())?;
            if args.output.is_table() {
                if list.nodes.is_empty() {
                    println!("no nodes{}", if l.selector.is_some() { " match" } else { "" });
                } else {
                    println!("{}", nodes_table(&list.nodes));
                }
            } else {
                print_structured(&list, args.output)?;
            }
        }
        NodesCommand::Get(NodeIdArg { id }) => {
            let info = client.node(&id).await?;
            if args.output.is_table() {
                print!("{}", node_text(&info));
            } else {
                print_structured(&info, args.output)?;
            }
        }
    }
    Ok(Code::Success)
}

/// `drover nodes`: the exit code.
pub fn run(args: NodesArgs) -> Code {
    crate::block_on(async move { crate::finish(execute(args).await) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::api::NodeView;
    use drover_core::wire::{AgentStatus, NodeFacts};

    fn node(id: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            id: id.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            groups: vec![],
            facts: NodeFacts::default(),
            online: true,
            status: AgentStatus::Online,
            last_seen_ago_ms: None,
            heartbeat_ms: None,
            lost_after_ms: None,
            busy_with: None,
            actions: vec![],
        }
    }

    #[test]
    fn selector_filters_client_side() {
        let list = NodeList {
            nodes: vec![
                node("a", &[("role", "web"), ("zone", "a")]),
                node("b", &[("role", "db")]),
                node("c", &[("role", "web"), ("canary", "1")]),
            ],
        };
        let ids = |l: NodeList| l.nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(filter(list.clone(), Some("role=web,!canary")).unwrap()), ["a"]);
        assert_eq!(ids(filter(list.clone(), Some("role in (web,db)")).unwrap()), ["a", "b", "c"]);
        assert_eq!(ids(filter(list.clone(), None).unwrap()), ["a", "b", "c"]);
        let err = filter(list, Some("role in (")).unwrap_err();
        assert_eq!(err.code(), crate::Code::Invalid);
        assert!(err.to_string().starts_with("-l role in (: at column"), "{err}");
    }
}
