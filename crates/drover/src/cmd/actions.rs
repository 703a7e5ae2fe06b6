//! `drover actions list|describe` (owned by the action-library work).
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct ActionsArgs {}

pub fn run(_args: ActionsArgs) -> Exit {
    Exit::Error
}
