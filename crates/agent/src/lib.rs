//! drover-agent: the part of drover that runs on every node.
//!
//! [`Agent::start`] registers the node (labels, groups, facts, the actions its policy
//! allows, with their params schemas) in the `nodes` bucket, heartbeats into the
//! `heartbeats` bucket, answers requests on `<prefix>.cmd.<node>` (run, rollback, cancel,
//! ping), runs commands with the action library under the node's [`Policy`], and publishes
//! each result once to the results stream (`Nats-Msg-Id` = the command key). A local
//! [`journal::Journal`] makes every command run at most once, across restarts too, and
//! keeps the results (and their rollback metadata) until they are no longer needed.
//! See `docs/agent.md`.
//!
//! [`Policy`]: drover_actions::Policy

mod agent;
pub mod config;
pub mod journal;

pub use agent::{Agent, AgentError, AgentHandle, INTERRUPTED, METADATA_ON_AGENT, fit_payload};
pub use config::{AgentConfig, AgentFile, ConfigError, Retention};
