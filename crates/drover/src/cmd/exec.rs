//! `drover exec ACTION k=v...` (owned by the action-library work).
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {}

pub fn run(_args: ExecArgs) -> Exit {
    Exit::Error
}
