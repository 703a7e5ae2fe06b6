//! Exit codes that scripts can rely on.

/// The process exit status of a drover command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command (or the job / action it ran) succeeded.
    Success,
    /// 1: the job or action ran and did not succeed.
    Failed,
    /// 2: invalid input (bad plan, bad params, bad flags); nothing ran.
    Invalid,
    /// 3: drover itself could not do what was asked (I/O, unreachable controller, ...).
    Error,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(match e {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Invalid => 2,
            Exit::Error => 3,
        })
    }
}
